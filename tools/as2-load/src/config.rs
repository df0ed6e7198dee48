//! Command-line configuration of the load generator: each flag also an `AS2_LOAD_*`
//! environment variable.

use std::path::PathBuf;
use std::time::Duration;

use as2_protocol::MicAlgorithm;
use as2_protocol::cms::ContentCipher;
use clap::{Parser, ValueEnum};

/// Sends pre-built AS2 messages to an AS2 endpoint concurrently and reports throughput
/// and latency. Building the messages (signing, encrypting) happens before the clock
/// starts; only sending and checking the answers is measured.
#[derive(Parser, Clone, Debug)]
#[command(name = "as2-load", version)]
pub struct LoadConfig {
    /// The AS2 endpoint (`http://host:port/path`; plain HTTP/1.1 with keep-alive).
    #[arg(
        long,
        env = "AS2_LOAD_URL",
        default_value = "http://127.0.0.1:8080/as2"
    )]
    pub url: String,

    /// AS2-From: the sending partner's AS2 id.
    #[arg(long, env = "AS2_LOAD_FROM")]
    pub from: String,

    /// AS2-To: the gateway's AS2 id.
    #[arg(long, env = "AS2_LOAD_TO")]
    pub to: String,

    /// The sending partner's private key (PEM), used to sign.
    #[arg(long = "key", env = "AS2_LOAD_KEY", value_name = "FILE")]
    pub partner_key: PathBuf,

    /// The sending partner's certificate (PEM), put into the signatures.
    #[arg(long = "cert", env = "AS2_LOAD_CERT", value_name = "FILE")]
    pub partner_cert: PathBuf,

    /// The gateway's certificate (PEM): messages are encrypted to it, and with
    /// `--verify-mdn` the MDN signatures are checked against it.
    #[arg(
        long = "gateway-cert",
        env = "AS2_LOAD_GATEWAY_CERT",
        value_name = "FILE"
    )]
    pub gateway_cert: PathBuf,

    /// Payload size: a number of bytes with an optional binary suffix (`1KiB`, `1MiB`;
    /// `K`, `KB`, `M` and `MB` mean the same binary units).
    #[arg(long, env = "AS2_LOAD_SIZE", default_value = "1KiB", value_parser = parse_size)]
    pub size: usize,

    /// Messages to send in the measured run.
    #[arg(long, env = "AS2_LOAD_COUNT", default_value_t = 1000)]
    pub count: usize,

    /// Messages sent before the measured run (connections, caches, allocators warm up);
    /// not counted.
    #[arg(long, env = "AS2_LOAD_WARMUP", default_value_t = 64)]
    pub warmup: usize,

    /// Requests in flight at once, each on its own keep-alive connection.
    #[arg(long, env = "AS2_LOAD_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,

    /// Signature digest; `none` sends unsigned messages.
    #[arg(long, env = "AS2_LOAD_DIGEST", value_enum, default_value_t = DigestArg::Sha256)]
    pub digest: DigestArg,

    /// Content encryption; `none` sends unencrypted messages.
    #[arg(long, env = "AS2_LOAD_CIPHER", value_enum, default_value_t = CipherArg::Aes256Cbc)]
    pub cipher: CipherArg,

    /// The MDN to ask for (always synchronous).
    #[arg(long, env = "AS2_LOAD_MDN", value_enum, default_value_t = MdnArg::Signed)]
    pub mdn: MdnArg,

    /// Parse every MDN fully, verify its signature against `--gateway-cert` and compare
    /// its Received-content-MIC with the one computed when building. Costs client CPU;
    /// without it only the status, the Content-Type and the Disposition line are checked.
    #[arg(long, env = "AS2_LOAD_VERIFY_MDN")]
    pub verify_mdn: bool,

    /// Content-Type of the payload.
    #[arg(
        long,
        env = "AS2_LOAD_CONTENT_TYPE",
        default_value = "application/edi-x12"
    )]
    pub content_type: String,

    /// Domain part of the generated Message-IDs.
    #[arg(
        long,
        env = "AS2_LOAD_MESSAGE_ID_DOMAIN",
        default_value = "as2-load.local"
    )]
    pub message_id_domain: String,

    /// Threads that build the messages before the run (default: all cores).
    #[arg(long, env = "AS2_LOAD_BUILD_THREADS")]
    pub build_threads: Option<usize>,

    /// Threads that send (1: a single-threaded runtime, which keeps the client's share
    /// of the CPU small).
    #[arg(long, env = "AS2_LOAD_CLIENT_THREADS", default_value_t = 1)]
    pub client_threads: usize,

    /// Seconds one request may take before it counts as a timeout.
    #[arg(long, env = "AS2_LOAD_TIMEOUT_SECS", default_value_t = 60)]
    pub timeout_secs: u64,

    /// Print the report as JSON instead of text.
    #[arg(long, env = "AS2_LOAD_JSON")]
    pub json: bool,

    /// Also write the JSON report to this file (the text report still goes to stdout).
    #[arg(long, env = "AS2_LOAD_JSON_FILE", value_name = "FILE")]
    pub json_file: Option<PathBuf>,
}

impl LoadConfig {
    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// A signature digest on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestArg {
    /// Do not sign.
    None,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl DigestArg {
    /// The protocol crate's algorithm, `None` for unsigned.
    pub fn algorithm(self) -> Option<MicAlgorithm> {
        match self {
            Self::None => None,
            Self::Sha1 => Some(MicAlgorithm::Sha1),
            Self::Sha256 => Some(MicAlgorithm::Sha256),
            Self::Sha384 => Some(MicAlgorithm::Sha384),
            Self::Sha512 => Some(MicAlgorithm::Sha512),
        }
    }
}

/// A content cipher on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CipherArg {
    /// Do not encrypt.
    None,
    /// DES-EDE3-CBC.
    #[value(name = "3des")]
    TripleDes,
    /// AES-128-CBC.
    Aes128Cbc,
    /// AES-192-CBC.
    Aes192Cbc,
    /// AES-256-CBC.
    Aes256Cbc,
    /// AES-128-GCM (AuthEnvelopedData).
    Aes128Gcm,
    /// AES-256-GCM (AuthEnvelopedData).
    Aes256Gcm,
}

impl CipherArg {
    /// The protocol crate's cipher, `None` for unencrypted.
    pub fn cipher(self) -> Option<ContentCipher> {
        match self {
            Self::None => None,
            Self::TripleDes => Some(ContentCipher::TripleDesCbc),
            Self::Aes128Cbc => Some(ContentCipher::Aes128Cbc),
            Self::Aes192Cbc => Some(ContentCipher::Aes192Cbc),
            Self::Aes256Cbc => Some(ContentCipher::Aes256Cbc),
            Self::Aes128Gcm => Some(ContentCipher::Aes128Gcm),
            Self::Aes256Gcm => Some(ContentCipher::Aes256Gcm),
        }
    }
}

/// The MDN to request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MdnArg {
    /// No MDN (no Disposition-Notification-To).
    None,
    /// An unsigned synchronous MDN.
    Unsigned,
    /// A signed synchronous MDN (micalg of the signature digest, else SHA-256).
    Signed,
}

/// Parses `1024`, `1KiB`, `4 MiB`, `1K`, `1MB` (binary units throughout).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: usize = number
        .parse()
        .map_err(|_| format!("expected a size such as 1KiB or 1MiB, got {text:?}"))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} (use B, KiB or MiB)")),
    };
    number
        .checked_mul(multiplier)
        .filter(|size| *size > 0)
        .ok_or_else(|| format!("size {text:?} must be positive and fit in memory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("2 MB"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_size("1mib"), Ok(1024 * 1024));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1GB").is_err());
        assert!(parse_size("KiB").is_err());
    }

    #[test]
    fn the_defaults_are_the_benchmark_case() {
        let config = LoadConfig::try_parse_from([
            "as2-load",
            "--from",
            "partner",
            "--to",
            "gateway",
            "--key",
            "k.pem",
            "--cert",
            "c.pem",
            "--gateway-cert",
            "g.pem",
        ])
        .unwrap();
        assert_eq!(config.concurrency, 16);
        assert_eq!(config.digest, DigestArg::Sha256);
        assert_eq!(config.cipher, CipherArg::Aes256Cbc);
        assert_eq!(config.mdn, MdnArg::Signed);
        assert_eq!(config.size, 1024);
    }
}
