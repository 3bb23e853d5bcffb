//! The queue message contract: one `ElaborationCompleted` per completed elaboration.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::types::{EventId, UserId};

/// The schema version this code writes and understands.
pub const CURRENT_VERSION: u32 = 1;

/// A completed elaboration, published by `elaborate` and consumed by `memory-consumer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElaborationCompleted {
    /// Schema version; anything but [`CURRENT_VERSION`] is rejected.
    pub version: u32,
    /// Idempotency key.
    pub event_id: EventId,
    /// Whose memory this feeds.
    pub user_id: UserId,
    /// The wisdom text that was elaborated.
    pub hikmah: String,
    /// The user's optional question.
    #[serde(default)]
    pub question: Option<String>,
    /// The generated elaboration.
    pub elaboration: String,
    /// The model that generated it.
    pub model: String,
    /// When the elaboration completed.
    pub created_at: DateTime<Utc>,
}

/// Why a queue message body is not a usable event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The body is not JSON of the expected shape.
    #[error("malformed message body: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The body's `version` is not one this consumer understands.
    #[error("unsupported message version {found} (this consumer understands {CURRENT_VERSION})")]
    UnknownVersion {
        /// The version found in the body.
        found: serde_json::Value,
    },
}

impl ElaborationCompleted {
    /// Builds a current-version event with a new UUID v7 id.
    pub fn new(
        user_id: UserId,
        hikmah: String,
        question: Option<String>,
        elaboration: String,
        model: String,
    ) -> Self {
        Self {
            version: CURRENT_VERSION,
            event_id: EventId::new_v7(),
            user_id,
            hikmah,
            question,
            elaboration,
            model,
            created_at: Utc::now(),
        }
    }

    /// Parses a message body: the version is checked first, unknown fields are ignored.
    pub fn parse(body: &str) -> Result<Self, EventError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: serde_json::Value,
        }
        let v: Versioned = serde_json::from_str(body).map_err(EventError::Malformed)?;
        if v.version.as_u64() != Some(u64::from(CURRENT_VERSION)) {
            return Err(EventError::UnknownVersion { found: v.version });
        }
        serde_json::from_str(body).map_err(EventError::Malformed)
    }

    /// The message body.
    pub fn to_body(&self) -> String {
        // Serialising plain strings, numbers and a timestamp into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Result<ElaborationCompleted, Box<dyn std::error::Error>> {
        Ok(ElaborationCompleted::new(
            UserId::parse("u-1")?,
            "Patience is the key to relief.".into(),
            None,
            "text".into(),
            "m".into(),
        ))
    }

    #[test]
    fn round_trips_and_ignores_unknown_fields() -> Result<(), Box<dyn std::error::Error>> {
        let e = sample()?;
        let mut v: serde_json::Value = serde_json::from_str(&e.to_body())?;
        v["extra"] = serde_json::json!(1);
        assert_eq!(ElaborationCompleted::parse(&v.to_string())?, e);
        Ok(())
    }

    #[test]
    fn unknown_version_is_rejected() -> Result<(), Box<dyn std::error::Error>> {
        let mut v: serde_json::Value = serde_json::from_str(&sample()?.to_body())?;
        v["version"] = serde_json::json!(2);
        assert!(matches!(
            ElaborationCompleted::parse(&v.to_string()),
            Err(EventError::UnknownVersion { .. })
        ));
        Ok(())
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        for body in [
            "",
            "{",
            "[]",
            r#"{"version":1}"#,
            r#"{"version":1,"event_id":"x"}"#,
        ] {
            assert!(
                matches!(
                    ElaborationCompleted::parse(body),
                    Err(EventError::Malformed(_))
                ),
                "{body}"
            );
        }
    }
}
