//! Our private keys and certificates, read from files: [`as2_partner::keys`], which the
//! sender shares.

pub use as2_partner::keys::{KeyError, KeyPair, KeyStore};
