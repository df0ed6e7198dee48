//! CompressedData (RFC 3274) with zlib, in Rust (flate2), with a decompressed-size limit.

use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::{Compression, Decompress, FlushDecompress, Status};

use super::oid;
use crate::der;
use crate::error::{As2Error, Result};

/// Decompresses a DER ContentInfo holding CompressedData; fails cleanly (with
/// [`As2Error::DecompressionFailed`]) when the output would exceed `max_size` bytes.
pub fn decompress(data: &[u8], max_size: usize) -> Result<Vec<u8>> {
    super::stream::read_compressed(data, max_size as u64)
}

/// Decompressed output may exceed this before the ratio cap applies (small documents
/// compress well without being bombs).
const RATIO_GRACE: u64 = 1024 * 1024;

/// Inflates zlib data as it streams, within a size limit and a compression-ratio cap.
pub(crate) struct Inflater {
    zlib: Decompress,
    buffer: Vec<u8>,
    max_size: u64,
    max_ratio: u64,
    ended: bool,
}

impl Inflater {
    /// `max_size`: most output bytes; `max_ratio`: most output bytes per input byte once
    /// past the first MiB.
    pub(crate) fn new(max_size: u64, max_ratio: u64) -> Self {
        Self {
            zlib: Decompress::new(true),
            buffer: vec![0; 64 * 1024],
            max_size,
            max_ratio,
            ended: false,
        }
    }

    pub(crate) fn push(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        while !self.ended {
            let (read_before, written_before) = (self.zlib.total_in(), self.zlib.total_out());
            let status = self
                .zlib
                .decompress(input, &mut self.buffer, FlushDecompress::None)
                .map_err(|e| As2Error::DecompressionFailed(format!("invalid zlib data: {e}")))?;
            let read = usize::try_from(self.zlib.total_in() - read_before).unwrap_or(usize::MAX);
            let written =
                usize::try_from(self.zlib.total_out() - written_before).unwrap_or(usize::MAX);
            input = input.get(read..).unwrap_or_default();
            self.check_limits()?;
            if written > 0 {
                out(self.buffer.get(..written).unwrap_or_default())?;
            }
            if status == Status::StreamEnd {
                self.ended = true;
            }
            // Done with this input once it is used up and the output buffer did not fill.
            if (input.is_empty() && written < self.buffer.len()) || (read == 0 && written == 0) {
                break;
            }
        }
        Ok(())
    }

    fn check_limits(&self) -> Result<()> {
        let (read, written) = (self.zlib.total_in(), self.zlib.total_out());
        if written > self.max_size {
            return Err(As2Error::DecompressionFailed(format!(
                "decompressed content exceeds the limit of {} bytes",
                self.max_size
            )));
        }
        if written > RATIO_GRACE && written / read.max(1) >= self.max_ratio {
            return Err(As2Error::DecompressionFailed(format!(
                "compression ratio above {}:1 (a decompression bomb?)",
                self.max_ratio
            )));
        }
        Ok(())
    }

    /// The compressed stream must have ended.
    pub(crate) fn finish(&mut self, out: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.push(&[], out)?;
        if !self.ended {
            return Err(As2Error::DecompressionFailed("truncated zlib data".into()));
        }
        Ok(())
    }
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
