//! The memory service: one completed elaboration in, the user's memory updated exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;

use crate::config::DedupConfig;
use crate::db::Db;
use crate::embed::Embedder;
use crate::events::ElaborationCompleted;
use crate::memory::decide::{span_cosines, Decider};
use crate::memory::dedup::{
    embedding_text, Decision, DedupPolicy, Evidence, NoteRef, Spans, Verdict, Verdicts,
};
use crate::memory::extract::{DefaultExtractor, NoteExtractor};
use crate::memory::import::IMPORT_BATCH;
use crate::memory::judge::Judge;
use crate::memory::llm_extract::LlmExtractor;
use crate::memory::normalize::content_hash;
use crate::memory::plan::{judge_requests, Candidate};
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

/// Which extractor produced an event's candidate notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extraction {
    /// The deterministic extractor (`NOTE_EXTRACTOR=default`).
    Default,
    /// The LLM extractor (`NOTE_EXTRACTOR=llm`).
    Llm,
    /// The LLM extractor failed (error, timeout, invalid answer): the deterministic one applied.
    LlmFallback,
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
    /// The user forgot their memory after this event was created: nothing was written.
    pub forgotten: bool,
    /// Which extractor produced the candidates.
    pub extraction: Extraction,
    /// Candidate notes extracted.
    pub candidates: usize,
    /// Notes inserted.
    pub notes_added: u32,
    /// Existing notes reinforced.
    pub notes_reinforced: u32,
    /// Candidates that were duplicates.
    pub duplicates: u32,
    /// The duplicates by the decision's reason (`exact_match`, `semantic_match`).
    pub duplicates_by_reason: BTreeMap<&'static str, u32>,
    /// Semantic duplicates kept as variants of the note they matched.
    pub variants_added: u32,
    /// Time spent embedding the candidates.
    pub embed_time: Duration,
    /// Pairs the judge was asked about (0 with `DEDUP_JUDGE=rules`).
    pub judge_calls: usize,
    /// Time spent reading the user's notes for the judge and waiting for it.
    pub judge_time: Duration,
    /// Time spent in the database (connection, transaction, commit).
    pub db_time: Duration,
}

/// Extract → embed (one batch) → (judge) → store (one transaction). Build it once at init and
/// share it.
#[derive(Clone)]
pub struct MemoryService {
    extractor: Arc<dyn NoteExtractor>,
    /// Asked first when set; `extractor` is its fallback.
    llm: Option<LlmExtractor>,
    embedder: Arc<dyn TextEmbedder>,
    store: Arc<dyn MemoryStore>,
    judge: Option<Arc<JudgeStep>>,
}

/// The judge step (`DEDUP_JUDGE=llm`): see [`MemoryService::with_judge`].
struct JudgeStep {
    judge: Judge,
    policy: DedupPolicy,
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
            llm: None,
            embedder,
            store,
            judge: None,
        }
    }

    /// Asks `llm` for the notes first (`NOTE_EXTRACTOR=llm`); the extractor given to
    /// [`MemoryService::new`] applies when it fails.
    pub fn with_llm_extractor(mut self, llm: LlmExtractor) -> Self {
        self.llm = Some(llm);
        self
    }

    async fn extract(&self, event: &ElaborationCompleted) -> (Vec<String>, Extraction) {
        let Some(llm) = &self.llm else {
            return (self.extractor.extract(event), Extraction::Default);
        };
        match llm.extract(event).await {
            Ok(notes) => (notes, Extraction::Llm),
            Err(err) => {
                tracing::warn!(provider = llm.provider_name(), error = %err, "LLM note extraction failed; using the default extractor");
                (self.extractor.extract(event), Extraction::LlmFallback)
            }
        }
    }

    /// Asks `judge` about the pairs that `policy` (the store's) leaves to it, before each
    /// record's transaction.
    ///
    /// Why there: the transaction holds the user's advisory lock and a pooled connection, and
    /// must never wait on an LLM (seconds, or the timeout). But which pairs are ambiguous depends
    /// on the user's notes, which only the transaction reads consistently. So each record's
    /// notes are read once before it, read-only ([`MemoryStore::known_notes`]), the ambiguous
    /// pairs found with the same policy ([`judge_requests`]), the judge asked, and the verdicts
    /// handed to the transaction keyed by the two notes' content hashes: the pure plan inside it
    /// uses a verdict only if the pair is still there. A note stored in between (by a concurrent
    /// record of the same user) simply has no verdict, and a pair in the band without one is kept
    /// apart, the conservative outcome. The price is one extra read of the user's notes per
    /// record, only with the judge on.
    pub fn with_judge(mut self, judge: Judge, policy: DedupPolicy) -> Self {
        self.judge = Some(Arc::new(JudgeStep { judge, policy }));
        self
    }

    /// The production wiring: the default extractor, the real embedder, PostgreSQL (with the
    /// default number of variants per note).
    pub fn postgres(db: Db, embedder: Embedder, policy: DedupPolicy) -> Self {
        Self::postgres_with_variants(db, embedder, policy, DedupConfig::DEFAULT_VARIANTS_MAX)
    }

    /// [`postgres`](Self::postgres), keeping at most `variants_max` variants per note.
    pub fn postgres_with_variants(
        db: Db,
        embedder: Embedder,
        policy: DedupPolicy,
        variants_max: u32,
    ) -> Self {
        let embedder: Arc<dyn TextEmbedder> = Arc::new(embedder);
        let store = PgMemoryStore::new(db, Decider::new(policy, embedder.clone()))
            .with_variants_max(variants_max);
        Self::new(Arc::new(DefaultExtractor), embedder, Arc::new(store))
    }

    /// Extracts candidate notes with `extractor` instead (the consumer's test hook wraps the
    /// default one).
    pub fn with_extractor(mut self, extractor: Arc<dyn NoteExtractor>) -> Self {
        self.extractor = extractor;
        self
    }

    /// Applies one event to its user's memory, exactly once (a redelivery changes nothing).
    pub async fn apply(&self, event: &ElaborationCompleted) -> Result<ApplyOutcome, MemoryError> {
        let (notes, extraction) = self.extract(event).await;

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

        let candidates: Vec<Candidate> = notes
            .into_iter()
            .zip(embeddings)
            .map(|(text, embedding)| Candidate::new(text, embedding))
            .collect();
        let started = Instant::now();
        let verdicts = match &self.judge {
            Some(step) if !candidates.is_empty() => {
                Some(self.judged(step, &event.user_id, &candidates).await?)
            }
            _ => None,
        };
        let judge_time = started.elapsed();
        let record = PreparedRecord {
            event_id: event.event_id,
            user_id: event.user_id.clone(),
            created_at: event.created_at,
            candidates,
            verdicts,
        };
        let started = Instant::now();
        let stored = self.store.apply(&record).await?;
        let db_time = started.elapsed();

        Ok(ApplyOutcome {
            event_id: event.event_id,
            user_id: event.user_id.clone(),
            already_applied: stored.already_applied,
            forgotten: stored.forgotten,
            extraction,
            candidates: record.candidates.len(),
            notes_added: stored.notes_added,
            notes_reinforced: stored.notes_reinforced,
            duplicates: stored.duplicates,
            duplicates_by_reason: stored.duplicates_by_reason,
            variants_added: stored.variants_added,
            embed_time,
            judge_calls: record.verdicts.as_ref().map_or(0, Verdicts::len),
            judge_time,
            db_time,
        })
    }

    /// The judge's verdicts on the record's ambiguous pairs, against the user's notes as read
    /// now (see [`JudgeStep`]).
    async fn judged(
        &self,
        step: &JudgeStep,
        user: &UserId,
        candidates: &[Candidate],
    ) -> Result<Verdicts, MemoryError> {
        let known = self.store.known_notes(user).await?;
        let requests = judge_requests(&step.policy, step.judge.band(), &known, candidates);
        let verdicts = step.judge.verdicts(&requests).await;
        if !requests.is_empty() {
            let (same, different, failed) = verdicts.counts();
            tracing::info!(
                ambiguous = requests.len(),
                asked = verdicts.len(),
                same,
                different,
                failed,
                unjudged = requests.len() - verdicts.len(),
                "dedup judge"
            );
        }
        Ok(verdicts)
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
            .map(|(text, embedding)| Candidate::new(text, embedding))
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

/// Decides whether each `(existing, candidate)` pair is a duplicate exactly as the consumer does
/// (same embedding text, same hashes, same policy), embedding every text in one call: for
/// `hikmah dedup`, its evaluation and threshold tuning.
pub async fn decide_pairs(
    embedder: &dyn TextEmbedder,
    policy: &DedupPolicy,
    pairs: &[(&str, &str)],
) -> Result<Vec<Decision>, MemoryError> {
    decide_pairs_judged(embedder, policy, None, pairs).await
}

/// Judge calls in flight at once when [`decide_pairs_judged`] measures many pairs.
const EVAL_JUDGE_CONCURRENCY: usize = 4;

/// [`decide_pairs`] with the consumer's `judge` (`DEDUP_JUDGE=llm`) deciding the pairs in its
/// band, each pair being its own record: for `hikmah dedup --judge`, to measure what the judge
/// adds against a real provider.
pub async fn decide_pairs_judged(
    embedder: &dyn TextEmbedder,
    policy: &DedupPolicy,
    judge: Option<&Judge>,
    pairs: &[(&str, &str)],
) -> Result<Vec<Decision>, MemoryError> {
    let texts: Vec<String> = pairs
        .iter()
        .flat_map(|(a, b)| [embedding_text(a), embedding_text(b)])
        .collect();
    let expected = texts.len();
    let embeddings = embedder.embed_texts(texts).await?;
    if embeddings.len() != expected {
        return Err(MemoryError::EmbedCount {
            expected,
            got: embeddings.len(),
        });
    }
    let hashes: Vec<(String, String)> = pairs
        .iter()
        .map(|(a, b)| (content_hash(a), content_hash(b)))
        .collect();
    let refs = |i: usize| {
        let e = &embeddings[2 * i..2 * i + 2];
        (
            NoteRef {
                text: pairs[i].0,
                content_hash: &hashes[i].0,
                embedding: &e[0],
            },
            NoteRef {
                text: pairs[i].1,
                content_hash: &hashes[i].1,
                embedding: &e[1],
            },
        )
    };
    let mut evidence = Evidence::default();
    if let Some(judge) = judge {
        let asked: Vec<usize> = (0..pairs.len())
            .filter(|&i| {
                let (a, b) = refs(i);
                policy.verdict_needed(a, b, judge.band()).is_some()
            })
            .collect();
        let answers: Vec<Verdict> =
            futures::stream::iter(asked.iter().map(|&i| judge.ask(pairs[i].0, pairs[i].1)))
                .buffered(EVAL_JUDGE_CONCURRENCY)
                .collect()
                .await;
        let mut verdicts = Verdicts::new(judge.band());
        for (&i, verdict) in asked.iter().zip(answers) {
            verdicts.insert(&hashes[i].0, &hashes[i].1, verdict);
        }
        evidence = Evidence::judged(verdicts);
    }
    // Exactly as the consumer: the spans of the pairs that need them, measured in one batch.
    let band = evidence.judge_band();
    let needed: Vec<(usize, Spans)> = (0..pairs.len())
        .filter_map(|i| {
            let (a, b) = refs(i);
            policy.spans_needed(a, b, band).map(|s| (i, s))
        })
        .collect();
    let spans: Vec<&Spans> = needed.iter().map(|(_, s)| s).collect();
    let cosines = span_cosines(embedder, &spans).await?;
    for ((i, _), c) in needed.iter().zip(cosines) {
        evidence.insert_span_cosine(&hashes[*i].0, &hashes[*i].1, c);
    }
    Ok((0..pairs.len())
        .map(|i| {
            let (a, b) = refs(i);
            policy.decide(a, b, &evidence)
        })
        .collect())
}
