//! `as2ctl send`: act as a trading partner. Builds an AS2 message from a file (signed,
//! encrypted, compressed as asked), POSTs it, waits for the MDN (in the response or
//! POSTed back to a listener of our own) and judges it: disposition, Original-Message-ID,
//! MIC and signature.
//!
//! The file is never held whole: it goes through the streaming builder
//! ([`MessageWriter`]) in 1 MiB pieces into a temporary file, which is then sent with
//! its Content-Length; with `--chunked` the body is sent as it is built, chunked.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use as2_partner::algorithms::{compression_order, content_cipher, mic_algorithm};
use as2_partner::transport::{BodyError, PartnerTransport, RequestBody};
use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::ReceiptDeliveryOption;
use as2_protocol::mdn::{MdnVerification, ParsedMdn, parse_mdn};
use as2_protocol::outbound::{
    CompressionOrder, Encryption, MdnRequest, MessageWriter, OutboundMessage, Signing,
};
use as2_protocol::{As2Id, MessageId, MicAlgorithm, ReceivedContentMic};
use as2_rpc::routing::v1::{Compression, EncryptionCipher, SigningDigest};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use openssl::x509::X509;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::cli::{CompressionArg, MdnModeArg, SendArgs};
use crate::commands::CtlError;

/// Largest asynchronous MDN accepted.
const MAX_MDN_BYTES: usize = 1024 * 1024;
/// How much of the file goes through the builder at a time.
const PIECE_BYTES: usize = 1024 * 1024;
/// Domain of the Message-IDs of what as2ctl sends.
const MESSAGE_ID_DOMAIN: &str = "as2ctl.local";

/// What happened to one message, as printed.
#[derive(Debug, Serialize)]
pub struct SendReport {
    /// Our Message-ID.
    pub message_id: String,
    /// Where it went.
    pub url: String,
    /// The HTTP status of the POST.
    pub http_status: u16,
    /// `none`, `sync` or `async`.
    pub mdn_mode: &'static str,
    /// The MDN's Disposition, when an MDN came.
    pub disposition: Option<String>,
    /// The MIC we expect back, base64, with its algorithm.
    pub expected_mic: String,
    /// The MIC the MDN returned.
    pub returned_mic: Option<String>,
    /// Whether the MDN answers our Message-ID.
    pub original_message_id_matches: Option<bool>,
    /// `verified`, `unsigned`, or `not verified (...)`.
    pub mdn_signature: Option<String>,
    /// `delivered` when everything checks out; otherwise what did not.
    pub verdict: String,
    /// Whether the verdict is `delivered`.
    pub delivered: bool,
}

/// Sends the file and returns the report; an [`CtlError::Unsuccessful`] carries the
/// report of a message that was not delivered.
pub async fn execute(args: SendArgs, json: bool) -> Result<String, CtlError> {
    let plan = Plan::load(&args)?;
    let message_id = MessageId::generate(MESSAGE_ID_DOMAIN).map_err(usage)?;

    // The listener exists before the message leaves, so an early MDN is not lost.
    let async_receiver = match args.mdn {
        MdnModeArg::Async => Some(AsyncMdnReceiver::bind(args.async_mdn_listen).await?),
        MdnModeArg::None | MdnModeArg::Sync => None,
    };
    let async_url = match (&async_receiver, &args.async_mdn_url) {
        (Some(_), Some(url)) => Some(url.clone()),
        (Some(receiver), None) => Some(format!("http://{}/mdn", receiver.address)),
        (None, _) => None,
    };
    let mdn_request = match args.mdn {
        MdnModeArg::None => None,
        MdnModeArg::Sync | MdnModeArg::Async => Some(MdnRequest {
            disposition_notification_to: args.from.clone(),
            signed_receipt_algorithms: if args.unsigned_mdn {
                Vec::new()
            } else {
                vec![plan.digest]
            },
            receipt_delivery_option: async_url
                .as_deref()
                .map(ReceiptDeliveryOption::parse)
                .transpose()
                .map_err(usage)?,
        }),
    };
    let filename = args.file.file_name().and_then(|name| name.to_str());
    let (writer, headers) = MessageWriter::new(&OutboundMessage {
        as2_from: &plan.as2_from,
        as2_to: &plan.as2_to,
        message_id: &message_id,
        subject: args.subject.as_deref(),
        payload: &[],
        content_type: &args.content_type,
        filename,
        signing: plan.signer.as_ref().map(|identity| Signing {
            identity,
            digest: plan.digest,
            scheme: if args.pss {
                SignatureScheme::RsaPss
            } else {
                SignatureScheme::RsaPkcs1v15
            },
        }),
        encryption: plan.recipient.as_ref().map(|recipient| Encryption {
            recipient,
            cipher: plan.cipher,
            key_transport: if args.oaep {
                KeyTransport::RsaOaep(MicAlgorithm::Sha256)
            } else {
                KeyTransport::RsaPkcs1v15
            },
        }),
        compression: plan.compression,
        mdn: mdn_request,
    })
    .map_err(|error| CtlError::Usage(format!("cannot build the AS2 message: {error}")))?;

    let transport = PartnerTransport::new(None)
        .map_err(|error| CtlError::Usage(format!("cannot set up https: {error}")))?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let (body, built) = if args.chunked {
        let (body, built) = build_streaming(writer, args.file.clone());
        (body, Built::Later(built))
    } else {
        let (file, length, mic) = build_into_file(writer, args.file.clone()).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            256 * 1024,
        )
        .map(|chunk| chunk.map_err(|error| Box::new(error) as BodyError));
        let body = RequestBody::Stream {
            stream: Box::pin(stream),
            length: Some(length),
        };
        (body, Built::Now(mic))
    };
    let response = transport
        .post_body(&args.url, &headers, body, timeout)
        .await
        .map_err(|error| CtlError::Unreachable {
            service: "partner",
            url: args.url.clone(),
            reason: error.to_string(),
        });
    let expected_mic = built.mic().await?;
    let response = response?;

    let mut report = SendReport {
        message_id: message_id.original().to_owned(),
        url: args.url.clone(),
        http_status: response.status,
        mdn_mode: mdn_mode_name(args.mdn),
        disposition: None,
        expected_mic: mic_text(&expected_mic),
        returned_mic: None,
        original_message_id_matches: None,
        mdn_signature: None,
        verdict: String::new(),
        delivered: false,
    };
    let http_ok = (200..300).contains(&response.status);
    let mdn = if !http_ok {
        Err(format!(
            "HTTP {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(300)
                .collect::<String>()
        ))
    } else {
        match (args.mdn, async_receiver) {
            (MdnModeArg::None, _) => Ok(None),
            (MdnModeArg::Sync, _) => match response.header("content-type") {
                Some(content_type) => Ok(Some((content_type.to_owned(), response.body.clone()))),
                None => Err("the response carries no MDN (no Content-Type)".to_owned()),
            },
            (MdnModeArg::Async, Some(mut receiver)) => receiver
                .next(Duration::from_secs(args.mdn_timeout_secs))
                .await
                .map(Some),
            (MdnModeArg::Async, None) => Err("no listener for the asynchronous MDN".to_owned()),
        }
    };
    report.verdict = match mdn {
        Err(problem) => problem,
        Ok(None) => "delivered (no MDN requested)".to_owned(),
        Ok(Some((content_type, body))) => judge(
            &plan,
            &args,
            &expected_mic,
            &message_id,
            &content_type,
            &body,
            &mut report,
        ),
    };
    report.delivered = report.verdict.starts_with("delivered");
    let output = render(&report, json)?;
    if report.delivered {
        Ok(output)
    } else {
        Err(CtlError::Unsuccessful(output))
    }
}

/// The MIC of what was sent: known once the body is built.
enum Built {
    Now(ReceivedContentMic),
    Later(tokio::task::JoinHandle<Result<ReceivedContentMic, CtlError>>),
}

impl Built {
    async fn mic(self) -> Result<ReceivedContentMic, CtlError> {
        match self {
            Self::Now(mic) => Ok(mic),
            Self::Later(task) => task
                .await
                .map_err(|error| CtlError::Usage(format!("the build failed: {error}")))?,
        }
    }
}

fn build_error(error: impl std::fmt::Display) -> CtlError {
    CtlError::Usage(format!("cannot build the AS2 message: {error}"))
}

/// Writes the file `path` through `writer` in pieces of [`PIECE_BYTES`], handing the
/// body to `emit` as it comes out (`emit` takes what it is given out of the buffer);
/// returns the MIC and the end of the body, which `finish` produced.
fn write_file(
    mut writer: MessageWriter,
    path: &std::path::Path,
    mut emit: impl FnMut(&mut Vec<u8>) -> Result<(), CtlError>,
) -> Result<(ReceivedContentMic, Vec<u8>), CtlError> {
    use std::io::Read as _;
    let cannot_read =
        |error: std::io::Error| CtlError::Usage(format!("cannot read {}: {error}", path.display()));
    let mut input = std::fs::File::open(path).map_err(cannot_read)?;
    let mut piece = vec![0u8; PIECE_BYTES];
    let mut out = Vec::with_capacity(PIECE_BYTES + 64 * 1024);
    loop {
        let read = input.read(&mut piece).map_err(cannot_read)?;
        if read == 0 {
            break;
        }
        writer
            .write(piece.get(..read).unwrap_or_default(), &mut out)
            .map_err(build_error)?;
        emit(&mut out)?;
    }
    out.clear();
    let mic = writer.finish(&mut out).map_err(build_error)?;
    Ok((mic, out))
}

/// Builds the body from `path` into an unnamed temporary file; returns it (at its start),
/// its length and the MIC.
async fn build_into_file(
    writer: MessageWriter,
    path: std::path::PathBuf,
) -> Result<(std::fs::File, u64, ReceivedContentMic), CtlError> {
    use std::io::{Seek as _, Write as _};
    tokio::task::spawn_blocking(move || {
        let mut output = tempfile::tempfile().map_err(build_error)?;
        let (mic, tail) = write_file(writer, &path, |out| {
            output.write_all(out).map_err(build_error)?;
            out.clear();
            Ok(())
        })?;
        output.write_all(&tail).map_err(build_error)?;
        let length = output.stream_position().map_err(build_error)?;
        output.rewind().map_err(build_error)?;
        Ok((output, length, mic))
    })
    .await
    .map_err(build_error)?
}

/// Builds the body from `path` while it is sent: the body stream, and the task that
/// returns the MIC at the end. A failure ends the stream with an error, so the request
/// is not completed.
fn build_streaming(
    writer: MessageWriter,
    path: std::path::PathBuf,
) -> (
    RequestBody,
    tokio::task::JoinHandle<Result<ReceivedContentMic, CtlError>>,
) {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, BodyError>>(4);
    let task = tokio::task::spawn_blocking(move || {
        let mut sent_on = true;
        let built = write_file(writer, &path, |out| {
            if out.is_empty() {
                return Ok(());
            }
            if sender
                .blocking_send(Ok(Bytes::from(std::mem::take(out))))
                .is_err()
            {
                sent_on = false;
                return Err(CtlError::Usage("the send ended before the body".to_owned()));
            }
            Ok(())
        });
        match built {
            Ok((mic, tail)) => {
                let _ = sender.blocking_send(Ok(Bytes::from(tail)));
                Ok(mic)
            }
            Err(error) => {
                if sent_on {
                    let _ = sender.blocking_send(Err(error.to_string().into()));
                }
                Err(error)
            }
        }
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let body = RequestBody::Stream {
        stream: Box::pin(stream),
        length: None,
    };
    (body, task)
}

/// Checks the MDN and fills the report; returns the verdict.
fn judge(
    plan: &Plan,
    args: &SendArgs,
    expected_mic: &ReceivedContentMic,
    message_id: &MessageId,
    content_type: &str,
    body: &[u8],
    report: &mut SendReport,
) -> String {
    let signed_requested = !args.unsigned_mdn;
    let verification = MdnVerification {
        partner_certificates: &plan.mdn_certificates,
        allow_md5: plan.digest == MicAlgorithm::Md5,
        check_certificate_validity: true,
        require_signature: signed_requested && !plan.mdn_certificates.is_empty(),
    };
    let parsed: ParsedMdn = match parse_mdn(content_type, body, &verification) {
        Ok(parsed) => parsed,
        Err(error) => {
            // An unsigned error MDN (the gateway signs none for partners it does not
            // know) cannot vouch for anything, but its refusal is worth reporting.
            let unsigned = MdnVerification {
                require_signature: false,
                ..verification
            };
            return match parse_mdn(content_type, body, &unsigned) {
                Ok(parsed)
                    if parsed.signature.is_none()
                        && !parsed.report.disposition.status.is_processed() =>
                {
                    report.disposition = Some(parsed.report.disposition.status.to_string());
                    report.mdn_signature = Some("unsigned".to_owned());
                    format!(
                        "not processed: {} (the MDN is not signed)",
                        parsed.report.disposition.status
                    )
                }
                _ => format!("the MDN does not check out: {error}"),
            };
        }
    };
    report.disposition = Some(parsed.report.disposition.status.to_string());
    report.returned_mic = parsed.report.received_content_mic.as_ref().map(mic_text);
    let id_matches =
        strip_brackets(&parsed.report.original_message_id) == message_id.without_brackets();
    report.original_message_id_matches = Some(id_matches);
    report.mdn_signature = Some(
        match (&parsed.signature, plan.mdn_certificates.is_empty()) {
            (Some(facts), _) => format!("verified ({}, {})", facts.digest.as_str(), facts.scheme),
            (None, true) if signed_requested => {
                "not verified (no --mdn-cert or --encrypt-cert to verify it with)".to_owned()
            }
            (None, _) => "unsigned".to_owned(),
        },
    );
    if !parsed.report.disposition.status.is_processed() {
        return format!("not processed: {}", parsed.report.disposition.status);
    }
    if !id_matches {
        return format!(
            "the MDN answers another message ({})",
            parsed.report.original_message_id
        );
    }
    if !parsed.mic_matches(expected_mic) {
        return "the MDN's Received-Content-MIC does not match what was sent".to_owned();
    }
    "delivered".to_owned()
}

fn strip_brackets(id: &str) -> &str {
    let id = id.trim();
    id.strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(id)
}

fn mic_text(mic: &ReceivedContentMic) -> String {
    format!(
        "{}, {}",
        base64::engine::general_purpose::STANDARD.encode(&mic.digest),
        mic.algorithm.as_str()
    )
}

fn mdn_mode_name(mode: MdnModeArg) -> &'static str {
    match mode {
        MdnModeArg::None => "none",
        MdnModeArg::Sync => "sync",
        MdnModeArg::Async => "async",
    }
}

fn render(report: &SendReport, json: bool) -> Result<String, CtlError> {
    if json {
        return Ok(serde_json::to_string_pretty(report)? + "\n");
    }
    let mut rows = vec![
        ("Message-ID", report.message_id.clone()),
        ("URL", report.url.clone()),
        ("HTTP status", report.http_status.to_string()),
        ("MDN", report.mdn_mode.to_owned()),
    ];
    let optional = [
        ("Disposition", report.disposition.clone()),
        ("MIC sent", Some(report.expected_mic.clone())),
        ("MIC returned", report.returned_mic.clone()),
        (
            "Original-Message-ID",
            report
                .original_message_id_matches
                .map(|matches| if matches { "matches" } else { "DIFFERS" }.to_owned()),
        ),
        ("MDN signature", report.mdn_signature.clone()),
    ];
    rows.extend(
        optional
            .into_iter()
            .filter_map(|(label, value)| Some((label, value?))),
    );
    rows.push(("Verdict", report.verdict.clone()));
    Ok(rows
        .into_iter()
        .map(|(label, value)| format!("{:<21}{value}\n", format!("{label}:")))
        .collect())
}

fn usage(error: impl std::fmt::Display) -> CtlError {
    CtlError::Usage(error.to_string())
}

/// The loaded inputs of one send.
struct Plan {
    as2_from: As2Id,
    as2_to: As2Id,
    signer: Option<Identity>,
    digest: MicAlgorithm,
    recipient: Option<X509>,
    cipher: ContentCipher,
    compression: Option<CompressionOrder>,
    mdn_certificates: Vec<X509>,
}

impl Plan {
    fn load(args: &SendArgs) -> Result<Self, CtlError> {
        let as2_from = As2Id::new(args.from.clone()).map_err(usage)?;
        let as2_to = As2Id::new(args.to.clone()).map_err(usage)?;
        std::fs::metadata(&args.file).map_err(|error| {
            CtlError::Usage(format!("cannot read {}: {error}", args.file.display()))
        })?;
        let signer = match (&args.sign_key, &args.sign_cert) {
            (Some(key), Some(certificate)) => Some(
                Identity::from_pem(&read(key)?, &read(certificate)?, None).map_err(|error| {
                    CtlError::Usage(format!(
                        "cannot load the signing key and certificate: {error}"
                    ))
                })?,
            ),
            (None, None) => None,
            _ => {
                return Err(CtlError::Usage(
                    "--sign-key and --sign-cert go together".to_owned(),
                ));
            }
        };
        let recipient = args
            .encrypt_cert
            .as_deref()
            .map(load_certificate)
            .transpose()?;
        let mdn_certificates = match (&args.mdn_cert, &recipient) {
            (Some(path), _) => vec![load_certificate(path)?],
            (None, Some(certificate)) => vec![certificate.clone()],
            (None, None) => Vec::new(),
        };
        if args.compress == CompressionArg::AfterSigning && signer.is_none() {
            return Err(CtlError::Usage(
                "--compress after-signing needs --sign-key and --sign-cert; use before-signing"
                    .to_owned(),
            ));
        }
        Ok(Self {
            as2_from,
            as2_to,
            signer,
            digest: mic_algorithm(SigningDigest::from(args.digest)),
            recipient,
            cipher: content_cipher(EncryptionCipher::from(args.cipher)),
            compression: compression_order(Compression::from(args.compress)),
            mdn_certificates,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CtlError> {
    std::fs::read(path)
        .map_err(|error| CtlError::Usage(format!("cannot read {}: {error}", path.display())))
}

fn load_certificate(path: &Path) -> Result<X509, CtlError> {
    let bytes = read(path)?;
    X509::from_pem(&bytes)
        .or_else(|_| X509::from_der(&bytes))
        .map_err(|error| {
            CtlError::Usage(format!(
                "{} is not a PEM or DER certificate: {error}",
                path.display()
            ))
        })
}

/// A local HTTP endpoint the partner POSTs the asynchronous MDN to.
struct AsyncMdnReceiver {
    address: SocketAddr,
    received: mpsc::Receiver<(String, Vec<u8>)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl AsyncMdnReceiver {
    async fn bind(address: SocketAddr) -> Result<Self, CtlError> {
        let listener = TcpListener::bind(address).await.map_err(|error| {
            CtlError::Usage(format!("cannot listen for the MDN on {address}: {error}"))
        })?;
        let address = listener.local_addr().map_err(usage)?;
        let (sender, received) = mpsc::channel(4);
        let accept_task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let sender = sender.clone();
                            async move {
                                let content_type = request
                                    .headers()
                                    .get(http::header::CONTENT_TYPE)
                                    .and_then(|value| value.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned();
                                let body = Limited::new(request.into_body(), MAX_MDN_BYTES)
                                    .collect()
                                    .await
                                    .map(|collected| collected.to_bytes().to_vec());
                                let (status, text) = match body {
                                    Ok(body) => {
                                        let _ = sender.send((content_type, body)).await;
                                        (200, "MDN received\n")
                                    }
                                    Err(_) => (413, "MDN too large or unreadable\n"),
                                };
                                http::Response::builder()
                                    .status(status)
                                    .header(http::header::CONTENT_TYPE, "text/plain")
                                    .body(Full::new(Bytes::from_static(text.as_bytes())))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            address,
            received,
            accept_task,
        })
    }

    /// The next MDN POSTed, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Result<(String, Vec<u8>), String> {
        match tokio::time::timeout(timeout, self.received.recv()).await {
            Ok(Some(mdn)) => Ok(mdn),
            Ok(None) => Err("the MDN listener stopped".to_owned()),
            Err(_) => Err(format!(
                "no asynchronous MDN arrived at http://{}/mdn within {} s",
                self.address,
                timeout.as_secs()
            )),
        }
    }
}

impl Drop for AsyncMdnReceiver {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn send_args(arguments: &[&str]) -> SendArgs {
        let mut all = vec!["as2ctl", "send"];
        all.extend_from_slice(arguments);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Send(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn error_of(args: &SendArgs) -> String {
        match Plan::load(args) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn inputs_that_cannot_work_are_refused_before_anything_is_sent() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("doc.edi");
        std::fs::write(&file, b"UNB").unwrap();
        let file = file.to_str().unwrap();
        let base = [
            "--url",
            "http://127.0.0.1:9/as2",
            "--from",
            "a",
            "--to",
            "b",
        ];

        let mut half_identity = vec![file, "--sign-key", file];
        half_identity.extend_from_slice(&base);
        assert!(error_of(&send_args(&half_identity)).contains("go together"));

        let mut unsigned_after = vec![file, "--compress", "after-signing"];
        unsigned_after.extend_from_slice(&base);
        assert!(error_of(&send_args(&unsigned_after)).contains("after-signing needs"));

        let mut not_a_certificate = vec![file, "--encrypt-cert", file];
        not_a_certificate.extend_from_slice(&base);
        assert!(error_of(&send_args(&not_a_certificate)).contains("not a PEM or DER certificate"));

        let mut missing = vec!["/nonexistent/doc.edi"];
        missing.extend_from_slice(&base);
        assert!(error_of(&send_args(&missing)).contains("cannot read /nonexistent/doc.edi"));

        let bad_id = [
            file,
            "--url",
            "http://127.0.0.1:9/",
            "--from",
            "",
            "--to",
            "b",
        ];
        assert!(Plan::load(&send_args(&bad_id)).is_err());
    }

    #[test]
    fn the_text_report_lists_what_was_checked() {
        let report = SendReport {
            message_id: "<1@x>".to_owned(),
            url: "http://h/as2".to_owned(),
            http_status: 200,
            mdn_mode: "sync",
            disposition: Some("processed".to_owned()),
            expected_mic: "abc=, sha-256".to_owned(),
            returned_mic: Some("abc=, sha-256".to_owned()),
            original_message_id_matches: Some(false),
            mdn_signature: Some("unsigned".to_owned()),
            verdict: "the MDN answers another message (<2@x>)".to_owned(),
            delivered: false,
        };
        let text = render(&report, false).unwrap();
        assert!(text.contains("Original-Message-ID: DIFFERS\n"), "{text}");
        assert!(
            text.contains("Verdict:             the MDN answers another message"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&report, true).unwrap()).unwrap();
        assert_eq!(json["delivered"], false);
    }
}
