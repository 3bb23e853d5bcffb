//! `hikmah dedup EXISTING CANDIDATE`.

use std::process::ExitCode;

/// Arguments of `hikmah dedup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A note already in memory.
    pub existing: String,
    /// The new candidate note.
    pub candidate: String,
}

/// Prints `{"cosine": …, "duplicate": …, "reason": …}`.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
