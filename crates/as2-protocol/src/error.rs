//! The crate's single error type and its mapping to AS2 dispositions.

use crate::mdn::{DispositionStatus, ProcessingError};

/// The one text of every [`As2Error::DecryptionFailed`].
pub const DECRYPTION_FAILED: &str = "decryption failed";

/// Everything that can go wrong while reading, unwrapping or building AS2 content.
///
/// Each variant maps to the disposition an MDN reports for it through
/// [`As2Error::disposition_status`].
#[derive(Debug, thiserror::Error)]
pub enum As2Error {
    /// A header value could not be parsed.
    #[error("malformed {header} header: {reason}")]
    MalformedHeader {
        /// The header's name.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A header the operation needs is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// The MIME structure is malformed.
    #[error("malformed MIME: {0}")]
    MalformedMime(String),
    /// A DER/BER structure is malformed or does not match the expected CMS shape.
    #[error("malformed CMS: {0}")]
    MalformedCms(String),
    /// A size, depth or count limit was exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The content or its structure is not one we can process.
    #[error("unsupported format: {0}")]
    UnsupportedFormat(String),
    /// An algorithm (cipher, digest, key transport) is not supported or not allowed.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// None of the MIC algorithms requested with importance `required` is supported.
    #[error("none of the required MIC algorithms is supported: {0}")]
    UnsupportedMicAlgorithms(String),
    /// The message could not be decrypted with any of our keys.
    ///
    /// Every failure between the recipient information and the first authenticated byte
    /// (a verified GCM tag or signature) ends as this variant, and its text is always the
    /// same: what reaches the sender must not tell a bad key-transport padding from a bad
    /// content padding or a wrong certificate, or it is a padding oracle (Bleichenbacher,
    /// Vaudenay). The string is the reason, for our own logs only: read it through
    /// [`As2Error::detail`], never put it in an answer.
    #[error("{DECRYPTION_FAILED}")]
    DecryptionFailed(String),
    /// The signature does not verify with any partner certificate.
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    /// A digest or authentication tag does not match the content.
    #[error("integrity check failed: {0}")]
    IntegrityCheckFailed(String),
    /// The compressed data could not be decompressed (or is larger than allowed).
    #[error("decompression failed: {0}")]
    DecompressionFailed(String),
    /// The message lacks a signature or encryption that the policy requires.
    #[error("insufficient message security: {0}")]
    InsufficientMessageSecurity(String),
    /// A caller-supplied argument is invalid (builders only).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// OpenSSL reported an error outside of the cases above.
    #[error("openssl: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

impl As2Error {
    /// The disposition an MDN answering a message that failed with this error carries.
    pub fn disposition_status(&self) -> DispositionStatus {
        match self {
            Self::DecryptionFailed(_) => {
                DispositionStatus::Error(ProcessingError::DecryptionFailed)
            }
            Self::AuthenticationFailed(_) => {
                DispositionStatus::Error(ProcessingError::AuthenticationFailed)
            }
            Self::IntegrityCheckFailed(_) => {
                DispositionStatus::Error(ProcessingError::IntegrityCheckFailed)
            }
            Self::DecompressionFailed(_) => {
                DispositionStatus::Error(ProcessingError::DecompressionFailed)
            }
            Self::InsufficientMessageSecurity(_) => {
                DispositionStatus::Error(ProcessingError::InsufficientMessageSecurity)
            }
            Self::UnsupportedMicAlgorithms(_) => {
                DispositionStatus::Failed("unsupported MIC-algorithms".to_owned())
            }
            Self::UnsupportedFormat(_) => {
                DispositionStatus::Failed("unsupported format".to_owned())
            }
            Self::MalformedHeader { .. }
            | Self::MissingHeader(_)
            | Self::MalformedMime(_)
            | Self::MalformedCms(_)
            | Self::LimitExceeded(_)
            | Self::UnsupportedAlgorithm(_)
            | Self::InvalidArgument(_)
            | Self::Crypto(_) => {
                DispositionStatus::Error(ProcessingError::UnexpectedProcessingError)
            }
        }
    }

    /// The error with the reasons kept for our own logs: the same as its text, except for
    /// [`As2Error::DecryptionFailed`], whose text is always [`DECRYPTION_FAILED`] while
    /// this also says why (a wrong certificate, a bad padding, a failed tag).
    pub fn detail(&self) -> String {
        match self {
            Self::DecryptionFailed(reason) => format!("{DECRYPTION_FAILED}: {reason}"),
            other => other.to_string(),
        }
    }

    /// This error as a [`As2Error::DecryptionFailed`] (its text kept as the detail),
    /// for a failure before the first authenticated byte of encrypted content.
    pub(crate) fn into_decryption_failure(self) -> Self {
        match self {
            Self::DecryptionFailed(_) => self,
            other => Self::DecryptionFailed(other.to_string()),
        }
    }

    pub(crate) fn cms(reason: impl Into<String>) -> Self {
        Self::MalformedCms(reason.into())
    }

    pub(crate) fn mime(reason: impl Into<String>) -> Self {
        Self::MalformedMime(reason.into())
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = As2Error> = std::result::Result<T, E>;
