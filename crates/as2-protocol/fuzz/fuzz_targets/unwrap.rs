//! The streaming unwrap with real keys: the first byte picks a Content-Type, the second
//! how the body is cut into chunks, the rest is the body, pushed chunk by chunk; the
//! result must equal the whole-buffer unwrap's. Seeds should include valid messages so
//! the fuzzer reaches the CMS layers.
#![no_main]

mod common;

use as2_protocol::headers::As2RequestHeaders;
use as2_protocol::mdn::{self, MdnVerification};
use as2_protocol::unwrap::{StreamingUnwrap, UnwrapContext, unwrap_message};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 8] = [
    "application/pkcs7-mime; smime-type=enveloped-data",
    "application/pkcs7-mime; smime-type=authEnveloped-data",
    "application/pkcs7-mime; smime-type=compressed-data",
    "application/pkcs7-mime; smime-type=signed-data",
    "application/pkcs7-mime",
    "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=b",
    "application/edi-x12",
    "multipart/report; report-type=disposition-notification; boundary=b",
];

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    let Some((split, body)) = rest.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(*selector) % CONTENT_TYPES.len()];
    let identity = common::identity();
    let headers = As2RequestHeaders::parse([
        ("AS2-From", "fuzzer"),
        ("AS2-To", "gateway"),
        ("Message-ID", "<fuzz@example>"),
        ("Content-Type", content_type),
        ("Disposition-Notification-Options", "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256"),
    ])
    .expect("static headers");
    let identities = std::slice::from_ref(identity);
    let certificates = std::slice::from_ref(&identity.certificate);
    let mut context = UnwrapContext::new(identities, certificates);
    context.limits.max_decompressed_size = 1 << 20;
    let whole = unwrap_message(&headers, body, &context);
    let streamed = StreamingUnwrap::new(&headers, &context, Vec::new()).and_then(|mut unwrap| {
        // Chunk sizes from 1 to 256 bytes, varying along the body.
        let mut rest = body;
        let mut size = usize::from(*split) + 1;
        while !rest.is_empty() {
            let (piece, after) = rest.split_at(size.min(rest.len()));
            unwrap.push(piece)?;
            rest = after;
            size = (size * 7 + 3) % 256 + 1;
        }
        unwrap.finish()
    });
    match (&whole, &streamed) {
        (Ok(whole), Ok((message, data))) => {
            assert_eq!(&whole.payload.data, data);
            assert_eq!(whole.mic, message.mic);
            assert_eq!(whole.facts, message.facts);
        }
        (Err(a), Err(b)) => assert_eq!(a.disposition_status(), b.disposition_status()),
        _ => panic!(
            "whole {:?} and streamed {:?} differ",
            whole.is_ok(),
            streamed.is_ok()
        ),
    }
    let verification = MdnVerification {
        partner_certificates: certificates,
        allow_md5: false,
        check_certificate_validity: false,
        require_signature: false,
    };
    let _ = mdn::parse_mdn(content_type, body, &verification);
});
