//! Metrics as CloudWatch Embedded Metric Format (EMF) lines, in the shape AWS Lambda Powertools
//! emits them: one JSON object per line,
//!
//! ```json
//! {"_aws":{"Timestamp":1767225600000,"CloudWatchMetrics":[{"Namespace":"hikmah",
//!   "Dimensions":[["service"]],"Metrics":[{"Name":"NotesAdded","Unit":"Count"}]}]},
//!  "service":"memory-consumer","NotesAdded":2}
//! ```
//!
//! CloudWatch Logs turns such a line into metrics; anywhere else it is just a log line. Each
//! function writes at most one line per invocation ([`Metrics`] collects it, [`MetricsEmitter`]
//! writes it). A metric added several times carries all its values as an array (CloudWatch
//! then computes percentiles over them). The namespace and the `service` dimension come from
//! Powertools' own variables, `POWERTOOLS_METRICS_NAMESPACE` and `POWERTOOLS_SERVICE_NAME`.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::{ConfigError, Env};

/// The namespace when `POWERTOOLS_METRICS_NAMESPACE` is unset.
pub const DEFAULT_NAMESPACE: &str = "hikmah";
/// Most values one metric carries in a line (EMF's limit).
const MAX_VALUES: usize = 100;

/// The unit of a metric (CloudWatch's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count.
    Count,
    /// A duration in milliseconds.
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
        }
    }
}

/// Where metrics go: the namespace and the `service` dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// CloudWatch namespace (`POWERTOOLS_METRICS_NAMESPACE`, default `hikmah`).
    pub namespace: String,
    /// Value of the `service` dimension (`POWERTOOLS_SERVICE_NAME`, default the function's name).
    pub service: String,
}

impl MetricsConfig {
    /// The defaults for a function named `service`.
    pub fn new(service: &str) -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            service: service.to_owned(),
        }
    }

    /// Reads `POWERTOOLS_METRICS_NAMESPACE` and `POWERTOOLS_SERVICE_NAME` (1..=255 characters).
    pub fn from_env(env: &Env, default_service: &str) -> Result<Self, ConfigError> {
        let read = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            let value = env.get(name).unwrap_or_else(|| default.to_owned());
            let value = value.trim().to_owned();
            if value.chars().count() > 255 || value.chars().any(char::is_control) {
                return Err(ConfigError::Invalid {
                    name,
                    value,
                    reason: "expected 1 to 255 printable characters".into(),
                });
            }
            Ok(value)
        };
        Ok(Self {
            namespace: read("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_NAMESPACE)?,
            service: read("POWERTOOLS_SERVICE_NAME", default_service)?,
        })
    }
}

/// The metrics of one invocation, in the order they were first added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    entries: Vec<(String, Unit, Vec<f64>)>,
}

impl Metrics {
    /// No metrics yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value; adding a name again appends to its values (the first unit stays).
    pub fn add(&mut self, name: impl Into<String>, unit: Unit, value: f64) -> &mut Self {
        let name = name.into();
        match self.entries.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, _, values)) if values.len() < MAX_VALUES => values.push(value),
            Some(_) => {}
            None => self.entries.push((name, unit, vec![value])),
        }
        self
    }

    /// Adds a count.
    pub fn count(&mut self, name: impl Into<String>, n: u64) -> &mut Self {
        self.add(name, Unit::Count, n as f64)
    }

    /// Adds a duration, in milliseconds (to the microsecond).
    pub fn millis(&mut self, name: impl Into<String>, d: Duration) -> &mut Self {
        self.add(
            name,
            Unit::Milliseconds,
            (d.as_secs_f64() * 1e6).round() / 1e3,
        )
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The values of `name`, if added.
    pub fn values(&self, name: &str) -> Option<&[f64]> {
        self.entries
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| v.as_slice())
    }

    /// The EMF line (without the newline) for `config` at `timestamp_ms` (Unix epoch).
    pub fn to_line(&self, config: &MetricsConfig, timestamp_ms: i64) -> String {
        let definitions: Vec<Value> = self
            .entries
            .iter()
            .map(|(name, unit, _)| json!({ "Name": name, "Unit": unit.as_str() }))
            .collect();
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": config.namespace,
                    "Dimensions": [["service"]],
                    "Metrics": definitions,
                }],
            }),
        );
        root.insert("service".into(), Value::String(config.service.clone()));
        for (name, _, values) in &self.entries {
            let value = match values.as_slice() {
                [one] => json!(one),
                many => json!(many),
            };
            root.insert(name.clone(), value);
        }
        Value::Object(root).to_string()
    }
}

/// Where EMF lines are written.
#[derive(Debug, Clone)]
pub enum MetricsSink {
    /// Standard output, as Powertools writes them (Lambda sends it to CloudWatch Logs).
    Stdout,
    /// Standard error: beside the log lines of a local process (`hikmah serve`).
    Stderr,
    /// Kept in memory, for tests.
    Memory(Arc<Mutex<Vec<String>>>),
}

/// Writes one invocation's [`Metrics`] as one EMF line (cheap to clone; built once at init).
#[derive(Debug, Clone)]
pub struct MetricsEmitter {
    config: Arc<MetricsConfig>,
    sink: MetricsSink,
}

impl MetricsEmitter {
    /// An emitter for `config` writing to `sink`.
    pub fn new(config: MetricsConfig, sink: MetricsSink) -> Self {
        Self {
            config: Arc::new(config),
            sink,
        }
    }

    /// The Lambda wiring: [`MetricsConfig::from_env`], written to standard output.
    pub fn from_env(env: &Env, default_service: &str) -> Result<Self, ConfigError> {
        Ok(Self::new(
            MetricsConfig::from_env(env, default_service)?,
            MetricsSink::Stdout,
        ))
    }

    /// The same metrics written to `sink` instead.
    pub fn with_sink(mut self, sink: MetricsSink) -> Self {
        self.sink = sink;
        self
    }

    /// The namespace and service.
    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// Writes `metrics` as one line, stamped now; nothing when empty. A failed write is ignored:
    /// metrics never fail the work they measure.
    pub fn emit(&self, metrics: &Metrics) {
        if metrics.is_empty() {
            return;
        }
        let mut line = metrics.to_line(&self.config, chrono::Utc::now().timestamp_millis());
        line.push('\n');
        match &self.sink {
            // One call for the whole line, under stdout's lock, so lines never interleave.
            // `print!` rather than a raw write: the test harness captures it (a raw write would
            // scatter every batch's line through `cargo test`'s output); in Lambda, stdout is
            // the runtime's log pipe, which stays open for the life of the process.
            MetricsSink::Stdout => print!("{line}"),
            MetricsSink::Stderr => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            MetricsSink::Memory(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line.trim_end().to_owned());
                }
            }
        }
    }
}

/// `invalid_field` → `InvalidField`: a snake_case code or reason as part of a metric name.
pub fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_line_has_powertools_shape_with_the_service_dimension() -> TestResult {
        let mut m = Metrics::new();
        m.count("NotesAdded", 2)
            .millis("EmbedMs", Duration::from_micros(12_345))
            .millis("EmbedMs", Duration::from_millis(7));
        let config = MetricsConfig {
            namespace: "ns".into(),
            service: "svc".into(),
        };
        let line = m.to_line(&config, 1_767_225_600_000);
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line)?;
        assert_eq!(
            v,
            json!({
                "_aws": {
                    "Timestamp": 1_767_225_600_000_i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "ns",
                        "Dimensions": [["service"]],
                        "Metrics": [
                            {"Name": "NotesAdded", "Unit": "Count"},
                            {"Name": "EmbedMs", "Unit": "Milliseconds"}
                        ]
                    }]
                },
                "service": "svc",
                "NotesAdded": 2.0,
                "EmbedMs": [12.345, 7.0]
            })
        );
        Ok(())
    }

    #[test]
    fn every_declared_metric_has_a_value_and_every_dimension_a_member() -> TestResult {
        // What CloudWatch requires of an EMF line to extract metrics from it.
        let mut m = Metrics::new();
        m.count("A", 1).count("B", 0).millis("C", Duration::ZERO);
        let v: Value = serde_json::from_str(&m.to_line(&MetricsConfig::new("s"), 0))?;
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        for d in directive["Metrics"].as_array().ok_or("metrics")? {
            let name = d["Name"].as_str().ok_or("name")?;
            assert!(v[name].is_number() || v[name].is_array(), "{name}");
        }
        for set in directive["Dimensions"].as_array().ok_or("dimensions")? {
            for key in set.as_array().ok_or("set")? {
                assert!(v[key.as_str().ok_or("key")?].is_string());
            }
        }
        Ok(())
    }

    #[test]
    fn a_metric_keeps_at_most_100_values() {
        let mut m = Metrics::new();
        for i in 0..150 {
            m.count("N", i);
        }
        assert_eq!(m.values("N").map(<[f64]>::len), Some(MAX_VALUES));
    }

    #[test]
    fn the_emitter_writes_one_line_per_call_and_nothing_for_no_metrics() -> TestResult {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let emitter = MetricsEmitter::new(
            MetricsConfig::new("elaborate"),
            MetricsSink::Memory(lines.clone()),
        );
        emitter.emit(&Metrics::new());
        let mut m = Metrics::new();
        m.count("X", 1);
        emitter.emit(&m);
        let lines = lines.lock().map_err(|_| "poisoned")?;
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0])?;
        assert_eq!(v["service"], "elaborate");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "hikmah");
        Ok(())
    }

    #[test]
    fn namespace_and_service_come_from_powertools_variables() -> TestResult {
        let env = Env::from_pairs([
            ("POWERTOOLS_METRICS_NAMESPACE", "acme"),
            ("POWERTOOLS_SERVICE_NAME", "memory"),
        ]);
        let c = MetricsConfig::from_env(&env, "memory-consumer")?;
        assert_eq!(
            (c.namespace.as_str(), c.service.as_str()),
            ("acme", "memory")
        );
        let d = MetricsConfig::from_env(&Env::from_pairs::<&str, &str>([]), "elaborate")?;
        assert_eq!(d, MetricsConfig::new("elaborate"));
        let bad = Env::from_pairs([("POWERTOOLS_SERVICE_NAME", "x".repeat(300))]);
        let err = MetricsConfig::from_env(&bad, "s").unwrap_err();
        assert!(err.to_string().contains("POWERTOOLS_SERVICE_NAME"));
        Ok(())
    }

    #[test]
    fn codes_become_pascal_case_metric_names() {
        assert_eq!(pascal_case("invalid_field"), "InvalidField");
        assert_eq!(pascal_case("exact_match"), "ExactMatch");
        assert_eq!(pascal_case("forbidden"), "Forbidden");
    }
}
