//! `hikmah bench consumer`: what one SQS message costs the memory consumer, as a function of the
//! user's memory size, and what a batch of 10 sustains. Runs the real handler in this process
//! against the database at `DATABASE_URL` (migrated first; the bench's own users are deleted at
//! the end) with the real embedder.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use memory_consumer::{handle_batch, Consumer};
use shared::config::{DedupConfig, Env};
use shared::db::Db;
use shared::events::ElaborationCompleted;
use shared::memory::dedup::DedupPolicy;
use shared::memory::normalize::content_hash;
use shared::memory::service::MemoryService;
use shared::types::{UserId, EMBEDDING_DIM};

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
}

/// Runs the benchmark and prints markdown tables.
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
    let (config_time, pool_time, embedder_time, init_time) =
        (init.config, init.db, init.embedder, init.total);
    let db = consumer.db().clone();

    shared::db::migrate(&db)
        .await
        .context("migrating the bench database")?;
    let policy = DedupPolicy::from(&DedupConfig::from_env(&env)?);
    let service = consumer.service().clone();

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
        ms(config_time),
        ms(pool_time),
        ms(embedder_time),
        ms(init_time),
        rss_after_init
    );

    let result = measure(&args, &db, &service, &consumer, run_id).await;
    let cleanup = cleanup(&db, run_id).await;
    result?;
    cleanup?;
    println!(
        "Peak RSS of the whole run (VmHWM): {:.0} MiB. Messages carry a hikmah and a question (2 \
         candidate notes), each new to the user; existing notes are random unit vectors.",
        rss_mib("VmHWM")
    );
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    args: &Args,
    db: &Db,
    service: &MemoryService,
    consumer: &Consumer,
    run_id: &str,
) -> anyhow::Result<()> {
    println!("### Per message (parse → commit), one user, sequential\n");
    println!(
        "| existing notes | p50 (ms) | p95 (ms) | mean (ms) | embed mean (ms) | db mean (ms) |"
    );
    println!("|--:|--:|--:|--:|--:|--:|");
    let mut counter = 0usize;
    for &n in &args.notes {
        let user = UserId::parse(&format!("bench-{run_id}-n{n}"))?;
        seed(db, &user, n).await?;
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
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            ms(total[total.len() / 2]),
            ms(total[(total.len() * 95 / 100).min(total.len() - 1)]),
            ms(total.iter().sum::<Duration>() / count),
            ms(embed / count),
            ms(dbt / count)
        );
    }

    println!("\n### Batches of 10 through the handler\n");
    println!("| batch | users with 100 notes each | batches | messages/s | mean batch (ms) |");
    println!("|---|--:|--:|--:|--:|");
    for (label, users) in [
        ("10 users, 1 message each", 10usize),
        ("1 user, 10 messages", 1),
    ] {
        let names = (0..users)
            .map(|u| UserId::parse(&format!("bench-{run_id}-b{users}-{u}")))
            .collect::<Result<Vec<_>, _>>()?;
        for name in &names {
            seed(db, name, 100).await?;
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
        println!(
            "| {label} | {users} | {batches} | {:.1} | {:.1} |",
            (batches * 10) as f64 / elapsed.as_secs_f64(),
            ms(elapsed / batches as u32)
        );
    }
    println!();
    Ok(())
}

/// A message whose notes are new to the user (distinct wording per `i`).
fn message(user: &UserId, i: usize) -> ElaborationCompleted {
    ElaborationCompleted::new(
        user.clone(),
        format!("Reflection {i}: whoever is patient through trial number {i} finds the relief that follows it."),
        Some(format!("What does lesson {i} teach about gratitude in hardship?")),
        "elaboration text".into(),
        "bench".into(),
    )
}

/// Gives `user` `n` notes with random unit embeddings (never duplicates of the bench messages).
async fn seed(db: &Db, user: &UserId, n: usize) -> anyhow::Result<()> {
    let mut client = db.get().await?;
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare("INSERT INTO memory_notes (user_id, content, content_hash, embedding) VALUES ($1, $2, $3, $4)")
        .await?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (n as u64);
    for i in 0..n {
        let content = format!("seeded note {i} of {user}");
        let mut v: Vec<f32> = (0..EMBEDDING_DIM)
            .map(|_| next_gaussianish(&mut state))
            .collect();
        let norm = v
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        v.iter_mut().for_each(|x| *x /= norm);
        tx.execute(
            &stmt,
            &[&user.as_str(), &content, &content_hash(&content), &v],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A cheap pseudo-random value in about [-1, 1] (xorshift; sum of two uniforms).
fn next_gaussianish(state: &mut u64) -> f32 {
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    next() + next()
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
