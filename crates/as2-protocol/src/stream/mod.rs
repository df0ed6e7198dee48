//! Incremental building blocks of the streaming unwrap: each takes its input in chunks of
//! any size and keeps only a bounded carry between them.
//!
//! - [`transfer`]: Content-Transfer-Encoding decoders (base64, quoted-printable, identity).
//! - [`headers`]: finds where a MIME header block ends without holding more than it.
//! - [`multipart`]: splits a multipart body at its delimiter lines.
//! - [`ber`]: a BER tokenizer that hands small elements over whole and streams the
//!   content octets of the large ones.
//! - [`digests`]: several digests of one byte stream, computed in the same pass.

pub(crate) mod ber;
pub(crate) mod digests;
pub(crate) mod headers;
pub(crate) mod multipart;
pub(crate) mod transfer;

use crate::error::Result;

/// Where a stage delivers its output.
pub(crate) type Output<'o> = dyn FnMut(&[u8]) -> Result<()> + 'o;
