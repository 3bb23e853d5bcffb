//! An incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules).
//!
//! Bytes are pushed as they arrive from the network, in chunks of any size: lines may be split
//! across chunks (even between `\r` and `\n`, or inside a multi-byte character), events may span
//! many `data:` lines, and lines end in `\n`, `\r\n` or `\r`. Lines are decoded only once complete,
//! so a character split across reads is never mangled.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when one was given (`None` means the default, `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, when one was given.
    pub id: Option<String>,
}

/// What the parser recognised in the bytes pushed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event (ended by a blank line).
    Event(SseEvent),
    /// A comment line (`: keep-alive`), without the leading colon and one optional space.
    Comment(String),
}

/// A line longer than this is refused: a stream that never ends its line must not exhaust memory.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// The stream broke the format badly enough that parsing cannot continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event-stream line exceeds {MAX_LINE_BYTES} bytes")]
pub struct LineTooLong;

/// Incremental parser state; feed it with [`SseParser::push`].
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    // The previous chunk ended in `\r`: a `\n` starting the next chunk belongs to that line end.
    skip_lf: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes` and returns the events and comments they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseItem>, LineTooLong> {
        let mut out = Vec::new();
        let mut rest = bytes;
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if let Some(after) = rest.strip_prefix(b"\n") {
                rest = after;
            }
        }
        while let Some(pos) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.line.extend_from_slice(&rest[..pos]);
            if self.line.len() > MAX_LINE_BYTES {
                return Err(LineTooLong);
            }
            let terminator = rest[pos];
            rest = &rest[pos + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            let line = std::mem::take(&mut self.line);
            if let Some(item) = self.process_line(&line) {
                out.push(item);
            }
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > MAX_LINE_BYTES {
            return Err(LineTooLong);
        }
        Ok(out)
    }

    fn process_line(&mut self, line: &[u8]) -> Option<SseItem> {
        if line.is_empty() {
            return self.dispatch();
        }
        let text = String::from_utf8_lossy(line);
        if let Some(comment) = text.strip_prefix(':') {
            return Some(SseItem::Comment(
                comment.strip_prefix(' ').unwrap_or(comment).to_owned(),
            ));
        }
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            // `retry` and unknown fields are ignored, as the format requires.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseItem> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseItem::Event(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(items: Vec<SseItem>) -> Vec<SseEvent> {
        items
            .into_iter()
            .filter_map(|i| match i {
                SseItem::Event(e) => Some(e),
                SseItem::Comment(_) => None,
            })
            .collect()
    }

    fn parse_in_pieces(
        input: &[u8],
        piece: usize,
    ) -> Result<Vec<SseItem>, Box<dyn std::error::Error>> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            out.extend(p.push(chunk)?);
        }
        Ok(out)
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = SseParser::new();
        let got = events(p.push(b"event: delta\ndata: one\ndata: two\n\n")?);
        assert_eq!(
            got,
            vec![SseEvent {
                event: Some("delta".into()),
                data: "one\ntwo".into(),
                id: None
            }]
        );
        Ok(())
    }

    #[test]
    fn crlf_cr_and_lf_line_ends_are_all_accepted() -> Result<(), Box<dyn std::error::Error>> {
        for input in [
            &b"data: a\r\n\r\ndata: b\r\n\r\n"[..],
            b"data: a\r\rdata: b\r\r",
            b"data: a\n\ndata: b\n\n",
        ] {
            let got: Vec<String> = events(parse_in_pieces(input, 1000)?)
                .into_iter()
                .map(|e| e.data)
                .collect();
            assert_eq!(got, vec!["a", "b"], "{:?}", String::from_utf8_lossy(input));
        }
        Ok(())
    }

    #[test]
    fn every_split_point_gives_the_same_events() -> Result<(), Box<dyn std::error::Error>> {
        let input = "data: {\"x\":\"é🙂\"}\r\n: comment\r\n\r\nevent: e\ndata:no-space\n\ndata: [DONE]\r\n\r\n";
        let whole = parse_in_pieces(input.as_bytes(), input.len())?;
        assert_eq!(whole.len(), 4);
        for piece in 1..input.len() {
            assert_eq!(
                parse_in_pieces(input.as_bytes(), piece)?,
                whole,
                "piece size {piece}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_crlf_split_between_reads_does_not_make_an_empty_line(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut p = SseParser::new();
        assert!(p.push(b"data: a\r")?.is_empty());
        assert!(
            p.push(b"\n")?.is_empty(),
            "the \\n belongs to the \\r, not a blank line"
        );
        assert_eq!(events(p.push(b"\r\n")?)[0].data, "a");
        Ok(())
    }

    #[test]
    fn comments_are_reported_and_do_not_dispatch() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = SseParser::new();
        let got = p.push(b": keep-alive\n\n")?;
        assert_eq!(got, vec![SseItem::Comment("keep-alive".into())]);
        Ok(())
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = SseParser::new();
        assert!(p.push(b"data: partial\n")?.is_empty());
        Ok(())
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = SseParser::new();
        let big = vec![b'a'; MAX_LINE_BYTES + 1];
        assert_eq!(p.push(&big), Err(LineTooLong));
    }
}
