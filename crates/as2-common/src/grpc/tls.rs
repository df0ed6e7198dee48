//! Mutual TLS on the gRPC hops, through OpenSSL.
//!
//! Every service holds one credential: a certificate (with its chain) and key, used both
//! to serve its API and to call the others, and the CA bundle that the peers'
//! certificates must chain to. The certificate's subject common name names the caller's
//! role ([`as2_rpc::authorization`]). The files are read again when they change (checked
//! at most every [`RELOAD_CHECK_INTERVAL`], on the next connection), so a renewed
//! certificate (cert-manager, a rotated Secret) takes effect without a restart; a file
//! that does not load keeps the previous credential and is logged.
//!
//! The server asks every client for a certificate but completes the handshake without
//! one, or with one that does not verify, and records what it found
//! ([`PeerAuthentication`]); the authorisation layer then refuses every call of such a
//! connection with `UNAUTHENTICATED` and the reason, which a caller can act on, where a
//! failed handshake would only say "transport error". TLS 1.2 is the oldest version
//! either side accepts; HTTP/2 is negotiated with ALPN.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use hyper_util::rt::TokioIo;
use openssl::nid::Nid;
use openssl::ssl::{
    AlpnError, Ssl, SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_openssl::SslStream;
use tonic::transport::server::Connected;

use crate::config::GrpcTlsConfig;

/// How often, at most, the credential files are checked for changes.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes may run at once; further connections wait to be accepted.
const CONCURRENT_HANDSHAKES: usize = 128;
/// ALPN: HTTP/2 only, as gRPC needs.
const ALPN_H2: &[u8] = b"\x02h2";

/// Why the gRPC transport security could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Neither credentials nor the development flag are configured.
    #[error(
        "gRPC needs mutual TLS: set AS2_GRPC_TLS_CERT, AS2_GRPC_TLS_KEY and AS2_GRPC_TLS_CA \
         (--grpc-tls-cert, --grpc-tls-key, --grpc-tls-ca), or AS2_GRPC_INSECURE_PLAINTEXT=true \
         for development only"
    )]
    NotConfigured,
    /// Only some of the three files are configured.
    #[error(
        "gRPC mutual TLS needs all of AS2_GRPC_TLS_CERT, AS2_GRPC_TLS_KEY and AS2_GRPC_TLS_CA; {0} is missing"
    )]
    Incomplete(&'static str),
    /// Both credentials and the plaintext flag are configured.
    #[error("AS2_GRPC_INSECURE_PLAINTEXT=true contradicts the configured gRPC TLS files")]
    Contradictory,
    /// A file did not load.
    #[error("cannot load the gRPC {what} from {path}: {reason}")]
    Load {
        /// `certificate`, `key` or `CA bundle`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// OpenSSL's or the file system's complaint.
        reason: String,
    },
    /// The contexts could not be built.
    #[error("cannot set up gRPC TLS: {0}")]
    Setup(#[from] openssl::error::ErrorStack),
}

/// How a service's gRPC connections are secured.
#[derive(Clone, Debug)]
pub enum GrpcSecurity {
    /// Mutual TLS with the given credential.
    MutualTls(Arc<Credential>),
    /// No TLS and no authentication: the explicit development flag only.
    InsecurePlaintext,
}

impl GrpcSecurity {
    /// Loads the configured credential (or accepts the development flag); fails when
    /// neither is configured, so a service never falls back to plain text by itself.
    pub fn from_config(config: &GrpcTlsConfig) -> Result<Self, TlsError> {
        let files = [
            (&config.grpc_tls_cert, "AS2_GRPC_TLS_CERT"),
            (&config.grpc_tls_key, "AS2_GRPC_TLS_KEY"),
            (&config.grpc_tls_ca, "AS2_GRPC_TLS_CA"),
        ];
        let configured = files.iter().filter(|(file, _)| file.is_some()).count();
        match (configured, config.grpc_insecure_plaintext) {
            (0, true) => Ok(Self::InsecurePlaintext),
            (0, false) => Err(TlsError::NotConfigured),
            (_, true) => Err(TlsError::Contradictory),
            (3, false) => {
                let (Some(cert), Some(key), Some(ca)) = (
                    &config.grpc_tls_cert,
                    &config.grpc_tls_key,
                    &config.grpc_tls_ca,
                ) else {
                    return Err(TlsError::NotConfigured);
                };
                Ok(Self::MutualTls(Arc::new(Credential::load(
                    CredentialFiles {
                        certificate: cert.clone(),
                        key: key.clone(),
                        ca: ca.clone(),
                    },
                )?)))
            }
            _ => {
                let missing = files
                    .iter()
                    .find(|(file, _)| file.is_none())
                    .map_or("a file", |(_, name)| *name);
                Err(TlsError::Incomplete(missing))
            }
        }
    }

    /// The URL scheme a channel under this security uses.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::MutualTls(_) => "https",
            Self::InsecurePlaintext => "http",
        }
    }

    /// `true` for the development flag.
    pub fn is_plaintext(&self) -> bool {
        matches!(self, Self::InsecurePlaintext)
    }
}

/// The three files of a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialFiles {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle that peers' certificates must chain to.
    pub ca: PathBuf,
}

impl CredentialFiles {
    fn paths(&self) -> Vec<PathBuf> {
        vec![self.certificate.clone(), self.key.clone(), self.ca.clone()]
    }
}

/// The OpenSSL contexts built from one version of the files.
struct Contexts {
    acceptor: SslAcceptor,
    connector: SslConnector,
}

struct Loaded<T> {
    value: Arc<T>,
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

/// Something built from files (a TLS context from certificate and key files), built
/// again when the files change: checked at most every [`RELOAD_CHECK_INTERVAL`], when
/// the value is next asked for. A rebuild that fails keeps the previous value and is
/// logged with `what`.
pub struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    loaded: Mutex<Loaded<T>>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|path| {
            std::fs::metadata(path)
                .and_then(|meta| meta.modified())
                .ok()
        })
        .collect()
}

impl<T> Reloading<T> {
    /// Builds the value now (an error here is the caller's, at start-up) and again
    /// whenever one of `paths` changes.
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let stamps = stamps(&paths);
        let value = Arc::new(build()?);
        Ok(Self {
            what,
            paths,
            build: Box::new(build),
            loaded: Mutex::new(Loaded {
                value,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The current value, built again first if the files changed since the last check.
    pub fn current(&self) -> Arc<T> {
        let mut loaded = match self.loaded.lock() {
            Ok(loaded) => loaded,
            Err(poisoned) => poisoned.into_inner(),
        };
        if loaded.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            loaded.checked = Instant::now();
            let stamps = stamps(&self.paths);
            if stamps != loaded.stamps {
                match (self.build)() {
                    Ok(value) => {
                        loaded.value = Arc::new(value);
                        loaded.stamps = stamps;
                        tracing::info!(what = self.what, "reloaded a changed TLS credential");
                    }
                    Err(error) => tracing::warn!(
                        what = self.what,
                        error = %crate::error_chain(&error),
                        "the changed TLS files do not load; keeping the previous credential"
                    ),
                }
            }
        }
        loaded.value.clone()
    }

    /// Makes the next [`current`](Self::current) check the files (tests).
    #[cfg(test)]
    fn check_now(&self) {
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.checked = Instant::now() - RELOAD_CHECK_INTERVAL;
        }
    }
}

/// A service's certificate, key and CA bundle, loaded into server and client contexts
/// and reloaded when the files change.
pub struct Credential {
    files: CredentialFiles,
    contexts: Reloading<Contexts>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Credential")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Loads the files; a file that does not load is an error here (at start-up),
    /// and only a warning on a later reload.
    pub fn load(files: CredentialFiles) -> Result<Self, TlsError> {
        let paths = files.paths();
        let source = files.clone();
        let contexts = Reloading::new("gRPC credential", paths, move || build_contexts(&source))?;
        Ok(Self { files, contexts })
    }

    fn contexts(&self) -> Arc<Contexts> {
        self.contexts.current()
    }
}

/// Turns an OpenSSL failure to load `path` into a [`TlsError::Load`].
pub fn load_error(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(openssl::error::ErrorStack) -> TlsError {
    let path = path.to_owned();
    move |error| TlsError::Load {
        what,
        reason: if path.exists() {
            error.to_string()
        } else {
            "no such file".to_owned()
        },
        path,
    }
}

fn build_contexts(files: &CredentialFiles) -> Result<Contexts, TlsError> {
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    acceptor.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    acceptor
        .set_certificate_chain_file(&files.certificate)
        .map_err(load_error("certificate", &files.certificate))?;
    acceptor
        .set_private_key_file(&files.key, SslFiletype::PEM)
        .map_err(load_error("key", &files.key))?;
    acceptor
        .check_private_key()
        .map_err(load_error("key", &files.key))?;
    acceptor
        .set_ca_file(&files.ca)
        .map_err(load_error("CA bundle", &files.ca))?;
    acceptor.set_alpn_select_callback(|_, offered| {
        openssl::ssl::select_next_proto(ALPN_H2, offered).ok_or(AlpnError::ALERT_FATAL)
    });

    let mut connector = SslConnector::builder(SslMethod::tls_client())?;
    connector.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    connector
        .set_certificate_chain_file(&files.certificate)
        .map_err(load_error("certificate", &files.certificate))?;
    connector
        .set_private_key_file(&files.key, SslFiletype::PEM)
        .map_err(load_error("key", &files.key))?;
    connector
        .set_ca_file(&files.ca)
        .map_err(load_error("CA bundle", &files.ca))?;
    connector.set_alpn_protos(ALPN_H2)?;
    Ok(Contexts {
        acceptor: acceptor.build(),
        connector: connector.build(),
    })
}

/// What the server learnt about the client of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAuthentication {
    /// A certificate that chains to the CA bundle, with its subject common name.
    Verified {
        /// The subject's common name.
        common_name: String,
    },
    /// A certificate that does not verify (expired, another CA, no common name).
    Rejected {
        /// Why, in OpenSSL's words.
        reason: String,
    },
    /// No client certificate.
    Missing,
    /// A plain-text connection under the development flag: nobody is authenticated.
    InsecurePlaintext,
}

/// The connection information the gRPC server attaches to every request
/// (`request.extensions().get::<PeerInfo>()`).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// What its certificate showed.
    pub authentication: PeerAuthentication,
}

/// One accepted gRPC connection: TLS, or plain text under the development flag.
pub struct GrpcIo {
    stream: GrpcStream,
    info: PeerInfo,
}

enum GrpcStream {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Connected for GrpcIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            GrpcStream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            GrpcStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for GrpcIo {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            GrpcStream::Plain(stream) => Pin::new(stream).poll_write(context, buffer),
            GrpcStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buffer),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            GrpcStream::Plain(stream) => Pin::new(stream).poll_flush(context),
            GrpcStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            GrpcStream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            GrpcStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}

/// The connections of `listener` for `Router::serve_with_incoming_shutdown`: under
/// mutual TLS each is handshaken on its own task (a slow client does not hold up the
/// others) and handed over once it completed; failed handshakes are logged and
/// dropped. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    security: GrpcSecurity,
) -> impl Stream<Item = io::Result<GrpcIo>> + Send + 'static {
    let (connections, receiver) = mpsc::channel::<GrpcIo>(CONCURRENT_HANDSHAKES);
    tokio::spawn(accept_loop(listener, security, connections));
    futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(receiver),
        Ok::<GrpcIo, io::Error>,
    )
}

async fn accept_loop(
    listener: TcpListener,
    security: GrpcSecurity,
    connections: mpsc::Sender<GrpcIo>,
) {
    let handshakes = Arc::new(Semaphore::new(CONCURRENT_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            () = connections.closed() => return,
            permit = handshakes.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else {
            return;
        };
        let accepted = tokio::select! {
            () = connections.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote_addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "cannot accept a gRPC connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let connections = connections.clone();
        match &security {
            GrpcSecurity::InsecurePlaintext => {
                drop(permit);
                let io = GrpcIo {
                    stream: GrpcStream::Plain(tcp),
                    info: PeerInfo {
                        remote_addr: Some(remote_addr),
                        authentication: PeerAuthentication::InsecurePlaintext,
                    },
                };
                if connections.send(io).await.is_err() {
                    return;
                }
            }
            GrpcSecurity::MutualTls(credential) => {
                let contexts = credential.contexts();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        server_handshake(&contexts.acceptor, tcp),
                    )
                    .await;
                    drop(permit);
                    match handshake {
                        Ok(Ok((stream, authentication))) => {
                            let io = GrpcIo {
                                stream: GrpcStream::Tls(Box::new(stream)),
                                info: PeerInfo {
                                    remote_addr: Some(remote_addr),
                                    authentication,
                                },
                            };
                            let _ = connections.send(io).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%remote_addr, %error, "gRPC TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%remote_addr, "gRPC TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

async fn server_handshake(
    acceptor: &SslAcceptor,
    tcp: TcpStream,
) -> io::Result<(SslStream<TcpStream>, PeerAuthentication)> {
    let mut ssl = Ssl::new(acceptor.context()).map_err(io::Error::other)?;
    // The first verification failure of the client's chain, kept for the refusal; the
    // handshake goes on so that the refusal can be a gRPC status with a reason.
    let failure = Arc::new(Mutex::new(None::<String>));
    {
        let failure = failure.clone();
        ssl.set_verify_callback(SslVerifyMode::PEER, move |verified, context| {
            if !verified
                && let Ok(mut failure) = failure.lock()
                && failure.is_none()
            {
                let subject = context
                    .current_cert()
                    .and_then(common_name)
                    .unwrap_or_default();
                *failure = Some(format!(
                    "client certificate {subject:?} does not verify: {}",
                    context.error().error_string()
                ));
            }
            true
        });
    }
    let mut stream = SslStream::new(ssl, tcp).map_err(io::Error::other)?;
    Pin::new(&mut stream)
        .accept()
        .await
        .map_err(|error| io::Error::other(error.to_string()))?;
    let rejected = failure.lock().ok().and_then(|mut failure| failure.take());
    let authentication = match (stream.ssl().peer_certificate(), rejected) {
        (None, _) => PeerAuthentication::Missing,
        (Some(_), Some(reason)) => PeerAuthentication::Rejected { reason },
        (Some(certificate), None) => match common_name(&certificate) {
            Some(common_name) => PeerAuthentication::Verified { common_name },
            None => PeerAuthentication::Rejected {
                reason: "client certificate has no subject common name".to_owned(),
            },
        },
    };
    Ok((stream, authentication))
}

fn common_name(certificate: &openssl::x509::X509Ref) -> Option<String> {
    certificate
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|entry| entry.data().to_string().ok())
}

/// The client side: a connector for `Endpoint::connect_with_connector` that opens TCP to
/// the URI's host and port and runs the TLS handshake with the credential, verifying
/// the server's certificate against the CA bundle and the host name (or IP address).
#[derive(Clone, Debug)]
pub struct TlsConnector {
    credential: Arc<Credential>,
}

impl TlsConnector {
    /// A connector that presents `credential`.
    pub fn new(credential: Arc<Credential>) -> Self {
        Self { credential }
    }
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<SslStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let contexts = self.credential.contexts();
        Box::pin(async move {
            let host = uri
                .host()
                .map(|host| {
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned()
                })
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "the URL has no host")
                })?;
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let ssl = contexts
                .connector
                .configure()
                .and_then(|configuration| configuration.into_ssl(&host))
                .map_err(io::Error::other)?;
            let mut stream = SslStream::new(ssl, tcp).map_err(io::Error::other)?;
            if let Err(error) = Pin::new(&mut stream).connect().await {
                let verification = stream.ssl().verify_result();
                let reason = if verification == openssl::x509::X509VerifyResult::OK {
                    error.to_string()
                } else {
                    format!(
                        "the server's certificate does not verify: {}",
                        verification.error_string()
                    )
                };
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, reason));
            }
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::grpc::local_ca::{LocalCa, Validity};

    /// The common name of the certificate a server at `address` presents.
    async fn server_common_name(address: SocketAddr, ca: &Path) -> String {
        let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
        builder.set_ca_file(ca).unwrap();
        builder.set_alpn_protos(ALPN_H2).unwrap();
        let ssl = builder
            .build()
            .configure()
            .unwrap()
            .into_ssl("127.0.0.1")
            .unwrap();
        let tcp = TcpStream::connect(address).await.unwrap();
        let mut stream = SslStream::new(ssl, tcp).unwrap();
        Pin::new(&mut stream).connect().await.unwrap();
        let certificate = stream.ssl().peer_certificate().unwrap();
        common_name(&certificate).unwrap()
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_after_the_reload_check() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), "reload CA").unwrap();
        let files = ca
            .ensure_credential(dir.path(), "server", "routing", &["127.0.0.1"])
            .unwrap();
        let credential = Arc::new(Credential::load(files.clone()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = incoming(listener, GrpcSecurity::MutualTls(credential.clone()));
        let accepted = tokio::spawn(async move {
            futures::StreamExt::collect::<Vec<_>>(futures::StreamExt::take(connections, 2)).await
        });
        assert_eq!(server_common_name(address, &files.ca).await, "routing");

        // A renewed certificate with another name; the files are checked again once the
        // interval passed (the test moves the last check back instead of waiting).
        ca.write_credential(
            &files,
            "routing-renewed",
            &["127.0.0.1"],
            Validity::default(),
        )
        .unwrap();
        credential.contexts.check_now();
        assert_eq!(
            server_common_name(address, &files.ca).await,
            "routing-renewed"
        );
        let accepted = accepted.await.unwrap();
        assert_eq!(accepted.len(), 2);
        for connection in &accepted {
            // The test client sent no certificate.
            assert_eq!(
                connection.as_ref().unwrap().info.authentication,
                PeerAuthentication::Missing
            );
        }
    }

    #[test]
    fn a_broken_renewal_keeps_the_previous_credential() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), "reload CA").unwrap();
        let files = ca
            .ensure_credential(dir.path(), "server", "routing", &["127.0.0.1"])
            .unwrap();
        let credential = Credential::load(files.clone()).unwrap();
        let before = Arc::as_ptr(&credential.contexts());
        std::fs::write(&files.key, "not a key").unwrap();
        credential.contexts.check_now();
        assert_eq!(Arc::as_ptr(&credential.contexts()), before);
    }

    #[test]
    fn the_configuration_must_be_complete_and_explicit() {
        let error = GrpcSecurity::from_config(&GrpcTlsConfig::default()).unwrap_err();
        assert!(matches!(error, TlsError::NotConfigured), "{error}");
        assert!(
            error
                .to_string()
                .contains("AS2_GRPC_INSECURE_PLAINTEXT=true")
        );
        let partial = GrpcTlsConfig {
            grpc_tls_cert: Some("/x.crt".into()),
            ..GrpcTlsConfig::default()
        };
        let error = GrpcSecurity::from_config(&partial).unwrap_err();
        assert_eq!(
            error.to_string(),
            "gRPC mutual TLS needs all of AS2_GRPC_TLS_CERT, AS2_GRPC_TLS_KEY and \
             AS2_GRPC_TLS_CA; AS2_GRPC_TLS_KEY is missing"
        );
        let both = GrpcTlsConfig {
            grpc_insecure_plaintext: true,
            ..GrpcTlsConfig::mutual_tls("/a", "/b", "/c")
        };
        assert!(matches!(
            GrpcSecurity::from_config(&both),
            Err(TlsError::Contradictory)
        ));
        let missing = GrpcSecurity::from_config(&GrpcTlsConfig::mutual_tls(
            "/nonexistent/a.crt",
            "/nonexistent/a.key",
            "/nonexistent/ca.crt",
        ))
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "cannot load the gRPC certificate from /nonexistent/a.crt: no such file"
        );
        assert!(
            GrpcSecurity::from_config(&GrpcTlsConfig::insecure_plaintext())
                .unwrap()
                .is_plaintext()
        );
    }
}
