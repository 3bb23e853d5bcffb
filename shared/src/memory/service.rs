//! The memory service: one completed elaboration in, the user's memory updated exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::db::Db;
use crate::embed::Embedder;
use crate::events::ElaborationCompleted;
use crate::memory::dedup::{embedding_text, Decision, DedupPolicy, NoteRef};
use crate::memory::extract::{DefaultExtractor, NoteExtractor};
use crate::memory::import::IMPORT_BATCH;
use crate::memory::normalize::content_hash;
use crate::memory::plan::Candidate;
use crate::memory::store::{MemoryStore, PgMemoryStore, PreparedRecord};
use crate::memory::MemoryError;
use crate::types::{Embedding, EventId, UserId};

/// Turns texts into embeddings; implemented by [`Embedder`] (and by fakes in unit tests).
pub trait TextEmbedder: Send + Sync {
    /// One embedding per text, in order, computed in one call (one blocking-thread hop).
    fn embed_texts(&self, texts: Vec<String>)
        -> BoxFuture<'_, Result<Vec<Embedding>, MemoryError>>;
}

impl TextEmbedder for Embedder {
    fn embed_texts(
        &self,
        texts: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Embedding>, MemoryError>> {
        Box::pin(async move { self.embed(texts).await.map_err(MemoryError::Embed) })
    }
}

/// What applying one event did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The event.
    pub event_id: EventId,
    /// Whose memory.
    pub user_id: UserId,
    /// The event had been applied before (a redelivery): nothing changed.
    pub already_applied: bool,
    /// Candidate notes extracted.
    pub candidates: usize,
    /// Notes inserted.
    pub notes_added: u32,
    /// Existing notes reinforced.
    pub notes_reinforced: u32,
    /// Candidates that were duplicates.
    pub duplicates: u32,
    /// Time spent embedding the candidates.
    pub embed_time: Duration,
    /// Time spent in the database (connection, transaction, commit).
    pub db_time: Duration,
}

/// Extract → embed (one batch) → store (one transaction). Build it once at init and share it.
#[derive(Clone)]
pub struct MemoryService {
    extractor: Arc<dyn NoteExtractor>,
    embedder: Arc<dyn TextEmbedder>,
    store: Arc<dyn MemoryStore>,
}

impl std::fmt::Debug for MemoryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryService")
    }
}

impl MemoryService {
    /// A service from its parts.
    pub fn new(
        extractor: Arc<dyn NoteExtractor>,
        embedder: Arc<dyn TextEmbedder>,
        store: Arc<dyn MemoryStore>,
    ) -> Self {
        Self {
            extractor,
            embedder,
            store,
        }
    }

    /// The production wiring: the default extractor, the real embedder, PostgreSQL.
    pub fn postgres(db: Db, embedder: Embedder, policy: DedupPolicy) -> Self {
        Self::new(
            Arc::new(DefaultExtractor),
            Arc::new(embedder),
            Arc::new(PgMemoryStore::new(db, policy)),
        )
    }

    /// Applies one event to its user's memory, exactly once (a redelivery changes nothing).
    pub async fn apply(&self, event: &ElaborationCompleted) -> Result<ApplyOutcome, MemoryError> {
        let notes = self.extractor.extract(event);

        let started = Instant::now();
        let embeddings = if notes.is_empty() {
            Vec::new()
        } else {
            self.embedder
                .embed_texts(notes.iter().map(|n| embedding_text(n)).collect())
                .await?
        };
        let embed_time = started.elapsed();
        if embeddings.len() != notes.len() {
            return Err(MemoryError::EmbedCount {
                expected: notes.len(),
                got: embeddings.len(),
            });
        }

        let record = PreparedRecord {
            event_id: event.event_id,
            user_id: event.user_id.clone(),
            candidates: notes
                .into_iter()
                .zip(embeddings)
                .map(|(text, embedding)| Candidate {
                    content_hash: content_hash(&text),
                    text,
                    embedding,
                })
                .collect(),
        };
        let started = Instant::now();
        let stored = self.store.apply(&record).await?;
        let db_time = started.elapsed();

        Ok(ApplyOutcome {
            event_id: event.event_id,
            user_id: event.user_id.clone(),
            already_applied: stored.already_applied,
            candidates: record.candidates.len(),
            notes_added: stored.notes_added,
            notes_reinforced: stored.notes_reinforced,
            duplicates: stored.duplicates,
            embed_time,
            db_time,
        })
    }
}

/// What importing notes did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Notes read.
    pub notes: usize,
    /// Notes inserted.
    pub notes_added: u32,
    /// Existing notes reinforced (at most once each per import).
    pub notes_reinforced: u32,
    /// Notes that duplicated an existing note or an earlier note of the import.
    pub duplicates: u32,
    /// Time spent embedding.
    pub embed_time: Duration,
    /// Time spent in the database.
    pub db_time: Duration,
}

impl MemoryService {
    /// Imports `notes` into `user`'s memory: embedded in batches of [`IMPORT_BATCH`] (calling
    /// `progress(embedded, total)` after each), then deduplicated exactly as the consumer does
    /// (against the user's notes and the import's earlier notes) and written in one
    /// transaction under the user's lock: all or nothing.
    pub async fn import(
        &self,
        user: &UserId,
        notes: Vec<String>,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<ImportOutcome, MemoryError> {
        let started = Instant::now();
        let total = notes.len();
        let mut embeddings = Vec::with_capacity(total);
        for batch in notes.chunks(IMPORT_BATCH) {
            let texts: Vec<String> = batch.iter().map(|n| embedding_text(n)).collect();
            let got = self.embedder.embed_texts(texts).await?;
            if got.len() != batch.len() {
                return Err(MemoryError::EmbedCount {
                    expected: batch.len(),
                    got: got.len(),
                });
            }
            embeddings.extend(got);
            progress(embeddings.len(), total);
        }
        let embed_time = started.elapsed();
        let candidates: Vec<Candidate> = notes
            .into_iter()
            .zip(embeddings)
            .map(|(text, embedding)| Candidate {
                content_hash: content_hash(&text),
                text,
                embedding,
            })
            .collect();
        let started = Instant::now();
        let stored = self.store.import(user, &candidates).await?;
        Ok(ImportOutcome {
            notes: total,
            notes_added: stored.notes_added,
            notes_reinforced: stored.notes_reinforced,
            duplicates: stored.duplicates,
            embed_time,
            db_time: started.elapsed(),
        })
    }
}

/// Decides whether `candidate` duplicates `existing` exactly as the consumer does (same
/// embedding text, same hashes, same policy): for `hikmah dedup` and threshold tuning.
pub async fn decide_texts(
    embedder: &dyn TextEmbedder,
    policy: &DedupPolicy,
    existing: &str,
    candidate: &str,
) -> Result<Decision, MemoryError> {
    let embeddings = embedder
        .embed_texts(vec![embedding_text(existing), embedding_text(candidate)])
        .await?;
    let [a, b] = embeddings.as_slice() else {
        return Err(MemoryError::EmbedCount {
            expected: 2,
            got: embeddings.len(),
        });
    };
    let (ha, hb) = (content_hash(existing), content_hash(candidate));
    Ok(policy.decide(
        NoteRef {
            text: existing,
            content_hash: &ha,
            embedding: a,
        },
        NoteRef {
            text: candidate,
            content_hash: &hb,
            embedding: b,
        },
    ))
}
