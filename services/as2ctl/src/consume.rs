//! `as2ctl consume`: read documents from a Kafka topic, as a downstream consumer would
//! (record contract: `docs/kafka-records.md`). Reads every partition from the start
//! (or the end) without joining a consumer group, so it commits nothing and disturbs no
//! real consumer.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, error::KafkaError};
use serde::Serialize;

use crate::cli::ConsumeArgs;
use crate::commands::CtlError;

/// How long fetching the topic's metadata may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest document body printed in text output; longer ones are cut.
const MAX_PRINTED_BODY: usize = 4 * 1024;

/// One record as printed.
#[derive(Debug, Serialize)]
pub struct RecordView {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key (the partnership id), when it is text.
    pub key: Option<String>,
    /// Headers whose values are text.
    pub headers: Vec<(String, String)>,
    /// The document, base64 (JSON output only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Where the document was written (`--output-dir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_to: Option<String>,
    /// The document's size in bytes.
    pub size: usize,
    #[serde(skip)]
    body: Vec<u8>,
}

/// Reads up to `--count` records (or until `--idle-secs` pass without one) and renders
/// them.
pub async fn execute(args: ConsumeArgs, json: bool) -> Result<String, CtlError> {
    let records = tokio::task::spawn_blocking(move || read_records(&args).map(|r| (r, args)))
        .await
        .map_err(|error| CtlError::Usage(format!("the consumer failed: {error}")))??;
    let (mut records, args) = records;
    if let Some(directory) = &args.output_dir {
        for record in &mut records {
            let saved = match header(record, "as2-document-location") {
                Some(_) => fetch(directory, record, &args.object_store).await?,
                None => save(directory, record)?,
            };
            record.saved_to = Some(saved);
        }
    }
    if json {
        for record in &mut records {
            record.body_base64 =
                Some(base64::engine::general_purpose::STANDARD.encode(&record.body));
        }
        return Ok(serde_json::to_string_pretty(&records)? + "\n");
    }
    Ok(render_text(&records, args.output_dir.is_some()))
}

fn kafka_error(context: &str, error: &KafkaError) -> CtlError {
    CtlError::Usage(format!("{context}: {error}"))
}

fn read_records(args: &ConsumeArgs) -> Result<Vec<RecordView>, CtlError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap_servers)
        .set("group.id", "as2ctl-consume")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    for (key, value) in &args.kafka_options {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config
        .create()
        .map_err(|error| kafka_error("cannot create the kafka consumer", &error))?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), METADATA_TIMEOUT)
        .map_err(|error| kafka_error("cannot read the topic's metadata", &error))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|topic| topic.name() == args.topic && topic.error().is_none())
        .flat_map(|topic| topic.partitions().iter().map(|partition| partition.id()))
        .collect();
    if partitions.is_empty() {
        return Err(CtlError::Usage(format!(
            "topic {:?} does not exist at {}",
            args.topic, args.bootstrap_servers
        )));
    }
    let start = if args.from_end {
        Offset::End
    } else {
        Offset::Beginning
    };
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment
            .add_partition_offset(&args.topic, partition, start)
            .map_err(|error| kafka_error("cannot assign the partitions", &error))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|error| kafka_error("cannot assign the partitions", &error))?;

    let idle = Duration::from_secs(args.idle_secs);
    let mut last_record = Instant::now();
    let mut records = Vec::new();
    while args.count.is_none_or(|count| records.len() < count) && last_record.elapsed() < idle {
        let Some(received) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = received.map_err(|error| kafka_error("reading failed", &error))?;
        last_record = Instant::now();
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .filter_map(|header| {
                        let value = std::str::from_utf8(header.value?).ok()?;
                        Some((header.key.to_owned(), value.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let body = message.payload().unwrap_or_default().to_vec();
        records.push(RecordView {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .and_then(|key| std::str::from_utf8(key).ok())
                .map(str::to_owned),
            headers,
            body_base64: None,
            saved_to: None,
            size: body.len(),
            body,
        });
    }
    // Nothing is left unread in the client's queue that could hold up its destruction.
    let _ = consumer.unassign();
    Ok(records)
}

/// Writes the record's document to `directory`, named after its filename header when it
/// has a safe one, and returns the path.
fn save(directory: &Path, record: &RecordView) -> Result<String, CtlError> {
    let path = output_path(directory, record)?;
    std::fs::write(&path, &record.body)
        .map_err(|error| CtlError::Usage(format!("cannot write {}: {error}", path.display())))?;
    Ok(path.display().to_string())
}

/// Fetches a document the record references in the object store into `directory`,
/// streaming it, and checks its size and SHA-256 against the record's.
async fn fetch(
    directory: &Path,
    record: &RecordView,
    store_args: &as2_store::ObjectStoreArgs,
) -> Result<String, CtlError> {
    let usage = |text: String| CtlError::Usage(text);
    let location = header(record, "as2-document-location").unwrap_or_default();
    let key = header(record, "as2-document-key").ok_or_else(|| {
        usage(format!(
            "record {} has a location but no key",
            record.offset
        ))
    })?;
    let config = store_args
        .reference_config(location, key)
        .map_err(|error| usage(format!("object store settings: {error}")))?;
    let store = as2_store::Store::open(&config)
        .map_err(|error| usage(format!("cannot open the object store: {error}")))?;
    let object = store
        .get(key)
        .await
        .map_err(|error| usage(format!("cannot read {location}: {error}")))?;
    let path = output_path(directory, record)?;
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|error| usage(format!("cannot write {}: {error}", path.display())))?;
    let mut hasher = openssl::hash::Hasher::new(openssl::hash::MessageDigest::sha256())
        .map_err(|error| usage(error.to_string()))?;
    let mut size = 0u64;
    let mut chunks = object.into_stream();
    while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
        let chunk = chunk.map_err(|error| usage(format!("reading {location} failed: {error}")))?;
        hasher
            .update(&chunk)
            .map_err(|error| usage(error.to_string()))?;
        size += chunk.len() as u64;
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|error| usage(format!("cannot write {}: {error}", path.display())))?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|error| usage(format!("cannot write {}: {error}", path.display())))?;
    let digest = as2_store::keys::hex(&hasher.finish().map_err(|error| usage(error.to_string()))?);
    let expected_size = header(record, "as2-document-size").and_then(|s| s.parse::<u64>().ok());
    let expected_digest = header(record, "as2-document-sha256");
    if expected_size.is_some_and(|expected| expected != size)
        || expected_digest.is_some_and(|expected| !expected.eq_ignore_ascii_case(&digest))
    {
        return Err(usage(format!(
            "{location} does not match its record ({size} bytes, SHA-256 {digest})"
        )));
    }
    Ok(path.display().to_string())
}

/// Where the record's document is written in `directory`.
fn output_path(directory: &Path, record: &RecordView) -> Result<std::path::PathBuf, CtlError> {
    std::fs::create_dir_all(directory).map_err(|error| {
        CtlError::Usage(format!("cannot create {}: {error}", directory.display()))
    })?;
    let filename = header(record, "as2-filename")
        .filter(|name| {
            !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
        .unwrap_or("document");
    Ok(directory.join(format!("{}-{}-{filename}", record.partition, record.offset)))
}

fn header<'a>(record: &'a RecordView, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn render_text(records: &[RecordView], saved: bool) -> String {
    let mut out = String::new();
    for record in records {
        out.push_str(&format!(
            "--- partition {} offset {} key {} ({} bytes)\n",
            record.partition,
            record.offset,
            record.key.as_deref().unwrap_or("-"),
            record.size
        ));
        for (name, value) in &record.headers {
            out.push_str(&format!("{name}: {value}\n"));
        }
        out.push('\n');
        if let Some(path) = &record.saved_to {
            out.push_str(&format!("(saved to {path})\n"));
        } else if header(record, "as2-document-location").is_some() {
            out.push_str("[the document is in the object store; use --output-dir to fetch it]\n");
        } else if !saved {
            let shown = &record.body[..record.body.len().min(MAX_PRINTED_BODY)];
            out.push_str(&String::from_utf8_lossy(shown));
            if record.body.len() > MAX_PRINTED_BODY {
                out.push_str("\n[... cut; use --output-dir for the whole document]");
            }
            out.push('\n');
        }
    }
    out.push_str(&format!("{} record(s)\n", records.len()));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record(filename: Option<&str>) -> RecordView {
        RecordView {
            partition: 2,
            offset: 7,
            key: Some("p".to_owned()),
            headers: filename
                .map(|name| vec![("as2-filename".to_owned(), name.to_owned())])
                .unwrap_or_default(),
            body_base64: None,
            saved_to: None,
            size: 3,
            body: b"UNB".to_vec(),
        }
    }

    #[test]
    fn saved_documents_keep_safe_filenames_only() {
        let directory = tempfile::tempdir().unwrap();
        for (filename, expected) in [
            (Some("order.edi"), "2-7-order.edi"),
            (Some("../../etc/passwd"), "2-7-document"),
            (Some(".hidden"), "2-7-document"),
            (None, "2-7-document"),
        ] {
            let saved = save(directory.path(), &record(filename)).unwrap();
            assert!(saved.ends_with(expected), "{filename:?} -> {saved}");
            assert_eq!(std::fs::read(&saved).unwrap(), b"UNB");
        }
    }

    #[test]
    fn text_output_shows_headers_and_the_document() {
        let text = render_text(&[record(Some("order.edi"))], false);
        assert!(
            text.contains("--- partition 2 offset 7 key p (3 bytes)\n"),
            "{text}"
        );
        assert!(text.contains("as2-filename: order.edi\n\nUNB\n"), "{text}");
        assert!(text.ends_with("1 record(s)\n"), "{text}");
    }
}
