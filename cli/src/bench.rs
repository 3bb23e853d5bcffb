//! `hikmah bench ...`: measurements printed as tables (speed targets live here, not in tests).

use std::process::ExitCode;

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Embedder throughput: batch 1 and 32, ~20 and ~120 tokens, 1 thread and all threads.
    Embed,
}

/// Runs a benchmark.
pub async fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
