//! Long-term memory: note extraction, semantic dedup, and the store behind it.

pub mod dedup;
pub mod error;
pub mod extract;
pub mod import;
pub mod normalize;
pub mod plan;
pub mod prefilter;
pub mod service;
pub mod store;

pub use error::MemoryError;
