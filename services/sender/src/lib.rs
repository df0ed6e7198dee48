//! The sender: documents from an outbound Kafka topic to partners, as AS2 messages.
//!
//! Each record names its partnership (header `as2-partnership-id`); the sender builds
//! the AS2 message the partnership's outbound settings ask for (sign, encrypt,
//! compress, MDN sync or async, signed MDN) with [`as2_protocol`], POSTs it, and records
//! the outcome in Redis before the record's offset is committed ([`consumer`]). Sends
//! are retried with backoff under the same Message-ID, which is derived from the record
//! so a restart resends what it had not finished under the same id ([`outbound`]). A
//! synchronous MDN is verified at once (signature with the partner's certificate,
//! Received-Content-MIC against the MIC of what was sent); an asynchronous one is
//! awaited: the edge hands it over through the gRPC API ([`service`]), and the sweeper
//! fails messages whose MDN does not come in time. Every outcome is published as a
//! receipt, with the partner's MDN, to a receipts topic ([`receipts`]).
//!
//! Start it with [`run`], or [`SenderServer::bind`] then [`SenderServer::serve`] when the
//! bound ports are needed.

#![forbid(unsafe_code)]

pub mod clients;
pub mod config;
pub mod consumer;
pub mod documents;
mod fault;
pub mod message;
pub mod metrics;
pub mod outbound;
pub mod receipts;
pub mod recovery;
pub mod server;
pub mod service;
pub mod store;

pub use config::SenderConfig;
pub use server::{SenderServer, run};
