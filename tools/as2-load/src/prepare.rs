//! Building the messages before the run: payloads, signatures, encryption and the
//! finished HTTP requests, so that sending costs the client as little CPU as possible.

use std::thread;

use anyhow::{Context as _, bail};
use as2_protocol::cms::{Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::As2Id;
use as2_protocol::outbound::{self, Encryption, MdnRequest, OutboundMessage, Signing};
use as2_protocol::{MessageId, MicAlgorithm, ReceivedContentMic};
use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Full;
use openssl::x509::X509;

use crate::config::{LoadConfig, MdnArg};

/// One message ready to go: the complete request and what its MDN must say.
#[derive(Debug)]
pub struct PreparedMessage {
    /// The request, headers and body, for the connection's origin.
    pub request: Request<Full<Bytes>>,
    /// The MIC the gateway's MDN must return (checked with `--verify-mdn`).
    pub expected_mic: ReceivedContentMic,
}

/// Where the requests go: the address to connect to and what to put in the request line.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` to connect to.
    pub authority: String,
    /// Path and query of the request line.
    pub path_and_query: String,
}

impl Target {
    /// Reads an `http://host[:port]/path` URL.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported, got {url:?}");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("no host in {url:?}"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{}:{port}", authority.host()),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned()),
        })
    }
}

/// The keys and settings every message is built with.
pub struct MessageTemplate {
    as2_from: As2Id,
    as2_to: As2Id,
    signer: Identity,
    gateway_certificate: X509,
    signing_digest: Option<MicAlgorithm>,
    cipher: Option<as2_protocol::cms::ContentCipher>,
    mdn: MdnArg,
    size: usize,
    content_type: String,
    message_id_domain: String,
    target: Target,
}

impl MessageTemplate {
    /// Loads the keys named in `config`.
    pub fn load(config: &LoadConfig, target: Target) -> anyhow::Result<Self> {
        let key_pem = read(&config.partner_key)?;
        let cert_pem = read(&config.partner_cert)?;
        let gateway_pem = read(&config.gateway_cert)?;
        Ok(Self {
            as2_from: As2Id::new(config.from.clone()).context("invalid --from")?,
            as2_to: As2Id::new(config.to.clone()).context("invalid --to")?,
            signer: Identity::from_pem(&key_pem, &cert_pem, None)
                .context("cannot load the partner key and certificate")?,
            gateway_certificate: X509::from_pem(&gateway_pem)
                .context("cannot load the gateway certificate")?,
            signing_digest: config.digest.algorithm(),
            cipher: config.cipher.cipher(),
            mdn: config.mdn,
            size: config.size,
            content_type: config.content_type.clone(),
            message_id_domain: config.message_id_domain.clone(),
            target,
        })
    }

    /// The gateway's certificate (to verify MDNs with).
    pub fn gateway_certificate(&self) -> &X509 {
        &self.gateway_certificate
    }

    /// Builds `count` messages with distinct Message-IDs and payloads on `threads` threads.
    pub fn build_all(&self, count: usize, threads: usize) -> anyhow::Result<Vec<PreparedMessage>> {
        let threads = threads.clamp(1, count.max(1));
        let per_thread = count.div_ceil(threads);
        thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|thread_index| {
                    let first = thread_index * per_thread;
                    let last = count.min(first + per_thread);
                    scope.spawn(move || {
                        (first..last)
                            .map(|index| self.build(index))
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut messages = Vec::with_capacity(count);
            for worker in workers {
                let built = worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a build thread panicked"))??;
                messages.extend(built);
            }
            Ok(messages)
        })
    }

    /// Builds message number `index`.
    fn build(&self, index: usize) -> anyhow::Result<PreparedMessage> {
        let message_id = MessageId::generate(&self.message_id_domain)?;
        let payload = edi_payload(index, self.size);
        let filename = format!("load-{index}.edi");
        let mdn = match self.mdn {
            MdnArg::None => None,
            MdnArg::Unsigned | MdnArg::Signed => Some(MdnRequest {
                disposition_notification_to: "as2-load@localhost".to_owned(),
                signed_receipt_algorithms: match self.mdn {
                    MdnArg::Signed => vec![self.signing_digest.unwrap_or(MicAlgorithm::Sha256)],
                    _ => Vec::new(),
                },
                receipt_delivery_option: None,
            }),
        };
        let built = outbound::build_message(&OutboundMessage {
            as2_from: &self.as2_from,
            as2_to: &self.as2_to,
            message_id: &message_id,
            subject: Some("as2-load"),
            payload: &payload,
            content_type: &self.content_type,
            filename: Some(&filename),
            signing: self.signing_digest.map(|digest| Signing {
                identity: &self.signer,
                digest,
                scheme: SignatureScheme::RsaPkcs1v15,
            }),
            encryption: self.cipher.map(|cipher| Encryption {
                recipient: &self.gateway_certificate,
                cipher,
                key_transport: KeyTransport::RsaPkcs1v15,
            }),
            compression: None,
            mdn,
        })?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.target.path_and_query.as_str())
            .body(Full::new(Bytes::from(built.body)))?;
        let headers = request.headers_mut();
        headers.insert(HOST, HeaderValue::from_str(&self.target.authority)?);
        for (name, value) in built.headers {
            headers.append(HeaderName::try_from(name)?, HeaderValue::try_from(value)?);
        }
        Ok(PreparedMessage {
            request,
            expected_mic: built.expected_mic,
        })
    }
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// An X12-looking document of exactly `size` bytes whose first segment carries `index`,
/// so every payload differs.
pub fn edi_payload(index: usize, size: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size + 64);
    payload.extend_from_slice(
        format!("ISA*00*          *00*          *ZZ*AS2LOAD        *ZZ*GATEWAY        *260101*1200*U*00401*{index:09}*0*P*>~\n").as_bytes(),
    );
    let mut line = 0_usize;
    while payload.len() < size {
        line += 1;
        payload.extend_from_slice(
            format!("LIN*{line}*SK*ITEM-{index}-{line}*QT*{}~\n", line % 97).as_bytes(),
        );
    }
    payload.truncate(size);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_exact_size_and_differ() {
        for size in [1, 100, 1024, 1024 * 1024] {
            assert_eq!(edi_payload(7, size).len(), size);
        }
        assert_ne!(edi_payload(1, 1024), edi_payload(2, 1024));
    }

    #[test]
    fn targets_split_authority_and_path() {
        let target = Target::from_url("http://127.0.0.1:8080/as2?x=1").unwrap();
        assert_eq!(target.authority, "127.0.0.1:8080");
        assert_eq!(target.path_and_query, "/as2?x=1");
        assert_eq!(
            Target::from_url("http://localhost").unwrap().authority,
            "localhost:80"
        );
        assert!(Target::from_url("https://localhost/as2").is_err());
    }
}
