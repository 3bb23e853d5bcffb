//! `hikmah`: the command line for people and scripts.
//!
//! Each subcommand lives in its own module; this file only parses arguments and dispatches.
//! Exit codes: 0 success, 1 failure (the reason on stderr), 2 usage error (from clap).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bench_consumer;
mod bench_elaborate;
mod bench_notes;
mod dedup;
mod doctor;
mod embed;
mod memory;
mod migrate;
mod serve;

/// hikmah: streamed elaborations with a deduplicated long-term memory.
#[derive(Debug, Parser)]
#[command(name = "hikmah", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the embedded SQL migrations (idempotent).
    Migrate,
    /// Print one JSON array of 384 floats per text (texts from arguments, else one per stdin line).
    Embed(embed::Args),
    /// Check configuration, database, schema, model files and ONNX Runtime; non-zero on any failure.
    Doctor,
    /// Decide whether CANDIDATE duplicates EXISTING, exactly as the memory consumer does.
    Dedup(dedup::Args),
    /// Inspect or erase a user's memory notes.
    #[command(subcommand)]
    Memory(memory::Command),
    /// Run the whole pipeline locally: the elaborate handler over HTTP and the memory consumer.
    Serve(serve::Args),
    /// Measure throughput, latency and memory; prints a table.
    #[command(subcommand)]
    Bench(bench::Command),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init(shared::telemetry::LogFormat::Text);
    let result = match cli.command {
        Command::Migrate => migrate::run().await,
        Command::Embed(args) => embed::run(args).await,
        Command::Doctor => doctor::run().await,
        Command::Dedup(args) => dedup::run(args).await,
        Command::Memory(cmd) => memory::run(cmd).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Bench(cmd) => bench::run(cmd).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
