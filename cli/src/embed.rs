//! `hikmah embed [TEXT...]`.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use shared::config::{EmbedConfig, Env};
use shared::embed::Embedder;

/// Arguments of `hikmah embed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Texts to embed; with none, one text per line of standard input.
    pub texts: Vec<String>,
}

/// Texts read from standard input are embedded this many at a time, so output streams.
const STDIN_CHUNK: usize = 32;

/// Prints one JSON array per text.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = EmbedConfig::from_env(&Env::process())?;
    let embedder = Embedder::load(&cfg)?;
    if !args.texts.is_empty() {
        print_embeddings(&embedder, args.texts).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // Stdin is read on a plain thread-blocking loop: this is a one-shot CLI, not a server.
    let mut chunk = Vec::with_capacity(STDIN_CHUNK);
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading standard input")?;
        chunk.push(line.strip_suffix('\r').map(str::to_owned).unwrap_or(line));
        if chunk.len() == STDIN_CHUNK {
            print_embeddings(&embedder, std::mem::take(&mut chunk)).await?;
        }
    }
    if !chunk.is_empty() {
        print_embeddings(&embedder, chunk).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn print_embeddings(embedder: &Embedder, texts: Vec<String>) -> anyhow::Result<()> {
    let embeddings = embedder.embed(texts).await?;
    let mut out = std::io::stdout().lock();
    for e in embeddings {
        serde_json::to_writer(&mut out, e.as_slice())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
