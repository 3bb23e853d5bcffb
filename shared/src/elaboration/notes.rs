//! Reading the user's notes that personalise the prompt.

use futures::future::BoxFuture;

use crate::db::{Db, DbError};
use crate::types::UserId;

/// Where the user's notes come from (PostgreSQL in production, nothing in demos).
pub trait NotesSource: Send + Sync {
    /// Up to `limit` of the user's notes: most reinforced first, then most recently seen.
    fn top_notes<'a>(
        &'a self,
        user: &'a UserId,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, DbError>>;
}

/// The user's notes from the `memory_notes` table.
#[derive(Debug, Clone)]
pub struct PgNotes {
    db: Db,
}

impl PgNotes {
    /// Reads through `db` (a pool built once at init).
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The pool behind this source.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// The personalisation query: the user's top `MEMORY_CONTEXT_NOTES` notes, most reinforced
/// (`times_seen`) first, ties broken by the most recently seen (`last_seen_at`), then the newest
/// id. Only `WHERE user_id = $1` rows are read, so another user's notes never reach the prompt.
/// `memory_notes_user_id_idx` narrows it to one user's rows.
const TOP_NOTES_SQL: &str = "SELECT content FROM memory_notes WHERE user_id = $1 \
     ORDER BY times_seen DESC, last_seen_at DESC, id DESC LIMIT $2";

impl NotesSource for PgNotes {
    fn top_notes<'a>(
        &'a self,
        user: &'a UserId,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, DbError>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            // A read-only query: always safe to repeat on `run`'s one retry.
            self.db
                .run(|conn| async move {
                    let rows = conn.query(TOP_NOTES_SQL, &[&user.as_str(), &limit]).await?;
                    rows.iter()
                        .map(|r| r.try_get::<_, String>(0))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(DbError::from)
                })
                .await
        })
    }
}

/// No notes at all: for demos and benchmarks without a database.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNotes;

impl NotesSource for NoNotes {
    fn top_notes<'a>(
        &'a self,
        _user: &'a UserId,
        _limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, DbError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
