//! A small BER reader and DER writer, just enough for the CMS structures AS2 uses.
//!
//! The reader accepts definite and indefinite lengths (partners send both) and keeps
//! the raw bytes of every element; it rejects high tag numbers and nests at most
//! [`MAX_NESTING`] levels deep.

use std::borrow::Cow;

use crate::error::{As2Error, Result};

/// Deepest nesting the reader follows before giving up.
pub(crate) const MAX_NESTING: usize = 48;

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTC_TIME: u8 = 0x17;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;
const CONSTRUCTED: u8 = 0x20;

/// One element: its identifier octet, its content and all of its raw bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Element<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
}

impl<'a> Element<'a> {
    /// A reader over the children of a constructed element.
    pub fn children(&self) -> Reader<'a> {
        Reader { data: self.content }
    }

    pub fn is_constructed(&self) -> bool {
        self.tag & CONSTRUCTED != 0
    }

    /// The bytes of an OCTET STRING (or an implicitly tagged one), joining the
    /// segments of a constructed encoding.
    pub fn octets(&self) -> Result<Cow<'a, [u8]>> {
        if !self.is_constructed() {
            return Ok(Cow::Borrowed(self.content));
        }
        let mut joined = Vec::with_capacity(self.content.len());
        collect_octets(self, &mut joined, 0)?;
        Ok(Cow::Owned(joined))
    }

    /// The element's value as a non-negative integer that fits in a `u64`.
    pub fn small_uint(&self) -> Result<u64> {
        if self.tag != TAG_INTEGER || self.content.is_empty() || self.content.len() > 8 {
            return Err(As2Error::cms("expected a small INTEGER"));
        }
        if self.content.first().is_some_and(|first| first & 0x80 != 0) {
            return Err(As2Error::cms("negative INTEGER"));
        }
        Ok(self
            .content
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
}

fn collect_octets(element: &Element<'_>, out: &mut Vec<u8>, depth: usize) -> Result<()> {
    if depth > MAX_NESTING {
        return Err(As2Error::cms("constructed OCTET STRING nested too deeply"));
    }
    if !element.is_constructed() {
        out.extend_from_slice(element.content);
        return Ok(());
    }
    let mut children = element.children();
    while let Some(child) = children.next()? {
        if child.tag & !CONSTRUCTED != TAG_OCTET_STRING {
            return Err(As2Error::cms(
                "constructed OCTET STRING holds a non-OCTET STRING",
            ));
        }
        collect_octets(&child, out, depth + 1)?;
    }
    Ok(())
}

/// Sequential reader over a run of BER elements.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next element, or `None` at the end of the input.
    pub fn next(&mut self) -> Result<Option<Element<'a>>> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let (element, rest) = read_element(self.data, 0)?;
        self.data = rest;
        Ok(Some(element))
    }

    /// The identifier octet of the next element without consuming it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// The next element, which must carry `tag`.
    pub fn expect(&mut self, tag: u8, what: &str) -> Result<Element<'a>> {
        match self.next()? {
            Some(element) if element.tag == tag => Ok(element),
            Some(_) => Err(As2Error::cms(format!(
                "unexpected element where {what} belongs"
            ))),
            None => Err(As2Error::cms(format!("missing {what}"))),
        }
    }

    /// The next element if it carries `tag`.
    pub fn optional(&mut self, tag: u8) -> Result<Option<Element<'a>>> {
        if self.peek_tag() != Some(tag) {
            return Ok(None);
        }
        self.next()
    }
}

/// Parses a single element that must span the whole input (trailing zero padding, which
/// some encoders leave behind, is tolerated).
pub(crate) fn parse_single(data: &[u8]) -> Result<Element<'_>> {
    let (element, rest) = read_element(data, 0)?;
    if rest.iter().any(|b| *b != 0) {
        return Err(As2Error::cms("trailing bytes after the outer element"));
    }
    Ok(element)
}

fn read_element(data: &[u8], depth: usize) -> Result<(Element<'_>, &[u8])> {
    if depth > MAX_NESTING {
        return Err(As2Error::cms("elements nested too deeply"));
    }
    let (&tag, after_tag) = data
        .split_first()
        .ok_or_else(|| As2Error::cms("truncated element"))?;
    if tag & 0x1f == 0x1f {
        return Err(As2Error::cms("high tag numbers are not supported"));
    }
    let (&first_len, after_len_byte) = after_tag
        .split_first()
        .ok_or_else(|| As2Error::cms("truncated length"))?;
    if first_len == 0x80 {
        return read_indefinite(data, tag, after_len_byte, depth);
    }
    let (length, body) = if first_len & 0x80 == 0 {
        (usize::from(first_len), after_len_byte)
    } else {
        let count = usize::from(first_len & 0x7f);
        if count > 4 {
            return Err(As2Error::cms("length too large"));
        }
        let (len_bytes, body) = split(after_len_byte, count)?;
        let length = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, body)
    };
    let (content, rest) = split(body, length)?;
    let header_len = data.len() - body.len();
    let raw = data
        .get(..header_len + length)
        .ok_or_else(|| As2Error::cms("truncated element"))?;
    Ok((Element { tag, content, raw }, rest))
}

fn read_indefinite<'a>(
    data: &'a [u8],
    tag: u8,
    body: &'a [u8],
    depth: usize,
) -> Result<(Element<'a>, &'a [u8])> {
    if tag & CONSTRUCTED == 0 {
        return Err(As2Error::cms("indefinite length on a primitive element"));
    }
    let mut cursor = body;
    loop {
        if cursor.starts_with(&[0, 0]) {
            let content_len = body.len() - cursor.len();
            let content = body
                .get(..content_len)
                .ok_or_else(|| As2Error::cms("truncated"))?;
            let rest = cursor.get(2..).ok_or_else(|| As2Error::cms("truncated"))?;
            let raw_len = data.len() - rest.len();
            let raw = data
                .get(..raw_len)
                .ok_or_else(|| As2Error::cms("truncated"))?;
            return Ok((Element { tag, content, raw }, rest));
        }
        if cursor.is_empty() {
            return Err(As2Error::cms("missing end-of-contents"));
        }
        let (_, rest) = read_element(cursor, depth + 1)?;
        cursor = rest;
    }
}

fn split(data: &[u8], at: usize) -> Result<(&[u8], &[u8])> {
    if at > data.len() {
        return Err(As2Error::cms("element longer than its input"));
    }
    Ok(data.split_at(at))
}

// ---------------------------------------------------------------------------------------
// Writer

/// Encodes one DER element.
pub(crate) fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_length(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// Appends a DER length (short form below 128, else the shortest long form).
pub(crate) fn push_length(out: &mut Vec<u8>, length: usize) {
    if length < 0x80 {
        // Fits the short form: lengths below 128 are one byte.
        out.push(length as u8);
        return;
    }
    let bytes = length.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let significant = bytes.get(skip..).unwrap_or_default();
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

/// A SEQUENCE of already encoded elements.
pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    encode(TAG_SEQUENCE, &parts.concat())
}

/// A SET OF already encoded elements, sorted as DER requires.
pub(crate) fn set_of(parts: &[&[u8]]) -> Vec<u8> {
    let mut sorted: Vec<&[u8]> = parts.to_vec();
    sorted.sort();
    encode(TAG_SET, &sorted.concat())
}

/// A context-specific constructed (EXPLICIT or IMPLICIT constructed) tag.
pub(crate) fn context(number: u8, content: &[u8]) -> Vec<u8> {
    encode(0xa0 | number, content)
}

pub(crate) fn octet_string(content: &[u8]) -> Vec<u8> {
    encode(TAG_OCTET_STRING, content)
}

pub(crate) fn oid(content: &[u8]) -> Vec<u8> {
    encode(TAG_OID, content)
}

pub(crate) fn null() -> Vec<u8> {
    vec![TAG_NULL, 0]
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let trimmed = magnitude.get(skip..).unwrap_or_default();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|first| first & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    encode(TAG_INTEGER, &content)
}

pub(crate) fn small_integer(value: u64) -> Vec<u8> {
    unsigned_integer(&value.to_be_bytes())
}

/// An AlgorithmIdentifier with the given parameters (already encoded) or none.
pub(crate) fn algorithm(oid_content: &[u8], parameters: Option<&[u8]>) -> Vec<u8> {
    let oid = oid(oid_content);
    match parameters {
        Some(parameters) => sequence(&[&oid, parameters]),
        None => sequence(&[&oid]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_definite_and_indefinite_lengths() {
        let definite = sequence(&[&octet_string(b"abc"), &small_integer(5)]);
        let element = parse_single(&definite).unwrap();
        let mut children = element.children();
        assert_eq!(
            &*children.next().unwrap().unwrap().octets().unwrap(),
            b"abc"
        );
        assert_eq!(children.next().unwrap().unwrap().small_uint().unwrap(), 5);

        let indefinite = [
            0x30, 0x80, 0x24, 0x80, 0x04, 0x01, b'a', 0x04, 0x01, b'b', 0, 0, 0, 0,
        ];
        let element = parse_single(&indefinite).unwrap();
        let inner = element.children().next().unwrap().unwrap();
        assert_eq!(&*inner.octets().unwrap(), b"ab");
        assert_eq!(element.raw.len(), indefinite.len());
    }

    #[test]
    fn long_lengths_round_trip() {
        let big = vec![7u8; 70_000];
        let encoded = octet_string(&big);
        assert_eq!(parse_single(&encoded).unwrap().content.len(), 70_000);
    }

    #[test]
    fn rejects_truncation_and_deep_nesting() {
        assert!(parse_single(&[0x30, 0x05, 0x04]).is_err());
        let mut nested = [0x30u8, 0x80].repeat(200);
        nested.extend(vec![0u8; 400]);
        assert!(parse_single(&nested).is_err());
    }
}
