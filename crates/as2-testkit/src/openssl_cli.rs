//! The `openssl cms` command line as an independent, streaming AS2 peer.

use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Runs `openssl` with `args` in `dir`; panics with its error output unless it
/// succeeded.
pub fn run(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (install the openssl package)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `openssl cms -sign -binary -md sha256` over `entity.txt` in `dir` with the partner's
/// `partner.pem` and `partner.key`, plus `extra` options, into `signed.eml`.
pub fn sign_entity(dir: &Path, extra: &[&str]) {
    let mut args = vec![
        "cms",
        "-sign",
        "-binary",
        "-in",
        "entity.txt",
        "-signer",
        "partner.pem",
        "-inkey",
        "partner.key",
        "-md",
        "sha256",
        "-out",
        "signed.eml",
    ];
    args.extend_from_slice(extra);
    run(dir, &args);
}

/// `openssl cms -sign -stream` (SHA-256, detached: S/MIME multipart/signed) piped into
/// `openssl cms -encrypt -stream` (AES-256-CBC, DER with indefinite lengths): what is
/// written to [`SignEncrypt::input`] comes out of [`SignEncrypt::output`] signed and
/// encrypted, and neither process ever holds the whole message.
pub struct SignEncrypt {
    /// The content to sign (a MIME entity for AS2).
    pub input: Option<ChildStdin>,
    /// The encrypted message (the AS2 request body).
    pub output: Option<ChildStdout>,
    children: Vec<Child>,
}

impl SignEncrypt {
    /// Starts the pipeline in `dir`, where the PEM files named here are.
    pub fn spawn(dir: &Path, signer_cert: &str, signer_key: &str, recipient_cert: &str) -> Self {
        let openssl = |args: &[&str]| {
            let mut command = Command::new("openssl");
            command.current_dir(dir).args(args);
            command
        };
        let mut sign = openssl(&[
            "cms",
            "-sign",
            "-stream",
            "-binary",
            "-signer",
            signer_cert,
            "-inkey",
            signer_key,
            "-md",
            "sha256",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl cms -sign (install the openssl package)");
        let signed = sign.stdout.take().expect("a piped stdout");
        let mut encrypt = openssl(&[
            "cms",
            "-encrypt",
            "-stream",
            "-binary",
            "-outform",
            "DER",
            "-aes-256-cbc",
            recipient_cert,
        ])
        .stdin(Stdio::from(signed))
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl cms -encrypt");
        Self {
            input: sign.stdin.take(),
            output: encrypt.stdout.take(),
            children: vec![sign, encrypt],
        }
    }

    /// Waits for both processes; panics unless both succeeded.
    pub fn wait(mut self) {
        drop(self.input.take());
        for child in &mut self.children {
            let status = child.wait().expect("openssl ran");
            assert!(status.success(), "openssl failed: {status}");
        }
    }
}
