//! The README's quick start, end to end: the gateway started with the README's command
//! (ports moved by environment variables so the test cannot collide with a running
//! gateway; no other AS2_* variable set), then what its banner says to try: `as2ctl
//! send` with sync and async MDNs, a message built by pyas2lib, `as2ctl consume` reading
//! the documents back from the embedded Kafka cluster, `as2ctl mdn list` and
//! `partnership list`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// How long the gateway may take to print its banner (a cold debug binary on a busy
/// machine included).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// The labelled lines of the banner.
const BANNER_LABELS: [&str; 7] = [
    "AS2 URL",
    "Our AS2 ID",
    "Our certificate",
    "Kafka bootstrap",
    "Routing gRPC",
    "MDN gRPC",
    "State",
];

/// The quick-start command from the README: the arguments after `cargo run ... --`.
fn readme_gateway_arguments() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let section = readme
        .split("\n## ")
        .find(|section| section.starts_with("Quick start"))
        .expect("the README has a '## Quick start' section");
    let command = section
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("cargo run"))
        .expect("the quick start section has a `cargo run` command");
    let words: Vec<&str> = command.split_whitespace().collect();
    let package = words
        .windows(2)
        .find(|pair| pair[0] == "-p" || pair[0] == "--package")
        .map(|pair| pair[1]);
    assert_eq!(
        package,
        Some("as2-gateway"),
        "the quick start runs the as2-gateway package: {command}"
    );
    match words.iter().position(|word| *word == "--") {
        Some(dash) => words[dash + 1..]
            .iter()
            .map(|word| (*word).to_owned())
            .collect(),
        None => Vec::new(),
    }
}

fn as2ctl_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // `cargo test --workspace` builds every package's binaries into this directory
            // (as2ctl has integration tests); a run of this package alone builds as2ctl
            // here first (cargo holds no lock on the target directory while tests run).
            let gateway = Path::new(env!("CARGO_BIN_EXE_as2-gateway"));
            let path = gateway.with_file_name("as2ctl");
            if path.exists() {
                return path;
            }
            let release = gateway
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|profile| profile == "release");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "as2ctl"]);
            if release {
                build.arg("--release");
            }
            let status = build.status().unwrap();
            assert!(status.success(), "building as2ctl failed");
            assert!(
                path.exists(),
                "{} is missing after the build",
                path.display()
            );
            path
        })
        .clone()
}

/// The running gateway process and what its banner said.
struct Gateway {
    child: Child,
    banner: HashMap<String, String>,
    send_command: Vec<String>,
    data_dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_as2-gateway"));
        command
            .args(readme_gateway_arguments())
            .current_dir(data_dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("NO_COLOR", "1")
            .env("AS2_LOG_FILTER", "warn");
        for (name, _) in std::env::vars() {
            if name.starts_with("AS2_") && !name.starts_with("AS2_TEST_") {
                command.env_remove(name);
            }
        }
        for variable in [
            "AS2_GATEWAY_AS2_LISTEN",
            "AS2_GATEWAY_ROUTING_LISTEN",
            "AS2_GATEWAY_MDN_LISTEN",
            "AS2_GATEWAY_EDGE_ADMIN_LISTEN",
            "AS2_GATEWAY_ROUTING_ADMIN_LISTEN",
            "AS2_GATEWAY_MDN_ADMIN_LISTEN",
        ] {
            command.env(variable, format!("127.0.0.1:{}", as2_testkit::free_port()));
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Keep the output visible in the test log.
                println!("gateway| {line}");
                if lines_sender.send(line).is_err() {
                    // Nobody listens any more; keep draining so the gateway never blocks.
                }
            }
        });

        let mut banner = HashMap::new();
        let mut banner_lines = Vec::new();
        loop {
            let line = lines
                .recv_timeout(STARTUP_TIMEOUT)
                .expect("the gateway printed its banner in time");
            if line.starts_with("Stop with Ctrl-C") {
                break;
            }
            if let Some((label, value)) = line.trim().split_once(':')
                && BANNER_LABELS.contains(&label)
            {
                banner.insert(label.to_owned(), value.trim().to_owned());
            }
            banner_lines.push(line);
        }
        let send_command = banner_send_command(&banner_lines);
        Self {
            child,
            banner,
            send_command,
            data_dir,
        }
    }

    fn value(&self, label: &str) -> &str {
        self.banner
            .get(label)
            .unwrap_or_else(|| panic!("the banner has no {label:?}: {:?}", self.banner))
    }

    fn bootstrap(&self) -> &str {
        self.value("Kafka bootstrap")
            .split_whitespace()
            .next()
            .unwrap()
    }

    /// `as2ctl --json consume` of the demo topic from the data directory, with `extra`.
    fn consume(&self, extra: &[&str]) -> (bool, String) {
        let mut arguments = vec![
            "--json",
            "consume",
            "--bootstrap-servers",
            self.bootstrap(),
            "--topic",
            "as2.quickstart.inbound",
        ];
        arguments.extend_from_slice(extra);
        as2ctl(self.data_dir.path(), &arguments)
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("the gateway did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `as2ctl send` command of the banner's "Try it" list, as arguments after `--`.
fn banner_send_command(lines: &[String]) -> Vec<String> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in lines {
        let line = line.trim();
        if let Some(continued) = line.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
        } else {
            current.push_str(line);
            joined.push(std::mem::take(&mut current));
        }
    }
    let send = joined
        .iter()
        .find(|line| line.starts_with("cargo run -p as2ctl -- send "))
        .expect("the banner suggests an as2ctl send command");
    send.trim_start_matches("cargo run -p as2ctl -- ")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Runs as2ctl in `directory`; returns (success, stdout).
fn as2ctl(directory: &Path, arguments: &[&str]) -> (bool, String) {
    let output = Command::new(as2ctl_binary())
        .args(arguments)
        .current_dir(directory)
        .env_remove("AS2_KAFKA_BOOTSTRAP_SERVERS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        println!(
            "as2ctl {arguments:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (output.status.success(), stdout)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not json ({error}): {text}"))
}

/// Runs `tests/interop/<script> <command>` with `input` as JSON.
fn python(script: &str, command: &str, input: &Value) -> Value {
    let output = as2_testkit::interop_script(script, command, &serde_json::to_vec(input).unwrap());
    serde_json::from_slice(&output).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_receives_from_as2ctl_and_pyas2lib() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let gateway = Gateway::start();
    let work = gateway.data_dir.path();
    assert_eq!(gateway.value("State"), "in this process (lost on exit)");
    assert!(gateway.value("Kafka bootstrap").contains("embedded"));
    let as2_url = gateway.value("AS2 URL").to_owned();

    // 1. The banner's own suggestion: signed, encrypted, sync signed MDN.
    let first = b"UNA:+.? 'UNB+UNOC:3+PARTNER+GATEWAY+261122:1200+1'\n";
    std::fs::write(work.join("order.edi"), first).unwrap();
    let mut suggested: Vec<&str> = gateway.send_command.iter().map(String::as_str).collect();
    suggested.insert(0, "--json");
    let (delivered, report) = as2ctl(work, &suggested);
    let report = json_of(&report);
    assert!(delivered, "{report}");
    assert_eq!(report["verdict"], "delivered");
    assert_eq!(report["disposition"], "processed");
    assert_eq!(report["mdn_signature"], "verified (sha-256, rsa-pkcs1v15)");
    let first_id = report["message_id"].as_str().unwrap().to_owned();

    // 2. Compressed after signing, AES-GCM with OAEP, async MDN to as2ctl's listener, the
    // body sent chunked as it is built.
    let second = b"second document, asynchronous receipt\n";
    std::fs::write(work.join("invoice.txt"), second).unwrap();
    let partner_key = gateway.data_dir.path().join(".as2-gateway/partner/tls.key");
    let partner_cert = gateway.data_dir.path().join(".as2-gateway/partner/tls.crt");
    let gateway_cert = gateway.value("Our certificate").to_owned();
    let (delivered, report) = as2ctl(
        work,
        &[
            "--json",
            "send",
            "invoice.txt",
            "--url",
            &as2_url,
            "--from",
            "quickstart-partner",
            "--to",
            "quickstart-gateway",
            "--sign-key",
            partner_key.to_str().unwrap(),
            "--sign-cert",
            partner_cert.to_str().unwrap(),
            "--encrypt-cert",
            &gateway_cert,
            "--cipher",
            "aes256-gcm",
            "--oaep",
            "--compress",
            "after-signing",
            "--digest",
            "sha384",
            "--mdn",
            "async",
            "--mdn-timeout-secs",
            "60",
            "--content-type",
            "text/plain",
            "--chunked",
        ],
    );
    let report = json_of(&report);
    assert!(delivered, "{report}");
    assert_eq!(report["mdn_mode"], "async");
    assert_eq!(report["mdn_signature"], "verified (sha-384, rsa-pkcs1v15)");
    let second_id = report["message_id"].as_str().unwrap().to_owned();

    // 3. A partner the gateway does not know gets an error MDN, and as2ctl says so.
    let (delivered, report) = as2ctl(
        work,
        &[
            "--json",
            "send",
            "order.edi",
            "--url",
            &as2_url,
            "--from",
            "somebody-else",
            "--to",
            "quickstart-gateway",
            "--encrypt-cert",
            &gateway_cert,
        ],
    );
    let report = json_of(&report);
    assert!(!delivered, "{report}");
    assert_eq!(report["delivered"], false);
    assert!(
        report["verdict"]
            .as_str()
            .unwrap()
            .starts_with("not processed: processed/error"),
        "{report}"
    );

    // 4. pyas2lib as the partner: signed, encrypted, compressed, signed sync MDN that
    //    pyas2lib verifies.
    let third = b"UNB+UNOA:2+PYAS2LIB+GATEWAY+261122:1200+3'\r\nUNZ+0+3'\r\n";
    let request = json!({
        "sender_id": "quickstart-partner",
        "sender_key_pem": std::fs::read_to_string(&partner_key).unwrap(),
        "sender_cert_pem": std::fs::read_to_string(&partner_cert).unwrap(),
        "receiver_id": "quickstart-gateway",
        "receiver_cert_pem": std::fs::read_to_string(work.join(&gateway_cert)).unwrap(),
        "payload_b64": b64.encode(third),
        "filename": "pyas2lib.edi",
        "content_type": "application/EDIFACT",
        "sign": true,
        "digest_alg": "sha256",
        "encrypt": true,
        "enc_alg": "aes_128_cbc",
        "compress": true,
        "mdn_mode": "SYNC",
        "mdn_digest_alg": "sha256",
    });
    let built = python("pyas2lib_peer.py", "build", &request);
    let headers: Vec<(String, String)> = built["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let body = b64.decode(built["body_b64"].as_str().unwrap()).unwrap();
    let transport = as2_partner::transport::PartnerTransport::new(None).unwrap();
    let response = transport
        .post(&as2_url, &headers, &body, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let mut verify = request.clone();
    let fields = verify.as_object_mut().unwrap();
    fields.insert("original_message_id".into(), built["message_id"].clone());
    fields.insert("original_mic".into(), built["mic"].clone());
    fields.insert(
        "headers".into(),
        json!(
            response
                .headers
                .iter()
                .map(|(n, v)| [n, v])
                .collect::<Vec<_>>()
        ),
    );
    fields.insert("body_b64".into(), json!(b64.encode(&response.body)));
    let verdict = python("pyas2lib_peer.py", "parse_mdn", &verify);
    assert_eq!(verdict["status"], "processed", "{verdict}");
    let pyas2lib_id = built["message_id"].as_str().unwrap().to_owned();

    // 5. The three accepted documents are in the embedded cluster, byte for byte.
    let (consumed, records) = gateway.consume(&["--count", "3", "--idle-secs", "20"]);
    assert!(consumed);
    let records = json_of(&records);
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    let by_id: HashMap<String, Vec<u8>> = records
        .iter()
        .map(|record| {
            let headers = record["headers"].as_array().unwrap();
            let id = headers
                .iter()
                .find(|pair| pair[0] == "as2-message-id")
                .unwrap()[1]
                .as_str()
                .unwrap()
                .trim_matches(['<', '>'])
                .to_owned();
            (
                id,
                b64.decode(record["body_base64"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    for (id, document) in [
        (&first_id, &first[..]),
        (&second_id, &second[..]),
        (&pyas2lib_id, &third[..]),
    ] {
        let id = id.trim_matches(['<', '>']);
        assert_eq!(
            by_id.get(id).map(Vec::as_slice),
            Some(document),
            "document {id}"
        );
    }

    // 6. The MDN service recorded the async receipt as delivered; routing lists the demo.
    let (listed, deliveries) = as2ctl(
        work,
        &[
            "--json",
            "--mdn-url",
            gateway.value("MDN gRPC"),
            "mdn",
            "list",
        ],
    );
    assert!(listed);
    let deliveries = json_of(&deliveries);
    let deliveries = deliveries.as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0]["state"], "delivered", "{deliveries:?}");
    let (listed, partnerships) = as2ctl(
        work,
        &[
            "--json",
            "--routing-url",
            gateway.value("Routing gRPC"),
            "partnership",
            "list",
        ],
    );
    assert!(listed);
    assert!(
        partnerships.contains("quickstart-partner"),
        "{partnerships}"
    );

    let status = gateway.stop();
    assert!(
        status.success(),
        "the gateway exits cleanly on SIGTERM: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_takes_a_300_mib_document_and_gives_it_back_identical() {
    let gateway = Gateway::start();
    let work = gateway.data_dir.path();
    // 300 MiB of pseudo-random bytes (incompressible, no line structure).
    let size = 300 * 1024 * 1024;
    let mut document = vec![0u8; size];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for chunk in document.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let digest = openssl::sha::sha256(&document);
    std::fs::write(work.join("catalogue.bin"), &document).unwrap();
    drop(document);

    // The banner's command, with the large file: signed, encrypted, signed sync MDN.
    let mut command: Vec<String> = gateway.send_command.clone();
    let file = command
        .iter()
        .position(|argument| argument == "order.edi")
        .expect("the banner's send command names order.edi");
    command[file] = "catalogue.bin".to_owned();
    command.insert(0, "--json".to_owned());
    let arguments: Vec<&str> = command.iter().map(String::as_str).collect();
    let (delivered, report) = as2ctl(work, &arguments);
    let report = json_of(&report);
    assert!(delivered, "{report}");
    assert_eq!(report["verdict"], "delivered");
    assert_eq!(report["mdn_signature"], "verified (sha-256, rsa-pkcs1v15)");

    let (consumed, records) = gateway.consume(&["--count", "1", "--output-dir", "received"]);
    assert!(consumed, "{records}");
    let records = json_of(&records);
    let record = &records.as_array().unwrap()[0];
    let saved = record["saved_to"].as_str().unwrap();
    let received =
        std::fs::read(work.join(saved)).unwrap_or_else(|_| std::fs::read(saved).unwrap());
    assert_eq!(received.len(), size);
    assert_eq!(openssl::sha::sha256(&received), digest, "byte-identical");
    let headers = record["headers"].as_array().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str().unwrap().to_owned())
    };
    assert_eq!(header("as2-record-version").as_deref(), Some("2"));
    assert!(
        header("as2-document-location")
            .unwrap()
            .starts_with("file://"),
        "the quick start keeps large documents on the local disk"
    );

    // The message as received and the MDN returned are in the archive.
    let message_id = report["message_id"].as_str().unwrap();
    let arguments = [
        "--json",
        "archive",
        "get",
        "--from",
        "quickstart-partner",
        "--to",
        "quickstart-gateway",
        "--message-id",
        message_id,
    ];
    // The entry is completed just after the answer went out.
    let (mut found, mut archived) = as2ctl(work, &arguments);
    for _ in 0..50 {
        if found {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        (found, archived) = as2ctl(work, &arguments);
    }
    assert!(found, "{archived}");
    let archived = json_of(&archived);
    let entries = archived.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0]["message_bytes"].as_u64().unwrap() > size as u64);
    assert!(
        entries[0]["answer"]
            .as_str()
            .unwrap()
            .starts_with("HTTP/1.1 200"),
        "{entries:?}"
    );
    assert!(gateway.stop().success());
}
