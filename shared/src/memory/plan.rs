//! The memory decision for one event, as a pure function: what to do with each candidate note,
//! given the user's notes. The store runs the SQL around it (lock, idempotency row, load,
//! execute, counts); nothing here knows about the database.
//!
//! Each candidate is decided with [`DedupPolicy::best_match`] against the user's notes and
//! against the record's earlier candidates that are inserted, in that order. Two rules hold for
//! one event:
//! - a candidate repeating an earlier candidate of the same event is a duplicate but reinforces
//!   nothing (the note it repeats is new: it was not "seen again");
//! - a note is reinforced at most once per event, however many candidates match it, so
//!   `times_seen` counts events, not sentences.

use crate::memory::dedup::{Decision, DedupPolicy, NoteRef};
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

/// The actions for `candidates` (one per candidate, in order) against the user's `known` notes.
pub fn plan(policy: &DedupPolicy, known: &[KnownNote], candidates: &[Candidate]) -> Vec<Action> {
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

    let mut actions = Vec::with_capacity(candidates.len());
    for (index, candidate) in candidates.iter().enumerate() {
        let this = NoteRef {
            text: &candidate.text,
            content_hash: &candidate.content_hash,
            embedding: &candidate.embedding,
        };
        // Only notes that can be duplicates reach the (exact) decision: the same hash, or a
        // cosine that may reach the threshold (a proven bound, so no decision changes).
        let comparable = notes.iter().enumerate().filter(|(_, (n, _))| {
            n.content_hash == this.content_hash
                || may_reach(n.embedding, this.embedding, policy.threshold)
        });
        let matched = policy.best_match(this, comparable.map(|(i, (n, _))| (i, *n)));
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
    use crate::memory::dedup::Reason;
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

    fn run(known: &[KnownNote], candidates: &[Candidate]) -> Vec<Action> {
        plan(&DedupPolicy::with_threshold(THRESHOLD), known, candidates)
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
}
