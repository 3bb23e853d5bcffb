//! Support for hikmah's end-to-end tests: real PostgreSQL databases, moto, the model files.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
pub mod bins;
pub mod cluster;
pub mod events;
pub mod fake_llm;
pub mod lambda;
pub mod model;
pub mod pg;
pub mod proxy;
pub mod secrets_extension;
pub mod sqs;
