//! `as2-otlp-sink [LISTEN]`: an OTLP/gRPC trace endpoint that counts and discards
//! spans (default `127.0.0.1:4317`), for measuring the cost of trace export. Prints
//! the number of spans received when it stops (SIGTERM or SIGINT).

use as2_system_tests::otlp_sink::{SinkState, serve};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let state = SinkState::new(false);
    serve(
        listener,
        state.clone(),
        as2_common::shutdown::termination_signal(),
    )
    .await?;
    println!("spans received: {}", state.count());
    Ok(())
}
