//! Held-out evaluation of the duplicate decision on labelled pairs.
//!
//! The labelled set is JSON lines `{"a": EXISTING, "b": CANDIDATE, "label": "dup"|"distinct",
//! "class": "..."}` (`tests/data/dedup_pairs.jsonl`). Its dev/test split is derived from the file
//! itself, so nothing has to be kept in sync: within each (class, label) group the pairs are
//! ordered by a stable hash of their text ([`pair_hash`]) and alternate dev, test, dev, ... .
//! That stratifies every class and label half and half, and a pair's split depends only on its
//! group. Rules are tuned on dev only; the test split is the regression gate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether a labelled pair is a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// The candidate adds nothing to the existing note: merging loses nothing.
    Dup,
    /// The candidate states something the existing note does not.
    Distinct,
}

/// One labelled pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledPair {
    /// The note already in memory.
    pub a: String,
    /// The candidate note.
    pub b: String,
    /// The truth.
    pub label: Label,
    /// The failure class it exercises (`paraphrase`, `negation`, `direction`, ...).
    pub class: String,
}

/// Which half of the labelled set a pair belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Tuning data.
    Dev,
    /// Held out: measured, never tuned on.
    Test,
}

impl Split {
    /// `dev` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Test => "test",
        }
    }
}

/// A line of the labelled set that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PairsError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses JSON lines of labelled pairs (blank lines are skipped).
pub fn parse_pairs(text: &str) -> Result<Vec<LabelledPair>, PairsError> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pair: LabelledPair = serde_json::from_str(line).map_err(|e| PairsError {
            line: i + 1,
            reason: format!(
                "expected {{\"a\",\"b\",\"label\":\"dup\"|\"distinct\",\"class\"}}: {e}"
            ),
        })?;
        pairs.push(pair);
    }
    Ok(pairs)
}

/// FNV-1a (64-bit) of `a`, a unit separator and `b`: stable across platforms and releases.
pub fn pair_hash(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([0x1f]).chain(b.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The split of each pair, in order (see the module doc).
pub fn splits(pairs: &[LabelledPair]) -> Vec<Split> {
    let mut groups: BTreeMap<(&str, Label), Vec<(u64, usize)>> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        groups
            .entry((p.class.as_str(), p.label))
            .or_default()
            .push((pair_hash(&p.a, &p.b), i));
    }
    let mut out = vec![Split::Dev; pairs.len()];
    for members in groups.values_mut() {
        members.sort_unstable();
        for (rank, (_, i)) in members.iter().enumerate() {
            if rank % 2 == 1 {
                out[*i] = Split::Test;
            }
        }
    }
    out
}

/// Confusion counts, "positive" meaning "judged a duplicate".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Duplicates judged duplicates.
    pub tp: usize,
    /// Distinct pairs judged duplicates: wrong merges.
    pub fp: usize,
    /// Duplicates kept apart: redundant rows.
    pub fn_: usize,
    /// Distinct pairs kept apart.
    pub tn: usize,
}

impl Counts {
    /// Adds one judged pair.
    pub fn add(&mut self, label: Label, judged_dup: bool) {
        match (label, judged_dup) {
            (Label::Dup, true) => self.tp += 1,
            (Label::Distinct, true) => self.fp += 1,
            (Label::Dup, false) => self.fn_ += 1,
            (Label::Distinct, false) => self.tn += 1,
        }
    }

    /// Pairs counted.
    pub fn total(&self) -> usize {
        self.tp + self.fp + self.fn_ + self.tn
    }

    /// tp / (tp + fp); 1 when nothing was judged a duplicate (no wrong merge).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// tp / (tp + fn); 1 when there is no duplicate to find.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// The harmonic mean of precision and recall.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// Precision, recall and F1 overall and per class.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvalReport {
    /// All pairs counted.
    pub overall: Counts,
    /// Per class, by name.
    pub classes: BTreeMap<String, Counts>,
}

impl EvalReport {
    /// The report of `judged[i]` against `pairs[i]`, for the pairs `keep` selects.
    pub fn of(pairs: &[LabelledPair], judged: &[bool], keep: impl Fn(usize) -> bool) -> Self {
        let mut report = Self::default();
        for (i, (pair, dup)) in pairs.iter().zip(judged).enumerate() {
            if !keep(i) {
                continue;
            }
            report.overall.add(pair.label, *dup);
            report
                .classes
                .entry(pair.class.clone())
                .or_default()
                .add(pair.label, *dup);
        }
        report
    }

    /// A JSON object with precision, recall, F1 and counts, overall and per class.
    pub fn to_json(&self) -> serde_json::Value {
        let one = |c: &Counts| {
            serde_json::json!({
                "pairs": c.total(), "precision": round3(c.precision()),
                "recall": round3(c.recall()), "f1": round3(c.f1()),
                "tp": c.tp, "fp": c.fp, "fn": c.fn_, "tn": c.tn,
            })
        };
        serde_json::json!({
            "overall": one(&self.overall),
            "classes": self.classes.iter().map(|(k, c)| (k.clone(), one(c))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// A Markdown table: one row per class, then the overall row.
    pub fn to_table(&self) -> String {
        let mut out = String::from(
            "| class | pairs | dup | precision | recall | F1 | wrong merges | missed dups |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let row = |name: &str, c: &Counts| {
            format!(
                "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                c.total(),
                c.tp + c.fn_,
                c.precision(),
                c.recall(),
                c.f1(),
                c.fp,
                c.fn_
            )
        };
        for (name, c) in &self.classes {
            out.push_str(&row(name, c));
        }
        out.push_str(&row("**all**", &self.overall));
        out
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, class: &str, label: Label) -> LabelledPair {
        LabelledPair {
            a: a.into(),
            b: format!("{a}!"),
            label,
            class: class.into(),
        }
    }

    #[test]
    fn the_split_halves_every_class_and_label_and_is_stable() {
        let mut pairs = Vec::new();
        for i in 0..10 {
            pairs.push(pair(&format!("x{i}"), "negation", Label::Distinct));
            pairs.push(pair(&format!("y{i}"), "paraphrase", Label::Dup));
        }
        pairs.push(pair("odd one", "paraphrase", Label::Distinct));
        let s = splits(&pairs);
        for (class, label) in [("negation", Label::Distinct), ("paraphrase", Label::Dup)] {
            let test = pairs
                .iter()
                .zip(&s)
                .filter(|(p, s)| p.class == class && p.label == label && **s == Split::Test)
                .count();
            assert_eq!(test, 5, "{class}");
        }
        // Adding a pair of another group moves no pair of this one.
        let mut more = pairs.clone();
        more.push(pair("new", "number", Label::Distinct));
        assert_eq!(&splits(&more)[..pairs.len()], s.as_slice());
        // Reordering the file changes nothing.
        let mut reversed = pairs.clone();
        reversed.reverse();
        let mut back = splits(&reversed);
        back.reverse();
        assert_eq!(back, s);
    }

    #[test]
    fn pair_hash_is_fnv1a() {
        // Reference value computed independently (Python) over b"a\x1fb".
        assert_eq!(pair_hash("a", "b"), 0xe5ea_a319_043b_0991);
    }

    #[test]
    fn counts_give_precision_recall_f1() {
        let mut c = Counts::default();
        for (label, dup) in [
            (Label::Dup, true),
            (Label::Dup, true),
            (Label::Dup, false),
            (Label::Distinct, true),
            (Label::Distinct, false),
        ] {
            c.add(label, dup);
        }
        assert_eq!((c.tp, c.fp, c.fn_, c.tn), (2, 1, 1, 1));
        assert!((c.precision() - 2.0 / 3.0).abs() < 1e-9);
        assert!((c.recall() - 2.0 / 3.0).abs() < 1e-9);
        assert!((c.f1() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(Counts::default().precision(), 1.0);
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let err = parse_pairs(
            "{\"a\":\"x\",\"b\":\"y\",\"label\":\"dup\",\"class\":\"c\"}\n\n{\"a\":\"x\",\"label\":\"same\"}",
        )
        .unwrap_err();
        assert_eq!(err.line, 3);
    }
}
