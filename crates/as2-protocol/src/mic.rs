//! The Message Integrity Check returned in MDNs (RFC 4130 7.3.1, RFC 5402 4).
//!
//! What is digested depends on the layering:
//! - signed (in any layering): the signed MIME entity, headers and body, in the exact
//!   form the signature covers (which is the compressed entity when compression was
//!   applied before signing, the uncompressed one when it was applied after);
//! - unsigned but compressed: the decompressed MIME entity, headers and body;
//! - unsigned, uncompressed but encrypted: the decrypted MIME entity, headers and body;
//! - neither: the content of the message body without its headers.

use std::fmt;

use base64::Engine as _;

use crate::error::{As2Error, Result};
use crate::headers::{DispositionNotificationOptions, MicAlgorithm};

/// A MIC as written in the Received-Content-MIC field: base64 digest and algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedContentMic {
    /// The raw digest bytes.
    pub digest: Vec<u8>,
    /// The digest algorithm.
    pub algorithm: MicAlgorithm,
}

impl ReceivedContentMic {
    /// Computes the MIC of `content` with `algorithm`.
    pub fn compute(algorithm: MicAlgorithm, content: &[u8]) -> Result<Self> {
        Ok(Self {
            digest: algorithm.digest(content)?,
            algorithm,
        })
    }

    /// The digest in base64.
    pub fn digest_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.digest)
    }

    /// Lenient parse of `base64, algorithm` (spacing, case and algorithm spellings vary).
    pub fn parse(value: &str) -> Result<Self> {
        let invalid = |reason: &str| As2Error::MalformedHeader {
            header: "Received-Content-MIC",
            reason: reason.to_owned(),
        };
        let (digest, algorithm) = value
            .split_once(',')
            .ok_or_else(|| invalid("missing algorithm"))?;
        let algorithm =
            MicAlgorithm::parse_lenient(algorithm).ok_or_else(|| invalid("unknown algorithm"))?;
        let digest = crate::mime::decode_base64(digest.trim().as_bytes())
            .map_err(|_| invalid("digest is not base64"))?;
        Ok(Self { digest, algorithm })
    }
}

impl fmt::Display for ReceivedContentMic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.digest_base64(), self.algorithm)
    }
}

/// The MIC algorithm for a received message: the first requested algorithm we support
/// (RFC 4130 7.3), else the signature's digest, else SHA-1 (RFC 4130 7.3.1 for unsigned
/// messages). Fails when a `required` request cannot be honoured.
pub fn choose_mic_algorithm(
    requested: Option<&DispositionNotificationOptions>,
    signature_digest: Option<MicAlgorithm>,
    allow_md5: bool,
) -> Result<MicAlgorithm> {
    let requested = match requested {
        Some(options) => options.choose_mic_algorithm(allow_md5)?,
        None => None,
    };
    Ok(requested.or(signature_digest).unwrap_or(MicAlgorithm::Sha1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let mic = ReceivedContentMic::compute(MicAlgorithm::Sha256, b"abc").unwrap();
        let text = mic.to_string();
        assert_eq!(
            text,
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=, sha-256"
        );
        assert_eq!(ReceivedContentMic::parse(&text).unwrap(), mic);
        assert_eq!(
            ReceivedContentMic::parse(" ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0= ,SHA256")
                .unwrap(),
            mic
        );
        assert!(ReceivedContentMic::parse("abc").is_err());
    }

    #[test]
    fn algorithm_choice() {
        let options = DispositionNotificationOptions::parse(
            "signed-receipt-protocol=optional,pkcs7-signature; signed-receipt-micalg=optional,sha512",
        );
        assert_eq!(
            choose_mic_algorithm(Some(&options), Some(MicAlgorithm::Sha1), false).unwrap(),
            MicAlgorithm::Sha512
        );
        assert_eq!(
            choose_mic_algorithm(None, Some(MicAlgorithm::Sha384), false).unwrap(),
            MicAlgorithm::Sha384
        );
        assert_eq!(
            choose_mic_algorithm(None, None, false).unwrap(),
            MicAlgorithm::Sha1
        );
    }
}
