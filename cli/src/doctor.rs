//! `hikmah doctor`.

use std::process::ExitCode;

/// Checks everything the system needs and prints a ✓/✗ table.
pub async fn run() -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
