//! The Kafka record of a received document: its key and headers.
//!
//! This is a public contract (documented in `docs/kafka-records.md`): header names are
//! lowercase, values are UTF-8 text, and fields are only ever added.

use as2_protocol::headers::As2RequestHeaders;
use as2_protocol::unwrap::{CompressionPlacement, UnwrappedMessage};

use crate::routes::Route;

/// Version of the record contract, carried in [`HEADER_RECORD_VERSION`], for a record
/// that carries its document as its value.
pub const RECORD_VERSION: &str = "1";

/// [`HEADER_RECORD_VERSION`] of a record whose document is in the object store (claim
/// check): the value is empty and [`HEADER_DOCUMENT_LOCATION`] says where it is.
pub const RECORD_VERSION_REFERENCE: &str = "2";

/// Contract version.
pub const HEADER_RECORD_VERSION: &str = "as2-record-version";
/// Message-ID as the partner sent it (angle brackets included when it had them).
pub const HEADER_MESSAGE_ID: &str = "as2-message-id";
/// The partner's AS2 ID (unquoted).
pub const HEADER_AS2_FROM: &str = "as2-from";
/// Our AS2 ID (unquoted).
pub const HEADER_AS2_TO: &str = "as2-to";
/// The partnership id (also the record key).
pub const HEADER_PARTNERSHIP_ID: &str = "as2-partnership-id";
/// Content-Type of the document.
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// The filename from Content-Disposition, when the partner sent one.
pub const HEADER_FILENAME: &str = "as2-filename";
/// The Subject header, when the partner sent one.
pub const HEADER_SUBJECT: &str = "as2-subject";
/// Base64 MIC returned in the MDN.
pub const HEADER_MIC: &str = "as2-mic";
/// The MIC's algorithm (`sha-256`, ...).
pub const HEADER_MIC_ALGORITHM: &str = "as2-mic-algorithm";
/// `true` when the message was signed.
pub const HEADER_SIGNED: &str = "as2-signed";
/// Digest of the signature, when signed.
pub const HEADER_SIGNATURE_DIGEST: &str = "as2-signature-digest";
/// `true` when the message was encrypted.
pub const HEADER_ENCRYPTED: &str = "as2-encrypted";
/// Content cipher, when encrypted.
pub const HEADER_ENCRYPTION_CIPHER: &str = "as2-encryption-cipher";
/// Where compression was: `none`, `before-signing`, `after-signing`, or `no-signature`
/// (compressed, not signed).
pub const HEADER_COMPRESSION: &str = "as2-compression";
/// When the edge received the message, RFC 3339 UTC.
pub const HEADER_RECEIVED_AT: &str = "as2-received-at";
/// The document's size in bytes.
pub const HEADER_DOCUMENT_SIZE: &str = "as2-document-size";
/// The document's SHA-256, lowercase hex.
pub const HEADER_DOCUMENT_SHA256: &str = "as2-document-sha256";
/// Reference records only: the URL of the document in the object store
/// (`s3://bucket/prefix/key`, `file:///dir/key`).
pub const HEADER_DOCUMENT_LOCATION: &str = "as2-document-location";
/// Reference records only: the document's key in the object store (the location
/// without the store's URL).
pub const HEADER_DOCUMENT_KEY: &str = "as2-document-key";
/// The URL of the message's archive entry (the message as received and our answer),
/// when it is archived.
pub const HEADER_ARCHIVE_LOCATION: &str = "as2-archive-location";
/// W3C trace context of the message's trace, when tracing is on.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// The headers of a document record, in a fixed order.
pub fn document_headers(
    request: &As2RequestHeaders,
    route: &Route,
    message: &UnwrappedMessage,
    received_at: &str,
) -> Vec<(&'static str, String)> {
    let facts = &message.facts;
    let mut headers = vec![
        (HEADER_RECORD_VERSION, RECORD_VERSION.to_owned()),
        (HEADER_MESSAGE_ID, request.message_id.original().to_owned()),
        (HEADER_AS2_FROM, request.as2_from.as_str().to_owned()),
        (HEADER_AS2_TO, request.as2_to.as_str().to_owned()),
        (HEADER_PARTNERSHIP_ID, route.partnership.id.clone()),
        (HEADER_CONTENT_TYPE, message.payload.content_type.clone()),
    ];
    if let Some(filename) = &message.payload.filename {
        headers.push((HEADER_FILENAME, filename.clone()));
    }
    if let Some(subject) = &request.subject {
        headers.push((HEADER_SUBJECT, subject.clone()));
    }
    headers.push((HEADER_MIC, message.mic.digest_base64()));
    headers.push((
        HEADER_MIC_ALGORITHM,
        message.mic.algorithm.as_str().to_owned(),
    ));
    headers.push((HEADER_SIGNED, facts.signature.is_some().to_string()));
    if let Some(signature) = &facts.signature {
        headers.push((
            HEADER_SIGNATURE_DIGEST,
            signature.digest.as_str().to_owned(),
        ));
    }
    headers.push((HEADER_ENCRYPTED, facts.encryption.is_some().to_string()));
    if let Some(encryption) = &facts.encryption {
        headers.push((
            HEADER_ENCRYPTION_CIPHER,
            encryption.cipher.as_str().to_owned(),
        ));
    }
    let compression = match facts.compression {
        None => "none",
        Some(CompressionPlacement::BeforeSigning) => "before-signing",
        Some(CompressionPlacement::AfterSigning) => "after-signing",
        Some(CompressionPlacement::Unsigned) => "no-signature",
    };
    headers.push((HEADER_COMPRESSION, compression.to_owned()));
    headers.push((HEADER_RECEIVED_AT, received_at.to_owned()));
    // Called inside the message's span: consumers continue the message's trace.
    if let Some(traceparent) = as2_common::telemetry::current_traceparent() {
        headers.push((HEADER_TRACEPARENT, traceparent));
    }
    headers
}

/// Adds the document's size and digest, and for a document in the object store its
/// location (and the reference form's version).
pub fn add_document_fields(
    headers: &mut Vec<(&'static str, String)>,
    size: u64,
    sha256: &str,
    stored: Option<&crate::document::StoredDocument>,
) {
    headers.push((HEADER_DOCUMENT_SIZE, size.to_string()));
    headers.push((HEADER_DOCUMENT_SHA256, sha256.to_owned()));
    if let Some(stored) = stored {
        if let Some(version) = headers
            .iter_mut()
            .find(|(name, _)| *name == HEADER_RECORD_VERSION)
        {
            version.1 = RECORD_VERSION_REFERENCE.to_owned();
        }
        headers.push((HEADER_DOCUMENT_LOCATION, stored.url.clone()));
        headers.push((HEADER_DOCUMENT_KEY, stored.key.clone()));
    }
}

/// Now, RFC 3339 in UTC with millisecond precision.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&format)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}
