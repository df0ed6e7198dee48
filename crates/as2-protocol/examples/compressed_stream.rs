//! Writes an AS2 entity holding CompressedData of an EDI-like document of SIZE bytes to
//! stdout, streaming (constant memory), for benchmarks: pipe it into `openssl cms -sign
//! -stream` and `openssl cms -encrypt -stream` for a signed, compressed and encrypted
//! message of any size. The document's SHA-256 is written to stderr at the end.
//!
//! ```text
//! cargo run --release -p as2-protocol --example compressed_stream -- 1073741824 > entity
//! ```

#![allow(clippy::print_stderr)]

use std::io::Write as _;

use as2_protocol::cms::CompressedDataWriter;
use openssl::hash::{Hasher, MessageDigest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size: u64 = std::env::args()
        .nth(1)
        .ok_or("usage: compressed_stream SIZE")?
        .parse()?;
    let stdout = std::io::stdout().lock();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout);
    out.write_all(
        b"Content-Type: application/pkcs7-mime; smime-type=compressed-data; name=smime.p7z\r\n\
          Content-Transfer-Encoding: binary\r\n\r\n",
    )?;
    // Level 1: the sender's compression should not be what a benchmark measures.
    let mut writer = CompressedDataWriter::with_level(out, 1)?;
    writer.write_all(b"Content-Type: application/edi-x12\r\n\r\n")?;
    let mut digest = Hasher::new(MessageDigest::sha256())?;
    let mut batch = String::with_capacity(1 << 20);
    let mut written = 0u64;
    let mut line = 0u64;
    while written < size {
        batch.clear();
        while batch.len() < (1 << 20) - 128 {
            line += 1;
            let _ = std::fmt::Write::write_fmt(
                &mut batch,
                format_args!(
                    "LIN+{line}++{}:EN'\r\nQTY+21:{}'\r\nPRI+AAA:{}.{:02}'\r\n",
                    line * 7919 % 1_000_003,
                    line % 97,
                    line % 1000,
                    line % 100
                ),
            );
        }
        let take = usize::try_from((size - written).min(batch.len() as u64))?;
        let piece = &batch.as_bytes()[..take];
        digest.update(piece)?;
        writer.write_all(piece)?;
        written += take as u64;
    }
    writer.finish()?.flush()?;
    let digest: String = digest
        .finish()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    eprintln!("{digest}");
    Ok(())
}
