//! The egress proxy: connections to partners tunnelled through an HTTP proxy with
//! `CONNECT`.
//!
//! The [`CheckedConnector`](crate::target::CheckedConnector) resolves and checks the
//! partner's host itself, as it does without a proxy, and asks the proxy for a tunnel to
//! the *address* it checked (`CONNECT 203.0.113.7:443`), never to the name. The proxy
//! resolves nothing, so a name cannot resolve to something else between our check and
//! the proxy's connection (DNS rebinding), and the proxy cannot be made to reach an
//! address the partnership's policy refuses: a refused target gets no connection at
//! all, not even to the proxy. TLS to the partner runs inside the tunnel, with the URL's
//! host name as SNI and for the certificate checks. Plain `http://` URLs are tunnelled
//! the same way (an absolute-form request would have the proxy resolve the name).
//!
//! The proxy itself is configured by operators (`AS2_EGRESS_PROXY_URL`, or a
//! partnership's `egress_proxy_url`), so its own address is not restricted.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::target::{Network, numeric_host};

/// Longest answer head a proxy may send to `CONNECT`.
const MAX_ANSWER_HEAD_BYTES: usize = 16 * 1024;

/// An HTTP proxy reached with `CONNECT`: `http://host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EgressProxy {
    /// The host, lowercase (an IPv6 address in brackets).
    host: String,
    port: u16,
}

impl EgressProxy {
    /// Parses `http://host:port` (a trailing `/` is allowed). The port must be given;
    /// user info, a path, a query and other schemes are refused (credentials do not go
    /// into configuration that is stored or logged; TLS to the proxy is not supported).
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let uri: http::Uri = url
            .parse()
            .map_err(|error| format!("{url:?} is not a valid URL: {error}"))?;
        if !uri
            .scheme_str()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http"))
        {
            return Err(format!(
                "{url:?}: the egress proxy URL must start with http:// (a proxy reached over TLS is not supported)"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{url:?}: user info is not supported in the egress proxy URL"
            ));
        }
        if uri
            .path_and_query()
            .is_some_and(|path| !matches!(path.as_str(), "" | "/"))
        {
            return Err(format!(
                "{url:?}: the egress proxy URL must not have a path or query"
            ));
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let port = authority
            .port_u16()
            .filter(|port| *port > 0)
            .ok_or_else(|| format!("{url:?}: the egress proxy URL must name its port"))?;
        Ok(Self { host, port })
    }

    /// Opens a tunnel through the proxy to `target` within `timeout`: connects to the
    /// proxy (trying each of its addresses), sends `CONNECT target`, and returns the
    /// connection once the proxy answered 2xx. Nothing of the answer beyond its head is
    /// read, so the stream is the tunnel.
    pub(crate) async fn open_tunnel(
        &self,
        target: SocketAddr,
        network: &Network,
        timeout: Duration,
    ) -> Result<TcpStream, String> {
        let opened = async {
            let mut last = String::new();
            for proxy in self.addresses(network).await? {
                let mut stream = match network.dialer.dial(proxy).await {
                    Ok(stream) => stream,
                    Err(error) => {
                        last =
                            format!("cannot connect to the egress proxy {self} ({proxy}): {error}");
                        continue;
                    }
                };
                return match self.connect(&mut stream, target).await {
                    Ok(()) => Ok(stream),
                    Err(reason) => Err(format!("egress proxy {self}: {reason}")),
                };
            }
            Err(last)
        };
        tokio::time::timeout(timeout, opened)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "egress proxy {self}: no tunnel to {target} within {timeout:?}"
                ))
            })
    }

    async fn addresses(&self, network: &Network) -> Result<Vec<SocketAddr>, String> {
        if let Some(ip) = numeric_host(&self.host) {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addresses = network
            .resolver
            .resolve(&self.host, self.port)
            .await
            .map_err(|error| format!("cannot resolve the egress proxy {self}: {error}"))?;
        if addresses.is_empty() {
            return Err(format!("the egress proxy {self} resolves to no address"));
        }
        Ok(addresses)
    }

    /// Asks for the tunnel on `stream` and reads the answer's head.
    async fn connect(&self, stream: &mut TcpStream, target: SocketAddr) -> Result<(), String> {
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("sending CONNECT {target}: {error}"))?;
        // Byte by byte: whatever follows the head belongs to the tunnel.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_ANSWER_HEAD_BYTES {
                return Err(format!(
                    "the answer to CONNECT {target} has a head over {MAX_ANSWER_HEAD_BYTES} bytes"
                ));
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(|error| format!("reading the answer to CONNECT {target}: {error}"))?;
            head.push(byte);
        }
        let status_line = String::from_utf8_lossy(&head);
        let status_line = status_line.lines().next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok());
        match status {
            Some(200..=299) => Ok(()),
            Some(_) => Err(format!(
                "answered {:?} to CONNECT {target}",
                crate::transport::bounded(status_line.trim().to_owned())
            )),
            None => Err(format!(
                "the answer to CONNECT {target} is not HTTP: {:?}",
                crate::transport::bounded(status_line.to_owned())
            )),
        }
    }
}

impl fmt::Display for EgressProxy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "http://{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_are_http_with_a_port_and_nothing_else() {
        let proxy = EgressProxy::parse("http://Proxy.Internal:3128/").unwrap();
        assert_eq!(proxy.to_string(), "http://proxy.internal:3128");
        assert_eq!(
            EgressProxy::parse("http://[::1]:8080").unwrap().to_string(),
            "http://[::1]:8080"
        );
        for (url, expected) in [
            ("https://proxy:3128", "must start with http://"),
            ("socks5://proxy:1080", "must start with http://"),
            ("http://proxy", "must name its port"),
            ("http://user:secret@proxy:3128", "user info"),
            ("http://proxy:3128/path", "path or query"),
            ("proxy:3128", "must start with http://"),
            ("http://", "not a valid URL"),
        ] {
            let error = EgressProxy::parse(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }
}
