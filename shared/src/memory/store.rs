//! Where notes live: a small [`MemoryStore`] trait and its PostgreSQL implementation.
//!
//! One record is applied in ONE transaction:
//! 1. `pg_advisory_xact_lock` on the user: records of one user are serialised (across
//!    concurrent invocations and consumers), records of different users run in parallel;
//! 2. if the user forgot their memory (`forgotten_users`) at or after the event's `created_at`,
//!    the record succeeds and nothing is written: an old event cannot bring a note back;
//! 3. `INSERT INTO processed_events ... ON CONFLICT DO NOTHING`: a conflict means the event was
//!    already applied (a redelivery), so the record succeeds and nothing else changes;
//! 4. the user's notes that a candidate may duplicate are loaded (the
//!    [`prefilter`](super::prefilter): same hash, or a signature close enough to a candidate's;
//!    the rest cannot change the decision) and the pure plan decides each candidate (insert,
//!    reinforce a note at most once per event, or skip a repeat);
//! 5. the plan is executed: new notes are inserted, matched notes reinforced (`times_seen + 1`,
//!    `last_seen_at`), and every candidate judged a *semantic* duplicate is kept as a variant of
//!    the note it matched (`note_variants`, the most recent `variants_max` per note), so a merge
//!    loses nothing and can be split back out; exact duplicates only reinforce;
//! 6. the counts are written to the `processed_events` row, and the transaction commits.
//!
//! A failure anywhere rolls everything back (including the `processed_events` row), so the
//! redelivered record is applied from scratch.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::config::DedupConfig;
use crate::db::{Client, Db};
use crate::memory::decide::Decider;
use crate::memory::dedup::{Decision, Reason, Verdicts};
use crate::memory::plan::{Action, Candidate, KnownNote, SkipReason};
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
    /// When the elaboration completed (compared with the user's `forgotten_at`).
    pub created_at: DateTime<Utc>,
    /// The candidate notes, in extraction order.
    pub candidates: Vec<Candidate>,
    /// With `DEDUP_JUDGE=llm`: the judge's verdicts, gathered before the transaction.
    pub verdicts: Option<Verdicts>,
}

/// What applying one record changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    /// The event had been applied before: nothing changed.
    pub already_applied: bool,
    /// The user forgot their memory after this event was created: nothing was written.
    pub forgotten: bool,
    /// Notes inserted.
    pub notes_added: u32,
    /// Existing notes whose `times_seen` went up.
    pub notes_reinforced: u32,
    /// Candidates judged duplicates (of an existing note or of an earlier candidate).
    pub duplicates: u32,
    /// Semantic duplicates kept as variants of the note they matched.
    pub variants_added: u32,
    /// The duplicates by the decision's reason (`exact_match`, `semantic_match`).
    pub duplicates_by_reason: BTreeMap<&'static str, u32>,
}

impl StoreOutcome {
    fn duplicate(&mut self, reason: Reason) {
        self.duplicates += 1;
        *self
            .duplicates_by_reason
            .entry(reason.as_str())
            .or_default() += 1;
    }
}

/// Stores candidate notes exactly once per event.
pub trait MemoryStore: Send + Sync {
    /// Applies one record atomically and idempotently.
    fn apply<'a>(
        &'a self,
        record: &'a PreparedRecord,
    ) -> BoxFuture<'a, Result<StoreOutcome, MemoryError>>;

    /// The user's notes as the decision sees them, read outside any transaction (they may
    /// change before [`apply`](Self::apply) runs): for the judge, which must not hold one open.
    fn known_notes<'a>(
        &'a self,
        user: &'a UserId,
    ) -> BoxFuture<'a, Result<Vec<KnownNote>, MemoryError>>;

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
    decider: Decider,
    variants_max: u32,
}

/// Seed of `hashtextextended` for the per-user advisory lock: keeps our lock keys apart from
/// other users of advisory locks in the same database. The lock key of a user is
/// `hashtextextended(user_id, USER_LOCK_SEED)`.
pub const USER_LOCK_SEED: i64 = 0x6869_6b6d; // "hikm"

impl PgMemoryStore {
    /// A store over `db` (the pool built once at init) deciding duplicates with `decider`.
    pub fn new(db: Db, decider: Decider) -> Self {
        Self {
            db,
            decider,
            variants_max: DedupConfig::DEFAULT_VARIANTS_MAX,
        }
    }

    /// Keeps at most `max` variants per note (the most recent); 0 keeps none.
    pub fn with_variants_max(mut self, max: u32) -> Self {
        self.variants_max = max;
        self
    }

    /// Runs the record's transaction through [`Db::run`], which retries it once on a fresh
    /// connection after a connection-class failure: the transaction did not commit, or, if only
    /// its COMMIT reply was lost, the retry finds the `processed_events` row and changes nothing.
    async fn apply_with_retry(&self, record: &PreparedRecord) -> Result<StoreOutcome, MemoryError> {
        let (decider, max) = (&self.decider, self.variants_max);
        self.db
            .run(|mut conn| async move { apply_in_transaction(&mut conn, decider, max, record).await })
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

    fn known_notes<'a>(
        &'a self,
        user: &'a UserId,
    ) -> BoxFuture<'a, Result<Vec<KnownNote>, MemoryError>> {
        Box::pin(
            self.db
                .run(move |conn| async move { all_notes(&*conn, user.as_str()).await }),
        )
    }

    fn import<'a>(
        &'a self,
        user: &'a UserId,
        candidates: &'a [Candidate],
    ) -> BoxFuture<'a, Result<StoreOutcome, MemoryError>> {
        let (decider, max) = (&self.decider, self.variants_max);
        Box::pin(self.db.run(move |mut conn| async move {
            import_in_transaction(&mut conn, decider, max, user, candidates).await
        }))
    }
}

async fn apply_in_transaction(
    client: &mut Client,
    decider: &Decider,
    variants_max: u32,
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
    let forgotten = tx
        .query_opt(
            "SELECT 1 FROM forgotten_users WHERE user_id = $1 AND forgotten_at >= $2",
            &[&user, &record.created_at],
        )
        .await
        .map_err(db)?;
    if forgotten.is_some() {
        tx.commit().await.map_err(db)?;
        return Ok(StoreOutcome {
            forgotten: true,
            ..StoreOutcome::default()
        });
    }
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

    // Pairs below the threshold can still merge inside the judge's band: read those notes too.
    let floor = decider
        .policy()
        .merge_floor(record.verdicts.as_ref().map(Verdicts::band));
    let known = comparable_notes(&tx, user, &record.candidates, floor).await?;
    let actions = decider
        .actions(&known, &record.candidates, record.verdicts.as_ref())
        .await?;
    let outcome = execute_actions(
        &tx,
        user,
        &record.candidates,
        actions,
        Some(event),
        variants_max,
    )
    .await?;

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

/// Runs the plan's statements: inserts, reinforcements, and a variant for every semantic
/// duplicate (`source_event` is `None` for an import).
async fn execute_actions(
    tx: &Transaction<'_>,
    user: &str,
    candidates: &[Candidate],
    actions: Vec<Action>,
    source_event: Option<uuid::Uuid>,
    variants_max: u32,
) -> Result<StoreOutcome, MemoryError> {
    let mut outcome = StoreOutcome::default();
    // The id each inserted candidate got, for variants of later candidates that repeat it.
    let mut inserted_ids: Vec<Option<i64>> = vec![None; candidates.len()];
    for (index, (candidate, action)) in candidates.iter().zip(actions).enumerate() {
        let variant_of = match action {
            Action::Insert => {
                // Every stored hash of the user was compared under the lock, so a conflict
                // means a row written without the lock since the load: the same note
                // (same hash), so it is reinforced instead.
                let row = tx
                    .query_one(
                        "INSERT INTO memory_notes (user_id, content, content_hash, embedding, source_event_id) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (user_id, content_hash) \
                         DO UPDATE SET times_seen = memory_notes.times_seen + 1, last_seen_at = now() \
                         RETURNING id, (xmax = 0) AS inserted",
                        &[&user, &candidate.text, &candidate.content_hash, &candidate.embedding.as_slice(), &source_event],
                    )
                    .await
                    .map_err(db)?;
                let fresh: bool = row.try_get(1).map_err(db)?;
                if fresh {
                    inserted_ids[index] = Some(row.try_get(0).map_err(db)?);
                    outcome.notes_added += 1;
                } else {
                    outcome.duplicate(Reason::ExactMatch);
                    outcome.notes_reinforced += 1;
                }
                None
            }
            Action::Reinforce { note, decision } => {
                tx.execute(
                    "UPDATE memory_notes SET times_seen = times_seen + 1, last_seen_at = now() WHERE id = $1",
                    &[&note.0],
                )
                .await
                .map_err(db)?;
                outcome.duplicate(decision.reason);
                outcome.notes_reinforced += 1;
                Some((Some(note.0), decision))
            }
            Action::Skip { decision, reason } => {
                outcome.duplicate(decision.reason);
                let target = match reason {
                    SkipReason::NoteAlreadyReinforced { note } => Some(note.0),
                    SkipReason::RepeatsEarlierCandidate { earlier } => {
                        inserted_ids.get(earlier).copied().flatten()
                    }
                };
                Some((target, decision))
            }
        };
        if let Some((Some(note_id), decision)) = variant_of {
            if decision.reason != Reason::ExactMatch && variants_max > 0 {
                insert_variant(
                    tx,
                    note_id,
                    candidate,
                    source_event,
                    &decision,
                    variants_max,
                )
                .await?;
                outcome.variants_added += 1;
            }
        }
    }
    Ok(outcome)
}

async fn import_in_transaction(
    client: &mut Client,
    decider: &Decider,
    variants_max: u32,
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
    let actions = decider.actions(&known, candidates, None).await?;
    let outcome = execute_actions(&tx, user, candidates, actions, None, variants_max).await?;
    tx.commit().await.map_err(db)?;
    Ok(outcome)
}

/// The user's notes that one of `candidates` may duplicate at cosine `floor` or above, in id
/// order (see [`prefilter`](super::prefilter)): the same content hash, or a signature within
/// [`signature_radius`] of a candidate's. Every other note is below `floor` with every
/// candidate, so the plan decides exactly as if it had read them all.
pub async fn comparable_notes(
    tx: &impl GenericClient,
    user: &str,
    candidates: &[Candidate],
    floor: f32,
) -> Result<Vec<KnownNote>, MemoryError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let hashes: Vec<&str> = candidates.iter().map(|c| c.content_hash.as_str()).collect();
    let signatures: Vec<String> = candidates.iter().map(|c| signature(&c.embedding)).collect();
    let radius = i64::from(signature_radius(floor));
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

/// Every note of the user, in id order (an import compares each of its notes with all of them;
/// the judge's read before the transaction too).
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

/// Keeps `candidate` as a variant of note `note_id`, then drops the note's variants beyond the
/// most recent `max`.
async fn insert_variant(
    tx: &Transaction<'_>,
    note_id: i64,
    candidate: &Candidate,
    event: Option<uuid::Uuid>,
    decision: &Decision,
    max: u32,
) -> Result<(), MemoryError> {
    tx.execute(
        "INSERT INTO note_variants (note_id, content, event_id, cosine, reason) VALUES ($1, $2, $3, $4, $5)",
        &[&note_id, &candidate.text, &event, &decision.cosine, &decision.reason.as_str()],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "DELETE FROM note_variants WHERE note_id = $1 AND id NOT IN \
         (SELECT id FROM note_variants WHERE note_id = $1 ORDER BY id DESC LIMIT $2)",
        &[&note_id, &i64::from(max)],
    )
    .await
    .map_err(db)?;
    Ok(())
}

fn db(err: tokio_postgres::Error) -> MemoryError {
    MemoryError::Db(err.into())
}
