//! Why applying an event to a user's memory failed.

use crate::db::DbError;
use crate::embed::EmbedError;
use crate::types::{InvalidValue, NoteId};

/// A failure to apply one event; the record is retried (then dead-lettered) by the queue.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The database failed (unreachable, timed out, broke mid-transaction, rejected a statement).
    #[error("memory store: {0}")]
    Db(#[from] DbError),
    /// The embedder failed on the candidate notes.
    #[error("embedding the candidate notes failed: {0}")]
    Embed(#[source] EmbedError),
    /// The embedder broke its contract (one embedding per text).
    #[error("the embedder returned {got} embeddings for {expected} notes")]
    EmbedCount {
        /// Texts sent.
        expected: usize,
        /// Embeddings received.
        got: usize,
    },
    /// A stored note's embedding is unusable (not 384 finite numbers); fix or delete the row.
    #[error("stored memory note {id} has an invalid embedding ({source}); delete it with `hikmah memory` or re-embed it")]
    CorruptNote {
        /// The note.
        id: NoteId,
        /// What is wrong with it.
        source: InvalidValue,
    },
}

impl MemoryError {
    /// True when the database connection (not the statement) failed: a retry may succeed.
    pub fn is_connection(&self) -> bool {
        matches!(self, Self::Db(e) if e.is_connection())
    }
}

impl crate::db::ConnectionClass for MemoryError {
    fn is_connection(&self) -> bool {
        MemoryError::is_connection(self)
    }
}
