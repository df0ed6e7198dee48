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

/// Writes a CompressedData ContentInfo as a stream, the way streaming encoders do: BER
/// indefinite lengths, and the zlib stream in OCTET STRING segments as the compressor
/// produces them, so that content of any size is compressed in constant memory.
/// Write the content, then [`CompressedDataWriter::finish`].
pub struct CompressedDataWriter<W: Write> {
    zlib: ZlibEncoder<Segments<W>>,
}

/// Wraps each write in a primitive OCTET STRING segment.
struct Segments<W: Write>(W);

impl<W: Write> Write for Segments<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let taken = length as usize;
        self.0.write_all(&[der::TAG_OCTET_STRING, 0x84])?;
        self.0.write_all(&length.to_be_bytes())?;
        self.0.write_all(data.get(..taken).unwrap_or_default())?;
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> CompressedDataWriter<W> {
    /// Writes the structure's start to `out`; zlib's default level.
    pub fn new(out: W) -> std::io::Result<Self> {
        Self::with_level(out, Compression::default().level())
    }

    /// Writes the structure's start to `out`; zlib level 0 (none) to 9 (best).
    pub fn with_level(mut out: W, level: u32) -> std::io::Result<Self> {
        // ContentInfo, [0], CompressedData, version 0, zlib, encapContentInfo with data,
        // [0], and the constructed OCTET STRING the segments go into: all indefinite.
        let mut header = vec![0x30, 0x80];
        header.extend(der::oid(oid::COMPRESSED_DATA));
        header.extend([0xa0, 0x80, 0x30, 0x80]);
        header.extend(der::small_integer(0));
        header.extend(der::algorithm(oid::ZLIB, None));
        header.extend([0x30, 0x80]);
        header.extend(der::oid(oid::DATA));
        header.extend([0xa0, 0x80, 0x24, 0x80]);
        out.write_all(&header)?;
        Ok(Self {
            zlib: ZlibEncoder::new(Segments(out), Compression::new(level.min(9))),
        })
    }

    /// The writer the structure goes to (to take what has been written so far, say).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.zlib.get_mut().0
    }

    /// Ends the zlib stream and the structure; returns the writer.
    pub fn finish(self) -> std::io::Result<W> {
        let mut segments = self.zlib.finish()?;
        // End-of-contents for the OCTET STRING, the [0], the encapContentInfo, the
        // CompressedData, the [0] and the ContentInfo.
        segments.0.write_all(&[0; 12])?;
        Ok(segments.0)
    }
}

impl<W: Write> Write for CompressedDataWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.zlib.write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.zlib.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streaming_writer_reads_back_in_any_split() {
        let content = b"Content-Type: text/plain\r\n\r\nline\r\n".repeat(5000);
        let mut writer = CompressedDataWriter::new(Vec::new()).unwrap();
        for piece in content.chunks(777) {
            writer.write_all(piece).unwrap();
        }
        let written = writer.finish().unwrap();
        assert_eq!(written[1], 0x80, "indefinite length");
        assert_eq!(decompress(&written, content.len()).unwrap(), content);
    }

    #[test]
    fn round_trip_and_bomb_limit() {
        let content = vec![b'a'; 1_000_000];
        let mut writer = CompressedDataWriter::new(Vec::new()).unwrap();
        writer.write_all(&content).unwrap();
        let compressed = writer.finish().unwrap();
        assert!(compressed.len() < 10_000);
        assert_eq!(decompress(&compressed, 1_000_000).unwrap(), content);
        assert!(matches!(
            decompress(&compressed, 999_999),
            Err(As2Error::DecompressionFailed(_))
        ));
    }
}
