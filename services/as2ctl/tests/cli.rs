//! as2ctl end to end: the real binary against a routing service (started
//! in-process through its library) on a real Redis.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use as2_common::config::GrpcTlsConfig;
use as2_common::grpc::local_ca::LocalCa;
use as2_common::runtime::ServiceHandle;
use as2_routing::{RoutingConfig, RoutingServer};
use as2_testkit::RedisServer;
use as2_testkit::certificates::{TestCertificate, certificate_der, certificate_pem};
use serde_json::Value;

/// Redis, a routing service and a scratch directory for certificate files.
struct Stack {
    _redis: RedisServer,
    routing_url: String,
    routing: ServiceHandle,
    files: tempfile::TempDir,
}

impl Stack {
    /// The routing service serves over mutual TLS with a credential of a local CA kept
    /// in the scratch directory, where as2ctl finds the operator's credential
    /// (`--credentials-dir`).
    async fn start() -> Self {
        let redis = RedisServer::start();
        let files = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(files.path(), "cli test CA").unwrap();
        let routing_files = ca
            .ensure_credential(files.path(), "routing", "routing", &["127.0.0.1"])
            .unwrap();
        ca.ensure_credential(files.path(), "operator", "operator:cli-test", &[])
            .unwrap();
        let mut config = RoutingConfig::local(redis.url(), "cli");
        config.grpc.tls = GrpcTlsConfig::mutual_tls(
            &routing_files.certificate,
            &routing_files.key,
            &routing_files.ca,
        );
        let server = RoutingServer::bind(config).await.unwrap();
        let routing_url = format!("https://{}", server.grpc_addr().unwrap());
        let routing = ServiceHandle::spawn("routing", |stop| server.serve(stop));
        Self {
            _redis: redis,
            routing_url,
            routing,
            files,
        }
    }

    /// Runs as2ctl with `--routing-url` pointing at this stack.
    async fn as2ctl(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_as2ctl"));
        command
            .env_remove("AS2_ROUTING_URL")
            .arg("--routing-url")
            .arg(&self.routing_url)
            .arg("--credentials-dir")
            .arg(self.files.path())
            .args(args);
        command.output().await.unwrap()
    }

    /// Writes a file into the scratch directory and returns its path.
    fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.files.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    async fn stop(self) {
        self.routing.stop().await.unwrap();
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and parses standard output as JSON.
fn json(output: &Output) -> Value {
    assert!(output.status.success(), "as2ctl failed: {}", stderr(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not json ({error}): {}", stdout(output)))
}

/// Asserts failure with exit code 1 and an error message containing `needle`.
fn assert_fails_with(output: &Output, needle: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    let message = stderr(output);
    assert!(message.starts_with("error: "), "{message}");
    assert!(
        message.contains(needle),
        "{message:?} does not contain {needle:?}"
    );
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partnership_lifecycle_with_pem_and_der_certificates() {
    let stack = Stack::start().await;
    let pem_file = stack.file(
        "partner.pem",
        certificate_pem(&TestCertificate::valid("partner pem")),
    );
    let der_file = stack.file(
        "partner.der",
        certificate_der(&TestCertificate::valid("partner der")),
    );

    let created = json(
        &stack
            .as2ctl(&[
                "partnership",
                "add",
                "--json",
                "--id",
                "acme",
                "--from",
                "ACME Corp",
                "--to",
                "OUR-GATEWAY",
                "--topic",
                "edi.inbound.acme",
                "--partner-cert",
                path_arg(&pem_file),
                "--partner-cert",
                path_arg(&der_file),
                "--require-signature",
                "--signing-digests",
                "sha256,sha512",
                "--signed-mdn",
                "--default-micalg",
                "sha256",
                "--outbound-url",
                "https://partner.example/as2",
                "--outbound-mdn",
                "async",
                "--async-mdn-url",
                "https://gateway.example/mdn",
            ])
            .await,
    );
    assert_eq!(created["id"], "acme");
    assert_eq!(created["revision"], 1);
    assert_eq!(created["as2_from"], "ACME Corp");
    let subjects: Vec<&str> = created["partner_certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|certificate| certificate["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        [
            "CN=partner pem, O=Test Partner",
            "CN=partner der, O=Test Partner"
        ]
    );
    assert!(
        created["partner_certificates"][1]["not_after"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(
        created["security_policy"]["allowed_signing_digests"],
        serde_json::json!(["sha256", "sha512"])
    );
    assert_eq!(created["outbound"]["mdn_mode"], "async");

    // Human-readable detail, by id and by pair.
    let shown = stack.as2ctl(&["partnership", "show", "acme"]).await;
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = stdout(&shown);
    assert!(
        text.contains("as2-from (partner):               ACME Corp"),
        "{text}"
    );
    assert!(
        text.contains("partner certificates:             2"),
        "{text}"
    );
    assert!(
        text.contains("subject:   CN=partner der, O=Test Partner"),
        "{text}"
    );
    let by_pair = json(
        &stack
            .as2ctl(&[
                "partnership",
                "show",
                "--from",
                "ACME Corp",
                "--to",
                "OUR-GATEWAY",
                "--json",
            ])
            .await,
    );
    assert_eq!(by_pair["id"], "acme");

    // Update: new topic, drop the PEM certificate by fingerprint, add another.
    let pem_fingerprint = created["partner_certificates"][0]["sha256_fingerprint"]
        .as_str()
        .unwrap();
    let rotated = stack.file(
        "rotated.pem",
        certificate_pem(&TestCertificate::valid("partner next")),
    );
    let updated = json(
        &stack
            .as2ctl(&[
                "--json",
                "partnership",
                "update",
                "acme",
                "--topic",
                "edi.inbound.acme.v2",
                "--async-mdn-url-patterns",
                "https://as2.acme.example/mdn,https://*.acme.example:8443",
                "--async-mdn-max-queued",
                "20",
                "--remove-partner-cert",
                pem_fingerprint,
                "--add-partner-cert",
                path_arg(&rotated),
            ])
            .await,
    );
    assert_eq!(updated["revision"], 2);
    assert_eq!(updated["kafka_topic"], "edi.inbound.acme.v2");
    let subjects: Vec<&str> = updated["partner_certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|certificate| certificate["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        [
            "CN=partner der, O=Test Partner",
            "CN=partner next, O=Test Partner"
        ]
    );
    // Unchanged settings survive the update.
    assert_eq!(updated["security_policy"]["require_signature"], true);
    assert_eq!(
        updated["async_mdn"],
        serde_json::json!({
            "allowed_url_patterns": ["https://as2.acme.example/mdn", "https://*.acme.example:8443"],
            "allow_private_targets": false,
            "max_queued": 20,
            "https": {
                "client_certificate_key_id": "",
                "trusted_ca_pem": "",
                "pinned_server_certificate_sha256": [],
                "egress_proxy": "default",
            },
        })
    );
    assert_fails_with(
        &stack
            .as2ctl(&[
                "partnership",
                "update",
                "acme",
                "--async-mdn-url-patterns",
                "as2.acme.example/mdn",
            ])
            .await,
        "invalid partnership: async_mdn.allowed_url_patterns[0]: \"as2.acme.example/mdn\": must start with http:// or https://",
    );

    let stale = stack
        .as2ctl(&[
            "partnership",
            "update",
            "acme",
            "--name",
            "x",
            "--expected-revision",
            "1",
        ])
        .await;
    assert_fails_with(&stale, "conflict: partnership \"acme\" is at revision 2");

    // A second partnership, then the table and the JSON list.
    let second = stack
        .as2ctl(&[
            "partnership",
            "add",
            "--from",
            "beta",
            "--to",
            "OUR-GATEWAY",
            "--topic",
            "beta-in",
        ])
        .await;
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).starts_with("created partnership "),
        "{}",
        stdout(&second)
    );

    let table = stack.as2ctl(&["partnership", "list"]).await;
    assert!(table.status.success(), "{}", stderr(&table));
    let table = stdout(&table);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("AS2-FROM") && lines[0].contains("TOPIC")
    );
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("acme ") && line.contains("ACME Corp")),
        "{table}"
    );

    let listed = json(&stack.as2ctl(&["partnership", "list", "--json"]).await);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"acme"));

    // Remove, then it is gone.
    let removed = stack.as2ctl(&["partnership", "remove", "acme"]).await;
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(
        stdout(&removed)
            .contains("removed partnership acme (ACME Corp -> OUR-GATEWAY, revision 2)")
    );
    assert_fails_with(
        &stack.as2ctl(&["partnership", "show", "acme"]).await,
        "not found: partnership \"acme\" not found",
    );
    assert_fails_with(
        &stack.as2ctl(&["partnership", "remove", "acme"]).await,
        "not found",
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_settings_of_both_directions_from_files_and_fingerprints() {
    let stack = Stack::start().await;
    let partner_server = TestCertificate::new("partner https server").generate();
    let pin_file = stack.file("partner-server.crt", &partner_server.cert_pem);
    let ca = TestCertificate::new("partner mdn ca")
        .certificate_authority()
        .generate();
    let ca_file = stack.file("partner-ca.der", ca.cert_der());
    let fingerprint = as2_partner::https::sha256_fingerprint(&partner_server.certificate).unwrap();
    let second_pin = "AB:".repeat(31) + "AB";
    let created = json(
        &stack
            .as2ctl(&[
                "--json",
                "partnership",
                "add",
                "--id",
                "tls-partner",
                "--from",
                "TLS PARTNER",
                "--to",
                "OUR-GATEWAY",
                "--topic",
                "edi.tls",
                "--outbound-url",
                "https://as2.partner.example/as2",
                "--outbound-tls-client-key-id",
                "our-tls-client",
                "--outbound-tls-pin",
                &format!("{},{second_pin}", path_arg(&pin_file)),
                "--outbound-egress-proxy",
                "direct",
                "--async-mdn-tls-ca-file",
                path_arg(&ca_file),
                "--async-mdn-egress-proxy",
                "http://Proxy.Internal:3128",
            ])
            .await,
    );
    assert_eq!(
        created["outbound"]["https"],
        serde_json::json!({
            "client_certificate_key_id": "our-tls-client",
            "trusted_ca_pem": "",
            "pinned_server_certificate_sha256": [fingerprint, "ab".repeat(32)],
            "egress_proxy": "direct",
        })
    );
    let mdn_https = &created["async_mdn"]["https"];
    assert_eq!(mdn_https["trusted_ca_pem"], ca.cert_pem.as_str());
    assert_eq!(mdn_https["egress_proxy"], "http://proxy.internal:3128");

    let shown = stdout(&stack.as2ctl(&["partnership", "show", "tls-partner"]).await);
    assert!(
        shown.contains("client certificate our-tls-client; trusts pinned")
            && shown.contains(
                "the partnership's 1 CA certificate(s); egress proxy http://proxy.internal:3128"
            ),
        "{shown}"
    );

    // Clearing the pins and the key id, and a proxy the routing service refuses.
    let updated = json(
        &stack
            .as2ctl(&[
                "--json",
                "partnership",
                "update",
                "tls-partner",
                "--outbound-tls-pin",
                "",
                "--outbound-tls-client-key-id",
                "",
            ])
            .await,
    );
    assert_eq!(
        updated["outbound"]["https"]["pinned_server_certificate_sha256"],
        serde_json::json!([])
    );
    assert_eq!(updated["outbound"]["https"]["egress_proxy"], "direct");
    assert_fails_with(
        &stack
            .as2ctl(&[
                "partnership",
                "update",
                "tls-partner",
                "--outbound-egress-proxy",
                "http://user:secret@proxy:3128",
            ])
            .await,
        "invalid partnership: outbound.https.egress_proxy_url: \"http://user:secret@proxy:3128\": user info is not supported in the egress proxy URL",
    );
    assert_fails_with(
        &stack
            .as2ctl(&[
                "partnership",
                "update",
                "tls-partner",
                "--async-mdn-tls-pin",
                "0123",
            ])
            .await,
        "cannot read certificate file 0123",
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_explained_with_a_failing_exit_code() {
    let stack = Stack::start().await;
    let expired = stack.file(
        "expired.pem",
        certificate_pem(&TestCertificate::expired("old partner")),
    );
    let output = stack
        .as2ctl(&[
            "partnership",
            "add",
            "--from",
            "partner",
            "--to",
            "us",
            "--topic",
            "t",
            "--partner-cert",
            path_arg(&expired),
        ])
        .await;
    assert_fails_with(
        &output,
        "invalid partnership: partner_certificates[0]: certificate expired at",
    );
    assert_fails_with(&output, "expired.pem");

    let junk = stack.file("junk.crt", b"\x30\x03\x02\x01\x01");
    let output = stack
        .as2ctl(&[
            "partnership",
            "add",
            "--from",
            "p",
            "--to",
            "us",
            "--topic",
            "t",
            "--partner-cert",
            path_arg(&junk),
        ])
        .await;
    assert_fails_with(&output, "junk.crt holds no PEM or DER certificate");

    let output = stack
        .as2ctl(&[
            "partnership",
            "add",
            "--from",
            "caf\u{e9}",
            "--to",
            "us",
            "--topic",
            "t",
        ])
        .await;
    assert_fails_with(
        &output,
        "invalid partnership: as2_from: AS2 ID must be printable ASCII",
    );

    let output = stack
        .as2ctl(&[
            "partnership",
            "add",
            "--from",
            "p",
            "--to",
            "us",
            "--topic",
            "bad topic",
        ])
        .await;
    assert_fails_with(&output, "kafka_topic: Kafka topic may only contain");

    let ok = stack
        .as2ctl(&[
            "partnership",
            "add",
            "--id",
            "p1",
            "--from",
            "p",
            "--to",
            "us",
            "--topic",
            "t",
        ])
        .await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let output = stack
        .as2ctl(&[
            "partnership",
            "add",
            "--from",
            "p",
            "--to",
            "us",
            "--topic",
            "t2",
        ])
        .await;
    assert_fails_with(
        &output,
        "already exists: partnership \"p1\" already has AS2-From \"p\"",
    );

    let output = stack.as2ctl(&["partnership", "update", "p1"]).await;
    assert_fails_with(&output, "nothing to change");

    let output = stack
        .as2ctl(&[
            "partnership",
            "update",
            "p1",
            "--remove-partner-cert",
            "ab:cd",
        ])
        .await;
    assert_fails_with(
        &output,
        "no partner certificate with sha-256 fingerprint abcd",
    );

    // Invalid syntax is clap's exit code 2.
    let output = stack.as2ctl(&["partnership", "add", "--from", "p"]).await;
    assert_eq!(output.status.code(), Some(2));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_url_comes_from_the_environment_and_failures_to_connect_are_clear() {
    let stack = Stack::start().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_as2ctl"))
        .env("AS2_ROUTING_URL", &stack.routing_url)
        .env("AS2_CTL_CREDENTIALS_DIR", stack.files.path())
        .args(["partnership", "list", "--json"])
        .output()
        .await
        .unwrap();
    assert_eq!(json(&output), serde_json::json!([]));

    let unused_port = as2_testkit::free_port();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_as2ctl"))
        .env(
            "AS2_ROUTING_URL",
            format!("https://127.0.0.1:{unused_port}"),
        )
        .env("AS2_CTL_CREDENTIALS_DIR", stack.files.path())
        .args(["partnership", "list"])
        .output()
        .await
        .unwrap();
    assert_fails_with(
        &output,
        &format!("cannot reach the routing service at https://127.0.0.1:{unused_port}"),
    );
    stack.stop().await;
}
