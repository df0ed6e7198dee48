//! HTTPS on the AS2 endpoint, through OpenSSL: TLS 1.2 and 1.3 only, HTTP/2 or
//! HTTP/1.1 by ALPN, the certificate and key re-read when their files change (a renewed
//! certificate needs no restart).
//!
//! Every client is asked for a certificate and none is required at the TLS layer: the
//! handshake comes before the message's AS2-From says which partnership it is for. A
//! partnership with `require_tls_client_certificate` then accepts only a client
//! certificate whose SHA-256 fingerprint is one of its `CERTIFICATE_USAGE_TLS_CLIENT`
//! certificates (pinned, so a partner's self-signed certificate works as well as one of
//! a CA); anything else is answered 403 with the reason before the body is read.
//! TLS can also end at a load balancer in front of the edge, with plain HTTP behind it.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use as2_common::grpc::tls::{Reloading, TlsError, load_error};
use as2_rpc::routing::v1::{CertificateUsage, Partnership};
use clap::Args;
use openssl::hash::MessageDigest;
use openssl::ssl::{
    AlpnError, Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode, SslVersion,
};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// ALPN protocols the edge speaks, preferred first.
const ALPN: &[u8] = b"\x02h2\x08http/1.1";

/// HTTPS on the AS2 listener. Without both files the edge serves plain HTTP (TLS at the
/// load balancer).
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct As2TlsConfig {
    /// PEM certificate chain (leaf first) the AS2 endpoint serves HTTPS with.
    #[arg(long = "as2-tls-cert", env = "AS2_EDGE_TLS_CERT")]
    pub as2_tls_cert: Option<PathBuf>,

    /// PEM private key of that certificate.
    #[arg(long = "as2-tls-key", env = "AS2_EDGE_TLS_KEY")]
    pub as2_tls_key: Option<PathBuf>,
}

/// What the TLS layer learnt about a client, for the partnership's check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsClient {
    /// The message came over HTTPS to the edge itself.
    pub https: bool,
    /// SHA-256 of the client certificate (DER), lowercase hex, if it presented one.
    pub certificate_sha256: Option<String>,
}

/// The AS2 endpoint's TLS server context, reloaded when its files change.
pub struct EdgeTls {
    acceptor: Reloading<SslAcceptor>,
}

impl std::fmt::Debug for EdgeTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("EdgeTls").finish_non_exhaustive()
    }
}

impl EdgeTls {
    /// The TLS context of `config`; `None` for plain HTTP.
    pub fn from_config(config: &As2TlsConfig) -> anyhow::Result<Option<Arc<Self>>> {
        let (certificate, key) = match (&config.as2_tls_cert, &config.as2_tls_key) {
            (None, None) => return Ok(None),
            (Some(certificate), Some(key)) => (certificate.clone(), key.clone()),
            _ => anyhow::bail!(
                "HTTPS on the AS2 endpoint needs both AS2_EDGE_TLS_CERT and AS2_EDGE_TLS_KEY"
            ),
        };
        let paths = vec![certificate.clone(), key.clone()];
        let acceptor = Reloading::new("AS2 endpoint certificate", paths, move || {
            build_acceptor(&certificate, &key)
        })
        .context("cannot set up HTTPS on the AS2 endpoint")?;
        Ok(Some(Arc::new(Self { acceptor })))
    }

    /// Runs the server side of the handshake on `tcp`.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<(SslStream<TcpStream>, TlsClient)> {
        let acceptor = self.acceptor.current();
        let ssl = Ssl::new(acceptor.context()).map_err(io::Error::other)?;
        let mut stream = SslStream::new(ssl, tcp).map_err(io::Error::other)?;
        Pin::new(&mut stream)
            .accept()
            .await
            .map_err(|error| io::Error::other(error.to_string()))?;
        let certificate_sha256 = stream
            .ssl()
            .peer_certificate()
            .and_then(|certificate| certificate.digest(MessageDigest::sha256()).ok())
            .map(|digest| as2_store::keys::hex(&digest));
        Ok((
            stream,
            TlsClient {
                https: true,
                certificate_sha256,
            },
        ))
    }
}

fn build_acceptor(certificate: &PathBuf, key: &PathBuf) -> Result<SslAcceptor, TlsError> {
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    acceptor.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    acceptor
        .set_certificate_chain_file(certificate)
        .map_err(load_error("certificate", certificate))?;
    acceptor
        .set_private_key_file(key, SslFiletype::PEM)
        .map_err(load_error("key", key))?;
    acceptor
        .check_private_key()
        .map_err(load_error("key", key))?;
    // Asked for, never required, not verified against a CA: a partnership pins its
    // partner's certificate by fingerprint.
    acceptor.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
    acceptor.set_alpn_select_callback(|_, offered| {
        openssl::ssl::select_next_proto(ALPN, offered).ok_or(AlpnError::NOACK)
    });
    Ok(acceptor.build())
}

/// Whether a message from `client` may go on for `partnership`; the refusal is the
/// reason for the 403.
pub fn check_client(partnership: &Partnership, client: &TlsClient) -> Result<(), String> {
    let required = partnership
        .security_policy
        .as_ref()
        .is_some_and(|policy| policy.require_tls_client_certificate);
    if !required {
        return Ok(());
    }
    if !client.https {
        return Err(format!(
            "partnership {} requires HTTPS with the partner's TLS client certificate",
            partnership.id
        ));
    }
    let Some(presented) = &client.certificate_sha256 else {
        return Err(format!(
            "partnership {} requires a TLS client certificate; none was presented",
            partnership.id
        ));
    };
    let known = partnership.partner_certificates.iter().any(|certificate| {
        certificate.usage() == CertificateUsage::TlsClient
            && certificate
                .sha256_fingerprint
                .eq_ignore_ascii_case(presented)
    });
    if known {
        Ok(())
    } else {
        Err(format!(
            "the TLS client certificate (SHA-256 {presented}) is not one of partnership {}'s",
            partnership.id
        ))
    }
}

#[cfg(test)]
mod tests {
    use as2_rpc::routing::v1::{PartnerCertificate, SecurityPolicy};

    use super::*;

    fn partnership(required: bool) -> Partnership {
        Partnership {
            id: "acme".to_owned(),
            security_policy: Some(SecurityPolicy {
                require_tls_client_certificate: required,
                ..SecurityPolicy::default()
            }),
            partner_certificates: vec![
                PartnerCertificate {
                    sha256_fingerprint: "aa".repeat(32),
                    usage: CertificateUsage::TlsClient as i32,
                    ..PartnerCertificate::default()
                },
                PartnerCertificate {
                    sha256_fingerprint: "bb".repeat(32),
                    ..PartnerCertificate::default()
                },
            ],
            ..Partnership::default()
        }
    }

    fn client(https: bool, sha256: Option<&str>) -> TlsClient {
        TlsClient {
            https,
            certificate_sha256: sha256.map(str::to_owned),
        }
    }

    #[test]
    fn only_a_pinned_tls_client_certificate_passes_where_one_is_required() {
        let required = partnership(true);
        assert!(check_client(&required, &client(true, Some(&"aa".repeat(32)))).is_ok());
        let plain = check_client(&required, &client(false, None)).unwrap_err();
        assert!(plain.contains("requires HTTPS"), "{plain}");
        let none = check_client(&required, &client(true, None)).unwrap_err();
        assert!(none.contains("none was presented"), "{none}");
        // A signing certificate of the partnership is not a TLS client identity.
        let signing = check_client(&required, &client(true, Some(&"bb".repeat(32)))).unwrap_err();
        assert!(
            signing.contains("is not one of partnership acme's"),
            "{signing}"
        );
        assert!(check_client(&partnership(false), &client(false, None)).is_ok());
    }
}
