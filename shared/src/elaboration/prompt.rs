//! The prompt template (documented in the README): a fixed system message, and a user message
//! holding the hikmah, the optional question and the user's notes.

use super::ElaborateRequest;
use crate::llm::Prompt;

/// The system message: the model's role and the shape of a good answer.
pub const SYSTEM: &str = "You are a thoughtful teacher of wisdom (hikmah). Elaborate on the saying the \
user gives: explain its meaning, where it applies in everyday life, and one concrete practice. Be warm \
and concise (under 250 words) and answer in the language of the saying. When notes from the user's \
earlier reflections are given, use them to make the answer personal, without quoting them verbatim.";

/// Renders the prompt; `notes` are the user's own notes, most relevant first.
pub fn build(request: &ElaborateRequest, notes: &[String]) -> Prompt {
    let mut user = format!("Hikmah: \"{}\"\n", request.hikmah.trim());
    if let Some(q) = &request.question {
        user.push_str(&format!("My question: {}\n", q.trim()));
    }
    if !notes.is_empty() {
        user.push_str("\nNotes from my earlier reflections:\n");
        for note in notes {
            // One line per note, so a note cannot forge structure in the prompt.
            let line = note.split_whitespace().collect::<Vec<_>>().join(" ");
            user.push_str(&format!("- {line}\n"));
        }
    }
    Prompt {
        system: SYSTEM.to_owned(),
        user,
        hikmah: request.hikmah.clone(),
        question: request.question.clone(),
        notes_used: notes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_and_question_are_rendered_one_per_line() {
        let req = ElaborateRequest {
            user_id: None,
            hikmah: "Patience.".into(),
            question: Some("Why?".into()),
        };
        let p = build(&req, &["first\nnote".into(), "second".into()]);
        assert!(p.user.contains("Hikmah: \"Patience.\""));
        assert!(p.user.contains("My question: Why?"));
        assert!(p.user.contains("- first note\n- second\n"));
        assert_eq!(p.notes_used, 2);
        let bare = build(
            &ElaborateRequest {
                question: None,
                ..req
            },
            &[],
        );
        assert!(!bare.user.contains("Notes") && !bare.user.contains("question"));
    }
}
