//! The memory consumer's handler: an SQS batch in, the failed message ids out.
//!
//! [`handler`] is what Lambda invokes; [`poller`] drives the same handler from a queue locally
//! and in tests, doing what the SQS event source mapping does in AWS.

pub mod handler;
pub mod poller;

pub use handler::{function_handler, handle_batch, handle_batch_until, Consumer, RecordError};
pub use poller::{PollReport, Poller, PollerError};
