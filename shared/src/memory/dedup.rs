//! THE duplicate decision, used identically by the memory consumer and `hikmah dedup`.
//!
//! Precision first: a note wrongly judged a duplicate is information lost for good, while a
//! missed duplicate costs one redundant row. So a candidate is a duplicate of an existing note
//! only when
//! 1. their normalised texts are equal (exact: case, punctuation, whitespace, transliteration
//!    marks folded; see [`normalize`](super::normalize::normalize)), or
//! 2. the cosine of their embeddings is at least the threshold (`DEDUP_THRESHOLD`) **and** none
//!    of the guards below fires. The guards cover what all-MiniLM-L6-v2 is known to get wrong:
//!    it scores a sentence and its negation ≈ 0.98 and barely notices a swapped key word.
//!    - **negation**: the two notes differ in negation parity (`not`, `never`, `no`, `without`,
//!      `n't` contractions, ...);
//!    - **numbers**: they mention different numbers (digits or number words);
//!    - **opposite terms**: one has a word of an opposite pair the other lacks and the other has
//!      its counterpart (`easy`/`hard`, `more`/`less`, `hope`/`despair`, ...);
//!    - **different concept**: both name key concepts (virtues and practices, in English or
//!      transliterated: `sabr` = patience, `shukr` = gratitude, `tawakkul` = trust, ...) and the
//!      sets differ (`sabr is half of faith` vs `shukr is half of faith`).
//!
//! Embeddings are L2-normalised, so the cosine is a dot product.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::DedupConfig;
use crate::memory::normalize::{collapse_whitespace, normalize};
use crate::types::Embedding;

/// Why a candidate is or is not a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Equal after normalisation.
    ExactMatch,
    /// Cosine at or above the threshold and no guard fired.
    SemanticMatch,
    /// Cosine below the threshold.
    BelowThreshold,
    /// Similar, but one negates what the other states.
    NegationDiffers,
    /// Similar, but they mention different numbers.
    NumbersDiffer,
    /// Similar, but they use opposite terms (easy/hard, more/less, ...).
    OppositeTerms,
    /// Similar, but about different key concepts (sabr vs shukr, ...).
    DifferentConcept,
}

impl Reason {
    /// The reason as printed by `hikmah dedup` and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExactMatch => "exact_match",
            Self::SemanticMatch => "semantic_match",
            Self::BelowThreshold => "below_threshold",
            Self::NegationDiffers => "negation_differs",
            Self::NumbersDiffer => "numbers_differ",
            Self::OppositeTerms => "opposite_terms",
            Self::DifferentConcept => "different_concept",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of comparing one candidate with one existing note.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    /// Cosine similarity of the two embeddings.
    pub cosine: f32,
    /// Whether the candidate duplicates the existing note.
    pub duplicate: bool,
    /// Why.
    pub reason: Reason,
}

/// A note as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct NoteRef<'a> {
    /// The note's text (as stored; normalised here when needed).
    pub text: &'a str,
    /// Its [`content_hash`](super::normalize::content_hash).
    pub content_hash: &'a str,
    /// Its embedding (of [`embedding_text`]).
    pub embedding: &'a Embedding,
}

/// The text that is embedded for a note: the same function for stored notes, candidates and
/// `hikmah dedup`, so their cosines are comparable.
///
/// The model does not know transliterated Arabic terms (`sabr` becomes meaningless word pieces,
/// so `sabr is half of faith` and `shukr is half of faith` look alike to it), so each known term
/// is replaced by its English meaning before embedding (the concepts table). Whitespace is collapsed
/// and a final `.` or `!` dropped: a trailing period alone moves this model's cosine by > 0.1.
/// The stored note keeps its original text.
pub fn embedding_text(note: &str) -> String {
    let words: Vec<String> = collapse_whitespace(note)
        .split(' ')
        .map(|word| {
            let start = word
                .find(|c: char| c.is_alphanumeric())
                .unwrap_or(word.len());
            let end = word
                .rfind(|c: char| c.is_alphanumeric())
                .map(|i| i + word[i..].chars().next().map_or(1, char::len_utf8))
                .unwrap_or(start);
            if start >= end {
                return word.to_owned();
            }
            let core = normalize(&word[start..end]);
            match gloss(&core) {
                Some(meaning) => format!("{}{meaning}{}", &word[..start], &word[end..]),
                None => word.to_owned(),
            }
        })
        .collect();
    let mut text = words.join(" ");
    while text.ends_with(['.', '!']) {
        text.pop();
    }
    text
}

/// A key concept: the English words that name it, and its transliterated terms, each with the
/// English the model is given instead of it.
struct Concept {
    /// Its name, as the different-concept guard compares it.
    name: &'static str,
    /// Whether the different-concept guard compares it (see [`gloss_only`]).
    guarded: bool,
    /// English words naming it, as they are after [`normalize`].
    english: &'static [&'static str],
    /// Transliterated terms (after [`normalize`]) and their English gloss for the embedder.
    transliterations: &'static [(&'static str, &'static str)],
}

impl Concept {
    fn is_named_by(&self, token: &str) -> bool {
        self.english.contains(&token) || self.transliterations.iter().any(|(t, _)| *t == token)
    }
}

/// A concept both glossed for the embedder and compared by the different-concept guard.
const fn concept(
    name: &'static str,
    english: &'static [&'static str],
    transliterations: &'static [(&'static str, &'static str)],
) -> Concept {
    Concept {
        name,
        guarded: true,
        english,
        transliterations,
    }
}

/// Terms glossed for the embedder but not compared by the different-concept guard: they usually
/// frame a note (half of *iman*, the *akhirah*) rather than name its point, no labelled pair
/// was tuned with them as concepts, and `dunya`/`akhirah`/`jannah` are opposite terms already.
const fn gloss_only(
    name: &'static str,
    transliterations: &'static [(&'static str, &'static str)],
) -> Concept {
    Concept {
        name,
        guarded: false,
        english: &[],
        transliterations,
    }
}

/// The one table of key concepts: [`embedding_text`] glosses every transliterated term in it,
/// and the different-concept guard compares the guarded ones (English or transliterated).
/// `ramadan` is listed as English: the model knows it.
const CONCEPTS: &[Concept] = &[
    concept(
        "patience",
        &[
            "patience",
            "patient",
            "patiently",
            "persevere",
            "perseverance",
            "steadfast",
            "steadfastness",
            "endure",
            "endurance",
            "forbearance",
        ],
        &[("sabr", "patience")],
    ),
    concept(
        "gratitude",
        &[
            "gratitude",
            "grateful",
            "gratefully",
            "thankful",
            "thankfulness",
            "thanks",
            "thank",
            "thanking",
        ],
        &[("shukr", "gratitude")],
    ),
    concept(
        "trust",
        &[
            "trust", "trusting", "trusts", "reliance", "rely", "relies", "relying",
        ],
        &[("tawakkul", "trust in Allah")],
    ),
    concept(
        "repentance",
        &["repentance", "repent", "repenting", "repents"],
        &[("tawbah", "repentance"), ("tawba", "repentance")],
    ),
    concept(
        "remembrance",
        &["remembrance"],
        &[
            ("dhikr", "remembrance of Allah"),
            ("zikr", "remembrance of Allah"),
        ],
    ),
    concept(
        "prayer",
        &["prayer", "prayers", "pray", "praying", "prays"],
        &[("salah", "prayer"), ("salat", "prayer")],
    ),
    concept(
        "supplication",
        &["supplication", "supplicate"],
        &[("dua", "supplication"), ("duas", "supplications")],
    ),
    concept(
        "charity",
        &["charity", "charitable", "alms"],
        &[
            ("sadaqah", "charity"),
            ("sadaqa", "charity"),
            ("zakat", "obligatory charity"),
            ("zakah", "obligatory charity"),
        ],
    ),
    concept(
        "fasting",
        &["fasting", "fast", "fasts", "ramadan"],
        &[("sawm", "fasting"), ("siyam", "fasting")],
    ),
    concept(
        "forgiveness",
        &[
            "forgive",
            "forgives",
            "forgiving",
            "forgiveness",
            "forgiven",
            "pardon",
        ],
        &[("maghfirah", "forgiveness")],
    ),
    concept(
        "humility",
        &["humility", "humble", "humbly"],
        &[("tawadu", "humility")],
    ),
    concept(
        "sincerity",
        &["sincerity", "sincere", "sincerely"],
        &[("ikhlas", "sincerity")],
    ),
    concept(
        "mercy",
        &["mercy", "merciful", "compassion", "compassionate"],
        &[("rahmah", "mercy")],
    ),
    concept(
        "knowledge",
        &["knowledge", "learning", "learn", "scholar", "scholars"],
        &[("ilm", "knowledge")],
    ),
    concept(
        "contentment",
        &["contentment", "content", "contented"],
        &[("qanaah", "contentment")],
    ),
    concept(
        "piety",
        &["piety", "pious", "godfearing"],
        &[("taqwa", "God-consciousness")],
    ),
    concept(
        "honesty",
        &["honesty", "honest", "truthfulness", "truthful"],
        &[("sidq", "truthfulness")],
    ),
    concept(
        "justice",
        &["justice", "just", "fairness", "fair"],
        &[("adl", "justice")],
    ),
    concept(
        "kindness",
        &["kindness", "kind", "gentle", "gentleness"],
        &[("rifq", "gentleness")],
    ),
    concept(
        "parents",
        &[
            "parents", "parent", "mother", "father", "mothers", "fathers",
        ],
        &[],
    ),
    concept("anger", &["anger", "angry", "rage"], &[("ghadab", "anger")]),
    concept(
        "envy",
        &["envy", "envious", "jealousy", "jealous"],
        &[("hasad", "envy")],
    ),
    concept(
        "backbiting",
        &["backbiting", "backbite", "gossip"],
        &[("ghibah", "backbiting")],
    ),
    concept(
        "intention",
        &["intention", "intentions"],
        &[("niyyah", "intention"), ("niyya", "intention")],
    ),
    concept("hope", &["hope", "hopes", "hopeful"], &[("raja", "hope")]),
    concept("fear", &["fear", "fears", "afraid"], &[("khawf", "fear")]),
    concept("death", &["death", "grave", "dying"], &[]),
    concept(
        "wealth",
        &["wealth", "money", "riches", "provision", "sustenance"],
        &[("rizq", "provision")],
    ),
    gloss_only("excellence", &[("ihsan", "excellence in worship")]),
    gloss_only("faith", &[("iman", "faith")]),
    gloss_only("wisdom", &[("hikmah", "wisdom")]),
    gloss_only("hereafter", &[("akhirah", "the hereafter")]),
    gloss_only("this world", &[("dunya", "this world")]),
    gloss_only("paradise", &[("jannah", "paradise")]),
];

/// The English gloss of a transliterated term (after [`normalize`]), if it is in `CONCEPTS`.
fn gloss(term: &str) -> Option<&'static str> {
    CONCEPTS
        .iter()
        .flat_map(|c| c.transliterations)
        .find(|(t, _)| *t == term)
        .map(|(_, english)| *english)
}

/// The duplicate decision with its threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupPolicy {
    /// Cosine at or above which a candidate may be a semantic duplicate.
    pub threshold: f32,
}

impl Default for DedupPolicy {
    fn default() -> Self {
        Self {
            threshold: DedupConfig::DEFAULT_THRESHOLD,
        }
    }
}

impl From<&DedupConfig> for DedupPolicy {
    fn from(cfg: &DedupConfig) -> Self {
        Self {
            threshold: cfg.threshold,
        }
    }
}

impl DedupPolicy {
    /// A policy with the given threshold.
    pub fn with_threshold(threshold: f32) -> Self {
        Self { threshold }
    }

    /// Whether `candidate` duplicates `existing`.
    pub fn decide(&self, existing: NoteRef<'_>, candidate: NoteRef<'_>) -> Decision {
        let cosine = existing.embedding.cosine(candidate.embedding);
        if existing.content_hash == candidate.content_hash {
            return Decision {
                cosine,
                duplicate: true,
                reason: Reason::ExactMatch,
            };
        }
        if cosine < self.threshold {
            return Decision {
                cosine,
                duplicate: false,
                reason: Reason::BelowThreshold,
            };
        }
        match guard(existing.text, candidate.text) {
            Some(reason) => Decision {
                cosine,
                duplicate: false,
                reason,
            },
            None => Decision {
                cosine,
                duplicate: true,
                reason: Reason::SemanticMatch,
            },
        }
    }

    /// The note `candidate` duplicates among `existing` (an exact match wins, then the highest
    /// cosine), with the decision; `None` when it duplicates none.
    pub fn best_match<'a, K: Copy>(
        &self,
        candidate: NoteRef<'_>,
        existing: impl IntoIterator<Item = (K, NoteRef<'a>)>,
    ) -> Option<(K, Decision)> {
        let mut best: Option<(K, Decision)> = None;
        for (key, note) in existing {
            // Cheap pre-check: exact hash or a cosine that can pass; the guards run only then.
            let d = self.decide(note, candidate);
            if !d.duplicate {
                continue;
            }
            if d.reason == Reason::ExactMatch {
                return Some((key, d));
            }
            if best.as_ref().is_none_or(|(_, b)| d.cosine > b.cosine) {
                best = Some((key, d));
            }
        }
        best
    }
}

/// The first guard that fires for two similar notes, if any.
fn guard(a: &str, b: &str) -> Option<Reason> {
    let (na, nb) = (normalize(a), normalize(b));
    let ta: Vec<&str> = na.split(' ').collect();
    let tb: Vec<&str> = nb.split(' ').collect();
    if negation_parity(&ta) != negation_parity(&tb) {
        return Some(Reason::NegationDiffers);
    }
    if numbers(&ta) != numbers(&tb) {
        return Some(Reason::NumbersDiffer);
    }
    if opposite_terms(&ta, &tb) {
        return Some(Reason::OppositeTerms);
    }
    let (ca, cb) = (concepts(&ta), concepts(&tb));
    if !ca.is_empty() && !cb.is_empty() && ca != cb {
        return Some(Reason::DifferentConcept);
    }
    None
}

/// Words that negate (after normalisation, so `don't` is `dont`).
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "nor", "neither", "none", "nothing", "nobody", "nowhere", "without",
    "cannot", "hardly", "barely", "rarely", "seldom", "lack", "lacks", "lacking", "unable", "fail",
    "fails", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "cant", "couldnt",
    "wont", "wouldnt", "shouldnt", "mustnt", "neednt", "hasnt", "havent", "hadnt", "aint",
];

fn negation_parity(tokens: &[&str]) -> bool {
    tokens.iter().filter(|t| NEGATIONS.contains(t)).count() % 2 == 1
}

const NUMBER_WORDS: &[&str] = &[
    "zero", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "million", "once",
    "twice", "thrice", "half", "first", "second", "third", "fourth", "fifth", "seventh", "tenth",
];

fn numbers<'a>(tokens: &[&'a str]) -> BTreeSet<&'a str> {
    tokens
        .iter()
        .copied()
        .filter(|t| t.chars().all(|c| c.is_ascii_digit()) || NUMBER_WORDS.contains(t))
        .collect()
}

/// Pairs of opposite terms (each side lists its inflections).
const OPPOSITES: &[(&[&str], &[&str])] = &[
    (
        &["easy", "easier", "easiest", "easily", "ease"],
        &[
            "hard",
            "harder",
            "hardest",
            "difficult",
            "difficulty",
            "hardship",
        ],
    ),
    (
        &[
            "more",
            "most",
            "increase",
            "increases",
            "increased",
            "grows",
            "grow",
        ],
        &[
            "less",
            "least",
            "fewer",
            "decrease",
            "decreases",
            "decreased",
            "shrinks",
            "shrink",
        ],
    ),
    (
        &["always", "often"],
        &["sometimes", "rarely", "seldom", "never"],
    ),
    (
        &["strong", "stronger", "strength", "strengthens"],
        &["weak", "weaker", "weakness", "weakens"],
    ),
    (
        &["rich", "richer", "wealth", "wealthy"],
        &["poor", "poorer", "poverty"],
    ),
    (
        &["love", "loves", "loved", "loving"],
        &["hate", "hates", "hated", "hatred"],
    ),
    (
        &["gain", "gains", "win", "wins"],
        &["lose", "loses", "loss", "losses"],
    ),
    (
        &["success", "succeed", "succeeds", "successful"],
        &["failure", "fail", "fails", "failed"],
    ),
    (&["before"], &["after"]),
    (&["early", "earlier"], &["late", "later"]),
    (
        &["remember", "remembers", "remembering"],
        &["forget", "forgets", "forgetting", "forgetful"],
    ),
    (
        &["give", "gives", "giving", "given"],
        &[
            "take",
            "takes",
            "taking",
            "taken",
            "receive",
            "receives",
            "receiving",
        ],
    ),
    (
        &["hope", "hopeful", "hopes"],
        &["despair", "despairs", "hopeless", "hopelessness"],
    ),
    (
        &["happy", "happiness", "joy", "joyful", "glad"],
        &["sad", "sadness", "sorrow", "grief", "unhappy"],
    ),
    (
        &["good", "better", "best"],
        &["bad", "worse", "worst", "evil"],
    ),
    (&["right"], &["wrong"]),
    (
        &["halal", "permissible", "allowed"],
        &["haram", "forbidden", "prohibited"],
    ),
    (
        &["humble", "humility"],
        &["arrogant", "arrogance", "proud", "pride"],
    ),
    (
        &["generous", "generosity"],
        &["stingy", "greedy", "greed", "miserly"],
    ),
    (
        &["honest", "honesty", "truth", "truthful"],
        &["dishonest", "lie", "lies", "lying", "liar"],
    ),
    (&["calm", "calmness"], &["anger", "angry", "rage"]),
    (
        &["reward", "rewards", "rewarded"],
        &["punishment", "punished", "punishes"],
    ),
    (
        &["paradise", "heaven", "jannah"],
        &["hell", "hellfire", "jahannam"],
    ),
    (&["life", "living", "alive"], &["death", "dying", "dead"]),
    (&["dunya", "worldly"], &["akhirah", "hereafter"]),
    (
        &["inner", "inward", "inside", "heart"],
        &["outer", "outward", "outside", "appearance"],
    ),
    (
        &["beginning", "start", "starts", "begin"],
        &["end", "ends", "ending", "finish"],
    ),
    (
        &["secret", "secretly", "hidden", "private"],
        &["public", "publicly", "openly", "open"],
    ),
    (&["alone", "yourself"], &["together", "others", "community"]),
    (
        &["speak", "speaking", "speech", "talk", "talking"],
        &["silence", "silent", "quiet"],
    ),
    (&["friend", "friends"], &["enemy", "enemies"]),
    (
        &["patient", "patience"],
        &["impatient", "impatience", "hasty", "haste"],
    ),
    (
        &["grateful", "thankful", "gratitude"],
        &["ungrateful", "ingratitude", "complain", "complaining"],
    ),
    (
        &["accept", "accepts", "accepting", "acceptance"],
        &["reject", "rejects", "rejecting", "resist", "resisting"],
    ),
    (&["light"], &["dark", "darkness"]),
    (&["morning", "dawn"], &["night", "evening"]),
];

fn opposite_terms(a: &[&str], b: &[&str]) -> bool {
    let only = |x: &[&str], y: &[&str], pole: &[&str]| {
        pole.iter().any(|w| x.contains(w) && !y.contains(w))
    };
    OPPOSITES
        .iter()
        .any(|(p, q)| (only(a, b, p) && only(b, a, q)) || (only(a, b, q) && only(b, a, p)))
}

fn concepts(tokens: &[&str]) -> BTreeSet<&'static str> {
    CONCEPTS
        .iter()
        .filter(|c| c.guarded && tokens.iter().any(|t| c.is_named_by(t)))
        .map(|c| c.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::normalize::content_hash;
    use crate::types::EMBEDDING_DIM;

    fn unit(i: usize) -> Result<Embedding, Box<dyn std::error::Error>> {
        let mut v = vec![0.0; EMBEDDING_DIM];
        v[i] = 1.0;
        Ok(Embedding::normalized(v)?)
    }

    fn mixed(cos: f32) -> Result<Embedding, Box<dyn std::error::Error>> {
        // A unit vector whose cosine with unit(0) is `cos`.
        let mut v = vec![0.0; EMBEDDING_DIM];
        v[0] = cos;
        v[1] = (1.0 - cos * cos).sqrt();
        Ok(Embedding::normalized(v)?)
    }

    fn decide(a: &str, b: &str, eb: &Embedding) -> Result<Decision, Box<dyn std::error::Error>> {
        let (ha, hb) = (content_hash(a), content_hash(b));
        let ea = unit(0)?;
        Ok(DedupPolicy::with_threshold(0.9).decide(
            NoteRef {
                text: a,
                content_hash: &ha,
                embedding: &ea,
            },
            NoteRef {
                text: b,
                content_hash: &hb,
                embedding: eb,
            },
        ))
    }

    #[test]
    fn equal_after_normalisation_is_an_exact_duplicate_whatever_the_cosine(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let d = decide(
            "Patience is the key to relief.",
            "patience is the KEY to relief",
            &unit(1)?,
        )?;
        assert_eq!((d.duplicate, d.reason), (true, Reason::ExactMatch));
        Ok(())
    }

    #[test]
    fn below_threshold_is_not_a_duplicate() -> Result<(), Box<dyn std::error::Error>> {
        let d = decide(
            "Patience is the key to relief.",
            "Relief follows patience.",
            &mixed(0.85)?,
        )?;
        assert_eq!((d.duplicate, d.reason), (false, Reason::BelowThreshold));
        assert!((d.cosine - 0.85).abs() < 1e-4);
        Ok(())
    }

    #[test]
    fn similar_without_guard_is_a_semantic_duplicate() -> Result<(), Box<dyn std::error::Error>> {
        let d = decide(
            "Patience is the key to relief.",
            "Patience is what unlocks relief.",
            &mixed(0.93)?,
        )?;
        assert_eq!((d.duplicate, d.reason), (true, Reason::SemanticMatch));
        Ok(())
    }

    #[test]
    fn guards_catch_what_the_model_gets_wrong() -> Result<(), Box<dyn std::error::Error>> {
        let e = mixed(0.98)?;
        let cases = [
            (
                "She finds it easy to forgive others.",
                "She finds it hard to forgive others.",
                Reason::OppositeTerms,
            ),
            (
                "He does not give up on prayer.",
                "He gives up on prayer.",
                Reason::NegationDiffers,
            ),
            ("Don't lose hope.", "Lose hope.", Reason::NegationDiffers),
            (
                "Pray 3 times a day.",
                "Pray 5 times a day.",
                Reason::NumbersDiffer,
            ),
            (
                "Sabr is half of faith.",
                "Shukr is half of faith.",
                Reason::DifferentConcept,
            ),
        ];
        for (a, b, reason) in cases {
            let d = decide(a, b, &e)?;
            assert_eq!((d.duplicate, d.reason), (false, reason), "{a} / {b}");
        }
        Ok(())
    }

    #[test]
    fn transliterated_and_english_terms_are_the_same_concept(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let d = decide(
            "Sabr is the key to relief.",
            "Patience is the key to relief.",
            &mixed(0.95)?,
        )?;
        assert_eq!((d.duplicate, d.reason), (true, Reason::SemanticMatch));
        Ok(())
    }

    #[test]
    fn best_match_prefers_exact_then_highest_cosine() -> Result<(), Box<dyn std::error::Error>> {
        let policy = DedupPolicy::with_threshold(0.9);
        let texts = [
            "Patience brings relief.",
            "Patience is the key to relief.",
            "Patience, the key to relief",
        ];
        let hashes: Vec<String> = texts.iter().map(|t| content_hash(t)).collect();
        let embs = [mixed(0.95)?, mixed(0.97)?, unit(1)?];
        let cand_e = unit(0)?;
        let cand = NoteRef {
            text: "patience is the key to relief",
            content_hash: &hashes[1],
            embedding: &cand_e,
        };
        let existing = (0..3).map(|i| {
            (
                i,
                NoteRef {
                    text: texts[i],
                    content_hash: &hashes[i],
                    embedding: &embs[i],
                },
            )
        });
        let (k, d) = policy.best_match(cand, existing).ok_or("no match")?;
        assert_eq!((k, d.reason), (1, Reason::ExactMatch));

        let other_hash = content_hash("Relief comes with patience.");
        let cand = NoteRef {
            text: "Relief comes with patience.",
            content_hash: &other_hash,
            embedding: &cand_e,
        };
        let existing = (0..3).map(|i| {
            (
                i,
                NoteRef {
                    text: texts[i],
                    content_hash: &hashes[i],
                    embedding: &embs[i],
                },
            )
        });
        let (k, d) = policy.best_match(cand, existing).ok_or("no match")?;
        assert_eq!((k, d.reason), (1, Reason::SemanticMatch));
        Ok(())
    }

    #[test]
    fn embedding_text_glosses_transliterations_and_drops_the_final_period() {
        assert_eq!(
            embedding_text("  Ṣabr is half of   faith. "),
            "patience is half of faith"
        );
        assert_eq!(
            embedding_text("\"Shukr\", then tawakkul!"),
            "\"gratitude\", then trust in Allah"
        );
        assert_eq!(embedding_text("Why sabr?"), "Why patience?");
        assert_eq!(embedding_text("Sabrina smiled."), "Sabrina smiled");
    }

    #[test]
    fn every_transliterated_term_of_the_concepts_is_glossed_before_embedding() {
        for (term, english) in CONCEPTS.iter().flat_map(|c| c.transliterations) {
            assert_eq!(embedding_text(term), *english, "{term}");
        }
        assert_eq!(
            embedding_text("Siyām, ṣidq and rifq."),
            "fasting, truthfulness and gentleness"
        );
    }

    #[test]
    fn a_transliterated_term_names_its_concept_for_the_guard() {
        assert_eq!(concepts(&["sidq"]), concepts(&["honesty"]));
        assert_eq!(concepts(&["khawf", "raja"]), concepts(&["fear", "hope"]));
        assert!(
            concepts(&["iman", "akhirah"]).is_empty(),
            "gloss-only terms"
        );
    }

    #[test]
    fn reasons_serialise_in_snake_case() -> Result<(), Box<dyn std::error::Error>> {
        let d = Decision {
            cosine: 0.5,
            duplicate: false,
            reason: Reason::BelowThreshold,
        };
        assert_eq!(serde_json::to_value(d)?["reason"], "below_threshold");
        Ok(())
    }
}
