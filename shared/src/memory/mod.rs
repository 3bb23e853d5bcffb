//! Long-term memory: note extraction, semantic dedup, and the store behind it.

pub mod account;
pub mod dedup;
pub mod error;
pub mod extract;
pub mod llm_extract;
pub mod normalize;
pub mod plan;
pub mod service;
pub mod store;

pub use error::MemoryError;
