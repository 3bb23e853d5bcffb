//! `hikmah serve`: the local runner.

use std::process::ExitCode;

/// Arguments of `hikmah serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Serves the elaborate handler and runs the memory consumer locally.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
