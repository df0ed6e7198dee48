//! From an outbound Kafka record and its partnership to an AS2 message, and from a
//! partner's MDN to a verdict. No I/O here: the protocol work is `as2-protocol`'s, this
//! module decides what to ask of it.

use std::sync::Arc;

use as2_partner::algorithms::{compression_order, content_cipher, mic_algorithm};
use as2_partner::certificates::encryption_certificate;
use as2_partner::https::HttpsSettings;
use as2_partner::keys::{KeyError, KeyPair, KeyStore};
use as2_protocol::cms::{KeyTransport, SignatureScheme};
use as2_protocol::headers::ReceiptDeliveryOption;
use as2_protocol::mdn::{self, DispositionStatus, MdnVerification, ParsedMdn};
use as2_protocol::outbound::{
    BuiltMessage, Encryption, MdnRequest, MessageWriter, OutboundMessage, Signing,
};
use as2_protocol::{As2Error, As2Id, MessageId, MicAlgorithm, ReceivedContentMic};
use as2_rpc::routing::v1::{MdnMode, OutboundSettings, Partnership, SigningDigest};
use openssl::sha::Sha256;
use openssl::x509::X509;

/// Kafka header naming the partnership a document goes to (required).
pub const PARTNERSHIP_HEADER: &str = "as2-partnership-id";
/// Kafka header with the document's filename (optional, sent in Content-Disposition).
pub const FILENAME_HEADER: &str = "as2-filename";
/// Kafka header with the document's MIME type (optional).
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// Kafka header overriding the partnership's Subject (optional).
pub const SUBJECT_HEADER: &str = "as2-subject";
/// Content type of documents whose record names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// Timeout of one send when the partnership sets none.
pub const DEFAULT_TIMEOUT_SECS: u32 = 60;
/// Kafka header with the URL of a document kept in an object store (claim check); the
/// record's value is then empty.
pub const DOCUMENT_LOCATION_HEADER: &str = "as2-document-location";
/// Kafka header with the key of that document in its object store.
pub const DOCUMENT_KEY_HEADER: &str = "as2-document-key";
/// Kafka header with the document's size in bytes (checked as it is read).
pub const DOCUMENT_SIZE_HEADER: &str = "as2-document-size";
/// Kafka header with the document's SHA-256, hex (checked as it is read).
pub const DOCUMENT_SHA256_HEADER: &str = "as2-document-sha256";

/// A document kept in an object store that a record references instead of carrying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentReference {
    /// Its URL (`as2-document-location`).
    pub location: String,
    /// Its key in the store (`as2-document-key`).
    pub key: String,
    /// Its size, when the record says (`as2-document-size`).
    pub size: Option<u64>,
    /// Its SHA-256, when the record says (`as2-document-sha256`).
    pub sha256: Option<[u8; 32]>,
}

/// Where a record came from in Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSource {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// One document to send, as read from the outbound topic.
#[derive(Clone, Debug)]
pub struct OutboundDocument {
    /// Where the record is.
    pub source: RecordSource,
    /// The partnership id (header `as2-partnership-id`).
    pub partnership_id: String,
    /// The filename, if the record names one.
    pub filename: Option<String>,
    /// The document's MIME type.
    pub content_type: String,
    /// A Subject that overrides the partnership's.
    pub subject: Option<String>,
    /// W3C traceparent of the producer, if any.
    pub traceparent: String,
    /// The document, when the record carries it.
    pub payload: Vec<u8>,
    /// Where the document is, when the record references it instead.
    pub reference: Option<DocumentReference>,
}

/// Why a record cannot be sent at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// The record has no `as2-partnership-id` header.
    #[error("the record has no {PARTNERSHIP_HEADER} header")]
    MissingPartnership,
    /// A header value is not one line of text.
    #[error("the {0} header is not one line of text")]
    BadHeader(&'static str),
    /// The record references its document without saying which key it has, or with a
    /// size or digest that cannot be read.
    #[error("bad document reference: {0}")]
    BadReference(String),
}

impl OutboundDocument {
    /// Reads a record's headers (name, value) and payload.
    pub fn from_record(
        source: RecordSource,
        headers: &[(String, Vec<u8>)],
        payload: &[u8],
    ) -> Result<Self, RecordError> {
        let text = |name: &'static str| -> Result<Option<String>, RecordError> {
            let Some((_, value)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))
            else {
                return Ok(None);
            };
            let value = std::str::from_utf8(value).map_err(|_| RecordError::BadHeader(name))?;
            if value.contains(['\r', '\n']) {
                return Err(RecordError::BadHeader(name));
            }
            Ok(Some(value.trim().to_owned()).filter(|value| !value.is_empty()))
        };
        let partnership_id = text(PARTNERSHIP_HEADER)?.ok_or(RecordError::MissingPartnership)?;
        let reference = match text(DOCUMENT_LOCATION_HEADER)? {
            None => None,
            Some(location) => Some(DocumentReference {
                key: text(DOCUMENT_KEY_HEADER)?.ok_or_else(|| {
                    RecordError::BadReference(format!(
                        "{DOCUMENT_LOCATION_HEADER} without {DOCUMENT_KEY_HEADER}"
                    ))
                })?,
                size: text(DOCUMENT_SIZE_HEADER)?
                    .map(|size| {
                        size.parse().map_err(|_| {
                            RecordError::BadReference(format!(
                                "{DOCUMENT_SIZE_HEADER} {size:?} is not a byte count"
                            ))
                        })
                    })
                    .transpose()?,
                sha256: text(DOCUMENT_SHA256_HEADER)?
                    .map(|hex| {
                        parse_sha256(&hex).ok_or_else(|| {
                            RecordError::BadReference(format!(
                                "{DOCUMENT_SHA256_HEADER} {hex:?} is not 64 hex digits"
                            ))
                        })
                    })
                    .transpose()?,
                location,
            }),
        };
        if reference.is_some() && !payload.is_empty() {
            return Err(RecordError::BadReference(
                "the record both carries and references a document".to_owned(),
            ));
        }
        Ok(Self {
            source,
            partnership_id,
            filename: text(FILENAME_HEADER)?,
            content_type: text(CONTENT_TYPE_HEADER)?
                .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
            subject: text(SUBJECT_HEADER)?,
            traceparent: text("traceparent")?.unwrap_or_default(),
            payload: payload.to_vec(),
            reference,
        })
    }

    /// The Message-ID of this document, derived from where the record is and what it
    /// holds: every replica, and every restart, sends a record under the same id, and a
    /// recreated topic that reuses offsets does not reuse ids of other documents.
    pub fn message_id(&self, domain: &str) -> Result<MessageId, As2Error> {
        // What the document is: its digest, that of the record's value or the one a
        // reference states, else where the reference points.
        let content = match &self.reference {
            None => openssl::sha::sha256(&self.payload).to_vec(),
            Some(DocumentReference {
                sha256: Some(sha256),
                ..
            }) => sha256.to_vec(),
            Some(reference) => format!("{}\n{}", reference.location, reference.key).into_bytes(),
        };
        let mut digest = Sha256::new();
        for field in [
            self.source.topic.as_bytes(),
            self.source.partition.to_string().as_bytes(),
            self.source.offset.to_string().as_bytes(),
            self.partnership_id.as_bytes(),
            &content,
        ] {
            digest.update(&(field.len() as u64).to_be_bytes());
            digest.update(field);
        }
        let hex: String = digest.finish()[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        MessageId::parse(&format!("<as2-{hex}@{domain}>"))
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

/// How the partner returns its MDN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MdnDelivery {
    /// No MDN asked for: a 2xx is the end.
    None,
    /// In the HTTP response.
    Sync,
    /// Later, POSTed to our URL.
    Async,
}

impl MdnDelivery {
    /// A stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Sync => "sync",
            Self::Async => "async",
        }
    }
}

/// Why a partnership's outbound settings cannot be used (the record fails for good).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The partnership has no outbound URL.
    #[error("partnership {0} has no outbound url")]
    NoOutboundUrl(String),
    /// Signing is asked for without a usable key.
    #[error("no signing key: {0}")]
    SigningKey(String),
    /// Our key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Encryption is asked for without a valid partner encryption certificate.
    #[error("partnership {0} has no valid encryption certificate of the partner")]
    NoEncryptionCertificate(String),
    /// A setting has a value the sender does not support.
    #[error("unsupported outbound setting: {0}")]
    Unsupported(String),
    /// The AS2 message could not be built.
    #[error("cannot build the AS2 message: {0}")]
    Build(#[from] As2Error),
}

/// Everything needed to send one document and judge the answer, but the message.
pub struct SendPlan {
    /// The partner's AS2 URL.
    pub url: String,
    /// Send the body chunked rather than with a Content-Length.
    pub chunked: bool,
    /// Our Message-ID.
    pub message_id: MessageId,
    /// Our AS2 id (the message's AS2-From).
    pub as2_from: String,
    /// The partner's AS2 id (the message's AS2-To).
    pub as2_to: String,
    /// How the MDN comes back.
    pub mdn: MdnDelivery,
    /// Whether a signed MDN was requested.
    pub signed_mdn_requested: bool,
    /// Whether the message was signed.
    pub signed: bool,
    /// Timeout of one send.
    pub timeout_secs: u32,
    /// Sends after the first one.
    pub max_retries: u32,
    /// How the connection to `url` is made (client certificate, trust, proxy).
    pub https: HttpsSettings,
}

/// A send planned and its message started: the document still to be written.
pub struct Started {
    /// How to send and judge.
    pub plan: SendPlan,
    /// Builds the body from the document.
    pub writer: MessageWriter,
    /// The message's HTTP headers.
    pub headers: Vec<(String, String)>,
}

impl Started {
    /// The whole message, for a document held in memory.
    pub fn build(self, payload: &[u8]) -> Result<(SendPlan, BuiltMessage), PlanError> {
        let Self {
            plan,
            mut writer,
            headers,
        } = self;
        let mut body = Vec::with_capacity(payload.len() + 4096);
        writer.write(payload, &mut body)?;
        let expected_mic = writer.finish(&mut body)?;
        Ok((
            plan,
            BuiltMessage {
                headers,
                body,
                expected_mic,
            },
        ))
    }
}

/// Plans the send of `document` as `partnership` says, and starts its message.
pub fn start(
    document: &OutboundDocument,
    partnership: &Partnership,
    keys: &KeyStore,
    default_signing_key_id: Option<&str>,
    message_id: MessageId,
) -> Result<Started, PlanError> {
    let settings = partnership.outbound.clone().unwrap_or_default();
    if settings.url.trim().is_empty() {
        return Err(PlanError::NoOutboundUrl(partnership.id.clone()));
    }
    let https = HttpsSettings::from_proto(settings.https.as_ref())
        .map_err(|error| PlanError::Unsupported(format!("https.{error}")))?;
    // The partnership's pair is the one inbound messages carry; outbound reverses it.
    let as2_from = As2Id::new(partnership.as2_to.clone())?;
    let as2_to = As2Id::new(partnership.as2_from.clone())?;
    let digest = signing_digest(settings.signing_digest())?;
    let signing_key = if settings.sign {
        Some(signing_key(
            &settings,
            partnership,
            keys,
            default_signing_key_id,
        )?)
    } else {
        None
    };
    let encryption_certificate = if settings.encrypt {
        Some(
            encryption_certificate(&partnership.partner_certificates)
                .ok_or_else(|| PlanError::NoEncryptionCertificate(partnership.id.clone()))?,
        )
    } else {
        None
    };
    let mdn = match settings.mdn_mode() {
        MdnMode::Unspecified => MdnDelivery::None,
        MdnMode::Sync => MdnDelivery::Sync,
        MdnMode::Async => MdnDelivery::Async,
    };
    let receipt_delivery_option = match mdn {
        MdnDelivery::Async => Some(ReceiptDeliveryOption::parse(&settings.async_mdn_url)?),
        MdnDelivery::None | MdnDelivery::Sync => None,
    };
    let mdn_request = (mdn != MdnDelivery::None).then(|| MdnRequest {
        disposition_notification_to: if settings.async_mdn_url.trim().is_empty() {
            format!("as2@{}", as2_from.as_str())
        } else {
            settings.async_mdn_url.clone()
        },
        // The MIC algorithm asked for is the signing digest: some receivers (pyas2lib)
        // compute the MIC with the signature's digest whatever is asked.
        signed_receipt_algorithms: if settings.request_signed_mdn {
            vec![digest]
        } else {
            Vec::new()
        },
        receipt_delivery_option,
    });
    let subject = document
        .subject
        .clone()
        .or_else(|| Some(settings.subject.clone()).filter(|s| !s.trim().is_empty()));
    let (writer, headers) = MessageWriter::new(&OutboundMessage {
        as2_from: &as2_from,
        as2_to: &as2_to,
        message_id: &message_id,
        subject: subject.as_deref(),
        payload: &[],
        content_type: &document.content_type,
        filename: document.filename.as_deref(),
        signing: signing_key.as_ref().map(|key| Signing {
            identity: &key.identity,
            digest,
            scheme: SignatureScheme::RsaPkcs1v15,
        }),
        encryption: encryption_certificate.as_ref().map(|recipient| Encryption {
            recipient,
            cipher: content_cipher(settings.encryption_cipher()),
            key_transport: KeyTransport::RsaPkcs1v15,
        }),
        compression: compression_order(settings.compression()),
        mdn: mdn_request,
    })?;
    let plan = SendPlan {
        url: settings.url.trim().to_owned(),
        chunked: settings.chunked,
        message_id,
        as2_from: as2_from.as_str().to_owned(),
        as2_to: as2_to.as_str().to_owned(),
        mdn,
        signed_mdn_requested: settings.request_signed_mdn && mdn != MdnDelivery::None,
        signed: settings.sign,
        timeout_secs: if settings.timeout_seconds == 0 {
            DEFAULT_TIMEOUT_SECS
        } else {
            settings.timeout_seconds
        },
        max_retries: settings.max_retries,
        https,
    };
    Ok(Started {
        plan,
        writer,
        headers,
    })
}

fn signing_key(
    settings: &OutboundSettings,
    partnership: &Partnership,
    keys: &KeyStore,
    default_signing_key_id: Option<&str>,
) -> Result<Arc<KeyPair>, PlanError> {
    let id = [
        settings.signing_key_id.as_str(),
        partnership.mdn_signing_key_id.as_str(),
        default_signing_key_id.unwrap_or_default(),
    ]
    .into_iter()
    .map(str::trim)
    .find(|id| !id.is_empty())
    .ok_or_else(|| {
        PlanError::SigningKey(format!(
            "partnership {} signs but names no key and there is no default",
            partnership.id
        ))
    })?;
    Ok(keys.get(id)?)
}

/// The digest to sign with; MD5 is accepted on receipt (where a policy allows it) but
/// never sent.
fn signing_digest(digest: SigningDigest) -> Result<MicAlgorithm, PlanError> {
    match digest {
        SigningDigest::Md5 => Err(PlanError::Unsupported(
            "md5 signatures are not sent".to_owned(),
        )),
        digest => Ok(mic_algorithm(digest)),
    }
}

/// What a partner's MDN says about our message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MdnVerdict {
    /// Processed, and the MIC matches (or carries none where none is required).
    Delivered {
        /// The Disposition as reported.
        disposition: String,
        /// The Received-Content-MIC as reported, if any.
        mic: Option<String>,
        /// Whether the MIC was compared and matched.
        mic_verified: bool,
    },
    /// The partner reports an error, or the MIC does not match.
    Failed {
        /// The Disposition as reported.
        disposition: String,
        /// The Received-Content-MIC as reported, if any.
        mic: Option<String>,
        /// Why.
        reason: String,
    },
}

/// Why an MDN was not even judged.
#[derive(Debug, thiserror::Error)]
pub enum MdnError {
    /// Not a parseable MDN.
    #[error("not a usable MDN: {0}")]
    Malformed(As2Error),
    /// The signature does not verify with the partner's certificates, or the MDN is
    /// unsigned although a signed one was requested.
    #[error("the MDN is not authentic: {0}")]
    NotAuthentic(As2Error),
}

/// Parses `body` as an MDN without verifying it (to learn what it answers).
pub fn peek_mdn(content_type: &str, body: &[u8]) -> Result<ParsedMdn, MdnError> {
    let verification = MdnVerification {
        partner_certificates: &[],
        allow_md5: false,
        check_certificate_validity: false,
        require_signature: false,
    };
    mdn::parse_mdn(content_type, body, &verification).map_err(MdnError::Malformed)
}

/// Verifies a partner's MDN for our message and judges it.
///
/// - The signature must verify with `partner_certificates` when the MDN is signed, and a
///   signed MDN is required when one was requested.
/// - A processed disposition needs a Received-Content-MIC equal to `expected_mic` when
///   the message was signed (RFC 4130 7.3.1 makes the MIC of a signed message
///   mandatory). For an unsigned message the MIC is compared when present. One
///   exception: `processed/warning: duplicate-document` without a MIC is delivered; the
///   partner says it has this Message-ID already (a resend after a lost answer).
pub fn judge_mdn(
    content_type: &str,
    body: &[u8],
    partner_certificates: &[X509],
    signed_mdn_requested: bool,
    check_certificate_validity: bool,
    expected_mic: &ReceivedContentMic,
    message_signed: bool,
) -> Result<MdnVerdict, MdnError> {
    let verification = MdnVerification {
        partner_certificates,
        allow_md5: false,
        check_certificate_validity,
        require_signature: signed_mdn_requested,
    };
    let parsed = match mdn::parse_mdn(content_type, body, &verification) {
        Ok(parsed) => parsed,
        Err(
            error @ (As2Error::AuthenticationFailed(_)
            | As2Error::InsufficientMessageSecurity(_)
            | As2Error::IntegrityCheckFailed(_)),
        ) => return Err(MdnError::NotAuthentic(error)),
        Err(error) => return Err(MdnError::Malformed(error)),
    };
    Ok(verdict(&parsed, expected_mic, message_signed))
}

fn verdict(
    parsed: &ParsedMdn,
    expected_mic: &ReceivedContentMic,
    message_signed: bool,
) -> MdnVerdict {
    let status = &parsed.report.disposition.status;
    let disposition = status.to_string();
    let mic = parsed
        .report
        .received_content_mic
        .as_ref()
        .map(ToString::to_string);
    if !status.is_processed() {
        return MdnVerdict::Failed {
            reason: format!("the partner reported {disposition}"),
            disposition,
            mic,
        };
    }
    let duplicate = matches!(status, DispositionStatus::Warning(text)
        if text.trim().eq_ignore_ascii_case("duplicate-document"));
    match &parsed.report.received_content_mic {
        Some(_) if parsed.mic_matches(expected_mic) => MdnVerdict::Delivered {
            disposition,
            mic,
            mic_verified: true,
        },
        Some(received) => MdnVerdict::Failed {
            reason: format!(
                "the MDN's Received-Content-MIC ({received}) does not match the MIC of the message sent ({expected_mic})"
            ),
            disposition,
            mic,
        },
        None if !message_signed || duplicate => MdnVerdict::Delivered {
            disposition,
            mic,
            mic_verified: false,
        },
        None => MdnVerdict::Failed {
            reason: "the MDN carries no Received-Content-MIC for a signed message".to_owned(),
            disposition,
            mic,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(offset: i64) -> RecordSource {
        RecordSource {
            topic: "as2.outbound".to_owned(),
            partition: 0,
            offset,
        }
    }

    fn header(name: &str, value: &str) -> (String, Vec<u8>) {
        (name.to_owned(), value.as_bytes().to_vec())
    }

    #[test]
    fn records_need_a_partnership() {
        let document = OutboundDocument::from_record(
            source(1),
            &[
                header("as2-partnership-id", "acme"),
                header("as2-filename", "po.edi"),
            ],
            b"doc",
        )
        .unwrap();
        assert_eq!(document.partnership_id, "acme");
        assert_eq!(document.filename.as_deref(), Some("po.edi"));
        assert_eq!(document.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(
            OutboundDocument::from_record(source(1), &[], b"doc").unwrap_err(),
            RecordError::MissingPartnership
        );
        let sha256 = "ab".repeat(32);
        let referenced = OutboundDocument::from_record(
            source(1),
            &[
                header("as2-partnership-id", "acme"),
                header("as2-record-version", "2"),
                header("as2-document-location", "s3://bucket/documents/x"),
                header("as2-document-key", "documents/x"),
                header("as2-document-size", "123"),
                header("as2-document-sha256", &sha256),
            ],
            b"",
        )
        .unwrap();
        assert_eq!(
            referenced.reference,
            Some(DocumentReference {
                location: "s3://bucket/documents/x".to_owned(),
                key: "documents/x".to_owned(),
                size: Some(123),
                sha256: Some([0xab; 32]),
            })
        );
        for (bad, value) in [
            ("as2-document-key", ""),
            ("as2-document-size", "12k"),
            ("as2-document-sha256", "abc"),
        ] {
            let mut headers = vec![
                header("as2-partnership-id", "acme"),
                header("as2-document-location", "s3://bucket/documents/x"),
                header("as2-document-key", "documents/x"),
            ];
            headers.retain(|(name, _)| name != bad);
            headers.push(header(bad, value));
            assert!(
                matches!(
                    OutboundDocument::from_record(source(1), &headers, b""),
                    Err(RecordError::BadReference(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            OutboundDocument::from_record(
                source(1),
                &[
                    header("as2-partnership-id", "acme"),
                    header("as2-document-location", "s3://bucket/documents/x"),
                    header("as2-document-key", "documents/x"),
                ],
                b"not empty",
            ),
            Err(RecordError::BadReference(_))
        ));
        assert_eq!(
            OutboundDocument::from_record(
                source(1),
                &[
                    header("as2-partnership-id", "a"),
                    header("as2-filename", "x\r\ny")
                ],
                b"doc"
            )
            .unwrap_err(),
            RecordError::BadHeader(FILENAME_HEADER)
        );
    }

    #[test]
    fn message_ids_are_stable_per_record_and_differ_between_records() {
        let make = |offset, payload: &[u8]| {
            OutboundDocument::from_record(
                source(offset),
                &[header("as2-partnership-id", "acme")],
                payload,
            )
            .unwrap()
            .message_id("gw.example")
            .unwrap()
        };
        assert_eq!(make(1, b"a").original(), make(1, b"a").original());
        assert_ne!(make(1, b"a").original(), make(2, b"a").original());
        assert_ne!(make(1, b"a").original(), make(1, b"b").original());
        assert!(make(1, b"a").original().ends_with("@gw.example>"));
    }
}
