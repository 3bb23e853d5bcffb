//! The memory consumer: an SQS batch in, every record's outcome out.
//!
//! - [`Consumer::from_env`] is the composition root (Lambda's `main`, `hikmah serve`, the bench);
//! - [`handle_batch`] applies a batch through `shared`'s memory service, one span per record;
//! - [`lambda::function_handler`] is what Lambda invokes: it runs the per-invocation hook and
//!   turns the [`BatchReport`] into `SqsBatchResponse`;
//! - [`poller`] drives the same handler from a queue locally and in tests, doing what the SQS
//!   event source mapping does in AWS, with records built by [`sqs`].

pub mod consumer;
pub mod fault;
pub mod handler;
pub mod lambda;
pub mod poller;
pub mod sqs;

pub use consumer::{Consumer, InitError, InitTimings};
pub use handler::{handle_batch, handle_batch_until, BatchReport, RecordError, RecordOutcome};
pub use poller::{PollReport, Poller, PollerError};
