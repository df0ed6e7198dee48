//! Interoperability with an independent CMS implementation: the `openssl cms` command
//! line. Messages it makes unwrap with the right MIC, and what we make it verifies and
//! decrypts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use as2_protocol::ReceivedContentMic;
use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::mime::{Entity, MimeLimits};
use as2_protocol::outbound::{self, Encryption, OutboundMessage, Signing};
use as2_protocol::unwrap::{SignedContentForm, UnwrapContext, UnwrappedMessage, unwrap_message};

const OPENSSL: &str = "/usr/bin/openssl";

struct Workspace {
    dir: tempfile::TempDir,
    sender: Identity,
    receiver: Identity,
}

impl Workspace {
    fn new() -> Self {
        assert!(
            Path::new(OPENSSL).exists(),
            "{OPENSSL} is required (install the openssl package)"
        );
        let workspace = Self {
            dir: tempfile::tempdir().unwrap(),
            sender: common::identity("sender"),
            receiver: common::identity("receiver"),
        };
        workspace.write("sender.key", common::key_pem(&workspace.sender).as_bytes());
        workspace.write("sender.pem", common::cert_pem(&workspace.sender).as_bytes());
        workspace.write(
            "receiver.key",
            common::key_pem(&workspace.receiver).as_bytes(),
        );
        workspace.write(
            "receiver.pem",
            common::cert_pem(&workspace.receiver).as_bytes(),
        );
        workspace
    }

    /// A workspace whose `entity.txt` holds [`payload_entity`]; returns the entity too.
    fn with_entity() -> (Self, Vec<u8>) {
        let workspace = Self::new();
        let entity = payload_entity();
        workspace.write("entity.txt", &entity);
        (workspace, entity)
    }

    /// `openssl cms -sign` over entity.txt with the sender's key, plus `extra` options.
    fn sign(&self, digest: &str, extra: &[&str], out: &str) {
        let mut args = vec![
            "cms",
            "-sign",
            "-binary",
            "-in",
            "entity.txt",
            "-signer",
            "sender.pem",
            "-inkey",
            "sender.key",
            "-md",
            digest,
            "-out",
            out,
        ];
        args.extend_from_slice(extra);
        self.openssl(&args);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new(OPENSSL)
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn unwrap(&self, content_type: &str, body: &[u8], requested: Option<&str>) -> UnwrappedMessage {
        self.unwrap_encoded(content_type, None, body, requested)
    }

    fn unwrap_encoded(
        &self,
        content_type: &str,
        transfer_encoding: Option<&str>,
        body: &[u8],
        requested: Option<&str>,
    ) -> UnwrappedMessage {
        let mut headers = vec![
            ("AS2-From", "sender"),
            ("AS2-To", "receiver"),
            ("Message-ID", "<1@cli>"),
            ("Content-Type", content_type),
        ];
        if let Some(encoding) = transfer_encoding {
            headers.push(("Content-Transfer-Encoding", encoding));
        }
        if let Some(options) = requested {
            headers.push(("Disposition-Notification-Options", options));
        }
        let headers = As2RequestHeaders::parse(headers).unwrap();
        let identities = [self.receiver.clone()];
        let certificates = [self.sender.certificate.clone()];
        unwrap_message(
            &headers,
            body,
            &UnwrapContext::new(&identities, &certificates),
        )
        .unwrap()
    }

    /// Reads an S/MIME file written by openssl: its Content-Type and body.
    fn smime_file(&self, name: &str) -> (String, Vec<u8>) {
        let (content_type, _, body) = self.smime_file_encoded(name);
        (content_type, body)
    }

    /// Reads an S/MIME file written by openssl: Content-Type, Content-Transfer-Encoding, body.
    fn smime_file_encoded(&self, name: &str) -> (String, Option<String>, Vec<u8>) {
        let data = self.read(name);
        let entity = Entity::parse(&data, &MimeLimits::default()).unwrap();
        let encoding = entity
            .header("Content-Transfer-Encoding")
            .map(str::to_owned);
        (
            entity.header("Content-Type").unwrap().to_owned(),
            encoding,
            entity.body().to_vec(),
        )
    }
}

/// A MIME entity with CRLF headers and a binary body that has bare LFs and CRLFs.
fn payload_entity() -> Vec<u8> {
    let mut entity = b"Content-Type: application/EDIFACT\r\nContent-Transfer-Encoding: binary\r\nContent-Disposition: attachment; filename=\"cli.edi\"\r\n\r\n".to_vec();
    entity.extend(common::payload(2500));
    entity
}

const DIGESTS: [(&str, MicAlgorithm); 5] = [
    ("sha1", MicAlgorithm::Sha1),
    ("sha224", MicAlgorithm::Sha224),
    ("sha256", MicAlgorithm::Sha256),
    ("sha384", MicAlgorithm::Sha384),
    ("sha512", MicAlgorithm::Sha512),
];

const CIPHERS: [(&str, ContentCipher); 7] = [
    ("-des3", ContentCipher::TripleDesCbc),
    ("-aes-128-cbc", ContentCipher::Aes128Cbc),
    ("-aes-192-cbc", ContentCipher::Aes192Cbc),
    ("-aes-256-cbc", ContentCipher::Aes256Cbc),
    ("-aes-128-gcm", ContentCipher::Aes128Gcm),
    ("-aes-192-gcm", ContentCipher::Aes192Gcm),
    ("-aes-256-gcm", ContentCipher::Aes256Gcm),
];

#[test]
fn openssl_signed_messages_unwrap_with_the_right_mic() {
    let (workspace, entity) = Workspace::with_entity();
    for (name, digest) in DIGESTS {
        for pss in [false, true] {
            let padding: &[&str] = if pss {
                &["-keyopt", "rsa_padding_mode:pss"]
            } else {
                &[]
            };
            workspace.sign(name, padding, "signed.eml");
            let (content_type, body) = workspace.smime_file("signed.eml");
            let unwrapped = workspace.unwrap(&content_type, &body, None);
            let signature = unwrapped.facts.signature.clone().unwrap();
            assert_eq!(signature.digest, digest, "{name} pss={pss}");
            let scheme = if pss {
                SignatureScheme::RsaPss
            } else {
                SignatureScheme::RsaPkcs1v15
            };
            assert_eq!(signature.scheme, scheme);
            assert_eq!(
                unwrapped.mic,
                ReceivedContentMic::compute(digest, &entity).unwrap(),
                "{name} pss={pss}"
            );
            assert_eq!(unwrapped.payload.data, common::payload(2500));
            assert_eq!(unwrapped.payload.filename.as_deref(), Some("cli.edi"));

            let requested = "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-512";
            let unwrapped = workspace.unwrap(&content_type, &body, Some(requested));
            assert_eq!(
                unwrapped.mic,
                ReceivedContentMic::compute(MicAlgorithm::Sha512, &entity).unwrap()
            );
        }
    }
    // Opaque (enveloping) signed-data, base64 in S/MIME.
    workspace.sign("sha256", &["-nodetach"], "opaque.eml");
    let (content_type, encoding, body) = workspace.smime_file_encoded("opaque.eml");
    assert!(content_type.contains("signed-data"), "{content_type}");
    let unwrapped = workspace.unwrap_encoded(&content_type, encoding.as_deref(), &body, None);
    assert!(unwrapped.facts.signature.unwrap().opaque);
    assert_eq!(
        unwrapped.mic,
        ReceivedContentMic::compute(MicAlgorithm::Sha256, &entity).unwrap()
    );
}

#[test]
fn openssl_encrypted_messages_unwrap_with_the_right_mic() {
    let (workspace, entity) = Workspace::with_entity();
    for (flag, cipher) in CIPHERS {
        for oaep in [false, true] {
            for stream in [false, true] {
                let mut args = vec![
                    "cms",
                    "-encrypt",
                    "-binary",
                    "-in",
                    "entity.txt",
                    flag,
                    "-recip",
                    "receiver.pem",
                    "-outform",
                    "DER",
                    "-out",
                    "encrypted.der",
                ];
                if oaep {
                    args.extend(["-keyopt", "rsa_padding_mode:oaep"]);
                }
                if stream {
                    args.push("-stream");
                }
                workspace.openssl(&args);
                let body = workspace.read("encrypted.der");
                let smime_type = if cipher.is_authenticated() {
                    "authEnveloped-data"
                } else {
                    "enveloped-data"
                };
                let content_type =
                    format!("application/pkcs7-mime; smime-type={smime_type}; name=smime.p7m");
                let unwrapped = workspace.unwrap(&content_type, &body, None);
                let encryption = unwrapped.facts.encryption.unwrap();
                assert_eq!(
                    encryption.cipher, cipher,
                    "{flag} oaep={oaep} stream={stream}"
                );
                let transport = if oaep {
                    KeyTransport::RsaOaep(MicAlgorithm::Sha1)
                } else {
                    KeyTransport::RsaPkcs1v15
                };
                assert_eq!(encryption.key_transport, transport);
                assert_eq!(unwrapped.payload.data, common::payload(2500));
                assert_eq!(
                    unwrapped.mic,
                    ReceivedContentMic::compute(MicAlgorithm::Sha1, &entity).unwrap()
                );
            }
        }
    }
}

/// A signature without signed attributes (as IBM Sterling sends) over the CRLF form of
/// an entity that arrives with bare-LF header lines: the exact bytes fail, the CRLF-header
/// form verifies, and the MIC is computed over that form.
#[test]
fn signatures_without_attributes_fall_back_to_crlf_headers() {
    let workspace = Workspace::new();
    let crlf_entity = b"Content-Type: application/edi-x12\r\nContent-Transfer-Encoding: binary\r\n\r\nISA*00~\nGS*PO~\n";
    let lf_entity = b"Content-Type: application/edi-x12\nContent-Transfer-Encoding: binary\n\nISA*00~\nGS*PO~\n";
    workspace.write("entity.txt", crlf_entity);
    workspace.sign("sha1", &["-noattr", "-outform", "DER"], "signature.der");
    let signature = as2_protocol::mime::encode_base64_lines(&workspace.read("signature.der"));
    for (entity, form) in [
        (crlf_entity.as_slice(), SignedContentForm::Exact),
        (lf_entity.as_slice(), SignedContentForm::CrlfHeaders),
    ] {
        let body = [
            b"--sig\n".as_slice(),
            entity,
            b"\n--sig\nContent-Type: application/pkcs7-signature\nContent-Transfer-Encoding: base64\n\n",
            &signature,
            b"--sig--\n",
        ]
        .concat();
        let unwrapped = workspace.unwrap(
            "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha1; boundary=sig",
            &body,
            None,
        );
        assert_eq!(unwrapped.facts.signature.unwrap().form, form);
        assert_eq!(unwrapped.payload.data, b"ISA*00~\nGS*PO~\n");
        assert_eq!(
            unwrapped.mic,
            ReceivedContentMic::compute(MicAlgorithm::Sha1, crlf_entity).unwrap()
        );
    }
}

#[test]
fn openssl_signed_then_encrypted_messages_unwrap() {
    let (workspace, entity) = Workspace::with_entity();
    workspace.sign("sha384", &["-keyopt", "rsa_padding_mode:pss"], "signed.eml");
    workspace.openssl(&[
        "cms",
        "-encrypt",
        "-binary",
        "-in",
        "signed.eml",
        "-aes-256-gcm",
        "-recip",
        "receiver.pem",
        "-keyopt",
        "rsa_padding_mode:oaep",
        "-outform",
        "DER",
        "-out",
        "encrypted.der",
    ]);
    let body = workspace.read("encrypted.der");
    let unwrapped = workspace.unwrap(
        "application/pkcs7-mime; smime-type=authEnveloped-data",
        &body,
        None,
    );
    assert_eq!(
        unwrapped.mic,
        ReceivedContentMic::compute(MicAlgorithm::Sha384, &entity).unwrap()
    );
    assert_eq!(
        unwrapped.facts.encryption.unwrap().cipher,
        ContentCipher::Aes256Gcm
    );
    assert_eq!(
        unwrapped.facts.signature.unwrap().scheme,
        SignatureScheme::RsaPss
    );
}

#[test]
fn openssl_verifies_and_decrypts_what_we_build() {
    let workspace = Workspace::new();
    let (from, to, id) = (
        As2Id::new("sender").unwrap(),
        As2Id::new("receiver").unwrap(),
        MessageId::generate("x").unwrap(),
    );
    // OpenSSL's S/MIME reader rewrites line ends, so this payload is CRLF-only.
    let payload: Vec<u8> = b"UNB+UNOA:2+SENDER+RECEIVER+260101:1200+1'\r\n".repeat(40);
    let base = OutboundMessage {
        as2_from: &from,
        as2_to: &to,
        message_id: &id,
        subject: None,
        payload: &payload,
        content_type: "application/EDIFACT",
        filename: None,
        signing: None,
        encryption: None,
        compression: None,
        mdn: None,
    };
    for (_, digest) in DIGESTS {
        for scheme in [SignatureScheme::RsaPkcs1v15, SignatureScheme::RsaPss] {
            let message = OutboundMessage {
                signing: Some(Signing {
                    identity: &workspace.sender,
                    digest,
                    scheme,
                }),
                ..base.clone()
            };
            let built = outbound::build_message(&message).unwrap();
            let smime = [
                format!(
                    "Content-Type: {}\r\n\r\n",
                    built.header("Content-Type").unwrap()
                )
                .as_bytes(),
                &built.body,
            ]
            .concat();
            workspace.write("ours.eml", &smime);
            // Without -binary: OpenSSL's binary-mode S/MIME reader alters line ends; our
            // payload is CRLF-only, so its canonical form is the exact bytes we signed.
            workspace.openssl(&[
                "cms",
                "-verify",
                "-in",
                "ours.eml",
                "-certfile",
                "sender.pem",
                "-CAfile",
                "sender.pem",
                "-out",
                "verified.txt",
            ]);
            assert!(
                workspace.read("verified.txt").ends_with(&payload),
                "{digest} {scheme}"
            );
        }
    }
    let transports = [
        KeyTransport::RsaPkcs1v15,
        KeyTransport::RsaOaep(MicAlgorithm::Sha1),
        KeyTransport::RsaOaep(MicAlgorithm::Sha256),
    ];
    for (_, cipher) in CIPHERS {
        for key_transport in transports {
            let message = OutboundMessage {
                encryption: Some(Encryption {
                    recipient: &workspace.receiver.certificate,
                    cipher,
                    key_transport,
                }),
                ..base.clone()
            };
            let built = outbound::build_message(&message).unwrap();
            workspace.write("ours.der", &built.body);
            workspace.openssl(&[
                "cms",
                "-decrypt",
                "-binary",
                "-inform",
                "DER",
                "-in",
                "ours.der",
                "-recip",
                "receiver.pem",
                "-inkey",
                "receiver.key",
                "-out",
                "decrypted.txt",
            ]);
            assert!(
                workspace.read("decrypted.txt").ends_with(&payload),
                "{cipher} {key_transport}"
            );
        }
    }
}
