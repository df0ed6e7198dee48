//! A gateway service running as its own process (`as2-service SERVICE`), the way it runs
//! in production: a clean environment plus the given variables, its output in a log
//! file, killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a service may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One service process.
pub struct ServiceProcess {
    name: String,
    binary: PathBuf,
    service: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Child,
}

impl ServiceProcess {
    /// Starts `binary SERVICE` (the `as2-service` binary of this crate) with `env`; its
    /// output goes to `dir/NAME.log`, appended to on restarts.
    ///
    /// # Panics
    ///
    /// When the log cannot be created or the process cannot be spawned.
    pub fn start(
        binary: &Path,
        service: &str,
        name: &str,
        dir: &Path,
        env: &[(&str, String)],
    ) -> Self {
        let env: Vec<_> = env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect();
        let log = dir.join(format!("{name}.log"));
        let child = spawn(binary, service, &log, &env);
        Self {
            name: name.to_owned(),
            binary: binary.to_path_buf(),
            service: service.to_owned(),
            env,
            log,
            child,
        }
    }

    /// The process id of the current process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process (and its earlier runs) wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `addr` accepts connections.
    ///
    /// # Panics
    ///
    /// When it does not within [`START_TIMEOUT`], with the log.
    pub fn wait_for(&mut self, addr: SocketAddr) {
        if !as2_testkit::wait_for_port(addr, START_TIMEOUT) {
            let _ = self.child.kill();
            panic!("{} did not listen on {addr}:\n{}", self.name, self.log());
        }
    }

    /// Whether the process has ended (crashed or killed); reaps it.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the service again with the same environment, `overrides` replacing or
    /// adding variables.
    ///
    /// # Panics
    ///
    /// When the process cannot be spawned.
    pub fn restart(&mut self, overrides: &[(&str, String)]) {
        self.kill();
        for (key, value) in overrides {
            self.env.retain(|(existing, _)| existing != key);
            self.env.push(((*key).to_owned(), value.clone()));
        }
        self.child = spawn(&self.binary, &self.service, &self.log, &self.env);
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(binary: &Path, service: &str, log: &Path, env: &[(String, String)]) -> Child {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", log.display()))
    };
    let mut command = Command::new(binary);
    command
        .arg(service)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(open())
        .stderr(open());
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()))
}

/// The gRPC channel to `service` at `addr` with the credential `name` of a directory made
/// by `deploy/local/grpc-credentials` (`NAME.crt`, `NAME.key`, `ca.crt`).
///
/// # Panics
///
/// When the credentials do not load or the service does not answer.
pub async fn grpc_channel(
    credentials: &Path,
    name: &str,
    service: &'static str,
    addr: SocketAddr,
) -> tonic::transport::Channel {
    let security = as2_common::grpc::GrpcSecurity::from_config(
        &as2_common::config::GrpcTlsConfig::mutual_tls(
            credentials.join(format!("{name}.crt")),
            credentials.join(format!("{name}.key")),
            credentials.join("ca.crt"),
        ),
    )
    .unwrap_or_else(|error| panic!("the {name} credential does not load: {error}"));
    as2_common::grpc::connect(
        service,
        &format!("https://{addr}"),
        as2_common::grpc::ChannelSettings::default(),
        &security,
    )
    .await
    .unwrap_or_else(|error| panic!("cannot connect to {service} at {addr}: {error}"))
}
