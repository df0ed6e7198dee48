//! EnvelopedData (CBC ciphers) and AuthEnvelopedData (GCM) with RSA key transport.

use openssl::encrypt::{Decrypter, Encrypter};
use openssl::hash::MessageDigest;
use openssl::pkey::{HasPrivate, HasPublic, PKey, PKeyRef};
use openssl::rsa::Padding;
use openssl::sign::Signer;
use openssl::symm::{Crypter, Mode};
use openssl::x509::X509;

use super::{ContentCipher, Identity, KeyTransport, oid};
use crate::der::{self, Element};
use crate::error::{As2Error, Result};

/// GCM authentication tag length we write (and the longest we accept).
const GCM_TAG_LENGTH: usize = 16;
const GCM_NONCE_LENGTH: usize = 12;

/// Sets the RSA padding of an OpenSSL `Encrypter` or `Decrypter` (same methods, no
/// shared trait) for a key transport.
macro_rules! set_key_transport_padding {
    ($context:expr, $transport:expr) => {
        match $transport {
            KeyTransport::RsaPkcs1v15 => $context.set_rsa_padding(Padding::PKCS1)?,
            KeyTransport::RsaOaep(digest) => {
                $context.set_rsa_padding(Padding::PKCS1_OAEP)?;
                $context.set_rsa_oaep_md(digest.message_digest())?;
                $context.set_rsa_mgf1_md(digest.message_digest())?;
            }
        }
    };
}

/// A decrypted message and how it was protected.
#[derive(Clone, Debug)]
pub struct Decrypted {
    /// The plaintext content (a MIME entity in AS2).
    pub content: Vec<u8>,
    /// The content cipher.
    pub cipher: ContentCipher,
    /// The key transport.
    pub key_transport: KeyTransport,
    /// Index of the identity whose key decrypted the content-encryption key.
    pub identity_index: usize,
}

struct RecipientInfo<'a> {
    identifier: Element<'a>,
    key_transport: KeyTransport,
    encrypted_key: std::borrow::Cow<'a, [u8]>,
}

/// Decrypts a DER ContentInfo holding EnvelopedData or AuthEnvelopedData with the first
/// of `identities` that can open it.
pub fn decrypt(data: &[u8], identities: &[Identity]) -> Result<Decrypted> {
    super::stream::read_enveloped(data, identities)
}

/// Most recipients not naming our certificate that are tried with our key (a partner
/// may address an old certificate of the same key); bounds the RSA work hostile input
/// can cause.
const MAX_UNNAMED_ATTEMPTS: usize = 4;

/// How many recipients naming one of our certificates are tried: a message that names
/// our certificate in many recipients (each costing an RSA private-key operation) gets
/// no more work than this.
const MAX_NAMED_ATTEMPTS: usize = 4;

/// Recipients naming `certificate` first, then a few of the others.
fn ordered_recipients<'e, 'a>(
    recipients: &'e [RecipientInfo<'a>],
    certificate: &X509,
) -> Vec<&'e RecipientInfo<'a>> {
    let (mut named, others): (Vec<_>, Vec<_>) = recipients
        .iter()
        .partition(|r| super::identifies(&r.identifier, certificate));
    named.truncate(MAX_NAMED_ATTEMPTS);
    named.extend(others.into_iter().take(MAX_UNNAMED_ATTEMPTS));
    named
}

/// The content-encryption key, and who opened it.
pub(crate) struct OpenedKey {
    pub key: Vec<u8>,
    pub key_transport: KeyTransport,
    pub identity_index: usize,
    /// Why no recipient opened with our keys, when `key` is the substitute: for our logs
    /// only (see [`open_content_key`]).
    pub substituted: Option<&'static str>,
}

/// Opens the content-encryption key from the recipientInfos SET (raw bytes) with the
/// first of `identities` that can: the content is decrypted once, as it streams, so the
/// key is chosen before it (a key that does not fit the cipher is passed over).
///
/// Whether a wrapped key opened is told to no one (RFC 3218 section 2.3): with RSA
/// PKCS #1 v1.5 on OpenSSL 3.0 (no implicit rejection) an answer that differs would be
/// a Bleichenbacher oracle. So every candidate recipient is tried with every identity,
/// also after one opened (the RSA work depends on how many there are, not on what they
/// hold), and when none opens a substitute key of the cipher's length takes the place
/// of the real one: the failure then shows only as content that does not decrypt, the
/// same failure as a key that opened but is not the one the content was encrypted
/// with. The substitute is derived from our private key and the wrapped key (as
/// OpenSSL 3.2's implicit rejection does), not drawn at random: a resent message fails
/// the same way each time, as a wrapped key that opens to a wrong key would, so resending
/// does not tell the two apart either.
///
/// `refuse_pkcs1v15` passes over recipients with RSA PKCS #1 v1.5 key transport; a
/// message with no other recipient is refused with insufficient-message-security, a
/// decision on the algorithm identifiers, which are in the clear.
pub(crate) fn open_content_key(
    recipient_set: &[u8],
    identities: &[Identity],
    cipher: ContentCipher,
    refuse_pkcs1v15: bool,
) -> Result<OpenedKey> {
    let set = der::parse_single(recipient_set)?;
    let mut recipients = parse_recipients(&set)?;
    if refuse_pkcs1v15 {
        recipients.retain(|recipient| recipient.key_transport != KeyTransport::RsaPkcs1v15);
        if recipients.is_empty() {
            return Err(As2Error::InsufficientMessageSecurity(
                "RSA PKCS #1 v1.5 key transport is not allowed for this partnership".into(),
            ));
        }
    }
    let Some(first_identity) = identities.first() else {
        return Err(As2Error::DecryptionFailed(
            "no decryption key configured".into(),
        ));
    };
    let key_length = cipher.openssl().key_len();
    let first_recipient = ordered_recipients(&recipients, &first_identity.certificate)
        .into_iter()
        .next()
        .ok_or_else(|| As2Error::DecryptionFailed("no RSA key-transport recipient".into()))?;
    // Computed whether or not it is needed.
    let substitute = substitute_key(first_identity, &first_recipient.encrypted_key, key_length)?;
    let mut opened: Option<OpenedKey> = None;
    let mut reason = "the content-encryption key does not decrypt with our keys";
    for (identity_index, identity) in identities.iter().enumerate() {
        for recipient in ordered_recipients(&recipients, &identity.certificate) {
            match decrypt_key(&identity.key, recipient) {
                Ok(key) if key.len() == key_length => {
                    if opened.is_none() {
                        opened = Some(OpenedKey {
                            key,
                            key_transport: recipient.key_transport,
                            identity_index,
                            substituted: None,
                        });
                    }
                }
                Ok(_) => reason = "the content-encryption key has the wrong length",
                Err(_) => {}
            }
        }
    }
    Ok(opened.unwrap_or(OpenedKey {
        key: substitute,
        key_transport: first_recipient.key_transport,
        identity_index: 0,
        substituted: Some(reason),
    }))
}

/// The key used in place of a content-encryption key that did not open (see
/// [`open_content_key`]): an HMAC, keyed by a digest of our private key, over the
/// wrapped key; unpredictable without our key, the same for the same message.
fn substitute_key(identity: &Identity, wrapped: &[u8], length: usize) -> Result<Vec<u8>> {
    let secret = key_secret(identity)?;
    let hmac_key = PKey::hmac(&secret)?;
    let mut signer = Signer::new(MessageDigest::sha512(), &hmac_key)?;
    signer.update(b"as2 substitute content-encryption key (RFC 3218 2.3)")?;
    signer.update(wrapped)?;
    let mut substitute = signer.sign_to_vec()?;
    if substitute.len() < length {
        return Err(As2Error::DecryptionFailed(
            "no substitute key of that length".into(),
        ));
    }
    substitute.truncate(length);
    Ok(substitute)
}

/// The SHA-512 of `identity`'s private key (DER), the HMAC key of [`substitute_key`].
///
/// Kept per certificate, at most [`KEY_SECRETS`] of them: encoding a private key goes
/// through OpenSSL 3's encoder lookup (providers searched under locks), which cost about
/// 3% of the edge's CPU when done for every message.
fn key_secret(identity: &Identity) -> Result<[u8; 64]> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static SECRETS: OnceLock<Mutex<HashMap<[u8; 32], [u8; 64]>>> = OnceLock::new();
    let certificate = openssl::sha::sha256(&identity.certificate.to_der()?);
    let secrets = SECRETS.get_or_init(Mutex::default);
    if let Some(secret) = secrets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&certificate)
    {
        return Ok(*secret);
    }
    let digest = openssl::hash::hash(MessageDigest::sha512(), &identity.key.private_key_to_der()?)?;
    let mut secret = [0_u8; 64];
    secret.copy_from_slice(&digest);
    let mut secrets = secrets.lock().unwrap_or_else(PoisonError::into_inner);
    if secrets.len() >= KEY_SECRETS {
        secrets.clear();
    }
    secrets.insert(certificate, secret);
    Ok(secret)
}

/// Identities whose [`key_secret`] is kept.
const KEY_SECRETS: usize = 64;

fn parse_recipients<'a>(set: &Element<'a>) -> Result<Vec<RecipientInfo<'a>>> {
    let mut recipients = Vec::new();
    let mut reader = set.children();
    while let Some(recipient) = reader.next()? {
        if recipient.tag != der::TAG_SEQUENCE {
            continue; // key agreement, KEK and password recipients are not for RSA keys
        }
        if recipients.len() >= 64 {
            return Err(As2Error::LimitExceeded("too many recipients".into()));
        }
        let mut fields = recipient.children();
        fields.expect(der::TAG_INTEGER, "RecipientInfo version")?;
        let identifier = fields
            .next()?
            .ok_or_else(|| As2Error::cms("missing recipient identifier"))?;
        let (algorithm, parameters) = super::read_algorithm(&mut fields, "keyEncryptionAlgorithm")?;
        let key_transport = key_transport(algorithm, parameters.as_ref())?;
        let encrypted_key = fields
            .next()?
            .ok_or_else(|| As2Error::cms("missing encryptedKey"))?
            .octets()?;
        recipients.push(RecipientInfo {
            identifier,
            key_transport,
            encrypted_key,
        });
    }
    if recipients.is_empty() {
        return Err(As2Error::DecryptionFailed(
            "no RSA key-transport recipient".into(),
        ));
    }
    Ok(recipients)
}

fn key_transport(algorithm: &[u8], parameters: Option<&Element<'_>>) -> Result<KeyTransport> {
    if algorithm == oid::RSA_ENCRYPTION {
        return Ok(KeyTransport::RsaPkcs1v15);
    }
    if algorithm != oid::RSAES_OAEP {
        return Err(As2Error::UnsupportedAlgorithm(
            "key transport other than RSA".into(),
        ));
    }
    let parameters = super::read_rsa_parameters(parameters)?;
    if parameters.hash != parameters.mgf1_hash {
        return Err(As2Error::UnsupportedAlgorithm(
            "OAEP with different hash and MGF1 hash".into(),
        ));
    }
    if parameters.rest.iter().any(|field| field.tag == 0xa2) {
        return Err(As2Error::UnsupportedAlgorithm("OAEP with a label".into()));
    }
    Ok(KeyTransport::RsaOaep(parameters.hash))
}

/// The contentEncryptionAlgorithm of an (auth)encryptedContentInfo.
pub(crate) struct ContentEncryption {
    pub cipher: ContentCipher,
    /// IV (CBC) or nonce (GCM).
    pub iv: Vec<u8>,
    /// GCM only: the tag length its parameters give.
    pub tag_length: Option<usize>,
}

/// Reads a contentEncryptionAlgorithm AlgorithmIdentifier (raw bytes).
pub(crate) fn parse_content_encryption(raw: &[u8]) -> Result<ContentEncryption> {
    let mut reader = der::Reader::new(raw);
    let (algorithm, parameters) = super::read_algorithm(&mut reader, "contentEncryptionAlgorithm")?;
    let cipher = cipher_from_oid(algorithm)?;
    let parameters = parameters.ok_or_else(|| As2Error::cms("cipher without parameters"))?;
    let (iv, tag_length) = if cipher.is_authenticated() {
        let mut gcm = parameters.children();
        let nonce = gcm
            .expect(der::TAG_OCTET_STRING, "GCM nonce")?
            .octets()?
            .into_owned();
        let tag_length = match gcm.next()? {
            Some(length) => usize::try_from(length.small_uint()?).unwrap_or(usize::MAX),
            None => 12,
        };
        (nonce, Some(tag_length))
    } else {
        (parameters.octets()?.into_owned(), None)
    };
    Ok(ContentEncryption {
        cipher,
        iv,
        tag_length,
    })
}

/// Decrypts content as it streams.
pub(crate) struct ContentDecryptor {
    crypter: Crypter,
    cipher: ContentCipher,
    block_size: usize,
    buffer: Vec<u8>,
}

impl ContentDecryptor {
    pub(crate) fn new(encryption: &ContentEncryption, key: &[u8]) -> Result<Self> {
        let cipher = encryption.cipher.openssl();
        if key.len() != cipher.key_len() {
            return Err(As2Error::DecryptionFailed(
                "content-encryption key has the wrong length".into(),
            ));
        }
        if encryption.cipher.is_authenticated() {
            if encryption.iv.is_empty() {
                return Err(As2Error::DecryptionFailed(
                    "bad GCM nonce or tag length".into(),
                ));
            }
        } else if Some(encryption.iv.len()) != cipher.iv_len() {
            return Err(As2Error::DecryptionFailed("IV has the wrong length".into()));
        }
        let crypter = Crypter::new(cipher, Mode::Decrypt, key, Some(&encryption.iv))
            .map_err(|_| As2Error::DecryptionFailed("the cipher does not accept the key".into()))?;
        Ok(Self {
            crypter,
            cipher: encryption.cipher,
            block_size: cipher.block_size(),
            buffer: Vec::new(),
        })
    }

    pub(crate) fn update(
        &mut self,
        data: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        for piece in data.chunks(64 * 1024) {
            self.buffer.resize(piece.len() + self.block_size, 0);
            let written = self
                .crypter
                .update(piece, &mut self.buffer)
                .map_err(|_| As2Error::DecryptionFailed("content does not decrypt".into()))?;
            if written > 0 {
                out(self.buffer.get(..written).unwrap_or_default())?;
            }
        }
        Ok(())
    }

    /// Checks the padding (CBC) or the tag (GCM) and hands on the last bytes.
    pub(crate) fn finish(
        &mut self,
        tag: Option<&[u8]>,
        out: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        if self.cipher.is_authenticated() {
            let tag = tag.ok_or_else(|| As2Error::cms("missing mac"))?;
            if tag.len() < 12 || tag.len() > GCM_TAG_LENGTH {
                return Err(As2Error::DecryptionFailed(
                    "bad GCM nonce or tag length".into(),
                ));
            }
            self.crypter
                .set_tag(tag)
                .map_err(|_| As2Error::DecryptionFailed("GCM authentication failed".into()))?;
        }
        self.buffer.resize(2 * self.block_size.max(16), 0);
        let written = self.crypter.finalize(&mut self.buffer).map_err(|_| {
            As2Error::DecryptionFailed(if self.cipher.is_authenticated() {
                "GCM authentication failed".into()
            } else {
                "content does not decrypt (bad key or padding)".into()
            })
        })?;
        if written > 0 {
            out(self.buffer.get(..written).unwrap_or_default())?;
        }
        Ok(())
    }
}

fn cipher_from_oid(algorithm: &[u8]) -> Result<ContentCipher> {
    CIPHER_OIDS
        .iter()
        .find(|(_, o)| *o == algorithm)
        .map(|(cipher, _)| *cipher)
        .ok_or_else(|| {
            As2Error::UnsupportedAlgorithm(
                "content cipher (RC2, RC4 and others are not supported)".into(),
            )
        })
}

const CIPHER_OIDS: [(ContentCipher, &[u8]); 7] = [
    (ContentCipher::TripleDesCbc, oid::DES_EDE3_CBC),
    (ContentCipher::Aes128Cbc, oid::AES128_CBC),
    (ContentCipher::Aes192Cbc, oid::AES192_CBC),
    (ContentCipher::Aes256Cbc, oid::AES256_CBC),
    (ContentCipher::Aes128Gcm, oid::AES128_GCM),
    (ContentCipher::Aes192Gcm, oid::AES192_GCM),
    (ContentCipher::Aes256Gcm, oid::AES256_GCM),
];

fn cipher_oid(cipher: ContentCipher) -> &'static [u8] {
    CIPHER_OIDS
        .iter()
        .find(|(c, _)| *c == cipher)
        .map(|(_, o)| *o)
        .unwrap_or(oid::AES256_CBC)
}

fn decrypt_key<K: HasPrivate>(key: &PKeyRef<K>, recipient: &RecipientInfo<'_>) -> Result<Vec<u8>> {
    let failed = |_| {
        As2Error::DecryptionFailed(
            "the content-encryption key does not decrypt with our key".into(),
        )
    };
    let mut decrypter = Decrypter::new(key).map_err(failed)?;
    set_key_transport_padding!(decrypter, recipient.key_transport);
    let length = decrypter
        .decrypt_len(&recipient.encrypted_key)
        .map_err(failed)?;
    let mut plain = vec![0u8; length];
    let written = decrypter
        .decrypt(&recipient.encrypted_key, &mut plain)
        .map_err(failed)?;
    plain.truncate(written);
    Ok(plain)
}

/// Ciphertext bytes gathered into one OCTET STRING segment of the encryptedContent
/// before it is written (whatever the sizes of the writes, so the encoding does not
/// depend on them).
const SEGMENT: usize = 16 * 1024;

/// Writes an EnvelopedData (CBC ciphers) or AuthEnvelopedData (GCM) ContentInfo as a
/// stream, the way `openssl cms -encrypt -stream` does: BER with indefinite lengths for
/// the ContentInfo, its `[0]`, the (Auth)EnvelopedData and the encryptedContentInfo; the
/// recipientInfos in DER at the start (the content-encryption key is generated and
/// wrapped first); the ciphertext in primitive OCTET STRING segments inside an
/// indefinite `[0]`; for GCM the tag in the mac field after the content. Memory stays
/// bounded by one segment whatever the content size.
pub(crate) struct EnvelopedWriter {
    crypter: Crypter,
    authenticated: bool,
    /// Room for one segment of ciphertext and the block more the cipher may hand back.
    segment: Vec<u8>,
    /// How much of `segment` holds ciphertext not yet written.
    filled: usize,
}

impl EnvelopedWriter {
    /// Generates the content-encryption key (odd parity for triple DES), wraps it for
    /// `recipient` and appends the structure's start to `out`.
    pub(crate) fn new(
        recipient: &X509,
        cipher: ContentCipher,
        key_transport: KeyTransport,
        out: &mut Vec<u8>,
    ) -> Result<Self> {
        let openssl_cipher = cipher.openssl();
        let mut key = vec![0u8; openssl_cipher.key_len()];
        openssl::rand::rand_bytes(&mut key)?;
        if cipher == ContentCipher::TripleDesCbc {
            set_odd_parity(&mut key);
        }
        let public_key = recipient.public_key()?;
        let recipient_info = der::sequence(&[
            &der::small_integer(0),
            &super::issuer_and_serial(recipient)?,
            &key_encryption_algorithm(key_transport),
            &der::octet_string(&encrypt_key(&public_key, key_transport, &key)?),
        ]);
        let recipients = der::set_of(&[&recipient_info]);
        let (content_type, iv, parameters) = if cipher.is_authenticated() {
            let mut nonce = vec![0u8; GCM_NONCE_LENGTH];
            openssl::rand::rand_bytes(&mut nonce)?;
            let parameters = der::sequence(&[
                &der::octet_string(&nonce),
                &der::small_integer(GCM_TAG_LENGTH as u64),
            ]);
            (oid::AUTH_ENVELOPED_DATA, nonce, parameters)
        } else {
            let mut iv = vec![0u8; openssl_cipher.iv_len().unwrap_or(16)];
            openssl::rand::rand_bytes(&mut iv)?;
            let parameters = der::octet_string(&iv);
            (oid::ENVELOPED_DATA, iv, parameters)
        };
        let crypter = Crypter::new(openssl_cipher, Mode::Encrypt, &key, Some(&iv))?;
        // ContentInfo, [0], (Auth)EnvelopedData: indefinite.
        out.extend([0x30, 0x80]);
        out.extend(der::oid(content_type));
        out.extend([0xa0, 0x80, 0x30, 0x80]);
        out.extend(der::small_integer(0));
        out.extend(recipients);
        // (auth)encryptedContentInfo, and the encryptedContent [0] IMPLICIT OCTET STRING
        // in its constructed form: indefinite.
        out.extend([0x30, 0x80]);
        out.extend(der::oid(oid::DATA));
        out.extend(der::algorithm(cipher_oid(cipher), Some(&parameters)));
        out.extend([0xa0, 0x80]);
        Ok(Self {
            crypter,
            authenticated: cipher.is_authenticated(),
            segment: vec![0; SEGMENT + 2 * openssl_cipher.block_size().max(16)],
            filled: 0,
        })
    }

    /// Encrypts the next content bytes; appends the segments completed so far to `out`.
    pub(crate) fn update(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        while !data.is_empty() {
            let room = SEGMENT.saturating_sub(self.filled).max(1);
            let (piece, rest) = data.split_at(room.min(data.len()));
            // The cipher may hand back up to a block more than it is given: the buffer
            // has that room past SEGMENT.
            let space = self
                .segment
                .get_mut(self.filled..)
                .ok_or_else(|| As2Error::cms("segment buffer"))?;
            self.filled += self.crypter.update(piece, space)?;
            if self.filled >= SEGMENT {
                self.write_segment(out);
            }
            data = rest;
        }
        Ok(())
    }

    /// Ends the encryption (CBC padding; the GCM tag) and the structure.
    pub(crate) fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        let space = self
            .segment
            .get_mut(self.filled..)
            .ok_or_else(|| As2Error::cms("segment buffer"))?;
        self.filled += self.crypter.finalize(space)?;
        self.write_segment(out);
        // End-of-contents for the encryptedContent and the encryptedContentInfo.
        out.extend([0; 4]);
        if self.authenticated {
            let mut tag = [0u8; GCM_TAG_LENGTH];
            self.crypter.get_tag(&mut tag)?;
            out.extend(der::octet_string(&tag));
        }
        // End-of-contents for the (Auth)EnvelopedData, the [0] and the ContentInfo.
        out.extend([0; 6]);
        Ok(())
    }

    fn write_segment(&mut self, out: &mut Vec<u8>) {
        let ciphertext = self.segment.get(..self.filled).unwrap_or_default();
        if ciphertext.is_empty() {
            return;
        }
        out.push(der::TAG_OCTET_STRING);
        der::push_length(out, ciphertext.len());
        out.extend_from_slice(ciphertext);
        self.filled = 0;
    }
}

fn key_encryption_algorithm(transport: KeyTransport) -> Vec<u8> {
    match transport {
        KeyTransport::RsaPkcs1v15 => der::algorithm(oid::RSA_ENCRYPTION, Some(&der::null())),
        KeyTransport::RsaOaep(digest) => der::algorithm(
            oid::RSAES_OAEP,
            Some(&super::write_rsa_parameters(digest, &[])),
        ),
    }
}

fn encrypt_key<K: HasPublic>(
    public_key: &PKeyRef<K>,
    transport: KeyTransport,
    key: &[u8],
) -> Result<Vec<u8>> {
    let mut encrypter = Encrypter::new(public_key)?;
    set_key_transport_padding!(encrypter, transport);
    let mut out = vec![0u8; encrypter.encrypt_len(key)?];
    let written = encrypter.encrypt(key, &mut out)?;
    out.truncate(written);
    Ok(out)
}

/// DES keys carry odd parity in the low bit of each byte; some Java stacks check it.
fn set_odd_parity(key: &mut [u8]) {
    for byte in key {
        let high_bits_ones = (*byte & 0xfe).count_ones();
        *byte = (*byte & 0xfe) | u8::from(high_bits_ones % 2 == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streamed_triple_des_key_has_odd_parity_and_opens_with_the_recipient_key() {
        let material = as2_testkit::certificates::TestCertificate::valid("recipient").generate();
        let identity = Identity {
            key: material.key,
            certificate: material.certificate,
        };
        for key_transport in [
            KeyTransport::RsaPkcs1v15,
            KeyTransport::RsaOaep(crate::headers::MicAlgorithm::Sha256),
        ] {
            let mut out = Vec::new();
            let writer = EnvelopedWriter::new(
                &identity.certificate,
                ContentCipher::TripleDesCbc,
                key_transport,
                &mut out,
            )
            .unwrap();
            writer.finish(&mut out).unwrap();
            // ContentInfo, OID, [0], EnvelopedData (all indefinite), version, then the
            // recipientInfos SET.
            let oid_length = der::oid(oid::ENVELOPED_DATA).len();
            let start = 2 + oid_length + 4 + 3;
            let set = der::Reader::new(&out[start..]).next().unwrap().unwrap();
            assert_eq!(set.tag, der::TAG_SET);
            let opened = open_content_key(
                set.raw,
                std::slice::from_ref(&identity),
                ContentCipher::TripleDesCbc,
                false,
            )
            .unwrap();
            assert_eq!(opened.key_transport, key_transport);
            assert!(opened.substituted.is_none());
            assert_eq!(opened.key.len(), 24);
            assert!(opened.key.iter().all(|byte| byte.count_ones() % 2 == 1));
        }
    }

    /// The recipientInfos SET of a message written for `recipient`.
    fn recipient_set(recipient: &X509, key_transport: KeyTransport) -> Vec<u8> {
        let mut out = Vec::new();
        let writer =
            EnvelopedWriter::new(recipient, ContentCipher::Aes256Cbc, key_transport, &mut out)
                .unwrap();
        writer.finish(&mut out).unwrap();
        let start = 2 + der::oid(oid::ENVELOPED_DATA).len() + 4 + 3;
        der::Reader::new(&out[start..])
            .next()
            .unwrap()
            .unwrap()
            .raw
            .to_vec()
    }

    #[test]
    fn a_key_that_does_not_open_is_replaced_by_the_same_substitute_each_time() {
        let identity = |name| {
            let material = as2_testkit::certificates::TestCertificate::valid(name).generate();
            Identity {
                key: material.key,
                certificate: material.certificate,
            }
        };
        let ours = identity("ours");
        let theirs = identity("theirs");
        let ours = std::slice::from_ref(&ours);
        let cipher = ContentCipher::Aes256Cbc;
        let set = recipient_set(&theirs.certificate, KeyTransport::RsaPkcs1v15);
        let first = open_content_key(&set, ours, cipher, false).unwrap();
        let again = open_content_key(&set, ours, cipher, false).unwrap();
        assert!(first.substituted.is_some());
        assert_eq!(first.key.len(), 32);
        assert_eq!(first.key, again.key);
        // Another wrapped key, another substitute.
        let other = recipient_set(&theirs.certificate, KeyTransport::RsaPkcs1v15);
        let other = open_content_key(&other, ours, cipher, false).unwrap();
        assert_ne!(first.key, other.key);
        // Refused before any RSA work when only PKCS #1 v1.5 is offered.
        assert!(matches!(
            open_content_key(&set, ours, cipher, true),
            Err(As2Error::InsufficientMessageSecurity(_))
        ));
        let oaep = recipient_set(
            &theirs.certificate,
            KeyTransport::RsaOaep(crate::headers::MicAlgorithm::Sha256),
        );
        assert!(
            open_content_key(&oaep, ours, cipher, true)
                .unwrap()
                .substituted
                .is_some()
        );
    }
}
