//! The duplicate decision for one record, with what the model must measure for it: the span
//! guard's embeddings are gathered first (with `DEDUP_JUDGE=llm`, the judge's verdicts were
//! gathered before the transaction and come with the record), then the pure [`plan`] decides.
//! The store calls this between loading the user's notes and writing; it runs no SQL itself.

use std::sync::Arc;

use crate::memory::dedup::{DedupPolicy, Evidence, Spans, Verdicts};
use crate::memory::plan::{plan, span_requests, Action, Candidate, KnownNote};
use crate::memory::service::TextEmbedder;
use crate::memory::MemoryError;

/// Decides a record's candidates: measures what the guards need, then plans.
#[derive(Clone)]
pub struct Decider {
    policy: DedupPolicy,
    embedder: Arc<dyn TextEmbedder>,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Decider {
    /// A decider with `policy`, measuring spans with `embedder`.
    pub fn new(policy: DedupPolicy, embedder: Arc<dyn TextEmbedder>) -> Self {
        Self { policy, embedder }
    }

    /// The policy it decides with.
    pub fn policy(&self) -> &DedupPolicy {
        &self.policy
    }

    /// The actions for `candidates` against `known` (see [`plan`]), with the judge's `verdicts`
    /// when the judge is on (the pairs in its band are then the judge's, not the span guard's).
    pub async fn actions(
        &self,
        known: &[KnownNote],
        candidates: &[Candidate],
        verdicts: Option<&Verdicts>,
    ) -> Result<Vec<Action>, MemoryError> {
        let mut evidence = verdicts.cloned().map(Evidence::judged).unwrap_or_default();
        let requests = span_requests(&self.policy, known, candidates, evidence.judge_band());
        if !requests.is_empty() {
            let spans: Vec<&Spans> = requests.iter().map(|r| &r.spans).collect();
            let cosines = span_cosines(self.embedder.as_ref(), &spans).await?;
            for (r, c) in requests.iter().zip(cosines) {
                evidence.insert_span_cosine(&r.existing_hash, &r.candidate_hash, c);
            }
        }
        Ok(plan(&self.policy, known, candidates, &evidence))
    }
}

/// The cosine of each pair of spans, embedded in one call.
pub async fn span_cosines(
    embedder: &dyn TextEmbedder,
    spans: &[&Spans],
) -> Result<Vec<f32>, MemoryError> {
    if spans.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<String> = spans
        .iter()
        .flat_map(|s| [s.existing.clone(), s.candidate.clone()])
        .collect();
    let expected = texts.len();
    let embeddings = embedder.embed_texts(texts).await?;
    if embeddings.len() != expected {
        return Err(MemoryError::EmbedCount {
            expected,
            got: embeddings.len(),
        });
    }
    Ok(embeddings
        .chunks_exact(2)
        .map(|e| e[0].cosine(&e[1]))
        .collect())
}
