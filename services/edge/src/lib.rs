//! The edge service: the AS2 listener in front of the gateway.
//!
//! A partner POSTs an AS2 message; the edge resolves the partnership through the routing
//! service, unwraps the message (decrypt, decompress, verify), checks the partnership's
//! policy, deduplicates on (AS2-From, AS2-To, Message-ID) in Redis (or in memory, see [`dedup`]), publishes the document
//! to the partnership's Kafka topic and waits for the acknowledgement, and only then
//! answers with an MDN. The order and the answers are documented in [`inbound`]. The
//! body streams through the unwrap as it arrives; documents too large for their record
//! go to the object store and the record carries a reference ([`document`]).
//!
//! Start it with [`run`], or [`EdgeServer::bind`] then [`EdgeServer::serve`] when the
//! bound ports are needed.

#![forbid(unsafe_code)]

pub mod archive;
pub mod clients;
pub mod config;
pub mod dedup;
pub mod document;
mod fault;
pub mod http;
pub mod inbound;
pub mod kafka;
pub mod keys;
pub mod metrics;
pub mod orphans;
pub mod partner_mdn;
pub mod rate;
pub mod record;
pub mod retention;
pub mod routes;
pub mod server;
pub mod tls;

pub use config::EdgeConfig;
pub use server::{EdgeServer, run};
