//! Structured logging: JSON lines for Lambda and machines, readable text for people at a terminal.

use tracing_subscriber::{fmt, EnvFilter};

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (CloudWatch, log pipelines).
    Json,
    /// Human-readable, for the CLI.
    Text,
}

/// Installs the global subscriber once; `RUST_LOG` overrides the `info` default. Logs go to stderr
/// so a command's standard output stays clean for scripts.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests, embedding) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_ansi(false)
            .try_init(),
        LogFormat::Text => builder
            .with_target(false)
            // Colours only for a person at a terminal, not in files or CI logs.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
