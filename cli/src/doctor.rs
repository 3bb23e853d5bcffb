//! `hikmah doctor`: checks everything the system needs and says what to do about each failure.

use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;

use sha2::{Digest, Sha256};
use shared::artifacts::{self, Artifact};
use shared::config::{DbConfig, DedupConfig, EmbedConfig, Env, LlmConfig};
use shared::db::{self, Db};
use shared::embed::Embedder;

/// One row of the report.
struct Check {
    name: String,
    ok: bool,
    detail: String,
    /// What to do when it failed.
    fix: String,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Display, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.to_string(),
            fix: fix.into(),
        }
    }
}

/// Checks configuration, database and schema, model files and ONNX Runtime; prints a ✓/✗ table.
pub async fn run() -> anyhow::Result<ExitCode> {
    let env = Env::process();
    let mut checks = Vec::new();

    checks.extend(config_checks(&env));

    match DbConfig::from_env(&env, 1) {
        Ok(cfg) => checks.extend(database_checks(&cfg).await),
        Err(e) => checks.push(Check::fail(
            "database",
            e,
            "set DATABASE_URL (scripts/run.sh starts a local cluster)",
        )),
    }

    match EmbedConfig::from_env(&env) {
        Ok(cfg) => checks.extend(embedder_checks(&cfg).await),
        Err(e) => checks.push(Check::fail("embedder", e, "fix the variable named")),
    }

    print_table(&checks);
    Ok(if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn config_checks(env: &Env) -> Vec<Check> {
    let mut out = Vec::new();
    match DedupConfig::from_env(env) {
        Ok(c) => out.push(Check::pass(
            "config: DEDUP_THRESHOLD",
            format!("{}", c.threshold),
        )),
        Err(e) => out.push(Check::fail(
            "config: DEDUP_THRESHOLD",
            e,
            "set a number in (0, 1]",
        )),
    }
    match LlmConfig::from_env(env) {
        Ok(c) => out.push(Check::pass("config: LLM provider", describe_llm(&c))),
        Err(e) => out.push(Check::fail(
            "config: LLM provider",
            e,
            "set LLM_PROVIDER to openai, bedrock or offline",
        )),
    }
    out
}

fn describe_llm(cfg: &LlmConfig) -> String {
    match cfg {
        LlmConfig::OpenAi {
            base_url,
            api_key,
            model,
            ..
        } => {
            let key = if api_key.is_some() {
                "key set"
            } else {
                "no key"
            };
            format!("openai {model} at {base_url} ({key})")
        }
        LlmConfig::Bedrock { model, .. } => format!("bedrock {model}"),
        LlmConfig::Offline => "offline (demo text, no network)".into(),
    }
}

async fn database_checks(cfg: &DbConfig) -> Vec<Check> {
    let db = match Db::connect(cfg).await {
        Ok(db) => db,
        Err(e) => {
            return vec![Check::fail(
                "database reachable",
                e,
                "start PostgreSQL or fix DATABASE_URL (scripts/run.sh starts a throwaway cluster)",
            )]
        }
    };
    let mut out = vec![Check::pass("database reachable", db.target().to_owned())];
    out.push(match db::schema_version(&db).await {
        Ok(Some(v)) if v == db::LATEST_SCHEMA_VERSION => {
            Check::pass("schema version", format!("{v} (latest)"))
        }
        Ok(Some(v)) => Check::fail(
            "schema version",
            format!("{v}, latest is {}", db::LATEST_SCHEMA_VERSION),
            "run `hikmah migrate`",
        ),
        Ok(None) => Check::fail(
            "schema version",
            "no migrations applied",
            "run `hikmah migrate`",
        ),
        Err(e) => Check::fail("schema version", e, "run `hikmah migrate`"),
    });
    db.close();
    out
}

async fn embedder_checks(cfg: &EmbedConfig) -> Vec<Check> {
    let mut pins = artifacts::for_this_arch();
    pins.extend(artifacts::int8_model());
    let mut out = Vec::new();
    let mut files_ok = true;
    let int8 = cfg.model == shared::config::EmbedModel::Int8;
    let files = [
        Some(("model", cfg.model_dir.join(shared::embed::MODEL_FILE))),
        // EMBED_MODEL=shipped runs without the built model.
        int8.then(|| ("model-int8", cfg.model_path())),
        Some((
            "tokenizer",
            cfg.model_dir.join(shared::embed::TOKENIZER_FILE),
        )),
        Some(("ort", cfg.ort_dylib_path.clone())),
    ];
    for (name, path) in files.into_iter().flatten() {
        let check = pinned_file_check(name, &path, pins.iter().find(|a| a.name == name));
        // Any ONNX Runtime 1.31 build may be used on purpose; the load check below is what counts.
        let check = if name == "ort" && !check.ok && path.is_file() {
            Check::pass(
                "ort file",
                format!("{} (not the pinned build)", path.display()),
            )
        } else {
            check
        };
        files_ok &= check.ok;
        out.push(check);
    }
    if !files_ok {
        out.push(Check::fail(
            "ONNX Runtime loads",
            "skipped: a pinned file is missing or altered",
            "run scripts/setup.sh",
        ));
        return out;
    }
    let loaded = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || -> Result<usize, String> {
            let embedder = Embedder::load(&cfg).map_err(|e| e.to_string())?;
            let vectors = embedder
                .embed_blocking(&["Patience is the key to relief."])
                .map_err(|e| e.to_string())?;
            Ok(vectors.first().map(|v| v.as_slice().len()).unwrap_or(0))
        })
        .await
    };
    out.push(match loaded {
        Ok(Ok(dim)) if dim == shared::types::EMBEDDING_DIM => Check::pass(
            "ONNX Runtime loads",
            format!("embedded a test sentence: {dim} dims"),
        ),
        Ok(Ok(dim)) => Check::fail(
            "ONNX Runtime loads",
            format!("unexpected dimension {dim}"),
            "run scripts/setup.sh",
        ),
        Ok(Err(e)) => Check::fail(
            "ONNX Runtime loads",
            e,
            "run scripts/setup.sh, or point ORT_DYLIB_PATH at libonnxruntime 1.31",
        ),
        Err(e) => Check::fail("ONNX Runtime loads", e, "report this as a bug"),
    });
    out
}

fn pinned_file_check(name: &str, path: &Path, pin: Option<&Artifact>) -> Check {
    let label = format!("{name} file");
    let Some(pin) = pin else {
        return Check::fail(
            label,
            format!("no pin for {name} on {}", std::env::consts::ARCH),
            "use x86_64 or aarch64",
        );
    };
    match sha256_file(path) {
        Err(e) => Check::fail(
            label,
            format!("{}: {e}", path.display()),
            "run scripts/setup.sh",
        ),
        Ok(sum) if sum == pin.sha256 => Check::pass(
            label,
            format!(
                "{} (sha256 pinned, {} {})",
                path.display(),
                pin.package,
                pin.version
            ),
        ),
        Ok(sum) => Check::fail(
            label,
            format!(
                "{}: sha256 {sum} is not the pinned {}",
                path.display(),
                pin.sha256
            ),
            "run scripts/setup.sh to fetch the pinned file",
        ),
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn print_table(checks: &[Check]) {
    let width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    for c in checks {
        let mark = if c.ok { "✓" } else { "✗" };
        println!("{mark} {:<width$}  {}", c.name, c.detail);
        if !c.ok {
            println!("  {:<width$}  → {}", "", c.fix);
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("all {} checks passed", checks.len());
    } else {
        println!("{failed} of {} checks failed", checks.len());
    }
}
