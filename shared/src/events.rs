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

    /// The message body: JSON made only of characters SQS accepts in a message (see
    /// [`sqs_allows`]). serde_json already escapes the control characters; the two Unicode
    /// noncharacters U+FFFE and U+FFFF, which it writes as they are and SQS rejects, are written
    /// as the JSON escapes `\ufffe` / `\uffff`, so the text reads back unchanged.
    pub fn to_body(&self) -> String {
        // Serialising plain strings, numbers and a timestamp into a String cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        if json.chars().all(sqs_allows) {
            return json;
        }
        // Outside strings serde_json writes only ASCII, so every such character is in a string,
        // where a \u escape means the same character.
        let mut escaped = String::with_capacity(json.len() + 12);
        for c in json.chars() {
            if sqs_allows(c) {
                escaped.push(c);
            } else {
                escaped.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
        }
        escaped
    }
}

/// Whether SQS accepts `c` in a message body: `#x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD |
/// #x10000-#x10FFFF` (SendMessage's documented character set; surrogates cannot occur in a Rust
/// string). moto does not enforce it.
pub fn sqs_allows(c: char) -> bool {
    matches!(u32::from(c), 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
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
    fn the_body_holds_only_characters_sqs_allows_and_reads_back_unchanged(
    ) -> Result<(), Box<dyn std::error::Error>> {
        // Every character class at the edges of SQS's set, in every text field.
        let awkward: String = [
            '\u{0}',
            '\u{8}',
            '\t',
            '\n',
            '\r',
            '\u{1f}',
            ' ',
            '"',
            '\\',
            '\u{7f}',
            '\u{d7ff}',
            '\u{e000}',
            '\u{fffd}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{10000}',
            '\u{10ffff}',
        ]
        .iter()
        .collect();
        let mut e = sample()?;
        e.hikmah = format!("Patience {awkward} relief");
        e.question = Some(awkward.clone());
        e.elaboration = awkward.repeat(3);
        let body = e.to_body();
        let bad: Vec<String> = body
            .chars()
            .filter(|c| !sqs_allows(*c))
            .map(|c| format!("U+{:04X}", u32::from(c)))
            .collect();
        assert!(bad.is_empty(), "characters SQS rejects: {bad:?}");
        assert_eq!(ElaborationCompleted::parse(&body)?, e);
        Ok(())
    }

    #[test]
    fn sqs_allows_exactly_its_documented_set() {
        for c in [
            '\t',
            '\n',
            '\r',
            ' ',
            '\u{d7ff}',
            '\u{e000}',
            '\u{fffd}',
            '\u{10000}',
        ] {
            assert!(sqs_allows(c), "U+{:04X}", u32::from(c));
        }
        for c in ['\u{0}', '\u{8}', '\u{b}', '\u{1f}', '\u{fffe}', '\u{ffff}'] {
            assert!(!sqs_allows(c), "U+{:04X}", u32::from(c));
        }
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
