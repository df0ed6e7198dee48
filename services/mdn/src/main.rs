//! The `as2-mdn` binary: parse configuration, set up telemetry, run until SIGTERM or
//! SIGINT.

use as2_mdn::MdnConfig;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = MdnConfig::parse();
    let telemetry = as2_common::telemetry::init_telemetry(&config.telemetry, "as2-mdn")?;
    let outcome = as2_mdn::run(config, as2_common::shutdown::termination_signal()).await;
    if let Err(error) = &outcome {
        tracing::error!(error = format!("{error:#}"), "mdn service failed");
    }
    telemetry.shutdown();
    outcome
}
