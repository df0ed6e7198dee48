//! `/metrics` counts what happened: after a known sequence of messages (processed,
//! a resend, a bad signature, an unknown partner, a request without AS2 headers) the
//! edge's counters hold exactly those numbers, error dispositions included.

#![allow(clippy::unwrap_used)]

mod support;

use as2_protocol::headers::MessageId;
use support::{KeyMaterial, PARTNER_ID, Stack, post, signed_encrypted_message};

const TOPIC: &str = "metrics-documents";
const PAYLOAD: &[u8] = b"ISA*00*metrics test~";

/// A signed, encrypted message from `as2_from` asking for a signed synchronous MDN.
fn message(
    stack: &Stack,
    as2_from: &str,
    signer: &KeyMaterial,
    message_id: &MessageId,
) -> support::As2Request {
    signed_encrypted_message(&stack.gateway, as2_from, signer, message_id, PAYLOAD)
}

/// The value of the sample named exactly `series` on the page.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{page}"))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_a_known_sequence_of_messages() {
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, TOPIC))
        .await;
    let url = stack.edge.url();
    let mut received_bytes = 0;
    // Bodies the edge reads: a request answered from its headers alone (unknown pair,
    // no AS2 headers) is not counted.
    let mut send = async |headers: &[(String, String)], body: Vec<u8>, read: bool| {
        if read {
            received_bytes += body.len();
        }
        post(&url, headers, body).await
    };

    let first_id = MessageId::generate("partner.example").unwrap();
    let (first_headers, first_body) = message(&stack, PARTNER_ID, &stack.partner, &first_id);
    for _ in 0..2 {
        // The second time is a resend: answered as before, published once.
        let response = send(&first_headers, first_body.clone(), true).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let second_id = MessageId::generate("partner.example").unwrap();
    let (headers, body) = message(&stack, PARTNER_ID, &stack.partner, &second_id);
    assert_eq!(send(&headers, body, true).await.status, 200);

    let impostor = KeyMaterial::generate("not the partner");
    let forged_id = MessageId::generate("partner.example").unwrap();
    let (headers, body) = message(&stack, PARTNER_ID, &impostor, &forged_id);
    assert_eq!(send(&headers, body, true).await.status, 200, "an error MDN");

    let stranger_id = MessageId::generate("stranger.example").unwrap();
    let (headers, body) = message(&stack, "stranger", &stack.partner, &stranger_id);
    assert_eq!(
        send(&headers, body, false).await.status,
        200,
        "an error MDN"
    );

    let no_as2_headers = [("Content-Type".to_owned(), "text/plain".to_owned())];
    assert_eq!(
        send(&no_as2_headers, b"not an AS2 message".to_vec(), false)
            .await
            .status,
        400
    );

    let page =
        String::from_utf8(http_get(&format!("http://{}/metrics", stack.edge.admin_addr)).await)
            .unwrap();
    let messages = |outcome: &str, disposition: &str| {
        sample(
            &page,
            &format!(
                "as2_edge_messages_total{{outcome=\"{outcome}\",disposition=\"{disposition}\"}}"
            ),
        )
    };
    assert_eq!(messages("processed", "processed"), 2.0);
    assert_eq!(messages("duplicate", "processed"), 1.0);
    // The forged signature is inside CBC encryption, which authenticates nothing: it
    // is answered as a decryption failure (docs/security.md).
    assert_eq!(messages("rejected", "decryption-failed"), 1.0);
    assert_eq!(messages("rejected", "unknown-trading-partner"), 1.0);
    assert_eq!(messages("bad_request", "none"), 1.0);
    assert_eq!(
        sample(&page, "as2_edge_message_duration_seconds_count"),
        6.0
    );
    assert_eq!(
        sample(&page, "as2_edge_dedup_hits_total{state=\"done\"}"),
        1.0
    );
    assert_eq!(
        sample(&page, "as2_edge_dedup_hits_total{state=\"in_flight\"}"),
        0.0
    );
    assert_eq!(
        sample(
            &page,
            "as2_edge_kafka_publish_duration_seconds_count{result=\"ok\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &page,
            "as2_edge_kafka_publish_duration_seconds_count{result=\"error\"}"
        ),
        0.0
    );
    #[allow(clippy::cast_precision_loss)]
    {
        assert_eq!(
            sample(&page, "as2_edge_published_bytes_total"),
            (2 * PAYLOAD.len()) as f64
        );
        assert_eq!(
            sample(&page, "as2_edge_received_bytes_total"),
            received_bytes as f64
        );
    }
    // Five messages needed their partnership (the request without AS2 headers did not),
    // each once (judged from its headers; the processing goes on from there); the first
    // lookup of each pair misses, and a watch RESET may empty the cache once.
    let hits = sample(&page, "as2_edge_route_cache_lookups_total{result=\"hit\"}");
    let misses = sample(&page, "as2_edge_route_cache_lookups_total{result=\"miss\"}");
    assert_eq!(hits + misses, 5.0, "{hits} hits, {misses} misses");
    assert!(misses >= 2.0, "{misses} misses");
}

/// GET `url` and return the body.
async fn http_get(url: &str) -> Vec<u8> {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}
