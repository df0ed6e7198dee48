//! The routing service: the AS2 gateway's partnership registry.
//!
//! Partnerships are keyed by the (AS2-From, AS2-To) pair of the messages a
//! partner sends and hold everything the other services need to handle that
//! partner: the Kafka topic, the partner's certificates, our key ids, the
//! security policy, MDN preferences, interop switches and outbound settings.
//! They live in Redis, or in the process for the Redis URL `memory://` (both
//! in [`store`]), and are served over gRPC
//! (`as2.routing.v1.RoutingService`), including a stream of change events that
//! reaches watchers on every replica.
//!
//! Start it with [`run`], or [`RoutingServer::bind`] then
//! [`RoutingServer::serve`] when the bound ports are needed.

#![forbid(unsafe_code)]

pub mod certificate;
pub mod config;
pub mod events;
pub mod expiry;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod validation;

pub use config::RoutingConfig;
pub use server::{RoutingServer, run};
