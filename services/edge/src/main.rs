//! The `as2-edge` binary: parse configuration, set up telemetry, run until SIGTERM or
//! SIGINT.

use as2_edge::EdgeConfig;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = EdgeConfig::parse();
    let telemetry = as2_common::telemetry::init_telemetry(&config.telemetry, "as2-edge")?;
    let outcome = as2_edge::run(config, as2_common::shutdown::termination_signal()).await;
    if let Err(error) = &outcome {
        tracing::error!(error = format!("{error:#}"), "edge failed");
    }
    telemetry.shutdown();
    outcome
}
