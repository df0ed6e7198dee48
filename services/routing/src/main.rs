//! The `as2-routing` binary: parse configuration, set up telemetry, run until
//! SIGTERM or SIGINT.

use as2_routing::RoutingConfig;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = RoutingConfig::parse();
    let telemetry = as2_common::telemetry::init_telemetry(&config.telemetry, "as2-routing")?;
    let outcome = as2_routing::run(config, as2_common::shutdown::termination_signal()).await;
    if let Err(error) = &outcome {
        tracing::error!(error = format!("{error:#}"), "routing service failed");
    }
    telemetry.shutdown();
    outcome
}
