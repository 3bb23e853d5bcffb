//! `hikmah migrate`.

use std::process::ExitCode;

/// Applies the embedded migrations to `DATABASE_URL`.
pub async fn run() -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
