//! Asynchronous MDNs to a partner's real HTTPS endpoint that requires a client
//! certificate, with the service's egress proxy (a real CONNECT proxy): the
//! partnership's client certificate and CA get the MDN through the proxy; without the
//! client certificate every attempt fails with the reason; a mismatched pin fails at
//! once with nothing sent; a target the partnership's address policy refuses is never
//! reached, not through the proxy either. In Redis (the settings stored with the job)
//! and in memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use as2_partner::https::sha256_fingerprint;
use as2_partner::proxy::EgressProxy;
use as2_rpc::mdn::v1::DeliveryState;
use as2_rpc::routing::v1::{AsyncMdnPolicy, PartnerHttps};
use as2_testkit::connect_proxy::ConnectProxy;
use as2_testkit::https_partner::{HttpsPartner, PartnerPki};
use support::{MEMORY_URL, RunningMdn, enqueue, enqueue_request, fast_config, wait_for_state};

const TLS_CLIENT_KEY_ID: &str = "gateway-tls-client";

support::in_redis_and_in_memory!(mdns_go_out_with_the_partnerships_https_settings);

async fn mdns_go_out_with_the_partnerships_https_settings(redis_url: &str) {
    let pki = PartnerPki::generate("partner mdn");
    let keys_dir = tempfile::tempdir().unwrap();
    pki.client.write_key_dir(keys_dir.path(), TLS_CLIENT_KEY_ID);
    let partner = HttpsPartner::start(pki.options(true)).await;
    let proxy = ConnectProxy::start().await;

    let mut config = fast_config(redis_url, "mdn-https");
    config.delivery.keys_dir = keys_dir.path().to_path_buf();
    config.delivery.egress_proxy = Some(EgressProxy::parse(&proxy.url()).unwrap());
    let service = RunningMdn::start(config).await;
    let mut client_api = service.client().await;
    let url = partner.url("localhost");
    let with_client = PartnerHttps {
        client_certificate_key_id: TLS_CLIENT_KEY_ID.to_owned(),
        trusted_ca_pem: pki.ca.cert_pem.clone(),
        ..PartnerHttps::default()
    };
    let request = |message: &str, private_targets: bool, https: PartnerHttps| {
        let mut request = enqueue_request(message, &url);
        request.policy = Some(AsyncMdnPolicy {
            allow_private_targets: private_targets,
            https: Some(https),
            ..AsyncMdnPolicy::default()
        });
        request
    };
    let timeout = Duration::from_secs(20);

    // Delivered through the proxy, to the address the service checked, with our client
    // certificate.
    let id = enqueue(
        &mut client_api,
        request("proxied", true, with_client.clone()),
    )
    .await;
    let status = wait_for_state(&mut client_api, &id, DeliveryState::Delivered, timeout).await;
    assert_eq!(status.last_http_status, 200);
    let requests = partner.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].client_certificate_sha256,
        Some(sha256_fingerprint(&pki.client.certificate).unwrap())
    );
    assert!(String::from_utf8_lossy(&requests[0].body).contains("MDN for proxied"));
    let port = partner.addr().port();
    let tunnels = proxy.requested();
    assert!(
        tunnels.contains(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1"))
            && tunnels.iter().all(|line| !line.contains("localhost")),
        "{tunnels:?}"
    );

    // The same URL for a partnership that allows public addresses only: refused before
    // any connection, the proxy's included.
    let id = enqueue(
        &mut client_api,
        request("public-only", false, with_client.clone()),
    )
    .await;
    let status = wait_for_state(&mut client_api, &id, DeliveryState::Failed, timeout).await;
    assert!(
        status
            .last_error
            .starts_with("not delivered: localhost resolves to")
            && status.last_error.contains("does not allow private targets"),
        "{status:?}"
    );
    assert_eq!(
        proxy.requested().len(),
        tunnels.len(),
        "the proxy was not asked"
    );

    // A pin that is not the server's: failed at the first attempt, nothing sent.
    let wrong_pin = PartnerHttps {
        client_certificate_key_id: TLS_CLIENT_KEY_ID.to_owned(),
        pinned_server_certificate_sha256: vec![sha256_fingerprint(&pki.ca.certificate).unwrap()],
        bypass_egress_proxy: true,
        ..PartnerHttps::default()
    };
    let id = enqueue(&mut client_api, request("wrong-pin", true, wrong_pin)).await;
    let status = wait_for_state(&mut client_api, &id, DeliveryState::Failed, timeout).await;
    assert_eq!(status.attempts, 1, "{status:?}");
    assert!(
        status
            .last_error
            .starts_with("not delivered: the partner's TLS server certificate (SHA-256")
            && status.last_error.ends_with("nothing was sent"),
        "{status:?}"
    );

    // Without our client certificate the partner refuses every attempt.
    let no_client = PartnerHttps {
        client_certificate_key_id: String::new(),
        ..with_client
    };
    let id = enqueue(&mut client_api, request("no-client-cert", true, no_client)).await;
    let status = wait_for_state(&mut client_api, &id, DeliveryState::Failed, timeout).await;
    assert!(
        status.last_error.contains("certificate required"),
        "{status:?}"
    );
    assert_eq!(partner.requests().len(), 1, "only the first MDN was read");
    service.stop().await;
}
