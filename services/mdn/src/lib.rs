//! The MDN service: durable delivery of asynchronous MDNs (RFC 4130 section 7.3).
//!
//! When a partner asks for its receipt at a Receipt-Delivery-Option URL, the edge
//! builds (and signs) the MDN and hands it over through `EnqueueMdnDelivery`. The job
//! is stored in Redis before the call returns ([`store`] has the layout); workers in
//! every replica take jobs from a shared Redis stream through one consumer group,
//! POST each MDN over http or https ([`transport`]), and retry failures with
//! exponential backoff and jitter up to a number of attempts and an age ([`retry`]),
//! after which the delivery is recorded as failed. Jobs that a dead replica held are
//! taken over by the others once they have been idle for the reclaim timeout
//! ([`worker`]). The status of every delivery is kept in Redis for a configurable time,
//! served over gRPC ([`service`]) and published as events to a Kafka topic
//! ([`tracking`]).
//!
//! With the Redis URL `memory://` the same state is kept in the process instead
//! ([`store::DeliveryStore::in_memory`]): for the single-process quick start, one
//! replica only, and everything is lost when the process exits.
//!
//! `mailto:` delivery URLs are accepted and recorded as failed at once with a clear
//! reason: the partner's message is still acknowledged, and operators see the
//! failure (`as2ctl mdn list --state failed`).
//!
//! Start it with [`run`], or [`MdnServer::bind`] then [`MdnServer::serve`] when the
//! bound ports are needed.

#![forbid(unsafe_code)]

pub mod config;
pub mod job;
pub mod metrics;
pub mod retry;
pub mod server;
pub mod service;
pub mod store;
pub mod tracking;
pub mod transport;
pub mod worker;

pub use config::MdnConfig;
pub use server::{MdnServer, run};
