//! `hikmah memory list|forget`.

use std::process::ExitCode;

/// Memory subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List a user's notes (most reinforced first).
    List {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Erase a user's notes (all, or one).
    Forget {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Only this note.
        #[arg(long)]
        note: Option<i64>,
    },
}

/// Runs a memory subcommand.
pub async fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
