//! `hikmah bench elaborate`: what the elaborate handler adds to a stream, and how many streams
//! it sustains. Everything runs in this process on 127.0.0.1: the real `elaborate::router`
//! served over HTTP/1.1, a real HTTP client reading the event stream, and either a minimal
//! OpenAI-compatible SSE server (latency) or the offline provider (concurrency). Publishing goes
//! to an in-memory counter so the numbers are the handler's, not the queue's.

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use futures::future::BoxFuture;
use futures::StreamExt;
use shared::config::ElaborateConfig;
use shared::elaboration::{Elaborator, NoNotes};
use shared::events::ElaborationCompleted;
use shared::llm::sse::{SseItem, SseParser};
use shared::llm::{LlmProvider, OfflineProvider, OpenAiProvider};
use shared::metrics::{MetricsConfig, MetricsEmitter, MetricsSink};
use shared::publish::{PublishError, Publisher};

/// Options of `hikmah bench elaborate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sequential requests measured for the added first-delta latency.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Concurrency levels tried with the offline provider (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,250,500")]
    pub streams: Vec<usize>,
}

/// Runs both measurements and prints markdown tables.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("## hikmah bench elaborate\n");
    println!(
        "Machine: {} ({cores} cores); in-process client, handler and provider on 127.0.0.1.\n",
        cpu_model()
    );
    let rss_idle = rss_kib("VmRSS");

    let latency = added_latency(args.requests.max(1)).await?;
    println!("### Added latency: provider's first byte to the client's first `delta`\n");
    println!("| requests | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|--:|--:|--:|--:|");
    println!(
        "| {} | {:.2} | {:.2} | {:.2} |\n",
        latency.len(),
        percentile(&latency, 0.50),
        percentile(&latency, 0.99),
        latency.last().copied().unwrap_or_default()
    );

    println!("### Concurrent streams, offline provider (15 ms between chunks)\n");
    println!(
        "| streams | completed with `done` | errors | wall (s) | peak RSS during level (MiB) |"
    );
    println!("|--:|--:|--:|--:|--:|");
    let mut failed = false;
    for &n in &args.streams {
        let level = concurrent_streams(n.max(1)).await?;
        failed |= level.errors > 0;
        println!(
            "| {n} | {} | {} | {:.2} | {:.1} |",
            level.done,
            level.errors,
            level.wall.as_secs_f64(),
            level.peak_rss_kib as f64 / 1024.0
        );
    }
    println!(
        "\nRSS of this process (client + server + provider) before the runs: {:.1} MiB; peak overall: {:.1} MiB.",
        rss_idle as f64 / 1024.0,
        rss_kib("VmHWM") as f64 / 1024.0
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Counts published events instead of sending them anywhere.
#[derive(Default)]
struct CountingPublisher(AtomicUsize);

impl Publisher for CountingPublisher {
    fn publish<'a>(
        &'a self,
        _event: &'a ElaborationCompleted,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

/// Serves the real elaborate router with `provider` on a free port; returns its base URL.
async fn serve_elaborate(provider: Arc<dyn LlmProvider>) -> anyhow::Result<String> {
    let elaborator = Elaborator::new(
        provider,
        Arc::new(NoNotes),
        Arc::new(CountingPublisher::default()),
        0,
    );
    let config = ElaborateConfig {
        memory_context_notes: 0,
        trust_body_user_id: true,
        keepalive: Duration::from_secs(15),
    };
    // Each request still writes its EMF line (as in Lambda), to stderr: stdout holds the tables.
    let state = elaborate::AppState::new(elaborator, config).with_metrics(MetricsEmitter::new(
        MetricsConfig::new(elaborate::METRICS_SERVICE),
        MetricsSink::Stderr,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the benchmark server")?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(elaborate::serve_http(listener, state));
    Ok(base)
}

/// A minimal OpenAI-compatible streaming server that notes when it sends its first delta.
async fn serve_fake_provider(first_sent: Arc<Mutex<Option<Instant>>>) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let first_sent = first_sent.clone();
            async move {
                let chunks = futures::stream::iter(0..4).then(move |i| {
                    let first_sent = first_sent.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let data = if i < 3 {
                            if i == 0 {
                                if let Ok(mut slot) = first_sent.lock() {
                                    *slot = Some(Instant::now());
                                }
                            }
                            format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"word{i} \"}}}}]}}\n\n")
                        } else {
                            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
                                .to_owned()
                        };
                        Ok::<_, Infallible>(Bytes::from(data))
                    }
                });
                ([("content-type", "text/event-stream")], Body::from_stream(chunks))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the fake provider")?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    // Like a real provider's server: small SSE writes go out at once.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(base)
}

fn request_body(user: &str) -> String {
    serde_json::json!({"user_id": user, "hikmah": "Patience is the key to relief.", "question": "How?"}).to_string()
}

/// Milliseconds from the provider sending its first delta to the client parsing it, sorted.
async fn added_latency(requests: usize) -> anyhow::Result<Vec<f64>> {
    let first_sent = Arc::new(Mutex::new(None));
    let provider_url = serve_fake_provider(first_sent.clone()).await?;
    let provider = OpenAiProvider::with_settings(
        &provider_url,
        None,
        "bench",
        Duration::from_secs(2),
        Duration::from_secs(10),
    )?;
    let base = serve_elaborate(Arc::new(provider)).await?;
    let client = reqwest::Client::new();
    let url = format!("{base}{}", elaborate::ROUTE);
    let mut samples = Vec::with_capacity(requests);
    // One warm-up request opens the connections on both sides.
    for i in 0..=requests {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(request_body("bench-latency"))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "request {i}: status {}",
            response.status()
        );
        let mut parser = SseParser::new();
        let mut body = response.bytes_stream();
        let mut first_delta = None;
        let mut done = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            for item in parser.push(&chunk)? {
                if let SseItem::Event(e) = item {
                    match e.event.as_deref() {
                        Some("delta") if first_delta.is_none() => {
                            first_delta = Some(Instant::now())
                        }
                        Some("done") => done = true,
                        Some("error") => anyhow::bail!("request {i}: error event {}", e.data),
                        _ => {}
                    }
                }
            }
        }
        anyhow::ensure!(done, "request {i}: the stream ended without done");
        let sent = first_sent
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .context("the provider sent nothing")?;
        let received = first_delta.context("no delta received")?;
        if i > 0 {
            samples.push(received.saturating_duration_since(sent).as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

struct Level {
    done: usize,
    errors: usize,
    wall: Duration,
    peak_rss_kib: u64,
}

/// `n` simultaneous streams against the offline provider; a stream counts only with `done`.
async fn concurrent_streams(n: usize) -> anyhow::Result<Level> {
    let base = serve_elaborate(Arc::new(OfflineProvider::default())).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()?;
    let url = format!("{base}{}", elaborate::ROUTE);
    let sampling = Arc::new(AtomicUsize::new(1));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) == 1 {
                peak = peak.max(rss_kib("VmRSS"));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let outcomes = futures::future::join_all((0..n).map(|i| {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move { one_stream(&client, &url, &format!("bench-{i}")).await })
    }))
    .await;
    let wall = started.elapsed();
    sampling.store(0, Ordering::Relaxed);
    let peak_rss_kib = sampler.await.unwrap_or(0);
    let done = outcomes.iter().filter(|o| matches!(o, Ok(Ok(())))).count();
    if let Some(Ok(Err(e))) = outcomes.iter().find(|o| !matches!(o, Ok(Ok(())))) {
        eprintln!("first failure at {n} streams: {e:#}");
    }
    Ok(Level {
        done,
        errors: n - done,
        wall,
        peak_rss_kib,
    })
}

async fn one_stream(client: &reqwest::Client, url: &str, user: &str) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(request_body(user))
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    let mut parser = SseParser::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        for item in parser.push(&chunk?)? {
            if let SseItem::Event(e) = item {
                match e.event.as_deref() {
                    Some("done") => return Ok(()),
                    Some("error") => anyhow::bail!("error event: {}", e.data),
                    _ => {}
                }
            }
        }
    }
    anyhow::bail!("the stream ended without done")
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A `/proc/self/status` memory line (`VmRSS`, `VmHWM`) in KiB; 0 where unavailable.
fn rss_kib(field: &str) -> u64 {
    crate::bench::status_kib(field).unwrap_or(0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
