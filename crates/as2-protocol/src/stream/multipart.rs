//! Splits a multipart body at its delimiter lines while it arrives, with the same reading
//! as [`crate::mime::Multipart::parse`]: the line break before a delimiter belongs to the
//! delimiter, transport padding may follow it, and a missing closing delimiter leaves the
//! last part running to the end.

use memchr::memmem;

use crate::error::{As2Error, Result};
use crate::mime;

/// What the splitter found.
pub(crate) enum PartEvent<'a> {
    /// A part starts (its index, from 0).
    Start(usize),
    /// Bytes of the current part, exactly as received.
    Data(&'a [u8]),
    /// The current part ended at a delimiter (or at the end of input).
    End,
}

/// Longest transport padding after a delimiter that is waited for.
const MAX_PADDING: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Position {
    Preamble,
    Part(usize),
    Epilogue,
}

pub(crate) struct PartSplitter {
    /// `\n--boundary`.
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    pending: Vec<u8>,
    /// Leading bytes of `pending` that are not content (the line break ending the
    /// previous delimiter line, kept so that a delimiter right after it is found).
    lead: usize,
    position: Position,
    max_parts: usize,
}

impl PartSplitter {
    pub(crate) fn new(boundary: &str, max_parts: usize) -> Result<Self> {
        if boundary.is_empty() || boundary.len() > 200 {
            return Err(As2Error::mime("boundary must be 1 to 200 characters"));
        }
        let delimiter = format!("\n--{boundary}").into_bytes();
        let finder = memmem::Finder::new(&delimiter).into_owned();
        Ok(Self {
            delimiter,
            finder,
            pending: b"\n".to_vec(),
            lead: 1,
            position: Position::Preamble,
            max_parts,
        })
    }

    pub(crate) fn push(
        &mut self,
        data: &[u8],
        on_event: &mut dyn FnMut(PartEvent<'_>) -> Result<()>,
    ) -> Result<()> {
        if self.position == Position::Epilogue {
            return Ok(());
        }
        self.pending.extend_from_slice(data);
        self.split(false, on_event)
    }

    /// The end of the body.
    pub(crate) fn finish(
        &mut self,
        on_event: &mut dyn FnMut(PartEvent<'_>) -> Result<()>,
    ) -> Result<()> {
        self.split(true, on_event)?;
        match self.position {
            Position::Preamble => Err(As2Error::mime("multipart body without a boundary line")),
            Position::Part(_) => {
                self.position = Position::Epilogue;
                on_event(PartEvent::End)
            }
            Position::Epilogue => Ok(()),
        }
    }

    fn split(
        &mut self,
        at_end: bool,
        on_event: &mut dyn FnMut(PartEvent<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut search_from = 0;
        loop {
            if self.position == Position::Epilogue {
                self.pending.clear();
                return Ok(());
            }
            let found = self
                .finder
                .find(self.pending.get(search_from..).unwrap_or_default())
                .map(|at| at + search_from);
            let Some(at) = found else {
                let keep = if at_end { 0 } else { self.delimiter.len() + 1 };
                let emit_to = self.pending.len().saturating_sub(keep);
                self.emit(emit_to, on_event)?;
                return Ok(());
            };
            let after = at + self.delimiter.len();
            let rest = self.pending.get(after..).unwrap_or_default();
            if !at_end && !decided(rest) {
                let content_end = self.content_end(at);
                self.emit(content_end, on_event)?;
                return Ok(());
            }
            let Some(kind) = mime::delimiter_kind(rest) else {
                search_from = at + 1;
                continue;
            };
            let content_end = self.content_end(at);
            let drained = self.emit(content_end, on_event)?;
            if let Position::Part(_) = self.position {
                on_event(PartEvent::End)?;
            }
            let line_end =
                (at - drained + self.delimiter.len() + kind.line_length).min(self.pending.len());
            self.position = if kind.closing {
                Position::Epilogue
            } else {
                let next = match self.position {
                    Position::Part(index) => index + 1,
                    _ => 0,
                };
                if next >= self.max_parts {
                    return Err(As2Error::LimitExceeded("too many multipart parts".into()));
                }
                on_event(PartEvent::Start(next))?;
                Position::Part(next)
            };
            // Keep the delimiter line's own line break as a possible start of the next
            // delimiter.
            let ends_with_lf =
                kind.line_length > 0 && self.pending.get(line_end - 1) == Some(&b'\n');
            let drain_to = if ends_with_lf { line_end - 1 } else { line_end };
            self.pending.drain(..drain_to);
            self.lead = usize::from(ends_with_lf);
            search_from = 0;
        }
    }

    /// Where the content before a delimiter found at `at` ends: a CR before its LF
    /// belongs to the delimiter too.
    fn content_end(&self, at: usize) -> usize {
        if at > self.lead && self.pending.get(at - 1) == Some(&b'\r') {
            at - 1
        } else {
            at.max(self.lead)
        }
    }

    /// Hands on the content bytes before `end` and drops them; returns how many bytes
    /// left the front of `pending`.
    fn emit(
        &mut self,
        end: usize,
        on_event: &mut dyn FnMut(PartEvent<'_>) -> Result<()>,
    ) -> Result<usize> {
        if end <= self.lead {
            return Ok(0);
        }
        if let Position::Part(_) = self.position {
            on_event(PartEvent::Data(
                self.pending.get(self.lead..end).unwrap_or_default(),
            ))?;
        }
        self.pending.drain(..end);
        self.lead = 0;
        Ok(end)
    }
}

/// Whether enough of the line after `--boundary` has arrived to classify it.
fn decided(rest: &[u8]) -> bool {
    let mut index = 0;
    if rest.len() < 2 && b"--".starts_with(rest) {
        return false;
    }
    if rest.starts_with(b"--") {
        index = 2;
    }
    let padding = rest
        .get(index..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    index += padding;
    if padding > MAX_PADDING {
        return true;
    }
    match rest.get(index) {
        None => false,
        Some(b'\r') => rest.len() > index + 1,
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::{MimeLimits, Multipart};

    fn split_in_pieces(body: &[u8], boundary: &str, piece: usize) -> Result<Vec<Vec<u8>>> {
        let mut splitter = PartSplitter::new(boundary, 64)?;
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut on_event = |event: PartEvent<'_>| {
            match event {
                PartEvent::Start(index) => {
                    assert_eq!(index, parts.len());
                    parts.push(Vec::new());
                }
                PartEvent::Data(data) => parts.last_mut().unwrap().extend_from_slice(data),
                PartEvent::End => {}
            }
            Ok(())
        };
        for chunk in body.chunks(piece.max(1)) {
            splitter.push(chunk, &mut on_event)?;
        }
        splitter.finish(&mut on_event)?;
        Ok(parts)
    }

    #[test]
    fn parts_match_the_whole_buffer_parser_in_any_split() {
        let samples: [(&[u8], &str); 7] = [
            (b"preamble\n--xyz\nContent-Type: text/plain\n\none\n--xyz \r\n\r\ntwo\r\n\r\n--xyz--\nepilogue", "xyz"),
            (b"--b\r\n\r\nline\r\n--bb\r\n--b--\r\n", "b"),
            (b"--b\r\n--b\r\nsecond\r\n--b--", "b"),
            (b"--b\r\nno closing delimiter\r\n", "b"),
            (b"--b\r\nx\r\n--b--trailing text", "b"),
            (b"--b\r\n\r\r\n--b\r\n\r\n\r\n--b--\r\n", "b"),
            (b"x--b\r\n--b\r\na\r\n--b\t \r\nb\r\n--b--", "b"),
        ];
        for (body, boundary) in samples {
            let expected: Vec<Vec<u8>> = Multipart::parse(body, boundary, &MimeLimits::default())
                .unwrap()
                .parts
                .iter()
                .map(|p| p.raw().to_vec())
                .collect();
            for piece in 1..=body.len() {
                assert_eq!(
                    split_in_pieces(body, boundary, piece).unwrap(),
                    expected,
                    "{:?} in pieces of {piece}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        assert!(split_in_pieces(b"no delimiter at all", "b", 3).is_err());
    }
}
