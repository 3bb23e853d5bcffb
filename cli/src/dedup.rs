//! `hikmah dedup EXISTING CANDIDATE`: the memory consumer's duplicate decision, from outside.

use std::process::ExitCode;

use shared::config::{DedupConfig, EmbedConfig, Env};
use shared::embed::Embedder;
use shared::memory::dedup::DedupPolicy;
use shared::memory::service::decide_texts;

/// Arguments of `hikmah dedup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A note already in memory.
    pub existing: String,
    /// The new candidate note.
    pub candidate: String,
}

/// Prints `{"cosine": …, "duplicate": …, "reason": …}` (threshold from `DEDUP_THRESHOLD`).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = Env::process();
    let policy = DedupPolicy::from(&DedupConfig::from_env(&env)?);
    let embedder = Embedder::load(&EmbedConfig::from_env(&env)?)?;
    let decision = decide_texts(&embedder, &policy, &args.existing, &args.candidate).await?;
    println!("{}", serde_json::to_string(&decision)?);
    Ok(ExitCode::SUCCESS)
}
