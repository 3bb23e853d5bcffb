//! The duplicate decision measured on the labelled pairs (`tests/data/dedup_pairs.jsonl`) with
//! the real embedder, through the same code as the consumer and `hikmah dedup --eval`.
//!
//! The gate is the held-out test split's precision (and recall) against the floors the README
//! states: a regression gate, not a target. Tune on the dev split only. Print both tables:
//! `cargo test -p hikmah-tests --test main -- dedup_pairs:: --nocapture`.

use hikmah_tests::model::embedder;
use shared::memory::dedup::{Decision, DedupPolicy, Reason};
use shared::memory::eval::{parse_pairs, splits, EvalReport, Label, LabelledPair, Split};
use shared::memory::service::decide_pairs;

const PAIRS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/dedup_pairs.jsonl");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");

fn load() -> Vec<LabelledPair> {
    let text = std::fs::read_to_string(PAIRS).unwrap_or_else(|e| panic!("read {PAIRS}: {e}"));
    parse_pairs(&text).unwrap_or_else(|e| panic!("{PAIRS}: {e}"))
}

async fn decide_all(pairs: &[LabelledPair]) -> Vec<Decision> {
    let texts: Vec<(&str, &str)> = pairs.iter().map(|p| (p.a.as_str(), p.b.as_str())).collect();
    decide_pairs(&embedder(), &DedupPolicy::default(), &texts)
        .await
        .expect("decide the labelled pairs")
}

/// The figure the README states after `marker` (`... floor: **0.95**`).
fn readme_floor(marker: &str) -> f64 {
    let readme = std::fs::read_to_string(README).expect("read README.md");
    let line = readme
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("README.md states no {marker:?}"));
    let after = &line[line.find(marker).unwrap() + marker.len()..];
    after
        .trim_start_matches([' ', '*', ':'])
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("README.md: no number after {marker:?} in {line:?}"))
}

#[tokio::test]
async fn the_test_split_keeps_the_precision_and_recall_the_readme_states() {
    let pairs = load();
    assert!(
        pairs.len() >= 400,
        "the labelled set must have at least 400 pairs"
    );
    let split = splits(&pairs);
    let judged: Vec<bool> = decide_all(&pairs)
        .await
        .iter()
        .map(|d| d.duplicate)
        .collect();
    let dev = EvalReport::of(&pairs, &judged, |i| split[i] == Split::Dev);
    let test = EvalReport::of(&pairs, &judged, |i| split[i] == Split::Test);
    println!(
        "\ndev split:\n{}\ntest split:\n{}",
        dev.to_table(),
        test.to_table()
    );

    let precision_floor = readme_floor("Test-split precision floor");
    let recall_floor = readme_floor("Test-split recall floor");
    let (p, r) = (test.overall.precision(), test.overall.recall());
    assert!(
        p >= precision_floor,
        "test-split precision {p:.3} fell below the README's floor {precision_floor}"
    );
    assert!(
        r >= recall_floor,
        "test-split recall {r:.3} fell below the README's floor {recall_floor}"
    );
}

#[tokio::test]
async fn notes_equal_after_normalisation_are_always_duplicates() {
    let pairs = load();
    let decisions = decide_all(&pairs).await;
    let mut exact = 0;
    for (p, d) in pairs.iter().zip(&decisions) {
        if shared::memory::normalize::normalize(&p.a) == shared::memory::normalize::normalize(&p.b)
        {
            exact += 1;
            assert_eq!(p.label, Label::Dup, "mislabelled: {} | {}", p.a, p.b);
            assert_eq!(d.reason, Reason::ExactMatch, "{} | {}", p.a, p.b);
        }
    }
    assert!(exact >= 20, "only {exact} exact pairs");
}

#[tokio::test]
async fn hikmah_dedup_prints_exactly_the_consumers_decision() {
    let pairs = load();
    let decisions = decide_all(&pairs).await;
    for (p, d) in pairs.iter().zip(&decisions).step_by(23) {
        let out = std::process::Command::new(hikmah_tests::bins::bin("hikmah"))
            .args(["dedup", &p.a, &p.b])
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
        assert_eq!(printed["duplicate"], d.duplicate, "{} | {}", p.a, p.b);
        assert_eq!(printed["reason"], d.reason.as_str());
        assert!(
            (printed["cosine"].as_f64().unwrap() - f64::from(d.cosine)).abs() < 1e-5,
            "{printed}"
        );
    }
}

#[tokio::test]
async fn hikmah_dedup_eval_json_reports_the_same_figures() {
    let pairs = load();
    let split = splits(&pairs);
    let judged: Vec<bool> = decide_all(&pairs)
        .await
        .iter()
        .map(|d| d.duplicate)
        .collect();
    let test = EvalReport::of(&pairs, &judged, |i| split[i] == Split::Test);
    let out = std::process::Command::new(hikmah_tests::bins::bin("hikmah"))
        .args(["dedup", "--eval", PAIRS, "--json"])
        .env_remove("DEDUP_THRESHOLD")
        .output()
        .expect("run hikmah dedup --eval");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(printed["pairs"], pairs.len());
    assert_eq!(printed["test"], test.to_json(), "{printed}");
    for class in ["direction", "word_order", "non_english", "paraphrase"] {
        let c = &printed["dev"]["classes"][class];
        for key in ["precision", "recall", "f1", "pairs"] {
            assert!(c[key].is_number(), "dev.classes.{class}.{key} in {printed}");
        }
    }

    let bad = std::env::temp_dir().join(format!("bad-pairs-{}.jsonl", std::process::id()));
    std::fs::write(
        &bad,
        "{\"a\":\"x\",\"b\":\"y\",\"label\":\"dup\",\"class\":\"c\"}\n{\"a\":\"x\"}\n",
    )
    .unwrap();
    let out = std::process::Command::new(hikmah_tests::bins::bin("hikmah"))
        .args(["dedup", "--eval"])
        .arg(&bad)
        .output()
        .expect("run hikmah dedup --eval");
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
