//! Child processes for the servers integration tests talk to.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{
    STARTUP_TIMEOUT, free_port, redis_cli_binary, redis_server_binary, s3s_fs_binary, tansu_binary,
    tansu_durable_binary, unique_temp_dir, wait_for_port,
};

/// How many fresh ports to try when a chosen port turns out to be taken.
const PORT_ATTEMPTS: usize = 5;

/// A server process owned by a test, killed (and reaped) on drop.
struct OwnedProcess {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl OwnedProcess {
    fn spawn(name: &'static str, mut command: Command) -> std::io::Result<Self> {
        let log = std::env::temp_dir().join(format!("as2-testkit-{name}-{}.log", unique_suffix()));
        let log_file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?;
        Ok(Self {
            name,
            child: Some(child),
            log,
        })
    }

    fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!(
            "{} log ({}):\n{}",
            self.name,
            self.log.display(),
            &text[start..]
        )
    }
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts `make_command(port)` on fresh ports until one comes up and answers `ready`.
fn start_on_free_port(
    name: &'static str,
    make_command: impl Fn(u16) -> Command,
    ready: impl Fn(SocketAddr) -> bool,
) -> (OwnedProcess, u16) {
    let mut last_log = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port();
        match start_on_port(name, &make_command, &ready, port) {
            Ok(process) => return (process, port),
            Err(log) => last_log = log,
        }
    }
    panic!("{name} did not start after {PORT_ATTEMPTS} attempts\n{last_log}");
}

/// Starts `make_command(port)` and waits for it to be ready; the error carries its log.
fn start_on_port(
    name: &'static str,
    make_command: &impl Fn(u16) -> Command,
    ready: &impl Fn(SocketAddr) -> bool,
    port: u16,
) -> Result<OwnedProcess, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut process = OwnedProcess::spawn(name, make_command(port))
        .unwrap_or_else(|error| panic!("cannot spawn {name}: {error}"));
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if process.has_exited() {
            return Err(process.log_tail());
        }
        if wait_for_port(addr, Duration::from_millis(200)) && ready(addr) {
            return Ok(process);
        }
    }
    let log = process.log_tail();
    process.kill();
    Err(format!(
        "{name} not ready on port {port} within {STARTUP_TIMEOUT:?}\n{log}"
    ))
}

/// A `redis-server` on a free loopback port with persistence off.
///
/// ```no_run
/// let redis = as2_testkit::RedisServer::start();
/// let url = redis.url(); // redis://127.0.0.1:PORT/
/// # drop(url);
/// ```
pub struct RedisServer {
    process: OwnedProcess,
    port: u16,
    tls: bool,
    /// The data directory of a durable server.
    durable: Option<PathBuf>,
}

impl RedisServer {
    /// Starts a server; panics with its log when it cannot start.
    pub fn start() -> Self {
        let (process, port) = start_on_free_port("redis", redis_command, redis_answers_ping);
        Self {
            process,
            port,
            tls: false,
            durable: None,
        }
    }

    /// Starts a server that writes every change to its append-only file before it
    /// answers (`appendonly yes`, `appendfsync always`) in a directory of its own, so a
    /// [`restart`](Self::restart), even after a kill, keeps everything it acknowledged.
    pub fn start_durable() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "as2-redis-{}-{}",
            std::process::id(),
            crate::random_u32()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
        let make = |port: u16| durable_redis_command(port, &dir);
        let (process, port) = start_on_free_port("redis (durable)", make, redis_answers_ping);
        Self {
            process,
            port,
            tls: false,
            durable: Some(dir),
        }
    }

    /// Starts a server that speaks TLS only, with `certificate` and `key` (PEM files),
    /// and verifies clients against `ca` when `client_certificates` is set (Redis's
    /// `tls-auth-clients`).
    pub fn start_tls(
        certificate: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
        client_certificates: bool,
    ) -> Self {
        let make = |port: u16| {
            let mut command = redis_command(0);
            command
                .args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(certificate)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args([
                    "--tls-auth-clients",
                    if client_certificates { "yes" } else { "no" },
                ]);
            command
        };
        // Ready once the port is open (a plain PING cannot be read over TLS).
        let (process, port) = start_on_free_port("redis (tls)", make, |_| true);
        Self {
            process,
            port,
            tls: true,
            durable: None,
        }
    }

    /// The connection URL, `redis://127.0.0.1:PORT/` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Kills the server (its in-memory data is gone). The port stays reserved for
    /// [`RedisServer::restart`].
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port: empty, as persistence is off, unless it
    /// was started with [`start_durable`](Self::start_durable).
    pub fn restart(&mut self) {
        self.process.kill();
        let restarted = match &self.durable {
            Some(dir) => start_on_port(
                "redis (durable)",
                &|port| durable_redis_command(port, dir),
                &redis_answers_ping,
                self.port,
            ),
            None => start_on_port("redis", &redis_command, &redis_answers_ping, self.port),
        };
        self.process = restarted
            .unwrap_or_else(|log| panic!("redis did not restart on port {}\n{log}", self.port));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.process.kill();
        if let Some(dir) = &self.durable {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn durable_redis_command(port: u16, dir: &std::path::Path) -> Command {
    let mut command = redis_command(port);
    command
        .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
        .arg(dir);
    command
}

fn redis_command(port: u16) -> Command {
    let mut command = Command::new(redis_server_binary());
    command.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]);
    command
}

fn redis_answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0_u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A Redis Cluster of three masters without replicas, each a `redis-server` on a free
/// loopback port (its cluster bus on another free port), the 16384 slots spread over
/// them by `redis-cli --cluster create`. Persistence is off; every node is killed and its
/// directory removed on drop.
///
/// ```no_run
/// let cluster = as2_testkit::RedisCluster::start();
/// let url = cluster.url(); // redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/
/// # drop(url);
/// ```
pub struct RedisCluster {
    nodes: Vec<(OwnedProcess, u16)>,
    dir: PathBuf,
}

/// Masters of a [`RedisCluster`].
const CLUSTER_MASTERS: usize = 3;

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok`; panics with the logs when it cannot.
    pub fn start() -> Self {
        let dir = unique_temp_dir("redis-cluster");
        let nodes: Vec<(OwnedProcess, u16)> = (0..CLUSTER_MASTERS)
            .map(|_| {
                let make = |port: u16| {
                    let mut command = redis_command(port);
                    command
                        .args(["--cluster-enabled", "yes"])
                        .arg("--cluster-config-file")
                        .arg(dir.join(format!("nodes-{port}.conf")))
                        .args(["--cluster-port", &free_port().to_string()])
                        .args(["--cluster-node-timeout", "5000"])
                        .arg("--dir")
                        .arg(&dir);
                    command
                };
                start_on_free_port("redis (cluster node)", make, redis_answers_ping)
            })
            .collect();
        let cluster = Self { nodes, dir };
        let mut create = Command::new(redis_cli_binary());
        create.args(["--cluster", "create"]);
        for port in cluster.ports() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let created = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run redis-cli --cluster create: {error}"));
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}\n{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr),
            cluster.logs()
        );
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !cluster.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the redis cluster did not reach cluster_state:ok within {STARTUP_TIMEOUT:?}\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// The URL the services take for it: `redis+cluster://` and every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}/", nodes.join(","))
    }

    /// Each node's own URL, `redis://127.0.0.1:PORT/` (a plain connection to one node
    /// answers only for the keys of its slots).
    pub fn node_urls(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    /// The nodes' client ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(_, port)| *port).collect()
    }

    /// The nodes' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|(process, _)| process.pid())
            .collect()
    }

    /// Whether every node says `cluster_state:ok` and knows all 16384 slots.
    fn is_ok(&self) -> bool {
        self.ports().iter().all(|port| {
            Command::new(redis_cli_binary())
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "cluster",
                    "info",
                ])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|output| {
                    let info = String::from_utf8_lossy(&output.stdout);
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
        })
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(process, _)| process.log_tail())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (process, _) in &mut self.nodes {
            process.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Kafka-protocol broker (Tansu) on a free loopback port: in-memory storage, or a
/// SQLite database that survives restarts ([`KafkaBroker::start_durable`]).
pub struct KafkaBroker {
    process: OwnedProcess,
    port: u16,
    /// The directory of a durable broker's database (removed on drop).
    storage: Option<PathBuf>,
}

impl KafkaBroker {
    /// Starts a broker; panics with its log when it cannot start.
    pub fn start() -> Self {
        let (process, port) = start_on_free_port("tansu", tansu_command, |_| true);
        Self {
            process,
            port,
            storage: None,
        }
    }

    /// Starts a broker that keeps its topics in a SQLite database of its own (Tansu's
    /// `sqlite://` storage engine, the [`tansu_durable_binary`] built with it), so a
    /// [`restart`](Self::restart), even after a kill, keeps every acknowledged record.
    pub fn start_durable() -> Self {
        let dir = unique_temp_dir("tansu");
        let make = |port: u16| durable_tansu_command(port, &dir);
        let (process, port) = start_on_free_port("tansu (sqlite)", make, |_| true);
        Self {
            process,
            port,
            storage: Some(dir),
        }
    }

    /// The bootstrap address, `127.0.0.1:PORT`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the broker listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Kills the broker. With in-memory storage its topics are gone.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the broker again on the same port: with empty storage, unless it was
    /// started with [`start_durable`](Self::start_durable).
    pub fn restart(&mut self) {
        self.process.kill();
        let restarted = match &self.storage {
            Some(dir) => start_on_port(
                "tansu (sqlite)",
                &|port| durable_tansu_command(port, dir),
                &|_| true,
                self.port,
            ),
            None => start_on_port("tansu", &tansu_command, &|_| true, self.port),
        };
        self.process = restarted
            .unwrap_or_else(|log| panic!("tansu did not restart on port {}\n{log}", self.port));
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.process.kill();
        if let Some(dir) = &self.storage {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn durable_tansu_command(port: u16, dir: &Path) -> Command {
    let mut command = tansu_command_with(tansu_durable_binary(), port, "sqlite://tansu.db");
    // The engine's path is relative to the working directory.
    command.current_dir(dir);
    command
}

fn tansu_command(port: u16) -> Command {
    tansu_command_on(port, "memory://tansu/")
}

fn tansu_command_on(port: u16, storage_engine: &str) -> Command {
    tansu_command_with(tansu_binary(), port, storage_engine)
}

fn tansu_command_with(binary: PathBuf, port: u16, storage_engine: &str) -> Command {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(binary);
    command
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", storage_engine])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    command
}

/// An S3-protocol server (`s3s-fs`, objects as files in a temporary directory) on a free
/// loopback port, with one bucket created and credentials of its own.
///
/// s3s-fs keeps each bucket as a directory under its root, so the bucket is made before
/// the server starts. The process is killed and the directory removed on drop.
///
/// ```no_run
/// let s3 = as2_testkit::S3Server::start();
/// let endpoint = s3.endpoint(); // http://127.0.0.1:PORT
/// let url = format!("s3://{}/some/prefix", s3.bucket());
/// # drop((endpoint, url));
/// ```
pub struct S3Server {
    process: OwnedProcess,
    port: u16,
    root: PathBuf,
}

/// The bucket every [`S3Server`] has.
const S3_BUCKET: &str = "as2-test";
/// The access key id of every [`S3Server`].
const S3_ACCESS_KEY_ID: &str = "as2-test-access-key";
/// The secret access key of every [`S3Server`].
const S3_SECRET_ACCESS_KEY: &str = "as2-test-secret-key";

impl S3Server {
    /// Starts a server with an empty bucket ([`S3Server::bucket`]); panics with its log
    /// when it cannot start.
    pub fn start() -> Self {
        let root = std::env::temp_dir().join(format!("as2-testkit-s3-{}", unique_suffix()));
        std::fs::create_dir_all(root.join(S3_BUCKET))
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", root.display()));
        let make_command = |port: u16| s3s_fs_command(&root, port);
        let (process, port) = start_on_free_port("s3s-fs", make_command, answers_http);
        Self {
            process,
            port,
            root,
        }
    }

    /// The endpoint URL, `http://127.0.0.1:PORT` (path-style requests, plain HTTP).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket that exists from the start.
    pub fn bucket(&self) -> &'static str {
        S3_BUCKET
    }

    /// Creates another (empty) bucket and returns its name.
    pub fn create_bucket(&self, name: &str) -> String {
        std::fs::create_dir_all(self.root.join(name))
            .unwrap_or_else(|error| panic!("cannot create bucket {name}: {error}"));
        name.to_owned()
    }

    /// The access key id the server accepts.
    pub fn access_key_id(&self) -> &'static str {
        S3_ACCESS_KEY_ID
    }

    /// The secret access key the server accepts.
    pub fn secret_access_key(&self) -> &'static str {
        S3_SECRET_ACCESS_KEY
    }

    /// The region to sign requests for (s3s-fs accepts any).
    pub fn region(&self) -> &'static str {
        "us-east-1"
    }

    /// The directory holding the buckets (one subdirectory each).
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn s3s_fs_command(root: &std::path::Path, port: u16) -> Command {
    let mut command = Command::new(s3s_fs_binary());
    command
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--access-key",
            S3_ACCESS_KEY_ID,
            "--secret-key",
            S3_SECRET_ACCESS_KEY,
        ])
        .arg(root);
    command
}

/// Whether an HTTP server answers on `addr` (any status: an unsigned request to an S3
/// server is refused, which still shows it is serving).
fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = [0_u8; 9];
    stream.read_exact(&mut reply).is_ok() && reply.starts_with(b"HTTP/1.")
}
