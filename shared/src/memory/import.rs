//! Memory import: notes brought from the old service as JSON lines (`{"content": "..."}`),
//! checked whole before anything is written, so a bad line changes nothing.

use std::io::BufRead;

use serde::Deserialize;

use crate::memory::normalize::{collapse_whitespace, normalize};

/// Longest imported note, in characters (the consumer's own notes are at most 300; the old
/// service's may be longer, and the embedder reads at most 256 tokens of any of them).
pub const MAX_IMPORT_CHARS: usize = 2000;

/// Notes embedded per embedder call during an import (one progress step each).
pub const IMPORT_BATCH: usize = 64;

/// Why an import input was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A line is not a JSON object with a usable `content` string.
    #[error("line {line}: {message}; nothing was imported")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The input could not be read.
    #[error("reading the notes failed after line {line}: {source}; nothing was imported")]
    Read {
        /// Last line read.
        line: usize,
        /// The I/O error.
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
struct Line {
    content: serde_json::Value,
}

/// Parses every line (blank lines are skipped; fields other than `content` are ignored, so
/// `hikmah memory export` output imports as is) into note texts with whitespace collapsed.
pub fn parse_lines(input: impl BufRead) -> Result<Vec<String>, ImportError> {
    let mut notes = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|source| ImportError::Read {
            line: index,
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ImportError::Line {
            line: number,
            message,
        };
        let parsed: Line = serde_json::from_str(&line).map_err(|e| {
            bad(format!(
                "expected a JSON object like {{\"content\": \"...\"}} ({e})"
            ))
        })?;
        let serde_json::Value::String(content) = parsed.content else {
            return Err(bad("\"content\" must be a string".into()));
        };
        let content = collapse_whitespace(&content);
        if normalize(&content).is_empty() {
            return Err(bad("\"content\" is blank".into()));
        }
        let chars = content.chars().count();
        if chars > MAX_IMPORT_CHARS {
            return Err(bad(format!(
                "\"content\" has {chars} characters, more than {MAX_IMPORT_CHARS}"
            )));
        }
        notes.push(content);
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(err: ImportError) -> usize {
        match err {
            ImportError::Line { line, .. } | ImportError::Read { line, .. } => line,
        }
    }

    #[test]
    fn contents_are_read_in_order_with_whitespace_collapsed_and_blank_lines_skipped(
    ) -> Result<(), ImportError> {
        let input = "{\"content\": \"Patience is  the key\\nto relief.\"}\n\n{\"content\": \"Charity\", \"times_seen\": 3}\n";
        assert_eq!(
            parse_lines(input.as_bytes())?,
            ["Patience is the key to relief.", "Charity"]
        );
        Ok(())
    }

    #[test]
    fn a_bad_line_is_an_error_naming_its_number() {
        let ok = "{\"content\": \"fine\"}\n";
        for (bad, why) in [
            ("not json", "expected a JSON object"),
            ("{\"text\": \"no content\"}", "expected a JSON object"),
            ("{\"content\": 5}", "must be a string"),
            ("{\"content\": \"  . \"}", "blank"),
        ] {
            let input = format!("{ok}{ok}\n{bad}\n{ok}");
            let err = parse_lines(input.as_bytes()).err();
            let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
            assert!(text.contains(why), "{bad}: {text}");
            assert!(text.contains("nothing was imported"), "{text}");
            assert_eq!(err.map(line_of), Some(4), "{bad}");
        }
    }

    #[test]
    fn an_over_long_note_is_refused() {
        let input = format!("{{\"content\": \"{}\"}}", "a".repeat(MAX_IMPORT_CHARS + 1));
        assert!(parse_lines(input.as_bytes()).is_err());
    }
}
