//! Incremental Server-Sent Events codec.
//!
//! [`SseDecoder`] is fed arbitrary byte chunks (a network read can split a
//! line, a UTF-8 character or a `\r\n` anywhere) and yields complete events.
//! Its output does not depend on how the input was split. Lines longer than the
//! configured bound are an error rather than unbounded memory.

/// One decoded event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field, if any.
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// `id:` field, if any.
    pub id: Option<String>,
}

/// Decoding failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A line exceeded the bound.
    LineTooLong,
}

/// Incremental SSE decoder.
#[derive(Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    pending_cr: bool,
    max_line: usize,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseDecoder {
    /// A decoder refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            line: Vec::new(),
            pending_cr: false,
            max_line,
            event: None,
            data: String::new(),
            has_data: false,
            id: None,
        }
    }

    /// Feeds bytes; complete events are appended to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.pending_cr {
            self.pending_cr = false;
            if let Some((&b'\n', rest)) = bytes.split_first() {
                bytes = rest;
            }
        }
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(pos) => {
                    self.push_line_bytes(&bytes[..pos])?;
                    let terminator = bytes[pos];
                    bytes = &bytes[pos + 1..];
                    if terminator == b'\r' {
                        match bytes.first() {
                            Some(b'\n') => bytes = &bytes[1..],
                            Some(_) => {}
                            None => self.pending_cr = true,
                        }
                    }
                    self.end_line(out);
                }
                None => {
                    self.push_line_bytes(bytes)?;
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    /// Ends the input: a final event without its blank line is still
    /// dispatched (upstreams that close early would otherwise lose it).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.line.is_empty() {
            self.end_line(out);
        }
        self.dispatch(out);
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_line {
            self.line.clear();
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let text = String::from_utf8_lossy(&line);
        if text.starts_with(':') {
            return; // comment / keep-alive
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
            "event" => self.event = Some(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            _ => {}
        }
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data || self.event.is_some() {
            out.push(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
                id: self.id.take(),
            });
        }
        self.has_data = false;
        self.event = None;
        self.id = None;
        self.data.clear();
    }
}

/// Encodes one event (`event:` line when named, one `data:` line per line of data).
pub fn encode_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out).unwrap();
        }
        d.finish(&mut out);
        out
    }

    const SAMPLE: &[u8] = b": keep-alive\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: line1\ndata: line2\n\ndata:nospace\r\rid: 7\ndata: caf\xc3\xa9\n\ndata: [DONE]";

    #[test]
    fn decodes_fields_and_all_line_endings() {
        let events = decode_all(&[SAMPLE]);
        assert_eq!(events.len(), 5);
        assert_eq!(events[0].event.as_deref(), Some("message_start"));
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(events[1].data, "line1\nline2");
        assert_eq!(events[2].data, "nospace");
        assert_eq!(events[3].id.as_deref(), Some("7"));
        assert_eq!(events[3].data, "café");
        assert_eq!(events[4].data, "[DONE]", "unterminated final event is kept");
    }

    #[test]
    fn identical_output_for_every_split_point() {
        let whole = decode_all(&[SAMPLE]);
        for i in 0..=SAMPLE.len() {
            for j in i..=SAMPLE.len() {
                let parts = decode_all(&[&SAMPLE[..i], &SAMPLE[i..j], &SAMPLE[j..]]);
                assert_eq!(parts, whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn long_lines_are_refused() {
        let mut d = SseDecoder::new(8);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"data: 0123456789\n", &mut out), Err(SseError::LineTooLong));
        let mut d = SseDecoder::new(8);
        assert!(d.feed(b"data: 01", &mut out).is_ok());
        assert_eq!(d.feed(b"2", &mut out), Err(SseError::LineTooLong));
    }

    #[test]
    fn encode_round_trips() {
        let mut buf = Vec::new();
        encode_event(&mut buf, Some("ping"), "a\nb");
        encode_event(&mut buf, None, "{}");
        let events = decode_all(&[&buf]);
        assert_eq!(events[0].event.as_deref(), Some("ping"));
        assert_eq!(events[0].data, "a\nb");
        assert_eq!(events[1].data, "{}");
    }

    proptest! {
        #[test]
        fn never_panics_and_split_invariant(bytes in proptest::collection::vec(any::<u8>(), 0..400), cut in 0usize..400) {
            let cut = cut.min(bytes.len());
            let whole = decode_all(&[&bytes]);
            let split = decode_all(&[&bytes[..cut], &bytes[cut..]]);
            prop_assert_eq!(whole, split);
        }
    }
}
