//! HTTPS on the AS2 endpoint with independent clients: curl posts a message pyas2lib
//! built over TLS 1.3 and TLS 1.2 (HTTP/2 and HTTP/1.1 by ALPN); `openssl s_client`
//! offering only TLS 1.1 or 1.0 (with the security level lowered so that it really offers
//! them) is refused with the server's protocol-version alert; a partnership that requires
//! its partner's TLS client certificate answers 403 with the reason to a message without
//! one or with another certificate, and processes the one with the pinned certificate.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use as2_common::grpc::local_ca::{LocalCa, Validity};
use as2_common::grpc::tls::CredentialFiles;
use as2_edge::tls::As2TlsConfig;
use as2_rpc::routing::v1::{CertificateUsage, PartnerCertificate};
use support::Stack;

const OPEN: &str = "https-open";
const PINNED: &str = "https-pinned";

/// A message from `as2_from`, built by pyas2lib, signed, asking for a sync MDN: curl's
/// header arguments and the body in a file.
fn message(stack: &Stack, as2_from: &str, directory: &Path) -> (Vec<String>, std::path::PathBuf) {
    let (headers, body) = stack.signed_sync_message(as2_from);
    let path = directory.join(format!("{as2_from}.body"));
    std::fs::write(&path, body).unwrap();
    let headers = headers
        .into_iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("content-length"))
        .map(|(name, value)| format!("{name}: {value}"))
        .collect();
    (headers, path)
}

/// `curl` posting the message over HTTPS; returns (status, body, verbose log).
fn curl(
    url: &str,
    ca: &Path,
    headers: &[String],
    body: &Path,
    extra: &[&str],
) -> (u16, String, String) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-v", "--cacert"])
        .arg(ca)
        .args(["-o", "-", "-w", "\n%{http_code}", "--data-binary"])
        .arg(format!("@{}", body.display()));
    for header in headers {
        command.arg("-H").arg(header);
    }
    let output = command.args(extra).arg(url).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (text, status) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (
        status.trim().parse().unwrap_or(0),
        text.to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn s_client(port: u16, version: &str) -> Output {
    Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
        ])
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_tls_1_3_and_1_2_only_and_pinned_client_certificates() {
    let files = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(files.path(), "edge https test CA").unwrap();
    let server = CredentialFiles {
        certificate: files.path().join("edge.crt"),
        key: files.path().join("edge.key"),
        ca: files.path().join("ca.crt"),
    };
    ca.write_credential(&server, "as2.example", &["127.0.0.1"], Validity::default())
        .unwrap();
    std::fs::write(&server.ca, ca.certificate_pem().unwrap()).unwrap();
    let issue_client = |name: &str| {
        let client = CredentialFiles {
            certificate: files.path().join(format!("{name}.crt")),
            key: files.path().join(format!("{name}.key")),
            ca: server.ca.clone(),
        };
        ca.write_credential(&client, name, &[], Validity::default())
            .unwrap();
        client
    };
    let partner_client = issue_client("partner-client");
    let stranger_client = issue_client("stranger-client");

    let tls = As2TlsConfig {
        as2_tls_cert: Some(server.certificate.clone()),
        as2_tls_key: Some(server.key.clone()),
    };
    let stack = Stack::start_with(move |config| config.as2_tls = tls).await;
    stack
        .create_partnership(stack.partnership(OPEN, "https-open"))
        .await;
    let mut pinned = stack.partnership(PINNED, "https-pinned");
    pinned.partner_certificates.push(PartnerCertificate {
        pem: std::fs::read_to_string(&partner_client.certificate).unwrap(),
        usage: CertificateUsage::TlsClient as i32,
        ..PartnerCertificate::default()
    });
    pinned
        .security_policy
        .get_or_insert_with(Default::default)
        .require_tls_client_certificate = true;
    stack.create_partnership(pinned).await;

    let port = stack.edge.addr.port();
    let url = format!("https://127.0.0.1:{port}/as2");

    // TLS 1.3 with HTTP/2, and TLS 1.2 with HTTP/1.1: processed.
    for (version, extra) in [
        ("TLSv1.3", &["--tlsv1.3", "--http2"][..]),
        (
            "TLSv1.2",
            &["--tlsv1.2", "--tls-max", "1.2", "--http1.1"][..],
        ),
    ] {
        let (headers, body) = message(&stack, OPEN, files.path());
        let (status, text, log) = curl(&url, &server.ca, &headers, &body, extra);
        assert_eq!(status, 200, "{version}: {text}\n{log}");
        assert!(text.contains("processed"), "{version}: {text}");
        assert!(
            log.contains(&format!("SSL connection using {version}")),
            "{log}"
        );
    }

    // TLS 1.1 and 1.0, offered for real: the server's protocol-version alert.
    for version in ["-tls1_1", "-tls1"] {
        let output = s_client(port, version);
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{version} was accepted:\n{log}");
        assert!(log.contains("alert protocol version"), "{version}:\n{log}");
    }

    // The pinned partnership: no certificate, another certificate, then the pinned one.
    let (headers, body) = message(&stack, PINNED, files.path());
    let (status, text, _) = curl(&url, &server.ca, &headers, &body, &[]);
    assert_eq!(status, 403, "{text}");
    assert_eq!(
        text.trim(),
        format!(
            "partnership {} requires a TLS client certificate; none was presented",
            pinned_id(&stack).await
        )
    );
    let stranger = [
        "--cert",
        stranger_client.certificate.to_str().unwrap(),
        "--key",
        stranger_client.key.to_str().unwrap(),
    ];
    let (status, text, _) = curl(&url, &server.ca, &headers, &body, &stranger);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("is not one of partnership"), "{text}");
    let partner = [
        "--cert",
        partner_client.certificate.to_str().unwrap(),
        "--key",
        partner_client.key.to_str().unwrap(),
    ];
    let (status, text, log) = curl(&url, &server.ca, &headers, &body, &partner);
    assert_eq!(status, 200, "{text}\n{log}");
    assert!(text.contains("processed"), "{text}");

    stack.edge.stop().await;
    stack.routing.stop().await;
}

/// The id the routing service gave the pinned partnership.
async fn pinned_id(stack: &Stack) -> String {
    let mut client = stack.routing.client().await;
    let page = client
        .list_partnerships(as2_rpc::routing::v1::ListPartnershipsRequest::default())
        .await
        .unwrap()
        .into_inner();
    page.partnerships
        .into_iter()
        .find(|partnership| partnership.as2_from == PINNED)
        .unwrap()
        .id
}
