//! Reading partner certificates from files, PEM or DER.

use std::path::{Path, PathBuf};

use openssl::x509::X509;

/// Why a certificate file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateFileError {
    /// The file cannot be read.
    #[error("cannot read certificate file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is neither a PEM nor a DER certificate.
    #[error("{path} holds no PEM or DER certificate: {reason}")]
    NotACertificate {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
}

/// One certificate read from a file, PEM encoded, with where it came from.
#[derive(Clone, Debug)]
pub struct LoadedCertificate {
    /// The certificate as PEM.
    pub pem: String,
    /// The file (and the position in it when it holds several).
    pub origin: String,
}

/// Reads every certificate in `path`. A PEM file may hold several; anything
/// else is tried as a single DER certificate and converted to PEM.
pub fn load_certificates(path: &Path) -> Result<Vec<LoadedCertificate>, CertificateFileError> {
    let bytes = std::fs::read(path).map_err(|source| CertificateFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let not_a_certificate = |reason: String| CertificateFileError::NotACertificate {
        path: path.to_owned(),
        reason,
    };
    let certificates = if bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        let certificates = X509::stack_from_pem(&bytes)
            .map_err(|error| not_a_certificate(format!("invalid PEM: {error}")))?;
        if certificates.is_empty() {
            return Err(not_a_certificate(
                "no \"BEGIN CERTIFICATE\" block".to_owned(),
            ));
        }
        certificates
    } else {
        vec![
            X509::from_der(&bytes)
                .map_err(|error| not_a_certificate(format!("invalid DER: {error}")))?,
        ]
    };
    let several = certificates.len() > 1;
    certificates
        .iter()
        .enumerate()
        .map(|(index, certificate)| {
            let pem = certificate
                .to_pem()
                .map_err(|error| not_a_certificate(error.to_string()))?;
            let origin = if several {
                format!("{} (certificate {})", path.display(), index + 1)
            } else {
                path.display().to_string()
            };
            Ok(LoadedCertificate {
                pem: String::from_utf8_lossy(&pem).into_owned(),
                origin,
            })
        })
        .collect()
}

/// Normalises a fingerprint as typed by a user: lowercase hex, no colons or
/// spaces.
pub fn normalize_fingerprint(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|character| character.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_reported_with_the_file_name() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("junk.crt");
        std::fs::write(&path, b"not a certificate").unwrap();
        let error = load_certificates(&path).unwrap_err().to_string();
        assert!(
            error.contains("junk.crt holds no PEM or DER certificate"),
            "{error}"
        );
        let missing = load_certificates(&directory.path().join("missing.pem")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read certificate file")
        );
    }

    #[test]
    fn fingerprints_are_normalised() {
        assert_eq!(normalize_fingerprint("AB:cd 01"), "abcd01");
    }
}
