//! Partners' asynchronous MDNs for our outbound messages.
//!
//! A partner returns the MDN for a message the sender sent by POSTing it to our AS2 URL
//! (the Receipt-Delivery-Option we gave). Such a request is an MDN, not an AS2 message:
//! its Content-Type is `multipart/report`, or `multipart/signed` whose first part is
//! `multipart/report`. The edge recognises it before anything else (for a request whose
//! Content-Type is one of the two, [`may_be_mdn`], the start of the body is read and
//! looked at, [`is_mdn`]) and hands it to the sender's `ReconcileMdn` (`as2.sender.v1`), which matches it to the message by
//! Original-Message-ID, verifies it and records the outcome. The answer:
//!
//! | reconciliation | answer |
//! |---|---|
//! | recorded (delivered or failed), or already recorded | 200 |
//! | not an MDN that parses | 400 |
//! | not authentic (signature, AS2-From) | 403 |
//! | no message awaits it | 404 |
//! | sender not configured or unavailable | 503 with Retry-After |

use as2_protocol::mime::{ContentType, Entity, HeaderField, MimeLimits};
use as2_rpc::sender::v1::{self, ReconcileMdnRequest};
use as2_rpc::tonic::Code;

use crate::clients::MdnReconciler;
use crate::inbound::Answer;

/// Whether the request may carry an MDN, judged from its headers alone: its
/// Content-Type is `multipart/report` or `multipart/signed` (whose first part only the
/// body shows). Anything else is an AS2 message.
pub fn may_be_mdn(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .is_some_and(|(_, value)| {
            let content_type = ContentType::parse(value);
            content_type.is("multipart/report") || content_type.is("multipart/signed")
        })
}

/// Whether a request with these headers and this body (or the start of it) carries an
/// MDN rather than an AS2 message.
pub fn is_mdn(headers: &[(String, String)], body: &[u8]) -> bool {
    let Some(content_type) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.as_str())
    else {
        return false;
    };
    let fields = vec![HeaderField {
        name: "Content-Type".to_owned(),
        value: content_type.to_owned(),
    }];
    let entity = Entity::from_parts(fields, body);
    let outer = entity.content_type();
    if outer.is("multipart/report") {
        return true;
    }
    if !outer.is("multipart/signed") {
        return false;
    }
    entity
        .multipart(&MimeLimits::default())
        .ok()
        .and_then(|multipart| {
            multipart
                .parts
                .first()
                .map(|part| part.content_type().is("multipart/report"))
        })
        .unwrap_or(false)
}

/// Hands the MDN to the sender and says what to answer the partner.
pub async fn reconcile(
    sender: Option<&dyn MdnReconciler>,
    headers: &[(String, String)],
    body: &[u8],
    retry_after_secs: u64,
) -> Answer {
    let unavailable = |text: &str| {
        let mut answer = Answer::text(503, text);
        answer
            .headers
            .push(("Retry-After".to_owned(), retry_after_secs.to_string()));
        answer
    };
    let Some(sender) = sender else {
        tracing::warn!("received a partner mdn but no sender is configured");
        return unavailable("MDNs for outbound messages cannot be taken now, please resend later");
    };
    let message = ReconcileMdnRequest {
        headers: headers
            .iter()
            .map(|(name, value)| v1::HeaderField {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        body: body.to_vec(),
        traceparent: as2_common::telemetry::current_traceparent().unwrap_or_default(),
    };
    match sender.reconcile(message).await {
        Ok(response) => {
            tracing::info!(
                original_message_id = response.original_message_id,
                partnership = response.partnership_id,
                outcome = response.outcome().as_str_name(),
                "partner mdn reconciled"
            );
            Answer::text(200, "MDN received")
        }
        Err(status) => {
            tracing::info!(code = ?status.code(), reason = status.message(), "partner mdn not reconciled");
            match status.code() {
                Code::InvalidArgument => Answer::text(400, status.message()),
                Code::PermissionDenied => Answer::text(403, status.message()),
                Code::NotFound => Answer::text(404, status.message()),
                _ => unavailable("the MDN could not be recorded now, please resend later"),
            }
        }
    }
}

#[cfg(test)]
mod tests {

    struct Request {
        headers: Vec<(String, String)>,
        body: &'static [u8],
    }

    fn request(content_type: &str, body: &'static [u8]) -> Request {
        Request {
            headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
            body,
        }
    }

    fn is_mdn(request: &Request) -> bool {
        super::is_mdn(&request.headers, request.body)
    }

    #[test]
    fn mdns_are_told_from_messages() {
        assert!(is_mdn(&request(
            "multipart/report; report-type=disposition-notification; boundary=b",
            b""
        )));
        let signed_report = b"--b\r\nContent-Type: multipart/report; boundary=c\r\n\r\n--c--\r\n--b\r\nContent-Type: application/pkcs7-signature\r\n\r\nx\r\n--b--\r\n";
        assert!(is_mdn(&request(
            "multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b",
            signed_report
        )));
        let signed_document = b"--b\r\nContent-Type: application/edi-x12\r\n\r\nISA\r\n--b\r\nContent-Type: application/pkcs7-signature\r\n\r\nx\r\n--b--\r\n";
        assert!(!is_mdn(&request(
            "multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b",
            signed_document
        )));
        assert!(!is_mdn(&request(
            "application/pkcs7-mime; smime-type=enveloped-data",
            b"x"
        )));
        assert!(!super::is_mdn(&[], b""));
    }
}
