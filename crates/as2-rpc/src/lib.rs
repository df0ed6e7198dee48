//! The gRPC contracts of the AS2 gateway.
//!
//! The `.proto` files live in the repository's top-level `proto/` folder; this
//! crate is the one place that compiles them. Each versioned package is a module
//! here (`as2.routing.v1` is [`routing::v1`]). `tonic` and `prost` are
//! re-exported so that services and clients use the exact versions the generated
//! code was built with.

#![forbid(unsafe_code)]

mod error;

pub use error::{ErrorKind, ServiceError, status_from_error};
pub use {prost, prost_types, tonic};

/// The partnership registry (`as2.routing.v1`).
pub mod routing {
    /// Version 1 of the routing contract.
    pub mod v1 {
        #![allow(missing_docs)]
        tonic::include_proto!("as2.routing.v1");
    }
}

/// Asynchronous MDN delivery (`as2.mdn.v1`).
pub mod mdn {
    /// Version 1 of the MDN delivery contract.
    pub mod v1 {
        #![allow(missing_docs)]
        tonic::include_proto!("as2.mdn.v1");
    }
}

/// Reconciliation of partners' MDNs for outbound messages (`as2.sender.v1`).
pub mod sender {
    /// Version 1 of the outbound sender contract.
    pub mod v1 {
        #![allow(missing_docs)]
        tonic::include_proto!("as2.sender.v1");
    }
}

pub mod authorization;

/// The encoded `FileDescriptorSet` of every proto package above (with the well-known
/// types they import), for tests that go over every RPC and for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/as2_descriptor.bin"));
