//! How we connect to one of a partner's HTTPS endpoints: a partnership's
//! [`PartnerHttps`] settings (our TLS client certificate, the server certificates
//! trusted, the egress proxy) validated into [`HttpsSettings`], and the OpenSSL client
//! configuration they make.
//!
//! The sender (to the partner's AS2 URL) and the MDN service (to the partner's
//! asynchronous MDN URL) build their connections here, through
//! [`PartnerClients`](crate::transport::PartnerClients); the routing service validates
//! the settings with [`HttpsSettings::from_proto`] before it stores them.
//!
//! Trust is decided during the TLS handshake by one verify callback: with a CA bundle
//! the chain and host name are checked as OpenSSL does, against the bundle only; with
//! pins the end-entity certificate must have one of the pinned SHA-256 fingerprints and
//! nothing else is checked. A refused certificate ends the handshake, so not one byte of
//! the request reaches the server, and the reason is kept for the delivery's record
//! ([`ServerCertificateRefused`]).

use std::error::Error;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use as2_rpc::routing::v1::PartnerHttps;
use hyper_openssl::client::legacy::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509, X509Ref, X509StoreContextRef, X509VerifyResult};
use tokio::net::TcpStream;

use crate::keys::{KeyPair, is_valid_key_id};
use crate::proxy::EgressProxy;
use crate::target::CheckedConnector;

/// Most CA certificates in a partnership's `trusted_ca_pem`.
pub const MAX_TRUSTED_CAS: usize = 32;
/// Largest `trusted_ca_pem`, in bytes.
pub const MAX_TRUSTED_CA_PEM_BYTES: usize = 256 * 1024;
/// Most pinned server certificates of one partnership.
pub const MAX_PINNED_CERTIFICATES: usize = 8;

/// Which server certificates a connection accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServerTrust {
    /// Those that chain to the system's CA certificates (and the service's extra CA
    /// file) and name the host.
    #[default]
    System,
    /// Those that chain to one of these CA certificates (PEM, normalised) and name the
    /// host; the system's CA certificates are not used.
    CaBundle(String),
    /// Only an end-entity certificate with one of these SHA-256 fingerprints (lowercase
    /// hex); its chain, validity and names are not checked.
    Pinned(Vec<String>),
}

/// Whether connections go through an egress proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxyChoice {
    /// The service's (`AS2_EGRESS_PROXY_URL`, none when unset).
    #[default]
    ServiceDefault,
    /// Directly, whatever the service's setting.
    Direct,
    /// Through this proxy.
    Via(EgressProxy),
}

impl ProxyChoice {
    /// The proxy in force, given the service's.
    pub fn effective(&self, service: Option<&EgressProxy>) -> Option<EgressProxy> {
        match self {
            Self::ServiceDefault => service.cloned(),
            Self::Direct => None,
            Self::Via(proxy) => Some(proxy.clone()),
        }
    }
}

/// A partnership's [`PartnerHttps`], validated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HttpsSettings {
    /// Our key presented as the TLS client certificate, by key id.
    pub client_certificate_key_id: Option<String>,
    /// Which server certificates are accepted.
    pub trust: ServerTrust,
    /// The egress proxy.
    pub proxy: ProxyChoice,
}

/// A field of a [`PartnerHttps`] that is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct HttpsSettingsError {
    /// The field below the `PartnerHttps`, e.g. `pinned_server_certificate_sha256[1]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl HttpsSettingsError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl HttpsSettings {
    /// Validates a partnership's settings (unset: the defaults).
    pub fn from_proto(https: Option<&PartnerHttps>) -> Result<Self, HttpsSettingsError> {
        let Some(https) = https else {
            return Ok(Self::default());
        };
        let key_id = https.client_certificate_key_id.trim();
        let client_certificate_key_id = if key_id.is_empty() {
            None
        } else if is_valid_key_id(key_id) {
            Some(key_id.to_owned())
        } else {
            return Err(HttpsSettingsError::new(
                "client_certificate_key_id",
                format!(
                    "{key_id:?} is not a key id (1 to 128 characters of [A-Za-z0-9._-], starting with a letter or digit)"
                ),
            ));
        };
        let trust = server_trust(https)?;
        let proxy = match (https.egress_proxy_url.trim(), https.bypass_egress_proxy) {
            ("", false) => ProxyChoice::ServiceDefault,
            ("", true) => ProxyChoice::Direct,
            (_, true) => {
                return Err(HttpsSettingsError::new(
                    "bypass_egress_proxy",
                    "cannot be set together with egress_proxy_url",
                ));
            }
            (url, false) => ProxyChoice::Via(
                EgressProxy::parse(url)
                    .map_err(|reason| HttpsSettingsError::new("egress_proxy_url", reason))?,
            ),
        };
        Ok(Self {
            client_certificate_key_id,
            trust,
            proxy,
        })
    }

    /// The settings as the routing service stores them (normalised); `None` for the
    /// defaults.
    pub fn to_proto(&self) -> Option<PartnerHttps> {
        if *self == Self::default() {
            return None;
        }
        let mut https = PartnerHttps {
            client_certificate_key_id: self.client_certificate_key_id.clone().unwrap_or_default(),
            ..PartnerHttps::default()
        };
        match &self.trust {
            ServerTrust::System => {}
            ServerTrust::CaBundle(pem) => https.trusted_ca_pem.clone_from(pem),
            ServerTrust::Pinned(pins) => https.pinned_server_certificate_sha256.clone_from(pins),
        }
        match &self.proxy {
            ProxyChoice::ServiceDefault => {}
            ProxyChoice::Direct => https.bypass_egress_proxy = true,
            ProxyChoice::Via(proxy) => https.egress_proxy_url = proxy.to_string(),
        }
        Some(https)
    }
}

fn server_trust(https: &PartnerHttps) -> Result<ServerTrust, HttpsSettingsError> {
    let bundle = https.trusted_ca_pem.trim();
    let pins = &https.pinned_server_certificate_sha256;
    if !bundle.is_empty() && !pins.is_empty() {
        return Err(HttpsSettingsError::new(
            "pinned_server_certificate_sha256",
            "cannot be set together with trusted_ca_pem (pin the server certificate or name its CA, not both)",
        ));
    }
    if !bundle.is_empty() {
        return ca_bundle(bundle).map(ServerTrust::CaBundle);
    }
    if pins.is_empty() {
        return Ok(ServerTrust::System);
    }
    if pins.len() > MAX_PINNED_CERTIFICATES {
        return Err(HttpsSettingsError::new(
            "pinned_server_certificate_sha256",
            format!("at most {MAX_PINNED_CERTIFICATES} certificates may be pinned"),
        ));
    }
    let mut normalised: Vec<String> = Vec::with_capacity(pins.len());
    for (index, pin) in pins.iter().enumerate() {
        let field = format!("pinned_server_certificate_sha256[{index}]");
        let hex: String = pin
            .trim()
            .chars()
            .filter(|character| *character != ':')
            .map(|character| character.to_ascii_lowercase())
            .collect();
        if hex.len() != 64 || !hex.chars().all(|character| character.is_ascii_hexdigit()) {
            return Err(HttpsSettingsError::new(
                field,
                format!("{pin:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"),
            ));
        }
        if !normalised.contains(&hex) {
            normalised.push(hex);
        }
    }
    Ok(ServerTrust::Pinned(normalised))
}

fn ca_bundle(pem: &str) -> Result<String, HttpsSettingsError> {
    let invalid = |reason: String| HttpsSettingsError::new("trusted_ca_pem", reason);
    if pem.len() > MAX_TRUSTED_CA_PEM_BYTES {
        return Err(invalid(format!(
            "larger than {MAX_TRUSTED_CA_PEM_BYTES} bytes"
        )));
    }
    let certificates = X509::stack_from_pem(pem.as_bytes())
        .map_err(|error| invalid(format!("not PEM certificates: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid("holds no \"BEGIN CERTIFICATE\" block".to_owned()));
    }
    if certificates.len() > MAX_TRUSTED_CAS {
        return Err(invalid(format!("more than {MAX_TRUSTED_CAS} certificates")));
    }
    let mut normalised = String::new();
    for certificate in &certificates {
        let encoded = certificate
            .to_pem()
            .map_err(|error| invalid(error.to_string()))?;
        normalised.push_str(&String::from_utf8_lossy(&encoded));
    }
    Ok(normalised)
}

/// The SHA-256 fingerprint of `certificate`'s DER encoding, lowercase hex.
pub fn sha256_fingerprint(certificate: &X509Ref) -> Result<String, ErrorStack> {
    let digest = certificate.digest(MessageDigest::sha256())?;
    Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The partner's server certificate was refused by our checks during the handshake;
/// no request was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ServerCertificateRefused {
    /// Which certificate and why, for the delivery's record.
    pub reason: String,
}

tokio::task_local! {
    /// Where the verify callback leaves its refusal, for the connection being made.
    static HANDSHAKE_REFUSAL: Arc<Mutex<Option<String>>>;
}

fn note_refusal(reason: String) {
    let _ = HANDSHAKE_REFUSAL.try_with(|slot| {
        let mut slot = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(reason);
    });
}

/// The TLS client configuration of connections that accept `trust` and present
/// `client_certificate` (with its chain); `extra_ca_file` adds to the system's CA
/// certificates under [`ServerTrust::System`] only.
pub fn client_tls(
    trust: &ServerTrust,
    extra_ca_file: Option<&Path>,
    client_certificate: Option<&KeyPair>,
) -> Result<SslConnectorBuilder, ErrorStack> {
    let mut tls = SslConnector::builder(SslMethod::tls_client())?;
    match trust {
        ServerTrust::System => {
            if let Some(file) = extra_ca_file {
                tls.set_ca_file(file)?;
            }
        }
        ServerTrust::CaBundle(pem) => {
            let mut store = X509StoreBuilder::new()?;
            for certificate in X509::stack_from_pem(pem.as_bytes())? {
                store.add_cert(certificate)?;
            }
            tls.set_cert_store(store.build());
        }
        ServerTrust::Pinned(_) => {}
    }
    if let Some(key) = client_certificate {
        tls.set_certificate(&key.identity.certificate)?;
        tls.set_private_key(&key.identity.key)?;
        for certificate in &key.chain {
            tls.add_extra_chain_cert(certificate.clone())?;
        }
        tls.check_private_key()?;
    }
    let trust = trust.clone();
    tls.set_verify_callback(SslVerifyMode::PEER, move |preverified, context| {
        verify_server(&trust, preverified, context)
    });
    Ok(tls)
}

/// The verify callback: OpenSSL's verdict on each certificate of the chain, or the pin.
fn verify_server(
    trust: &ServerTrust,
    preverified: bool,
    context: &mut X509StoreContextRef,
) -> bool {
    let depth = context.error_depth();
    if let ServerTrust::Pinned(pins) = trust {
        if depth != 0 {
            // The chain above the pinned certificate does not matter.
            return true;
        }
        let presented = context
            .current_cert()
            .and_then(|certificate| sha256_fingerprint(certificate).ok());
        if presented
            .as_ref()
            .is_some_and(|presented| pins.contains(presented))
        {
            return true;
        }
        note_refusal(format!(
            "the partner's TLS server certificate (SHA-256 {}) is not the one pinned for this partnership",
            presented.as_deref().unwrap_or("unknown")
        ));
        context.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
        return false;
    }
    if !preverified {
        let against = match trust {
            ServerTrust::CaBundle(_) => "the partnership's CA certificates",
            _ => "the system's CA certificates",
        };
        let subject = context
            .current_cert()
            .map(describe)
            .unwrap_or_else(|| "unknown".to_owned());
        note_refusal(format!(
            "the partner's TLS server certificate is refused, checked against {against}: {} (certificate {subject}, depth {depth})",
            context.error().error_string()
        ));
    }
    preverified
}

fn describe(certificate: &X509Ref) -> String {
    let name = |name: &openssl::x509::X509NameRef| {
        name.entries()
            .map(|entry| {
                let key = entry.object().nid().short_name().unwrap_or("?");
                let value = entry.data().to_string().unwrap_or_default();
                format!("{key}={value}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\"{}\" issued by \"{}\"",
        name(certificate.subject_name()),
        name(certificate.issuer_name())
    )
}

/// The first read or write error of one connection (a TLS alert the partner sent after
/// the handshake, a reset), which hyper keeps to its connection task: the request that
/// failed on the connection finds it through the connection's metadata
/// (`hyper_util::client::legacy::connect::capture_connection`), so its recorded reason
/// says what happened instead of "connection was not ready".
#[derive(Clone, Debug, Default)]
pub struct ConnectionFailure(Arc<Mutex<Option<String>>>);

impl ConnectionFailure {
    /// The error noted, if any.
    pub fn noted(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn note(&self, error: &std::io::Error) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(|| error.to_string());
    }
}

/// A connection that notes its first I/O error in a [`ConnectionFailure`], which its
/// metadata carries.
pub struct RecordedStream<T> {
    inner: T,
    failure: ConnectionFailure,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for RecordedStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(error)) = &polled {
            this.failure.note(error);
        }
        polled
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for RecordedStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(error)) = &polled {
            this.failure.note(error);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for RecordedStream<T> {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.failure.clone())
    }
}

/// hyper-openssl's connector around a [`CheckedConnector`], keeping the reason our
/// verify callback refused the server's certificate: a handshake that failed for it
/// ends in a [`ServerCertificateRefused`] instead of OpenSSL's generic error. Its
/// connections note their first I/O error ([`ConnectionFailure`]).
#[derive(Clone)]
pub struct VerifyingConnector {
    inner: HttpsConnector<CheckedConnector>,
}

impl VerifyingConnector {
    /// TLS with `tls` over connections of `tcp`.
    pub fn new(tcp: CheckedConnector, tls: SslConnectorBuilder) -> Result<Self, ErrorStack> {
        Ok(Self {
            inner: HttpsConnector::with_connector(tcp, tls)?,
        })
    }
}

type BoxError = Box<dyn Error + Send + Sync>;

impl tower_service::Service<http::Uri> for VerifyingConnector {
    type Response = RecordedStream<MaybeHttpsStream<TokioIo<TcpStream>>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let slot = Arc::new(Mutex::new(None));
        let refusal = slot.clone();
        let connecting = self.inner.call(uri);
        Box::pin(HANDSHAKE_REFUSAL.scope(slot, async move {
            let connected = connecting.await.map_err(|error| {
                let noted = refusal
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                match noted {
                    Some(reason) => Box::new(ServerCertificateRefused { reason }) as BoxError,
                    None => error,
                }
            })?;
            Ok(RecordedStream {
                inner: connected,
                failure: ConnectionFailure::default(),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https(edit: impl FnOnce(&mut PartnerHttps)) -> Result<HttpsSettings, HttpsSettingsError> {
        let mut https = PartnerHttps::default();
        edit(&mut https);
        HttpsSettings::from_proto(Some(&https))
    }

    #[test]
    fn settings_are_validated_and_normalised() {
        assert_eq!(
            HttpsSettings::from_proto(None).unwrap(),
            HttpsSettings::default()
        );
        assert_eq!(https(|_| {}).unwrap().to_proto(), None);

        let pin = "AB:".repeat(31) + "AB";
        let settings = https(|h| {
            h.client_certificate_key_id = "our-tls".to_owned();
            h.pinned_server_certificate_sha256 = vec![pin.clone(), "ab".repeat(32)];
            h.egress_proxy_url = "http://Proxy:3128".to_owned();
        })
        .unwrap();
        assert_eq!(
            settings.client_certificate_key_id.as_deref(),
            Some("our-tls")
        );
        assert_eq!(settings.trust, ServerTrust::Pinned(vec!["ab".repeat(32)]));
        let stored = settings.to_proto().unwrap();
        assert_eq!(stored.egress_proxy_url, "http://proxy:3128");
        assert_eq!(HttpsSettings::from_proto(Some(&stored)).unwrap(), settings);

        let ca = as2_testkit::certificates::TestCertificate::new("a ca")
            .certificate_authority()
            .generate();
        let bundle = https(|h| h.trusted_ca_pem = format!("\n{}\n", ca.cert_pem)).unwrap();
        assert_eq!(bundle.trust, ServerTrust::CaBundle(ca.cert_pem.clone()));
        let direct = https(|h| h.bypass_egress_proxy = true).unwrap();
        assert_eq!(direct.proxy, ProxyChoice::Direct);
        assert_eq!(
            direct
                .proxy
                .effective(Some(&EgressProxy::parse("http://p:1").unwrap())),
            None
        );

        for (edit, field) in [
            (
                Box::new(|h: &mut PartnerHttps| h.client_certificate_key_id = "../x".to_owned())
                    as Box<dyn FnOnce(&mut PartnerHttps)>,
                "client_certificate_key_id",
            ),
            (
                Box::new(|h: &mut PartnerHttps| {
                    h.pinned_server_certificate_sha256 = vec!["abc".to_owned()]
                }),
                "pinned_server_certificate_sha256[0]",
            ),
            (
                Box::new(|h: &mut PartnerHttps| {
                    h.pinned_server_certificate_sha256 = vec!["ab".repeat(32)];
                    h.trusted_ca_pem = "x".to_owned();
                }),
                "pinned_server_certificate_sha256",
            ),
            (
                Box::new(|h: &mut PartnerHttps| h.trusted_ca_pem = "not pem".to_owned()),
                "trusted_ca_pem",
            ),
            (
                Box::new(|h: &mut PartnerHttps| h.egress_proxy_url = "https://p:1".to_owned()),
                "egress_proxy_url",
            ),
            (
                Box::new(|h: &mut PartnerHttps| {
                    h.egress_proxy_url = "http://p:1".to_owned();
                    h.bypass_egress_proxy = true;
                }),
                "bypass_egress_proxy",
            ),
        ] {
            assert_eq!(https(edit).unwrap_err().field, field);
        }
    }
}
