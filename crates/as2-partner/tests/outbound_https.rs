//! The client side of a partnership's HTTPS settings against a real loopback HTTPS
//! server (OpenSSL under hyper) and a real CONNECT proxy: our client certificate, a CA
//! bundle instead of the system's CAs, a pinned server certificate, the egress proxy
//! and the address checks that still hold through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use as2_partner::https::{HttpsSettings, ProxyChoice, ServerTrust, sha256_fingerprint};
use as2_partner::keys::KeyStore;
use as2_partner::proxy::EgressProxy;
use as2_partner::target::{AddressPolicy, Network};
use as2_partner::transport::{
    ClientDefaults, PartnerClients, PartnerTransport, SendError, TransportLimits,
};
use as2_testkit::certificates::TestCertificate;
use as2_testkit::connect_proxy::ConnectProxy;
use as2_testkit::https_partner::{HttpsPartner, HttpsPartnerOptions, PartnerPki};

const CLIENT_KEY_ID: &str = "our-tls-client";

/// The partner's CA, its server certificate for `localhost` and our client
/// certificate, our client key in a key directory.
struct Setup {
    pki: PartnerPki,
    keys_dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let pki = PartnerPki::generate("partner test");
        let keys_dir = tempfile::tempdir().unwrap();
        pki.client.write_key_dir(keys_dir.path(), CLIENT_KEY_ID);
        Self { pki, keys_dir }
    }

    async fn partner(&self, require_client_certificate: bool) -> HttpsPartner {
        HttpsPartner::start(self.pki.options(require_client_certificate)).await
    }

    fn clients(&self, egress_proxy: Option<EgressProxy>) -> PartnerClients {
        PartnerClients::new(
            ClientDefaults {
                limits: TransportLimits {
                    connect_timeout: Duration::from_secs(5),
                    max_response_bytes: 64 * 1024,
                },
                network: Network::default(),
                extra_ca_file: None,
                egress_proxy,
            },
            Arc::new(KeyStore::new(self.keys_dir.path())),
        )
        .unwrap()
    }

    fn trusting_our_ca(&self) -> HttpsSettings {
        HttpsSettings {
            trust: ServerTrust::CaBundle(self.pki.ca.cert_pem.clone()),
            ..HttpsSettings::default()
        }
    }
}

async fn post(transport: &PartnerTransport, url: &str) -> Result<u16, SendError> {
    let headers = [("Content-Type".to_owned(), "application/edi-x12".to_owned())];
    transport
        .post(url, &headers, b"ISA*document~", Duration::from_secs(5))
        .await
        .map(|response| response.status)
}

#[tokio::test]
async fn our_client_certificate_is_presented_when_configured_and_missed_when_not() {
    let setup = Setup::new();
    let partner = setup.partner(true).await;
    let clients = setup.clients(None);
    let url = partner.url("localhost");

    let with_certificate = HttpsSettings {
        client_certificate_key_id: Some(CLIENT_KEY_ID.to_owned()),
        ..setup.trusting_our_ca()
    };
    let transport = clients
        .client(AddressPolicy::Any, &with_certificate)
        .unwrap();
    assert_eq!(post(&transport, &url).await.unwrap(), 200);
    let requests = partner.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].client_certificate_sha256.as_deref(),
        Some(
            sha256_fingerprint(&setup.pki.client.certificate)
                .unwrap()
                .as_str()
        )
    );
    assert_eq!(requests[0].body, b"ISA*document~");

    // Whether the alert reaches the client while it sends the request or before (the
    // request is then never sent), the reason names it.
    let without = clients
        .client(AddressPolicy::Any, &setup.trusting_our_ca())
        .unwrap();
    for _ in 0..5 {
        let outcome = post(&without, &url).await;
        let Err(SendError::Connection(reason)) = &outcome else {
            panic!("expected a connection error: {outcome:?}");
        };
        assert!(
            reason.starts_with(
                "the partner requires a TLS client certificate and the partnership names none"
            ) && reason.contains("alert certificate required"),
            "{reason}"
        );
    }
    assert_eq!(partner.requests().len(), 1, "no second request was read");
    let failed = partner.wait_for_failed_handshakes(1).await;
    assert!(
        failed.iter().any(|failure| failure.contains("certificate")),
        "{failed:?}"
    );

    // A key id that is not in the key directory fails before any connection.
    let missing = HttpsSettings {
        client_certificate_key_id: Some("no-such-key".to_owned()),
        ..HttpsSettings::default()
    };
    let error = clients
        .client(AddressPolicy::Any, &missing)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with("our TLS client certificate: cannot read key \"no-such-key\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_pinned_certificate_is_the_only_one_accepted() {
    let setup = Setup::new();
    // Self-signed and for another name: the pin alone decides.
    let pinned_server = TestCertificate::new("self-signed partner").generate();
    let partner = HttpsPartner::start(HttpsPartnerOptions {
        certificate_pem: pinned_server.cert_pem.clone(),
        key_pem: pinned_server.key_pem.clone(),
        client_ca_pem: None,
    })
    .await;
    let clients = setup.clients(None);
    let url = partner.url("localhost");
    let pinned = |certificate: &openssl::x509::X509| HttpsSettings {
        trust: ServerTrust::Pinned(vec![sha256_fingerprint(certificate).unwrap()]),
        ..HttpsSettings::default()
    };

    let matching = clients
        .client(AddressPolicy::Any, &pinned(&pinned_server.certificate))
        .unwrap();
    assert_eq!(post(&matching, &url).await.unwrap(), 200);
    assert_eq!(partner.requests().len(), 1);

    let other = clients
        .client(AddressPolicy::Any, &pinned(&setup.pki.server.certificate))
        .unwrap();
    let outcome = post(&other, &url).await;
    let Err(SendError::Untrusted(reason)) = &outcome else {
        panic!("expected the certificate to be refused: {outcome:?}");
    };
    let presented = sha256_fingerprint(&pinned_server.certificate).unwrap();
    assert!(
        reason.contains(&format!("(SHA-256 {presented}) is not the one pinned")),
        "{reason}"
    );
    assert!(
        outcome
            .unwrap_err()
            .to_string()
            .ends_with("nothing was sent")
    );
    assert_eq!(
        partner.requests().len(),
        1,
        "the server saw no second request"
    );
    assert_eq!(partner.wait_for_failed_handshakes(1).await.len(), 1);
}

#[tokio::test]
async fn a_ca_bundle_replaces_the_system_roots() {
    let setup = Setup::new();
    let partner = setup.partner(false).await;
    let clients = setup.clients(None);
    let url = partner.url("localhost");

    let ours = clients
        .client(AddressPolicy::Any, &setup.trusting_our_ca())
        .unwrap();
    assert_eq!(post(&ours, &url).await.unwrap(), 200);

    // The system's CAs do not know the test CA.
    let system = clients
        .client(AddressPolicy::Any, &HttpsSettings::default())
        .unwrap();
    let outcome = post(&system, &url).await;
    assert!(
        matches!(&outcome, Err(SendError::Untrusted(reason)) if reason.contains("system's CA certificates")),
        "{outcome:?}"
    );

    // A bundle of another CA refuses the server.
    let other_ca = TestCertificate::new("another CA")
        .certificate_authority()
        .generate();
    let another = HttpsSettings {
        trust: ServerTrust::CaBundle(other_ca.cert_pem.clone()),
        ..HttpsSettings::default()
    };
    let refused = clients.client(AddressPolicy::Any, &another).unwrap();
    let outcome = post(&refused, &url).await;
    let Err(SendError::Untrusted(reason)) = &outcome else {
        panic!("expected the certificate to be refused: {outcome:?}");
    };
    assert!(
        reason.contains("the partnership's CA certificates")
            && reason.contains("partner test server"),
        "{reason}"
    );

    // The bundle's CA with a host name the certificate does not have.
    let by_address = partner.url("127.0.0.1");
    let outcome = post(&ours, &by_address).await;
    assert!(
        matches!(&outcome, Err(SendError::Untrusted(reason)) if reason.contains("mismatch")),
        "{outcome:?}"
    );
    assert_eq!(partner.requests().len(), 1);
}

#[tokio::test]
async fn the_egress_proxy_tunnels_to_the_checked_address_and_refused_targets_never_reach_it() {
    let setup = Setup::new();
    let partner = setup.partner(true).await;
    let proxy = ConnectProxy::start().await;
    let clients = setup.clients(Some(EgressProxy::parse(&proxy.url()).unwrap()));
    let settings = HttpsSettings {
        client_certificate_key_id: Some(CLIENT_KEY_ID.to_owned()),
        ..setup.trusting_our_ca()
    };
    let url = partner.url("localhost");

    let transport = clients.client(AddressPolicy::Any, &settings).unwrap();
    assert_eq!(post(&transport, &url).await.unwrap(), 200);
    let port = partner.addr().port();
    let requested = proxy.requested();
    assert!(
        !requested.is_empty()
            && requested.iter().all(|line| {
                line == &format!("CONNECT 127.0.0.1:{port} HTTP/1.1")
                    || line == &format!("CONNECT [::1]:{port} HTTP/1.1")
            }),
        "the tunnel names an address, never the host name: {requested:?}"
    );
    // TLS inside the tunnel: the server checked our client certificate.
    assert!(partner.requests()[0].client_certificate_sha256.is_some());

    // A partnership that allows public targets only: localhost is refused before any
    // connection, the proxy's included.
    let before = proxy.requested().len();
    let public_only = clients
        .client(AddressPolicy::PublicOnly, &settings)
        .unwrap();
    let outcome = post(&public_only, &url).await;
    assert!(
        matches!(&outcome, Err(SendError::Refused(refused)) if refused.reason.contains("loopback")),
        "{outcome:?}"
    );
    let literal = partner.url("127.0.0.1");
    assert!(matches!(
        post(&public_only, &literal).await,
        Err(SendError::Refused(_))
    ));
    assert_eq!(proxy.requested().len(), before, "the proxy was not asked");

    // A partnership that bypasses the proxy connects directly.
    let direct = HttpsSettings {
        proxy: ProxyChoice::Direct,
        ..settings.clone()
    };
    let transport = clients.client(AddressPolicy::Any, &direct).unwrap();
    assert_eq!(post(&transport, &url).await.unwrap(), 200);
    assert_eq!(proxy.requested().len(), before);
    assert_eq!(partner.requests().len(), 2);

    // A proxy that refuses: the reason names it.
    let refusing = ConnectProxy::refusing().await;
    let via_refusing = HttpsSettings {
        proxy: ProxyChoice::Via(EgressProxy::parse(&refusing.url()).unwrap()),
        ..settings
    };
    let transport = clients.client(AddressPolicy::Any, &via_refusing).unwrap();
    let outcome = post(&transport, &url).await;
    assert!(
        matches!(&outcome, Err(SendError::Connection(reason)) if reason.contains("403 Forbidden") && reason.contains(&refusing.url())),
        "{outcome:?}"
    );
    assert_eq!(partner.requests().len(), 2);
}
