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
//! With `DEDUP_JUDGE=llm`, a pair whose cosine is in the judge's band and that no exact match or
//! text guard decides is decided by the judge's [`Verdict`] instead (no usable verdict: kept
//! apart); see [`judge`](super::judge).
//!
//! Embeddings are L2-normalised, so the cosine is a dot product.

use std::collections::{BTreeSet, HashMap};

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
    /// Similar, but the words they do not share are in a script the model cannot read.
    UnreadableText,
    /// Similar, but their shared words are in another order (roles or sequence swapped).
    WordOrder,
    /// Similar, but about different people (`I`/`he`/`she`/`we`/`they`...).
    PersonsDiffer,
    /// Similar, but one is marked `Asked:` and the other `Reflected on:`.
    KindDiffers,
    /// Similar, but the parts that differ mean different things to the model.
    DifferentContent,
    /// Similar, but the differing parts were not measured (conservative: kept apart).
    Unmeasured,
    /// In the judge's band, and the judge answered `same`.
    JudgedSame,
    /// In the judge's band, and the judge answered `different`.
    JudgedDifferent,
    /// In the judge's band, and the judge gave no usable answer (conservative: kept apart).
    JudgeFailed,
    /// In the judge's band, but the judge was not asked (budget spent, or a note stored after
    /// the judge ran): conservatively kept apart.
    Unjudged,
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
            Self::UnreadableText => "unreadable_text",
            Self::WordOrder => "word_order",
            Self::PersonsDiffer => "persons_differ",
            Self::KindDiffers => "kind_differs",
            Self::DifferentContent => "different_content",
            Self::Unmeasured => "unmeasured",
            Self::JudgedSame => "judged_same",
            Self::JudgedDifferent => "judged_different",
            Self::JudgeFailed => "judge_failed",
            Self::Unjudged => "unjudged",
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
    /// Cosine of the two notes' differing spans, when the span guard measured them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_cosine: Option<f32>,
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

/// The duplicate decision with its thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupPolicy {
    /// Cosine at or above which a candidate may be a semantic duplicate.
    pub threshold: f32,
    /// Cosine of the two notes' differing spans below which they say different things.
    pub span_threshold: f32,
}

impl Default for DedupPolicy {
    fn default() -> Self {
        Self::with_threshold(DedupConfig::DEFAULT_THRESHOLD)
    }
}

impl From<&DedupConfig> for DedupPolicy {
    fn from(cfg: &DedupConfig) -> Self {
        Self {
            threshold: cfg.threshold,
            span_threshold: cfg.span_threshold,
        }
    }
}

/// What the span guard compares for one pair: the words each note has that the other lacks, in
/// order, as the embedder is given them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spans {
    /// The existing note's differing words.
    pub existing: String,
    /// The candidate's differing words.
    pub candidate: String,
}

/// The model's measurements the guards need beyond the two notes' own embeddings: the cosine of
/// each pair's differing spans, keyed by the two notes' content hashes, and, with the judge on,
/// its [`Verdicts`]. Computed before [`plan`](super::plan::plan) runs, so the decision itself
/// stays pure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    span_cosines: HashMap<(String, String), f32>,
    verdicts: Option<Verdicts>,
}

impl Evidence {
    /// Evidence where the judge decides the pairs in its band (see [`Verdicts`]).
    pub fn judged(verdicts: Verdicts) -> Self {
        Self {
            span_cosines: HashMap::new(),
            verdicts: Some(verdicts),
        }
    }

    /// The judge's band, when the judge is on.
    pub fn judge_band(&self) -> Option<JudgeBand> {
        self.verdicts.as_ref().map(|v| v.band)
    }

    /// Records the span cosine of (existing, candidate), by content hash.
    pub fn insert_span_cosine(&mut self, existing_hash: &str, candidate_hash: &str, cosine: f32) {
        self.span_cosines.insert(
            (existing_hash.to_owned(), candidate_hash.to_owned()),
            cosine,
        );
    }

    /// The span cosine of (existing, candidate), if measured.
    pub fn span_cosine(&self, existing_hash: &str, candidate_hash: &str) -> Option<f32> {
        self.span_cosines
            .get(&(existing_hash.to_owned(), candidate_hash.to_owned()))
            .copied()
    }

    /// How many pairs were measured.
    pub fn len(&self) -> usize {
        self.span_cosines.len()
    }

    /// Whether nothing was measured.
    pub fn is_empty(&self) -> bool {
        self.span_cosines.is_empty()
    }
}

/// The cosine band in which the LLM judge decides instead of the threshold and the span guard:
/// `low <= cosine < high` (`DEDUP_JUDGE_BAND`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JudgeBand {
    /// Lowest cosine judged.
    pub low: f32,
    /// Cosine from which the rules decide again.
    pub high: f32,
}

impl JudgeBand {
    /// Whether the judge decides a pair of this cosine.
    pub fn contains(&self, cosine: f32) -> bool {
        self.low <= cosine && cosine < self.high
    }
}

/// What the judge answered for one pair (see [`crate::memory::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The two notes say the same thing.
    Same,
    /// They say different things.
    Different,
    /// No usable answer: an error, the timeout, or anything but `same` / `different`.
    Failed,
}

/// The judge's answers for one record, keyed by the two notes' content hashes, with the band
/// they were asked in. A pair in the band without a verdict is kept apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdicts {
    band: JudgeBand,
    by_pair: HashMap<(String, String), Verdict>,
}

impl Verdicts {
    /// No verdicts yet, for pairs in `band`.
    pub fn new(band: JudgeBand) -> Self {
        Self {
            band,
            by_pair: HashMap::new(),
        }
    }

    /// The band the judge decides.
    pub fn band(&self) -> JudgeBand {
        self.band
    }

    /// Records the verdict on (existing, candidate), by content hash.
    pub fn insert(&mut self, existing_hash: &str, candidate_hash: &str, verdict: Verdict) {
        self.by_pair.insert(
            (existing_hash.to_owned(), candidate_hash.to_owned()),
            verdict,
        );
    }

    /// The verdict on (existing, candidate), if the judge was asked.
    pub fn get(&self, existing_hash: &str, candidate_hash: &str) -> Option<Verdict> {
        self.by_pair
            .get(&(existing_hash.to_owned(), candidate_hash.to_owned()))
            .copied()
    }

    /// How many of each verdict: (same, different, failed).
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |v| self.by_pair.values().filter(|x| **x == v).count();
        (
            count(Verdict::Same),
            count(Verdict::Different),
            count(Verdict::Failed),
        )
    }

    /// How many pairs the judge was asked about.
    pub fn len(&self) -> usize {
        self.by_pair.len()
    }

    /// Whether the judge was asked nothing.
    pub fn is_empty(&self) -> bool {
        self.by_pair.is_empty()
    }
}

/// Where a pair stands before the model-based span guard.
enum Stage {
    /// Decided already.
    Decided(Decision),
    /// Similar and no text guard fired; the spans (if both notes have differing words) decide.
    NeedsSpans(f32, Option<Spans>),
    /// In the judge's band and no text guard fired: the judge's verdict decides.
    NeedsVerdict(f32),
}

impl DedupPolicy {
    /// A policy with the given cosine threshold (and the default span threshold).
    pub fn with_threshold(threshold: f32) -> Self {
        Self {
            threshold,
            span_threshold: DedupConfig::DEFAULT_SPAN_THRESHOLD,
        }
    }

    /// The lowest cosine at which a pair can be a semantic duplicate: the threshold, or the low
    /// end of the judge's `band` when a judge decides (an exact match needs no cosine). The
    /// prefilters skip only pairs below it.
    pub fn merge_floor(&self, band: Option<JudgeBand>) -> f32 {
        band.map_or(self.threshold, |band| band.low.min(self.threshold))
    }

    /// Everything but the span guard and the judge. With a judge `band`, a pair in it that no
    /// exact match or text guard decides waits for the judge (below the threshold too).
    fn stage(
        &self,
        existing: NoteRef<'_>,
        candidate: NoteRef<'_>,
        band: Option<JudgeBand>,
    ) -> Stage {
        let cosine = existing.embedding.cosine(candidate.embedding);
        let decided = |duplicate, reason| {
            Stage::Decided(Decision {
                cosine,
                duplicate,
                reason,
                span_cosine: None,
            })
        };
        if existing.content_hash == candidate.content_hash {
            return decided(true, Reason::ExactMatch);
        }
        let judged = band.is_some_and(|b| b.contains(cosine));
        if !judged && cosine < self.threshold {
            return decided(false, Reason::BelowThreshold);
        }
        let (a, b) = (Words::of(existing.text), Words::of(candidate.text));
        match guard(&a, &b) {
            Some(reason) => decided(false, reason),
            None if judged => Stage::NeedsVerdict(cosine),
            None => Stage::NeedsSpans(cosine, differing_spans(&a, &b)),
        }
    }

    /// The spans the model must compare before `candidate` can be judged a duplicate of
    /// `existing`, or `None` when the decision does not need them (with a judge `band`, the pairs
    /// in it need the judge instead).
    pub fn spans_needed(
        &self,
        existing: NoteRef<'_>,
        candidate: NoteRef<'_>,
        band: Option<JudgeBand>,
    ) -> Option<Spans> {
        match self.stage(existing, candidate, band) {
            Stage::NeedsSpans(_, spans) => spans,
            Stage::Decided(_) | Stage::NeedsVerdict(_) => None,
        }
    }

    /// Whether the decision on this pair is the judge's: its cosine is in `band` and neither an
    /// exact match nor a text guard decides it. Returns the cosine then.
    pub fn verdict_needed(
        &self,
        existing: NoteRef<'_>,
        candidate: NoteRef<'_>,
        band: JudgeBand,
    ) -> Option<f32> {
        match self.stage(existing, candidate, Some(band)) {
            Stage::NeedsVerdict(cosine) => Some(cosine),
            Stage::Decided(_) | Stage::NeedsSpans(..) => None,
        }
    }

    /// Whether `candidate` duplicates `existing`, given the measured `evidence` (a pair whose
    /// spans were not measured, or, in the judge's band, without a usable verdict, is
    /// conservatively kept apart).
    pub fn decide(
        &self,
        existing: NoteRef<'_>,
        candidate: NoteRef<'_>,
        evidence: &Evidence,
    ) -> Decision {
        match self.stage(existing, candidate, evidence.judge_band()) {
            Stage::Decided(d) => d,
            Stage::NeedsVerdict(cosine) => {
                let verdict = evidence
                    .verdicts
                    .as_ref()
                    .and_then(|v| v.get(existing.content_hash, candidate.content_hash));
                let (duplicate, reason) = match verdict {
                    Some(Verdict::Same) => (true, Reason::JudgedSame),
                    Some(Verdict::Different) => (false, Reason::JudgedDifferent),
                    Some(Verdict::Failed) => (false, Reason::JudgeFailed),
                    None => (false, Reason::Unjudged),
                };
                Decision {
                    cosine,
                    duplicate,
                    reason,
                    span_cosine: None,
                }
            }
            Stage::NeedsSpans(cosine, None) => Decision {
                cosine,
                duplicate: true,
                reason: Reason::SemanticMatch,
                span_cosine: None,
            },
            Stage::NeedsSpans(cosine, Some(_)) => {
                let span_cosine =
                    evidence.span_cosine(existing.content_hash, candidate.content_hash);
                let (duplicate, reason) = match span_cosine {
                    None => (false, Reason::Unmeasured),
                    Some(c) if c < self.span_threshold => (false, Reason::DifferentContent),
                    Some(_) => (true, Reason::SemanticMatch),
                };
                Decision {
                    cosine,
                    duplicate,
                    reason,
                    span_cosine,
                }
            }
        }
    }

    /// The note `candidate` duplicates among `existing` (an exact match wins, then the highest
    /// cosine), with the decision; `None` when it duplicates none.
    pub fn best_match<'a, K: Copy>(
        &self,
        candidate: NoteRef<'_>,
        existing: impl IntoIterator<Item = (K, NoteRef<'a>)>,
        evidence: &Evidence,
    ) -> Option<(K, Decision)> {
        let mut best: Option<(K, Decision)> = None;
        for (key, note) in existing {
            let d = self.decide(note, candidate, evidence);
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

/// A note's words as the guards compare them.
struct Words {
    /// Normalised words (as [`normalize`] gives them).
    plain: Vec<String>,
    /// The same words folded for alignment: subject and object pronouns merged (`me` = `i`),
    /// a plural or third-person `s` dropped, number words as digits.
    folded: Vec<String>,
}

impl Words {
    fn of(text: &str) -> Self {
        let plain: Vec<String> = normalize(text)
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        let folded = plain.iter().map(|w| fold(w)).collect();
        Self { plain, folded }
    }

    fn plain_refs(&self) -> Vec<&str> {
        self.plain.iter().map(String::as_str).collect()
    }
}

/// Subject and object forms of a pronoun name the same person; possessives stay apart, since
/// "my mother forgave me" and "I forgave my mother" differ in who did what.
fn fold(word: &str) -> String {
    let w = match word {
        "me" => "i",
        "him" => "he",
        "us" => "we",
        "them" => "they",
        other => other,
    };
    if let Some(n) = number_value(w) {
        return n.to_owned();
    }
    let stem = w.len() > 3
        && w.ends_with('s')
        && !(w.ends_with("ss") || w.ends_with("us") || w.ends_with("is"));
    if stem {
        w[..w.len() - 1].to_owned()
    } else {
        w.to_owned()
    }
}

/// Which words of `a` and of `b` are outside their longest common subsequence (by folded word).
fn unmatched(a: &[String], b: &[String]) -> (Vec<bool>, Vec<bool>) {
    let (n, m) = (a.len(), b.len());
    let mut dp = vec![vec![0u16; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            dp[i][j] = if a[i] == b[j] {
                dp[i + 1][j + 1] + 1
            } else {
                dp[i + 1][j].max(dp[i][j + 1])
            };
        }
    }
    let (mut ua, mut ub) = (vec![true; n], vec![true; m]);
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if a[i] == b[j] {
            ua[i] = false;
            ub[j] = false;
            i += 1;
            j += 1;
        } else if dp[i + 1][j] >= dp[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    (ua, ub)
}

/// The content words each note has that the other lacks (text only), when both have some: what
/// the span guard would embed for two notes.
pub fn differing_words(existing: &str, candidate: &str) -> Option<Spans> {
    differing_spans(&Words::of(existing), &Words::of(candidate))
}

/// The content words each note has that the other lacks, when both have some. Function words
/// are left out (alone, the model embeds them as noise), and a one-sided addition is left to
/// the cosine.
fn differing_spans(a: &Words, b: &Words) -> Option<Spans> {
    let (ua, ub) = unmatched(&a.folded, &b.folded);
    let pick = |w: &Words, u: &[bool]| -> String {
        w.plain
            .iter()
            .zip(u)
            .filter(|(w, u)| {
                **u && !FUNCTION_WORDS.contains(&w.as_str()) && !NEGATIONS.contains(&w.as_str())
            })
            .map(|(w, _)| w.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (sa, sb) = (pick(a, &ua), pick(b, &ub));
    if sa.is_empty() || sb.is_empty() {
        return None;
    }
    Some(Spans {
        existing: embedding_text(&sa),
        candidate: embedding_text(&sb),
    })
}

/// The first text guard that fires for two similar notes, if any.
fn guard(a: &Words, b: &Words) -> Option<Reason> {
    let (ta, tb) = (a.plain_refs(), b.plain_refs());
    if unreadable_difference(a, b) {
        return Some(Reason::UnreadableText);
    }
    if let (Some(ka), Some(kb)) = (note_kind(&ta), note_kind(&tb)) {
        if ka != kb {
            return Some(Reason::KindDiffers);
        }
    }
    if negation_parity(&ta) != negation_parity(&tb) {
        return Some(Reason::NegationDiffers);
    }
    if numbers(&a.folded) != numbers(&b.folded) {
        return Some(Reason::NumbersDiffer);
    }
    if persons(&ta) != persons(&tb) {
        return Some(Reason::PersonsDiffer);
    }
    if reordered(&a.folded, &b.folded) {
        return Some(Reason::WordOrder);
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

/// Whether a letter is one all-MiniLM-L6-v2 (an English model) can read: Latin script.
fn readable_letter(c: char) -> bool {
    !c.is_alphabetic()
        || c.is_ascii()
        || ('\u{00C0}'..='\u{024F}').contains(&c)
        || ('\u{1E00}'..='\u{1EFF}').contains(&c)
}

/// Whether the words the notes do not share include one the model cannot read: its cosine then
/// measures the shared words only, so only an exact match may merge such notes.
fn unreadable_difference(a: &Words, b: &Words) -> bool {
    let (ua, ub) = unmatched(&a.folded, &b.folded);
    let unreadable = |w: &Words, u: &[bool]| {
        w.plain
            .iter()
            .zip(u)
            .any(|(w, u)| *u && !w.chars().all(readable_letter))
    };
    unreadable(a, &ua) || unreadable(b, &ub)
}

/// The kind the extractor marks a note with (`Asked:` or `Reflected on:`), if any: what the user
/// asked and what they reflected on are different facts, however alike the words.
fn note_kind(tokens: &[&str]) -> Option<&'static str> {
    match tokens {
        ["asked", ..] => Some("asked"),
        ["reflected", "on", ..] => Some("reflected"),
        _ => None,
    }
}

/// The grammatical persons a note speaks of (first singular, first plural, second, he, she, they):
/// "he sends his salary" and "I send my salary" are different facts about the user.
fn persons(tokens: &[&str]) -> BTreeSet<u8> {
    tokens
        .iter()
        .filter_map(|t| match *t {
            "i" | "me" | "my" | "mine" | "myself" | "im" | "ive" | "id" | "ill" => Some(1),
            "we" | "us" | "our" | "ours" | "ourselves" => Some(2),
            "you" | "your" | "yours" | "yourself" | "youre" => Some(3),
            "he" | "him" | "his" | "himself" => Some(4),
            "she" | "her" | "hers" | "herself" => Some(5),
            "they" | "them" | "their" | "theirs" | "themselves" => Some(6),
            _ => None,
        })
        .collect()
}

/// Longest notes (in words) whose reorderings are analysed; longer ones count as reordered.
const MAX_REORDER_WORDS: usize = 48;

/// Whether the words the notes share appear in another order, other than by moving one block
/// ("after fajr I read" = "I read after fajr") or swapping the two sides of an `and`/`or`.
/// Roles and sequences live in word order ("my mother forgave me" / "I forgave my mother",
/// "work, then rest" / "rest, then work"), which the model barely sees.
fn reordered(a: &[String], b: &[String]) -> bool {
    let (pa, pb) = (common(a, b), common(b, a));
    if pa == pb {
        return false;
    }
    if pa.len() > MAX_REORDER_WORDS {
        return true;
    }
    !(one_block_moved(&pa, &pb) || conjuncts_swapped(&pa, &pb))
}

/// The words of `x` that `y` also has (as many times as `y` has them), in `x`'s order.
fn common<'a>(x: &'a [String], y: &[String]) -> Vec<&'a str> {
    let mut left: HashMap<&str, usize> = HashMap::new();
    for w in y {
        *left.entry(w.as_str()).or_default() += 1;
    }
    x.iter()
        .filter_map(|w| match left.get_mut(w.as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Some(w.as_str())
            }
            _ => None,
        })
        .collect()
}

fn one_block_moved(a: &[&str], b: &[&str]) -> bool {
    let n = a.len();
    for start in 0..n {
        for end in start + 1..=n {
            let block = &a[start..end];
            let rest: Vec<&str> = a[..start].iter().chain(&a[end..]).copied().collect();
            for at in 0..=rest.len() {
                if rest[..at]
                    .iter()
                    .chain(block)
                    .chain(&rest[at..])
                    .eq(b.iter())
                {
                    return true;
                }
            }
        }
    }
    false
}

/// The two sides of one `and`/`or` swapped ("patience and prayer" = "prayer and patience").
fn conjuncts_swapped(a: &[&str], b: &[&str]) -> bool {
    let Some(first) = a.iter().zip(b).position(|(x, y)| x != y) else {
        return false;
    };
    let Some(from_end) = a.iter().rev().zip(b.iter().rev()).position(|(x, y)| x != y) else {
        return false;
    };
    let (ra, rb) = (&a[first..a.len() - from_end], &b[first..b.len() - from_end]);
    ra.iter().enumerate().any(|(k, w)| {
        (*w == "and" || *w == "or")
            && rb.len() == ra.len()
            && ra[k + 1..].iter().chain([w]).chain(&ra[..k]).eq(rb.iter())
    })
}

/// English closed-class words (determiners, pronouns, auxiliaries and modals, prepositions,
/// conjunctions, question words): grammar, not content, so not compared by the span guard.
/// Negations are not here: the negation guard handles them.
const FUNCTION_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "some",
    "any",
    "each",
    "every",
    "i",
    "me",
    "my",
    "mine",
    "myself",
    "you",
    "your",
    "yours",
    "yourself",
    "he",
    "him",
    "his",
    "himself",
    "she",
    "her",
    "hers",
    "herself",
    "it",
    "its",
    "itself",
    "we",
    "us",
    "our",
    "ours",
    "they",
    "them",
    "their",
    "theirs",
    "im",
    "ive",
    "id",
    "ill",
    "youre",
    "is",
    "am",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "do",
    "does",
    "did",
    "have",
    "has",
    "had",
    "having",
    "can",
    "could",
    "will",
    "would",
    "shall",
    "should",
    "may",
    "might",
    "must",
    "to",
    "of",
    "in",
    "on",
    "at",
    "by",
    "for",
    "with",
    "from",
    "into",
    "onto",
    "about",
    "as",
    "than",
    "so",
    "and",
    "or",
    "but",
    "if",
    "then",
    "because",
    "while",
    "when",
    "what",
    "which",
    "who",
    "whom",
    "whose",
    "how",
    "why",
    "where",
    "there",
    "here",
    "just",
    "also",
    "too",
    "very",
    "really",
    "up",
    "out",
    "get",
    "gets",
    "got",
    "one",
    "ones",
    "someone",
    "something",
    "asked",
    "reflected",
];

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

/// Number words as digits, so `five times` and `5 times` agree.
const NUMBER_VALUES: &[(&str, &str)] = &[
    ("zero", "0"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("hundred", "100"),
    ("thousand", "1000"),
];

/// Words that count or order without being a plain number.
const NUMBER_WORDS: &[&str] = &[
    "million", "once", "twice", "thrice", "half", "first", "second", "third", "fourth", "fifth",
    "seventh", "tenth",
];

fn number_value(word: &str) -> Option<&'static str> {
    NUMBER_VALUES
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, v)| *v)
}

fn numbers(folded: &[String]) -> BTreeSet<&str> {
    folded
        .iter()
        .map(String::as_str)
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
        // The model is taken to agree on the differing spans: the text guards are under test.
        let mut evidence = Evidence::default();
        evidence.insert_span_cosine(&ha, &hb, 1.0);
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
            &evidence,
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
        let (k, d) = policy
            .best_match(cand, existing, &Evidence::default())
            .ok_or("no match")?;
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
        let mut evidence = Evidence::default();
        for h in &hashes {
            evidence.insert_span_cosine(h, &other_hash, 1.0);
        }
        let (k, d) = policy
            .best_match(cand, existing, &evidence)
            .ok_or("no match")?;
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
            span_cosine: None,
        };
        assert_eq!(serde_json::to_value(d)?["reason"], "below_threshold");
        Ok(())
    }
}
