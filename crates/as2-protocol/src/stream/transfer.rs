//! Content-Transfer-Encoding decoders that take their input in chunks.

use base64::Engine as _;

use super::Output;
use crate::error::{As2Error, Result};
use crate::mime::LENIENT_BASE64;

/// Decoded bytes are handed on in batches of about this size.
const BATCH: usize = 64 * 1024;

/// A transfer decoder for one body.
pub(crate) enum TransferDecoder {
    /// binary, 7bit, 8bit or none: the bytes as they are.
    Identity,
    /// base64, whitespace ignored, padding optional.
    Base64(Base64Decoder),
    /// quoted-printable; malformed escapes are kept literally.
    QuotedPrintable(QuotedPrintableDecoder),
}

impl TransferDecoder {
    /// The decoder for a Content-Transfer-Encoding value (`None`: binary).
    pub(crate) fn new(encoding: Option<&str>) -> Result<Self> {
        let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
        match encoding.as_deref() {
            None | Some("" | "binary" | "7bit" | "8bit") => Ok(Self::Identity),
            Some("base64") => Ok(Self::Base64(Base64Decoder::default())),
            Some("quoted-printable") => {
                Ok(Self::QuotedPrintable(QuotedPrintableDecoder::default()))
            }
            Some(other) => Err(As2Error::UnsupportedFormat(format!(
                "Content-Transfer-Encoding {other}"
            ))),
        }
    }

    /// A base64 decoder.
    pub(crate) fn base64() -> Self {
        Self::Base64(Base64Decoder::default())
    }

    /// A quoted-printable decoder.
    pub(crate) fn quoted_printable() -> Self {
        Self::QuotedPrintable(QuotedPrintableDecoder::default())
    }

    /// Decodes `data` and hands the result to `out`.
    pub(crate) fn push(&mut self, data: &[u8], out: &mut Output<'_>) -> Result<()> {
        match self {
            Self::Identity if data.is_empty() => Ok(()),
            Self::Identity => out(data),
            Self::Base64(decoder) => decoder.push(data, out),
            Self::QuotedPrintable(decoder) => decoder.push(data, out),
        }
    }

    /// Decodes what is left at the end of the body.
    pub(crate) fn finish(&mut self, out: &mut Output<'_>) -> Result<()> {
        match self {
            Self::Identity => Ok(()),
            Self::Base64(decoder) => decoder.finish(out),
            Self::QuotedPrintable(decoder) => decoder.finish(out),
        }
    }
}

/// base64 in chunks: significant characters are gathered and decoded four at a time;
/// a group holding `=` padding must be the last one.
#[derive(Default)]
pub(crate) struct Base64Decoder {
    /// Significant characters not yet decoded.
    pending: Vec<u8>,
    /// Decoded bytes not yet handed on.
    decoded: Vec<u8>,
    /// Padding was seen: nothing but whitespace may follow.
    padded: bool,
}

impl Base64Decoder {
    fn push(&mut self, data: &[u8], out: &mut Output<'_>) -> Result<()> {
        for piece in data.chunks(BATCH) {
            for &byte in piece {
                if byte.is_ascii_whitespace() {
                    continue;
                }
                if self.padded && byte != b'=' {
                    return Err(As2Error::mime("invalid base64: data after padding"));
                }
                if byte == b'=' {
                    self.padded = true;
                }
                self.pending.push(byte);
            }
            if !self.padded {
                let whole = self.pending.len() / 4 * 4;
                self.decode(whole)?;
            }
            if !self.decoded.is_empty() {
                out(&self.decoded)?;
                self.decoded.clear();
            }
        }
        Ok(())
    }

    fn decode(&mut self, length: usize) -> Result<()> {
        if length == 0 {
            return Ok(());
        }
        let group = self.pending.get(..length).unwrap_or_default();
        LENIENT_BASE64
            .decode_vec(group, &mut self.decoded)
            .map_err(|e| As2Error::mime(format!("invalid base64: {e}")))?;
        self.pending.drain(..length);
        Ok(())
    }

    fn finish(&mut self, out: &mut Output<'_>) -> Result<()> {
        self.decode(self.pending.len())?;
        if !self.decoded.is_empty() {
            out(&self.decoded)?;
            self.decoded.clear();
        }
        Ok(())
    }
}

/// quoted-printable in chunks: an `=` near the end of a chunk waits for what follows.
#[derive(Default)]
pub(crate) struct QuotedPrintableDecoder {
    /// Undecided bytes from the end of the previous chunk (an `=` and what followed it).
    carry: Vec<u8>,
    decoded: Vec<u8>,
}

/// Longest run of whitespace between `=` and a line break that is still a soft break.
const MAX_SOFT_BREAK_PADDING: usize = 1024;

impl QuotedPrintableDecoder {
    fn push(&mut self, data: &[u8], out: &mut Output<'_>) -> Result<()> {
        for piece in data.chunks(BATCH) {
            self.carry.extend_from_slice(piece);
            let consumed = self.decode(false);
            self.carry.drain(..consumed);
            if !self.decoded.is_empty() {
                out(&self.decoded)?;
                self.decoded.clear();
            }
        }
        Ok(())
    }

    /// Decodes from `carry`; returns how many bytes were consumed.
    fn decode(&mut self, at_end: bool) -> usize {
        let input = &self.carry;
        let mut index = 0;
        while let Some(&byte) = input.get(index) {
            if byte != b'=' {
                let run = memchr::memchr(b'=', input.get(index..).unwrap_or_default())
                    .unwrap_or(input.len() - index);
                self.decoded
                    .extend_from_slice(input.get(index..index + run).unwrap_or_default());
                index += run;
                continue;
            }
            let rest = input.get(index + 1..).unwrap_or_default();
            match escape(rest, at_end) {
                Escape::NeedMore => return index,
                Escape::SoftBreak(length) => index += 1 + length,
                Escape::Byte(decoded) => {
                    self.decoded.push(decoded);
                    index += 3;
                }
                Escape::Literal => {
                    self.decoded.push(b'=');
                    index += 1;
                }
            }
        }
        index
    }

    fn finish(&mut self, out: &mut Output<'_>) -> Result<()> {
        let consumed = self.decode(true);
        self.carry.drain(..consumed);
        if !self.decoded.is_empty() {
            out(&self.decoded)?;
            self.decoded.clear();
        }
        Ok(())
    }
}

enum Escape {
    NeedMore,
    SoftBreak(usize),
    Byte(u8),
    Literal,
}

/// Classifies what follows an `=`: a soft line break (whitespace, then CRLF or LF), two
/// hex digits, or neither (kept literally).
fn escape(rest: &[u8], at_end: bool) -> Escape {
    let spaces = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let after = rest.get(spaces..).unwrap_or_default();
    if after.starts_with(b"\r\n") {
        return Escape::SoftBreak(spaces + 2);
    }
    if after.starts_with(b"\n") {
        return Escape::SoftBreak(spaces + 1);
    }
    let undecided = after.is_empty() || after == b"\r";
    if undecided && !at_end && spaces <= MAX_SOFT_BREAK_PADDING {
        return Escape::NeedMore;
    }
    if spaces == 0 {
        if rest.len() < 2 && !at_end {
            return Escape::NeedMore;
        }
        if let Some(decoded) = rest.get(..2).and_then(crate::mime::hex_pair) {
            return Escape::Byte(decoded);
        }
    }
    Escape::Literal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime;

    fn decode_in_pieces(encoding: &str, data: &[u8], piece: usize) -> Result<Vec<u8>> {
        let mut decoder = TransferDecoder::new(Some(encoding))?;
        let mut out = Vec::new();
        let mut sink = |d: &[u8]| {
            out.extend_from_slice(d);
            Ok(())
        };
        for chunk in data.chunks(piece.max(1)) {
            decoder.push(chunk, &mut sink)?;
        }
        decoder.finish(&mut sink)?;
        Ok(out)
    }

    #[test]
    fn base64_in_any_split_matches_the_whole_buffer_decoder() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let encoded = mime::encode_base64_lines(&data);
        for piece in [1, 2, 3, 5, 76, 77, 4096] {
            assert_eq!(decode_in_pieces("base64", &encoded, piece).unwrap(), data);
        }
        assert_eq!(decode_in_pieces("base64", b"aGVsbG8", 1).unwrap(), b"hello");
        assert!(decode_in_pieces("base64", b"aGVsbG8=aGVs", 3).is_err());
        assert!(decode_in_pieces("base64", b"a*b=", 3).is_err());
    }

    #[test]
    fn quoted_printable_in_any_split_matches_the_whole_buffer_decoder() {
        let samples: [&[u8]; 5] = [
            b"a=3Db=\r\nc=ZZ",
            b"line=  \r\nnext=\nlast=",
            b"=4",
            b"x=\r",
            b"soft =   \nbreak = 3D",
        ];
        let expected_values: [&[u8]; 5] = [
            b"a=bc=ZZ",
            b"linenextlast=",
            b"=4",
            b"x=\r",
            b"soft break = 3D",
        ];
        for (sample, expected) in samples.into_iter().zip(expected_values) {
            for piece in 1..=sample.len() {
                assert_eq!(
                    decode_in_pieces("quoted-printable", sample, piece).unwrap(),
                    expected,
                    "{sample:?} in pieces of {piece}"
                );
            }
        }
    }
}
