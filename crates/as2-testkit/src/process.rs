//! Child processes for the servers integration tests talk to.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{STARTUP_TIMEOUT, free_port, redis_server_binary, tansu_binary, wait_for_port};

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
}

impl RedisServer {
    /// Starts a server; panics with its log when it cannot start.
    pub fn start() -> Self {
        let (process, port) = start_on_free_port("redis", redis_command, redis_answers_ping);
        Self { process, port }
    }

    /// The connection URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
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

    /// Starts the server again on the same port (empty, as persistence is off).
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = start_on_port("redis", &redis_command, &redis_answers_ping, self.port)
            .unwrap_or_else(|log| panic!("redis did not restart on port {}\n{log}", self.port));
    }
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

/// A Kafka-protocol broker (Tansu, in-memory storage) on a free loopback port.
pub struct KafkaBroker {
    process: OwnedProcess,
    port: u16,
}

impl KafkaBroker {
    /// Starts a broker; panics with its log when it cannot start.
    pub fn start() -> Self {
        let (process, port) = start_on_free_port("tansu", tansu_command, |_| true);
        Self { process, port }
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

    /// Starts the broker again on the same port (with empty storage).
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = start_on_port("tansu", &tansu_command, &|_| true, self.port)
            .unwrap_or_else(|log| panic!("tansu did not restart on port {}\n{log}", self.port));
    }
}

fn tansu_command(port: u16) -> Command {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(tansu_binary());
    command
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    command
}
