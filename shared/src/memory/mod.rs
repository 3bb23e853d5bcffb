//! Long-term memory: note extraction, semantic dedup, and the store behind it.

pub mod account;
pub mod decide;
pub mod dedup;
pub mod error;
pub mod eval;
pub mod extract;
pub mod import;
pub mod judge;
pub mod llm_extract;
pub mod normalize;
pub mod plan;
pub mod prefilter;
pub mod service;
pub mod store;
pub mod variants;

pub use error::MemoryError;
