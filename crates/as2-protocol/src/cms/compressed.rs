//! CompressedData (RFC 3274) with zlib, in Rust (flate2), with a decompressed-size limit.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

use super::oid;
use crate::der;
use crate::error::{As2Error, Result};

/// Decompresses a DER ContentInfo holding CompressedData; fails cleanly (with
/// [`As2Error::DecompressionFailed`]) when the output would exceed `max_size` bytes.
pub fn decompress(data: &[u8], max_size: usize) -> Result<Vec<u8>> {
    let info = super::parse_content_info(data)?;
    if info.content_type != oid::COMPRESSED_DATA {
        return Err(As2Error::UnsupportedFormat(
            "CMS content is not CompressedData".into(),
        ));
    }
    let mut fields = info.content.children();
    fields.expect(der::TAG_INTEGER, "version")?;
    let (algorithm, _) = super::read_algorithm(&mut fields, "compressionAlgorithm")?;
    if algorithm != oid::ZLIB {
        return Err(As2Error::DecompressionFailed(
            "compression algorithm other than zlib".into(),
        ));
    }
    let encapsulated = fields.expect(der::TAG_SEQUENCE, "encapContentInfo")?;
    let mut encapsulated_fields = encapsulated.children();
    encapsulated_fields.expect(der::TAG_OID, "eContentType")?;
    let explicit = encapsulated_fields
        .optional(0xa0)?
        .ok_or_else(|| As2Error::DecompressionFailed("CompressedData without content".into()))?;
    let compressed = explicit
        .children()
        .next()?
        .ok_or_else(|| As2Error::DecompressionFailed("empty compressed content".into()))?
        .octets()?;
    inflate(&compressed, max_size)
}

fn inflate(compressed: &[u8], max_size: usize) -> Result<Vec<u8>> {
    let limit = u64::try_from(max_size)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut output = Vec::with_capacity(compressed.len().saturating_mul(4).min(max_size));
    ZlibDecoder::new(compressed)
        .take(limit)
        .read_to_end(&mut output)
        .map_err(|e| As2Error::DecompressionFailed(format!("invalid zlib data: {e}")))?;
    if output.len() > max_size {
        return Err(As2Error::DecompressionFailed(format!(
            "decompressed content exceeds the limit of {max_size} bytes"
        )));
    }
    Ok(output)
}

/// Compresses `content` into a DER ContentInfo holding CompressedData.
pub fn compress(content: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = ZlibEncoder::new(
        Vec::with_capacity(content.len() / 2 + 64),
        Compression::default(),
    );
    encoder
        .write_all(content)
        .and_then(|()| encoder.flush())
        .map_err(|e| As2Error::InvalidArgument(format!("zlib: {e}")))?;
    let compressed = encoder
        .finish()
        .map_err(|e| As2Error::InvalidArgument(format!("zlib: {e}")))?;
    let compressed_data = der::sequence(&[
        &der::small_integer(0),
        &der::algorithm(oid::ZLIB, None),
        &der::sequence(&[
            &der::oid(oid::DATA),
            &der::context(0, &der::octet_string(&compressed)),
        ]),
    ]);
    Ok(super::content_info(oid::COMPRESSED_DATA, &compressed_data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bomb_limit() {
        let content = vec![b'a'; 1_000_000];
        let compressed = compress(&content).unwrap();
        assert!(compressed.len() < 10_000);
        assert_eq!(decompress(&compressed, 1_000_000).unwrap(), content);
        assert!(matches!(
            decompress(&compressed, 999_999),
            Err(As2Error::DecompressionFailed(_))
        ));
    }
}
