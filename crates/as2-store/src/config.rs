//! Where objects are stored, parsed from a URL, and the `AS2_OBJECT_STORE_*` options.
//!
//! Parsing has no side effects: nothing here touches the filesystem or the network.
//! [`crate::Store::open`] does that.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;
use url::Url;

use crate::error::{Result, StoreError};

/// One mebibyte.
const MIB: usize = 1024 * 1024;

/// The default size of one part of a multipart upload: 8 MiB.
pub const DEFAULT_PART_SIZE: usize = 8 * MIB;

/// The smallest part S3 accepts (every part but the last): 5 MiB. GCS has the same limit.
pub const S3_MIN_PART_SIZE: usize = 5 * MIB;

/// The largest part S3 accepts: 5 GiB.
pub const S3_MAX_PART_SIZE: usize = 5 * 1024 * MIB;

/// The default number of parts of one upload in flight at once.
pub const DEFAULT_MAX_CONCURRENT_PARTS: usize = 2;

/// A credential: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself, for handing to the backend.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(value))
    }
}

/// The backend objects go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A directory of the local filesystem (`file:///abs/path`): the quick start's
    /// embedded default. Files are synced before a write returns.
    LocalFileSystem {
        /// The directory holding the objects (created when the store opens).
        root: PathBuf,
    },
    /// An S3-compatible store (`s3://bucket/prefix`): AWS S3, MinIO, Ceph, s3s.
    S3(S3Config),
    /// Google Cloud Storage (`gs://bucket/prefix`). Credentials and options come from the
    /// standard `GOOGLE_*` environment variables (`GOOGLE_SERVICE_ACCOUNT`, ...).
    Gcs {
        /// The bucket.
        bucket: String,
        /// The key prefix (no leading or trailing `/`; empty for none).
        prefix: String,
    },
    /// Azure Blob Storage (`az://container/prefix`). The account, credentials and options
    /// come from the standard `AZURE_*` environment variables
    /// (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ...).
    Azure {
        /// The container.
        container: String,
        /// The key prefix (no leading or trailing `/`; empty for none).
        prefix: String,
    },
}

/// How to reach an S3-compatible store.
///
/// Options left unset fall back to the standard `AWS_*` environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT`, ...) and, for credentials, to
/// web identity (EKS service accounts), ECS task roles and instance metadata, as the
/// AWS SDKs do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The key prefix (no leading or trailing `/`; empty for none).
    pub prefix: String,
    /// The endpoint URL for stores other than AWS (`http://127.0.0.1:9000` for MinIO).
    pub endpoint: Option<String>,
    /// The region requests are signed for (default: `us-east-1`).
    pub region: Option<String>,
    /// The access key id.
    pub access_key_id: Option<Secret>,
    /// The secret access key.
    pub secret_access_key: Option<Secret>,
    /// The session token of temporary credentials.
    pub session_token: Option<Secret>,
    /// Whether plain `http://` endpoints are allowed (loopback test servers).
    pub allow_http: bool,
    /// Virtual-hosted-style requests (`https://bucket.endpoint/key`) instead of
    /// path-style ones (`https://endpoint/bucket/key`), which MinIO, Ceph and s3s expect.
    pub virtual_hosted_style: bool,
    /// Encrypt every object with this KMS key (SSE-KMS); `None`: the bucket's default
    /// encryption.
    pub sse_kms_key_id: Option<String>,
}

/// Where and how objects are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The backend.
    pub backend: Backend,
    /// The size of each part of a multipart upload but the last; objects smaller than
    /// one part are stored with a single PUT. At least [`S3_MIN_PART_SIZE`] for S3 and GCS.
    pub part_size: usize,
    /// How many parts of one upload may be in flight at once (at least 1).
    pub max_concurrent_parts: usize,
}

impl StoreConfig {
    /// A store in a local directory, with the default part size and concurrency. A
    /// relative path is taken relative to the working directory when the store opens.
    pub fn local(root: impl Into<PathBuf>) -> Self {
        Self::with_backend(Backend::LocalFileSystem { root: root.into() })
    }

    /// The configuration a URL names, with default options:
    ///
    /// - `file:///abs/path`: a directory of the local filesystem;
    /// - `s3://bucket/optional/prefix`: an S3-compatible store (set the endpoint, region
    ///   and credentials on [`Backend::S3`] or through [`ObjectStoreArgs`]);
    /// - `gs://bucket/optional/prefix`: Google Cloud Storage;
    /// - `az://container/optional/prefix`: Azure Blob Storage.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = Url::parse(url)
            .map_err(|error| StoreError::Config(format!("object store URL {url:?}: {error}")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(StoreError::Config(format!(
                "object store URL {url:?}: credentials do not belong in the URL (use the access key options)"
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(StoreError::Config(format!(
                "object store URL {url:?}: no query or fragment is understood"
            )));
        }
        let backend = match parsed.scheme() {
            "file" => {
                let root = parsed.to_file_path().map_err(|()| {
                    StoreError::Config(format!(
                        "object store URL {url:?}: a file URL names an absolute local path (file:///var/lib/as2)"
                    ))
                })?;
                Backend::LocalFileSystem { root }
            }
            "s3" | "s3a" => {
                let (bucket, prefix) = bucket_and_prefix(url, &parsed)?;
                Backend::S3(S3Config {
                    bucket,
                    prefix,
                    ..S3Config::default()
                })
            }
            "gs" => {
                let (bucket, prefix) = bucket_and_prefix(url, &parsed)?;
                Backend::Gcs { bucket, prefix }
            }
            "az" | "azure" => {
                let (container, prefix) = bucket_and_prefix(url, &parsed)?;
                Backend::Azure { container, prefix }
            }
            other => {
                return Err(StoreError::Config(format!(
                    "object store URL {url:?}: unknown scheme {other:?} (file, s3, gs or az)"
                )));
            }
        };
        Ok(Self::with_backend(backend))
    }

    fn with_backend(backend: Backend) -> Self {
        Self {
            backend,
            part_size: DEFAULT_PART_SIZE,
            max_concurrent_parts: DEFAULT_MAX_CONCURRENT_PARTS,
        }
    }

    /// Sets the part size of multipart uploads.
    pub fn with_part_size(mut self, part_size: usize) -> Self {
        self.part_size = part_size;
        self
    }

    /// Sets how many parts of one upload may be in flight at once.
    pub fn with_max_concurrent_parts(mut self, max_concurrent_parts: usize) -> Self {
        self.max_concurrent_parts = max_concurrent_parts;
        self
    }

    /// The most bytes one upload holds at any time: `part_size × (1 + max_concurrent_parts)`
    /// (the part being filled plus the parts in flight).
    pub fn upload_memory_bound(&self) -> usize {
        upload_memory_bound(self.part_size, self.max_concurrent_parts)
    }

    /// Checks the part size and concurrency against the backend's limits.
    pub fn validate(&self) -> Result<()> {
        if self.max_concurrent_parts == 0 {
            return Err(StoreError::Config(
                "at least one part of an upload must be allowed in flight".to_owned(),
            ));
        }
        if self.part_size == 0 {
            return Err(StoreError::Config("the part size must not be 0".to_owned()));
        }
        let remote_limits = matches!(self.backend, Backend::S3(_) | Backend::Gcs { .. });
        if remote_limits && !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&self.part_size) {
            return Err(StoreError::Config(format!(
                "the part size {} is outside what S3 and GCS accept ({S3_MIN_PART_SIZE} to {S3_MAX_PART_SIZE} bytes)",
                self.part_size
            )));
        }
        Ok(())
    }

    /// The URL of the store's root: scheme, bucket or directory, and prefix (no
    /// endpoint, no credentials).
    pub fn base_url(&self) -> String {
        let with_prefix = |scheme: &str, bucket: &str, prefix: &str| {
            if prefix.is_empty() {
                format!("{scheme}://{bucket}")
            } else {
                format!("{scheme}://{bucket}/{prefix}")
            }
        };
        match &self.backend {
            Backend::LocalFileSystem { root } => format!("file://{}", root.display()),
            Backend::S3(s3) => with_prefix("s3", &s3.bucket, &s3.prefix),
            Backend::Gcs { bucket, prefix } => with_prefix("gs", bucket, prefix),
            Backend::Azure { container, prefix } => with_prefix("az", container, prefix),
        }
    }

    /// The location for logs and `Debug` output: [`StoreConfig::base_url`] and, for S3,
    /// the endpoint.
    pub fn describe(&self) -> String {
        let url = self.base_url();
        match &self.backend {
            Backend::S3(S3Config {
                endpoint: Some(endpoint),
                ..
            }) => format!("{url} at {endpoint}"),
            _ => url,
        }
    }
}

/// The most bytes one upload holds: the part being filled and the parts in flight.
pub(crate) fn upload_memory_bound(part_size: usize, max_concurrent_parts: usize) -> usize {
    part_size.saturating_mul(max_concurrent_parts.saturating_add(1))
}

/// The bucket (the URL's host) and the key prefix (its path) of a cloud URL.
fn bucket_and_prefix(url: &str, parsed: &Url) -> Result<(String, String)> {
    let bucket = parsed.host_str().unwrap_or_default();
    if bucket.is_empty() {
        return Err(StoreError::Config(format!(
            "object store URL {url:?} names no bucket ({}://bucket/prefix)",
            parsed.scheme()
        )));
    }
    if parsed.port().is_some() {
        return Err(StoreError::Config(format!(
            "object store URL {url:?}: the host is the bucket name, set the endpoint separately"
        )));
    }
    let prefix = parsed.path().trim_matches('/').to_owned();
    if !prefix.is_empty() {
        object_store::path::Path::parse(&prefix).map_err(|error| {
            StoreError::Config(format!("object store URL {url:?}: key prefix: {error}"))
        })?;
    }
    Ok((bucket.to_owned(), prefix))
}

/// The object store options every service takes, to flatten into its parser with
/// `#[command(flatten)]`. Each flag is also an `AS2_OBJECT_STORE_*` environment variable.
///
/// The endpoint, region, credentials, `allow-http` and virtual-hosted-style options apply
/// to `s3://` URLs only; for `gs://` and `az://` the standard `GOOGLE_*` and `AZURE_*`
/// variables configure the client.
#[derive(Args, Clone, Debug)]
pub struct ObjectStoreArgs {
    /// Where objects (large documents, the archive) are stored: `file:///abs/dir`,
    /// `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`. Unset: the
    /// service's embedded default, a local directory.
    #[arg(long = "object-store-url", env = "AS2_OBJECT_STORE_URL")]
    pub object_store_url: Option<String>,

    /// S3 endpoint URL, for stores other than AWS (MinIO, Ceph, s3s), e.g.
    /// `https://minio.example:9000`. Unset: AWS (or `AWS_ENDPOINT`).
    #[arg(long = "object-store-endpoint", env = "AS2_OBJECT_STORE_ENDPOINT")]
    pub endpoint: Option<String>,

    /// S3 region requests are signed for. Unset: `AWS_REGION`, else `us-east-1`.
    #[arg(long = "object-store-region", env = "AS2_OBJECT_STORE_REGION")]
    pub region: Option<String>,

    /// S3 access key id. Unset: `AWS_ACCESS_KEY_ID`, web identity (EKS), the ECS task
    /// role or the instance profile.
    #[arg(
        long = "object-store-access-key-id",
        env = "AS2_OBJECT_STORE_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub access_key_id: Option<Secret>,

    /// S3 secret access key (with the access key id).
    #[arg(
        long = "object-store-secret-access-key",
        env = "AS2_OBJECT_STORE_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub secret_access_key: Option<Secret>,

    /// S3 session token, for temporary credentials.
    #[arg(
        long = "object-store-session-token",
        env = "AS2_OBJECT_STORE_SESSION_TOKEN",
        hide_env_values = true
    )]
    pub session_token: Option<Secret>,

    /// Allow a plain `http://` S3 endpoint (a loopback test server); HTTPS otherwise.
    #[arg(
        long = "object-store-allow-http",
        env = "AS2_OBJECT_STORE_ALLOW_HTTP",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false
    )]
    pub allow_http: bool,

    /// Virtual-hosted-style S3 requests (`bucket.endpoint/key`) instead of path-style
    /// ones (`endpoint/bucket/key`, what MinIO, Ceph and s3s expect).
    #[arg(
        long = "object-store-virtual-hosted-style",
        env = "AS2_OBJECT_STORE_VIRTUAL_HOSTED_STYLE",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false
    )]
    pub virtual_hosted_style: bool,

    /// S3: encrypt every object with this KMS key id or ARN (SSE-KMS). Unset: the
    /// bucket's default encryption (SSE-S3 on AWS).
    #[arg(
        long = "object-store-sse-kms-key-id",
        env = "AS2_OBJECT_STORE_SSE_KMS_KEY_ID"
    )]
    pub sse_kms_key_id: Option<String>,

    /// Size in MiB of each part of a multipart upload (objects below one part are one
    /// PUT). At least 5 for S3 and GCS.
    #[arg(
        long = "object-store-part-size-mib",
        env = "AS2_OBJECT_STORE_PART_SIZE_MIB",
        default_value_t = DEFAULT_PART_SIZE / MIB
    )]
    pub part_size_mib: usize,

    /// Parts of one upload in flight at once. One upload holds at most
    /// part size × (1 + this) bytes.
    #[arg(
        long = "object-store-max-concurrent-parts",
        env = "AS2_OBJECT_STORE_MAX_CONCURRENT_PARTS",
        default_value_t = DEFAULT_MAX_CONCURRENT_PARTS
    )]
    pub max_concurrent_parts: usize,
}

impl Default for ObjectStoreArgs {
    /// The flags' defaults: no URL, no S3 options, 8 MiB parts with 2 in flight.
    fn default() -> Self {
        Self {
            object_store_url: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: false,
            virtual_hosted_style: false,
            sse_kms_key_id: None,
            part_size_mib: DEFAULT_PART_SIZE / MIB,
            max_concurrent_parts: DEFAULT_MAX_CONCURRENT_PARTS,
        }
    }
}

impl ObjectStoreArgs {
    /// The configuration for reading a document a record references by `location` (its
    /// URL) and `key`: the store these options name, or, without a URL, the one the
    /// location is in (its root is the location without the key), with these options'
    /// credentials.
    pub fn reference_config(&self, location: &str, key: &str) -> Result<StoreConfig> {
        let mut args = self.clone();
        if args.object_store_url.is_none() {
            let root = location
                .strip_suffix(key)
                .map(|root| root.trim_end_matches('/'))
                .filter(|root| !root.is_empty() && !key.is_empty())
                .ok_or_else(|| {
                    StoreError::Config(format!(
                        "the location {location} does not end in the key {key}"
                    ))
                })?;
            args.object_store_url = Some(root.to_owned());
        }
        args.store_config(Path::new("/nonexistent"))
    }

    /// The configuration these options describe. Without a URL, objects go to the local
    /// directory `default_local_root` (the service's embedded default).
    ///
    /// Fails when the URL cannot be parsed, when an S3-only option is set for another
    /// backend, or when the part size or concurrency is out of range.
    pub fn store_config(&self, default_local_root: &Path) -> Result<StoreConfig> {
        let mut config = match &self.object_store_url {
            Some(url) => StoreConfig::from_url(url)?,
            None => StoreConfig::local(default_local_root),
        };
        match &mut config.backend {
            Backend::S3(s3) => {
                s3.endpoint = self.endpoint.clone();
                s3.region = self.region.clone();
                s3.access_key_id = self.access_key_id.clone();
                s3.secret_access_key = self.secret_access_key.clone();
                s3.session_token = self.session_token.clone();
                s3.allow_http = self.allow_http;
                s3.virtual_hosted_style = self.virtual_hosted_style;
                s3.sse_kms_key_id = self.sse_kms_key_id.clone();
            }
            _ => {
                let s3_only = [
                    ("AS2_OBJECT_STORE_ENDPOINT", self.endpoint.is_some()),
                    ("AS2_OBJECT_STORE_REGION", self.region.is_some()),
                    (
                        "AS2_OBJECT_STORE_ACCESS_KEY_ID",
                        self.access_key_id.is_some(),
                    ),
                    (
                        "AS2_OBJECT_STORE_SECRET_ACCESS_KEY",
                        self.secret_access_key.is_some(),
                    ),
                    (
                        "AS2_OBJECT_STORE_SESSION_TOKEN",
                        self.session_token.is_some(),
                    ),
                    ("AS2_OBJECT_STORE_ALLOW_HTTP", self.allow_http),
                    (
                        "AS2_OBJECT_STORE_VIRTUAL_HOSTED_STYLE",
                        self.virtual_hosted_style,
                    ),
                    (
                        "AS2_OBJECT_STORE_SSE_KMS_KEY_ID",
                        self.sse_kms_key_id.is_some(),
                    ),
                ];
                if let Some((name, _)) = s3_only.iter().find(|(_, set)| *set) {
                    return Err(StoreError::Config(format!(
                        "{name} applies to s3:// object stores only, not to {}",
                        config.describe()
                    )));
                }
            }
        }
        config.part_size = self.part_size_mib.saturating_mul(MIB);
        config.max_concurrent_parts = self.max_concurrent_parts;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        store: ObjectStoreArgs,
    }

    fn parse(args: &[&str]) -> ObjectStoreArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("arguments parse").store
    }

    #[test]
    fn a_file_url_names_a_local_directory() {
        let config = StoreConfig::from_url("file:///var/lib/as2/objects").expect("parses");
        assert_eq!(
            config.backend,
            Backend::LocalFileSystem {
                root: PathBuf::from("/var/lib/as2/objects")
            }
        );
        assert_eq!(config.part_size, DEFAULT_PART_SIZE);
    }

    #[test]
    fn an_s3_url_names_bucket_and_prefix() {
        let config = StoreConfig::from_url("s3://archive/as2/prod/").expect("parses");
        let Backend::S3(s3) = config.backend else {
            panic!("not s3: {config:?}");
        };
        assert_eq!(s3.bucket, "archive");
        assert_eq!(s3.prefix, "as2/prod");
        let bare = StoreConfig::from_url("s3://archive").expect("parses");
        assert!(
            matches!(bare.backend, Backend::S3(S3Config { ref prefix, .. }) if prefix.is_empty())
        );
    }

    #[test]
    fn gcs_and_azure_urls_parse() {
        let gcs = StoreConfig::from_url("gs://bucket/p").expect("parses");
        assert_eq!(
            gcs.backend,
            Backend::Gcs {
                bucket: "bucket".into(),
                prefix: "p".into()
            }
        );
        let azure = StoreConfig::from_url("az://container").expect("parses");
        assert_eq!(
            azure.backend,
            Backend::Azure {
                container: "container".into(),
                prefix: String::new()
            }
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "ftp://host/x",
            "s3:///prefix-without-bucket",
            "s3://key:secret@bucket/x",
            "s3://bucket:9000/x",
            "s3://bucket/a//b",
            "s3://bucket/x?region=eu",
            "file://relative/path",
            "not a url",
        ] {
            let error = StoreConfig::from_url(url).expect_err(url);
            assert!(matches!(error, StoreError::Config(_)), "{url}: {error}");
        }
    }

    #[test]
    fn credentials_stay_out_of_debug_output() {
        let args = parse(&[
            "--object-store-url",
            "s3://bucket/prefix",
            "--object-store-access-key-id",
            "AKIDEXAMPLEID",
            "--object-store-secret-access-key",
            "very-secret-key",
            "--object-store-session-token",
            "session-token-value",
        ]);
        let config = args.store_config(Path::new("/unused")).expect("valid");
        for shown in [format!("{args:?}"), format!("{config:?}")] {
            for secret in ["AKIDEXAMPLEID", "very-secret-key", "session-token-value"] {
                assert!(!shown.contains(secret), "{secret} shown in {shown}");
            }
        }
        let Backend::S3(s3) = config.backend else {
            panic!("not s3");
        };
        assert_eq!(
            s3.secret_access_key.as_ref().map(Secret::expose),
            Some("very-secret-key")
        );
    }

    #[test]
    fn options_fill_the_s3_config() {
        let args = parse(&[
            "--object-store-url",
            "s3://bucket",
            "--object-store-endpoint",
            "http://127.0.0.1:9000",
            "--object-store-region",
            "eu-central-1",
            "--object-store-allow-http",
            "yes",
            "--object-store-part-size-mib",
            "16",
            "--object-store-max-concurrent-parts",
            "4",
        ]);
        let config = args.store_config(Path::new("/unused")).expect("valid");
        assert_eq!(config.part_size, 16 * MIB);
        assert_eq!(config.max_concurrent_parts, 4);
        assert_eq!(config.upload_memory_bound(), 80 * MIB);
        let Backend::S3(s3) = config.backend else {
            panic!("not s3");
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region.as_deref(), Some("eu-central-1"));
        assert!(s3.allow_http);
        assert!(!s3.virtual_hosted_style);
    }

    #[test]
    fn without_a_url_the_default_directory_is_used() {
        let config = parse(&[])
            .store_config(Path::new(".as2-gateway/objects"))
            .expect("valid");
        assert_eq!(config, StoreConfig::local(".as2-gateway/objects"));
    }

    #[test]
    fn s3_options_for_another_backend_are_refused() {
        let args = parse(&[
            "--object-store-url",
            "file:///tmp/x",
            "--object-store-endpoint",
            "http://127.0.0.1:9000",
        ]);
        let error = args
            .store_config(Path::new("/unused"))
            .expect_err("refused");
        assert!(
            error.to_string().contains("AS2_OBJECT_STORE_ENDPOINT"),
            "{error}"
        );
    }

    #[test]
    fn sse_kms_applies_to_s3_only() {
        let args = parse(&[
            "--object-store-url",
            "s3://archive-bucket/as2",
            "--object-store-sse-kms-key-id",
            "arn:aws:kms:eu-central-1:111122223333:key/archive",
        ]);
        let Backend::S3(s3) = args
            .store_config(Path::new("/unused"))
            .expect("valid")
            .backend
        else {
            panic!("not s3");
        };
        assert_eq!(
            s3.sse_kms_key_id.as_deref(),
            Some("arn:aws:kms:eu-central-1:111122223333:key/archive")
        );
        let local = parse(&[
            "--object-store-url",
            "file:///tmp/x",
            "--object-store-sse-kms-key-id",
            "key",
        ]);
        assert!(local.store_config(Path::new("/unused")).is_err());
    }

    #[test]
    fn s3_parts_below_five_mib_are_refused() {
        let args = parse(&[
            "--object-store-url",
            "s3://bucket",
            "--object-store-part-size-mib",
            "4",
        ]);
        assert!(args.store_config(Path::new("/unused")).is_err());
        let local = StoreConfig::local("/tmp/x").with_part_size(1024);
        assert!(local.validate().is_ok());
        assert!(local.with_max_concurrent_parts(0).validate().is_err());
    }
}
