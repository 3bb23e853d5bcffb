//! Rendering errors (and caught panics) for messages that cross a boundary (a client, a log line,
//! another error).

use std::error::Error;

/// Joins an error and its `source()` chain into one line, `outer: inner: root`.
///
/// A source whose text the line already holds is skipped: many errors (the database driver's,
/// for one) print their cause in their own `Display` and return it again from `source()`.
pub fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The message a panic was raised with (what `panic!` formatted), for reporting a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    /// `["a", "b"]` is an error `a` whose source is `b`.
    fn layers(texts: &[&'static str]) -> Result<Layer, &'static str> {
        texts
            .iter()
            .rev()
            .fold(None, |source, text| {
                Some(Layer {
                    text,
                    source: source.map(Box::new),
                })
            })
            .ok_or("no layers")
    }

    #[test]
    fn sources_are_joined_in_order() -> Result<(), &'static str> {
        assert_eq!(chain(&layers(&["connect"])?), "connect");
        assert_eq!(
            chain(&layers(&["request failed", "connect", "refused"])?),
            "request failed: connect: refused"
        );
        Ok(())
    }

    #[test]
    fn a_source_already_printed_by_its_parent_is_not_repeated() -> Result<(), &'static str> {
        assert_eq!(
            chain(&layers(&["db error: reset by peer", "reset by peer"])?),
            "db error: reset by peer"
        );
        Ok(())
    }
}
