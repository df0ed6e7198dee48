//! The routing service's enums in `as2-protocol` terms, and back.
//!
//! Partnerships name digests, ciphers and compression with the gRPC enums
//! (`as2.routing.v1`); building and checking messages needs the protocol library's
//! types. An unspecified digest or cipher is the gateway's default (SHA-256, AES-256-CBC).

use as2_protocol::MicAlgorithm;
use as2_protocol::cms::ContentCipher;
use as2_protocol::outbound::CompressionOrder;
use as2_rpc::routing::v1::{Compression, EncryptionCipher, SigningDigest};

/// The digest a partnership names; unspecified is SHA-256.
pub fn mic_algorithm(digest: SigningDigest) -> MicAlgorithm {
    match digest {
        SigningDigest::Unspecified | SigningDigest::Sha256 => MicAlgorithm::Sha256,
        SigningDigest::Md5 => MicAlgorithm::Md5,
        SigningDigest::Sha1 => MicAlgorithm::Sha1,
        SigningDigest::Sha224 => MicAlgorithm::Sha224,
        SigningDigest::Sha384 => MicAlgorithm::Sha384,
        SigningDigest::Sha512 => MicAlgorithm::Sha512,
    }
}

/// How a partnership names `algorithm`.
pub fn signing_digest(algorithm: MicAlgorithm) -> SigningDigest {
    match algorithm {
        MicAlgorithm::Md5 => SigningDigest::Md5,
        MicAlgorithm::Sha1 => SigningDigest::Sha1,
        MicAlgorithm::Sha224 => SigningDigest::Sha224,
        MicAlgorithm::Sha256 => SigningDigest::Sha256,
        MicAlgorithm::Sha384 => SigningDigest::Sha384,
        MicAlgorithm::Sha512 => SigningDigest::Sha512,
    }
}

/// The cipher a partnership names; unspecified is AES-256-CBC.
pub fn content_cipher(cipher: EncryptionCipher) -> ContentCipher {
    match cipher {
        EncryptionCipher::Unspecified | EncryptionCipher::Aes256Cbc => ContentCipher::Aes256Cbc,
        EncryptionCipher::DesEde3Cbc => ContentCipher::TripleDesCbc,
        EncryptionCipher::Aes128Cbc => ContentCipher::Aes128Cbc,
        EncryptionCipher::Aes192Cbc => ContentCipher::Aes192Cbc,
        EncryptionCipher::Aes128Gcm => ContentCipher::Aes128Gcm,
        EncryptionCipher::Aes256Gcm => ContentCipher::Aes256Gcm,
    }
}

/// How a partnership names `cipher`; `None` for a cipher partnerships cannot name
/// (AES-192-GCM).
pub fn encryption_cipher(cipher: ContentCipher) -> Option<EncryptionCipher> {
    Some(match cipher {
        ContentCipher::TripleDesCbc => EncryptionCipher::DesEde3Cbc,
        ContentCipher::Aes128Cbc => EncryptionCipher::Aes128Cbc,
        ContentCipher::Aes192Cbc => EncryptionCipher::Aes192Cbc,
        ContentCipher::Aes256Cbc => EncryptionCipher::Aes256Cbc,
        ContentCipher::Aes128Gcm => EncryptionCipher::Aes128Gcm,
        ContentCipher::Aes256Gcm => EncryptionCipher::Aes256Gcm,
        ContentCipher::Aes192Gcm => return None,
    })
}

/// Where a partnership compresses; `None` without compression.
pub fn compression_order(compression: Compression) -> Option<CompressionOrder> {
    match compression {
        Compression::Unspecified => None,
        Compression::BeforeSigning => Some(CompressionOrder::BeforeSigning),
        Compression::AfterSigning => Some(CompressionOrder::AfterSigning),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_convert_both_ways() {
        for algorithm in [
            MicAlgorithm::Md5,
            MicAlgorithm::Sha1,
            MicAlgorithm::Sha224,
            MicAlgorithm::Sha256,
            MicAlgorithm::Sha384,
            MicAlgorithm::Sha512,
        ] {
            assert_eq!(mic_algorithm(signing_digest(algorithm)), algorithm);
        }
        assert_eq!(
            mic_algorithm(SigningDigest::Unspecified),
            MicAlgorithm::Sha256
        );
    }

    #[test]
    fn ciphers_convert_both_ways() {
        for cipher in [
            EncryptionCipher::DesEde3Cbc,
            EncryptionCipher::Aes128Cbc,
            EncryptionCipher::Aes192Cbc,
            EncryptionCipher::Aes256Cbc,
            EncryptionCipher::Aes128Gcm,
            EncryptionCipher::Aes256Gcm,
        ] {
            assert_eq!(encryption_cipher(content_cipher(cipher)), Some(cipher));
        }
        assert_eq!(
            content_cipher(EncryptionCipher::Unspecified),
            ContentCipher::Aes256Cbc
        );
        assert_eq!(encryption_cipher(ContentCipher::Aes192Gcm), None);
    }

    #[test]
    fn compression_names_its_order() {
        assert_eq!(compression_order(Compression::Unspecified), None);
        assert_eq!(
            compression_order(Compression::AfterSigning),
            Some(CompressionOrder::AfterSigning)
        );
    }
}
