//! A delivery job: what is delivered where, how it got there, and its validation.

use as2_partner::target::{AddressPolicy, AsyncMdnTargets};
use as2_rpc::mdn::v1::{DeliveryState, EnqueueMdnDeliveryRequest, enqueue_mdn_delivery_request};

/// Largest MDN body accepted, in bytes. An MDN is a few kilobytes; this bounds what a
/// confused caller can park in Redis.
pub const MAX_MDN_BODY_BYTES: usize = 1024 * 1024;
/// Largest number of header fields of a prepared MDN.
const MAX_HEADER_FIELDS: usize = 64;
/// Longest identifier, URL or header value accepted.
const MAX_FIELD_BYTES: usize = 4096;

/// Header fields that the HTTP client sets itself and that a prepared MDN must not
/// carry (they would contradict the body that is actually sent).
const CONNECTION_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];

/// A request field that is missing or malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field's name in the request.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Where the MDN goes, as the partner's Receipt-Delivery-Option named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryTarget {
    /// An `http://` or `https://` URL: the MDN is POSTed there.
    Http(String),
    /// A `mailto:` address: not supported; the delivery is recorded as failed at once
    /// so the partner's message is still acknowledged and the failure is visible.
    Mailto(String),
}

impl DeliveryTarget {
    /// Classifies the Receipt-Delivery-Option URL.
    pub fn parse(url: &str) -> Result<Self, FieldError> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("mailto:") {
            return Ok(Self::Mailto(url.to_owned()));
        }
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(FieldError::new(
                "delivery_url",
                "must be an http://, https:// or mailto: URL",
            ));
        }
        let uri: http::Uri = url.parse().map_err(|error| {
            FieldError::new("delivery_url", format!("not a valid URL: {error}"))
        })?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(FieldError::new("delivery_url", "has no host"));
        }
        Ok(Self::Http(url.to_owned()))
    }
}

/// The MDN exactly as it is sent: header fields in order and the body.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreparedMdn {
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The MIME entity.
    pub body: Vec<u8>,
}

/// A validated enqueue request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// Deterministic id: the same (as2_from, as2_to, original_message_id) gives the
    /// same id, which makes enqueueing idempotent.
    pub delivery_id: String,
    /// Message-ID of the message the MDN answers.
    pub original_message_id: String,
    /// Partnership of the original message.
    pub partnership_id: String,
    /// AS2-From of the request (as the caller gave it).
    pub as2_from: String,
    /// AS2-To of the request (as the caller gave it).
    pub as2_to: String,
    /// Where it goes.
    pub target: DeliveryTarget,
    /// What is sent.
    pub mdn: PreparedMdn,
    /// W3C traceparent of the request that produced the job.
    pub traceparent: String,
    /// The partnership's policy for asynchronous MDN targets; `Err` with the reason
    /// when the request's policy is not valid (the delivery is then refused).
    pub targets: Result<AsyncMdnTargets, String>,
}

impl NewDelivery {
    /// The URL as given.
    pub fn url(&self) -> &str {
        match &self.target {
            DeliveryTarget::Http(url) | DeliveryTarget::Mailto(url) => url,
        }
    }

    /// Why the delivery cannot be attempted at all (recorded as failed at once, no
    /// connection made): a mailto: URL, an invalid policy, or a URL the partnership's
    /// policy does not allow (its patterns, or an address that is not allowed).
    pub fn refusal(&self) -> Option<String> {
        let url = match &self.target {
            DeliveryTarget::Mailto(_) => {
                return Some(
                    "mailto: delivery of asynchronous MDNs is not supported (only http and https)"
                        .to_owned(),
                );
            }
            DeliveryTarget::Http(url) => url,
        };
        let targets = match &self.targets {
            Ok(targets) => targets,
            Err(reason) => return Some(reason.clone()),
        };
        targets
            .check_url(url)
            .err()
            .map(|refused| format!("not delivered: {refused}"))
    }

    /// The addresses the URL's host may resolve to.
    pub fn address_policy(&self) -> AddressPolicy {
        self.targets
            .as_ref()
            .map_or(AddressPolicy::PublicOnly, |targets| targets.addresses)
    }

    /// The partnership's HTTPS settings, encoded as the store keeps them (empty: the
    /// defaults, or a policy that is not valid, which is refused anyway).
    pub fn encoded_https(&self) -> Vec<u8> {
        use as2_rpc::prost::Message as _;
        self.targets
            .as_ref()
            .ok()
            .and_then(|targets| targets.https.to_proto())
            .map(|https| https.encode_to_vec())
            .unwrap_or_default()
    }

    /// Most deliveries of the partnership queued at once.
    pub fn max_queued(&self) -> u32 {
        self.targets
            .as_ref()
            .map_or(as2_partner::target::DEFAULT_MAX_QUEUED, |targets| {
                targets.max_queued
            })
    }
}

/// Validates an enqueue request and derives its delivery id.
///
/// Only prepared MDNs are accepted: the edge builds and signs MDNs with the
/// partnership's key and the partner's preferred algorithm before it hands them
/// over; MDN inputs would need this service to hold signing keys as well.
pub fn validate_request(request: EnqueueMdnDeliveryRequest) -> Result<NewDelivery, FieldError> {
    let original_message_id = required("original_message_id", request.original_message_id)?;
    let as2_from = required("as2_from", request.as2_from)?;
    let as2_to = required("as2_to", request.as2_to)?;
    let partnership_id = bounded("partnership_id", request.partnership_id)?;
    let traceparent = bounded("traceparent", request.traceparent)?;
    let target = DeliveryTarget::parse(&required("delivery_url", request.delivery_url)?)?;
    let targets = AsyncMdnTargets::from_proto(request.policy.as_ref()).map_err(|error| {
        format!("not delivered: the partnership's asynchronous MDN policy is not valid: {error}")
    });
    let mdn = match request.mdn {
        Some(enqueue_mdn_delivery_request::Mdn::Prepared(prepared)) => prepared,
        Some(enqueue_mdn_delivery_request::Mdn::Inputs(_)) => {
            return Err(FieldError::new(
                "mdn",
                "mdn inputs are not supported; send a prepared (built and signed) MDN",
            ));
        }
        None => return Err(FieldError::new("mdn", "must be set")),
    };
    if mdn.body.is_empty() {
        return Err(FieldError::new("mdn.prepared.body", "must not be empty"));
    }
    if mdn.body.len() > MAX_MDN_BODY_BYTES {
        return Err(FieldError::new(
            "mdn.prepared.body",
            format!("larger than {MAX_MDN_BODY_BYTES} bytes"),
        ));
    }
    if mdn.headers.len() > MAX_HEADER_FIELDS {
        return Err(FieldError::new(
            "mdn.prepared.headers",
            format!("more than {MAX_HEADER_FIELDS} fields"),
        ));
    }
    let mut headers = Vec::with_capacity(mdn.headers.len());
    for field in mdn.headers {
        if http::HeaderName::from_bytes(field.name.as_bytes()).is_err()
            || http::HeaderValue::from_str(&field.value).is_err()
            || field.value.len() > MAX_FIELD_BYTES
        {
            return Err(FieldError::new(
                "mdn.prepared.headers",
                format!("invalid header field {:?}", field.name),
            ));
        }
        if CONNECTION_HEADERS
            .iter()
            .any(|name| field.name.eq_ignore_ascii_case(name))
        {
            continue;
        }
        headers.push((field.name, field.value));
    }
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        return Err(FieldError::new(
            "mdn.prepared.headers",
            "must include Content-Type",
        ));
    }
    Ok(NewDelivery {
        delivery_id: delivery_id(&as2_from, &as2_to, &original_message_id),
        original_message_id,
        partnership_id,
        as2_from,
        as2_to,
        target,
        mdn: PreparedMdn {
            headers,
            body: mdn.body,
        },
        traceparent,
        targets,
    })
}

fn required(field: &'static str, value: String) -> Result<String, FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    bounded(field, value)
}

fn bounded(field: &'static str, value: String) -> Result<String, FieldError> {
    if value.len() > MAX_FIELD_BYTES {
        return Err(FieldError::new(
            field,
            format!("longer than {MAX_FIELD_BYTES} bytes"),
        ));
    }
    Ok(value)
}

/// The delivery id of an MDN: 32 hex digits of SHA-256 over the AS2 pair and the
/// original Message-ID, each preceded by its length so no two triples collide.
pub fn delivery_id(as2_from: &str, as2_to: &str, original_message_id: &str) -> String {
    let mut input =
        Vec::with_capacity(as2_from.len() + as2_to.len() + original_message_id.len() + 24);
    for part in [as2_from, as2_to, original_message_id] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part.as_bytes());
    }
    let digest = openssl::sha::sha256(&input);
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `text` looks like a delivery id (so lookups of garbage never reach Redis).
pub fn is_delivery_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// The stored name of a state (the proto enum in lowercase, kebab-case).
pub fn state_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Unspecified => "unspecified",
        DeliveryState::Queued => "queued",
        DeliveryState::InFlight => "in-flight",
        DeliveryState::RetryScheduled => "retry-scheduled",
        DeliveryState::Delivered => "delivered",
        DeliveryState::Failed => "failed",
    }
}

/// The state of a stored name; unknown names are `Unspecified`.
pub fn state_from_name(name: &str) -> DeliveryState {
    match name {
        "queued" => DeliveryState::Queued,
        "in-flight" => DeliveryState::InFlight,
        "retry-scheduled" => DeliveryState::RetryScheduled,
        "delivered" => DeliveryState::Delivered,
        "failed" => DeliveryState::Failed,
        _ => DeliveryState::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use as2_rpc::mdn::v1::{HeaderField, MdnInputs};

    use super::*;

    fn request() -> EnqueueMdnDeliveryRequest {
        EnqueueMdnDeliveryRequest {
            original_message_id: "<abc@partner>".to_owned(),
            partnership_id: "p1".to_owned(),
            as2_from: "gateway".to_owned(),
            as2_to: "partner".to_owned(),
            delivery_url: "https://partner.example/mdn".to_owned(),
            traceparent: String::new(),
            policy: None,
            mdn: Some(enqueue_mdn_delivery_request::Mdn::Prepared(
                as2_rpc::mdn::v1::PreparedMdn {
                    headers: vec![
                        HeaderField {
                            name: "Content-Type".to_owned(),
                            value: "multipart/report".to_owned(),
                        },
                        HeaderField {
                            name: "Content-Length".to_owned(),
                            value: "999".to_owned(),
                        },
                    ],
                    body: b"report".to_vec(),
                },
            )),
        }
    }

    #[test]
    fn the_id_depends_on_pair_and_message_id_only() {
        let first = validate_request(request()).unwrap();
        let mut other_url = request();
        other_url.delivery_url = "http://elsewhere/".to_owned();
        assert_eq!(
            validate_request(other_url).unwrap().delivery_id,
            first.delivery_id
        );
        let mut other_message = request();
        other_message.original_message_id = "<def@partner>".to_owned();
        assert_ne!(
            validate_request(other_message).unwrap().delivery_id,
            first.delivery_id
        );
        assert!(is_delivery_id(&first.delivery_id));
        assert_ne!(delivery_id("a", "b\0c", "d"), delivery_id("a\0b", "c", "d"));
    }

    #[test]
    fn connection_headers_are_dropped() {
        let delivery = validate_request(request()).unwrap();
        assert_eq!(
            delivery.mdn.headers,
            vec![("Content-Type".to_owned(), "multipart/report".to_owned())]
        );
    }

    #[test]
    fn urls_are_classified() {
        assert_eq!(
            DeliveryTarget::parse("mailto:as2@partner.example").unwrap(),
            DeliveryTarget::Mailto("mailto:as2@partner.example".to_owned())
        );
        assert!(matches!(
            DeliveryTarget::parse("HTTP://partner:8080/mdn"),
            Ok(DeliveryTarget::Http(_))
        ));
        assert!(DeliveryTarget::parse("ftp://partner/").is_err());
        assert!(DeliveryTarget::parse("http://").is_err());
        assert!(DeliveryTarget::parse("http://bad host/").is_err());
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let mut missing = request();
        missing.as2_from.clear();
        assert_eq!(validate_request(missing).unwrap_err().field, "as2_from");

        let mut inputs = request();
        inputs.mdn = Some(enqueue_mdn_delivery_request::Mdn::Inputs(
            MdnInputs::default(),
        ));
        assert_eq!(validate_request(inputs).unwrap_err().field, "mdn");

        let mut no_type = request();
        if let Some(enqueue_mdn_delivery_request::Mdn::Prepared(prepared)) = &mut no_type.mdn {
            prepared.headers.remove(0);
        }
        assert_eq!(
            validate_request(no_type).unwrap_err().field,
            "mdn.prepared.headers"
        );

        let mut bad_header = request();
        if let Some(enqueue_mdn_delivery_request::Mdn::Prepared(prepared)) = &mut bad_header.mdn {
            prepared.headers[0].value = "a\r\nb".to_owned();
        }
        assert!(validate_request(bad_header).is_err());
    }

    #[test]
    fn state_names_round_trip() {
        for state in [
            DeliveryState::Queued,
            DeliveryState::InFlight,
            DeliveryState::RetryScheduled,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ] {
            assert_eq!(state_from_name(state_name(state)), state);
        }
    }
}
