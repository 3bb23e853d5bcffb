//! `hikmah bench consumer`: what one SQS message costs the memory consumer, as a function of the
//! user's memory size, and what a batch of 10 sustains. Runs the real handler in this process
//! against the database at `DATABASE_URL` (migrated first; the bench's own users are deleted at
//! the end) with the real embedder. Existing notes are realistic ([`bench_notes`]) and go in
//! through `hikmah memory import` (a child process: embedded by the model, deduplicated), once
//! for the largest row; smaller rows copy that user's first notes. `--json` prints one object for
//! scripts instead of the tables.
//!
//! [`bench_notes`]: crate::bench_notes

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use memory_consumer::{handle_batch, Consumer};
use shared::config::{DedupConfig, Env};
use shared::db::Db;
use shared::events::ElaborationCompleted;
use shared::memory::dedup::DedupPolicy;
use shared::memory::service::MemoryService;
use shared::types::UserId;

use crate::bench_notes::{message_texts, realistic_notes};

/// Options of `hikmah bench consumer`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Existing notes of the user, one row each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,100,1000,10000")]
    pub notes: Vec<usize>,
    /// Messages measured per row.
    #[arg(long, default_value_t = 30)]
    pub messages: usize,
    /// Batches of 10 measured for throughput.
    #[arg(long, default_value_t = 10)]
    pub batches: usize,
    /// Print one JSON object (`init_ms`, `rss_mib`, `per_message`, ...) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Leave the bench's users (`bench-RUNID-*`) in the database, to inspect them.
    #[arg(long)]
    pub keep: bool,
}

/// One row of the per-message table.
#[derive(Debug, serde::Serialize)]
struct Row {
    notes: usize,
    p50_ms: f64,
    p95_ms: f64,
    mean_ms: f64,
    embed_mean_ms: f64,
    db_mean_ms: f64,
}

/// One row of the batch table.
#[derive(Debug, serde::Serialize)]
struct BatchRow {
    label: &'static str,
    users: usize,
    batches: usize,
    messages_per_s: f64,
    mean_batch_ms: f64,
}

/// Runs the benchmark and prints markdown tables (or, with `--json`, one JSON object).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = Env::process();
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    // Cold init through the function's own composition root.
    // Its EMF lines go to stderr: stdout holds the tables (or the --json object).
    let metrics = shared::metrics::MetricsEmitter::from_env(
        &env,
        memory_consumer::consumer::METRICS_SERVICE,
    )?
    .with_sink(shared::metrics::MetricsSink::Stderr);
    let consumer = Consumer::from_env(&env).await?.with_metrics(metrics);
    let rss_after_init = rss_mib("VmRSS");
    let init = consumer.init_timings();
    let db = consumer.db().clone();

    shared::db::migrate(&db)
        .await
        .context("migrating the bench database")?;
    let policy = DedupPolicy::from(&DedupConfig::from_env(&env)?);
    let service = consumer.service().clone();

    let result = measure(&args, &db, &service, &consumer, run_id).await;
    let cleanup = if args.keep {
        eprintln!("bench consumer: kept users bench-{run_id}-*");
        Ok(())
    } else {
        cleanup(&db, run_id).await
    };
    let (rows, batch_rows, seeding) = result?;
    cleanup?;
    let peak = rss_mib("VmHWM");

    if args.json {
        let object = serde_json::json!({
            "init_ms": ms(init.total),
            "init": {
                "config_ms": ms(init.config),
                "db_ms": ms(init.db),
                "embedder_ms": ms(init.embedder),
            },
            "rss_mib": rss_after_init,
            "peak_rss_mib": peak,
            "per_message": rows,
            "batches": batch_rows,
            "seeding": seeding,
            "cores": cores,
            "pool": consumer.concurrency(),
            "dedup_threshold": policy.threshold,
        });
        println!("{object}");
        return Ok(ExitCode::SUCCESS);
    }

    println!("## hikmah bench consumer\n");
    println!(
        "Machine: {cores} cores; PostgreSQL at {}; pool {} = records in flight; DEDUP_THRESHOLD {}.\n",
        db.target(),
        consumer.concurrency(),
        policy.threshold
    );
    println!("### Cold init\n");
    println!("| config (ms) | pool + warm connection (ms) | embedder load (ms) | total (ms) | RSS after init (MiB) |");
    println!("|--:|--:|--:|--:|--:|");
    println!(
        "| {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
        ms(init.config),
        ms(init.db),
        ms(init.embedder),
        ms(init.total),
        rss_after_init
    );
    println!("### Per message (parse → commit), one user, sequential\n");
    println!(
        "| existing notes | p50 (ms) | p95 (ms) | mean (ms) | embed mean (ms) | db mean (ms) |"
    );
    println!("|--:|--:|--:|--:|--:|--:|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.notes, r.p50_ms, r.p95_ms, r.mean_ms, r.embed_mean_ms, r.db_mean_ms
        );
    }
    println!("\n### Batches of 10 through the handler\n");
    println!("| batch | users with 100 notes each | batches | messages/s | mean batch (ms) |");
    println!("|---|--:|--:|--:|--:|");
    for b in &batch_rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} |",
            b.label, b.users, b.batches, b.messages_per_s, b.mean_batch_ms
        );
    }
    println!(
        "\nSeeding: {} realistic notes imported in {:.1} s ({:.0} notes/s, {} lines read). Peak RSS of \
         the whole run (VmHWM): {peak:.0} MiB. Messages carry a saying and a question (2 candidate \
         notes) from the same generator, so some repeat what the user has.",
        seeding.notes, seeding.seconds, seeding.notes_per_s, seeding.lines
    );
    Ok(ExitCode::SUCCESS)
}

/// How the largest user's notes were made.
#[derive(Debug, Default, serde::Serialize)]
struct Seeding {
    notes: usize,
    lines: usize,
    seconds: f64,
    notes_per_s: f64,
}

async fn measure(
    args: &Args,
    db: &Db,
    service: &MemoryService,
    consumer: &Consumer,
    run_id: &str,
) -> anyhow::Result<(Vec<Row>, Vec<BatchRow>, Seeding)> {
    let largest = args.notes.iter().copied().max().unwrap_or(0).max(100);
    let source = UserId::parse(&format!("bench-{run_id}-seed"))?;
    let seeding = seed(db, &source, largest).await?;
    // The peak reported is the consumer's under load (and its init), not the copies' below.

    let mut rows = Vec::new();
    let mut counter = 0usize;
    for &n in &args.notes {
        let user = UserId::parse(&format!("bench-{run_id}-n{n}"))?;
        copy_notes(db, &source, &user, n).await?;
        let (mut total, mut embed, mut dbt) = (Vec::new(), Duration::ZERO, Duration::ZERO);
        // One warm-up message, not measured.
        for i in 0..=args.messages.max(1) {
            counter += 1;
            let body = message(&user, counter).to_body();
            let t = Instant::now();
            let event = ElaborationCompleted::parse(&body)?;
            let outcome = service.apply(&event).await?;
            if i > 0 {
                total.push(t.elapsed());
                embed += outcome.embed_time;
                dbt += outcome.db_time;
            }
        }
        total.sort();
        let count = total.len() as u32;
        rows.push(Row {
            notes: n,
            p50_ms: ms(total[total.len() / 2]),
            p95_ms: ms(total[(total.len() * 95 / 100).min(total.len() - 1)]),
            mean_ms: ms(total.iter().sum::<Duration>() / count),
            embed_mean_ms: ms(embed / count),
            db_mean_ms: ms(dbt / count),
        });
        eprintln!("bench consumer: {n} notes measured");
    }

    let mut batch_rows = Vec::new();
    for (label, users) in [
        ("10 users, 1 message each", 10usize),
        ("1 user, 10 messages", 1),
    ] {
        let names = (0..users)
            .map(|u| UserId::parse(&format!("bench-{run_id}-b{users}-{u}")))
            .collect::<Result<Vec<_>, _>>()?;
        for name in &names {
            copy_notes(db, &source, name, 100).await?;
        }
        let mut elapsed = Duration::ZERO;
        for b in 0..=args.batches.max(1) {
            let event = memory_consumer::sqs::event((0..10).map(|i| {
                counter += 1;
                let received = memory_consumer::sqs::Received {
                    message_id: format!("m-{counter}"),
                    body: message(&names[i % users], counter).to_body(),
                    ..Default::default()
                };
                memory_consumer::sqs::record(
                    received,
                    "arn:aws:sqs:local:000000000000:bench",
                    "local",
                )
            }));
            let t = Instant::now();
            let report = handle_batch(consumer, event).await;
            anyhow::ensure!(
                report.all_applied(),
                "records failed during the bench: {:?}",
                report.failures().collect::<Vec<_>>()
            );
            if b > 0 {
                elapsed += t.elapsed();
            }
        }
        let batches = args.batches.max(1);
        batch_rows.push(BatchRow {
            label,
            users,
            batches,
            messages_per_s: (batches * 10) as f64 / elapsed.as_secs_f64(),
            mean_batch_ms: ms(elapsed / batches as u32),
        });
    }
    Ok((rows, batch_rows, seeding))
}

/// Stream of the seeded notes (the messages use [`MESSAGE_SEED`]).
const NOTES_SEED: u64 = 0x6e6f_7465;
/// Stream of the bench messages' texts.
const MESSAGE_SEED: u64 = 0x6d73_6773;

/// Import rounds the seeding may take (each imports as many lines as notes are missing).
const MAX_SEED_ROUNDS: u64 = 40;

/// A message with a realistic saying and question (2 candidate notes).
fn message(user: &UserId, i: usize) -> ElaborationCompleted {
    let (hikmah, question) = message_texts(MESSAGE_SEED, i);
    ElaborationCompleted::new(
        user.clone(),
        hikmah,
        Some(question),
        "elaboration text".into(),
        "bench".into(),
    )
}

/// Gives `user` exactly `n` realistic notes through `hikmah memory import` (this binary, in a
/// child process, so the seeding's memory is not counted as the consumer's), in rounds: each
/// round imports as many new lines as notes are missing (duplicates are merged, as an import does).
async fn seed(db: &Db, user: &UserId, n: usize) -> anyhow::Result<Seeding> {
    let started = Instant::now();
    let (mut have, mut lines, mut round) = (0usize, 0usize, 0u64);
    let exe = std::env::current_exe().context("locating the hikmah binary for the import")?;
    while have < n {
        // The generator's sentences run out of new meanings long before this; a bug, not a wait.
        anyhow::ensure!(
            round < MAX_SEED_ROUNDS,
            "seeding stopped at {have} of {n} notes after {round} rounds: the generated notes are \
             mostly duplicates of each other"
        );
        let notes = realistic_notes(NOTES_SEED + round, n - have);
        lines += notes.len();
        let mut input = String::new();
        for note in &notes {
            input.push_str(&serde_json::json!({ "content": note }).to_string());
            input.push('\n');
        }
        let (exe, user_arg) = (exe.clone(), user.as_str().to_owned());
        let status =
            tokio::task::spawn_blocking(move || -> std::io::Result<std::process::ExitStatus> {
                use std::io::Write;
                let mut child = std::process::Command::new(exe)
                    .args(["memory", "import", "--user", &user_arg])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .spawn()?;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(input.as_bytes())?;
                }
                child.wait()
            })
            .await
            .context("the import task panicked")?
            .context("running hikmah memory import")?;
        anyhow::ensure!(status.success(), "hikmah memory import failed: {status}");
        have = note_count(db, user).await?;
        round += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Seeding {
        notes: have,
        lines,
        seconds,
        notes_per_s: lines as f64 / seconds.max(1e-9),
    })
}

async fn note_count(db: &Db, user: &UserId) -> anyhow::Result<usize> {
    let client = db.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM memory_notes WHERE user_id = $1",
            &[&user.as_str()],
        )
        .await?;
    Ok(usize::try_from(row.get::<_, i64>(0))?)
}

/// Copies the first `n` notes of `from` (their texts and real embeddings) to `to`.
async fn copy_notes(db: &Db, from: &UserId, to: &UserId, n: usize) -> anyhow::Result<()> {
    let client = db.get().await?;
    client
        .execute(
            "INSERT INTO memory_notes (user_id, content, content_hash, embedding) \
             SELECT $2, content, content_hash, embedding FROM memory_notes \
             WHERE user_id = $1 ORDER BY id LIMIT $3",
            &[&from.as_str(), &to.as_str(), &i64::try_from(n)?],
        )
        .await?;
    client.execute("ANALYZE memory_notes", &[]).await?;
    Ok(())
}

async fn cleanup(db: &Db, run_id: &str) -> anyhow::Result<()> {
    let client = db.get().await?;
    let pattern = format!("bench-{run_id}-%");
    client
        .execute(
            "DELETE FROM memory_notes WHERE user_id LIKE $1",
            &[&pattern],
        )
        .await?;
    client
        .execute(
            "DELETE FROM processed_events WHERE user_id LIKE $1",
            &[&pattern],
        )
        .await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A `/proc/self/status` memory line (`VmRSS`, `VmHWM`) in MiB; 0 where unavailable.
fn rss_mib(field: &str) -> f64 {
    crate::bench::status_kib(field).map_or(0.0, |kib| kib as f64 / 1024.0)
}
