//! as2ctl, the operator CLI of the AS2 gateway.
//!
//! Exit codes: 0 on success, 1 when the command failed (the reason is printed
//! on standard error), 2 for invalid command-line syntax.

#![forbid(unsafe_code)]

mod archive;
mod certificates;
mod cli;
mod commands;
mod consume;
mod deliveries;
mod https;
mod output;
mod redis_acl;
mod send;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::execute(cli).await {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (as2ctl ... | head) is not an error worth reporting.
            let _ = stdout.write_all(output.as_bytes());
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(commands::CtlError::Unsuccessful(output)) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(output.as_bytes());
            let _ = stdout.flush();
            ExitCode::FAILURE
        }
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

#[allow(
    clippy::print_stderr,
    reason = "a CLI reports its errors on standard error"
)]
fn report(error: &commands::CtlError) {
    eprintln!("error: {error}");
}
