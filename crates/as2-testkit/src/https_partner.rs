//! A partner's HTTPS endpoint on a loopback port: OpenSSL (TLS 1.2 and 1.3) under a
//! hyper HTTP/1.1 server, optionally requiring a client certificate of a given CA. It
//! answers every request with 200 and records what it got (the request and the client
//! certificate's SHA-256 fingerprint), and every handshake that failed, so a test can
//! tell "refused during the handshake, no request seen" from "refused with an HTTP
//! answer".
//!
//! The outbound tests of the sender, the MDN service and `as2-partner` share it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::certificates::{KeyMaterial, TestCertificate};

/// The server's identity and whom it lets in.
#[derive(Clone, Debug)]
pub struct HttpsPartnerOptions {
    /// The server certificate, PEM, followed by its chain.
    pub certificate_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// When set, a client certificate is required and must chain to one of these CA
    /// certificates (PEM); a client without one fails the handshake.
    pub client_ca_pem: Option<String>,
}

/// A partner's small PKI for HTTPS tests: a CA, the server certificate it issued for
/// `localhost`, and a client certificate it issued (ours, to present to the partner).
#[derive(Clone, Debug)]
pub struct PartnerPki {
    /// The CA.
    pub ca: KeyMaterial,
    /// The server's certificate, for the DNS name `localhost`.
    pub server: KeyMaterial,
    /// A client certificate of the CA.
    pub client: KeyMaterial,
}

impl PartnerPki {
    /// Fresh keys; `name` goes into the common names.
    pub fn generate(name: &str) -> Self {
        let ca = TestCertificate::new(&format!("{name} CA"))
            .certificate_authority()
            .generate();
        let server = TestCertificate::new(&format!("{name} server"))
            .hosts(&["localhost"])
            .issued_by(&ca);
        let client = TestCertificate::new(&format!("{name} client")).issued_by(&ca);
        Self { ca, server, client }
    }

    /// A server with the server certificate that requires a client certificate of the
    /// CA, or asks for none.
    pub fn options(&self, require_client_certificate: bool) -> HttpsPartnerOptions {
        HttpsPartnerOptions {
            certificate_pem: self.server.cert_pem.clone(),
            key_pem: self.server.key_pem.clone(),
            client_ca_pem: require_client_certificate.then(|| self.ca.cert_pem.clone()),
        }
    }
}

/// One request the partner read.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// The request's path (and query).
    pub path: String,
    /// Its header fields, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
    /// SHA-256 (lowercase hex) of the client certificate the connection presented.
    pub client_certificate_sha256: Option<String>,
}

impl ReceivedRequest {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Default)]
struct Seen {
    requests: Vec<ReceivedRequest>,
    failed_handshakes: Vec<String>,
}

/// A running HTTPS partner; stops serving when dropped.
pub struct HttpsPartner {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    serving: JoinHandle<()>,
}

impl HttpsPartner {
    /// Starts serving on a free loopback port.
    ///
    /// # Panics
    ///
    /// When the options do not make a TLS server (bad PEM), or no port can be bound.
    pub async fn start(options: HttpsPartnerOptions) -> Self {
        let acceptor = Arc::new(acceptor(&options));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recorded = seen.clone();
        let serving = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_connection(tcp, acceptor.clone(), recorded.clone()));
            }
        });
        Self {
            addr,
            seen,
            serving,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://{host}:{port}/as2`; `host` should be a name the certificate has.
    pub fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/as2", self.addr.port())
    }

    /// The requests read so far.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.seen).requests.clone()
    }

    /// Why each failed handshake failed (OpenSSL's words), so far.
    pub fn failed_handshakes(&self) -> Vec<String> {
        lock(&self.seen).failed_handshakes.clone()
    }

    /// The failed handshakes once there are at least `count`, waiting up to 5 s (the
    /// client may see its failure before the server has finished with it).
    pub async fn wait_for_failed_handshakes(&self, count: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let failed = self.failed_handshakes();
            if failed.len() >= count || tokio::time::Instant::now() >= deadline {
                return failed;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HttpsPartner {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn acceptor(options: &HttpsPartnerOptions) -> SslAcceptor {
    let mut certificates = X509::stack_from_pem(options.certificate_pem.as_bytes())
        .expect("the server certificate is PEM")
        .into_iter();
    let key = PKey::private_key_from_pem(options.key_pem.as_bytes()).expect("the key is PEM");
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("an ssl acceptor");
    builder
        .set_certificate(&certificates.next().expect("a server certificate"))
        .expect("set the certificate");
    for chain in certificates {
        builder
            .add_extra_chain_cert(chain)
            .expect("add a chain certificate");
    }
    builder.set_private_key(&key).expect("set the key");
    builder
        .check_private_key()
        .expect("the key fits the certificate");
    if let Some(cas) = &options.client_ca_pem {
        for ca in X509::stack_from_pem(cas.as_bytes()).expect("the client CAs are PEM") {
            builder
                .cert_store_mut()
                .add_cert(ca)
                .expect("add a client CA");
        }
        builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        // Without a session id context OpenSSL refuses to resume the sessions of
        // verified clients (internal_error alert), and clients do resume.
        builder
            .set_session_id_context(b"as2-testkit https partner")
            .expect("set the session id context");
    }
    builder.build()
}

/// After a failed handshake (its alert sent), reads and drops what the client still
/// sends for up to a second before closing, as servers with a lingering close do: a
/// TLS 1.3 client that sent its request right after its Finished then reads the alert
/// instead of a connection reset.
async fn linger(tcp: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt as _;
    let mut sink = vec![0u8; 16 * 1024];
    let drain = async { while matches!(tcp.read(&mut sink).await, Ok(read) if read > 0) {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: Arc<SslAcceptor>,
    seen: Arc<Mutex<Seen>>,
) {
    let Ok(ssl) = Ssl::new(acceptor.context()) else {
        return;
    };
    let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, tcp) else {
        return;
    };
    if let Err(error) = Pin::new(&mut tls).accept().await {
        lock(&seen).failed_handshakes.push(error.to_string());
        linger(tls.get_mut()).await;
        return;
    }
    let client_certificate_sha256 = tls.ssl().peer_certificate().and_then(|certificate| {
        certificate
            .digest(MessageDigest::sha256())
            .ok()
            .map(|digest| digest.iter().map(|byte| format!("{byte:02x}")).collect())
    });
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        let client_certificate_sha256 = client_certificate_sha256.clone();
        async move {
            let path = request
                .uri()
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default();
            let headers = request
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|body| body.to_bytes().to_vec())
                .unwrap_or_default();
            lock(&seen).requests.push(ReceivedRequest {
                path,
                headers,
                body,
                client_certificate_sha256,
            });
            let answer = http::Response::builder()
                .status(200)
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(b"received")))
                .expect("a response");
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}
