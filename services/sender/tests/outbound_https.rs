//! The sender against a partner's real HTTPS endpoint that requires a client
//! certificate, with the sender's egress proxy (a real CONNECT proxy): a partnership
//! that names our TLS client key and the partner's CA is delivered through the proxy;
//! one without the client certificate fails with the reason; a mismatched pin fails
//! during the handshake with nothing sent; a matching pin is delivered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use as2_partner::https::sha256_fingerprint;
use as2_partner::proxy::EgressProxy;
use as2_rpc::routing::v1::{OutboundSettings, PartnerHttps};
use as2_testkit::connect_proxy::ConnectProxy;
use as2_testkit::https_partner::{HttpsPartner, PartnerPki};
use support::{KeyMaterial, OutboundStack, RunningSender};

const TLS_CLIENT_KEY_ID: &str = "gateway-tls-client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partnerships_connect_with_their_client_certificate_trust_and_proxy() {
    let stack = OutboundStack::start().await;
    let pki = PartnerPki::generate("partner https");
    pki.client
        .write_key_dir(stack.keys_dir.path(), TLS_CLIENT_KEY_ID);
    let partner = HttpsPartner::start(pki.options(true)).await;
    let proxy = ConnectProxy::start().await;
    let url = partner.url("localhost");
    let partner_key = KeyMaterial::generate("https partner signing");

    let outbound = |https: PartnerHttps| OutboundSettings {
        timeout_seconds: 10,
        max_retries: 0,
        https: Some(https),
        ..OutboundSettings::default()
    };
    let with_client = PartnerHttps {
        client_certificate_key_id: TLS_CLIENT_KEY_ID.to_owned(),
        trusted_ca_pem: pki.ca.cert_pem.clone(),
        ..PartnerHttps::default()
    };
    let cases = [
        ("through-proxy", with_client.clone()),
        (
            "no-client-cert",
            PartnerHttps {
                client_certificate_key_id: String::new(),
                ..with_client.clone()
            },
        ),
        (
            "wrong-pin",
            PartnerHttps {
                client_certificate_key_id: TLS_CLIENT_KEY_ID.to_owned(),
                pinned_server_certificate_sha256: vec![
                    sha256_fingerprint(&pki.ca.certificate).unwrap(),
                ],
                bypass_egress_proxy: true,
                ..PartnerHttps::default()
            },
        ),
        (
            "right-pin",
            PartnerHttps {
                client_certificate_key_id: TLS_CLIENT_KEY_ID.to_owned(),
                pinned_server_certificate_sha256: vec![
                    sha256_fingerprint(&pki.server.certificate).unwrap(),
                ],
                bypass_egress_proxy: true,
                ..PartnerHttps::default()
            },
        ),
    ];
    for (id, https) in &cases {
        stack
            .partnership(
                id,
                &format!("https partner {id}"),
                &partner_key.cert_pem,
                &url,
                outbound(https.clone()),
            )
            .await;
    }

    let mut config = stack.sender_config();
    config.sending.egress_proxy = Some(EgressProxy::parse(&proxy.url()).unwrap());
    let sender = RunningSender::start(config).await;
    for (id, _) in &cases {
        stack
            .produce(id, &format!("{id}.edi"), format!("ISA*{id}~").as_bytes())
            .await;
    }
    let receipts = stack.receipts(cases.len(), Duration::from_secs(2)).await;
    sender.stop().await;

    let receipt = |id: &str| {
        receipts
            .iter()
            .find(|receipt| receipt["partnership_id"] == id)
            .unwrap_or_else(|| panic!("no receipt for {id}: {receipts:?}"))
    };
    assert_eq!(
        receipt("through-proxy")["outcome"],
        "delivered",
        "{receipts:?}"
    );
    assert_eq!(receipt("right-pin")["outcome"], "delivered", "{receipts:?}");

    let no_client = receipt("no-client-cert");
    assert_eq!(no_client["outcome"], "failed");
    let reason = no_client["reason"].as_str().unwrap();
    assert!(reason.contains("certificate required"), "{reason}");

    let wrong_pin = receipt("wrong-pin");
    assert_eq!(wrong_pin["outcome"], "failed");
    let reason = wrong_pin["reason"].as_str().unwrap();
    let presented = sha256_fingerprint(&pki.server.certificate).unwrap();
    assert!(
        reason.contains(&format!(
            "the partner's TLS server certificate (SHA-256 {presented}) is not the one pinned"
        )) && reason.ends_with("nothing was sent"),
        "{reason}"
    );

    // The partner read exactly the two delivered documents, each over a connection
    // with our client certificate.
    let client_fingerprint = sha256_fingerprint(&pki.client.certificate).unwrap();
    let requests = partner.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for request in &requests {
        assert_eq!(
            request.client_certificate_sha256.as_deref(),
            Some(client_fingerprint.as_str())
        );
    }
    for id in ["through-proxy", "right-pin"] {
        let payload = format!("ISA*{id}~");
        assert!(
            requests.iter().any(|request| request
                .body
                .windows(payload.len())
                .any(|window| window == payload.as_bytes())),
            "{id} was not received"
        );
    }

    // The proxied partnerships asked for tunnels to the address, never the name; the
    // pinned ones bypassed the proxy.
    let port = partner.addr().port();
    let requested = proxy.requested();
    assert!(
        requested
            .iter()
            .any(|line| line == &format!("CONNECT 127.0.0.1:{port} HTTP/1.1")),
        "{requested:?}"
    );
    assert!(
        requested.iter().all(|line| !line.contains("localhost")),
        "{requested:?}"
    );
}
