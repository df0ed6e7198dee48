//! `as2-service edge|routing|mdn|sender [flags]`: runs one gateway service exactly as
//! its own binary does (`as2-edge`, `as2-routing`, `as2-mdn`, `as2-sender`), for tests in
//! this crate.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args();
    let program = args.next().unwrap_or_default();
    let service = args.next().unwrap_or_default();
    let rest = std::iter::once(format!("{program} {service}")).chain(args);
    let shutdown = as2_common::shutdown::termination_signal();
    match service.as_str() {
        "edge" => {
            let config = as2_edge::EdgeConfig::try_parse_from(rest)?;
            let telemetry = as2_common::telemetry::init_telemetry(&config.telemetry, "as2-edge")?;
            let outcome = as2_edge::run(config, shutdown).await;
            telemetry.shutdown();
            outcome
        }
        "routing" => {
            let config = as2_routing::RoutingConfig::try_parse_from(rest)?;
            let telemetry =
                as2_common::telemetry::init_telemetry(&config.telemetry, "as2-routing")?;
            let outcome = as2_routing::run(config, shutdown).await;
            telemetry.shutdown();
            outcome
        }
        "mdn" => {
            let config = as2_mdn::MdnConfig::try_parse_from(rest)?;
            let telemetry = as2_common::telemetry::init_telemetry(&config.telemetry, "as2-mdn")?;
            let outcome = as2_mdn::run(config, shutdown).await;
            telemetry.shutdown();
            outcome
        }
        "sender" => {
            let config = as2_sender::SenderConfig::try_parse_from(rest)?;
            let telemetry = as2_common::telemetry::init_telemetry(&config.telemetry, "as2-sender")?;
            let outcome = as2_sender::run(config, shutdown).await;
            telemetry.shutdown();
            outcome
        }
        other => {
            anyhow::bail!("unknown service {other:?}; expected edge, routing, mdn or sender")
        }
    }
}
