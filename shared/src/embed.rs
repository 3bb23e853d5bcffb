//! The sentence embedder: all-MiniLM-L6-v2 (int8 ONNX) via `ort`, tokenised by `tokenizers`.
//!
//! Pipeline (the same as sentence-transformers' for this model): tokenise with truncation at
//! [`MAX_TOKENS`], run the transformer, mean-pool the last hidden state over the attention mask,
//! L2-normalise. The ONNX Runtime shared library is loaded at run time from
//! [`EmbedConfig::ort_dylib_path`] with `ort::init_from`, which reports a bad path as an error
//! (ORT_DYLIB_PATH alone would panic at first use).
//!
//! Inference is CPU-bound and takes milliseconds to seconds, so [`Embedder::embed`] runs it on
//! tokio's blocking pool, never on the async executor.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use tokenizers::{
    Encoding, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::config::{EmbedConfig, EmbedModel};
use crate::types::{Embedding, EMBEDDING_DIM};

/// Longest input in tokens (special tokens included); longer texts are truncated, as
/// sentence-transformers does for this model (`max_seq_length` 256).
pub const MAX_TOKENS: usize = 256;

/// Most padded tokens (texts × longest text) in one model run. Measured with `hikmah bench
/// embed` (2 cores): at 512, a batch of 32 short (~20-token) texts runs ~2x faster than one text
/// at a time, long (~120-token) ones about even (within noise), for ~20 MB more peak RSS; at
/// 4096 long texts ran ~25% SLOWER than one by one (activations outgrow the caches) and peak RSS
/// grew by ~350 MB.
pub const BATCH_TOKEN_BUDGET: usize = 512;

/// File name of the shipped (pinned) ONNX model inside [`EmbedConfig::model_dir`]; the model
/// that runs is [`EmbedConfig::model_path`] (`EMBED_MODEL`).
pub const MODEL_FILE: &str = "model.onnx";

/// File name of the tokenizer inside [`EmbedConfig::model_dir`].
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What the operator should do when a pinned file is missing or broken.
const SETUP_HINT: &str = "run scripts/setup.sh (or scripts/test.sh) to fetch the pinned files";

/// Why the embedder could not load or embed; names the file at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A file the embedder needs does not exist.
    #[error("{what} not found at {path}: {hint}")]
    MissingFile {
        /// Which file (model, tokenizer, ONNX Runtime library).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// The ONNX Runtime shared library exists but could not be loaded or initialised.
    #[error("could not load ONNX Runtime from {path}: {message}; {SETUP_HINT}, or point ORT_DYLIB_PATH at libonnxruntime.so 1.31")]
    Runtime {
        /// The library path.
        path: PathBuf,
        /// ONNX Runtime's or the loader's message.
        message: String,
    },
    /// The model file could not be turned into a session, or does not look like a MiniLM encoder.
    #[error("could not load the model {path}: {message}; {SETUP_HINT} (the file may be corrupt)")]
    Model {
        /// The model path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer file could not be read or configured.
    #[error(
        "could not load the tokenizer {path}: {message}; {SETUP_HINT} (the file may be corrupt)"
    )]
    Tokenizer {
        /// The tokenizer path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A text could not be tokenised.
    #[error("could not tokenise text {index} of the batch: {message}")]
    Tokenize {
        /// Position of the text in the batch.
        index: usize,
        /// The tokenizer's message.
        message: String,
    },
    /// ONNX Runtime failed while running the model, or returned an unexpected output.
    #[error("inference with {path} failed: {message}")]
    Inference {
        /// The model path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The blocking task running inference panicked or was cancelled.
    #[error("the embedding task did not finish: {0}")]
    Task(String),
}

/// The ONNX Runtime environment: one per process (ort refuses a second one), created by the first
/// [`Embedder::load`] and shared by every later one. Kept alive here for the life of the process.
static ORT_ENV: Mutex<Option<(PathBuf, ort::environment::Environment)>> = Mutex::new(None);

/// Loads the ONNX Runtime library (once per process) and returns the shared environment.
fn ort_environment(dylib: &Path) -> Result<ort::environment::Environment, EmbedError> {
    // Checked on every load, even when the runtime is already up, so a wrong path is reported
    // the same way whatever was loaded before (ort itself would silently ignore it).
    if !dylib.is_file() {
        return Err(EmbedError::MissingFile {
            what: "ONNX Runtime library",
            path: dylib.to_owned(),
            hint: format!("{SETUP_HINT}, or set ORT_DYLIB_PATH to libonnxruntime.so 1.31"),
        });
    }
    let mut slot = ORT_ENV.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((loaded, env)) = slot.as_ref() {
        if loaded != dylib {
            tracing::warn!(
                loaded = %loaded.display(),
                requested = %dylib.display(),
                "ONNX Runtime is already loaded in this process; keeping the library loaded first"
            );
        }
        return Ok(env.clone());
    }
    let runtime_error = |message: String| EmbedError::Runtime {
        path: dylib.to_owned(),
        message,
    };
    let env = ort::init_from(dylib)
        .map_err(|e| runtime_error(e.to_string()))?
        .with_name("hikmah")
        .with_telemetry(false)
        .build()
        .map_err(|e| runtime_error(e.to_string()))?;
    *slot = Some((dylib.to_owned(), env.clone()));
    Ok(env)
}

/// Turns text into L2-normalised [`Embedding`]s. Cheap to clone: clones share one model.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

struct Inner {
    /// `Session::run` takes `&mut self`; runs are serialised (each uses all intra-op threads anyway).
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    model_path: PathBuf,
    /// Whether the model takes `token_type_ids` (all zeros for single sentences).
    takes_token_type_ids: bool,
    /// Name of the `[batch, tokens, 384]` output that is pooled.
    hidden_output: String,
    intra_threads: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.inner.model_path)
            .field("intra_threads", &self.inner.intra_threads)
            .finish()
    }
}

impl Embedder {
    /// Loads ONNX Runtime (once per process), the model and the tokenizer named by `cfg`.
    pub fn load(cfg: &EmbedConfig) -> Result<Embedder, EmbedError> {
        let model_path = cfg.model_path();
        let tokenizer_path = cfg.model_dir.join(TOKENIZER_FILE);
        for (what, path) in [
            ("model file", &model_path),
            ("tokenizer file", &tokenizer_path),
        ] {
            if !path.is_file() {
                return Err(EmbedError::MissingFile {
                    what,
                    path: path.clone(),
                    hint: format!(
                        "{SETUP_HINT}, or set EMBED_MODEL_DIR to the directory holding {} and {TOKENIZER_FILE}{}",
                        cfg.model.file_name(),
                        if cfg.model == EmbedModel::Int8 { " (EMBED_MODEL=shipped runs the pinned model.onnx instead)" } else { "" }
                    ),
                });
            }
        }
        let model_error = |message: String| EmbedError::Model {
            path: model_path.clone(),
            message,
        };
        // Parsing tokenizer.json and building the session are independent and both take a while
        // at cold start: do them at once.
        let (tokenizer, session) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| load_tokenizer(&tokenizer_path));
            let session = ort_environment(&cfg.ort_dylib_path).and_then(|env| {
                build_session(&env, &model_path, cfg.intra_threads.max(1))
                    .map_err(|e| model_error(e.to_string()))
            });
            let tokenizer = tokenizer.join().unwrap_or_else(|_| {
                Err(EmbedError::Tokenizer {
                    path: tokenizer_path.clone(),
                    message: "the loading thread panicked".into(),
                })
            });
            (tokenizer, session)
        });
        let (tokenizer, session) = (tokenizer?, session?);

        let input_names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !input_names.contains(&required) {
                return Err(model_error(format!(
                    "expected an input named {required}, found {input_names:?}"
                )));
            }
        }
        let takes_token_type_ids = input_names.contains(&"token_type_ids");
        if let Some(other) = input_names
            .iter()
            .find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(n))
        {
            return Err(model_error(format!(
                "unexpected model input {other} (inputs: {input_names:?})"
            )));
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let hidden_output = ["last_hidden_state", "token_embeddings"]
            .into_iter()
            .find(|n| outputs.contains(n))
            .or_else(|| outputs.first().copied())
            .ok_or_else(|| model_error("the model has no outputs".into()))?
            .to_owned();
        tracing::debug!(model = %model_path.display(), ?input_names, ?outputs, %hidden_output, "embedder loaded");

        Ok(Embedder {
            inner: Arc::new(Inner {
                session: Mutex::new(session),
                tokenizer,
                model_path,
                takes_token_type_ids,
                hidden_output,
                intra_threads: cfg.intra_threads.max(1),
            }),
        })
    }

    /// Embeds `texts` on tokio's blocking pool; results are in input order.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>, EmbedError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            this.embed_blocking(&refs)
        })
        .await
        .map_err(|e| EmbedError::Task(e.to_string()))?
    }

    /// Embeds `texts` on the calling thread (CPU-bound: never call it on an async executor);
    /// results are in input order.
    ///
    /// Texts are sorted by token count and run in padded batches of similar length (at most
    /// [`BATCH_TOKEN_BUDGET`] padded tokens per run), so little work is spent on padding. A text's
    /// vector does not depend on the batch it arrives in: the model's int8 weights are
    /// dequantised once at load (constant folding), so every run computes in fp32, padded
    /// positions are masked out of attention and pooling, and `hikmah bench embed` measures the
    /// batched and one-by-one vectors as equal (the tests hold them to 1e-5).
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError> {
        let encodings = texts
            .iter()
            .enumerate()
            .map(|(index, text)| self.encode(index, text))
            .collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());

        let mut out: Vec<Option<Embedding>> = vec![None; encodings.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted ascending, so the last text of a chunk is its longest: grow the chunk while
            // the padded size stays within budget (a single text always fits: MAX_TOKENS).
            let mut end = start + 1;
            while end < order.len()
                && (end + 1 - start) * encodings[order[end]].len() <= BATCH_TOKEN_BUDGET
            {
                end += 1;
            }
            let chunk: Vec<&Encoding> = order[start..end].iter().map(|&i| &encodings[i]).collect();
            for (&i, embedding) in order[start..end].iter().zip(self.run(&chunk)?) {
                out[i] = Some(embedding);
            }
            start = end;
        }
        out.into_iter()
            .map(|e| {
                e.ok_or_else(|| self.inference_error("the model returned too few vectors".into()))
            })
            .collect()
    }

    /// Number of tokens (special tokens included, after truncation) the model sees for `text`.
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        Ok(self.encode(0, text)?.len())
    }

    /// The model file this embedder runs.
    pub fn model_path(&self) -> &Path {
        &self.inner.model_path
    }

    fn encode(&self, index: usize, text: &str) -> Result<Encoding, EmbedError> {
        self.inner
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbedError::Tokenize {
                index,
                message: e.to_string(),
            })
    }

    fn inference_error(&self, message: String) -> EmbedError {
        EmbedError::Inference {
            path: self.inner.model_path.clone(),
            message,
        }
    }

    /// Runs one (right-padded) batch and returns its mean-pooled, L2-normalised vectors.
    fn run(&self, encodings: &[&Encoding]) -> Result<Vec<Embedding>, EmbedError> {
        if encodings.is_empty() {
            return Ok(Vec::new());
        }
        let batch = encodings.len();
        let seq = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![0i64; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        for (row, enc) in encodings.iter().enumerate() {
            for (col, (&id, &m)) in enc
                .get_ids()
                .iter()
                .zip(enc.get_attention_mask())
                .enumerate()
            {
                ids[row * seq + col] = i64::from(id);
                mask[row * seq + col] = i64::from(m);
            }
        }
        // Single sentences: segment 0 everywhere.
        let type_ids = vec![0i64; batch * seq];
        let shape = [batch, seq];
        let err = |e: ort::Error| self.inference_error(e.to_string());

        let ids_t = TensorRef::from_array_view((shape, ids.as_slice())).map_err(err)?;
        let mask_t = TensorRef::from_array_view((shape, mask.as_slice())).map_err(err)?;
        let mut session = self
            .inner
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let outputs = if self.inner.takes_token_type_ids {
            let types_t = TensorRef::from_array_view((shape, type_ids.as_slice())).map_err(err)?;
            session.run(ort::inputs![
                "input_ids" => ids_t,
                "attention_mask" => mask_t,
                "token_type_ids" => types_t,
            ])
        } else {
            session.run(ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t])
        }
        .map_err(err)?;
        let hidden = outputs.get(&self.inner.hidden_output).ok_or_else(|| {
            self.inference_error(format!("no output named {}", self.inner.hidden_output))
        })?;
        let (out_shape, data) = hidden.try_extract_tensor::<f32>().map_err(err)?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        if dims != [batch as i64, seq as i64, EMBEDDING_DIM as i64] {
            return Err(self.inference_error(format!(
                "expected output {} of shape [{batch}, {seq}, {EMBEDDING_DIM}], got {dims:?}",
                self.inner.hidden_output
            )));
        }

        (0..batch)
            .map(|row| {
                let mut sum = vec![0f32; EMBEDDING_DIM];
                let mut count = 0f32;
                for col in 0..seq {
                    if mask[row * seq + col] == 0 {
                        continue;
                    }
                    count += 1.0;
                    let token = &data
                        [(row * seq + col) * EMBEDDING_DIM..(row * seq + col + 1) * EMBEDDING_DIM];
                    sum.iter_mut().zip(token).for_each(|(s, t)| *s += t);
                }
                // sentence-transformers clamps the token count at 1e-9; every encoding has at
                // least [CLS] and [SEP], so `count` is never 0 here.
                let count = count.max(1e-9);
                sum.iter_mut().for_each(|s| *s /= count);
                Embedding::normalized(sum).map_err(|e| self.inference_error(e.to_string()))
            })
            .collect()
    }
}

/// Creates the inference session: basic graph optimisations, `intra_threads` for one run.
///
/// Basic (constant folding, redundant node removal), not all: measured on this model (1 thread,
/// 2 and 32 short texts), ONNX Runtime's extended fusions (attention, skip-layer-norm, GELU)
/// made runs ~15-25 % slower for both the shipped and the int8 model, and they are most of the
/// session's build time at cold start.
fn build_session(
    env: &ort::environment::Environment,
    model_path: &Path,
    intra_threads: usize,
) -> Result<Session, ort::Error> {
    let session = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level1)?
        .with_intra_threads(intra_threads)?
        .with_inter_threads(1)?
        // Spinning workers would burn the (shared; in Lambda, billed) cores between calls.
        .with_intra_op_spinning(false)?
        .with_inter_op_spinning(false)?
        .commit_from_file(model_path)?;
    Ok(session)
}

/// Loads `tokenizer.json` and overrides its fixed 128-token padding and truncation.
fn load_tokenizer(path: &Path) -> Result<Tokenizer, EmbedError> {
    // Explicitly serial: batches are small and inference dominates, and a rayon pool would
    // compete with ONNX Runtime's intra-op threads for the same (in Lambda: 1-2) cores. The
    // tokenizers crate would otherwise decide from TOKENIZERS_PARALLELISM at first use.
    tokenizers::utils::parallelism::set_parallelism(false);
    let tok_error = |message: String| EmbedError::Tokenizer {
        path: path.to_owned(),
        message,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| tok_error(e.to_string()))?;
    // The shipped file pads every input to 128 tokens (5x the work for a short sentence) and
    // truncates at 128 (losing half of what the model reads); pad to the longest in a batch and
    // truncate at 256 instead, as sentence-transformers does.
    let pad_id = tokenizer.get_padding().map(|p| p.pad_id).unwrap_or(0);
    let pad_token = tokenizer
        .get_padding()
        .map(|p| p.pad_token.clone())
        .unwrap_or_else(|| "[PAD]".into());
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..PaddingParams::default()
    }));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: MAX_TOKENS,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| tok_error(e.to_string()))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, dylib: &Path) -> EmbedConfig {
        EmbedConfig {
            model_dir: dir.to_owned(),
            model: EmbedModel::Shipped,
            ort_dylib_path: dylib.to_owned(),
            intra_threads: 1,
        }
    }

    #[test]
    fn embedder_can_be_shared_across_tasks_and_threads() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Embedder>();
    }

    #[test]
    fn missing_model_dir_names_the_model_path() {
        let err = Embedder::load(&config(
            Path::new("/nonexistent/hikmah-model"),
            Path::new("/nonexistent/ort.so"),
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/hikmah-model/model.onnx"),
            "{text}"
        );
        assert!(text.contains("scripts/setup.sh"), "{text}");
    }

    #[test]
    fn missing_runtime_library_names_its_path() {
        let err = ort_environment(Path::new("/nonexistent/libonnxruntime.so.1.31.1")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, EmbedError::MissingFile { .. }), "{text}");
        assert!(
            text.contains("/nonexistent/libonnxruntime.so.1.31.1"),
            "{text}"
        );
        assert!(text.contains("ORT_DYLIB_PATH"), "{text}");
    }
}
