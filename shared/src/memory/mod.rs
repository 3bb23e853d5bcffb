//! Long-term memory: note extraction, semantic dedup, and the store behind it.

pub mod dedup;
pub mod extract;
pub mod normalize;
