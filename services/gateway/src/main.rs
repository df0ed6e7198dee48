//! The `as2-gateway` binary: the whole gateway in one process (see the library docs).

use as2_gateway::GatewayConfig;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    let telemetry = as2_common::telemetry::init_telemetry(&config.telemetry, "as2-gateway")?;
    let outcome = as2_gateway::run(config, as2_common::shutdown::termination_signal()).await;
    if let Err(error) = &outcome {
        tracing::error!(error = format!("{error:#}"), "gateway failed");
    }
    telemetry.shutdown();
    outcome
}
