//! The real embedding model for tests: configuration from the environment and one shared embedder.

use std::sync::OnceLock;

use shared::config::{EmbedConfig, Env};
use shared::embed::{Embedder, MODEL_FILE, TOKENIZER_FILE};

/// The embedder configuration: `EMBED_MODEL_DIR` / `ORT_DYLIB_PATH` (`EMBED_THREADS`), else where
/// the set-up put the files. Panics with what to do when the files are not there.
pub fn embed_config() -> EmbedConfig {
    let cfg = EmbedConfig::from_env(&Env::process())
        .unwrap_or_else(|e| panic!("embedder configuration: {e}"));
    let missing: Vec<String> = [
        cfg.model_dir.join(MODEL_FILE),
        cfg.model_path(),
        cfg.model_dir.join(TOKENIZER_FILE),
        cfg.ort_dylib_path.clone(),
    ]
    .into_iter()
    .filter(|p| !p.is_file())
    .map(|p| p.display().to_string())
    .collect();
    assert!(
        missing.is_empty(),
        "model files missing: {}. Run scripts/test.sh (it provisions the model, tokenizer and ONNX \
         Runtime), or set EMBED_MODEL_DIR and ORT_DYLIB_PATH to where they are",
        missing.join(", ")
    );
    cfg
}

/// The process-wide embedder, loaded once per test binary from [`embed_config`].
pub fn embedder() -> Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER
        .get_or_init(|| {
            Embedder::load(&embed_config()).unwrap_or_else(|e| {
                panic!("could not load the embedder: {e}. Run scripts/test.sh to provision it")
            })
        })
        .clone()
}
