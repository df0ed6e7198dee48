//! A MIME reader that keeps the exact received bytes of every entity and part.
//!
//! Entities borrow from the input: [`Entity::raw`] is what arrived (headers, blank line
//! and body) and is what signatures and MICs are computed over. Header lines may end in
//! CRLF or a bare LF and may be folded; multipart bodies may carry a preamble and an
//! epilogue. Limits bound the header block, the number of parts and nesting.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use memchr::memmem;

use crate::error::{As2Error, Result};
use crate::stream::transfer::TransferDecoder;

/// Bounds on hostile MIME input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MimeLimits {
    /// Largest header block of one entity, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one entity.
    pub max_header_count: usize,
    /// Most parts in one multipart body.
    pub max_parts: usize,
}

impl Default for MimeLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_header_count: 256,
            max_parts: 64,
        }
    }
}

/// One header field, unfolded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderField {
    /// The field name as written.
    pub name: String,
    /// The value with folding removed and surrounding whitespace trimmed.
    pub value: String,
}

/// A MIME entity: header fields plus a body, with the exact bytes it arrived as.
#[derive(Clone, Debug)]
pub struct Entity<'a> {
    headers: Vec<HeaderField>,
    raw: &'a [u8],
    body: &'a [u8],
}

impl<'a> Entity<'a> {
    /// Parses an entity (header block, blank line, body) from its raw bytes.
    ///
    /// Input that does not start with a header line is read as a body without headers;
    /// a line that is not a header field ends the header block (as mail readers do).
    pub fn parse(raw: &'a [u8], limits: &MimeLimits) -> Result<Self> {
        let (headers, body_start) = parse_header_block(raw, limits)?;
        let body = raw.get(body_start..).unwrap_or_default();
        Ok(Self { headers, raw, body })
    }

    /// An entity whose headers arrived separately (for instance as HTTP headers) and
    /// whose raw bytes are therefore just the body.
    pub fn from_parts(headers: Vec<HeaderField>, body: &'a [u8]) -> Self {
        Self {
            headers,
            raw: body,
            body,
        }
    }

    /// The entity exactly as received: header block, blank line and body.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The body as received (still transfer-encoded).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// All header fields in order.
    pub fn headers(&self) -> &[HeaderField] {
        &self.headers
    }

    /// The first value of the named header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The Content-Type, defaulting to `text/plain` as RFC 2045 says.
    pub fn content_type(&self) -> ContentType {
        self.header("Content-Type")
            .map(ContentType::parse)
            .unwrap_or_else(ContentType::default_text)
    }

    /// The filename from Content-Disposition, if any.
    pub fn filename(&self) -> Option<String> {
        let disposition = ContentType::parse(self.header("Content-Disposition")?);
        disposition.param("filename").map(str::to_owned)
    }

    /// The body with its Content-Transfer-Encoding removed (a missing CTE reads as binary).
    pub fn decoded_body(&self) -> Result<Cow<'a, [u8]>> {
        decode_transfer_encoding(self.header("Content-Transfer-Encoding"), self.body)
    }

    /// Splits a multipart body into its parts (parsed as entities).
    pub fn multipart(&self, limits: &MimeLimits) -> Result<Multipart<'a>> {
        let content_type = self.content_type();
        let boundary = content_type
            .param("boundary")
            .ok_or_else(|| As2Error::mime("multipart without a boundary parameter"))?;
        Multipart::parse(self.body, boundary, limits)
    }
}

/// The parts of a multipart body, plus what surrounds them.
#[derive(Clone, Debug)]
pub struct Multipart<'a> {
    /// The parts in order, each with its exact bytes.
    pub parts: Vec<Entity<'a>>,
    /// Bytes before the first boundary.
    pub preamble: &'a [u8],
    /// Bytes after the closing boundary (empty when it is missing).
    pub epilogue: &'a [u8],
}

impl<'a> Multipart<'a> {
    /// Splits `body` at `--boundary` lines. The line break before each delimiter belongs
    /// to the delimiter, so each part's bytes are exactly what was signed. A missing
    /// closing delimiter is tolerated: the last part then runs to the end.
    pub fn parse(body: &'a [u8], boundary: &str, limits: &MimeLimits) -> Result<Self> {
        if boundary.is_empty() || boundary.len() > 200 {
            return Err(As2Error::mime("boundary must be 1 to 200 characters"));
        }
        let delimiter = format!("--{boundary}");
        let finder = memmem::Finder::new(delimiter.as_bytes());
        let mut parts = Vec::new();
        let mut preamble = None;
        let mut part_start: Option<usize> = None;
        let mut search_from = 0;
        while let Some(found) = finder.find(body.get(search_from..).unwrap_or_default()) {
            let line_start = search_from + found;
            let after = line_start + delimiter.len();
            search_from = after;
            if line_start > 0 && body.get(line_start - 1) != Some(&b'\n') {
                continue;
            }
            let Some(kind) = delimiter_kind(body.get(after..).unwrap_or_default()) else {
                continue;
            };
            let content_end = strip_line_break_before(body, line_start);
            match part_start {
                Some(start) => {
                    let raw = body.get(start..content_end.max(start)).unwrap_or_default();
                    if parts.len() >= limits.max_parts {
                        return Err(As2Error::LimitExceeded("too many multipart parts".into()));
                    }
                    parts.push(Entity::parse(raw, limits)?);
                }
                None => preamble = Some(body.get(..content_end).unwrap_or_default()),
            }
            let line_end = after + kind.line_length;
            if kind.closing {
                return Ok(Self {
                    parts,
                    preamble: preamble.unwrap_or_default(),
                    epilogue: body.get(line_end..).unwrap_or_default(),
                });
            }
            part_start = Some(line_end);
            search_from = line_end;
        }
        let Some(start) = part_start else {
            return Err(As2Error::mime("multipart body without a boundary line"));
        };
        if parts.len() >= limits.max_parts {
            return Err(As2Error::LimitExceeded("too many multipart parts".into()));
        }
        parts.push(Entity::parse(
            body.get(start..).unwrap_or_default(),
            limits,
        )?);
        Ok(Self {
            parts,
            preamble: preamble.unwrap_or_default(),
            epilogue: &[],
        })
    }
}

pub(crate) struct DelimiterKind {
    pub(crate) closing: bool,
    /// Bytes from the end of `--boundary` through the line break.
    pub(crate) line_length: usize,
}

/// Classifies what follows `--boundary`: `--` for the closing delimiter, then optional
/// transport padding and a line break (or the end of input). Anything else means the
/// match was only a prefix of a longer line.
pub(crate) fn delimiter_kind(rest: &[u8]) -> Option<DelimiterKind> {
    let closing = rest.starts_with(b"--");
    let mut index = if closing { 2 } else { 0 };
    while matches!(rest.get(index), Some(b' ' | b'\t')) {
        index += 1;
    }
    match rest.get(index) {
        None => Some(DelimiterKind {
            closing,
            line_length: index,
        }),
        Some(b'\n') => Some(DelimiterKind {
            closing,
            line_length: index + 1,
        }),
        Some(b'\r') if rest.get(index + 1) == Some(&b'\n') => Some(DelimiterKind {
            closing,
            line_length: index + 2,
        }),
        Some(b'\r') if rest.get(index + 1).is_none() => Some(DelimiterKind {
            closing,
            line_length: index + 1,
        }),
        // Some writers put text after the closing delimiter on the same line.
        Some(_) if closing => Some(DelimiterKind {
            closing,
            line_length: index,
        }),
        Some(_) => None,
    }
}

/// The offset where content ends before a delimiter line at `line_start`: the CRLF or
/// LF preceding the delimiter is not part of the content.
fn strip_line_break_before(body: &[u8], line_start: usize) -> usize {
    if line_start == 0 {
        return 0;
    }
    let before_lf = line_start - 1;
    if before_lf > 0 && body.get(before_lf - 1) == Some(&b'\r') {
        before_lf - 1
    } else {
        before_lf
    }
}

/// Returns the header fields and the offset where the body starts.
pub(crate) fn parse_header_block(
    raw: &[u8],
    limits: &MimeLimits,
) -> Result<(Vec<HeaderField>, usize)> {
    let mut headers: Vec<HeaderField> = Vec::new();
    let mut offset = 0;
    loop {
        if offset > limits.max_header_bytes {
            return Err(As2Error::LimitExceeded("header block too large".into()));
        }
        let Some(rest) = raw.get(offset..).filter(|rest| !rest.is_empty()) else {
            return Ok((headers, raw.len()));
        };
        let (line, line_length) = next_line(rest);
        if line.is_empty() {
            return Ok((headers, offset + line_length));
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(last) = headers.last_mut() {
                last.value.push(' ');
                last.value.push_str(String::from_utf8_lossy(line).trim());
                offset += line_length;
                continue;
            }
            return Ok((headers, offset));
        }
        let Some(field) = parse_field(line) else {
            // Not a header line: the body starts here (no blank line separated them).
            return Ok((headers, offset));
        };
        if headers.len() >= limits.max_header_count {
            return Err(As2Error::LimitExceeded("too many header fields".into()));
        }
        headers.push(field);
        offset += line_length;
    }
}

/// The next line without its line break, and its length including the break.
fn next_line(data: &[u8]) -> (&[u8], usize) {
    match memchr::memchr(b'\n', data) {
        Some(lf) => {
            let line = data.get(..lf).unwrap_or_default();
            (line.strip_suffix(b"\r").unwrap_or(line), lf + 1)
        }
        None => (data, data.len()),
    }
}

pub(crate) fn parse_field(line: &[u8]) -> Option<HeaderField> {
    let colon = memchr::memchr(b':', line)?;
    let name = line.get(..colon)?;
    let name_is_valid = !name.is_empty() && name.iter().all(|b| b.is_ascii_graphic() && *b != b':');
    let name = std::str::from_utf8(name).ok().filter(|_| name_is_valid)?;
    let value = String::from_utf8_lossy(line.get(colon + 1..)?)
        .trim()
        .to_owned();
    Some(HeaderField {
        name: name.to_owned(),
        value,
    })
}

/// A parsed Content-Type (or Content-Disposition) value: the lowercased type and its
/// parameters with lowercased names and unquoted values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentType {
    /// `type/subtype` (or the disposition type), lowercased.
    pub mime_type: String,
    /// Parameters in order.
    pub params: Vec<(String, String)>,
}

impl ContentType {
    fn default_text() -> Self {
        Self {
            mime_type: "text/plain".to_owned(),
            params: Vec::new(),
        }
    }

    /// Lenient parse: malformed parameters are skipped.
    pub fn parse(value: &str) -> Self {
        let mut pieces = split_parameters(value).into_iter();
        let mime_type = pieces
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let params = pieces
            .filter_map(|piece| {
                let (name, value) = piece.split_once('=')?;
                let name = name.trim().to_ascii_lowercase();
                let value = value.trim();
                let value = crate::headers::unquote(value).unwrap_or_else(|| value.to_owned());
                Some((name, value))
            })
            .map(decode_extended_parameter)
            .collect();
        Self { mime_type, params }
    }

    /// The named parameter's value (name case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the type is `mime_type` (case-insensitive).
    pub fn is(&self, mime_type: &str) -> bool {
        self.mime_type.eq_ignore_ascii_case(mime_type)
    }

    /// Whether this is a `multipart/*` type.
    pub fn is_multipart(&self) -> bool {
        self.mime_type.starts_with("multipart/")
    }
}

/// Splits at `;` outside quoted-strings.
fn split_parameters(value: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (index, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ';' if !in_quotes => {
                pieces.push(value.get(start..index).unwrap_or_default());
                start = index + 1;
            }
            _ => {}
        }
    }
    pieces.push(value.get(start..).unwrap_or_default());
    pieces
}

/// Turns an RFC 2231 `name*=charset'lang'value` parameter into `name=value`.
fn decode_extended_parameter((name, value): (String, String)) -> (String, String) {
    let Some(base) = name.strip_suffix('*') else {
        return (name, value);
    };
    let encoded = value.splitn(3, '\'').nth(2).unwrap_or(&value);
    (
        base.to_owned(),
        String::from_utf8_lossy(&percent_decode(encoded)).into_owned(),
    )
}

fn percent_decode(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&b) = bytes.get(index) {
        let hex = bytes.get(index + 1..index + 3).and_then(hex_pair);
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                index += 3;
            }
            _ => {
                out.push(b);
                index += 1;
            }
        }
    }
    out
}

pub(crate) fn hex_pair(pair: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(pair).ok()?;
    u8::from_str_radix(text, 16).ok()
}

/// Removes a Content-Transfer-Encoding; `None` (missing) reads as binary.
pub fn decode_transfer_encoding<'b>(
    encoding: Option<&str>,
    body: &'b [u8],
) -> Result<Cow<'b, [u8]>> {
    let mut decoder = TransferDecoder::new(encoding)?;
    if let TransferDecoder::Identity = decoder {
        return Ok(Cow::Borrowed(body));
    }
    Ok(Cow::Owned(decode_whole(&mut decoder, body)?))
}

/// Runs a whole buffer through a streaming decoder.
fn decode_whole(decoder: &mut TransferDecoder, data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut collect = |piece: &[u8]| {
        out.extend_from_slice(piece);
        Ok(())
    };
    decoder.push(data, &mut collect)?;
    decoder.finish(&mut collect)?;
    Ok(out)
}

pub(crate) const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes base64, ignoring line breaks and other whitespace.
pub fn decode_base64(encoded: &[u8]) -> Result<Vec<u8>> {
    decode_whole(&mut TransferDecoder::base64(), encoded)
}

/// Encodes base64 in lines of 76 characters with CRLF, as MIME bodies carry it.
pub fn encode_base64_lines(data: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Decodes quoted-printable; malformed escapes are kept literally.
pub fn decode_quoted_printable(encoded: &[u8]) -> Vec<u8> {
    // The quoted-printable decoder never fails.
    decode_whole(&mut TransferDecoder::quoted_printable(), encoded).unwrap_or_default()
}

/// Converts bare LF line breaks to CRLF (the canonical form of text MIME content).
pub fn to_crlf(data: &[u8]) -> Cow<'_, [u8]> {
    let bare_lf =
        memchr::memchr_iter(b'\n', data).any(|i| i == 0 || data.get(i - 1) != Some(&b'\r'));
    if !bare_lf {
        return Cow::Borrowed(data);
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut previous = 0u8;
    for &b in data {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    Cow::Owned(out)
}

/// Writes one header line `Name: value\r\n`.
pub(crate) fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a multipart delimiter line (`--boundary`, or `--boundary--` when closing).
pub(crate) fn push_delimiter(out: &mut Vec<u8>, boundary: &str, closing: bool) {
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    if closing {
        out.extend_from_slice(b"--");
    }
    out.extend_from_slice(b"\r\n");
}

/// A boundary unlikely to occur in any content: `----=_AS2_` and 24 random hex digits.
pub(crate) fn make_boundary() -> Result<String> {
    let mut random = [0u8; 12];
    openssl::rand::rand_bytes(&mut random)?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("----=_AS2_{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MimeLimits = MimeLimits {
        max_header_bytes: 64 * 1024,
        max_header_count: 256,
        max_parts: 64,
    };

    #[test]
    fn parses_folded_headers_and_keeps_raw_bytes() {
        let raw = b"Content-Type: multipart/signed;\r\n\tboundary=\"b 1\"; micalg=sha-256\r\nX: y\r\n\r\nbody";
        let entity = Entity::parse(raw, &LIMITS).unwrap();
        assert_eq!(entity.content_type().param("boundary"), Some("b 1"));
        assert_eq!(entity.content_type().param("micalg"), Some("sha-256"));
        assert_eq!(entity.body(), b"body");
        assert_eq!(entity.raw(), raw);
    }

    #[test]
    fn splits_multipart_with_preamble_epilogue_and_bare_lf() {
        let body = b"preamble\n--xyz\nContent-Type: text/plain\n\none\n--xyz \r\n\r\ntwo\r\n\r\n--xyz--\nepilogue";
        let multipart = Multipart::parse(body, "xyz", &LIMITS).unwrap();
        assert_eq!(multipart.preamble, b"preamble");
        assert_eq!(multipart.parts.len(), 2);
        assert_eq!(multipart.parts[0].raw(), b"Content-Type: text/plain\n\none");
        assert_eq!(multipart.parts[0].body(), b"one");
        assert_eq!(multipart.parts[1].raw(), b"\r\ntwo\r\n");
        assert_eq!(multipart.parts[1].body(), b"two\r\n");
        assert_eq!(multipart.epilogue, b"epilogue");
    }

    #[test]
    fn boundary_prefix_lines_are_content() {
        let body = b"--b\r\n\r\nline\r\n--bb\r\n--b--\r\n";
        let multipart = Multipart::parse(body, "b", &LIMITS).unwrap();
        assert_eq!(multipart.parts.len(), 1);
        assert_eq!(multipart.parts[0].body(), b"line\r\n--bb");
    }

    #[test]
    fn transfer_encodings() {
        assert_eq!(
            &*decode_transfer_encoding(Some("BASE64"), b"aGVs\r\nbG8=").unwrap(),
            b"hello"
        );
        assert_eq!(
            &*decode_transfer_encoding(None, b"raw\n").unwrap(),
            b"raw\n"
        );
        assert_eq!(decode_quoted_printable(b"a=3Db=\r\nc=ZZ"), b"a=bc=ZZ");
        assert!(decode_transfer_encoding(Some("x-uuencode"), b"").is_err());
        assert_eq!(
            decode_base64(&encode_base64_lines(&[1u8; 100])).unwrap(),
            vec![1u8; 100]
        );
    }

    #[test]
    fn content_disposition_filenames() {
        let entity = Entity::parse(
            b"Content-Disposition: attachment; filename*=UTF-8''a%20b.edi\r\n\r\n",
            &LIMITS,
        )
        .unwrap();
        assert_eq!(entity.filename().as_deref(), Some("a b.edi"));
        let plain = Entity::parse(
            b"Content-Disposition: attachment; filename=\"x;y.txt\"\n\n",
            &LIMITS,
        )
        .unwrap();
        assert_eq!(plain.filename().as_deref(), Some("x;y.txt"));
    }

    #[test]
    fn headerless_input_is_a_body() {
        let entity = Entity::parse(b"UNB+UNOA:2+X'\r\n", &LIMITS).unwrap();
        assert!(entity.headers().is_empty() || entity.header("UNB+UNOA").is_some());
        let entity = Entity::parse(b"plain text without headers\r\n", &LIMITS).unwrap();
        assert!(entity.headers().is_empty());
        assert_eq!(entity.body(), b"plain text without headers\r\n");
    }

    #[test]
    fn crlf_conversion() {
        assert_eq!(&*to_crlf(b"a\nb\r\nc"), b"a\r\nb\r\nc");
        assert!(matches!(to_crlf(b"a\r\n"), Cow::Borrowed(_)));
    }
}
