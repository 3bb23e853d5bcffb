//! hikmah's end-to-end tests, one module per area, in one test binary (`cargo test -p
//! hikmah-tests`; one area: `cargo test -p hikmah-tests -- consumer::`). They run against real
//! PostgreSQL, moto's SQS server, the real ONNX model and cargo-lambda's runtime emulator;
//! the only fakes are LLM providers speaking their real wire formats. Support code is in the
//! `hikmah-tests` library beside this binary.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bedrock;
mod cli;
mod consumer;
mod consumer_lambda;
mod consumer_queue;
mod db_tls;
mod dedup_judge;
mod dedup_pairs;
mod deploy;
mod elaborate;
mod elaborate_lambda;
mod embedder;
mod faults;
mod local_runner;
mod memory_routes;
mod migrations;
mod note_extraction;
mod pool;
mod prefilter;
mod scripts;
