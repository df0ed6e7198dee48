//! Documents of any size: a 256 MiB document signed and encrypted by `openssl cms
//! -stream` (an independent implementation, so the message is never held whole on either
//! side) streams through the edge into a real S3-protocol server (s3s-fs); the MDN's MIC
//! is what `openssl dgst` computes over the signed entity, the record references the
//! object, and the object is byte-identical. Hostile messages (a bad signature found at
//! the end of a large body, a truncated CMS structure, an undeclared oversize body, a
//! decompression bomb, a body that stops midway) get their answer, publish nothing and
//! leave no object behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use as2_protocol::headers::MicAlgorithm;
use as2_protocol::mdn::{MdnVerification, ParsedMdn, parse_mdn};
use as2_rpc::routing::v1::SecurityPolicy;
use as2_store::Store;
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openssl::hash::{Hasher, MessageDigest};
use openssl::x509::X509;
use support::{GATEWAY_ID, HttpResponse, PARTNER_ID, Stack, consume};

const MIB: u64 = 1024 * 1024;

/// Where the edge stores large documents in a test.
enum TestStore {
    S3(as2_testkit::S3Server),
    Local(tempfile::TempDir),
}

impl TestStore {
    fn url(&self) -> String {
        match self {
            Self::S3(server) => format!("s3://{}/inbound", server.bucket()),
            Self::Local(directory) => format!("file://{}", directory.path().display()),
        }
    }

    fn configure(&self, config: &mut as2_edge::EdgeConfig) {
        config.object_store.object_store_url = Some(self.url());
        config.inbound.claim_check_threshold_bytes = 1024 * 1024;
        config.inbound.max_body_bytes = 4 * 1024 * MIB;
        config.inbound.max_document_bytes = 4 * 1024 * MIB as usize;
        if let Self::S3(server) = self {
            config.object_store.endpoint = Some(server.endpoint());
            config.object_store.region = Some(server.region().to_owned());
            config.object_store.access_key_id = Some(server.access_key_id().parse().unwrap());
            config.object_store.secret_access_key =
                Some(server.secret_access_key().parse().unwrap());
            config.object_store.allow_http = true;
        }
    }

    /// The store as a client reads it.
    fn open(&self) -> Store {
        let mut args = as2_store::ObjectStoreArgs {
            object_store_url: Some(self.url()),
            ..Default::default()
        };
        args.part_size_mib = as2_store::DEFAULT_PART_SIZE / (1024 * 1024);
        args.max_concurrent_parts = as2_store::DEFAULT_MAX_CONCURRENT_PARTS;
        if let Self::S3(server) = self {
            args.endpoint = Some(server.endpoint());
            args.region = Some(server.region().to_owned());
            args.access_key_id = Some(server.access_key_id().parse().unwrap());
            args.secret_access_key = Some(server.secret_access_key().parse().unwrap());
            args.allow_http = true;
        }
        Store::open(&args.store_config(Path::new("/nonexistent")).unwrap()).unwrap()
    }

    /// Keys of the documents stored so far.
    async fn documents(&self) -> Vec<String> {
        let store = self.open();
        store
            .list(as2_edge::inbound::DOCUMENT_PREFIX)
            .map(|info| info.unwrap().key)
            .collect()
            .await
    }
}

/// The partner's files for the openssl command line.
fn write_keys(stack: &Stack, dir: &Path) {
    std::fs::write(dir.join("partner.key"), &stack.partner.key_pem).unwrap();
    std::fs::write(dir.join("partner.pem"), &stack.partner.cert_pem).unwrap();
    std::fs::write(dir.join("gateway.pem"), &stack.gateway.cert_pem).unwrap();
    let stranger = support::KeyMaterial::generate("not the partner");
    std::fs::write(dir.join("stranger.key"), &stranger.key_pem).unwrap();
    std::fs::write(dir.join("stranger.pem"), &stranger.cert_pem).unwrap();
}

/// What the generator made: the document's and the signed entity's SHA-256.
struct Generated {
    document: Vec<u8>,
    entity_file: std::path::PathBuf,
}

/// Pipes a `size`-byte document through `openssl cms -sign -stream` (by `signer`) and
/// `openssl cms -encrypt -stream`, and returns the encrypted message as a stream of
/// chunks, with a thread that yields what was generated. The signed entity is also
/// written to `entity.txt` for `openssl dgst`.
fn openssl_stream(
    dir: &Path,
    size: u64,
    signer: &str,
) -> (
    tokio::sync::mpsc::Receiver<Bytes>,
    std::thread::JoinHandle<Generated>,
) {
    let (signer_pem, signer_key) = (format!("{signer}.pem"), format!("{signer}.key"));
    let mut pipeline =
        as2_testkit::openssl_cli::SignEncrypt::spawn(dir, &signer_pem, &signer_key, "gateway.pem");
    let mut to_sign = pipeline.input.take().unwrap();
    let entity_file = dir.join("entity.txt");
    let writer_file = entity_file.clone();
    let writer = std::thread::spawn(move || {
        let mut copy = std::io::BufWriter::new(std::fs::File::create(&writer_file).unwrap());
        let header = b"Content-Type: application/octet-stream\r\n\
                       Content-Disposition: attachment; filename=\"catalogue.bin\"\r\n\r\n";
        to_sign.write_all(header).unwrap();
        copy.write_all(header).unwrap();
        let mut hasher = Hasher::new(MessageDigest::sha256()).unwrap();
        let mut block = vec![0u8; MIB as usize];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for byte in &mut block {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state.to_le_bytes()[3];
        }
        let mut written = 0u64;
        let mut index = 0u64;
        while written < size {
            block[..8].copy_from_slice(&index.to_le_bytes());
            let length = usize::try_from((size - written).min(MIB)).unwrap();
            hasher.update(&block[..length]).unwrap();
            to_sign.write_all(&block[..length]).unwrap();
            copy.write_all(&block[..length]).unwrap();
            written += length as u64;
            index += 1;
        }
        drop(to_sign);
        copy.flush().unwrap();
        Generated {
            document: hasher.finish().unwrap().to_vec(),
            entity_file: writer_file,
        }
    });
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    let mut message = pipeline.output.take().unwrap();
    std::thread::spawn(move || {
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            let read = message.read(&mut chunk).unwrap();
            if read == 0 {
                break;
            }
            if sender
                .blocking_send(Bytes::copy_from_slice(&chunk[..read]))
                .is_err()
            {
                break;
            }
        }
        // Whatever the receiver no longer wanted, so that openssl can finish.
        std::io::copy(&mut message, &mut std::io::sink()).unwrap();
        pipeline.wait();
    });
    (receiver, writer)
}

fn as2_headers(message_id: &str, content_type: &str) -> Vec<(String, String)> {
    [
        ("AS2-Version", "1.2"),
        ("AS2-From", &format!("\"{PARTNER_ID}\"")),
        ("AS2-To", GATEWAY_ID),
        ("Message-ID", message_id),
        ("Content-Type", content_type),
        ("Disposition-Notification-To", "as2@partner.test"),
        (
            "Disposition-Notification-Options",
            "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256",
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

const ENVELOPED: &str = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m";

/// POSTs a body that arrives from `chunks` (chunked transfer encoding: no length is
/// declared).
async fn post_stream(
    url: &str,
    headers: &[(String, String)],
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
) -> HttpResponse {
    let stream = Box::pin(futures::stream::unfold(chunks, |mut chunks| async move {
        let chunk = chunks.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), chunks))
    }));
    support::post_body(url, headers, StreamBody::new(stream)).await
}

fn mdn(stack: &Stack, response: &HttpResponse) -> ParsedMdn {
    assert_eq!(response.status, 200, "{}", response.text());
    let gateway = X509::from_pem(stack.gateway.cert_pem.as_bytes()).unwrap();
    parse_mdn(
        response.header("content-type").unwrap(),
        &response.body,
        &MdnVerification {
            partner_certificates: std::slice::from_ref(&gateway),
            allow_md5: false,
            check_certificate_validity: true,
            require_signature: true,
        },
    )
    .unwrap()
}

fn sha256_hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `openssl dgst -sha256` of a file, as raw bytes.
fn openssl_dgst(file: &Path) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary"])
        .arg(file)
        .output()
        .unwrap();
    assert!(output.status.success());
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_document_from_openssl_streams_into_s3_and_comes_back_identical() {
    let store = TestStore::S3(as2_testkit::S3Server::start());
    let stack = Stack::start_with(|config| store.configure(config)).await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "large-s3"))
        .await;
    let directory = tempfile::tempdir().unwrap();
    write_keys(&stack, directory.path());

    let size = 256 * MIB;
    let (chunks, generator) = openssl_stream(directory.path(), size, "partner");
    let headers = as2_headers("<large-256@partner.test>", ENVELOPED);
    let response = post_stream(&stack.edge.url(), &headers, chunks).await;
    let generated = generator.join().unwrap();
    let parsed = mdn(&stack, &response);
    assert_eq!(
        parsed.report.disposition.to_string(),
        "automatic-action/MDN-sent-automatically; processed"
    );
    let mic = parsed.report.received_content_mic.unwrap();
    assert_eq!(mic.algorithm, MicAlgorithm::Sha256);
    assert_eq!(
        mic.digest,
        openssl_dgst(&generated.entity_file),
        "the MIC is openssl dgst over the signed entity"
    );

    let records = consume(
        &stack.broker.bootstrap_servers(),
        "large-s3",
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.header("as2-record-version"), Some("2"));
    assert!(
        record.payload.is_empty(),
        "the document is not in the record"
    );
    assert_eq!(
        record.header("as2-document-size"),
        Some(size.to_string().as_str())
    );
    let sha256 = sha256_hex(&generated.document);
    assert_eq!(record.header("as2-document-sha256"), Some(sha256.as_str()));
    assert_eq!(record.header("as2-filename"), Some("catalogue.bin"));
    let location = record.header("as2-document-location").unwrap();
    let key = record.header("as2-document-key").unwrap();
    assert_eq!(location, format!("{}/{key}", store.url()));

    // The object, read back from the store, is the document.
    let object = store.open().get(key).await.unwrap();
    let mut hasher = Hasher::new(MessageDigest::sha256()).unwrap();
    let mut read = 0u64;
    let mut body = object.into_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        read += chunk.len() as u64;
        hasher.update(&chunk).unwrap();
    }
    assert_eq!(read, size);
    assert_eq!(hasher.finish().unwrap().to_vec(), generated.document);
    assert_eq!(store.documents().await, vec![key.to_owned()]);

    stack.edge.stop().await;
    stack.routing.stop().await;
}

/// Sends one good message and checks that it is the only record of `topic`: nothing
/// of the messages before it was published.
async fn assert_only_the_good_message_published(stack: &Stack, topic: &str) {
    let (headers, body) = support::signed_encrypted_message(
        &stack.gateway,
        PARTNER_ID,
        &stack.partner,
        &as2_protocol::headers::MessageId::parse("<good@partner.test>").unwrap(),
        b"UNB+UNOA:2+PARTNER+GATEWAY'",
    );
    let response = support::post(&stack.edge.url(), &headers, body).await;
    assert_eq!(
        mdn(stack, &response).report.disposition.to_string(),
        "automatic-action/MDN-sent-automatically; processed"
    );
    let records = consume(
        &stack.broker.bootstrap_servers(),
        topic,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), 1, "only the good message is published");
    assert_eq!(
        records[0].header("as2-message-id"),
        Some("<good@partner.test>")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_large_messages_get_their_answer_and_leave_nothing_behind() {
    let store = TestStore::Local(tempfile::tempdir().unwrap());
    let stack = Stack::start_with(|config| {
        store.configure(config);
        config.inbound.body_read_timeout_secs = 2;
    })
    .await;
    let mut partnership = stack.partnership(PARTNER_ID, "hostile");
    partnership.security_policy = Some(SecurityPolicy {
        max_message_bytes: Some(64 * MIB),
        ..SecurityPolicy::default()
    });
    stack.create_partnership(partnership).await;
    let directory = tempfile::tempdir().unwrap();
    write_keys(&stack, directory.path());
    let url = stack.edge.url();

    // A bad signature, found at the end of a 32 MiB body whose document already went
    // to the store (inside CBC encryption, which authenticates nothing, it is answered
    // as a decryption failure: docs/security.md).
    let (chunks, generator) = openssl_stream(directory.path(), 32 * MIB, "stranger");
    let response = post_stream(
        &url,
        &as2_headers("<bad-signature@partner.test>", ENVELOPED),
        chunks,
    )
    .await;
    generator.join().unwrap();
    let parsed = mdn(&stack, &response);
    assert_eq!(
        parsed.report.disposition.to_string(),
        "automatic-action/MDN-sent-automatically; processed/error: decryption-failed"
    );

    // The same message cut short: the CMS structure is incomplete.
    let (mut chunks, generator) = openssl_stream(directory.path(), 8 * MIB, "partner");
    let (sender, truncated) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut sent = 0u64;
        while let Some(chunk) = chunks.recv().await {
            if sent + chunk.len() as u64 > 5 * MIB {
                break;
            }
            sent += chunk.len() as u64;
            if sender.send(chunk).await.is_err() {
                break;
            }
        }
        // Drain what openssl still writes, so it ends.
        while chunks.recv().await.is_some() {}
    });
    let response = post_stream(
        &url,
        &as2_headers("<truncated@partner.test>", ENVELOPED),
        truncated,
    )
    .await;
    generator.join().unwrap();
    let parsed = mdn(&stack, &response);
    assert!(
        parsed
            .report
            .disposition
            .to_string()
            .contains("processed/error"),
        "{}",
        parsed.report.disposition
    );

    // Larger than the partnership's 64 MiB, without a declared length: 413.
    let (chunks, generator) = openssl_stream(directory.path(), 80 * MIB, "partner");
    let response = post_stream(
        &url,
        &as2_headers("<oversize@partner.test>", ENVELOPED),
        chunks,
    )
    .await;
    generator.join().unwrap();
    assert_eq!(response.status, 413, "{}", response.text());

    // A decompression bomb: 64 MiB of zeros compressed to a few KiB.
    let zeros = vec![0u8; 64 * MIB as usize];
    let (headers, body) = support::signed_encrypted_message_compressed(
        &stack.gateway,
        PARTNER_ID,
        &stack.partner,
        &as2_protocol::headers::MessageId::parse("<bomb@partner.test>").unwrap(),
        &zeros,
        Some(as2_protocol::outbound::CompressionOrder::BeforeSigning),
    );
    drop(zeros);
    assert!(body.len() < MIB as usize);
    let response = support::post(&url, &headers, body).await;
    let parsed = mdn(&stack, &response);
    assert_eq!(
        parsed.report.disposition.to_string(),
        "automatic-action/MDN-sent-automatically; processed/error: decompression-failed"
    );

    // A body that stops midway (the client goes quiet): 408 after the idle timeout.
    let (sender, stalled) = tokio::sync::mpsc::channel(4);
    let (chunks, generator) = openssl_stream(directory.path(), 4 * MIB, "partner");
    let feeder = tokio::spawn(async move {
        let mut chunks = chunks;
        let mut sent = 0u64;
        while let Some(chunk) = chunks.recv().await {
            if sent > 2 * MIB {
                break;
            }
            sent += chunk.len() as u64;
            sender.send(chunk).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        while chunks.recv().await.is_some() {}
        drop(sender);
    });
    let response = post_stream(
        &url,
        &as2_headers("<stalled@partner.test>", ENVELOPED),
        stalled,
    )
    .await;
    assert_eq!(response.status, 408, "{}", response.text());
    feeder.await.unwrap();
    generator.join().unwrap();

    assert_only_the_good_message_published(&stack, "hostile").await;
    assert_eq!(
        store.documents().await,
        Vec::<String>::new(),
        "no object stays behind"
    );
    stack.edge.stop().await;
    stack.routing.stop().await;
}

/// The edge binary as its own process (so it can be killed).
struct EdgeProcess {
    child: std::process::Child,
    url: String,
}

impl EdgeProcess {
    async fn start(stack: &Stack, store: &TestStore) -> Self {
        let (port, admin) = (as2_testkit::free_port(), as2_testkit::free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_as2-edge"));
        for (name, _) in std::env::vars() {
            if name.starts_with("AS2_") && !name.starts_with("AS2_TEST_") {
                command.env_remove(name);
            }
        }
        command
            .env("AS2_EDGE_LISTEN", format!("127.0.0.1:{port}"))
            .env("AS2_HTTP_LISTEN", format!("127.0.0.1:{admin}"))
            .env("AS2_ROUTING_URL", &stack.routing.url)
            .env("AS2_REDIS_URL", stack.redis.url())
            .env("AS2_GRPC_INSECURE_PLAINTEXT", "true")
            .env("AS2_REDIS_KEY_PREFIX", "e2e")
            .env(
                "AS2_KAFKA_BOOTSTRAP_SERVERS",
                stack.broker.bootstrap_servers(),
            )
            .env("AS2_KEYS_DIR", stack.keys_dir.path())
            .env("AS2_DEFAULT_SIGNING_KEY_ID", support::GATEWAY_KEY_ID)
            .env("AS2_OBJECT_STORE_URL", store.url())
            .env("AS2_LOG_FILTER", "warn")
            .stdout(Stdio::null());
        let child = command.spawn().unwrap();
        as2_testkit::admin::wait_until_ready("edge", format!("127.0.0.1:{admin}").parse().unwrap())
            .await;
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/as2"),
        }
    }

    fn kill(mut self) {
        // SIGKILL: no drain, no clean-up of any kind.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_mid_upload_leaves_no_record_and_the_resend_goes_through() {
    let store = TestStore::Local(tempfile::tempdir().unwrap());
    let stack = Stack::start_with(|config| store.configure(config)).await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "killed"))
        .await;
    let directory = tempfile::tempdir().unwrap();
    write_keys(&stack, directory.path());
    let headers = as2_headers("<killed-mid-upload@partner.test>", ENVELOPED);

    // The first attempt: the edge dies with 24 MiB of a 64 MiB message received (its
    // document's upload under way).
    let edge = EdgeProcess::start(&stack, &store).await;
    let (chunks, generator) = openssl_stream(directory.path(), 64 * MIB, "partner");
    let (sender, partial) = tokio::sync::mpsc::channel(4);
    let (reached, half_way) = tokio::sync::oneshot::channel();
    let feeder = tokio::spawn(async move {
        let (mut chunks, mut reached) = (chunks, Some(reached));
        let mut sent = 0u64;
        while let Some(chunk) = chunks.recv().await {
            sent += chunk.len() as u64;
            if sender.send(chunk).await.is_err() {
                break;
            }
            if sent > 24 * MIB
                && let Some(reached) = reached.take()
            {
                let _ = reached.send(());
                // Hold the rest back so the upload is unfinished when the edge dies.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        while chunks.recv().await.is_some() {}
    });
    let url = edge.url.clone();
    let attempt = tokio::spawn(async move {
        let stream = Box::pin(futures::stream::unfold(partial, |mut chunks| async move {
            let chunk = chunks.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), chunks))
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        let mut request = http::Request::post(url);
        for (name, value) in &as2_headers("<killed-mid-upload@partner.test>", ENVELOPED) {
            request = request.header(name.as_str(), value.as_str());
        }
        client
            .request(request.body(StreamBody::new(stream)).unwrap())
            .await
    });
    half_way.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.kill();
    assert!(
        attempt.await.unwrap().is_err(),
        "the killed edge sent no answer"
    );
    feeder.await.unwrap();
    generator.join().unwrap();
    assert_eq!(
        store.documents().await,
        Vec::<String>::new(),
        "no object of the unfinished upload is visible"
    );
    // What the killed upload left on the disk (object_store's staging file, which no
    // listing shows) is what the hourly sweep removes once it is an hour old.
    let TestStore::Local(root) = &store else {
        unreachable!("a local store")
    };
    let staging = || {
        let mut found = Vec::new();
        let mut pending = vec![root.path().to_path_buf()];
        while let Some(directory) = pending.pop() {
            for entry in std::fs::read_dir(directory).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.to_string_lossy().contains('#') {
                    found.push(path);
                }
            }
        }
        found
    };
    assert!(
        !staging().is_empty(),
        "the killed upload left its staging file"
    );
    let removed = store
        .open()
        .remove_interrupted_uploads("", Duration::ZERO)
        .await
        .unwrap();
    assert!(removed >= 1);
    assert_eq!(staging(), Vec::<std::path::PathBuf>::new());

    // The partner resends (it got no MDN) to an edge that runs: processed, once.
    let edge = EdgeProcess::start(&stack, &store).await;
    let (chunks, generator) = openssl_stream(directory.path(), 64 * MIB, "partner");
    let response = post_stream(&edge.url, &headers, chunks).await;
    generator.join().unwrap();
    assert_eq!(
        mdn(&stack, &response).report.disposition.to_string(),
        "automatic-action/MDN-sent-automatically; processed"
    );
    let records = consume(
        &stack.broker.bootstrap_servers(),
        "killed",
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), 1, "one record, for the resend");
    let key = records[0].header("as2-document-key").unwrap();
    assert_eq!(store.documents().await, vec![key.to_owned()]);
    drop(edge);
    stack.edge.stop().await;
    stack.routing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_archived_as_received_with_the_answer_it_got() {
    let store = TestStore::Local(tempfile::tempdir().unwrap());
    let stack = Stack::start_with(|config| store.configure(config)).await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "archived"))
        .await;
    let url = stack.edge.url();

    // A processed message and a forged one (signed by a stranger).
    let stranger = support::KeyMaterial::generate("a stranger");
    let mut sent = Vec::new();
    for (id, signer) in [
        ("<archived-ok@partner.test>", &stack.partner),
        ("<archived-forged@partner.test>", &stranger),
    ] {
        let (headers, body) = support::signed_encrypted_message(
            &stack.gateway,
            PARTNER_ID,
            signer,
            &as2_protocol::headers::MessageId::parse(id).unwrap(),
            b"UNB+UNOA:2+PARTNER+GATEWAY'\r\nUNZ+1'\r\n",
        );
        let response = support::post(&url, &headers, body.clone()).await;
        assert_eq!(response.status, 200);
        sent.push((id, body, response));
    }

    let archive = store.open();
    for (id, body, response) in &sent {
        let hash = as2_store::archive::message_hash(PARTNER_ID, GATEWAY_ID, id);
        // The entry is completed just after the answer went out.
        let mut entries = Vec::new();
        for _ in 0..100 {
            entries = as2_store::archive::entries_of(&archive, &hash)
                .await
                .unwrap();
            if !entries.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(entries.len(), 1, "{id}: {entries:?}");
        let read = |key: String| {
            let archive = archive.clone();
            async move { archive.get(&key).await.unwrap().bytes().await.unwrap() }
        };
        let message = read(as2_store::archive::message_key(&entries[0])).await;
        let blank_line_and_body = [b"\r\n\r\n".as_slice(), body].concat();
        assert!(
            message.ends_with(&blank_line_and_body),
            "{id}: the body as received follows the header fields"
        );
        let head = String::from_utf8_lossy(&message[..message.len() - body.len()]).to_lowercase();
        assert!(
            head.contains(&format!("message-id: {id}").to_lowercase()),
            "{head}"
        );
        let answer = read(as2_store::archive::answer_key(&entries[0])).await;
        assert!(answer.starts_with(b"HTTP/1.1 200\r\n"));
        assert!(
            answer.ends_with(&response.body),
            "{id}: the answer is the MDN returned"
        );
    }
    let forged_answer = {
        let hash = as2_store::archive::message_hash(PARTNER_ID, GATEWAY_ID, sent[1].0);
        let entry = &as2_store::archive::entries_of(&archive, &hash)
            .await
            .unwrap()[0];
        archive
            .get(&as2_store::archive::answer_key(entry))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    assert!(
        String::from_utf8_lossy(&forged_answer).contains("decryption-failed"),
        "a refused message is archived with its error MDN"
    );

    // The processed one's record says where its archive entry is.
    let records = consume(
        &stack.broker.bootstrap_servers(),
        "archived",
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), 1);
    let hash = as2_store::archive::message_hash(PARTNER_ID, GATEWAY_ID, sent[0].0);
    let entry = &as2_store::archive::entries_of(&archive, &hash)
        .await
        .unwrap()[0];
    assert_eq!(
        records[0].header("as2-archive-location"),
        Some(archive.object_url(entry).as_str())
    );
    // A message answered just before the edge drains: its entry is complete once the
    // edge has stopped.
    let (headers, body) = support::signed_encrypted_message(
        &stack.gateway,
        PARTNER_ID,
        &stack.partner,
        &as2_protocol::headers::MessageId::parse("<archived-at-stop@partner.test>").unwrap(),
        b"UNB+UNOA:2+PARTNER+GATEWAY'\r\nUNZ+2'\r\n",
    );
    assert_eq!(support::post(&url, &headers, body).await.status, 200);
    stack.edge.stop().await;
    let hash =
        as2_store::archive::message_hash(PARTNER_ID, GATEWAY_ID, "<archived-at-stop@partner.test>");
    let entries = as2_store::archive::entries_of(&archive, &hash)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "the drain completes the entry");
    assert!(
        archive
            .head(&as2_store::archive::answer_key(&entries[0]))
            .await
            .is_ok()
    );
    stack.routing.stop().await;
}
