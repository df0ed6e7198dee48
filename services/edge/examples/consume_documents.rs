//! Reads received documents from a partnership's Kafka topic and writes each one to a
//! directory, named after its AS2 Message-ID, with its record headers beside it as JSON.
//! Offsets are committed only after the files are written, so a crash re-delivers
//! rather than loses a document; the Message-ID makes a re-delivered document easy to
//! recognise.
//!
//! ```text
//! cargo run -p as2-edge --example consume_documents -- \
//!     --bootstrap-servers 127.0.0.1:19092 --topic acme-orders --group erp-import --out ./inbox
//! ```

#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

/// Command-line options.
#[derive(Parser)]
struct Options {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:19092")]
    bootstrap_servers: String,
    /// The partnership's topic.
    #[arg(long)]
    topic: String,
    /// Consumer group.
    #[arg(long, default_value = "as2-documents-example")]
    group: String,
    /// Where to write the documents.
    #[arg(long, default_value = "./inbox")]
    out: PathBuf,
    /// Stop after this many documents (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    max: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    std::fs::create_dir_all(&options.out)?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &options.bootstrap_servers)
        .set("group.id", &options.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&options.topic])?;
    let mut written = 0;
    while options.max == 0 || written < options.max {
        let message = consumer.recv().await?;
        let headers: BTreeMap<String, String> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        let value = String::from_utf8_lossy(header.value.unwrap_or_default());
                        (header.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let message_id = headers
            .get("as2-message-id")
            .map_or("unknown", String::as_str);
        let name: String = message_id
            .trim_matches(['<', '>'])
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::fs::write(
            options.out.join(&name),
            message.payload().unwrap_or_default(),
        )?;
        std::fs::write(
            options.out.join(format!("{name}.json")),
            serde_json::to_vec_pretty(&headers)?,
        )?;
        eprintln!(
            "{} from {:?}: {} bytes ({})",
            message_id,
            headers.get("as2-from").map_or("?", String::as_str),
            message.payload_len(),
            headers
                .get("as2-filename")
                .map_or("no filename", String::as_str),
        );
        consumer.commit_message(&message, CommitMode::Sync)?;
        written += 1;
    }
    consumer.unsubscribe();
    Ok(())
}
