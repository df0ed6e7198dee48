//! Message Disposition Notifications (RFC 3798 as profiled by RFC 4130 7.4): building,
//! signing, parsing and verifying.

use std::fmt;

use openssl::x509::X509;

use crate::cms::{Identity, SignatureScheme, VerifyOptions};
use crate::error::{As2Error, Result};
use crate::headers::{
    As2Id, As2RequestHeaders, DispositionNotificationOptions, MessageId, MicAlgorithm,
};
use crate::mic::ReceivedContentMic;
use crate::mime::{self, Entity, MimeLimits};
use crate::outbound::MultipartSigner;
use crate::unwrap::{self, SignatureFacts, UnwrappedMessage};

/// The error modifiers of `processed/error` that RFC 4130 names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessingError {
    /// The signature did not verify.
    AuthenticationFailed,
    /// The message could not be decrypted.
    DecryptionFailed,
    /// The message could not be decompressed.
    DecompressionFailed,
    /// A digest did not match.
    IntegrityCheckFailed,
    /// The message was less protected than the partnership requires.
    InsufficientMessageSecurity,
    /// Anything else.
    UnexpectedProcessingError,
    /// A modifier this crate does not know, as received.
    Other(String),
}

impl ProcessingError {
    /// The modifier as written in the Disposition field.
    pub fn as_str(&self) -> &str {
        match self {
            Self::AuthenticationFailed => "authentication-failed",
            Self::DecryptionFailed => "decryption-failed",
            Self::DecompressionFailed => "decompression-failed",
            Self::IntegrityCheckFailed => "integrity-check-failed",
            Self::InsufficientMessageSecurity => "insufficient-message-security",
            Self::UnexpectedProcessingError => "unexpected-processing-error",
            Self::Other(other) => other,
        }
    }

    fn parse(value: &str) -> Self {
        let known = [
            Self::AuthenticationFailed,
            Self::DecryptionFailed,
            Self::DecompressionFailed,
            Self::IntegrityCheckFailed,
            Self::InsufficientMessageSecurity,
            Self::UnexpectedProcessingError,
        ];
        let value = value.trim();
        known
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(value))
            .unwrap_or_else(|| Self::Other(value.to_owned()))
    }
}

/// The outcome a Disposition field reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DispositionStatus {
    /// `processed`: the message was received and handed on.
    Processed,
    /// `processed/warning: ...`.
    Warning(String),
    /// `processed/error: ...`.
    Error(ProcessingError),
    /// `failed/Failure: ...` (an MDN option that could not be honoured).
    Failed(String),
}

impl DispositionStatus {
    /// Whether the document was processed (with or without a warning).
    pub fn is_processed(&self) -> bool {
        matches!(self, Self::Processed | Self::Warning(_))
    }
}

impl fmt::Display for DispositionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Processed => f.write_str("processed"),
            Self::Warning(text) => write!(f, "processed/warning: {text}"),
            Self::Error(error) => write!(f, "processed/error: {}", error.as_str()),
            Self::Failed(text) => write!(f, "failed/Failure: {text}"),
        }
    }
}

/// The Disposition field: action and sending modes plus the outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disposition {
    /// `automatic-action` or `manual-action`.
    pub action_mode: String,
    /// `MDN-sent-automatically` or `MDN-sent-manually`.
    pub sending_mode: String,
    /// The outcome.
    pub status: DispositionStatus,
}

impl Disposition {
    /// An automatically sent disposition with `status`.
    pub fn automatic(status: DispositionStatus) -> Self {
        Self {
            action_mode: "automatic-action".to_owned(),
            sending_mode: "MDN-sent-automatically".to_owned(),
            status,
        }
    }

    /// Lenient parse: spacing and case vary; a missing mode part is tolerated.
    pub fn parse(value: &str) -> Result<Self> {
        let (modes, outcome) = match value.split_once(';') {
            Some((modes, outcome)) => (modes.trim(), outcome.trim()),
            None => ("automatic-action/MDN-sent-automatically", value.trim()),
        };
        let (action_mode, sending_mode) = modes.split_once('/').unwrap_or((modes, ""));
        let (kind, description) = match outcome.split_once(':') {
            Some((kind, description)) => (kind.trim(), description.trim()),
            None => (outcome, ""),
        };
        let kind = kind.to_ascii_lowercase().replace(' ', "");
        let status = match kind.as_str() {
            "processed" => DispositionStatus::Processed,
            "processed/warning" => DispositionStatus::Warning(description.to_owned()),
            "processed/error" => DispositionStatus::Error(ProcessingError::parse(description)),
            k if k.starts_with("failed") => DispositionStatus::Failed(description.to_owned()),
            _ => {
                return Err(As2Error::MalformedHeader {
                    header: "Disposition",
                    reason: format!("unknown disposition type {kind:?}"),
                });
            }
        };
        Ok(Self {
            action_mode: action_mode.trim().to_owned(),
            sending_mode: sending_mode.trim().to_owned(),
            status,
        })
    }
}

impl fmt::Display for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}; {}",
            self.action_mode, self.sending_mode, self.status
        )
    }
}

/// The machine-readable part of an MDN (message/disposition-notification).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnReport {
    /// Reporting-UA: the software that produced the MDN.
    pub reporting_ua: String,
    /// Original-Recipient (the AS2-To of the original message), without `rfc822;`.
    pub original_recipient: Option<String>,
    /// Final-Recipient, without `rfc822;`.
    pub final_recipient: String,
    /// Original-Message-ID in the form it was received.
    pub original_message_id: String,
    /// The outcome.
    pub disposition: Disposition,
    /// Received-Content-MIC, when the message got far enough to compute it.
    pub received_content_mic: Option<ReceivedContentMic>,
}

impl MdnReport {
    /// The report for a message unwrapped (or failed) by [`unwrap::unwrap_message`].
    pub fn for_outcome(
        reporting_ua: &str,
        request: &As2RequestHeaders,
        outcome: std::result::Result<&UnwrappedMessage, &As2Error>,
    ) -> Self {
        let (status, mic) = match outcome {
            Ok(message) => (DispositionStatus::Processed, Some(message.mic.clone())),
            Err(error) => (error.disposition_status(), None),
        };
        Self {
            reporting_ua: reporting_ua.to_owned(),
            original_recipient: Some(request.as2_to.as_str().to_owned()),
            final_recipient: request.as2_to.as_str().to_owned(),
            original_message_id: request.message_id.original().to_owned(),
            disposition: Disposition::automatic(status),
            received_content_mic: mic,
        }
    }

    fn to_fields(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        mime::push_header(&mut out, "Reporting-UA", &self.reporting_ua);
        if let Some(recipient) = &self.original_recipient {
            mime::push_header(
                &mut out,
                "Original-Recipient",
                &format!("rfc822; {recipient}"),
            );
        }
        mime::push_header(
            &mut out,
            "Final-Recipient",
            &format!("rfc822; {}", self.final_recipient),
        );
        mime::push_header(&mut out, "Original-Message-ID", &self.original_message_id);
        mime::push_header(&mut out, "Disposition", &self.disposition.to_string());
        if let Some(mic) = &self.received_content_mic {
            mime::push_header(&mut out, "Received-Content-MIC", &mic.to_string());
        }
        out
    }

    fn parse_fields(fields: &[u8], limits: &MimeLimits) -> Result<Self> {
        let fields = skip_blank_lines(fields);
        let mut lookup = FieldLookup::default();
        // RFC 3798 separates per-message and per-recipient fields with a blank line;
        // read every block.
        let mut rest = fields;
        for _ in 0..8 {
            let entity = Entity::parse(rest, limits)?;
            lookup.fields.extend(
                entity
                    .headers()
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone())),
            );
            rest = skip_blank_lines(entity.body());
            if rest.is_empty() {
                break;
            }
        }
        let disposition = lookup
            .get("Disposition")
            .ok_or(As2Error::MissingHeader("Disposition"))?;
        let original_message_id = lookup
            .get("Original-Message-ID")
            .ok_or(As2Error::MissingHeader("Original-Message-ID"))?;
        Ok(Self {
            reporting_ua: lookup.get("Reporting-UA").unwrap_or_default().to_owned(),
            original_recipient: lookup.get("Original-Recipient").map(strip_address_type),
            final_recipient: lookup
                .get("Final-Recipient")
                .map(strip_address_type)
                .unwrap_or_default(),
            original_message_id: original_message_id.to_owned(),
            disposition: Disposition::parse(disposition)?,
            received_content_mic: lookup
                .get("Received-Content-MIC")
                .map(ReceivedContentMic::parse)
                .transpose()?,
        })
    }
}

#[derive(Default)]
struct FieldLookup {
    fields: Vec<(String, String)>,
}

impl FieldLookup {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn skip_blank_lines(mut data: &[u8]) -> &[u8] {
    loop {
        if let Some(rest) = data.strip_prefix(b"\r\n") {
            data = rest;
        } else if let Some(rest) = data.strip_prefix(b"\n") {
            data = rest;
        } else {
            return data;
        }
    }
}

/// `rfc822; name` -> `name` (AS2 ids may be quoted).
fn strip_address_type(value: &str) -> String {
    let address = value
        .split_once(';')
        .map_or(value, |(_, address)| address)
        .trim();
    As2Id::parse_header(address)
        .map(|id| id.as_str().to_owned())
        .unwrap_or_else(|_| address.to_owned())
}

/// Everything needed to build an MDN.
#[derive(Clone, Debug)]
pub struct MdnToSend<'a> {
    /// Our AS2 id (the original message's AS2-To).
    pub as2_from: &'a As2Id,
    /// The partner's AS2 id (the original message's AS2-From).
    pub as2_to: &'a As2Id,
    /// The MDN's own Message-ID.
    pub message_id: &'a MessageId,
    /// The human-readable explanation (first part of the report).
    pub text: &'a str,
    /// The machine-readable report.
    pub report: &'a MdnReport,
    /// Sign with this identity and digest (see [`receipt_signing_algorithm`]).
    pub signing: Option<(&'a Identity, MicAlgorithm)>,
}

/// An MDN ready to send: the HTTP headers and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltMdn {
    /// Headers for the HTTP response or request (Content-Type included).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl BuiltMdn {
    /// The value of the named header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::headers::find_header(&self.headers, name)
    }
}

/// The digest to sign a receipt with: `None` when no signed receipt was asked for,
/// otherwise the first requested algorithm we support (SHA-256 when the list names
/// nothing we support and is optional).
///
/// Fails like [`DispositionNotificationOptions::choose_mic_algorithm`] when a `required`
/// option cannot be honoured; the answer to such a request is an unsigned
/// `failed/Failure` MDN.
pub fn receipt_signing_algorithm(
    options: Option<&DispositionNotificationOptions>,
    allow_md5: bool,
) -> Result<Option<MicAlgorithm>> {
    let Some(options) = options.filter(|o| o.wants_signed_receipt()) else {
        return Ok(None);
    };
    Ok(Some(
        options
            .choose_mic_algorithm(allow_md5)?
            .unwrap_or(MicAlgorithm::Sha256),
    ))
}

/// Builds a multipart/report MDN, signed (multipart/signed) when `signing` is set.
pub fn build_mdn(mdn: &MdnToSend<'_>) -> Result<BuiltMdn> {
    let report_boundary = mime::make_boundary()?;
    let report_type = format!(
        "multipart/report; report-type=disposition-notification; boundary=\"{report_boundary}\""
    );
    let mut report_body = Vec::with_capacity(1024);
    let text = [mdn.text.as_bytes(), b"\r\n\r\n"].concat();
    push_report_part(
        &mut report_body,
        &report_boundary,
        "text/plain; charset=us-ascii",
        &text,
    );
    let fields = [mdn.report.to_fields().as_slice(), b"\r\n"].concat();
    push_report_part(
        &mut report_body,
        &report_boundary,
        "message/disposition-notification",
        &fields,
    );
    mime::push_delimiter(&mut report_body, &report_boundary, true);

    let mut headers =
        crate::headers::as2_identity_headers(mdn.as2_from, mdn.as2_to, mdn.message_id);
    let Some((identity, digest)) = mdn.signing else {
        headers.push(("Content-Type".to_owned(), report_type));
        return Ok(BuiltMdn {
            headers,
            body: report_body,
        });
    };
    let mut signed_entity = Vec::with_capacity(report_body.len() + 128);
    mime::push_header(&mut signed_entity, "Content-Type", &report_type);
    signed_entity.extend_from_slice(b"\r\n");
    signed_entity.extend_from_slice(&report_body);
    let (content_type, body) = sign_entity(
        &signed_entity,
        identity,
        digest,
        SignatureScheme::RsaPkcs1v15,
    )?;
    headers.push(("Content-Type".to_owned(), content_type));
    Ok(BuiltMdn { headers, body })
}

/// One 7bit part of the report: delimiter, headers, blank line, content.
fn push_report_part(out: &mut Vec<u8>, boundary: &str, content_type: &str, content: &[u8]) {
    mime::push_delimiter(out, boundary, false);
    mime::push_header(out, "Content-Type", content_type);
    mime::push_header(out, "Content-Transfer-Encoding", "7bit");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(content);
}

/// Wraps `entity` in multipart/signed with a detached signature; returns the
/// Content-Type header value and the body.
pub(crate) fn sign_entity(
    entity: &[u8],
    identity: &Identity,
    digest: MicAlgorithm,
    scheme: SignatureScheme,
) -> Result<(String, Vec<u8>)> {
    let (mut signer, content_type) = MultipartSigner::new(identity.clone(), digest, scheme, None)?;
    let mut body = Vec::with_capacity(entity.len() + 4096);
    signer.start(&mut body);
    signer.update(entity, &mut body)?;
    signer.finish(&mut body)?;
    Ok((content_type, body))
}

/// How to check a partner's MDN.
#[derive(Clone, Copy, Debug)]
pub struct MdnVerification<'a> {
    /// The partner's signing certificates; empty to skip verification.
    pub partner_certificates: &'a [X509],
    /// Accept MD5 signatures.
    pub allow_md5: bool,
    /// Reject certificates outside their validity period.
    pub check_certificate_validity: bool,
    /// Fail when the MDN is not signed (we asked for a signed receipt).
    pub require_signature: bool,
}

/// A partner's MDN, parsed (and verified when signed and certificates were given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedMdn {
    /// The machine-readable report.
    pub report: MdnReport,
    /// The human-readable text, when present.
    pub text: Option<String>,
    /// The signature, when the MDN was signed and verified.
    pub signature: Option<SignatureFacts>,
}

impl ParsedMdn {
    /// Whether the MIC the partner returned matches `expected` (the MIC computed when
    /// the message was sent); `false` when the MDN carries no MIC.
    pub fn mic_matches(&self, expected: &ReceivedContentMic) -> bool {
        self.report
            .received_content_mic
            .as_ref()
            .is_some_and(|mic| mic.digest == expected.digest)
    }
}

/// Parses a partner's MDN from its Content-Type header value and body, verifying the
/// signature over the exact received bytes of the signed report. Lenient about vendor
/// differences: spacing, folding, unsigned MDNs, base64 report parts.
pub fn parse_mdn(
    content_type: &str,
    body: &[u8],
    verification: &MdnVerification<'_>,
) -> Result<ParsedMdn> {
    let limits = MimeLimits::default();
    let fields = vec![mime::HeaderField {
        name: "Content-Type".to_owned(),
        value: content_type.to_owned(),
    }];
    let outer = Entity::from_parts(fields, body);
    let outer_type = outer.content_type();
    if !outer_type.is("multipart/signed") {
        if verification.require_signature {
            return Err(As2Error::InsufficientMessageSecurity(
                "the MDN is not signed".into(),
            ));
        }
        let (report, text) = read_report(&outer, &limits)?;
        return Ok(ParsedMdn {
            report,
            text,
            signature: None,
        });
    }
    let options = VerifyOptions {
        certificates: verification.partner_certificates,
        allow_md5: verification.allow_md5,
        check_validity: verification.check_certificate_validity,
    };
    if verification.partner_certificates.is_empty() {
        if verification.require_signature {
            return Err(As2Error::AuthenticationFailed(
                "no partner certificate to verify the MDN".into(),
            ));
        }
        let multipart = outer.multipart(&limits)?;
        let report_entity = multipart
            .parts
            .first()
            .ok_or_else(|| As2Error::mime("empty multipart/signed"))?;
        let (report, text) = read_report(report_entity, &limits)?;
        return Ok(ParsedMdn {
            report,
            text,
            signature: None,
        });
    }
    let verified = unwrap::verify_multipart_signed(&outer, &options, &limits)?;
    let report_entity = Entity::parse(&verified.signed_bytes, &limits)?;
    let (report, text) = read_report(&report_entity, &limits)?;
    Ok(ParsedMdn {
        report,
        text,
        signature: Some(verified.facts),
    })
}

fn read_report(entity: &Entity<'_>, limits: &MimeLimits) -> Result<(MdnReport, Option<String>)> {
    let content_type = entity.content_type();
    if content_type.is("message/disposition-notification") {
        return Ok((
            MdnReport::parse_fields(&entity.decoded_body()?, limits)?,
            None,
        ));
    }
    if !content_type.is("multipart/report") {
        return Err(As2Error::UnsupportedFormat(format!(
            "MDN of type {}",
            content_type.mime_type
        )));
    }
    let multipart = entity.multipart(limits)?;
    let mut text = None;
    let mut report = None;
    for part in &multipart.parts {
        let part_type = part.content_type();
        if part_type.is("message/disposition-notification") {
            report = Some(MdnReport::parse_fields(&part.decoded_body()?, limits)?);
        } else if part_type.mime_type.starts_with("text/") && text.is_none() {
            text = Some(
                String::from_utf8_lossy(&part.decoded_body()?)
                    .trim()
                    .to_owned(),
            );
        }
    }
    let report = report.ok_or_else(|| {
        As2Error::UnsupportedFormat("multipart/report without a disposition notification".into())
    })?;
    Ok((report, text))
}
