//! `hikmah bench ...`: measurements printed as tables (speed targets live here, not in tests).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use shared::config::{EmbedConfig, EmbedModel, Env};
use shared::embed::Embedder;

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Embedder throughput, shipped vs int8 model: batch 1 and 32, ~20 and ~120 tokens, 1 thread and all threads.
    Embed(EmbedArgs),
    /// Elaborate: added first-delta latency (p50/p99), concurrent offline streams, RSS.
    Elaborate(crate::bench_elaborate::Args),
    /// Memory consumer: per-message time by memory size, batches of 10, peak RSS, cold init.
    Consumer(crate::bench_consumer::Args),
}

/// Runs a benchmark.
pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Embed(args) => bench_embed(args).await,
        Command::Elaborate(args) => crate::bench_elaborate::run(args).await,
        Command::Consumer(args) => crate::bench_consumer::run(args).await,
    }
}

/// Options of `hikmah bench embed`.
#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Seconds of measurement per row (after one warm-up call).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
}

/// Short texts: about 20 tokens each (measured and printed).
const SHORT: &str =
    "Patience is the key to relief, and gratitude keeps the heart soft in times of hardship";

/// Long texts: about 120 tokens each (measured and printed).
const LONG: &str =
    "Whoever travels a path in search of knowledge, God makes easy for him a path to \
    Paradise. Do not be people without minds of your own, saying that if others treat you well you \
    will treat them well, and that if they do wrong you will do wrong; rather, accustom yourselves \
    to do good if people do good and not to do wrong if they do evil. The scholars say that \
    knowledge without action is like a tree without fruit, and action without sincerity is like a \
    traveller who fills his bag with sand: it weighs him down and does not benefit him at all";

/// Embedder throughput and peak memory for each combination, as a markdown table.
async fn bench_embed(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let base = EmbedConfig::from_env(&Env::process())?;
    let seconds = Duration::from_secs_f64(args.seconds.max(0.1));
    // All of it is CPU-bound and synchronous: keep it off the async executor.
    tokio::task::spawn_blocking(move || embed_table(&base, seconds))
        .await
        .context("the benchmark thread panicked")??;
    Ok(ExitCode::SUCCESS)
}

fn embed_table(base: &EmbedConfig, seconds: Duration) -> anyhow::Result<()> {
    let all = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut threads = vec![1];
    if all > 1 {
        threads.push(all);
    }
    let models = [EmbedModel::Shipped, EmbedModel::Int8];
    println!(
        "Embedder: {} (`EMBED_MODEL=shipped`, ONNX Runtime computing in fp32) side by side with {} \
         (`EMBED_MODEL=int8`, the default); {} cores available; {:.1} s per cell, the two models \
         measured one after the other in each row\n",
        base.model_dir.join(EmbedModel::Shipped.file_name()).display(),
        EmbedModel::Int8.file_name(),
        all,
        seconds.as_secs_f64()
    );
    println!("| threads | batch | tokens/text | mode | shipped: embeddings/s | int8: embeddings/s | speed-up | shipped ms/call | int8 ms/call |");
    println!("|--:|--:|--:|:--|--:|--:|--:|--:|--:|");
    let mut builds = Vec::new();
    for &t in &threads {
        let mut embedders = Vec::new();
        for model in models {
            let started = Instant::now();
            let embedder = Embedder::load(&EmbedConfig {
                intra_threads: t,
                model,
                ..base.clone()
            })?;
            builds.push((t, model, started.elapsed()));
            embedders.push(embedder);
        }
        for base_text in [SHORT, LONG] {
            // Distinct texts (a number in front) so nothing can be cached; lengths stay equal ±1.
            let texts: Vec<String> = (0..32).map(|i| format!("{i} {base_text}")).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokens = refs
                .iter()
                .map(|t| embedders[0].token_count(t))
                .sum::<Result<usize, _>>()?
                / refs.len();
            // "batched": one embed_blocking call for the whole batch (what the consumer does);
            // "per text": one call per text, the baseline batching is measured against.
            let rows: [(usize, &str); 3] = [(1, "single"), (32, "per text"), (32, "batched")];
            for (batch, mode) in rows {
                let calls = &refs[..batch];
                let mut cells = Vec::new();
                for embedder in &embedders {
                    let run = |texts: &[&str]| -> Result<(), shared::embed::EmbedError> {
                        if mode == "per text" {
                            for text in texts {
                                embedder.embed_blocking(&[text])?;
                            }
                        } else {
                            embedder.embed_blocking(texts)?;
                        }
                        Ok(())
                    };
                    run(calls)?; // warm-up
                    let started = Instant::now();
                    let mut n_calls = 0u32;
                    while started.elapsed() < seconds || n_calls < 3 {
                        run(calls)?;
                        n_calls += 1;
                    }
                    let elapsed = started.elapsed().as_secs_f64();
                    cells.push((
                        f64::from(n_calls) * batch as f64 / elapsed,
                        elapsed * 1000.0 / f64::from(n_calls),
                    ));
                }
                let [(shipped, shipped_ms), (int8, int8_ms)] = cells[..] else {
                    anyhow::bail!("expected two models");
                };
                println!(
                    "| {t} | {batch} | {tokens} | {mode} | {shipped:.1} | {int8:.1} | {:.2}x | {shipped_ms:.1} | {int8_ms:.1} |",
                    int8 / shipped
                );
            }
        }
    }
    println!("\n| threads | model | session build (ms) |");
    println!("|--:|:--|--:|");
    for (t, model, took) in builds {
        println!(
            "| {t} | {} | {:.0} |",
            model.file_name(),
            took.as_secs_f64() * 1000.0
        );
    }

    // Batching is only allowed because it does not change a text's vector: measure it on
    // mixed lengths (padding up to 256 tokens), for the default model; and how far the int8
    // model's vectors are from the shipped model's.
    let int8 = Embedder::load(base)?;
    let shipped = Embedder::load(&EmbedConfig {
        model: EmbedModel::Shipped,
        ..base.clone()
    })?;
    let long = LONG.repeat(3);
    let mixed = [
        SHORT,
        LONG,
        long.as_str(),
        "one",
        "",
        "🌙 moon",
        "الصبر مفتاح الفرج",
    ];
    let batched = int8.embed_blocking(&mixed)?;
    let mut single = Vec::new();
    for text in mixed {
        single.extend(int8.embed_blocking(&[text])?);
    }
    let max_diff = single
        .iter()
        .zip(&batched)
        .flat_map(|(a, b)| {
            a.as_slice()
                .iter()
                .zip(b.as_slice())
                .map(|(x, y)| (x - y).abs())
        })
        .fold(0f32, f32::max);
    let reference = shipped.embed_blocking(&mixed)?;
    let min_cosine = reference
        .iter()
        .zip(&batched)
        .map(|(a, b)| a.cosine(b))
        .fold(f32::MAX, f32::min);
    println!(
        "\n{} ({}): batched vs one-by-one vectors on mixed lengths (2..256 tokens): max |difference| = {max_diff:.2e}; \
         lowest cosine with the shipped model's vectors: {min_cosine:.4} (against fp32 sentence-transformers: \
         `cargo test -p hikmah-tests --test main -- embedder::`)",
        base.model.file_name(),
        if base.model == EmbedModel::Int8 { "EMBED_MODEL=int8" } else { "EMBED_MODEL=shipped" },
    );
    println!(
        "Peak RSS of the whole run (VmHWM): {} MiB.",
        peak_rss_mib().map_or_else(|| "n/a".into(), |m| format!("{m:.0}"))
    );
    Ok(())
}

/// The process's peak resident set size in MiB, from `VmHWM` in /proc/self/status.
fn peak_rss_mib() -> Option<f64> {
    status_kib("VmHWM").map(|kib| kib as f64 / 1024.0)
}

/// A memory line of /proc/self/status (`VmRSS`, `VmHWM`) in KiB; `None` where unavailable.
pub(crate) fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    line.split_whitespace().nth(1)?.parse().ok()
}
