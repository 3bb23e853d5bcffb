//! `hikmah embed [TEXT...]`.

use std::process::ExitCode;

/// Arguments of `hikmah embed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Texts to embed; with none, one text per line of standard input.
    pub texts: Vec<String>,
}

/// Prints one JSON array per text.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
