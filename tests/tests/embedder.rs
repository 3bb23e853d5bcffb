//! The embedder against the real int8 ONNX model and ONNX Runtime: agreement with the fp32
//! sentence-transformers reference, normalisation, batch independence, edge inputs, and that
//! inference stays off the async executor.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hikmah_tests::model::{embed_config, embedder};
use shared::config::{EmbedConfig, EmbedModel};
use shared::embed::{EmbedError, Embedder, MAX_TOKENS};
use shared::types::{Embedding, EMBEDDING_DIM};

/// One reference sentence: text, token count and fp32 sentence-transformers vector.
#[derive(serde::Deserialize)]
struct Reference {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct ReferenceFile {
    sentences: Vec<Reference>,
}

fn references() -> Vec<Reference> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/reference_embeddings.json");
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file: ReferenceFile = serde_json::from_str(&raw).unwrap();
    assert!(
        file.sentences.len() >= 20,
        "the reference has too few sentences"
    );
    file.sentences
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &Embedding, b: &Embedding) -> f32 {
    a.as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn norm(e: &Embedding) -> f32 {
    e.as_slice().iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn reference_covers_short_long_unicode_emoji_and_one_word_inputs() {
    let refs = references();
    assert!(refs.iter().any(|r| !r.text.contains(' ')), "one word");
    assert!(
        refs.iter().any(|r| r.tokens >= MAX_TOKENS),
        "past {MAX_TOKENS} tokens"
    );
    assert!(
        refs.iter().any(|r| r
            .text
            .chars()
            .any(|c| ('\u{0600}'..='\u{06FF}').contains(&c))),
        "Arabic"
    );
    assert!(
        refs.iter()
            .any(|r| r.text.chars().any(|c| c as u32 >= 0x1F300)),
        "emoji"
    );
    assert!(refs.iter().all(|r| r.embedding.len() == EMBEDDING_DIM));
}

#[test]
fn each_reference_sentence_is_within_cosine_0_99_of_fp32_sentence_transformers() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let got = embedder().embed_blocking(&texts).unwrap();
    assert_eq!(got.len(), refs.len());
    let mut worst = (f32::MAX, "");
    for (r, e) in refs.iter().zip(&got) {
        let c = cosine(e.as_slice(), &r.embedding);
        if c < worst.0 {
            worst = (c, &r.text);
        }
        assert!(c >= 0.99, "cosine {c} < 0.99 for {:?}", r.text);
    }
    eprintln!(
        "lowest cosine vs reference: {:.5} for {:?}",
        worst.0, worst.1
    );
}

/// Both models of `EMBED_MODEL` load and agree with the fp32 reference: the int8-compute
/// default (`int8`) and the switch back to the pinned model (`shipped`).
#[test]
fn both_embed_models_load_and_are_within_cosine_0_99_of_the_reference() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    for model in [EmbedModel::Int8, EmbedModel::Shipped] {
        let e = Embedder::load(&EmbedConfig {
            model,
            ..embed_config()
        })
        .unwrap_or_else(|e| panic!("{model:?}: {e}"));
        assert!(e.model_path().ends_with(model.file_name()));
        let got = e.embed_blocking(&texts).unwrap();
        let worst = refs
            .iter()
            .zip(&got)
            .map(|(r, e)| cosine(e.as_slice(), &r.embedding))
            .fold(f32::MAX, f32::min);
        assert!(worst >= 0.99, "{model:?}: lowest cosine {worst}");
        eprintln!("{model:?}: lowest cosine vs reference {worst:.5}");
    }
}

#[test]
fn token_counts_match_sentence_transformers_including_truncation_at_256() {
    let e = embedder();
    for r in references() {
        assert_eq!(e.token_count(&r.text).unwrap(), r.tokens, "{:?}", r.text);
    }
}

#[test]
fn every_embedding_has_384_dimensions_and_unit_norm() {
    let refs = references();
    let mut texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    texts.push("");
    for e in embedder().embed_blocking(&texts).unwrap() {
        assert_eq!(e.as_slice().len(), EMBEDDING_DIM);
        assert!((norm(&e) - 1.0).abs() <= 1e-4, "norm {}", norm(&e));
    }
}

#[test]
fn batch_results_equal_single_results_within_1e_5() {
    let e = embedder();
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let batch = e.embed_blocking(&texts).unwrap();
    for (text, in_batch) in texts.iter().zip(&batch) {
        let single = e.embed_blocking(&[text]).unwrap().remove(0);
        let d = max_abs_diff(in_batch, &single);
        assert!(d <= 1e-5, "batch vs single differ by {d} for {text:?}");
    }
}

#[test]
fn a_text_gets_the_same_vector_whatever_batch_it_arrives_in() {
    let e = embedder();
    let text = "Patience is the key to relief.";
    let alone = e.embed_blocking(&[text]).unwrap().remove(0);
    let long = "word ".repeat(400);
    let with_others = e
        .embed_blocking(&["a", &long, text, "🌙"])
        .unwrap()
        .remove(2);
    assert!(max_abs_diff(&alone, &with_others) <= 1e-5);
}

#[test]
fn the_empty_string_and_a_10000_character_input_embed_without_error() {
    let e = embedder();
    let huge = "The quick brown fox jumps over the lazy dog. ".repeat(250);
    let huge = &huge[..10_000];
    assert_eq!(huge.chars().count(), 10_000);
    let out = e.embed_blocking(&["", huge]).unwrap();
    assert_eq!(out.len(), 2);
    for v in &out {
        assert!((norm(v) - 1.0).abs() <= 1e-4);
    }
    assert_eq!(e.token_count(huge).unwrap(), MAX_TOKENS);
}

#[test]
fn an_empty_batch_gives_no_embeddings() {
    assert!(embedder().embed_blocking(&[]).unwrap().is_empty());
}

#[test]
fn similar_sentences_are_closer_than_unrelated_ones() {
    let out = embedder()
        .embed_blocking(&[
            "Patience is the key to relief.",
            "Being patient opens the door to relief.",
            "The meeting was moved to Thursday afternoon.",
        ])
        .unwrap();
    assert!(out[0].cosine(&out[1]) > out[0].cosine(&out[2]) + 0.2);
}

#[tokio::test]
async fn async_embed_matches_blocking_embed_and_keeps_input_order() {
    let e = embedder();
    let texts = vec![
        "first".to_owned(),
        "second text".to_owned(),
        "third, longer text".to_owned(),
    ];
    let got = e.embed(texts.clone()).await.unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = e.embed_blocking(&refs).unwrap();
    assert_eq!(got.len(), 3);
    for (g, w) in got.iter().zip(&want) {
        assert!(max_abs_diff(g, w) <= 1e-6);
    }
}

#[test]
fn inference_does_not_block_the_async_executor() {
    // A current_thread runtime has ONE executor thread: if inference ran on it, the ticker
    // could not tick until the batch finished.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = embedder();
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let texts: Vec<String> = (0..64)
            .map(|i| format!("{i} {}", "a fairly long sentence ".repeat(40)))
            .collect();
        let started = std::time::Instant::now();
        let out = e.embed(texts).await.unwrap();
        let elapsed = started.elapsed();
        ticker.abort();
        assert_eq!(out.len(), 64);
        let ticked = ticks.load(Ordering::Relaxed);
        // Generous (CI machines are busy): a tick every 2 ms would give elapsed/2ms; ask for a
        // tenth of that. Inference on the executor thread would allow about one tick in total.
        let expected = (elapsed.as_millis() / 2 / 10) as usize;
        assert!(
            ticked >= expected.max(5),
            "only {ticked} ticks during {elapsed:?} of inference"
        );
    });
}

#[test]
fn a_second_load_in_the_same_process_works_and_agrees_with_the_first() {
    let first = embedder();
    let second = Embedder::load(&embed_config()).unwrap();
    let a = first.embed_blocking(&["hello world"]).unwrap().remove(0);
    let b = second.embed_blocking(&["hello world"]).unwrap().remove(0);
    assert!(max_abs_diff(&a, &b) <= 1e-6);
}

#[test]
fn loading_from_a_missing_model_dir_names_the_missing_file() {
    let cfg = EmbedConfig {
        model_dir: "/nonexistent/hikmah/model".into(),
        ..embed_config()
    };
    let err = Embedder::load(&cfg).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EmbedError::MissingFile { .. }), "{text}");
    assert!(
        text.contains(&format!(
            "/nonexistent/hikmah/model/{}",
            cfg.model.file_name()
        )),
        "{text}"
    );
    assert!(text.contains("scripts/setup.sh"), "{text}");
}

#[test]
fn loading_with_a_missing_onnx_runtime_library_names_its_path() {
    let cfg = EmbedConfig {
        ort_dylib_path: "/nonexistent/libonnxruntime.so.1.31.1".into(),
        ..embed_config()
    };
    let err = Embedder::load(&cfg).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/libonnxruntime.so.1.31.1"),
        "{text}"
    );
    assert!(text.contains("ORT_DYLIB_PATH"), "{text}");
}

#[test]
fn a_corrupt_model_file_is_an_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("hikmah-corrupt-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = embed_config();
    std::fs::copy(
        good.model_dir.join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let file = good.model.file_name();
    std::fs::write(dir.join(file), b"not an onnx model").unwrap();
    let err = Embedder::load(&EmbedConfig {
        model_dir: dir.clone(),
        ..good
    })
    .unwrap_err();
    let text = err.to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, EmbedError::Model { .. }), "{text}");
    assert!(text.contains(file), "{text}");
}

#[test]
fn a_batch_split_over_several_model_runs_keeps_input_order_and_vectors() {
    // Long texts past the per-run token budget force several runs, and sorting by length
    // reorders texts internally: results must still come back in input order, equal to singles.
    let e = embedder();
    let texts: Vec<String> = (0..40)
        .map(|i| match i % 4 {
            0 => format!("{i} {}", "long text about patience and relief ".repeat(60)),
            1 => format!("{i}"),
            2 => format!("{i} a medium sentence about knowledge and action"),
            _ => format!("{i} {}", "words ".repeat(i * 3)),
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = e.embed_blocking(&refs).unwrap();
    assert_eq!(batch.len(), texts.len());
    for (text, in_batch) in refs.iter().zip(&batch) {
        let single = e.embed_blocking(&[text]).unwrap().remove(0);
        let d = max_abs_diff(in_batch, &single);
        assert!(d <= 1e-5, "batch vs single differ by {d} for {text:?}");
    }
}
