//! Reads received documents from a partnership's Kafka topic and writes each one to a
//! directory, named after its AS2 Message-ID, with its record headers beside it as JSON.
//! Offsets are committed only after the files are written, so a crash re-delivers
//! rather than loses a document; the Message-ID makes a re-delivered document easy to
//! recognise. A reference record's document (`as2-record-version` 2) is streamed from
//! the object store its `as2-document-location` names (credentials from the
//! `AS2_OBJECT_STORE_*` variables), never held whole.
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
    /// The object store of referenced documents (by default the one the record names).
    #[command(flatten)]
    object_store: as2_store::ObjectStoreArgs,
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
        let path = options.out.join(&name);
        match (
            headers.get("as2-document-location"),
            headers.get("as2-document-key"),
        ) {
            (Some(location), Some(key)) => {
                // A reference: stream the object into the file.
                let config = options.object_store.reference_config(location, key)?;
                let store = as2_store::Store::open(&config)?;
                let mut chunks = store.get(key).await?.into_stream();
                let mut file = tokio::fs::File::create(&path).await?;
                while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
                    tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?).await?;
                }
                tokio::io::AsyncWriteExt::flush(&mut file).await?;
            }
            _ => std::fs::write(&path, message.payload().unwrap_or_default())?,
        }
        std::fs::write(
            options.out.join(format!("{name}.json")),
            serde_json::to_vec_pretty(&headers)?,
        )?;
        eprintln!(
            "{} from {:?}: {} bytes ({})",
            message_id,
            headers.get("as2-from").map_or("?", String::as_str),
            headers
                .get("as2-document-size")
                .map_or(message.payload_len().to_string(), Clone::clone),
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
