//! Typed configuration from the environment.
//!
//! Each part of the system loads only the section it needs (`DbConfig`, `EmbedConfig`, ...), so a
//! function never fails to start over a variable it does not use. A missing or malformed variable
//! is a [`ConfigError`] that names it; secrets are wrapped in [`Secret`] and never printed.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::artifacts;

/// A configuration problem, naming the variable so the operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set (or is empty).
    #[error("{name} is not set: {hint}")]
    Missing {
        /// The environment variable.
        name: &'static str,
        /// What it should hold.
        hint: &'static str,
    },
    /// A variable is set but its value cannot be used.
    #[error("{name}={value} is invalid: {reason}")]
    Invalid {
        /// The environment variable.
        name: &'static str,
        /// The value as given (redacted for secrets).
        value: String,
        /// What a valid value looks like.
        reason: String,
    },
}

/// A secret value (database URL with password, API key): `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is handed to the system that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where configuration values come from: the process environment, or a fixed map in tests.
#[derive(Clone, Default)]
pub struct Env {
    vars: Option<HashMap<String, String>>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.vars.is_some() {
            "Env(map)"
        } else {
            "Env(process)"
        })
    }
}

impl Env {
    /// Reads from the process environment.
    pub fn process() -> Self {
        Self { vars: None }
    }

    /// Reads from the given pairs only (for tests and embedding).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The value of `name`, treating empty as unset.
    pub fn get(&self, name: &str) -> Option<String> {
        let v = match &self.vars {
            Some(map) => map.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        v.filter(|s| !s.trim().is_empty())
    }

    /// A required value.
    pub fn required(&self, name: &'static str, hint: &'static str) -> Result<String, ConfigError> {
        self.get(name).ok_or(ConfigError::Missing { name, hint })
    }

    /// An optional value parsed with `FromStr`, or `default` when unset.
    pub fn parse_or<T>(
        &self,
        name: &'static str,
        default: T,
        reason: &str,
    ) -> Result<T, ConfigError>
    where
        T: FromStr,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse::<T>().map_err(|_| ConfigError::Invalid {
                name,
                value: raw.clone(),
                reason: reason.to_owned(),
            }),
        }
    }

    /// An optional integer within `range`, or `default` when unset.
    pub fn int_in(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let reason = format!(
            "expected a whole number from {} to {}",
            range.start(),
            range.end()
        );
        let v: u64 = self.parse_or(name, default, &reason)?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError::Invalid {
                name,
                value: v.to_string(),
                reason,
            })
        }
    }

    /// An optional duration in milliseconds within `range_ms`.
    pub fn millis(
        &self,
        name: &'static str,
        default_ms: u64,
        range_ms: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.int_in(name, default_ms, range_ms)
            .map(Duration::from_millis)
    }

    /// An optional boolean (`true`/`false`/`1`/`0`/`yes`/`no`).
    pub fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).map(|s| s.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::Invalid {
                    name,
                    value: v,
                    reason: "expected true or false".into(),
                }),
            },
        }
    }
}

/// Where the database credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbSource {
    /// A `postgres://` URL (with its password: a secret).
    Url(Secret),
    /// An AWS Secrets Manager secret (RDS format: host, port, username, password, dbname), read
    /// through the Parameters and Secrets Lambda Extension.
    SecretArn(SecretSource),
}

/// Where and how to read the database secret (`DB_SECRET_ARN` and the extension's settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    /// The secret's ARN (`DB_SECRET_ARN`).
    pub arn: String,
    /// The extension's port (`PARAMETERS_SECRETS_EXTENSION_HTTP_PORT`, default 2773).
    pub extension_port: u16,
    /// The token the extension requires (`AWS_SESSION_TOKEN`, set by Lambda).
    pub session_token: Option<Secret>,
    /// How long init keeps retrying an extension that does not answer yet
    /// (`SECRETS_EXTENSION_WAIT_MS`, default 10000): Lambda starts the runtime once extensions
    /// have registered, not once they listen.
    pub extension_wait: Duration,
}

/// Database pool settings (`DATABASE_URL`/`DB_SECRET_ARN`, `POOL_*`, `DB_*_TIMEOUT_MS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// Where to connect.
    pub source: DbSource,
    /// Most connections this execution environment holds (`POOL_MAX_SIZE`).
    pub pool_max_size: usize,
    /// Connections older than this are dropped at the start of an invocation (`POOL_MAX_AGE_SECS`).
    pub pool_max_age: Duration,
    /// TCP connect + startup timeout (`DB_CONNECT_TIMEOUT_MS`); also the pool's create timeout.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` for every statement (`DB_STATEMENT_TIMEOUT_MS`).
    pub statement_timeout: Duration,
    /// Longest wait for a free pooled connection (`DB_POOL_WAIT_TIMEOUT_MS`).
    pub wait_timeout: Duration,
    /// Longest the pre-use check of a pooled connection may take (`DB_RECYCLE_TIMEOUT_MS`).
    pub recycle_timeout: Duration,
    /// `application_name` reported to the server, so our sessions can be found in `pg_stat_activity`.
    pub application_name: String,
}

impl DbConfig {
    /// Reads the database section; `default_pool_size` is the function's own sensible size.
    pub fn from_env(env: &Env, default_pool_size: usize) -> Result<Self, ConfigError> {
        let source = match (env.get("DATABASE_URL"), env.get("DB_SECRET_ARN")) {
            (Some(url), _) => {
                if !(url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || url.contains('='))
                {
                    return Err(ConfigError::Invalid {
                        name: "DATABASE_URL",
                        value: "[redacted]".into(),
                        reason: "expected postgres://user[:password]@host[:port]/dbname".into(),
                    });
                }
                DbSource::Url(Secret::new(url))
            }
            (None, Some(arn)) => {
                if !arn.starts_with("arn:") {
                    return Err(ConfigError::Invalid {
                        name: "DB_SECRET_ARN",
                        value: arn,
                        reason: "expected an arn:aws:secretsmanager:... ARN".into(),
                    });
                }
                let extension_port =
                    env.int_in("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", 2773, 1..=65_535)?;
                DbSource::SecretArn(SecretSource {
                    arn,
                    extension_port: u16::try_from(extension_port).unwrap_or(2773),
                    session_token: env.get("AWS_SESSION_TOKEN").map(Secret::new),
                    extension_wait: env.millis("SECRETS_EXTENSION_WAIT_MS", 10_000, 0..=60_000)?,
                })
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    name: "DATABASE_URL",
                    hint: "set DATABASE_URL=postgres://user@host:5432/db (or DB_SECRET_ARN in AWS)",
                })
            }
        };
        Ok(Self {
            source,
            pool_max_size: env.int_in("POOL_MAX_SIZE", default_pool_size as u64, 1..=1000)?
                as usize,
            pool_max_age: Duration::from_secs(env.int_in("POOL_MAX_AGE_SECS", 300, 1..=86_400)?),
            connect_timeout: env.millis("DB_CONNECT_TIMEOUT_MS", 3_000, 100..=60_000)?,
            statement_timeout: env.millis("DB_STATEMENT_TIMEOUT_MS", 10_000, 100..=900_000)?,
            wait_timeout: env.millis("DB_POOL_WAIT_TIMEOUT_MS", 5_000, 10..=900_000)?,
            recycle_timeout: env.millis("DB_RECYCLE_TIMEOUT_MS", 2_000, 10..=60_000)?,
            application_name: env
                .get("DB_APPLICATION_NAME")
                .unwrap_or_else(|| "hikmah".into()),
        })
    }
}

/// Which model file the embedder runs (`EMBED_MODEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbedModel {
    /// `model-int8.onnx`: the shipped model rewritten at set-up to compute in int8
    /// (`scripts/make_int8_model.py`); about twice as fast, cosine ≥ 0.99 to the reference.
    #[default]
    Int8,
    /// `model.onnx`: the shipped model as pinned (int8 on disk, fp32 compute).
    Shipped,
}

impl EmbedModel {
    /// The file name inside `EMBED_MODEL_DIR`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Int8 => "model-int8.onnx",
            Self::Shipped => "model.onnx",
        }
    }
}

impl FromStr for EmbedModel {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "int8" => Ok(Self::Int8),
            "shipped" => Ok(Self::Shipped),
            _ => Err(()),
        }
    }
}

/// Embedder settings (`EMBED_MODEL_DIR`, `EMBED_MODEL`, `ORT_DYLIB_PATH`, `EMBED_THREADS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedConfig {
    /// Directory holding the model files and `tokenizer.json`.
    pub model_dir: PathBuf,
    /// Which model file of `model_dir` runs.
    pub model: EmbedModel,
    /// The ONNX Runtime shared library.
    pub ort_dylib_path: PathBuf,
    /// Intra-op threads for inference (default: available cores).
    pub intra_threads: usize,
}

impl EmbedConfig {
    /// The model file that runs.
    pub fn model_path(&self) -> PathBuf {
        self.model_dir.join(self.model.file_name())
    }

    /// Reads the embedder section, defaulting to where the set-up put the files.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cache = artifacts::cache_dir(env);
        Ok(Self {
            model_dir: env
                .get("EMBED_MODEL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| cache.join("model")),
            model: env.parse_or(
                "EMBED_MODEL",
                EmbedModel::default(),
                "expected int8 (the int8-compute model built at set-up) or shipped (the pinned model as is)",
            )?,
            ort_dylib_path: env
                .get("ORT_DYLIB_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| artifacts::default_ort_path(&cache)),
            intra_threads: env.int_in("EMBED_THREADS", cores as u64, 1..=256)? as usize,
        })
    }
}

/// Memory dedup settings (`DEDUP_THRESHOLD`, `DEDUP_SPAN_THRESHOLD`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupConfig {
    /// Cosine at or above which a candidate is a semantic duplicate of an existing note.
    pub threshold: f32,
    /// Cosine of the differing spans below which two similar notes say different things.
    pub span_threshold: f32,
    /// Most variants (merged duplicates) kept per note, the most recent (`NOTE_VARIANTS_MAX`).
    pub variants_max: u32,
}

impl DedupConfig {
    /// Default threshold, chosen on the dev split of the labelled pairs (see README).
    pub const DEFAULT_THRESHOLD: f32 = 0.80;
    /// Default span threshold, chosen on the dev split of the labelled pairs (see README).
    pub const DEFAULT_SPAN_THRESHOLD: f32 = 0.55;
    /// Default number of variants kept per note.
    pub const DEFAULT_VARIANTS_MAX: u32 = 20;

    /// Reads the dedup section.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let threshold: f32 = env.parse_or(
            "DEDUP_THRESHOLD",
            Self::DEFAULT_THRESHOLD,
            "expected a number in (0, 1]",
        )?;
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(ConfigError::Invalid {
                name: "DEDUP_THRESHOLD",
                value: threshold.to_string(),
                reason: "expected a number in (0, 1]".into(),
            });
        }
        let span_threshold: f32 = env.parse_or(
            "DEDUP_SPAN_THRESHOLD",
            Self::DEFAULT_SPAN_THRESHOLD,
            "expected a number in [-1, 1]",
        )?;
        if !(-1.0..=1.0).contains(&span_threshold) {
            return Err(ConfigError::Invalid {
                name: "DEDUP_SPAN_THRESHOLD",
                value: span_threshold.to_string(),
                reason: "expected a number in [-1, 1]".into(),
            });
        }
        Ok(Self {
            threshold,
            span_threshold,
            variants_max: env.int_in(
                "NOTE_VARIANTS_MAX",
                u64::from(Self::DEFAULT_VARIANTS_MAX),
                0..=1000,
            )? as u32,
        })
    }
}

/// Which note extractor the consumer runs (`NOTE_EXTRACTOR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractorKind {
    /// The deterministic notes from the hikmah and the question.
    Default,
    /// Notes about the user from the configured LLM provider, the default one as fallback.
    Llm,
}

/// Note extraction settings (`NOTE_EXTRACTOR`, `NOTE_EXTRACTOR_TIMEOUT_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractorConfig {
    /// Which extractor.
    pub kind: ExtractorKind,
    /// Longest an LLM extraction may take before the default extractor is used instead.
    pub timeout: Duration,
}

impl ExtractorConfig {
    /// Reads the note extraction section.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let kind = match env
            .get("NOTE_EXTRACTOR")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => ExtractorKind::Default,
            Some(v) if v == "default" => ExtractorKind::Default,
            Some(v) if v == "llm" => ExtractorKind::Llm,
            Some(v) => {
                return Err(ConfigError::Invalid {
                    name: "NOTE_EXTRACTOR",
                    value: v,
                    reason: "expected default or llm".into(),
                })
            }
        };
        Ok(Self {
            kind,
            timeout: env.millis("NOTE_EXTRACTOR_TIMEOUT_MS", 5000, 100..=60_000)?,
        })
    }
}

/// The optional LLM judge for the ambiguous band (`DEDUP_JUDGE=llm`, `DEDUP_JUDGE_BAND`,
/// `DEDUP_JUDGE_TIMEOUT_MS`, `DEDUP_JUDGE_BUDGET`), asking the provider of the `LLM_*` section.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeConfig {
    /// Lowest cosine the judge decides.
    pub band_low: f32,
    /// Cosine from which the rules decide again (exclusive).
    pub band_high: f32,
    /// Longest one judge call may take; then the pair is kept apart.
    pub timeout: Duration,
    /// Most judge calls per record; the pairs beyond it are kept apart.
    pub budget: usize,
    /// The provider asked (`LLM_PROVIDER` and its settings; `offline` cannot judge).
    pub llm: LlmConfig,
}

impl JudgeConfig {
    /// Default band: below it the notes are unrelated, above it the rules rarely err.
    pub const DEFAULT_BAND: (f32, f32) = (0.70, 0.90);
    /// Default timeout of one judge call, in milliseconds.
    pub const DEFAULT_TIMEOUT_MS: u64 = 3_000;
    /// Default judge calls per record.
    pub const DEFAULT_BUDGET: u64 = 4;

    /// Reads the judge section (and, when it is on, the LLM section): `None` with `DEDUP_JUDGE`
    /// unset or `rules` (the default).
    pub fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        let mode = env
            .get("DEDUP_JUDGE")
            .map(|m| m.trim().to_ascii_lowercase())
            .unwrap_or_else(|| "rules".into());
        match mode.as_str() {
            "rules" => return Ok(None),
            "llm" => {}
            other => {
                return Err(ConfigError::Invalid {
                    name: "DEDUP_JUDGE",
                    value: other.to_owned(),
                    reason: "expected rules (the default) or llm".into(),
                })
            }
        }
        let (band_low, band_high) = match env.get("DEDUP_JUDGE_BAND") {
            None => Self::DEFAULT_BAND,
            Some(raw) => parse_band(&raw).ok_or_else(|| ConfigError::Invalid {
                name: "DEDUP_JUDGE_BAND",
                value: raw.clone(),
                reason:
                    "expected two cosines LOW..HIGH with -1 <= LOW < HIGH <= 1, e.g. 0.70..0.90"
                        .into(),
            })?,
        };
        let llm = LlmConfig::from_env(env)?;
        if llm == LlmConfig::Offline {
            return Err(ConfigError::Invalid {
                name: "DEDUP_JUDGE",
                value: mode,
                reason: "the judge needs a real provider: set LLM_PROVIDER=openai (with \
                         OPENAI_BASE_URL/OPENAI_API_KEY) or bedrock (with LLM_MODEL)"
                    .into(),
            });
        }
        Ok(Some(Self {
            band_low,
            band_high,
            timeout: env.millis(
                "DEDUP_JUDGE_TIMEOUT_MS",
                Self::DEFAULT_TIMEOUT_MS,
                10..=60_000,
            )?,
            budget: env.int_in("DEDUP_JUDGE_BUDGET", Self::DEFAULT_BUDGET, 1..=50)? as usize,
            llm,
        }))
    }
}

/// `LOW..HIGH` (or `LOW,HIGH`) with `-1 <= LOW < HIGH <= 1`.
fn parse_band(raw: &str) -> Option<(f32, f32)> {
    let (low, high) = raw.split_once("..").or_else(|| raw.split_once(','))?;
    let (low, high): (f32, f32) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
    (-1.0 <= low && low < high && high <= 1.0).then_some((low, high))
}

/// Which LLM provider generates elaborations (`LLM_PROVIDER`, `LLM_MODEL`, `OPENAI_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmConfig {
    /// Any OpenAI-compatible `/v1/chat/completions` endpoint.
    OpenAi {
        /// Base URL up to and including `/v1` (`OPENAI_BASE_URL`).
        base_url: String,
        /// Bearer token (`OPENAI_API_KEY`), optional for local servers.
        api_key: Option<Secret>,
        /// Model name (`LLM_MODEL`).
        model: String,
        /// TCP/TLS connect timeout (`LLM_CONNECT_TIMEOUT_MS`).
        connect_timeout: Duration,
        /// Longest silence between two chunks before giving up (`LLM_IDLE_TIMEOUT_MS`).
        idle_timeout: Duration,
    },
    /// Amazon Bedrock `ConverseStream`.
    Bedrock {
        /// Model id (`LLM_MODEL`).
        model: String,
        /// Longest silence between two chunks (`LLM_IDLE_TIMEOUT_MS`).
        idle_timeout: Duration,
    },
    /// Deterministic demo text, no network.
    Offline,
}

impl LlmConfig {
    /// Reads the LLM section; with no `LLM_PROVIDER`, `offline` unless an OpenAI key is set.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let provider = env
            .get("LLM_PROVIDER")
            .map(|p| p.trim().to_ascii_lowercase())
            .unwrap_or_else(|| {
                if env.get("OPENAI_API_KEY").is_some() {
                    "openai".into()
                } else {
                    "offline".into()
                }
            });
        let connect_timeout = env.millis("LLM_CONNECT_TIMEOUT_MS", 5_000, 100..=120_000)?;
        let idle_timeout = env.millis("LLM_IDLE_TIMEOUT_MS", 60_000, 100..=900_000)?;
        match provider.as_str() {
            "openai" => {
                let base_url = env
                    .get("OPENAI_BASE_URL")
                    .unwrap_or_else(|| "https://api.openai.com/v1".into())
                    .trim_end_matches('/')
                    .to_owned();
                if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                    return Err(ConfigError::Invalid {
                        name: "OPENAI_BASE_URL",
                        value: base_url,
                        reason: "expected an http:// or https:// URL ending in /v1".into(),
                    });
                }
                Ok(Self::OpenAi {
                    base_url,
                    api_key: env.get("OPENAI_API_KEY").map(Secret::new),
                    model: env.get("LLM_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
                    connect_timeout,
                    idle_timeout,
                })
            }
            "bedrock" => Ok(Self::Bedrock {
                model: env.required(
                    "LLM_MODEL",
                    "a Bedrock model id, e.g. anthropic.claude-3-haiku-20240307-v1:0",
                )?,
                idle_timeout,
            }),
            "offline" => Ok(Self::Offline),
            other => Err(ConfigError::Invalid {
                name: "LLM_PROVIDER",
                value: other.to_owned(),
                reason: "expected openai, bedrock or offline".into(),
            }),
        }
    }
}

/// Bounds on one generation, whatever the provider (`LLM_MAX_TOKENS`, `LLM_TOTAL_TIMEOUT_MS`).
///
/// The idle timeout alone lets a slow or endless generation run into the function's timeout,
/// and then nothing is published or logged: these end it first, as a `provider_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationLimits {
    /// Most tokens the model may generate (sent as the provider's `max_tokens`).
    pub max_tokens: u32,
    /// Longest a whole generation may take, first byte to last.
    pub total_timeout: Duration,
}

impl Default for GenerationLimits {
    fn default() -> Self {
        Self {
            max_tokens: 1024,
            total_timeout: Duration::from_secs(120),
        }
    }
}

impl GenerationLimits {
    /// Reads the limits; defaults 1024 tokens and 120 s (the template's function timeout is 300 s).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let max_tokens = env.int_in(
            "LLM_MAX_TOKENS",
            u64::from(defaults.max_tokens),
            1..=100_000,
        )?;
        Ok(Self {
            max_tokens: u32::try_from(max_tokens).unwrap_or(defaults.max_tokens),
            total_timeout: env.millis("LLM_TOTAL_TIMEOUT_MS", 120_000, 1_000..=900_000)?,
        })
    }
}

/// The memory queue (`MEMORY_QUEUE_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The SQS queue URL events are published to (and, locally, polled from).
    pub url: String,
}

impl QueueConfig {
    /// Reads the queue section; the URL is required.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.required(
            "MEMORY_QUEUE_URL",
            "the SQS queue URL for completed elaborations",
        )?;
        Self::parse(url)
    }

    /// Reads the queue section when set (the local runner falls back to an in-process queue).
    pub fn optional_from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        env.get("MEMORY_QUEUE_URL").map(Self::parse).transpose()
    }

    fn parse(url: String) -> Result<Self, ConfigError> {
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(Self { url })
        } else {
            Err(ConfigError::Invalid {
                name: "MEMORY_QUEUE_URL",
                value: url,
                reason: "expected an https://sqs.<region>.amazonaws.com/<account>/<queue> URL"
                    .into(),
            })
        }
    }

    /// Whether this is a FIFO queue (needs group and deduplication ids).
    pub fn is_fifo(&self) -> bool {
        self.url.ends_with(".fifo")
    }
}

/// Settings of the elaborate function itself (`MEMORY_CONTEXT_NOTES`, `TRUST_BODY_USER_ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElaborateConfig {
    /// How many of the user's notes personalise the prompt.
    pub memory_context_notes: usize,
    /// Accept the body's `user_id` without an authorizer identity (local development only).
    pub trust_body_user_id: bool,
    /// Interval of `: keep-alive` comments when nothing else was sent (`KEEPALIVE_SECS`).
    pub keepalive: Duration,
}

impl ElaborateConfig {
    /// Reads the elaborate section.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            memory_context_notes: env.int_in("MEMORY_CONTEXT_NOTES", 5, 0..=50)? as usize,
            trust_body_user_id: env.flag("TRUST_BODY_USER_ID", false)?,
            keepalive: Duration::from_secs(env.int_in("KEEPALIVE_SECS", 15, 1..=300)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn missing_database_url_names_it() {
        let err = DbConfig::from_env(&env(&[]), 1).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Missing {
                    name: "DATABASE_URL",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("DATABASE_URL"));
    }

    #[test]
    fn malformed_database_url_names_it_without_leaking_it() {
        let err =
            DbConfig::from_env(&env(&[("DATABASE_URL", "mysql://u:hunter2@h/db")]), 1).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn each_malformed_number_names_its_variable() {
        for name in [
            "POOL_MAX_SIZE",
            "POOL_MAX_AGE_SECS",
            "DB_CONNECT_TIMEOUT_MS",
            "DB_STATEMENT_TIMEOUT_MS",
            "DB_POOL_WAIT_TIMEOUT_MS",
            "DB_RECYCLE_TIMEOUT_MS",
        ] {
            for bad in ["abc", "0", "-1", "99999999999"] {
                let e = DbConfig::from_env(
                    &env(&[("DATABASE_URL", "postgres://x@h/db"), (name, bad)]),
                    1,
                );
                match e {
                    Err(ConfigError::Invalid { name: n, .. }) => assert_eq!(n, name),
                    other => panic!("{name}={bad}: expected Invalid, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn database_url_is_redacted_in_debug() -> Result<(), Box<dyn std::error::Error>> {
        let cfg = DbConfig::from_env(&env(&[("DATABASE_URL", "postgres://u:hunter2@h/db")]), 1)?;
        assert!(!format!("{cfg:?}").contains("hunter2"));
        Ok(())
    }

    #[test]
    fn dedup_threshold_out_of_range_names_it() {
        for bad in ["0", "1.5", "x", "-0.2"] {
            let err = DedupConfig::from_env(&env(&[("DEDUP_THRESHOLD", bad)])).unwrap_err();
            assert!(err.to_string().contains("DEDUP_THRESHOLD"), "{bad}: {err}");
        }
    }

    #[test]
    fn span_threshold_and_variants_max_out_of_range_name_their_variable(
    ) -> Result<(), Box<dyn std::error::Error>> {
        for (name, bad) in [
            ("DEDUP_SPAN_THRESHOLD", "2"),
            ("DEDUP_SPAN_THRESHOLD", "x"),
            ("NOTE_VARIANTS_MAX", "-1"),
            ("NOTE_VARIANTS_MAX", "5000"),
        ] {
            let err = DedupConfig::from_env(&env(&[(name, bad)])).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={bad}: {err}");
        }
        let cfg = DedupConfig::from_env(&env(&[]))?;
        assert_eq!(cfg.variants_max, DedupConfig::DEFAULT_VARIANTS_MAX);
        Ok(())
    }

    #[test]
    fn the_judge_is_off_by_default_and_each_malformed_setting_names_its_variable(
    ) -> Result<(), Box<dyn std::error::Error>> {
        const OPENAI: (&str, &str) = ("LLM_PROVIDER", "openai");
        assert_eq!(JudgeConfig::from_env(&env(&[]))?, None);
        assert_eq!(
            JudgeConfig::from_env(&env(&[("DEDUP_JUDGE", "rules")]))?,
            None
        );
        let on = JudgeConfig::from_env(&env(&[("DEDUP_JUDGE", "LLM"), OPENAI]))?
            .ok_or("DEDUP_JUDGE=llm turns the judge on")?;
        assert_eq!((on.band_low, on.band_high), JudgeConfig::DEFAULT_BAND);
        assert!(matches!(on.llm, LlmConfig::OpenAi { .. }));
        let band = JudgeConfig::from_env(&env(&[
            ("DEDUP_JUDGE", "llm"),
            OPENAI,
            ("DEDUP_JUDGE_BAND", " 0.6 , 0.85 "),
        ]))?
        .ok_or("on")?;
        assert_eq!((band.band_low, band.band_high), (0.6, 0.85));
        for (name, bad) in [
            ("DEDUP_JUDGE", "maybe"),
            ("DEDUP_JUDGE_BAND", "0.9..0.7"),
            ("DEDUP_JUDGE_BAND", "0.7"),
            ("DEDUP_JUDGE_BAND", "0.7..1.5"),
            ("DEDUP_JUDGE_BAND", "a..b"),
            ("DEDUP_JUDGE_TIMEOUT_MS", "0"),
            ("DEDUP_JUDGE_TIMEOUT_MS", "soon"),
            ("DEDUP_JUDGE_BUDGET", "0"),
            ("DEDUP_JUDGE_BUDGET", "1000"),
            ("LLM_PROVIDER", "offline"),
        ] {
            let mut pairs = vec![("DEDUP_JUDGE", "llm"), OPENAI];
            pairs.retain(|(k, _)| *k != name);
            pairs.push((name, bad));
            let err = JudgeConfig::from_env(&env(&pairs))
                .err()
                .ok_or(format!("{name}={bad} accepted"))?;
            assert!(err.to_string().contains(name), "{name}={bad}: {err}");
        }
        Ok(())
    }

    #[test]
    fn unknown_llm_provider_names_it_and_bedrock_needs_a_model(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let err = LlmConfig::from_env(&env(&[("LLM_PROVIDER", "gpt")])).unwrap_err();
        assert!(err.to_string().contains("LLM_PROVIDER"));
        let err = LlmConfig::from_env(&env(&[("LLM_PROVIDER", "bedrock")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                name: "LLM_MODEL",
                ..
            }
        ));
        assert_eq!(LlmConfig::from_env(&env(&[]))?, LlmConfig::Offline);
        Ok(())
    }

    #[test]
    fn openai_key_is_redacted_in_debug() -> Result<(), Box<dyn std::error::Error>> {
        let cfg = LlmConfig::from_env(&env(&[
            ("LLM_PROVIDER", "openai"),
            ("OPENAI_API_KEY", "sk-secret"),
        ]))?;
        assert!(!format!("{cfg:?}").contains("sk-secret"));
        Ok(())
    }

    #[test]
    fn queue_url_missing_or_malformed_names_it() {
        assert!(matches!(
            QueueConfig::from_env(&env(&[])).unwrap_err(),
            ConfigError::Missing {
                name: "MEMORY_QUEUE_URL",
                ..
            }
        ));
        assert!(
            QueueConfig::from_env(&env(&[("MEMORY_QUEUE_URL", "queue")]))
                .unwrap_err()
                .to_string()
                .contains("MEMORY_QUEUE_URL")
        );
    }

    #[test]
    fn note_extractor_is_default_or_llm_and_its_timeout_is_bounded(
    ) -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(
            ExtractorConfig::from_env(&env(&[]))?,
            ExtractorConfig {
                kind: ExtractorKind::Default,
                timeout: Duration::from_secs(5)
            }
        );
        assert_eq!(
            ExtractorConfig::from_env(&env(&[("NOTE_EXTRACTOR", "LLM")]))?.kind,
            ExtractorKind::Llm
        );
        let err = ExtractorConfig::from_env(&env(&[("NOTE_EXTRACTOR", "gpt")])).unwrap_err();
        assert!(err.to_string().contains("NOTE_EXTRACTOR"));
        let err =
            ExtractorConfig::from_env(&env(&[("NOTE_EXTRACTOR_TIMEOUT_MS", "0")])).unwrap_err();
        assert!(err.to_string().contains("NOTE_EXTRACTOR_TIMEOUT_MS"));
        Ok(())
    }

    #[test]
    fn trust_body_user_id_must_be_a_boolean() {
        let err = ElaborateConfig::from_env(&env(&[("TRUST_BODY_USER_ID", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("TRUST_BODY_USER_ID"));
    }
}
