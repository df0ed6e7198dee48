//! Where outbound connections may go.
//!
//! A partner's message names the URL its asynchronous MDN is delivered to
//! (Receipt-Delivery-Option), so that URL comes from outside: left unchecked, any
//! message of a known pair could make the gateway POST to the cloud's metadata service,
//! a loopback admin port or an internal service (server-side request forgery). This
//! module decides which targets are allowed and connects only to them:
//!
//! - [`classify`] sorts an IP address into public and the special ranges (loopback,
//!   private, link-local, ...), looking through IPv4-mapped, 6to4 and NAT64 forms;
//! - [`numeric_host`] reads a URL host that is an address in any form a resolver would
//!   take (`127.0.0.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`, `[::1]`);
//! - [`UrlPattern`] is the syntax of a partnership's allowed URLs and
//!   [`AsyncMdnTargets`] the whole policy of a partnership (patterns, whether private
//!   targets are allowed, the quota of queued MDNs);
//! - [`CheckedConnector`] resolves a host once through a [`Resolve`], checks every
//!   address against an [`AddressPolicy`] and connects (through a [`Dial`]) only to the
//!   addresses it checked, so a name cannot resolve to something else between the check
//!   and the connection (DNS rebinding).
//!
//! Operator-configured partner URLs (the sender's) go through the same connector with
//! [`AddressPolicy::Any`]. With an egress proxy the connector still resolves and checks
//! the host itself and tunnels to the checked address ([`crate::proxy`]).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use as2_rpc::routing::v1::AsyncMdnPolicy;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::https::HttpsSettings;
use crate::proxy::EgressProxy;

/// Most URL patterns of one partnership.
pub const MAX_URL_PATTERNS: usize = 32;
/// Longest URL pattern.
pub const MAX_URL_PATTERN_CHARS: usize = 512;
/// Queued asynchronous MDNs of one partnership when its policy names no quota.
pub const DEFAULT_MAX_QUEUED: u32 = 1_000;
/// Largest quota a partnership may set.
pub const MAX_MAX_QUEUED: u32 = 1_000_000;

/// What kind of address an IP address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// A public internet address.
    Public,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// `100.64.0.0/10` (carrier-grade NAT).
    SharedAddressSpace,
    /// `169.254/16` (the cloud metadata service lives at 169.254.169.254), `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`.
    UniqueLocal,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`.
    Documentation,
    /// Other special-purpose ranges: `192.0.0/24`, `198.18/15` (benchmarking),
    /// `240/4`, deprecated site-local `fec0::/10`, discard-only `100::/64`, ...
    Reserved,
}

impl AddressClass {
    /// Whether the address is a public internet address.
    pub fn is_public(self) -> bool {
        self == Self::Public
    }

    /// What the class is called in a refusal.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Public => "a public address",
            Self::Unspecified => "an unspecified address",
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::SharedAddressSpace => "a shared (carrier-grade NAT) address",
            Self::LinkLocal => "a link-local address",
            Self::UniqueLocal => "a unique-local address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "a documentation address",
            Self::Reserved => "a reserved address",
        }
    }
}

/// The class of `ip`. IPv6 forms that embed an IPv4 address (IPv4-mapped
/// `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, 6to4 `2002:aabb:ccdd::/48`, NAT64
/// `64:ff9b::/96`) take the class of the address they embed.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => AddressClass::Unspecified,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) | (192, 168, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedAddressSpace,
        (169, 254, _) => AddressClass::LinkLocal,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (192, 0, 0) | (198, 18..=19, _) => AddressClass::Reserved,
        (224..=239, _, _) => AddressClass::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => AddressClass::Broadcast,
        (240..=255, _, _) => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    let segments = ip.segments();
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match segments {
        // IPv4-mapped and IPv4-compatible (deprecated, still routed by some stacks).
        [0, 0, 0, 0, 0, 0xffff | 0, high, low] => classify_v4(embedded(high, low)),
        // NAT64, well-known prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => classify_v4(embedded(high, low)),
        // 6to4: the IPv4 address follows the prefix.
        [0x2002, high, low, ..] => classify_v4(embedded(high, low)),
        [0x2001, 0x0db8, ..] => AddressClass::Documentation,
        [first, ..] if first & 0xfe00 == 0xfc00 => AddressClass::UniqueLocal,
        [first, ..] if first & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        [first, ..] if first & 0xffc0 == 0xfec0 => AddressClass::Reserved,
        [first, ..] if first & 0xff00 == 0xff00 => AddressClass::Multicast,
        // Discard-only, local-use NAT64, Teredo and ORCHID ranges.
        [0x0100, 0, 0, 0, ..] | [0x64, 0xff9b, 1, ..] => AddressClass::Reserved,
        [0x2001, 0, ..] | [0x2001, 0x10..=0x2f, ..] => AddressClass::Reserved,
        // Only 2000::/3 is global unicast.
        [first, ..] if first & 0xe000 != 0x2000 => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// The address a URL host names, if it is one: a bracketed IPv6 address, or an IPv4
/// address in any of the forms `inet_aton` takes (one to four parts, each decimal,
/// `0x` hexadecimal or `0` octal: `2130706433`, `0x7f000001`, `127.1`,
/// `0177.0.0.1`), so a host a resolver would read as an address is treated as one.
pub fn numeric_host(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<u64> = host
        .split('.')
        .map(numeric_part)
        .collect::<Option<Vec<u64>>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|part| *part > 255) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let value = leading
        .iter()
        .enumerate()
        .fold(*last, |value, (index, part)| {
            value | (part << (8 * (3 - index as u32)))
        });
    u32::try_from(value)
        .ok()
        .map(|value| IpAddr::V4(Ipv4Addr::from(value)))
}

fn numeric_part(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is 0 for inet_aton.
        return (radix == 16).then_some(0);
    }
    if digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Why a target is not allowed, or could not be checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct TargetRefused {
    /// What is wrong, for the delivery's record.
    pub reason: String,
}

impl TargetRefused {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Which addresses a connection may go to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AddressPolicy {
    /// Public internet addresses only (what a URL from a partner's message gets unless
    /// the partnership opts in to private targets).
    #[default]
    PublicOnly,
    /// Any address (operator-configured URLs, partnerships that allow private targets).
    Any,
}

impl AddressPolicy {
    /// Refuses `ip` unless the policy allows it.
    pub fn check(self, host: &str, ip: IpAddr) -> Result<(), TargetRefused> {
        let class = classify(ip);
        if self == Self::Any || class.is_public() {
            return Ok(());
        }
        let named = if numeric_host(host) == Some(ip) {
            format!("{ip}")
        } else {
            format!("{host} resolves to {ip}, which")
        };
        Err(TargetRefused::new(format!(
            "{named} is {} and the partnership does not allow private targets",
            class.describe()
        )))
    }
}

/// Why a URL pattern is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(String);

/// How a pattern names the host.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    /// Exactly this name or address (lowercase; IPv6 in brackets).
    Exact(String),
    /// Any name below this one (`*.example.com`: `a.example.com`, `a.b.example.com`).
    Below(String),
}

/// One allowed URL, `scheme://host[:port][/path-prefix]`: see the proto's
/// `AsyncMdnPolicy.allowed_url_patterns` for the syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlPattern {
    https: bool,
    host: HostPattern,
    port: u16,
    path_prefix: String,
}

impl UrlPattern {
    /// Parses a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let error = |reason: &str| PatternError(format!("{text:?}: {reason}"));
        if text.chars().count() > MAX_URL_PATTERN_CHARS {
            return Err(error(&format!(
                "longer than {MAX_URL_PATTERN_CHARS} characters"
            )));
        }
        let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(text, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(text, "http://") {
            (false, rest)
        } else {
            return Err(error("must start with http:// or https://"));
        };
        if rest.contains(['?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
            return Err(error(
                "must not have a query, fragment, user info or spaces",
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(authority).map_err(|reason| error(&reason))?;
        let host = host.to_ascii_lowercase();
        let host = if let Some(below) = host.strip_prefix("*.") {
            if !is_dns_name(below) || numeric_host(below).is_some() {
                return Err(error("`*.` must be followed by a DNS name"));
            }
            HostPattern::Below(below.to_owned())
        } else if numeric_host(&host).is_some() {
            // Canonical form, so `127.1` and `127.0.0.1` are one host.
            HostPattern::Exact(canonical_host(&host))
        } else if is_dns_name(&host) {
            HostPattern::Exact(host)
        } else {
            return Err(error("the host is not a DNS name or an IP address"));
        };
        Ok(Self {
            https,
            host,
            port: port.unwrap_or(if https { 443 } else { 80 }),
            path_prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// Whether `url` is one this pattern allows.
    pub fn matches(&self, url: &TargetUrl) -> bool {
        if url.https != self.https || url.port != self.port {
            return false;
        }
        let host_matches = match &self.host {
            HostPattern::Exact(host) => *host == url.host,
            HostPattern::Below(parent) => url
                .host
                .strip_suffix(parent.as_str())
                .is_some_and(|label| label.len() > 1 && label.ends_with('.')),
        };
        host_matches
            && url
                .path
                .strip_prefix(&self.path_prefix)
                .is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')
                })
    }
}

impl fmt::Display for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let host = match &self.host {
            HostPattern::Exact(host) => host.clone(),
            HostPattern::Below(parent) => format!("*.{parent}"),
        };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.path_prefix)
    }
}

/// A delivery URL taken apart for checking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    https: bool,
    /// The host, lowercase; an address in canonical form (IPv6 in brackets).
    host: String,
    port: u16,
    /// The path and query.
    path: String,
}

impl TargetUrl {
    /// Takes an `http://` or `https://` URL apart; anything else (another scheme, user
    /// info, no host) is refused.
    pub fn parse(url: &str) -> Result<Self, TargetRefused> {
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|error| TargetRefused::new(format!("not a valid URL: {error}")))?;
        let https = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(TargetRefused::new(
                    "only http:// and https:// URLs are allowed",
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| TargetRefused::new("the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(TargetRefused::new("URLs with user info are not allowed"));
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(TargetRefused::new("the URL has no host"));
        }
        let host = if numeric_host(&host).is_some() {
            canonical_host(&host)
        } else {
            host.strip_suffix('.').unwrap_or(&host).to_owned()
        };
        Ok(Self {
            https,
            host,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned()),
        })
    }

    /// The host, lowercase (an address in canonical form).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The address the host is, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        numeric_host(&self.host)
    }
}

fn canonical_host(host: &str) -> String {
    match numeric_host(host) {
        Some(IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(IpAddr::V4(ip)) => ip.to_string(),
        None => host.to_owned(),
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let rest = &authority[end + 1..];
                let port = match rest.strip_prefix(':') {
                    Some(port) => Some(port),
                    None if rest.is_empty() => None,
                    None => return Err("text after the IPv6 address".to_owned()),
                };
                (&authority[..=end], port)
            }
            None => return Err("an unclosed IPv6 address".to_owned()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    let port = match port {
        Some(port) => Some(
            port.parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| format!("the port {port:?} is not a number from 1 to 65535"))?,
        ),
        None => None,
    };
    Ok((host, port))
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

/// A partnership's policy for the targets of its asynchronous MDNs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncMdnTargets {
    /// Allowed URLs; empty: any http or https URL.
    pub patterns: Vec<UrlPattern>,
    /// Which addresses the URL's host may resolve to.
    pub addresses: AddressPolicy,
    /// Most deliveries queued or being retried at once.
    pub max_queued: u32,
    /// How the MDN service connects: our client certificate, the server certificates
    /// trusted, the egress proxy.
    pub https: HttpsSettings,
}

impl Default for AsyncMdnTargets {
    /// Any URL, public addresses only, [`DEFAULT_MAX_QUEUED`], the default HTTPS
    /// settings.
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            addresses: AddressPolicy::PublicOnly,
            max_queued: DEFAULT_MAX_QUEUED,
            https: HttpsSettings::default(),
        }
    }
}

/// A field of an [`AsyncMdnPolicy`] that is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PolicyError {
    /// The field path below `async_mdn`, e.g. `allowed_url_patterns[1]` or
    /// `https.egress_proxy_url`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl AsyncMdnTargets {
    /// The policy of a partnership's `async_mdn` settings (unset: the defaults).
    pub fn from_proto(policy: Option<&AsyncMdnPolicy>) -> Result<Self, PolicyError> {
        let Some(policy) = policy else {
            return Ok(Self::default());
        };
        if policy.allowed_url_patterns.len() > MAX_URL_PATTERNS {
            return Err(PolicyError {
                field: "allowed_url_patterns".to_owned(),
                reason: format!("more than {MAX_URL_PATTERNS} patterns"),
            });
        }
        let patterns = policy
            .allowed_url_patterns
            .iter()
            .enumerate()
            .map(|(index, text)| {
                UrlPattern::parse(text).map_err(|error| PolicyError {
                    field: format!("allowed_url_patterns[{index}]"),
                    reason: error.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_queued = match policy.max_queued {
            None => DEFAULT_MAX_QUEUED,
            Some(limit @ 1..=MAX_MAX_QUEUED) => limit,
            Some(other) => {
                return Err(PolicyError {
                    field: "max_queued".to_owned(),
                    reason: format!("{other} is not from 1 to {MAX_MAX_QUEUED}"),
                });
            }
        };
        let https =
            HttpsSettings::from_proto(policy.https.as_ref()).map_err(|error| PolicyError {
                field: format!("https.{}", error.field),
                reason: error.reason,
            })?;
        Ok(Self {
            patterns,
            https,
            addresses: if policy.allow_private_targets {
                AddressPolicy::Any
            } else {
                AddressPolicy::PublicOnly
            },
            max_queued,
        })
    }

    /// Checks what can be checked of `url` without resolving its host: the scheme, the
    /// patterns, and the address when the host is one.
    pub fn check_url(&self, url: &str) -> Result<TargetUrl, TargetRefused> {
        let target = TargetUrl::parse(url)?;
        if !self.patterns.is_empty() && !self.patterns.iter().any(|p| p.matches(&target)) {
            return Err(TargetRefused::new(
                "the URL matches none of the partnership's allowed asynchronous MDN URL patterns",
            ));
        }
        if let Some(ip) = target.ip() {
            self.addresses.check(&target.host, ip)?;
        }
        Ok(target)
    }
}

/// Resolves host names to socket addresses.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host` (a DNS name, never an address) with `port`.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (`getaddrinfo` on the blocking pool, through tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Opens TCP connections.
pub trait Dial: Send + Sync + 'static {
    /// A connection to `addr`.
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>>;
}

/// Plain TCP connects (with `TCP_NODELAY`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpDialer;

impl Dial for TcpDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    }
}

/// How connections are made: the resolver and the dialer (the system's by default;
/// tests give their own so that nothing leaves the machine).
#[derive(Clone)]
pub struct Network {
    /// Resolves host names.
    pub resolver: Arc<dyn Resolve>,
    /// Opens connections.
    pub dialer: Arc<dyn Dial>,
}

impl Default for Network {
    /// The system's resolver and plain TCP.
    fn default() -> Self {
        Self {
            resolver: Arc::new(SystemResolver),
            dialer: Arc::new(TcpDialer),
        }
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network").finish_non_exhaustive()
    }
}

/// Why the connector made no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target is not allowed; no connection was attempted.
    #[error(transparent)]
    Refused(#[from] TargetRefused),
    /// The host could not be resolved.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// Every address refused the connection or timed out.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The host and port.
        target: String,
        /// The last address's failure.
        reason: String,
    },
}

/// The TCP half of the HTTP client: resolves the host once, checks every address
/// against its [`AddressPolicy`] (one address that is not allowed refuses the target)
/// and connects to the checked addresses in order, each within the connect timeout:
/// directly, or through a tunnel of its [`EgressProxy`] to that address (the proxy
/// resolves nothing; see [`crate::proxy`]).
#[derive(Clone)]
pub struct CheckedConnector {
    policy: AddressPolicy,
    network: Network,
    connect_timeout: Duration,
    proxy: Option<EgressProxy>,
}

impl CheckedConnector {
    /// A connector that allows `policy`'s addresses and connects directly.
    pub fn new(policy: AddressPolicy, network: Network, connect_timeout: Duration) -> Self {
        Self {
            policy,
            network,
            connect_timeout,
            proxy: None,
        }
    }

    /// The same connector, tunnelling through `proxy` when one is given.
    pub fn with_proxy(mut self, proxy: Option<EgressProxy>) -> Self {
        self.proxy = proxy;
        self
    }

    /// The checked addresses of `uri`'s host.
    async fn addresses(
        policy: AddressPolicy,
        resolver: Arc<dyn Resolve>,
        uri: &http::Uri,
    ) -> Result<Vec<SocketAddr>, ConnectError> {
        let host = uri
            .host()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| TargetRefused::new("the URL has no host"))?;
        let default_port = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let port = uri.port_u16().unwrap_or(default_port);
        let addresses = match numeric_host(host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => {
                let name = host.strip_suffix('.').unwrap_or(host);
                resolver
                    .resolve(name, port)
                    .await
                    .map_err(|source| ConnectError::Resolve {
                        host: host.to_owned(),
                        source,
                    })?
            }
        };
        if addresses.is_empty() {
            return Err(ConnectError::Resolve {
                host: host.to_owned(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            });
        }
        for address in &addresses {
            policy.check(host, address.ip())?;
        }
        Ok(addresses)
    }
}

impl tower_service::Service<http::Uri> for CheckedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let policy = self.policy;
        let network = self.network.clone();
        let timeout = self.connect_timeout;
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let addresses = Self::addresses(policy, network.resolver.clone(), &uri).await?;
            let mut reason = String::new();
            for address in addresses {
                if let Some(proxy) = &proxy {
                    match proxy.open_tunnel(address, &network, timeout).await {
                        Ok(stream) => return Ok(TokioIo::new(stream)),
                        Err(error) => reason = error,
                    }
                    continue;
                }
                match tokio::time::timeout(timeout, network.dialer.dial(address)).await {
                    Ok(Ok(stream)) => return Ok(TokioIo::new(stream)),
                    Ok(Err(error)) => reason = format!("{address}: {error}"),
                    Err(_) => reason = format!("{address}: no connection within {timeout:?}"),
                }
            }
            Err(ConnectError::Connect {
                target: uri.authority().map(ToString::to_string).unwrap_or_default(),
                reason,
            })
        })
    }
}

/// The refusal somewhere in `error`'s source chain, if the error is one.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a TargetRefused> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refused) = error.downcast_ref::<TargetRefused>() {
            return Some(refused);
        }
        if let Some(ConnectError::Refused(refused)) = error.downcast_ref::<ConnectError>() {
            return Some(refused);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> AddressClass {
        classify(text.parse().unwrap())
    }

    #[test]
    fn special_ipv4_ranges_are_not_public() {
        for (address, expected) in [
            ("0.0.0.0", AddressClass::Unspecified),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.255.254", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::SharedAddressSpace),
            ("100.127.255.255", AddressClass::SharedAddressSpace),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("192.0.2.1", AddressClass::Documentation),
            ("198.51.100.7", AddressClass::Documentation),
            ("203.0.113.9", AddressClass::Documentation),
            ("198.18.0.1", AddressClass::Reserved),
            ("192.0.0.8", AddressClass::Reserved),
            ("224.0.0.1", AddressClass::Multicast),
            ("239.255.255.250", AddressClass::Multicast),
            ("240.0.0.1", AddressClass::Reserved),
            ("255.255.255.255", AddressClass::Broadcast),
        ] {
            assert_eq!(class(address), expected, "{address}");
        }
        for address in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "1.1.1.1",
            "172.15.255.255",
        ] {
            assert_eq!(class(address), AddressClass::Public, "{address}");
        }
    }

    #[test]
    fn special_ipv6_ranges_and_embedded_ipv4_are_not_public() {
        for (address, expected) in [
            ("::", AddressClass::Unspecified),
            ("::1", AddressClass::Loopback),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:7f00:1", AddressClass::Loopback),
            ("::ffff:169.254.169.254", AddressClass::LinkLocal),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("::127.0.0.1", AddressClass::Loopback),
            ("64:ff9b::a9fe:a9fe", AddressClass::LinkLocal),
            ("64:ff9b::7f00:1", AddressClass::Loopback),
            ("2002:7f00:1::1", AddressClass::Loopback),
            ("2002:c0a8:101::1", AddressClass::Private),
            ("fc00::1", AddressClass::UniqueLocal),
            ("fd12:3456::1", AddressClass::UniqueLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("fec0::1", AddressClass::Reserved),
            ("ff02::1", AddressClass::Multicast),
            ("2001:db8::1", AddressClass::Documentation),
            ("100::1", AddressClass::Reserved),
            ("2001::1", AddressClass::Reserved),
            ("4000::1", AddressClass::Reserved),
        ] {
            assert_eq!(class(address), expected, "{address}");
        }
        for address in [
            "2606:4700:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(class(address), AddressClass::Public, "{address}");
        }
    }

    #[test]
    fn numeric_hosts_in_every_form_are_addresses() {
        let loopback = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for host in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0X7F000001",
            "017700000001",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "127.1",
            "127.0.1",
            "127.0.0.1.",
        ] {
            assert_eq!(numeric_host(host), loopback, "{host}");
        }
        assert_eq!(
            numeric_host("0xa9.0xfe.0xa9.0xfe"),
            Some("169.254.169.254".parse().unwrap())
        );
        assert_eq!(numeric_host("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(
            numeric_host("[::ffff:127.0.0.1]"),
            Some("::ffff:127.0.0.1".parse().unwrap())
        );
        for host in [
            "example.com",
            "1.2.3.4.5",
            "256.1.1.1",
            "4294967296",
            "08",
            "1e3",
            "",
            "127.0.0.1x",
        ] {
            assert_eq!(numeric_host(host), None, "{host}");
        }
    }

    fn policy(patterns: &[&str], private: bool) -> AsyncMdnTargets {
        AsyncMdnTargets::from_proto(Some(&AsyncMdnPolicy {
            allowed_url_patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            allow_private_targets: private,
            max_queued: None,
            https: None,
        }))
        .unwrap()
    }

    #[test]
    fn literal_addresses_are_checked_without_resolving() {
        let public_only = AsyncMdnTargets::default();
        for url in [
            "http://127.0.0.1:8080/mdn",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.5/mdn",
            "http://[::1]:8080/mdn",
            "http://[::ffff:127.0.0.1]/mdn",
            "http://2130706433/mdn",
            "http://0x7f.1/mdn",
            "https://0177.0.0.1/mdn",
            "http://0.0.0.0/",
            "http://[fd00::1]/",
        ] {
            let refused = public_only.check_url(url).unwrap_err();
            assert!(
                refused.reason.contains("does not allow private targets"),
                "{url}: {refused}"
            );
        }
        public_only
            .check_url("https://partner.example/mdn")
            .unwrap();
        public_only.check_url("http://8.8.8.8/mdn").unwrap();
        policy(&[], true)
            .check_url("http://127.0.0.1:8080/mdn")
            .unwrap();
        for url in [
            "ftp://partner.example/",
            "http://user@partner.example/",
            "mailto:a@b",
        ] {
            assert!(public_only.check_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn patterns_allow_their_scheme_host_port_and_path_prefix() {
        let targets = policy(
            &[
                "https://as2.partner.example/mdn",
                "http://*.partner.example:8080",
                "http://127.0.0.1:4080/as2/",
            ],
            true,
        );
        for url in [
            "https://as2.partner.example/mdn",
            "https://AS2.partner.example:443/mdn/receipts?x=1",
            "http://a.partner.example:8080/anything",
            "http://a.b.partner.example:8080/",
            "http://127.0.0.1:4080/as2",
            "http://127.1:4080/as2/mdn",
        ] {
            targets
                .check_url(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for url in [
            "http://as2.partner.example/mdn",
            "https://as2.partner.example:8443/mdn",
            "https://as2.partner.example/mdnx",
            "https://as2.partner.example/",
            "https://evil.example/mdn",
            "https://as2.partner.example.evil.example/mdn",
            "http://partner.example:8080/",
            "http://apartner.example:8080/",
            "http://a.partner.example/",
            "http://127.0.0.1:4081/as2",
        ] {
            let refused = targets.check_url(url).unwrap_err();
            assert!(refused.reason.contains("patterns"), "{url}: {refused}");
        }
    }

    #[test]
    fn invalid_patterns_and_quotas_are_refused() {
        for pattern in [
            "partner.example",
            "ftp://partner.example",
            "https://",
            "https://user@partner.example/",
            "https://partner.example/?q",
            "https://*.127.0.0.1/",
            "https://*/",
            "https://bad host/",
            "https://partner.example:0/",
            "https://partner.example:99999/",
            "https://[::1/",
        ] {
            let error = AsyncMdnTargets::from_proto(Some(&AsyncMdnPolicy {
                allowed_url_patterns: vec![pattern.to_owned()],
                ..AsyncMdnPolicy::default()
            }))
            .unwrap_err();
            assert_eq!(error.field, "allowed_url_patterns[0]", "{pattern}");
        }
        let error = AsyncMdnTargets::from_proto(Some(&AsyncMdnPolicy {
            max_queued: Some(0),
            ..AsyncMdnPolicy::default()
        }))
        .unwrap_err();
        assert_eq!(error.field, "max_queued");
        assert_eq!(
            AsyncMdnTargets::from_proto(None).unwrap(),
            AsyncMdnTargets::default()
        );
        assert_eq!(
            UrlPattern::parse("HTTPS://*.Partner.Example/Mdn/")
                .unwrap()
                .to_string(),
            "https://*.partner.example:443/Mdn"
        );
    }

    /// A resolver that knows one name and records every lookup.
    struct OneName(std::sync::Mutex<Vec<String>>, IpAddr);

    impl Resolve for OneName {
        fn resolve(
            &self,
            host: &str,
            port: u16,
        ) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
            self.0.lock().unwrap().push(host.to_owned());
            let found = (host == "partner.test").then(|| vec![SocketAddr::new(self.1, port)]);
            Box::pin(async move { found.ok_or_else(|| io::Error::other("unknown name")) })
        }
    }

    /// A dialer that records every attempt and connects to nothing.
    struct Recorder(std::sync::Mutex<Vec<SocketAddr>>);

    impl Dial for Recorder {
        fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> {
            self.0.lock().unwrap().push(addr);
            Box::pin(async { Err(io::Error::other("the test dialer connects nowhere")) })
        }
    }

    async fn connect(
        policy: AddressPolicy,
        resolves_to: &str,
        url: &str,
    ) -> (Result<(), ConnectError>, Vec<String>, Vec<SocketAddr>) {
        use tower_service::Service as _;
        let resolver = Arc::new(OneName(Default::default(), resolves_to.parse().unwrap()));
        let dialer = Arc::new(Recorder(Default::default()));
        let network = Network {
            resolver: resolver.clone(),
            dialer: dialer.clone(),
        };
        let mut connector = CheckedConnector::new(policy, network, Duration::from_secs(1));
        let outcome = connector.call(url.parse().unwrap()).await.map(|_| ());
        let lookups = resolver.0.lock().unwrap().clone();
        let dials = dialer.0.lock().unwrap().clone();
        (outcome, lookups, dials)
    }

    #[tokio::test]
    async fn the_connector_dials_only_checked_addresses_and_resolves_once() {
        let (outcome, lookups, dials) = connect(
            AddressPolicy::PublicOnly,
            "127.0.0.1",
            "http://partner.test:81/",
        )
        .await;
        let refused = refusal_in(&outcome.unwrap_err()).cloned().unwrap();
        assert!(
            refused
                .reason
                .contains("partner.test resolves to 127.0.0.1"),
            "{refused}"
        );
        assert_eq!(lookups, ["partner.test"]);
        assert!(dials.is_empty());

        let (outcome, lookups, dials) = connect(
            AddressPolicy::PublicOnly,
            "8.8.8.8",
            "http://partner.test:81/",
        )
        .await;
        assert!(matches!(outcome, Err(ConnectError::Connect { .. })));
        assert_eq!(lookups.len(), 1);
        assert_eq!(dials, ["8.8.8.8:81".parse::<SocketAddr>().unwrap()]);

        for url in [
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "https://169.254.169.254/",
        ] {
            let (outcome, lookups, dials) =
                connect(AddressPolicy::PublicOnly, "8.8.8.8", url).await;
            assert!(refusal_in(&outcome.unwrap_err()).is_some(), "{url}");
            assert!(lookups.is_empty() && dials.is_empty(), "{url}");
        }

        let (outcome, _, dials) =
            connect(AddressPolicy::Any, "127.0.0.1", "https://partner.test/").await;
        assert!(matches!(outcome, Err(ConnectError::Connect { .. })));
        assert_eq!(dials, ["127.0.0.1:443".parse::<SocketAddr>().unwrap()]);
    }
}
