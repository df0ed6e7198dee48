//! Damage to an encrypted message, for the tests that it fails the way it must.

/// The offset of the first byte of the wrapped key of an RSA-2048 recipient (an OCTET
/// STRING of 256 bytes, with a two-byte length) among the first bytes of a CMS
/// EnvelopedData or AuthEnvelopedData, where the recipientInfos are.
///
/// # Panics
///
/// When there is none.
pub fn rsa2048_wrapped_key(body: &[u8]) -> usize {
    body.windows(4)
        .take(2048)
        .position(|window| window == [0x04, 0x82, 0x01, 0x00])
        .expect("an RSA-2048 encryptedKey")
        + 4
}

/// `body` with the bits of the byte at `index` changed (never to the same value).
///
/// # Panics
///
/// When `index` is past the end.
pub fn flipped(body: &[u8], index: usize) -> Vec<u8> {
    let mut body = body.to_vec();
    body[index] ^= 0x5a;
    body
}
