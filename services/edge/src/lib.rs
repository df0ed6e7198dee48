//! The edge service: the AS2 listener in front of the gateway.
//!
//! A partner POSTs an AS2 message; the edge resolves the partnership through the routing
//! service, unwraps the message (decrypt, decompress, verify), checks the partnership's
//! policy, deduplicates on (AS2-From, AS2-To, Message-ID) in Redis, publishes the document
//! to the partnership's Kafka topic and waits for the acknowledgement, and only then
//! answers with an MDN.

#![forbid(unsafe_code)]

pub mod dedup;
pub mod kafka;
