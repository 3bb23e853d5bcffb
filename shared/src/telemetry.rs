//! Structured logging: JSON lines for Lambda and machines, readable text for people at a terminal.
//!
//! In Lambda, [`init_lambda`] honours the function's logging controls as the runtime's own
//! subscriber does: `AWS_LAMBDA_LOG_LEVEL` (then `RUST_LOG`) sets the level and
//! `AWS_LAMBDA_LOG_FORMAT` the format (`JSON` or `Text`; JSON when unset). JSON lines carry the
//! list of open spans, so every line of an invocation names the runtime's `requestId` (span
//! "Lambda runtime invoke") and every line about an SQS record its `message_id`, `event_id` and
//! `user_id` (span "record").

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::Env;

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (CloudWatch, log pipelines).
    Json,
    /// Human-readable, for the CLI and Lambda's `Text` log format.
    Text,
}

/// What a Lambda function logs and how, read from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The format of each line.
    pub format: LogFormat,
    /// An `EnvFilter` directive (a level, or `RUST_LOG`'s syntax).
    pub filter: String,
}

impl LogSettings {
    /// The settings Lambda's advanced logging controls ask for: `AWS_LAMBDA_LOG_LEVEL` wins over
    /// `RUST_LOG`, `info` otherwise; `AWS_LAMBDA_LOG_FORMAT=Text` gives text, anything else JSON.
    pub fn lambda(env: &Env) -> Self {
        let filter = match env.get("AWS_LAMBDA_LOG_LEVEL") {
            // Lambda's levels are tracing's, plus FATAL (tracing has nothing above ERROR).
            Some(level) if level.eq_ignore_ascii_case("fatal") => "error".to_owned(),
            Some(level) => level.to_ascii_lowercase(),
            None => env.get("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
        };
        let format = match env.get("AWS_LAMBDA_LOG_FORMAT") {
            Some(f) if f.eq_ignore_ascii_case("text") => LogFormat::Text,
            _ => LogFormat::Json,
        };
        Self { format, filter }
    }
}

/// Installs the subscriber of a Lambda function (see [`LogSettings::lambda`]).
pub fn init_lambda() {
    install(&LogSettings::lambda(&Env::process()), false);
}

/// Installs the CLI's subscriber once; `RUST_LOG` overrides the `info` default. Logs go to
/// stderr so a command's standard output stays clean for scripts.
pub fn init(format: LogFormat) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    install(&LogSettings { format, filter }, ansi);
}

fn install(settings: &LogSettings, ansi: bool) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests, embedding) is harmless: keep the first subscriber.
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_ansi(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).with_ansi(ansi).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> LogSettings {
        LogSettings::lambda(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn lambda_log_level_wins_over_rust_log_and_fatal_is_error() {
        assert_eq!(settings(&[]).filter, "info");
        assert_eq!(settings(&[("RUST_LOG", "debug")]).filter, "debug");
        assert_eq!(
            settings(&[("RUST_LOG", "debug"), ("AWS_LAMBDA_LOG_LEVEL", "WARN")]).filter,
            "warn"
        );
        assert_eq!(
            settings(&[("AWS_LAMBDA_LOG_LEVEL", "FATAL")]).filter,
            "error"
        );
    }

    #[test]
    fn lambda_log_format_text_gives_text_and_anything_else_json() {
        assert_eq!(settings(&[]).format, LogFormat::Json);
        assert_eq!(
            settings(&[("AWS_LAMBDA_LOG_FORMAT", "JSON")]).format,
            LogFormat::Json
        );
        assert_eq!(
            settings(&[("AWS_LAMBDA_LOG_FORMAT", "Text")]).format,
            LogFormat::Text
        );
    }
}
