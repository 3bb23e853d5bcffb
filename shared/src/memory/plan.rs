//! The memory decision for one event, as a pure function: what to do with each candidate note,
//! given the user's notes. The store runs the SQL around it (lock, idempotency row, load,
//! execute, counts); nothing here knows about the database.
//!
//! Each candidate is decided with [`DedupPolicy::best_match`] against the user's notes and
//! against the record's earlier candidates that are inserted, in that order. What the model must
//! measure beyond the notes' embeddings (the differing spans of similar pairs) is listed first by
//! [`span_requests`], measured by the caller, and passed in as [`Evidence`]; so are the judge's
//! verdicts on the pairs [`judge_requests`] lists, when the judge is on. Two rules hold for one
//! event:
//! - a candidate repeating an earlier candidate of the same event is a duplicate but reinforces
//!   nothing (the note it repeats is new: it was not "seen again");
//! - a note is reinforced at most once per event, however many candidates match it, so
//!   `times_seen` counts events, not sentences.

use crate::memory::dedup::{Decision, DedupPolicy, Evidence, JudgeBand, NoteRef, Spans};
use crate::memory::prefilter::may_reach;
use crate::types::{Embedding, NoteId};

/// A candidate note, ready to be stored.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The note text.
    pub text: String,
    /// [`content_hash`](super::normalize::content_hash) of the text.
    pub content_hash: String,
    /// Embedding of [`embedding_text`](super::dedup::embedding_text) of the text.
    pub embedding: Embedding,
}

/// One of the user's stored notes, as loaded for the decision.
#[derive(Debug, Clone)]
pub struct KnownNote {
    /// The note's id.
    pub id: NoteId,
    /// Its text as stored.
    pub text: String,
    /// Its stored content hash.
    pub content_hash: String,
    /// Its stored embedding.
    pub embedding: Embedding,
}

/// What to do with one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Store the candidate as a new note.
    Insert,
    /// The candidate duplicates a stored note: reinforce that note.
    Reinforce {
        /// The stored note.
        note: NoteId,
        /// The decision that matched them.
        decision: Decision,
    },
    /// The candidate is a duplicate, but nothing is written for it.
    Skip {
        /// The decision that matched it.
        decision: Decision,
        /// Why nothing is written.
        reason: SkipReason,
    },
}

/// Why a duplicate candidate writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// It repeats an earlier candidate of the same event, which is inserted.
    RepeatsEarlierCandidate {
        /// The earlier candidate's index in the record's candidates.
        earlier: usize,
    },
    /// It matches a stored note that this event already reinforces.
    NoteAlreadyReinforced {
        /// The stored note.
        note: NoteId,
    },
}

/// Where a note the candidates are compared with comes from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Stored { id: NoteId, reinforced: bool },
    EarlierCandidate(usize),
}

/// One pair whose differing spans the model must compare before [`plan`] can decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRequest {
    /// Content hash of the note compared with (stored note or earlier candidate).
    pub existing_hash: String,
    /// Content hash of the candidate.
    pub candidate_hash: String,
    /// The two notes' differing words.
    pub spans: Spans,
}

/// Every pair [`plan`] may compare whose decision needs the span guard: each candidate against
/// each known note and each earlier candidate. Only pairs above the threshold with no text guard
/// firing (and, with a judge `band`, outside it) are listed, so this is usually empty or short;
/// a pair is listed once.
pub fn span_requests(
    policy: &DedupPolicy,
    known: &[KnownNote],
    candidates: &[Candidate],
    band: Option<JudgeBand>,
) -> Vec<SpanRequest> {
    let mut requests: Vec<SpanRequest> = Vec::new();
    for_each_pair(known, candidates, |_, other, this| {
        if let Some(spans) = policy.spans_needed(other, this, band) {
            let seen = requests.iter().any(|r| {
                r.existing_hash == other.content_hash && r.candidate_hash == this.content_hash
            });
            if !seen {
                requests.push(SpanRequest {
                    existing_hash: other.content_hash.to_owned(),
                    candidate_hash: this.content_hash.to_owned(),
                    spans,
                });
            }
        }
    });
    requests
}

/// One pair [`plan`] may compare whose decision is the judge's.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeRequest {
    /// The note compared with (stored note or earlier candidate), as stored.
    pub existing: String,
    /// Its content hash.
    pub existing_hash: String,
    /// The candidate.
    pub candidate: String,
    /// Its content hash.
    pub candidate_hash: String,
    /// The pair's cosine.
    pub cosine: f32,
}

/// Every pair [`plan`] may compare whose decision is the judge's (in `band`, no exact match or
/// text guard deciding it), each listed once, in the order they should be asked when the budget
/// is short: every candidate's most similar pair first, then every candidate's second, and so
/// on. A candidate equal to a known note or an earlier candidate (after normalisation) needs no
/// judge: the exact match wins.
pub fn judge_requests(
    policy: &DedupPolicy,
    band: JudgeBand,
    known: &[KnownNote],
    candidates: &[Candidate],
) -> Vec<JudgeRequest> {
    let mut per_candidate: Vec<Vec<JudgeRequest>> = vec![Vec::new(); candidates.len()];
    let mut exact = vec![false; candidates.len()];
    for_each_pair(known, candidates, |index, other, this| {
        if other.content_hash == this.content_hash {
            exact[index] = true;
        }
        let Some(cosine) = policy.verdict_needed(other, this, band) else {
            return;
        };
        let listed = per_candidate.iter().flatten().any(|r| {
            r.existing_hash == other.content_hash && r.candidate_hash == this.content_hash
        });
        if !listed {
            per_candidate[index].push(JudgeRequest {
                existing: other.text.to_owned(),
                existing_hash: other.content_hash.to_owned(),
                candidate: this.text.to_owned(),
                candidate_hash: this.content_hash.to_owned(),
                cosine,
            });
        }
    });
    for (requests, exact) in per_candidate.iter_mut().zip(&exact) {
        if *exact {
            requests.clear();
        }
        requests.sort_by(|a, b| b.cosine.total_cmp(&a.cosine));
    }
    let rounds = per_candidate.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|rank| {
            per_candidate
                .iter()
                .filter_map(move |requests| requests.get(rank).cloned())
        })
        .collect()
}

/// Calls `f(candidate index, other, candidate)` for each candidate against each known note,
/// then against each earlier candidate: every pair [`plan`] may compare.
fn for_each_pair<'a>(
    known: &'a [KnownNote],
    candidates: &'a [Candidate],
    mut f: impl FnMut(usize, NoteRef<'a>, NoteRef<'a>),
) {
    for (index, candidate) in candidates.iter().enumerate() {
        let this = candidate.as_ref();
        let others = known
            .iter()
            .map(KnownNote::as_ref)
            .chain(candidates[..index].iter().map(Candidate::as_ref));
        for other in others {
            f(index, other, this);
        }
    }
}

impl Candidate {
    /// A candidate note with its content hash computed from `text`.
    pub fn new(text: String, embedding: Embedding) -> Self {
        Self {
            content_hash: super::normalize::content_hash(&text),
            text,
            embedding,
        }
    }

    fn as_ref(&self) -> NoteRef<'_> {
        NoteRef {
            text: &self.text,
            content_hash: &self.content_hash,
            embedding: &self.embedding,
        }
    }
}

impl KnownNote {
    fn as_ref(&self) -> NoteRef<'_> {
        NoteRef {
            text: &self.text,
            content_hash: &self.content_hash,
            embedding: &self.embedding,
        }
    }
}

/// The actions for `candidates` (one per candidate, in order) against the user's `known` notes,
/// given the span measurements `evidence` (see [`span_requests`]).
pub fn plan(
    policy: &DedupPolicy,
    known: &[KnownNote],
    candidates: &[Candidate],
    evidence: &Evidence,
) -> Vec<Action> {
    // Stored notes come first and `best_match` keeps the first of equal cosines, so a tie
    // reinforces the stored note rather than counting as a repeat of this event.
    let mut notes: Vec<(NoteRef<'_>, Origin)> = Vec::with_capacity(known.len() + candidates.len());
    notes.extend(known.iter().map(|k| {
        (
            NoteRef {
                text: &k.text,
                content_hash: &k.content_hash,
                embedding: &k.embedding,
            },
            Origin::Stored {
                id: k.id,
                reinforced: false,
            },
        )
    }));

    let floor = policy.merge_floor(evidence.judge_band());
    let mut actions = Vec::with_capacity(candidates.len());
    for (index, candidate) in candidates.iter().enumerate() {
        let this = NoteRef {
            text: &candidate.text,
            content_hash: &candidate.content_hash,
            embedding: &candidate.embedding,
        };
        // Only notes that can be duplicates reach the (exact) decision: the same hash, or a
        // cosine that may reach the threshold, or the judge's band when it decides (a proven
        // bound, so no decision changes).
        let comparable = notes.iter().enumerate().filter(|(_, (n, _))| {
            n.content_hash == this.content_hash || may_reach(n.embedding, this.embedding, floor)
        });
        let matched = policy.best_match(this, comparable.map(|(i, (n, _))| (i, *n)), evidence);
        let action = match matched {
            None => {
                notes.push((this, Origin::EarlierCandidate(index)));
                Action::Insert
            }
            Some((i, decision)) => match &mut notes[i].1 {
                Origin::EarlierCandidate(earlier) => Action::Skip {
                    decision,
                    reason: SkipReason::RepeatsEarlierCandidate { earlier: *earlier },
                },
                Origin::Stored {
                    id,
                    reinforced: true,
                } => Action::Skip {
                    decision,
                    reason: SkipReason::NoteAlreadyReinforced { note: *id },
                },
                Origin::Stored { id, reinforced } => {
                    *reinforced = true;
                    Action::Reinforce {
                        note: *id,
                        decision,
                    }
                }
            },
        };
        actions.push(action);
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::dedup::{Reason, Verdict, Verdicts};
    use crate::memory::normalize::content_hash;
    use crate::types::EMBEDDING_DIM;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const THRESHOLD: f32 = 0.9;

    /// A unit vector whose cosine with axis 0 is `cos` (tilted towards `towards`).
    fn tilted(cos: f32, towards: usize) -> Result<Embedding, Box<dyn std::error::Error>> {
        let mut v = vec![0.0; EMBEDDING_DIM];
        v[0] = cos;
        v[towards] = (1.0 - cos * cos).sqrt();
        Ok(Embedding::normalized(v)?)
    }

    fn axis(i: usize) -> Result<Embedding, Box<dyn std::error::Error>> {
        let mut v = vec![0.0; EMBEDDING_DIM];
        v[i] = 1.0;
        Ok(Embedding::normalized(v)?)
    }

    fn known(id: i64, text: &str, embedding: Embedding) -> KnownNote {
        KnownNote {
            id: NoteId(id),
            text: text.to_owned(),
            content_hash: content_hash(text),
            embedding,
        }
    }

    fn candidate(text: &str, embedding: Embedding) -> Candidate {
        Candidate {
            text: text.to_owned(),
            content_hash: content_hash(text),
            embedding,
        }
    }

    /// Plans with the model saying every requested pair's differing spans agree (cosine 1).
    fn run(known: &[KnownNote], candidates: &[Candidate]) -> Vec<Action> {
        run_with_spans(known, candidates, 1.0)
    }

    fn run_with_spans(known: &[KnownNote], candidates: &[Candidate], span: f32) -> Vec<Action> {
        let policy = DedupPolicy::with_threshold(THRESHOLD);
        let mut evidence = Evidence::default();
        for r in span_requests(&policy, known, candidates, None) {
            evidence.insert_span_cosine(&r.existing_hash, &r.candidate_hash, span);
        }
        plan(&policy, known, candidates, &evidence)
    }

    #[test]
    fn no_candidates_plan_nothing() -> TestResult {
        let notes = [known(1, "Patience is the key to relief.", axis(0)?)];
        assert!(run(&notes, &[]).is_empty());
        Ok(())
    }

    #[test]
    fn a_candidate_unlike_every_note_is_inserted() -> TestResult {
        let notes = [known(1, "Patience is the key to relief.", axis(0)?)];
        let cands = [candidate("Charity never decreases wealth.", axis(1)?)];
        assert_eq!(run(&notes, &cands), [Action::Insert]);
        Ok(())
    }

    #[test]
    fn a_first_event_inserts_every_distinct_candidate() -> TestResult {
        let cands = [
            candidate("Patience is the key to relief.", axis(0)?),
            candidate("Charity never decreases wealth.", axis(1)?),
        ];
        assert_eq!(run(&[], &cands), [Action::Insert, Action::Insert]);
        Ok(())
    }

    #[test]
    fn a_paraphrase_of_a_stored_note_reinforces_it() -> TestResult {
        let notes = [known(7, "Patience is the key to relief.", axis(0)?)];
        let cands = [candidate(
            "Patience is what unlocks relief.",
            tilted(0.95, 1)?,
        )];
        let actions = run(&notes, &cands);
        let [Action::Reinforce { note, decision }] = actions.as_slice() else {
            return Err(format!("expected one reinforcement, got {actions:?}").into());
        };
        assert_eq!((*note, decision.reason), (NoteId(7), Reason::SemanticMatch));
        Ok(())
    }

    #[test]
    fn a_look_alike_whose_differing_words_mean_something_else_is_inserted() -> TestResult {
        let notes = [known(7, "Trust builds friendship.", axis(0)?)];
        let cands = [candidate("Trust erodes friendship.", tilted(0.95, 1)?)];
        assert_eq!(run_with_spans(&notes, &cands, 0.1), [Action::Insert]);
        Ok(())
    }

    #[test]
    fn a_pair_whose_spans_were_not_measured_is_kept_apart() -> TestResult {
        let notes = [known(7, "Trust builds friendship.", axis(0)?)];
        let cands = [candidate("Trust grows friendship.", tilted(0.95, 1)?)];
        let policy = DedupPolicy::with_threshold(THRESHOLD);
        assert_eq!(span_requests(&policy, &notes, &cands, None).len(), 1);
        assert_eq!(
            plan(&policy, &notes, &cands, &Evidence::default()),
            [Action::Insert]
        );
        Ok(())
    }

    #[test]
    fn pairs_below_the_threshold_or_exact_need_no_measurement() -> TestResult {
        let notes = [
            known(1, "Patience is the key to relief.", axis(0)?),
            known(2, "Charity never decreases wealth.", axis(1)?),
        ];
        let cands = [candidate("patience is the KEY to relief", axis(2)?)];
        let policy = DedupPolicy::with_threshold(THRESHOLD);
        assert!(span_requests(&policy, &notes, &cands, None).is_empty());
        Ok(())
    }

    #[test]
    fn a_guarded_look_alike_of_a_stored_note_is_inserted() -> TestResult {
        let notes = [known(7, "He does not give up on prayer.", axis(0)?)];
        let cands = [candidate("He gives up on prayer.", tilted(0.98, 1)?)];
        assert_eq!(run(&notes, &cands), [Action::Insert]);
        Ok(())
    }

    #[test]
    fn a_candidate_repeating_an_earlier_candidate_of_the_same_event_is_skipped_not_inserted(
    ) -> TestResult {
        let cands = [
            candidate("Patience is the key to relief.", axis(0)?),
            candidate("patience is the key to relief", axis(0)?),
            candidate("Patience is what unlocks relief.", tilted(0.95, 1)?),
        ];
        let actions = run(&[], &cands);
        assert_eq!(actions.len(), 3);
        assert_eq!(actions[0], Action::Insert);
        for (i, action) in actions.iter().enumerate().skip(1) {
            let Action::Skip { reason, .. } = action else {
                return Err(format!("candidate {i}: expected a skip, got {action:?}").into());
            };
            assert_eq!(*reason, SkipReason::RepeatsEarlierCandidate { earlier: 0 });
        }
        Ok(())
    }

    #[test]
    fn a_note_matched_by_two_candidates_is_reinforced_once() -> TestResult {
        let notes = [known(7, "Patience is the key to relief.", axis(0)?)];
        let cands = [
            candidate("Patience is what unlocks relief.", tilted(0.95, 1)?),
            candidate("Relief comes through patience.", tilted(0.93, 2)?),
        ];
        let actions = run(&notes, &cands);
        assert!(
            matches!(
                actions[0],
                Action::Reinforce {
                    note: NoteId(7),
                    ..
                }
            ),
            "{actions:?}"
        );
        assert!(
            matches!(
                actions[1],
                Action::Skip {
                    reason: SkipReason::NoteAlreadyReinforced { note: NoteId(7) },
                    ..
                }
            ),
            "{actions:?}"
        );
        Ok(())
    }

    #[test]
    fn an_exact_match_wins_over_a_higher_cosine() -> TestResult {
        // The stored twin's embedding is deliberately off: equal normalised text decides.
        let notes = [
            known(1, "Patience unlocks relief.", tilted(0.99, 1)?),
            known(2, "Patience is the key to relief.", tilted(0.92, 2)?),
        ];
        let cands = [candidate("patience is the KEY to relief", axis(0)?)];
        let actions = run(&notes, &cands);
        let [Action::Reinforce { note, decision }] = actions.as_slice() else {
            return Err(format!("expected one reinforcement, got {actions:?}").into());
        };
        assert_eq!((*note, decision.reason), (NoteId(2), Reason::ExactMatch));
        Ok(())
    }

    #[test]
    fn of_several_similar_notes_the_closest_is_reinforced() -> TestResult {
        let notes = [
            known(1, "Patience brings relief.", tilted(0.93, 1)?),
            known(2, "Patience is the key to relief.", tilted(0.97, 2)?),
        ];
        let cands = [candidate("Relief comes through patience.", axis(0)?)];
        assert!(
            matches!(
                run(&notes, &cands).as_slice(),
                [Action::Reinforce {
                    note: NoteId(2),
                    ..
                }]
            ),
            "the closer note is reinforced"
        );
        Ok(())
    }

    #[test]
    fn a_stored_note_is_preferred_to_an_equally_close_earlier_candidate() -> TestResult {
        // The stored note and the first candidate sit on either side of the second candidate,
        // at the same cosine with it and too far apart to match each other.
        let mut below = vec![0.0; EMBEDDING_DIM];
        below[0] = 0.95;
        below[1] = -(1.0 - 0.95_f32 * 0.95).sqrt();
        let notes = [known(7, "Patience is the key to relief.", tilted(0.95, 1)?)];
        let cands = [
            candidate(
                "Relief comes to the patient.",
                Embedding::normalized(below)?,
            ),
            candidate("Patience unlocks relief.", axis(0)?),
        ];
        let actions = run(&notes, &cands);
        assert_eq!(actions[0], Action::Insert);
        assert!(
            matches!(
                actions[1],
                Action::Reinforce {
                    note: NoteId(7),
                    ..
                }
            ),
            "{actions:?}"
        );
        Ok(())
    }

    #[test]
    fn planned_inserts_are_visible_to_later_candidates_of_the_same_event() -> TestResult {
        let notes = [known(7, "Patience is the key to relief.", axis(0)?)];
        let cands = [
            candidate("Charity never decreases wealth.", axis(1)?),
            candidate("Giving charity does not reduce wealth.", axis(1)?),
            candidate("Patience unlocks relief.", tilted(0.95, 2)?),
        ];
        let actions = run(&notes, &cands);
        assert_eq!(actions[0], Action::Insert);
        assert!(
            matches!(
                actions[1],
                Action::Skip {
                    reason: SkipReason::RepeatsEarlierCandidate { earlier: 0 },
                    ..
                }
            ),
            "{actions:?}"
        );
        assert!(
            matches!(
                actions[2],
                Action::Reinforce {
                    note: NoteId(7),
                    ..
                }
            ),
            "{actions:?}"
        );
        Ok(())
    }

    const BAND: JudgeBand = JudgeBand {
        low: 0.5,
        high: 0.95,
    };

    /// A unit vector with the given components, the rest of its length on axis `rest`.
    fn mix(parts: &[(usize, f32)], rest: usize) -> Result<Embedding, Box<dyn std::error::Error>> {
        let mut v = vec![0.0; EMBEDDING_DIM];
        for (i, x) in parts {
            v[*i] = *x;
        }
        let used: f32 = parts.iter().map(|(_, x)| x * x).sum();
        v[rest] = (1.0 - used).max(0.0).sqrt();
        Ok(Embedding::normalized(v)?)
    }

    /// Plans with the judge on: `verdict` for every pair it is asked about (`None`: not asked).
    fn run_judged(
        known: &[KnownNote],
        candidates: &[Candidate],
        verdict: Option<Verdict>,
    ) -> (Vec<Action>, Vec<Decision>) {
        let policy = DedupPolicy::with_threshold(THRESHOLD);
        let mut verdicts = Verdicts::new(BAND);
        if let Some(v) = verdict {
            for r in judge_requests(&policy, BAND, known, candidates) {
                verdicts.insert(&r.existing_hash, &r.candidate_hash, v);
            }
        }
        let mut evidence = Evidence::judged(verdicts);
        for r in span_requests(&policy, known, candidates, Some(BAND)) {
            evidence.insert_span_cosine(&r.existing_hash, &r.candidate_hash, 1.0);
        }
        let decisions = known
            .iter()
            .flat_map(|k| {
                candidates
                    .iter()
                    .map(|c| policy.decide(k.as_ref(), c.as_ref(), &evidence))
            })
            .collect();
        (plan(&policy, known, candidates, &evidence), decisions)
    }

    #[test]
    fn in_the_band_the_verdict_decides_and_no_usable_verdict_keeps_the_candidate_apart(
    ) -> TestResult {
        let notes = [known(7, "Patience is the key to relief.", axis(0)?)];
        // Below the threshold (0.9): the rules alone keep it apart.
        let cands = [candidate("Patience unlocks relief.", tilted(0.8, 1)?)];
        assert_eq!(run(&notes, &cands), [Action::Insert]);
        for (verdict, action, reason) in [
            (
                Some(Verdict::Same),
                Action::Reinforce {
                    note: NoteId(7),
                    decision: Decision {
                        cosine: 0.0,
                        duplicate: true,
                        reason: Reason::JudgedSame,
                        span_cosine: None,
                    },
                },
                Reason::JudgedSame,
            ),
            (
                Some(Verdict::Different),
                Action::Insert,
                Reason::JudgedDifferent,
            ),
            (Some(Verdict::Failed), Action::Insert, Reason::JudgeFailed),
            (None, Action::Insert, Reason::Unjudged),
        ] {
            let (actions, decisions) = run_judged(&notes, &cands, verdict);
            assert_eq!(decisions[0].reason, reason, "{verdict:?}");
            match (actions.as_slice(), action) {
                ([Action::Reinforce { note, decision }], Action::Reinforce { note: n, .. }) => {
                    assert_eq!((*note, decision.reason), (n, reason));
                }
                (got, want) => assert_eq!(got, [want], "{verdict:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn a_different_verdict_keeps_apart_a_pair_the_rules_merge() -> TestResult {
        let notes = [known(7, "Patience is the key to relief.", axis(0)?)];
        let cands = [candidate("Patience unlocks relief.", tilted(0.93, 1)?)];
        assert!(matches!(
            run(&notes, &cands).as_slice(),
            [Action::Reinforce { .. }]
        ));
        let (actions, _) = run_judged(&notes, &cands, Some(Verdict::Different));
        assert_eq!(actions, [Action::Insert]);
        Ok(())
    }

    #[test]
    fn the_judge_is_not_asked_about_guarded_exact_or_out_of_band_pairs() -> TestResult {
        let policy = DedupPolicy::with_threshold(THRESHOLD);
        let notes = [known(7, "Trust builds friendship.", axis(0)?)];
        for (text, embedding) in [
            ("Trust does not build friendship.", tilted(0.8, 1)?), // negation guard
            ("Trust builds friendship!", tilted(0.8, 1)?),         // exact after normalising
            ("Charity purifies wealth.", tilted(0.3, 1)?),         // below the band
            ("Trust grows friendship.", tilted(0.97, 1)?),         // above it: the rules
        ] {
            let cands = [candidate(text, embedding)];
            assert!(
                judge_requests(&policy, BAND, &notes, &cands).is_empty(),
                "{text}"
            );
        }
        // Above the band the span guard still applies, in the band it does not.
        let above = [candidate("Trust grows friendship.", tilted(0.97, 1)?)];
        assert_eq!(span_requests(&policy, &notes, &above, Some(BAND)).len(), 1);
        let inside = [candidate("Trust grows friendship.", tilted(0.93, 1)?)];
        assert!(span_requests(&policy, &notes, &inside, Some(BAND)).is_empty());
        assert_eq!(judge_requests(&policy, BAND, &notes, &inside).len(), 1);
        Ok(())
    }

    #[test]
    fn a_short_budget_goes_to_every_candidates_closest_pair_first() -> TestResult {
        let policy = DedupPolicy::with_threshold(THRESHOLD);
        let notes = [
            known(1, "Patience is the key to relief.", axis(0)?),
            known(2, "Patience brings relief.", axis(1)?),
            known(3, "Charity cleans wealth.", axis(2)?),
            known(4, "Charity blesses wealth.", axis(3)?),
        ];
        let cands = [
            candidate("Patience unlocks relief.", mix(&[(0, 0.8), (1, 0.55)], 5)?),
            candidate("Charity purifies wealth.", mix(&[(2, 0.6), (3, 0.75)], 6)?),
        ];
        let order: Vec<(String, String)> = judge_requests(&policy, BAND, &notes, &cands)
            .into_iter()
            .map(|r| (r.existing, r.candidate))
            .collect();
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            order,
            [
                pair("Patience is the key to relief.", "Patience unlocks relief."),
                pair("Charity blesses wealth.", "Charity purifies wealth."),
                pair("Patience brings relief.", "Patience unlocks relief."),
                pair("Charity cleans wealth.", "Charity purifies wealth."),
            ]
        );
        Ok(())
    }
}
