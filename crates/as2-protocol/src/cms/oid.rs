//! Object identifiers, as the content bytes of their DER encoding.

use crate::headers::MicAlgorithm;

const fn pkcs(suffix: [u8; 3]) -> [u8; 9] {
    [
        0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, suffix[0], suffix[1], suffix[2],
    ]
}

const fn smime(kind: u8, number: u8) -> [u8; 11] {
    [
        0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, kind, number,
    ]
}

const fn nist(kind: u8, number: u8) -> [u8; 9] {
    [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, kind, number]
}

/// id-data (1.2.840.113549.1.7.1).
pub const DATA: &[u8] = &pkcs([0x01, 0x07, 0x01]);
/// id-signedData (1.2.840.113549.1.7.2).
pub const SIGNED_DATA: &[u8] = &pkcs([0x01, 0x07, 0x02]);
/// id-envelopedData (1.2.840.113549.1.7.3).
pub const ENVELOPED_DATA: &[u8] = &pkcs([0x01, 0x07, 0x03]);
/// id-ct-compressedData (1.2.840.113549.1.9.16.1.9).
pub const COMPRESSED_DATA: &[u8] = &smime(0x01, 0x09);
/// id-ct-authEnvelopedData (1.2.840.113549.1.9.16.1.23).
pub const AUTH_ENVELOPED_DATA: &[u8] = &smime(0x01, 0x17);
/// id-alg-zlibCompress (1.2.840.113549.1.9.16.3.8).
pub const ZLIB: &[u8] = &smime(0x03, 0x08);

/// id-contentType attribute (1.2.840.113549.1.9.3).
pub const ATTR_CONTENT_TYPE: &[u8] = &pkcs([0x01, 0x09, 0x03]);
/// id-messageDigest attribute (1.2.840.113549.1.9.4).
pub const ATTR_MESSAGE_DIGEST: &[u8] = &pkcs([0x01, 0x09, 0x04]);
/// id-signingTime attribute (1.2.840.113549.1.9.5).
pub const ATTR_SIGNING_TIME: &[u8] = &pkcs([0x01, 0x09, 0x05]);

/// rsaEncryption (1.2.840.113549.1.1.1).
pub const RSA_ENCRYPTION: &[u8] = &pkcs([0x01, 0x01, 0x01]);
/// id-RSAES-OAEP (1.2.840.113549.1.1.7).
pub const RSAES_OAEP: &[u8] = &pkcs([0x01, 0x01, 0x07]);
/// id-mgf1 (1.2.840.113549.1.1.8).
pub const MGF1: &[u8] = &pkcs([0x01, 0x01, 0x08]);
/// id-RSASSA-PSS (1.2.840.113549.1.1.10).
pub const RSASSA_PSS: &[u8] = &pkcs([0x01, 0x01, 0x0a]);
/// The hash-with-RSA PKCS #1 v1.5 signature OIDs (md5, sha1, sha256, sha384, sha512, sha224).
pub const RSA_WITH_DIGEST: [&[u8]; 6] = [
    &pkcs([0x01, 0x01, 0x04]),
    &pkcs([0x01, 0x01, 0x05]),
    &pkcs([0x01, 0x01, 0x0b]),
    &pkcs([0x01, 0x01, 0x0c]),
    &pkcs([0x01, 0x01, 0x0d]),
    &pkcs([0x01, 0x01, 0x0e]),
];

/// SHA-256 (2.16.840.1.101.3.4.2.1).
pub const SHA256: &[u8] = &nist(0x02, 0x01);

/// Digest algorithms by OID.
pub const DIGESTS: [(MicAlgorithm, &[u8]); 6] = [
    (
        MicAlgorithm::Md5,
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x05],
    ),
    (MicAlgorithm::Sha1, &[0x2b, 0x0e, 0x03, 0x02, 0x1a]),
    (MicAlgorithm::Sha224, &nist(0x02, 0x04)),
    (MicAlgorithm::Sha256, SHA256),
    (MicAlgorithm::Sha384, &nist(0x02, 0x02)),
    (MicAlgorithm::Sha512, &nist(0x02, 0x03)),
];

/// des-ede3-cbc (1.2.840.113549.3.7).
pub const DES_EDE3_CBC: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x03, 0x07];
/// aes128-CBC.
pub const AES128_CBC: &[u8] = &nist(0x01, 0x02);
/// aes192-CBC.
pub const AES192_CBC: &[u8] = &nist(0x01, 0x16);
/// aes256-CBC.
pub const AES256_CBC: &[u8] = &nist(0x01, 0x2a);
/// aes128-GCM.
pub const AES128_GCM: &[u8] = &nist(0x01, 0x06);
/// aes192-GCM.
pub const AES192_GCM: &[u8] = &nist(0x01, 0x1a);
/// aes256-GCM.
pub const AES256_GCM: &[u8] = &nist(0x01, 0x2e);
