//! The `as2-sender` binary: parse configuration, set up telemetry, run until SIGTERM or
//! SIGINT.

use as2_sender::SenderConfig;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = SenderConfig::parse();
    let telemetry = as2_common::telemetry::init_telemetry(&config.telemetry, "as2-sender")?;
    let outcome = as2_sender::run(config, as2_common::shutdown::termination_signal()).await;
    if let Err(error) = &outcome {
        tracing::error!(error = format!("{error:#}"), "sender failed");
    }
    telemetry.shutdown();
    outcome
}
