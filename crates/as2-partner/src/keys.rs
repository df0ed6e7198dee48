//! Our private keys and certificates, read from files.
//!
//! Keys never go into Redis or through gRPC: a partnership names its decryption and
//! MDN-signing keys by id, and each id is a directory under the key directory holding
//! `tls.key` (the PEM private key, unencrypted) and `tls.crt` (the PEM certificate,
//! optionally followed by its chain). That is the layout of a Kubernetes `kubernetes.io/tls`
//! Secret mounted as a volume, so one Secret per key is mounted at `<keys-dir>/<key-id>`.
//!
//! Keys are loaded on first use and kept; a key added to the directory later is found
//! without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use as2_protocol::cms::Identity;
use openssl::pkey::PKey;
use openssl::x509::X509;

/// One of our keys with its certificate.
#[derive(Clone)]
pub struct KeyPair {
    /// The key id (directory name).
    pub id: String,
    /// The private key and our certificate for it.
    pub identity: Identity,
    /// Intermediate certificates that follow ours in `tls.crt`.
    pub chain: Vec<X509>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyPair")
            .field("id", &self.id)
            .field("subject", &self.identity.certificate.subject_name())
            .finish_non_exhaustive()
    }
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The id is not a plain directory name.
    #[error("invalid key id {0:?}")]
    InvalidId(String),
    /// The files are missing or unreadable.
    #[error("cannot read key {id:?} from {path}: {source}")]
    Read {
        /// The key id.
        id: String,
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The files do not hold a PEM key and certificate that belong together.
    #[error("key {id:?} is unusable: {reason}")]
    Invalid {
        /// The key id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// The keys under one directory.
pub struct KeyStore {
    directory: PathBuf,
    loaded: RwLock<HashMap<String, Arc<KeyPair>>>,
}

impl KeyStore {
    /// A store reading keys from `directory`.
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        Self {
            directory: directory.into(),
            loaded: RwLock::new(HashMap::new()),
        }
    }

    /// The key with this id, loaded from disk on first use.
    pub fn get(&self, id: &str) -> Result<Arc<KeyPair>, KeyError> {
        if let Some(key) = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
        {
            return Ok(key.clone());
        }
        let key = Arc::new(load_key_pair(&self.directory, id)?);
        self.loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), key.clone());
        Ok(key)
    }
}

/// Whether `id` is a key id: 1 to 128 characters of `[A-Za-z0-9._-]`, starting with a
/// letter or digit (a plain directory name).
pub fn is_valid_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        && id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
}

fn load_key_pair(directory: &Path, id: &str) -> Result<KeyPair, KeyError> {
    if !is_valid_key_id(id) {
        return Err(KeyError::InvalidId(id.to_owned()));
    }
    let read = |name: &str| {
        let path = directory.join(id).join(name);
        std::fs::read(&path).map_err(|source| KeyError::Read {
            id: id.to_owned(),
            path,
            source,
        })
    };
    let invalid = |reason: String| KeyError::Invalid {
        id: id.to_owned(),
        reason,
    };
    let private_key = PKey::private_key_from_pem(&read("tls.key")?)
        .map_err(|error| invalid(format!("tls.key: {error}")))?;
    let mut certificates = X509::stack_from_pem(&read("tls.crt")?)
        .map_err(|error| invalid(format!("tls.crt: {error}")))?
        .into_iter();
    let certificate = certificates
        .next()
        .ok_or_else(|| invalid("tls.crt holds no certificate".into()))?;
    let public_key = certificate
        .public_key()
        .map_err(|error| invalid(format!("tls.crt: {error}")))?;
    if !private_key.public_eq(&public_key) {
        return Err(invalid(
            "tls.key does not match the certificate in tls.crt".into(),
        ));
    }
    Ok(KeyPair {
        id: id.to_owned(),
        identity: Identity {
            key: private_key,
            certificate,
        },
        chain: certificates.collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_plain_names() {
        assert!(is_valid_key_id("acme-2026.signing_1"));
        assert!(!is_valid_key_id(""));
        assert!(!is_valid_key_id("../etc"));
        assert!(!is_valid_key_id("a/b"));
        assert!(!is_valid_key_id(".hidden"));
    }

    #[test]
    fn a_missing_key_is_a_read_error() {
        let directory = tempfile::tempdir().unwrap();
        let store = KeyStore::new(directory.path());
        assert!(matches!(store.get("nope"), Err(KeyError::Read { .. })));
        assert!(matches!(store.get("../x"), Err(KeyError::InvalidId(_))));
    }
}
