//! The AS2 (RFC 4130) protocol: pure functions over bytes, no I/O.
//!
//! - [`headers`]: AS2 identifiers, Message-ID, MDN request options, MIC algorithms.
//! - [`mime`]: a MIME reader that keeps the exact received bytes of every part.
//! - [`cms`]: signed, enveloped, auth-enveloped and compressed CMS through OpenSSL.
//! - [`mic`]: the Received-Content-MIC of RFC 4130 7.3.1 and RFC 5402 4.
//! - [`unwrap`]: decrypt, decompress, verify, decompress whatever layering arrives.
//! - [`mdn`]: build, sign, parse and verify MDNs.
//! - [`outbound`]: build signed / encrypted / compressed AS2 messages, streamed in bounded
//!   memory ([`outbound::MessageWriter`]) or in one buffer ([`outbound::build_message`]).
//!
//! Every failure is an [`As2Error`], which maps to the disposition an MDN reports.

#![forbid(unsafe_code)]

pub mod cms;
mod der;
mod error;
pub mod headers;
pub mod mdn;
pub mod mic;
pub mod mime;
pub mod outbound;
mod stream;
pub mod unwrap;

pub use error::{As2Error, DECRYPTION_FAILED, Result};
pub use headers::{
    As2Id, As2RequestHeaders, DispositionNotificationOptions, MessageId, MicAlgorithm,
};
pub use mdn::{Disposition, DispositionStatus, ProcessingError};
pub use mic::ReceivedContentMic;
pub use unwrap::{UnwrapContext, UnwrappedMessage, unwrap_message};
