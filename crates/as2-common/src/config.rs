//! Configuration blocks shared by the services.
//!
//! Each block is a `clap::Args` struct that a service pulls into its own parser
//! with `#[command(flatten)]`. Every flag can also be given as an environment
//! variable with the `AS2_` prefix (named next to each field). Parsing only
//! reads the command line and the environment: it binds no port and opens no
//! connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Where a service serves gRPC.
#[derive(Args, Clone, Debug)]
pub struct GrpcServerConfig {
    /// Address the gRPC server listens on.
    #[arg(
        long = "grpc-listen",
        env = "AS2_GRPC_LISTEN",
        default_value = "0.0.0.0:50051"
    )]
    pub grpc_listen: SocketAddr,

    /// Transport security of the gRPC server (and of the calls the service makes).
    #[command(flatten)]
    pub tls: GrpcTlsConfig,
}

impl GrpcServerConfig {
    /// A listener on `grpc_listen` in plain text, for tests and embedding where the
    /// caller chooses the security itself.
    pub fn insecure_plaintext(grpc_listen: SocketAddr) -> Self {
        Self {
            grpc_listen,
            tls: GrpcTlsConfig::insecure_plaintext(),
        }
    }
}

/// The credential a service secures its gRPC hops with: mutual TLS, both serving and
/// calling (see `as2_common::grpc::tls`). Without it a service refuses to start, unless
/// the development flag turns TLS and authentication off.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcTlsConfig {
    /// PEM certificate chain (leaf first) the service presents to its gRPC peers. Its
    /// subject common name is the service's role (`edge`, `sender`, `operator:NAME`...).
    #[arg(long = "grpc-tls-cert", env = "AS2_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// PEM private key of that certificate.
    #[arg(long = "grpc-tls-key", env = "AS2_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<PathBuf>,

    /// PEM CA bundle that the peers' certificates must chain to.
    #[arg(long = "grpc-tls-ca", env = "AS2_GRPC_TLS_CA")]
    pub grpc_tls_ca: Option<PathBuf>,

    /// Development only: gRPC in plain text, and every caller allowed everything.
    #[arg(
        long = "grpc-insecure-plaintext",
        env = "AS2_GRPC_INSECURE_PLAINTEXT",
        default_value_t = false
    )]
    pub grpc_insecure_plaintext: bool,
}

impl GrpcTlsConfig {
    /// The development flag set, no files.
    pub fn insecure_plaintext() -> Self {
        Self {
            grpc_insecure_plaintext: true,
            ..Self::default()
        }
    }

    /// Mutual TLS with the given files.
    pub fn mutual_tls(
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
    ) -> Self {
        Self {
            grpc_tls_cert: Some(certificate.into()),
            grpc_tls_key: Some(key.into()),
            grpc_tls_ca: Some(ca.into()),
            grpc_insecure_plaintext: false,
        }
    }
}

/// Where a service serves its admin HTTP endpoints (`/healthz`, `/readyz`,
/// `/metrics`).
#[derive(Args, Clone, Debug)]
pub struct AdminServerConfig {
    /// Address the admin HTTP server listens on.
    #[arg(
        long = "http-listen",
        env = "AS2_HTTP_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub http_listen: SocketAddr,
}

/// How a service reaches Redis.
#[derive(Args, Clone, Debug)]
pub struct RedisConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0` (`redis://user:password@host/` with ACLs).
    /// `memory://` keeps the state in the process instead: lost on exit, one replica only,
    /// for trying things out.
    #[arg(
        long = "redis-url",
        env = "AS2_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,

    /// Prefix of every Redis key and channel the gateway uses, so several
    /// gateways (or test runs) can share one Redis.
    #[arg(
        long = "redis-key-prefix",
        env = "AS2_REDIS_KEY_PREFIX",
        default_value = "as2"
    )]
    pub redis_key_prefix: String,

    /// Timeout in milliseconds for establishing a Redis connection.
    #[arg(
        long = "redis-connect-timeout-ms",
        env = "AS2_REDIS_CONNECT_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub redis_connect_timeout_ms: u64,

    /// Timeout in milliseconds for one Redis command.
    #[arg(
        long = "redis-response-timeout-ms",
        env = "AS2_REDIS_RESPONSE_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub redis_response_timeout_ms: u64,

    /// PEM CA bundle that a `rediss://` server's certificate must chain to (default: the
    /// system's trust store).
    #[arg(long = "redis-tls-ca", env = "AS2_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,

    /// PEM client certificate for a `rediss://` server that verifies clients
    /// (`tls-auth-clients`), with `--redis-tls-key`.
    #[arg(long = "redis-tls-cert", env = "AS2_REDIS_TLS_CERT")]
    pub redis_tls_cert: Option<PathBuf>,

    /// PEM private key of `--redis-tls-cert`.
    #[arg(long = "redis-tls-key", env = "AS2_REDIS_TLS_KEY")]
    pub redis_tls_key: Option<PathBuf>,
}

impl RedisConfig {
    /// A configuration for the given URL and key prefix with default timeouts.
    pub fn new(redis_url: impl Into<String>, redis_key_prefix: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            redis_key_prefix: redis_key_prefix.into(),
            redis_connect_timeout_ms: 5_000,
            redis_response_timeout_ms: 5_000,
            redis_tls_ca: None,
            redis_tls_cert: None,
            redis_tls_key: None,
        }
    }

    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_connect_timeout_ms)
    }

    /// The response timeout as a duration.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_response_timeout_ms)
    }
}

/// The format of log lines on standard output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging and tracing.
#[derive(Args, Clone, Debug)]
pub struct TelemetryConfig {
    /// Log line format.
    #[arg(long = "log-format", env = "AS2_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in `tracing_subscriber::EnvFilter` syntax, e.g.
    /// `info,as2_routing=debug`.
    #[arg(long = "log-filter", env = "AS2_LOG_FILTER", default_value = "info")]
    pub log_filter: String,

    /// OTLP (gRPC) endpoint that traces are exported to. Export is off when it
    /// is not set. Read from the standard OpenTelemetry variable.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
        }
    }
}

/// How a service stops.
#[derive(Args, Clone, Debug)]
pub struct ShutdownConfig {
    /// Seconds to keep serving after reporting not-ready, so load balancers
    /// stop sending new requests before the listeners close.
    #[arg(
        long = "shutdown-delay-secs",
        env = "AS2_SHUTDOWN_DELAY_SECS",
        default_value_t = 0
    )]
    pub shutdown_delay_secs: u64,

    /// Seconds that in-flight requests get to finish once the listeners close;
    /// what is still running after that is cut off.
    #[arg(
        long = "shutdown-grace-secs",
        env = "AS2_SHUTDOWN_GRACE_SECS",
        default_value_t = 20
    )]
    pub shutdown_grace_secs: u64,
}

impl ShutdownConfig {
    /// How long to keep serving after reporting not-ready.
    pub fn delay(&self) -> Duration {
        Duration::from_secs(self.shutdown_delay_secs)
    }

    /// How long in-flight requests may take to finish.
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            shutdown_delay_secs: 0,
            shutdown_grace_secs: 20,
        }
    }
}

/// Parses one `key=value` pass-through property (librdkafka options and the like):
/// the key is trimmed and must not be empty, the value is trimmed and may contain `=`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {text:?}"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("empty key in {text:?}"));
    }
    Ok((key.to_owned(), value.trim().to_owned()))
}

/// The flags of `command` that cannot also be set through an `AS2_*` environment
/// variable (`help`, `version` and the standard OpenTelemetry endpoint excepted), as
/// "flag (variable)" descriptions; every service's configuration test asserts that there
/// are none.
pub fn flags_without_as2_environment_variable(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .filter(|argument| {
            !matches!(
                argument.get_id().as_str(),
                "help" | "version" | "otlp_endpoint"
            )
        })
        .filter_map(|argument| {
            let env = argument
                .get_env()
                .map(|env| env.to_string_lossy().into_owned());
            match env {
                Some(env) if env.starts_with("AS2_") => None,
                other => Some(format!(
                    "{} ({})",
                    argument.get_id(),
                    other.unwrap_or_else(|| "no variable".to_owned())
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Sample {
        #[command(flatten)]
        grpc: GrpcServerConfig,
        #[command(flatten)]
        admin: AdminServerConfig,
        #[command(flatten)]
        redis: RedisConfig,
        #[command(flatten)]
        telemetry: TelemetryConfig,
        #[command(flatten)]
        shutdown: ShutdownConfig,
    }

    #[test]
    fn flags_override_defaults() {
        let sample = Sample::try_parse_from([
            "sample",
            "--grpc-listen",
            "127.0.0.1:1234",
            "--http-listen",
            "127.0.0.1:1235",
            "--redis-url",
            "redis://example:6379/2",
            "--redis-key-prefix",
            "test",
            "--log-format",
            "json",
            "--shutdown-grace-secs",
            "3",
        ])
        .expect("valid flags");
        assert_eq!(sample.grpc.grpc_listen.port(), 1234);
        assert_eq!(sample.admin.http_listen.port(), 1235);
        assert_eq!(sample.redis.redis_url, "redis://example:6379/2");
        assert_eq!(sample.redis.redis_key_prefix, "test");
        assert_eq!(sample.telemetry.log_format, LogFormat::Json);
        assert_eq!(sample.shutdown.grace_period(), Duration::from_secs(3));
    }

    #[test]
    fn bad_listen_address_is_a_parse_error() {
        let result = Sample::try_parse_from(["sample", "--grpc-listen", "nowhere"]);
        assert!(result.is_err());
    }

    #[test]
    fn every_flag_has_an_as2_environment_variable() {
        use clap::CommandFactory;
        assert_eq!(
            flags_without_as2_environment_variable(&Sample::command()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn key_value_properties_parse() {
        assert_eq!(
            parse_key_value("security.protocol = SASL_SSL").unwrap(),
            ("security.protocol".to_owned(), "SASL_SSL".to_owned())
        );
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
