//! What both directions of partner traffic need.
//!
//! The edge (inbound), the sender (outbound), the MDN service and `as2ctl` all talk to
//! trading partners; what they share lives here rather than in one of them:
//!
//! - [`keys`]: our private keys and certificates, read from a directory of
//!   `kubernetes.io/tls` Secrets;
//! - [`transport`]: the HTTP(S) client that POSTs to partners, one per way of
//!   connecting ([`transport::PartnerClients`]);
//! - [`https`]: a partnership's HTTPS settings (our TLS client certificate, the server
//!   certificates trusted, the egress proxy) and the TLS configuration they make;
//! - [`proxy`]: the egress proxy, reached with HTTP `CONNECT` to checked addresses;
//! - [`target`]: which addresses and URLs a connection may go to (asynchronous MDN
//!   URLs come from partners' messages), and the connector that keeps to them;
//! - [`certificates`]: which of a partnership's certificates verify the partner's
//!   signatures and which one we encrypt for;
//! - [`algorithms`]: the routing service's enums (`SigningDigest`, `EncryptionCipher`,
//!   `Compression`) in `as2-protocol` terms and back;
//! - [`retry`]: exponential backoff with jitter;
//! - [`archive`]: how long a partnership's messages are archived.

#![forbid(unsafe_code)]

pub mod algorithms;
pub mod archive;
pub mod certificates;
pub mod https;
pub mod keys;
pub mod proxy;
pub mod retry;
pub mod target;
pub mod transport;
