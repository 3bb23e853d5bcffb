//! Support for hikmah's end-to-end tests: real PostgreSQL databases, moto, the model files.
pub mod bins;
pub mod events;
pub mod fake_llm;
pub mod lambda;
pub mod model;
pub mod pg;
pub mod proxy;
pub mod sqs;
