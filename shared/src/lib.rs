//! hikmah's shared library: everything both Lambda functions and the `hikmah` CLI use.
//!
//! Layers point down only: services (`memory`, `elaboration`) use adapters behind small traits
//! (`db`, `embed`, `llm`, `publish`), which use the model (`types`, `events`) and errors
//! (`error_code`, `error`).
//! No Lambda type appears here; what exists only because the code runs in a Lambda execution
//! environment (the secrets-extension client, the per-invocation hook) is in [`lambda`].

pub mod artifacts;
pub mod aws;
pub mod config;
pub mod db;
pub mod elaboration;
pub mod embed;
pub mod error;
pub mod error_code;
pub mod events;
pub mod lambda;
pub mod llm;
pub mod memory;
pub mod metrics;
pub mod publish;
pub mod telemetry;
pub mod types;
