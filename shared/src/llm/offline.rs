//! A deterministic stand-in for a model: text built from the input, streamed in chunks, so the
//! whole pipeline runs locally with no credentials and no network.

use std::time::Duration;

use futures::stream::StreamExt;

use super::{LlmProvider, Prompt, TextStream};

/// The first line of every offline answer, so nobody mistakes it for a model's output.
pub const DEMO_LABEL: &str =
    "[offline demo: no LLM configured; set LLM_PROVIDER=openai or bedrock for real answers]";

/// Streams a deterministic elaboration word by word, with a fixed pause between chunks.
#[derive(Debug, Clone)]
pub struct OfflineProvider {
    chunk_delay: Duration,
}

impl Default for OfflineProvider {
    /// Paced like a fast model, so a local run visibly streams.
    fn default() -> Self {
        Self {
            chunk_delay: Duration::from_millis(15),
        }
    }
}

impl OfflineProvider {
    /// A provider pausing `chunk_delay` before each chunk (zero for benchmarks).
    pub fn new(chunk_delay: Duration) -> Self {
        Self { chunk_delay }
    }

    /// The full text the provider streams for `prompt`.
    pub fn text_for(prompt: &Prompt) -> String {
        let hikmah = prompt.hikmah.trim();
        let mut text = format!("{DEMO_LABEL}\n");
        text.push_str(&format!(
            "\"{hikmah}\" ({} words) invites reflection.",
            hikmah.split_whitespace().count()
        ));
        if let Some(q) = prompt
            .question
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
        {
            text.push_str(&format!(" You asked: \"{q}\"."));
        }
        text.push_str(
            " Read it slowly, then ask where it already holds true in your day. \
             Practice: choose one situation this week and act on it deliberately.",
        );
        if prompt.notes_used > 0 {
            text.push_str(&format!(
                " It connects with {} of your earlier reflections.",
                prompt.notes_used
            ));
        }
        text
    }
}

impl LlmProvider for OfflineProvider {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn model(&self) -> &str {
        "offline-demo"
    }

    fn stream(&self, prompt: Prompt) -> TextStream {
        let text = Self::text_for(&prompt);
        // Chunks keep their trailing whitespace so concatenating them restores the text exactly.
        let chunks: Vec<String> = text
            .split_inclusive([' ', '\n'])
            .map(str::to_owned)
            .collect();
        let delay = self.chunk_delay;
        futures::stream::iter(chunks)
            .then(move |chunk| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(chunk)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn prompt(hikmah: &str) -> Prompt {
        Prompt {
            system: String::new(),
            user: String::new(),
            hikmah: hikmah.into(),
            question: Some("How?".into()),
            notes_used: 2,
        }
    }

    #[tokio::test]
    async fn streams_a_labelled_deterministic_text_in_several_chunks(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let p = OfflineProvider::new(Duration::ZERO);
        let chunks: Vec<String> = p
            .stream(prompt("Patience is the key to relief."))
            .try_collect()
            .await?;
        assert!(chunks.len() > 10);
        let text = chunks.concat();
        assert!(text.starts_with(DEMO_LABEL));
        assert!(text.contains("Patience is the key to relief."));
        assert!(text.contains("How?"));
        assert_eq!(
            text,
            OfflineProvider::text_for(&prompt("Patience is the key to relief."))
        );
        Ok(())
    }
}
