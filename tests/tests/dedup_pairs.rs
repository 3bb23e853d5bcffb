//! The duplicate decision measured on labelled pairs (`tests/data/dedup_pairs.jsonl`) with the
//! real embedder: precision first (a wrongly skipped note is information lost).
//!
//! Prints the precision/recall table by threshold (the README's table): `cargo test -p
//! hikmah-tests --test dedup_pairs -- --nocapture`.

use hikmah_tests::model::embedder;
use serde::Deserialize;
use shared::memory::dedup::{embedding_text, DedupPolicy, NoteRef, Reason};
use shared::memory::normalize::content_hash;
use shared::types::Embedding;

#[derive(Debug, Deserialize)]
struct Pair {
    kind: String,
    duplicate: bool,
    existing: String,
    candidate: String,
}

struct Scored {
    pair: Pair,
    hashes: (String, String),
    embeddings: (Embedding, Embedding),
}

fn load() -> Vec<Scored> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/dedup_pairs.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let pairs: Vec<Pair> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{path} line {}: {e}", i + 1))
        })
        .collect();
    let texts: Vec<String> = pairs
        .iter()
        .flat_map(|p| [embedding_text(&p.existing), embedding_text(&p.candidate)])
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut embeddings = embedder()
        .embed_blocking(&refs)
        .expect("embed the labelled pairs")
        .into_iter();
    pairs
        .into_iter()
        .map(|pair| {
            let (a, b) = (embeddings.next().unwrap(), embeddings.next().unwrap());
            Scored {
                hashes: (content_hash(&pair.existing), content_hash(&pair.candidate)),
                pair,
                embeddings: (a, b),
            }
        })
        .collect()
}

fn decide(policy: &DedupPolicy, s: &Scored) -> (f32, bool, Reason) {
    let d = policy.decide(
        NoteRef {
            text: &s.pair.existing,
            content_hash: &s.hashes.0,
            embedding: &s.embeddings.0,
        },
        NoteRef {
            text: &s.pair.candidate,
            content_hash: &s.hashes.1,
            embedding: &s.embeddings.1,
        },
    );
    (d.cosine, d.duplicate, d.reason)
}

/// (precision, recall, true positives, false positives, false negatives).
fn score(scored: &[Scored], predict: impl Fn(&Scored) -> bool) -> (f64, f64, usize, usize, usize) {
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for s in scored {
        match (predict(s), s.pair.duplicate) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let precision = if tp + fp == 0 {
        1.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let recall = if tp + fn_ == 0 {
        1.0
    } else {
        tp as f64 / (tp + fn_) as f64
    };
    (precision, recall, tp, fp, fn_)
}

#[test]
fn the_consumers_decision_keeps_precision_at_least_095_on_the_labelled_pairs() {
    let scored = load();
    assert!(
        scored.len() >= 100,
        "the labelled set must have at least 100 pairs"
    );
    let policy = DedupPolicy::default();

    println!(
        "\n{} labelled pairs; default DEDUP_THRESHOLD = {}",
        scored.len(),
        policy.threshold
    );
    println!("\n| threshold | precision (decision) | recall (decision) | precision (cosine only) | recall (cosine only) |");
    println!("|---:|---:|---:|---:|---:|");
    for step in 0..=14 {
        let t = 0.70 + 0.02 * step as f32;
        let p = DedupPolicy::with_threshold(t);
        let (dp, dr, ..) = score(&scored, |s| decide(&p, s).1);
        let (cp, cr, ..) = score(&scored, |s| {
            s.hashes.0 == s.hashes.1 || decide(&p, s).0 >= t
        });
        println!("| {t:.2} | {dp:.3} | {dr:.3} | {cp:.3} | {cr:.3} |");
    }

    println!("\nBy kind at the default threshold (decided duplicate / pairs):");
    let mut kinds: Vec<(&str, bool)> = scored
        .iter()
        .map(|s| (s.pair.kind.as_str(), s.pair.duplicate))
        .collect();
    kinds.dedup();
    kinds.sort();
    kinds.dedup();
    for (kind, label) in kinds {
        let of_kind: Vec<&Scored> = scored
            .iter()
            .filter(|s| s.pair.kind == kind && s.pair.duplicate == label)
            .collect();
        let hits = of_kind.iter().filter(|s| decide(&policy, s).1).count();
        let mean = of_kind.iter().map(|s| decide(&policy, s).0).sum::<f32>() / of_kind.len() as f32;
        println!(
            "  {kind:<16} labelled {label:<5}: {hits:>2}/{:<2} (mean cosine {mean:.3})",
            of_kind.len()
        );
    }

    println!("\nMisjudged at the default threshold:");
    for s in &scored {
        let (cos, dup, reason) = decide(&policy, s);
        if dup != s.pair.duplicate {
            println!(
                "  [{}] {cos:.3} {reason} | {} | {}",
                s.pair.kind, s.pair.existing, s.pair.candidate
            );
        }
    }

    let (precision, recall, tp, fp, fn_) = score(&scored, |s| decide(&policy, s).1);
    println!(
        "\nDefault: precision {precision:.3}, recall {recall:.3} (tp {tp}, fp {fp}, fn {fn_})"
    );
    assert!(
        precision >= 0.95,
        "precision {precision:.3} < 0.95 at threshold {}",
        policy.threshold
    );
    // Exact and case/punctuation variants are never lost, whatever the threshold.
    for s in scored
        .iter()
        .filter(|s| s.pair.kind == "exact" || s.pair.kind == "case_punctuation")
    {
        assert_eq!(
            decide(&policy, s).2,
            Reason::ExactMatch,
            "{} | {}",
            s.pair.existing,
            s.pair.candidate
        );
    }
}

#[test]
fn hikmah_dedup_prints_exactly_the_consumers_decision() {
    let policy = DedupPolicy::default();
    let scored = load();
    for s in scored
        .iter()
        .filter(|s| ["negation", "paraphrase", "case_punctuation"].contains(&s.pair.kind.as_str()))
        .step_by(5)
    {
        let out = std::process::Command::new(hikmah_tests::bins::bin("hikmah"))
            .args(["dedup", &s.pair.existing, &s.pair.candidate])
            .env_remove("DEDUP_THRESHOLD")
            .output()
            .expect("run hikmah dedup");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("one JSON object");
        let (cosine, duplicate, reason) = decide(&policy, s);
        assert_eq!(
            printed["duplicate"], duplicate,
            "{} | {}",
            s.pair.existing, s.pair.candidate
        );
        assert_eq!(printed["reason"], reason.as_str());
        assert!(
            (printed["cosine"].as_f64().unwrap() - f64::from(cosine)).abs() < 1e-5,
            "{printed}"
        );
    }
}
