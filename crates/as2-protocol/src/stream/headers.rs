//! Finds where the header block of a MIME entity ends while its bytes arrive.

use crate::error::{As2Error, Result};
use crate::mime::{self, HeaderField, MimeLimits};

/// Gathers the start of an entity until its header block is known to have ended: at the
/// blank line, or at the first line that is not a header field (as
/// [`mime::Entity::parse`] reads it).
pub(crate) struct HeaderScan {
    buffer: Vec<u8>,
    /// Complete header lines already looked at.
    scanned: usize,
    has_field: bool,
    max_header_bytes: usize,
}

/// A header block that has ended.
pub(crate) struct ScannedHeaders {
    /// The fields.
    pub fields: Vec<HeaderField>,
    /// Everything gathered: the header block and the first bytes of the body.
    pub bytes: Vec<u8>,
    /// Where the body starts in `bytes`.
    pub body_start: usize,
}

impl HeaderScan {
    pub(crate) fn new(limits: &MimeLimits) -> Self {
        Self {
            buffer: Vec::new(),
            scanned: 0,
            has_field: false,
            max_header_bytes: limits.max_header_bytes,
        }
    }

    /// Adds bytes; returns where the body starts once the header block has ended.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<Option<usize>> {
        self.buffer.extend_from_slice(data);
        self.scan(false)
    }

    /// The end of input: whatever was gathered is the header block (and maybe a body).
    pub(crate) fn finish(&mut self) -> Result<usize> {
        Ok(self.scan(true)?.unwrap_or(self.buffer.len()))
    }

    /// Hands over what was gathered, unparsed.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buffer
    }

    /// Hands over what was gathered with the fields parsed.
    pub(crate) fn take(
        &mut self,
        body_start: usize,
        limits: &MimeLimits,
    ) -> Result<ScannedHeaders> {
        let bytes = std::mem::take(&mut self.buffer);
        let (fields, parsed_start) =
            mime::parse_header_block(bytes.get(..body_start).unwrap_or_default(), limits)?;
        debug_assert_eq!(parsed_start, body_start);
        Ok(ScannedHeaders {
            fields,
            bytes,
            body_start,
        })
    }

    fn scan(&mut self, at_end: bool) -> Result<Option<usize>> {
        loop {
            let rest = self.buffer.get(self.scanned..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(at_end.then_some(self.scanned));
            }
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                if at_end || !could_be_field(rest, self.has_field) {
                    return Ok(Some(self.line_end_decision(rest, at_end)));
                }
                if self.buffer.len() > self.max_header_bytes {
                    return Err(As2Error::LimitExceeded("header block too large".into()));
                }
                return Ok(None);
            };
            let line = rest.get(..lf).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                return Ok(Some(self.scanned + lf + 1));
            }
            let continuation = matches!(line.first(), Some(b' ' | b'\t'));
            if (continuation && !self.has_field)
                || (!continuation && mime::parse_field(line).is_none())
            {
                return Ok(Some(self.scanned));
            }
            self.has_field = true;
            self.scanned += lf + 1;
            if self.scanned > self.max_header_bytes {
                return Err(As2Error::LimitExceeded("header block too large".into()));
            }
        }
    }

    /// The decision for a last line without a line break.
    fn line_end_decision(&self, line: &[u8], at_end: bool) -> usize {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.buffer.len();
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        let is_field = if continuation {
            self.has_field
        } else {
            mime::parse_field(line).is_some()
        };
        if at_end && is_field {
            self.buffer.len()
        } else {
            self.scanned
        }
    }
}

/// Whether an unfinished line may still turn out to be a header field.
fn could_be_field(partial: &[u8], has_field: bool) -> bool {
    let partial = partial.strip_suffix(b"\r").unwrap_or(partial);
    if partial.is_empty() {
        return true; // the blank line, or any line
    }
    if matches!(partial.first(), Some(b' ' | b'\t')) {
        return has_field;
    }
    match memchr::memchr(b':', partial) {
        Some(colon) => {
            let name = partial.get(..colon).unwrap_or_default();
            !name.is_empty() && name.iter().all(|b| b.is_ascii_graphic())
        }
        None => partial.iter().all(|b| b.is_ascii_graphic() && *b != b':'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::Entity;

    const LIMITS: MimeLimits = MimeLimits {
        max_header_bytes: 1024,
        max_header_count: 64,
        max_parts: 8,
    };

    fn scan_in_pieces(data: &[u8], piece: usize) -> Result<usize> {
        let mut scan = HeaderScan::new(&LIMITS);
        for chunk in data.chunks(piece.max(1)) {
            if let Some(start) = scan.push(chunk)? {
                return Ok(start);
            }
        }
        scan.finish()
    }

    #[test]
    fn body_start_matches_the_whole_buffer_parser() {
        let samples: [&[u8]; 9] = [
            b"Content-Type: text/plain\r\n\r\nbody",
            b"Content-Type: a;\r\n b=c\nX: y\n\nbody\n",
            b"UNB+UNOA:2+X'\r\nnot a header line\r\n",
            b"plain text without headers\r\n",
            b"\x00\x01binary",
            b"Content-Type: text/plain",
            b"Content-Type: text/plain\r\n",
            b"X: y\r\n continued\r\nno colon here\r\n",
            b"",
        ];
        for sample in samples {
            let expected = sample.len() - Entity::parse(sample, &LIMITS).unwrap().body().len();
            for piece in 1..=sample.len().max(1) {
                assert_eq!(
                    scan_in_pieces(sample, piece).unwrap(),
                    expected,
                    "{sample:?} in pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn an_endless_header_line_is_refused_and_binary_is_a_body_at_once() {
        let mut endless = b"X-Long: ".to_vec();
        endless.extend(vec![b'a'; 4096]);
        assert!(matches!(
            scan_in_pieces(&endless, 100),
            Err(As2Error::LimitExceeded(_))
        ));
        let mut scan = HeaderScan::new(&LIMITS);
        assert_eq!(scan.push(&[0x30, 0x80, 0x06]).unwrap(), Some(0));
    }
}
