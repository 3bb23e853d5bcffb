//! A user's own access to their memory (design.md, "Memory routes"): list a page of notes,
//! export everything, delete one note, forget everything.
//!
//! [`MemoryAccount`] holds the rules (page sizes, opaque cursors, what "forget" means); an
//! [`AccountStore`] runs the SQL ([`PgAccountStore`] for PostgreSQL). Every operation is scoped to
//! one [`UserId`], resolved by the caller from the request's identity: no query here can reach
//! another user's rows, and a note of another user is simply "not found".
//!
//! **Forgetting** deletes the user's notes and `processed_events` rows and records the time in
//! `forgotten_users`, in one transaction under the same per-user advisory lock as the consumer's
//! (so it never interleaves with an event being applied). The consumer then acknowledges, without
//! storing anything, every event of that user created at or before that time: a redelivered or
//! still-queued old event cannot bring a note back, and the user's next elaborations are
//! remembered again (see `store.rs`).

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;

use crate::db::{Db, DbError};
use crate::memory::store::USER_LOCK_SEED;
use crate::types::{NoteId, UserId};

/// Notes per page when `limit` is not given.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Most notes per page.
pub const MAX_PAGE_SIZE: usize = 100;

/// One of the user's notes as they see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoteRecord {
    /// The note's id (the `{note_id}` of `DELETE /hikmah/memory/{note_id}`).
    pub id: NoteId,
    /// The note's text.
    pub content: String,
    /// How many elaborations produced this note (or a duplicate of it).
    pub times_seen: i32,
    /// When it was first stored.
    pub created_at: DateTime<Utc>,
    /// When it was last produced again.
    pub last_seen_at: DateTime<Utc>,
}

/// One line of an export: a note with everything stored about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedNote {
    /// The note.
    #[serde(flatten)]
    pub note: NoteRecord,
    /// The event that first produced it.
    pub source_event_id: Option<uuid::Uuid>,
    /// Candidates merged into it (lossless merges), oldest first.
    pub variants: Vec<VariantRecord>,
}

/// A candidate once judged a duplicate of a note and kept under it (`note_variants`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantRecord {
    /// The variant's id (`hikmah memory split --variant ID`).
    pub id: i64,
    /// Its text.
    pub content: String,
    /// The event it came from.
    pub event_id: Option<uuid::Uuid>,
    /// Its cosine with the note.
    pub cosine: f32,
    /// Why it was judged a duplicate.
    pub reason: String,
    /// When it was merged.
    pub created_at: DateTime<Utc>,
}

/// A page of notes, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotePage {
    /// At most the requested number of notes.
    pub notes: Vec<NoteRecord>,
    /// Pass it as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// What forgetting a user deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Notes deleted.
    pub notes: u64,
    /// `processed_events` rows deleted.
    pub processed_events: u64,
    /// From this instant back, the user's events are acknowledged without storing anything.
    pub forgotten_at: DateTime<Utc>,
}

/// Where a page starts: strictly after this `(created_at, id)` in newest-first order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last listed note's `created_at`.
    pub created_at: DateTime<Utc>,
    /// The last listed note's id.
    pub id: NoteId,
}

impl Cursor {
    /// The cursor of a listed note.
    pub fn after(note: &NoteRecord) -> Self {
        Self {
            created_at: note.created_at,
            id: note.id,
        }
    }

    /// The opaque text clients pass back (URL-safe base64 of `v1:<micros>:<id>`).
    pub fn encode(&self) -> String {
        let raw = format!("v1:{}:{}", self.created_at.timestamp_micros(), self.id.0);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Parses what [`Cursor::encode`] produced; anything else is [`AccountError::InvalidCursor`].
    pub fn decode(text: &str) -> Result<Self, AccountError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| AccountError::InvalidCursor)?;
        let raw = String::from_utf8(bytes).map_err(|_| AccountError::InvalidCursor)?;
        let mut parts = raw.split(':');
        let (Some("v1"), Some(micros), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AccountError::InvalidCursor);
        };
        let micros: i64 = micros.parse().map_err(|_| AccountError::InvalidCursor)?;
        let id: i64 = id.parse().map_err(|_| AccountError::InvalidCursor)?;
        let created_at =
            DateTime::from_timestamp_micros(micros).ok_or(AccountError::InvalidCursor)?;
        Ok(Self {
            created_at,
            id: NoteId(id),
        })
    }
}

/// A validated list request: page size and where to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Notes per page, 1..=[`MAX_PAGE_SIZE`].
    pub limit: usize,
    /// Start after this note (`None`: the newest).
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Validates the raw `limit` and `cursor` query values.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Self, AccountError> {
        let limit = match limit {
            None => DEFAULT_PAGE_SIZE,
            Some(raw) => raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or(AccountError::InvalidLimit)?,
        };
        let after = cursor.map(Cursor::decode).transpose()?;
        Ok(Self { limit, after })
    }
}

/// Why a memory request failed; each variant says what the client can do.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// `limit` is not a whole number in range.
    #[error("limit must be a whole number from 1 to {MAX_PAGE_SIZE}")]
    InvalidLimit,
    /// `cursor` is not one this API handed out.
    #[error("cursor is not one this API returned; pass next_cursor exactly as given, or omit it")]
    InvalidCursor,
    /// The caller has no note with this id (it may belong to someone else, or be gone).
    #[error("you have no note {0}")]
    NoteNotFound(NoteId),
    /// The database failed.
    #[error("memory store: {0}")]
    Db(#[from] DbError),
}

/// Runs the user-scoped SQL of the memory routes.
pub trait AccountStore: Send + Sync {
    /// Up to `limit` of the user's notes, newest first (`created_at`, then `id`), after `after`.
    fn page<'a>(
        &'a self,
        user: &'a UserId,
        limit: usize,
        after: Option<Cursor>,
    ) -> BoxFuture<'a, Result<Vec<NoteRecord>, DbError>>;
    /// Every note of the user, oldest first.
    fn export<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, Result<Vec<ExportedNote>, DbError>>;
    /// Deletes one of the user's notes; false when the user has no such note.
    fn delete_note<'a>(
        &'a self,
        user: &'a UserId,
        note: NoteId,
    ) -> BoxFuture<'a, Result<bool, DbError>>;
    /// Deletes everything about the user and records the time (see the module docs).
    fn forget<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, Result<Forgotten, DbError>>;
}

/// The memory routes' service (cheap to clone; built once at init).
#[derive(Clone)]
pub struct MemoryAccount {
    store: Arc<dyn AccountStore>,
}

impl std::fmt::Debug for MemoryAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryAccount")
    }
}

impl MemoryAccount {
    /// A service over `store`.
    pub fn new(store: Arc<dyn AccountStore>) -> Self {
        Self { store }
    }

    /// The production wiring: PostgreSQL through `db`.
    pub fn postgres(db: Db) -> Self {
        Self::new(Arc::new(PgAccountStore::new(db)))
    }

    /// One page of the user's notes, newest first, with the cursor of the next.
    pub async fn list(&self, user: &UserId, page: PageRequest) -> Result<NotePage, AccountError> {
        // One more than asked says whether a next page exists.
        let mut notes = self.store.page(user, page.limit + 1, page.after).await?;
        let next_cursor = if notes.len() > page.limit {
            notes.truncate(page.limit);
            notes.last().map(|n| Cursor::after(n).encode())
        } else {
            None
        };
        Ok(NotePage { notes, next_cursor })
    }

    /// Everything stored about the user's notes, oldest first.
    pub async fn export(&self, user: &UserId) -> Result<Vec<ExportedNote>, AccountError> {
        Ok(self.store.export(user).await?)
    }

    /// Deletes one of the user's notes; another user's note is [`AccountError::NoteNotFound`].
    pub async fn delete_note(&self, user: &UserId, note: NoteId) -> Result<(), AccountError> {
        if self.store.delete_note(user, note).await? {
            Ok(())
        } else {
            Err(AccountError::NoteNotFound(note))
        }
    }

    /// Deletes everything about the user; their older events can no longer bring a note back.
    pub async fn forget(&self, user: &UserId) -> Result<Forgotten, AccountError> {
        let forgotten = self.store.forget(user).await?;
        tracing::info!(
            user_id = %user,
            notes = forgotten.notes,
            processed_events = forgotten.processed_events,
            "user memory forgotten"
        );
        Ok(forgotten)
    }
}

/// The PostgreSQL [`AccountStore`].
#[derive(Debug, Clone)]
pub struct PgAccountStore {
    db: Db,
}

impl PgAccountStore {
    /// A store over `db` (the pool built once at init).
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

const NOTE_COLUMNS: &str = "id, content, times_seen, created_at, last_seen_at";

fn note_of(row: &tokio_postgres::Row) -> Result<NoteRecord, tokio_postgres::Error> {
    Ok(NoteRecord {
        id: NoteId(row.try_get(0)?),
        content: row.try_get(1)?,
        times_seen: row.try_get(2)?,
        created_at: row.try_get(3)?,
        last_seen_at: row.try_get(4)?,
    })
}

impl AccountStore for PgAccountStore {
    fn page<'a>(
        &'a self,
        user: &'a UserId,
        limit: usize,
        after: Option<Cursor>,
    ) -> BoxFuture<'a, Result<Vec<NoteRecord>, DbError>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            // Read-only: safe to repeat on `run`'s one retry.
            self.db
                .run(|conn| async move {
                    let rows = match after {
                        None => {
                            conn.query(
                                &format!(
                                    "SELECT {NOTE_COLUMNS} FROM memory_notes WHERE user_id = $1 \
                                     ORDER BY created_at DESC, id DESC LIMIT $2"
                                ),
                                &[&user.as_str(), &limit],
                            )
                            .await?
                        }
                        Some(c) => {
                            conn.query(
                                &format!(
                                    "SELECT {NOTE_COLUMNS} FROM memory_notes WHERE user_id = $1 \
                                     AND (created_at, id) < ($3, $4) \
                                     ORDER BY created_at DESC, id DESC LIMIT $2"
                                ),
                                &[&user.as_str(), &limit, &c.created_at, &c.id.0],
                            )
                            .await?
                        }
                    };
                    rows.iter()
                        .map(note_of)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(DbError::from)
                })
                .await
        })
    }

    fn export<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, Result<Vec<ExportedNote>, DbError>> {
        Box::pin(async move {
            self.db
                .run(|conn| async move {
                    let rows = conn
                        .query(
                            &format!(
                                "SELECT {NOTE_COLUMNS}, source_event_id FROM memory_notes \
                                 WHERE user_id = $1 ORDER BY created_at, id"
                            ),
                            &[&user.as_str()],
                        )
                        .await?;
                    let mut notes = rows
                        .iter()
                        .map(|row| {
                            Ok(ExportedNote {
                                note: note_of(row)?,
                                source_event_id: row.try_get(5)?,
                                variants: Vec::new(),
                            })
                        })
                        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
                    let variants = conn
                        .query(
                            "SELECT v.note_id, v.id, v.content, v.event_id, v.cosine, v.reason, \
                             v.created_at FROM note_variants v \
                             JOIN memory_notes n ON n.id = v.note_id \
                             WHERE n.user_id = $1 ORDER BY v.note_id, v.created_at, v.id",
                            &[&user.as_str()],
                        )
                        .await?;
                    let position: std::collections::HashMap<NoteId, usize> = notes
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (n.note.id, i))
                        .collect();
                    for row in &variants {
                        let note = NoteId(row.try_get(0)?);
                        let variant = VariantRecord {
                            id: row.try_get(1)?,
                            content: row.try_get(2)?,
                            event_id: row.try_get(3)?,
                            cosine: row.try_get(4)?,
                            reason: row.try_get(5)?,
                            created_at: row.try_get(6)?,
                        };
                        if let Some(&i) = position.get(&note) {
                            notes[i].variants.push(variant);
                        }
                    }
                    Ok(notes)
                })
                .await
        })
    }

    fn delete_note<'a>(
        &'a self,
        user: &'a UserId,
        note: NoteId,
    ) -> BoxFuture<'a, Result<bool, DbError>> {
        Box::pin(async move {
            // Idempotent, so a retry after a lost reply is harmless (it then reports false).
            self.db
                .run(|conn| async move {
                    let n = conn
                        .execute(
                            "DELETE FROM memory_notes WHERE user_id = $1 AND id = $2",
                            &[&user.as_str(), &note.0],
                        )
                        .await?;
                    Ok::<_, DbError>(n > 0)
                })
                .await
        })
    }

    fn forget<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, Result<Forgotten, DbError>> {
        Box::pin(async move {
            self.db
                .run(|mut conn| async move {
                    let user = user.as_str();
                    let tx = conn.transaction().await?;
                    // The consumer's lock: an event being applied finishes first (and its notes
                    // are deleted here), or runs after and finds the tombstone.
                    tx.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
                        &[&user, &USER_LOCK_SEED],
                    )
                    .await?;
                    let notes = tx
                        .execute("DELETE FROM memory_notes WHERE user_id = $1", &[&user])
                        .await?;
                    let processed_events = tx
                        .execute("DELETE FROM processed_events WHERE user_id = $1", &[&user])
                        .await?;
                    // clock_timestamp(), not now(): the time after the lock was granted, so an
                    // event applied while this transaction waited is older than the tombstone.
                    let row = tx
                        .query_one(
                            "INSERT INTO forgotten_users (user_id, forgotten_at) \
                             VALUES ($1, clock_timestamp()) \
                             ON CONFLICT (user_id) DO UPDATE SET forgotten_at = excluded.forgotten_at \
                             RETURNING forgotten_at",
                            &[&user],
                        )
                        .await?;
                    let forgotten_at: DateTime<Utc> = row.try_get(0)?;
                    tx.commit().await?;
                    Ok::<_, DbError>(Forgotten {
                        notes,
                        processed_events,
                        forgotten_at,
                    })
                })
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_cursor_round_trips_to_the_microsecond() -> TestResult {
        let created_at =
            DateTime::from_timestamp_micros(1_767_225_600_123_456).ok_or("timestamp")?;
        let cursor = Cursor {
            created_at,
            id: NoteId(42),
        };
        let text = cursor.encode();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "URL-safe: {text}"
        );
        assert_eq!(Cursor::decode(&text)?, cursor);
        Ok(())
    }

    #[test]
    fn anything_but_a_handed_out_cursor_is_invalid() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for bad in [
            String::new(),
            "not base64!".to_owned(),
            b64("v2:1:1"),
            b64("v1:1"),
            b64("v1:x:1"),
            b64("v1:1:y"),
            b64("v1:1:1:1"),
            b64(&format!("v1:{}:1", i64::MAX)),
        ] {
            assert!(
                matches!(Cursor::decode(&bad), Err(AccountError::InvalidCursor)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn limit_defaults_to_20_and_must_be_1_to_100() -> TestResult {
        assert_eq!(PageRequest::parse(None, None)?.limit, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::parse(Some("1"), None)?.limit, 1);
        assert_eq!(PageRequest::parse(Some("100"), None)?.limit, 100);
        for bad in ["0", "101", "-1", "ten", "", "1.5"] {
            assert!(
                matches!(
                    PageRequest::parse(Some(bad), None),
                    Err(AccountError::InvalidLimit)
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            PageRequest::parse(None, Some("@@")),
            Err(AccountError::InvalidCursor)
        ));
        Ok(())
    }

    /// A store holding one user's notes in memory, to test paging without a database.
    struct Fixed(Vec<NoteRecord>);

    impl AccountStore for Fixed {
        fn page<'a>(
            &'a self,
            _user: &'a UserId,
            limit: usize,
            after: Option<Cursor>,
        ) -> BoxFuture<'a, Result<Vec<NoteRecord>, DbError>> {
            let mut notes = self.0.clone();
            notes.sort_by_key(|n| std::cmp::Reverse((n.created_at, n.id)));
            let page = notes
                .into_iter()
                .filter(|n| after.is_none_or(|c| (n.created_at, n.id) < (c.created_at, c.id)))
                .take(limit)
                .collect();
            Box::pin(async move { Ok(page) })
        }
        fn export<'a>(
            &'a self,
            _user: &'a UserId,
        ) -> BoxFuture<'a, Result<Vec<ExportedNote>, DbError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn delete_note<'a>(
            &'a self,
            _user: &'a UserId,
            _note: NoteId,
        ) -> BoxFuture<'a, Result<bool, DbError>> {
            Box::pin(async { Ok(false) })
        }
        fn forget<'a>(&'a self, _user: &'a UserId) -> BoxFuture<'a, Result<Forgotten, DbError>> {
            Box::pin(async {
                Ok(Forgotten {
                    notes: 0,
                    processed_events: 0,
                    forgotten_at: Utc::now(),
                })
            })
        }
    }

    #[tokio::test]
    async fn pages_walk_every_note_once_newest_first_and_the_last_has_no_cursor() -> TestResult {
        // Microseconds, as PostgreSQL stores them (and cursors carry them).
        let same_instant =
            DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).ok_or("now")?;
        // Five notes, three sharing one created_at: the id breaks the tie.
        let notes: Vec<NoteRecord> = (1..=5)
            .map(|i| NoteRecord {
                id: NoteId(i),
                content: format!("note {i}"),
                times_seen: 1,
                created_at: if i <= 3 {
                    same_instant
                } else {
                    same_instant + chrono::Duration::seconds(i)
                },
                last_seen_at: same_instant,
            })
            .collect();
        let account = MemoryAccount::new(Arc::new(Fixed(notes)));
        let user = UserId::parse("u")?;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = account
                .list(&user, PageRequest::parse(Some("2"), cursor.as_deref())?)
                .await?;
            pages += 1;
            seen.extend(page.notes.iter().map(|n| n.id.0));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, [5, 4, 3, 2, 1]);
        assert_eq!(pages, 3);
        Ok(())
    }
}
