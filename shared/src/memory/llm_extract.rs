//! LLM note extraction (`NOTE_EXTRACTOR=llm`): short notes about the user, from the configured
//! provider, in the consumer (the elaborate function's latency does not change).
//!
//! The provider gets the hikmah, the question and the completed elaboration, and must answer with
//! JSON only, at most [`MAX_NOTES`] notes:
//!
//! ```json
//! {"notes": [{"kind": "interest", "text": "patience in hardship"},
//!            {"kind": "situation", "text": "waiting for news about a job"},
//!            {"kind": "asked", "text": "how to stay patient"}]}
//! ```
//!
//! The answer is validated against that schema (no other field; `kind` one of `interest`,
//! `situation`, `asked`; `text` 1..=[`MAX_TEXT_CHARS`] characters once control characters are
//! removed and whitespace collapsed; at least one note), and the whole answer is bounded
//! ([`MAX_ANSWER_CHARS`], read no further) and timed ([`LlmExtractor::new`]'s timeout). The model's
//! text is never stored as it came: each note is re-rendered from the validated fields as
//! `Interested in: …`, `Situation: …` or `Asked: …`. On any failure (provider error, timeout,
//! oversized or invalid answer) the caller applies the deterministic extractor instead.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde::Deserialize;

use crate::events::ElaborationCompleted;
use crate::llm::{LlmError, LlmProvider, Prompt};
use crate::memory::extract::MAX_NOTES;
use crate::memory::normalize::{collapse_whitespace, normalize};

/// Longest answer read from the provider, in characters; a longer one is refused.
pub const MAX_ANSWER_CHARS: usize = 2000;
/// Longest `text` of one note, in characters (the rendered note stays under `MAX_NOTE_CHARS`).
pub const MAX_TEXT_CHARS: usize = 200;
/// Longest elaboration put in the prompt, in characters (the rest is cut).
const MAX_ELABORATION_CHARS: usize = 4000;

/// The system message of the extraction prompt.
pub const SYSTEM: &str = "You keep a short memory about a user of a wisdom (hikmah) app. From the \
saying the user read, their optional question and the elaboration they were given, write at most 3 \
short notes about the USER (not about the saying in general): what they are interested in, their \
situation when they reveal it, and what they asked. Answer with JSON only, no prose and no code \
fence, exactly: {\"notes\": [{\"kind\": \"interest\" | \"situation\" | \"asked\", \"text\": \
\"under 200 characters\"}]}. Leave out a kind you know nothing about; never invent a situation.";

/// Why an LLM extraction was not used (the deterministic extractor applies instead).
#[derive(Debug, thiserror::Error)]
pub enum ExtractFailure {
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] LlmError),
    /// The provider did not answer in time.
    #[error("the provider did not answer within {0:?} (NOTE_EXTRACTOR_TIMEOUT_MS)")]
    Timeout(Duration),
    /// The answer was longer than [`MAX_ANSWER_CHARS`].
    #[error("the answer exceeds {MAX_ANSWER_CHARS} characters")]
    Oversized,
    /// The answer does not follow the schema.
    #[error("the answer is not valid: {0}")]
    Invalid(String),
}

/// Extracts notes about the user through an [`LlmProvider`] (built once, at init).
#[derive(Clone)]
pub struct LlmExtractor {
    provider: Arc<dyn LlmProvider>,
    timeout: Duration,
}

impl std::fmt::Debug for LlmExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmExtractor")
            .field("provider", &self.provider.name())
            .field("model", &self.provider.model())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl LlmExtractor {
    /// An extractor asking `provider`, giving up after `timeout`.
    pub fn new(provider: Arc<dyn LlmProvider>, timeout: Duration) -> Self {
        Self { provider, timeout }
    }

    /// The provider's name, for logs.
    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// The notes about the user in `event`, rendered from a validated answer.
    pub async fn extract(
        &self,
        event: &ElaborationCompleted,
    ) -> Result<Vec<String>, ExtractFailure> {
        let answer = tokio::time::timeout(self.timeout, self.answer(prompt(event)))
            .await
            .map_err(|_| ExtractFailure::Timeout(self.timeout))??;
        parse_answer(&answer)
    }

    /// The provider's whole answer, refused as soon as it grows past [`MAX_ANSWER_CHARS`].
    async fn answer(&self, prompt: Prompt) -> Result<String, ExtractFailure> {
        let mut deltas = self.provider.stream(prompt);
        let mut text = String::new();
        while let Some(delta) = deltas.next().await {
            text.push_str(&delta?);
            if text.chars().count() > MAX_ANSWER_CHARS {
                return Err(ExtractFailure::Oversized);
            }
        }
        Ok(text)
    }
}

/// The extraction prompt for `event`.
pub fn prompt(event: &ElaborationCompleted) -> Prompt {
    let mut user = format!("Saying: \"{}\"\n", collapse_whitespace(&event.hikmah));
    if let Some(q) = &event.question {
        user.push_str(&format!("Their question: {}\n", collapse_whitespace(q)));
    }
    let elaboration: String = event
        .elaboration
        .chars()
        .take(MAX_ELABORATION_CHARS)
        .collect();
    user.push_str(&format!("Elaboration they were given:\n{elaboration}\n"));
    Prompt {
        system: SYSTEM.to_owned(),
        user,
        hikmah: event.hikmah.clone(),
        question: event.question.clone(),
        notes_used: 0,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    notes: Vec<AnswerNote>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerNote {
    kind: Kind,
    text: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Interest,
    Situation,
    Asked,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Interest => "Interested in",
            Self::Situation => "Situation",
            Self::Asked => "Asked",
        }
    }
}

/// Validates an answer and renders its notes (see the module docs); never returns the answer's
/// text as it came.
pub fn parse_answer(answer: &str) -> Result<Vec<String>, ExtractFailure> {
    if answer.chars().count() > MAX_ANSWER_CHARS {
        return Err(ExtractFailure::Oversized);
    }
    let parsed: Answer = serde_json::from_str(strip_code_fence(answer))
        .map_err(|e| ExtractFailure::Invalid(format!("not the expected JSON: {e}")))?;
    if parsed.notes.len() > MAX_NOTES {
        return Err(ExtractFailure::Invalid(format!(
            "{} notes; at most {MAX_NOTES} are accepted",
            parsed.notes.len()
        )));
    }
    let mut seen: Vec<String> = Vec::new();
    let mut notes = Vec::with_capacity(parsed.notes.len());
    for note in parsed.notes {
        let text = collapse_whitespace(&note.text);
        let chars = text.chars().count();
        if chars == 0 || chars > MAX_TEXT_CHARS {
            return Err(ExtractFailure::Invalid(format!(
                "a note's text is {chars} characters; 1 to {MAX_TEXT_CHARS} are accepted"
            )));
        }
        let rendered = format!("{}: {text}", note.kind.label());
        let key = normalize(&rendered);
        if !seen.contains(&key) {
            seen.push(key);
            notes.push(rendered);
        }
    }
    if notes.is_empty() {
        return Err(ExtractFailure::Invalid("no notes".into()));
    }
    Ok(notes)
}

/// The answer without a surrounding Markdown code fence (models add one despite being asked not to).
fn strip_code_fence(answer: &str) -> &str {
    let trimmed = answer.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let body = rest.split_once('\n').map_or("", |(_, body)| body);
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::extract::MAX_NOTE_CHARS;

    #[test]
    fn a_valid_answer_is_rendered_from_its_fields() -> Result<(), ExtractFailure> {
        let notes = parse_answer(
            r#"{"notes": [{"kind": "interest", "text": " patience\nin   hardship "},
                          {"kind": "situation", "text": "waiting for news\u0007 about a job"},
                          {"kind": "asked", "text": "how to stay patient"}]}"#,
        )?;
        assert_eq!(
            notes,
            [
                "Interested in: patience in hardship",
                "Situation: waiting for news about a job",
                "Asked: how to stay patient",
            ]
        );
        Ok(())
    }

    #[test]
    fn a_code_fence_around_the_json_is_tolerated() -> Result<(), ExtractFailure> {
        let notes =
            parse_answer("```json\n{\"notes\": [{\"kind\": \"asked\", \"text\": \"why\"}]}\n```")?;
        assert_eq!(notes, ["Asked: why"]);
        Ok(())
    }

    #[test]
    fn answers_outside_the_schema_are_invalid() {
        for bad in [
            "Sure! Here are the notes: ...",
            "{}",
            r#"{"notes": "x"}"#,
            r#"{"notes": []}"#,
            r#"{"notes": [{"kind": "opinion", "text": "x"}]}"#,
            r#"{"notes": [{"kind": "asked", "text": "   "}]}"#,
            r#"{"notes": [{"kind": "asked", "text": "x", "extra": 1}]}"#,
            r#"{"notes": [{"kind": "asked"}]}"#,
            r#"{"notes": [{"kind": "asked", "text": "x"}], "also": 1}"#,
            r#"{"notes": [{"kind":"asked","text":"a"},{"kind":"asked","text":"b"},
                         {"kind":"asked","text":"c"},{"kind":"asked","text":"d"}]}"#,
        ] {
            assert!(
                matches!(parse_answer(bad), Err(ExtractFailure::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn oversized_answers_and_texts_are_refused() {
        let long_text = format!(
            r#"{{"notes": [{{"kind": "asked", "text": "{}"}}]}}"#,
            "x".repeat(MAX_TEXT_CHARS + 1)
        );
        assert!(matches!(
            parse_answer(&long_text),
            Err(ExtractFailure::Invalid(_))
        ));
        assert!(matches!(
            parse_answer(&" ".repeat(MAX_ANSWER_CHARS + 1)),
            Err(ExtractFailure::Oversized)
        ));
    }

    #[test]
    fn rendered_notes_fit_the_note_limit_and_repeats_are_dropped() -> Result<(), ExtractFailure> {
        let text = "y".repeat(MAX_TEXT_CHARS);
        let answer = format!(
            r#"{{"notes": [{{"kind": "interest", "text": "{text}"}}, {{"kind": "interest", "text": "{text}"}}]}}"#
        );
        let notes = parse_answer(&answer)?;
        assert_eq!(notes.len(), 1);
        assert!(notes[0].chars().count() <= MAX_NOTE_CHARS);
        Ok(())
    }
}
