//! Where notes live: a small [`MemoryStore`] trait and its PostgreSQL implementation.
//!
//! One record is applied in ONE transaction:
//! 1. `pg_advisory_xact_lock` on the user: records of one user are serialised (across
//!    concurrent invocations and consumers), records of different users run in parallel;
//! 2. `INSERT INTO processed_events ... ON CONFLICT DO NOTHING`: a conflict means the event was
//!    already applied (a redelivery), so the record succeeds and nothing else changes;
//! 3. the user's notes that a candidate may duplicate are loaded (the
//!    [`prefilter`](super::prefilter): same hash, or a signature close enough to a candidate's;
//!    the rest cannot change the decision) and [`plan`] decides each candidate (insert,
//!    reinforce a note at most once per event, or skip a repeat);
//! 4. the plan is executed: new notes are inserted, matched notes reinforced (`times_seen + 1`,
//!    `last_seen_at`);
//! 5. the counts are written to the `processed_events` row, and the transaction commits.
//!
//! A failure anywhere rolls everything back (including the `processed_events` row), so the
//! redelivered record is applied from scratch.

use futures::future::BoxFuture;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::db::{Client, Db};
use crate::memory::dedup::DedupPolicy;
use crate::memory::plan::{plan, Action, Candidate, KnownNote};
use crate::memory::prefilter::{decode_f32, signature, signature_radius};
use crate::memory::MemoryError;
use crate::types::{EventId, NoteId, UserId};

type Transaction<'a> = deadpool_postgres::Transaction<'a>;

/// One event's candidates, ready to be applied.
#[derive(Debug, Clone)]
pub struct PreparedRecord {
    /// The idempotency key.
    pub event_id: EventId,
    /// Whose memory.
    pub user_id: UserId,
    /// The candidate notes, in extraction order.
    pub candidates: Vec<Candidate>,
}

/// What applying one record changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    /// The event had been applied before: nothing changed.
    pub already_applied: bool,
    /// Notes inserted.
    pub notes_added: u32,
    /// Existing notes whose `times_seen` went up.
    pub notes_reinforced: u32,
    /// Candidates judged duplicates (of an existing note or of an earlier candidate).
    pub duplicates: u32,
}

/// Stores candidate notes exactly once per event.
pub trait MemoryStore: Send + Sync {
    /// Applies one record atomically and idempotently.
    fn apply<'a>(
        &'a self,
        record: &'a PreparedRecord,
    ) -> BoxFuture<'a, Result<StoreOutcome, MemoryError>>;

    /// Adds `candidates` to the user's memory in one transaction, deduplicated as events are
    /// (against the user's notes and each other); no event is recorded.
    fn import<'a>(
        &'a self,
        user: &'a UserId,
        candidates: &'a [Candidate],
    ) -> BoxFuture<'a, Result<StoreOutcome, MemoryError>>;
}

/// The PostgreSQL store (tables `memory_notes` and `processed_events`).
#[derive(Debug, Clone)]
pub struct PgMemoryStore {
    db: Db,
    policy: DedupPolicy,
}

/// Seed of `hashtextextended` for the per-user advisory lock: keeps our lock keys apart from
/// other users of advisory locks in the same database. The lock key of a user is
/// `hashtextextended(user_id, USER_LOCK_SEED)`.
pub const USER_LOCK_SEED: i64 = 0x6869_6b6d; // "hikm"

impl PgMemoryStore {
    /// A store over `db` (the pool built once at init) deciding duplicates with `policy`.
    pub fn new(db: Db, policy: DedupPolicy) -> Self {
        Self { db, policy }
    }

    /// Runs the record's transaction through [`Db::run`], which retries it once on a fresh
    /// connection after a connection-class failure: the transaction did not commit, or, if only
    /// its COMMIT reply was lost, the retry finds the `processed_events` row and changes nothing.
    async fn apply_with_retry(&self, record: &PreparedRecord) -> Result<StoreOutcome, MemoryError> {
        let policy = &self.policy;
        self.db
            .run(|mut conn| async move { apply_in_transaction(&mut conn, policy, record).await })
            .await
    }
}

impl MemoryStore for PgMemoryStore {
    fn apply<'a>(
        &'a self,
        record: &'a PreparedRecord,
    ) -> BoxFuture<'a, Result<StoreOutcome, MemoryError>> {
        Box::pin(self.apply_with_retry(record))
    }

    fn import<'a>(
        &'a self,
        user: &'a UserId,
        candidates: &'a [Candidate],
    ) -> BoxFuture<'a, Result<StoreOutcome, MemoryError>> {
        let policy = &self.policy;
        Box::pin(self.db.run(move |mut conn| async move {
            import_in_transaction(&mut conn, policy, user, candidates).await
        }))
    }
}

async fn apply_in_transaction(
    client: &mut Client,
    policy: &DedupPolicy,
    record: &PreparedRecord,
) -> Result<StoreOutcome, MemoryError> {
    let user = record.user_id.as_str();
    let event = record.event_id.as_uuid();
    let tx = client.transaction().await.map_err(db)?;

    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
        &[&user, &USER_LOCK_SEED],
    )
    .await
    .map_err(db)?;
    let inserted = tx
        .execute(
            "INSERT INTO processed_events (event_id, user_id) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
            &[&event, &user],
        )
        .await
        .map_err(db)?;
    if inserted == 0 {
        tx.commit().await.map_err(db)?;
        return Ok(StoreOutcome {
            already_applied: true,
            ..StoreOutcome::default()
        });
    }

    let known = comparable_notes(&tx, user, &record.candidates, policy.threshold).await?;
    let actions = plan(policy, &known, &record.candidates);
    let outcome = execute_plan(&tx, user, &record.candidates, actions, Some(event)).await?;

    let added = i32::try_from(outcome.notes_added).unwrap_or(i32::MAX);
    let reinforced = i32::try_from(outcome.notes_reinforced).unwrap_or(i32::MAX);
    tx.execute(
        "UPDATE processed_events SET notes_added = $2, notes_reinforced = $3 WHERE event_id = $1",
        &[&event, &added, &reinforced],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(outcome)
}

/// The user's notes that one of `candidates` may duplicate, in id order (see
/// [`prefilter`](super::prefilter)): the same content hash, or a signature within
/// [`signature_radius`] of a candidate's. Every other note is below the threshold with every
/// candidate, so [`plan`] decides exactly as if it had read them all.
pub async fn comparable_notes(
    tx: &impl GenericClient,
    user: &str,
    candidates: &[Candidate],
    threshold: f32,
) -> Result<Vec<KnownNote>, MemoryError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let hashes: Vec<&str> = candidates.iter().map(|c| c.content_hash.as_str()).collect();
    let signatures: Vec<String> = candidates.iter().map(|c| signature(&c.embedding)).collect();
    let radius = i64::from(signature_radius(threshold));
    // One Hamming test per candidate (3 at most per event), each a plain parameter so the
    // planner sees no subquery per row.
    let tests: Vec<String> = (0..signatures.len())
        .map(|i| format!("bit_count(signature # ${}::text::bit(384)) <= $3", i + 4))
        .collect();
    let sql = format!(
        "SELECT id, content, content_hash, embedding_f32 FROM memory_notes \
         WHERE user_id = $1 AND (content_hash = ANY($2) OR {}) ORDER BY id",
        tests.join(" OR ")
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&user, &hashes, &radius];
    params.extend(signatures.iter().map(|s| s as &(dyn ToSql + Sync)));
    let rows = tx.query(&sql, &params).await.map_err(db)?;
    rows.iter().map(known_note).collect()
}

/// Every note of the user, in id order (an import compares each of its notes with all of them).
pub async fn all_notes(tx: &impl GenericClient, user: &str) -> Result<Vec<KnownNote>, MemoryError> {
    let rows = tx
        .query(
            "SELECT id, content, content_hash, embedding_f32 FROM memory_notes \
             WHERE user_id = $1 ORDER BY id",
            &[&user],
        )
        .await
        .map_err(db)?;
    rows.iter().map(known_note).collect()
}

fn known_note(row: &Row) -> Result<KnownNote, MemoryError> {
    let id = NoteId(row.try_get(0).map_err(db)?);
    let raw: &[u8] = row.try_get(3).map_err(db)?;
    let embedding = decode_f32(raw).map_err(|source| MemoryError::CorruptNote { id, source })?;
    Ok(KnownNote {
        id,
        text: row.try_get(1).map_err(db)?,
        content_hash: row.try_get(2).map_err(db)?,
        embedding,
    })
}

/// Runs the plan's statements, pipelined on the transaction's connection (sent in candidate
/// order, so new notes' ids follow it).
async fn execute_plan(
    tx: &Transaction<'_>,
    user: &str,
    candidates: &[Candidate],
    actions: Vec<Action>,
    source_event: Option<uuid::Uuid>,
) -> Result<StoreOutcome, MemoryError> {
    let insert = tx
        .prepare(
            // Every stored hash of the user was compared under the lock, so a conflict means
            // a row written without the lock since the load: the same note (same hash), so it
            // is reinforced instead.
            "INSERT INTO memory_notes (user_id, content, content_hash, embedding, source_event_id) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id, content_hash) \
             DO UPDATE SET times_seen = memory_notes.times_seen + 1, last_seen_at = now() \
             RETURNING (xmax = 0) AS inserted",
        )
        .await
        .map_err(db)?;
    let mut outcome = StoreOutcome::default();
    let mut writes = Vec::new();
    for (candidate, action) in candidates.iter().zip(actions) {
        match action {
            Action::Insert => writes.push(Write::Insert(candidate)),
            Action::Reinforce { note, .. } => {
                outcome.duplicates += 1;
                outcome.notes_reinforced += 1;
                writes.push(Write::Reinforce(note));
            }
            Action::Skip { .. } => outcome.duplicates += 1,
        }
    }
    for chunk in writes.chunks(PIPELINE_DEPTH) {
        let results = futures::future::try_join_all(chunk.iter().map(|write| {
            let insert = &insert;
            async move {
                match write {
                    Write::Insert(c) => {
                        let row = tx
                            .query_one(
                                insert,
                                &[&user, &c.text, &c.content_hash, &c.embedding.as_slice(), &source_event],
                            )
                            .await?;
                        row.try_get::<_, bool>(0).map(Some)
                    }
                    Write::Reinforce(note) => tx
                        .execute(
                            "UPDATE memory_notes SET times_seen = times_seen + 1, last_seen_at = now() WHERE id = $1",
                            &[&note.0],
                        )
                        .await
                        .map(|_| None),
                }
            }
        }))
        .await
        .map_err(db)?;
        for fresh in results.into_iter().flatten() {
            if fresh {
                outcome.notes_added += 1;
            } else {
                outcome.duplicates += 1;
                outcome.notes_reinforced += 1;
            }
        }
    }
    Ok(outcome)
}

/// Statements in flight at once on one connection while a plan runs.
const PIPELINE_DEPTH: usize = 256;

/// One statement of a plan.
enum Write<'a> {
    Insert(&'a Candidate),
    Reinforce(NoteId),
}

async fn import_in_transaction(
    client: &mut Client,
    policy: &DedupPolicy,
    user: &UserId,
    candidates: &[Candidate],
) -> Result<StoreOutcome, MemoryError> {
    let user = user.as_str();
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
        &[&user, &USER_LOCK_SEED],
    )
    .await
    .map_err(db)?;
    let known = all_notes(&tx, user).await?;
    let actions = plan(policy, &known, candidates);
    let outcome = execute_plan(&tx, user, candidates, actions, None).await?;
    tx.commit().await.map_err(db)?;
    Ok(outcome)
}

fn db(err: tokio_postgres::Error) -> MemoryError {
    MemoryError::Db(err.into())
}
