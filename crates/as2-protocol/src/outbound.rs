//! Building outbound AS2 messages: compress, sign, compress, encrypt (RFC 4130, RFC 5402).
//!
//! [`MessageWriter`] writes a message as a stream, the document passed in pieces, in
//! bounded memory whatever its size; [`build_message`] is the same writer given the
//! whole payload at once.

mod writer;

use openssl::x509::X509;

use crate::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use crate::error::{As2Error, Result};
use crate::headers::{
    As2Id, DispositionNotificationOptions, MessageId, MicAlgorithm, ReceiptDeliveryOption,
};
use crate::mic::ReceivedContentMic;

pub use writer::MessageWriter;
pub(crate) use writer::MultipartSigner;

/// Where to compress relative to signing (RFC 5402).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionOrder {
    /// Compress the payload, then sign the compressed entity.
    BeforeSigning,
    /// Sign the payload, then compress the signed message.
    AfterSigning,
}

/// How to sign.
#[derive(Clone, Copy, Debug)]
pub struct Signing<'a> {
    /// Our key and certificate.
    pub identity: &'a Identity,
    /// The digest (also the `micalg` parameter).
    pub digest: MicAlgorithm,
    /// PKCS #1 v1.5 or PSS.
    pub scheme: SignatureScheme,
}

/// How to encrypt.
#[derive(Clone, Copy, Debug)]
pub struct Encryption<'a> {
    /// The partner's encryption certificate.
    pub recipient: &'a X509,
    /// The content cipher (GCM ciphers produce AuthEnvelopedData).
    pub cipher: ContentCipher,
    /// The key transport.
    pub key_transport: KeyTransport,
}

/// The MDN we ask the partner for.
#[derive(Clone, Debug)]
pub struct MdnRequest {
    /// Disposition-Notification-To (any non-empty value; an address or URL by convention).
    pub disposition_notification_to: String,
    /// MIC/signing algorithms for a signed receipt, in order of preference; empty for
    /// an unsigned receipt.
    pub signed_receipt_algorithms: Vec<MicAlgorithm>,
    /// Where to deliver an asynchronous MDN; `None` for a synchronous one.
    pub receipt_delivery_option: Option<ReceiptDeliveryOption>,
}

/// A document to send and how to protect it.
#[derive(Clone, Debug)]
pub struct OutboundMessage<'a> {
    /// Our AS2 id.
    pub as2_from: &'a As2Id,
    /// The partner's AS2 id.
    pub as2_to: &'a As2Id,
    /// The message's id.
    pub message_id: &'a MessageId,
    /// Subject header, if any.
    pub subject: Option<&'a str>,
    /// The business document, for [`build_message`]; [`MessageWriter::new`] does not
    /// read it (the document goes to [`MessageWriter::write`] in pieces).
    pub payload: &'a [u8],
    /// Its Content-Type (for instance `application/edi-x12`).
    pub content_type: &'a str,
    /// Its filename, written to Content-Disposition.
    pub filename: Option<&'a str>,
    /// Sign, when set.
    pub signing: Option<Signing<'a>>,
    /// Encrypt, when set.
    pub encryption: Option<Encryption<'a>>,
    /// Compress, when set.
    pub compression: Option<CompressionOrder>,
    /// Ask for an MDN, when set.
    pub mdn: Option<MdnRequest>,
}

/// A message ready to POST: HTTP headers, body and the MIC the MDN should return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltMessage {
    /// HTTP headers (AS2 headers and the body's Content-Type).
    pub headers: Vec<(String, String)>,
    /// The HTTP body.
    pub body: Vec<u8>,
    /// The MIC the partner's MDN must carry.
    pub expected_mic: ReceivedContentMic,
}

impl BuiltMessage {
    /// The value of the named header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::headers::find_header(&self.headers, name)
    }
}

/// Builds an AS2 message in memory: a [`MessageWriter`] given the whole payload at once.
/// The MIC follows the same rules as the receiving side ([`crate::mic`]), with the first
/// requested receipt algorithm, else the signing digest, else SHA-1.
pub fn build_message(message: &OutboundMessage<'_>) -> Result<BuiltMessage> {
    let (mut writer, headers) = MessageWriter::new(message)?;
    let mut body = Vec::with_capacity(message.payload.len() + message.payload.len() / 8 + 8192);
    writer.write(message.payload, &mut body)?;
    let expected_mic = writer.finish(&mut body)?;
    Ok(BuiltMessage {
        headers,
        body,
        expected_mic,
    })
}

/// The payload entity's header fields; checks the content type and the filename.
fn payload_headers(message: &OutboundMessage<'_>) -> Result<Vec<(String, String)>> {
    if message.content_type.trim().is_empty() || message.content_type.contains(['\r', '\n']) {
        return Err(As2Error::InvalidArgument(
            "content type must be one non-empty line".into(),
        ));
    }
    let mut headers = vec![
        (
            "Content-Type".to_owned(),
            message.content_type.trim().to_owned(),
        ),
        ("Content-Transfer-Encoding".to_owned(), "binary".to_owned()),
    ];
    if let Some(filename) = message.filename {
        if filename.contains(['\r', '\n']) {
            return Err(As2Error::InvalidArgument(
                "filename must be one line".into(),
            ));
        }
        headers.push((
            "Content-Disposition".to_owned(),
            format!("attachment; filename={}", crate::headers::quote(filename)),
        ));
    }
    Ok(headers)
}

fn receipt_options(request: &MdnRequest) -> Option<DispositionNotificationOptions> {
    if request.signed_receipt_algorithms.is_empty() {
        return None;
    }
    Some(DispositionNotificationOptions::signed_receipt(
        &request.signed_receipt_algorithms,
    ))
}

fn http_headers(
    message: &OutboundMessage<'_>,
    requested: Option<&DispositionNotificationOptions>,
    body_headers: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut headers =
        crate::headers::as2_identity_headers(message.as2_from, message.as2_to, message.message_id);
    if let Some(subject) = message.subject {
        headers.push(("Subject".to_owned(), subject.replace(['\r', '\n'], " ")));
    }
    if let Some(request) = &message.mdn {
        headers.push((
            "Disposition-Notification-To".to_owned(),
            request
                .disposition_notification_to
                .replace(['\r', '\n'], " "),
        ));
        if let Some(options) = requested {
            headers.push((
                "Disposition-Notification-Options".to_owned(),
                options.to_string(),
            ));
        }
        if let Some(option) = &request.receipt_delivery_option {
            headers.push((
                "Receipt-Delivery-Option".to_owned(),
                option.url().to_owned(),
            ));
        }
    }
    headers.extend(body_headers);
    headers
}
