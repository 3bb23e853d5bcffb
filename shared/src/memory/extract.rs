//! Note extraction: which short notes an elaboration leaves in the user's memory.

use crate::events::ElaborationCompleted;
use crate::memory::normalize::{collapse_whitespace, normalize};

/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 300;
/// Most notes one event yields.
pub const MAX_NOTES: usize = 3;

/// Turns a completed elaboration into candidate notes (deduplication happens later, in the store).
pub trait NoteExtractor: Send + Sync {
    /// The candidate notes for `event`: at most [`MAX_NOTES`], each at most [`MAX_NOTE_CHARS`].
    fn extract(&self, event: &ElaborationCompleted) -> Vec<String>;
}

/// The deterministic default: notes about what the user engaged with, taken from the event's
/// hikmah and question (never from the generated elaboration, which is long and not the user's).
///
/// Rules:
/// 1. Whitespace is collapsed (runs become one space, ends trimmed, control characters dropped).
/// 2. The hikmah is split into sentences (after `.`, `!`, `?` or `…` followed by a space); the
///    sentences are packed in order into chunks of at most [`MAX_NOTE_CHARS`] characters. A
///    single sentence longer than that is cut at the last word boundary and ends with `…`.
/// 3. Notes, in order: the hikmah's first chunk, then the question (when present; cut like a
///    sentence), then the hikmah's further chunks, until there are [`MAX_NOTES`].
/// 4. Empty notes, and notes equal to an earlier one after normalisation, are dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultExtractor;

impl NoteExtractor for DefaultExtractor {
    fn extract(&self, event: &ElaborationCompleted) -> Vec<String> {
        let mut chunks = pack_sentences(&collapse_whitespace(&event.hikmah)).into_iter();
        let mut ordered = Vec::with_capacity(MAX_NOTES + 1);
        ordered.extend(chunks.next());
        if let Some(q) = event.question.as_deref() {
            ordered.push(cut(&collapse_whitespace(q)));
        }
        ordered.extend(chunks);

        let mut seen: Vec<String> = Vec::new();
        let mut notes = Vec::with_capacity(MAX_NOTES);
        for note in ordered {
            let key = normalize(&note);
            if key.is_empty() || seen.contains(&key) {
                continue;
            }
            seen.push(key);
            notes.push(note);
            if notes.len() == MAX_NOTES {
                break;
            }
        }
        notes
    }
}

/// Splits collapsed text into sentences and packs them into chunks of at most [`MAX_NOTE_CHARS`].
fn pack_sentences(text: &str) -> Vec<String> {
    let mut chunks: Vec<String> = Vec::new();
    let mut current = String::new();
    for sentence in sentences(text) {
        let sentence = cut(sentence);
        let joined = current.chars().count() + 1 + sentence.chars().count();
        if current.is_empty() {
            current = sentence;
        } else if joined <= MAX_NOTE_CHARS {
            current.push(' ');
            current.push_str(&sentence);
        } else {
            chunks.push(std::mem::replace(&mut current, sentence));
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Sentences of collapsed text: a terminator (`.`, `!`, `?`, `…`) followed by a space ends one.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_terminal = false;
    for (i, ch) in text.char_indices() {
        if ch == ' ' && prev_terminal {
            out.push(&text[start..i]);
            start = i + 1;
        }
        prev_terminal = matches!(ch, '.' | '!' | '?' | '…');
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Cuts text longer than [`MAX_NOTE_CHARS`] at the last word boundary and appends `…`.
fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_NOTE_CHARS {
        return text.to_owned();
    }
    // Keep room for the ellipsis.
    let limit: String = text.chars().take(MAX_NOTE_CHARS - 1).collect();
    let head = match limit.rfind(' ') {
        Some(pos) if pos > 0 => &limit[..pos],
        _ => limit.as_str(),
    };
    format!("{}…", head.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::UserId;

    fn event(
        hikmah: &str,
        question: Option<&str>,
    ) -> Result<ElaborationCompleted, Box<dyn std::error::Error>> {
        Ok(ElaborationCompleted::new(
            UserId::parse("u-1")?,
            hikmah.into(),
            question.map(Into::into),
            "elaboration".into(),
            "m".into(),
        ))
    }

    #[test]
    fn a_short_hikmah_is_one_note() -> Result<(), Box<dyn std::error::Error>> {
        let notes = DefaultExtractor.extract(&event("  Patience is   the key to relief. ", None)?);
        assert_eq!(notes, vec!["Patience is the key to relief."]);
        Ok(())
    }

    #[test]
    fn the_question_comes_second() -> Result<(), Box<dyn std::error::Error>> {
        let notes = DefaultExtractor.extract(&event(
            "Patience is the key to relief.",
            Some("How do I stay patient?"),
        )?);
        assert_eq!(
            notes,
            vec!["Patience is the key to relief.", "How do I stay patient?"]
        );
        Ok(())
    }

    #[test]
    fn a_question_equal_to_the_hikmah_is_dropped() -> Result<(), Box<dyn std::error::Error>> {
        let notes = DefaultExtractor.extract(&event(
            "Patience is the key to relief.",
            Some("patience is the key to relief"),
        )?);
        assert_eq!(notes.len(), 1);
        Ok(())
    }

    #[test]
    fn long_texts_give_at_most_three_bounded_notes() -> Result<(), Box<dyn std::error::Error>> {
        let hikmah: String = (0..40)
            .map(|i| format!("Sentence {i} talks about gratitude and patience in hard times. "))
            .collect();
        let question = "why ".repeat(200);
        let notes = DefaultExtractor.extract(&event(&hikmah, Some(&question))?);
        assert_eq!(notes.len(), MAX_NOTES);
        for n in &notes {
            assert!(
                n.chars().count() <= MAX_NOTE_CHARS,
                "{} chars",
                n.chars().count()
            );
            assert!(!n.contains("  "));
        }
        assert!(notes[1].ends_with('…'));
        Ok(())
    }

    #[test]
    fn a_single_overlong_word_is_cut_hard() -> Result<(), Box<dyn std::error::Error>> {
        let notes = DefaultExtractor.extract(&event(&"x".repeat(1000), None)?);
        assert_eq!(notes[0].chars().count(), MAX_NOTE_CHARS);
        Ok(())
    }

    #[test]
    fn extraction_is_deterministic() -> Result<(), Box<dyn std::error::Error>> {
        let e = event("A. B! C? D… E", Some("q"))?;
        assert_eq!(DefaultExtractor.extract(&e), DefaultExtractor.extract(&e));
        assert_eq!(DefaultExtractor.extract(&e), vec!["A. B! C? D… E", "q"]);
        Ok(())
    }

    #[test]
    fn empty_texts_give_no_notes() -> Result<(), Box<dyn std::error::Error>> {
        assert!(DefaultExtractor
            .extract(&event("  ", Some(" "))?)
            .is_empty());
        Ok(())
    }
}
