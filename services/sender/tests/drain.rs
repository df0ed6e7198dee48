//! SIGTERM to an `as2-sender` process while records are in flight to a slow partner
//! (every answer takes a second, one record's first answer never comes in time).
//!
//! The first sender must exit 0 within its grace period, having finished the records it
//! was sending, and its consumer group's committed offsets must cover exactly the
//! records whose outcome it recorded (their receipt is on the receipts topic), stopping
//! at the first unfinished one even when later records of that partition are done. A
//! second sender on the same group then finishes the rest: every record ends delivered,
//! under the one Message-ID derived from it.
//!
//! What repeats, and why it is allowed:
//! - at the partner, only records that were in flight at the stop and whose outcome was
//!   not recorded (here the one whose answer was held back): the second sender sends them
//!   again under the same Message-ID (RFC 4130 5.5 restart);
//! - on the receipts topic, only records the first sender finished beyond its commit
//!   position: the second sender reads them again, finds their outcome in Redis and
//!   publishes that receipt once more (receipts are at least once, consumers deduplicate
//!   on `message_id`). Every other record has exactly one receipt.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use as2_common::runtime::CLEANUP_MARGIN;
use as2_rpc::routing::v1::{MdnMode, OutboundSettings};
use as2_sender::message::{OutboundDocument, RecordSource};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::KeyMaterial;
use support::{
    OUTBOUND_TOPIC, OutboundStack, RECEIPTS_TOPIC, sender_process, signed_encrypted_sync,
};

const PARTNERSHIP: &str = "drain";
const GROUP: &str = "drain-senders";
const MESSAGE_ID_DOMAIN: &str = "drain.test";
const PARTITIONS: i32 = 2;
const RECORDS_PER_PARTITION: i64 = 8;
const MAX_IN_FLIGHT: usize = 4;
/// How long the partner takes to answer any message.
const ANSWER_DELAY: Duration = Duration::from_secs(1);
/// The record whose first send the partner holds past the grace period.
const HELD_BACK: (i32, i64) = (0, 1);
const HOLD: Duration = Duration::from_secs(120);
const GRACE_SECS: u64 = 4;

/// What the partner saw: Message-IDs in the order their request arrived, and in the order
/// it answered them.
#[derive(Clone, Debug, Default)]
struct PartnerLog {
    arrived: Vec<String>,
    answered: Vec<String>,
}

impl PartnerLog {
    fn count(ids: &[String], id: &str) -> usize {
        ids.iter().filter(|seen| *seen == id).count()
    }
}

/// An AS2 partner that asks for no MDN and answers 200 after [`ANSWER_DELAY`], except
/// the first request for `held_back`, answered only after [`HOLD`].
struct SlowPartner {
    url: String,
    log: Arc<Mutex<PartnerLog>>,
    server: tokio::task::JoinHandle<()>,
}

impl SlowPartner {
    async fn start(held_back: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/as2", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(PartnerLog::default()));
        let held_back = Arc::new(Mutex::new(Some(held_back)));
        let server = tokio::spawn({
            let log = log.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (log, held_back) = (log.clone(), held_back.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |request| {
                            answer(request, log.clone(), held_back.clone())
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Self { url, log, server }
    }

    fn log(&self) -> PartnerLog {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for SlowPartner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    request: Request<Incoming>,
    log: Arc<Mutex<PartnerLog>>,
    held_back: Arc<Mutex<Option<String>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = request
        .headers()
        .get("message-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_owned();
    let _ = request.into_body().collect().await;
    log.lock().unwrap().arrived.push(id.clone());
    let hold = {
        let mut held_back = held_back.lock().unwrap();
        held_back.as_deref() == Some(id.as_str()) && held_back.take().is_some()
    };
    tokio::time::sleep(if hold { HOLD } else { ANSWER_DELAY }).await;
    log.lock().unwrap().answered.push(id);
    Ok(Response::new(Full::new(Bytes::new())))
}

/// One record of the outbound topic and the Message-ID it must be sent under.
#[derive(Clone, Debug)]
struct OutboundRecord {
    partition: i32,
    offset: i64,
    message_id: String,
}

/// Publishes [`RECORDS_PER_PARTITION`] documents to each partition.
async fn produce_records(bootstrap: &str) -> Vec<OutboundRecord> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .unwrap();
    let mut records = Vec::new();
    for n in 0..RECORDS_PER_PARTITION {
        for partition in 0..PARTITIONS {
            let payload = format!("ISA*drain p{partition} n{n}~").into_bytes();
            let headers = [
                ("as2-partnership-id", PARTNERSHIP),
                ("content-type", "application/edi-x12"),
            ];
            let mut kafka_headers = OwnedHeaders::new();
            for (key, value) in headers {
                kafka_headers = kafka_headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let delivery = producer
                .send(
                    FutureRecord::to(OUTBOUND_TOPIC)
                        .partition(partition)
                        .key(PARTNERSHIP)
                        .payload(&payload)
                        .headers(kafka_headers),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            let source = RecordSource {
                topic: OUTBOUND_TOPIC.to_owned(),
                partition: delivery.partition,
                offset: delivery.offset,
            };
            let headers: Vec<(String, Vec<u8>)> = headers
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.as_bytes().to_vec()))
                .collect();
            let message_id = OutboundDocument::from_record(source, &headers, &payload)
                .unwrap()
                .message_id(MESSAGE_ID_DOMAIN)
                .unwrap()
                .original()
                .to_owned();
            records.push(OutboundRecord {
                partition: delivery.partition,
                offset: delivery.offset,
                message_id,
            });
        }
    }
    records.sort_by_key(|record| (record.partition, record.offset));
    for partition in 0..PARTITIONS {
        let offsets: Vec<i64> = records
            .iter()
            .filter(|record| record.partition == partition)
            .map(|record| record.offset)
            .collect();
        assert_eq!(
            offsets,
            (0..RECORDS_PER_PARTITION).collect::<Vec<_>>(),
            "the outbound topic was not empty"
        );
    }
    records
}

/// One receipt: which record it answers, under which Message-ID, with what outcome.
#[derive(Clone, Debug)]
struct Receipt {
    partition: i32,
    offset: i64,
    message_id: String,
    outcome: String,
}

/// Header of the test's own marker records on the receipts topic.
const MARKER_HEADER: &str = "drain-test-marker";

/// Every receipt on the receipts topic so far. The broker's high watermark can lag
/// behind the records it already serves, so the end is a marker record this test
/// appends (after the receipts the senders had acknowledged): everything before its
/// offset is read.
async fn read_receipts(bootstrap: &str) -> Vec<Receipt> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .unwrap();
    let marker = producer
        .send(
            FutureRecord::to(RECEIPTS_TOPIC)
                .partition(0)
                .key("marker")
                .payload("{}")
                .headers(OwnedHeaders::new().insert(Header {
                    key: MARKER_HEADER,
                    value: Some("1"),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let bootstrap = bootstrap.to_owned();
    blocking(move || read_receipts_before(&bootstrap, marker.offset)).await
}

fn read_receipts_before(bootstrap: &str, end: i64) -> Vec<Receipt> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "drain-test-receipts-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(RECEIPTS_TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut receipts = Vec::new();
    let mut next = 0;
    while next < end {
        assert!(
            Instant::now() < deadline,
            "the receipts topic has {end} records before the marker, only {next} could be read"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.unwrap();
        next = message.offset() + 1;
        let is_marker = message
            .headers()
            .is_some_and(|headers| headers.iter().any(|header| header.key == MARKER_HEADER));
        if is_marker || message.offset() >= end {
            continue;
        }
        let receipt: serde_json::Value =
            serde_json::from_slice(message.payload().unwrap()).unwrap();
        receipts.push(Receipt {
            partition: i32::try_from(receipt["source"]["partition"].as_i64().unwrap()).unwrap(),
            offset: receipt["source"]["offset"].as_i64().unwrap(),
            message_id: receipt["message_id"].as_str().unwrap().to_owned(),
            outcome: receipt["outcome"].as_str().unwrap().to_owned(),
        });
    }
    receipts
}

/// The offsets the sender group committed on each outbound partition (0 when none).
fn committed_offsets(bootstrap: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(OUTBOUND_TOPIC, partition);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            match committed
                .find_partition(OUTBOUND_TOPIC, partition)
                .unwrap()
                .offset()
            {
                Offset::Offset(offset) => offset,
                Offset::Invalid => 0,
                other => panic!("partition {partition} has the committed offset {other:?}"),
            }
        })
        .collect()
}

fn spawn_sender(stack: &OutboundStack, log: &Path) -> Child {
    sender_process(stack, log)
        .env("AS2_KAFKA_OUTBOUND_TOPIC", OUTBOUND_TOPIC)
        .env("AS2_KAFKA_CONSUMER_GROUP", GROUP)
        .env("AS2_KAFKA_RECEIPTS_TOPIC", RECEIPTS_TOPIC)
        .env("AS2_MESSAGE_ID_DOMAIN", MESSAGE_ID_DOMAIN)
        .env("AS2_SENDER_MAX_IN_FLIGHT", MAX_IN_FLIGHT.to_string())
        // Every record is of one partnership: it may have all the slots.
        .env(
            "AS2_SENDER_MAX_IN_FLIGHT_PER_PARTNERSHIP",
            MAX_IN_FLIGHT.to_string(),
        )
        .env("AS2_SENDER_SWEEP_INTERVAL_MS", "200")
        .env("AS2_SHUTDOWN_DELAY_SECS", "0")
        .env("AS2_SHUTDOWN_GRACE_SECS", GRACE_SECS.to_string())
        .env("AS2_LOG_FILTER", "info")
        .spawn()
        .unwrap()
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Sends SIGTERM and waits (at most `limit`) for the process to end; kills it after that.
async fn terminate(mut sender: Child, limit: Duration, log: &Path) -> (ExitStatus, Duration) {
    let terminated = Command::new("kill")
        .args(["-TERM", &sender.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success(), "kill -TERM failed");
    let sent = Instant::now();
    loop {
        if let Some(status) = sender.try_wait().unwrap() {
            return (status, sent.elapsed());
        }
        if sent.elapsed() > limit {
            let _ = sender.kill();
            let _ = sender.wait();
            panic!(
                "the sender was still running {} s after SIGTERM:\n{}",
                limit.as_secs(),
                log_text(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_records_and_commits_only_up_to_the_first_unfinished_one() {
    let stack = OutboundStack::start().await;
    let bootstrap = stack.broker.bootstrap_servers();
    let records = produce_records(&bootstrap).await;
    let id_of = |partition: i32, offset: i64| -> String {
        records
            .iter()
            .find(|record| (record.partition, record.offset) == (partition, offset))
            .unwrap()
            .message_id
            .clone()
    };
    let held_back = id_of(HELD_BACK.0, HELD_BACK.1);
    let after_held_back = id_of(HELD_BACK.0, HELD_BACK.1 + 1);
    let partner = SlowPartner::start(held_back.clone()).await;
    let partner_key = KeyMaterial::generate("slow partner");
    stack
        .partnership(
            PARTNERSHIP,
            "slow partner",
            &partner_key.cert_pem,
            &partner.url,
            OutboundSettings {
                mdn_mode: MdnMode::Unspecified.into(),
                request_signed_mdn: false,
                timeout_seconds: 60,
                ..signed_encrypted_sync()
            },
        )
        .await;
    let logs = tempfile::tempdir().unwrap();
    let (first_log, second_log) = (
        logs.path().join("first.log"),
        logs.path().join("second.log"),
    );

    // The first sender runs until the held-back record is at the partner, a later record
    // of its partition is answered, and other records are in flight.
    let first = spawn_sender(&stack, &first_log);
    let started = Instant::now();
    let in_flight_at_stop = loop {
        let log = partner.log();
        let in_flight: BTreeSet<String> = log
            .arrived
            .iter()
            .filter(|id| **id != held_back && !log.answered.contains(id))
            .cloned()
            .collect();
        if log.arrived.contains(&held_back)
            && log.answered.contains(&after_held_back)
            && !in_flight.is_empty()
        {
            break in_flight;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the first sender never had the held-back record and others in flight (partner saw {log:?}):\n{}",
            log_text(&first_log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The held-back record keeps the sender busy for the whole grace period; after it,
    // the runtime gives the consumer its cleanup margin, then flushes and exits.
    let grace = Duration::from_secs(GRACE_SECS);
    let stop_limit = grace + CLEANUP_MARGIN + Duration::from_secs(4);
    let (status, took) = terminate(first, Duration::from_secs(30), &first_log).await;
    assert!(
        status.success(),
        "the first sender exited with {status} after SIGTERM:\n{}",
        log_text(&first_log)
    );
    assert!(
        took >= grace && took <= stop_limit,
        "the first sender stopped {took:?} after SIGTERM: it must give the record in flight the grace period ({grace:?}) and stop within {stop_limit:?}:\n{}",
        log_text(&first_log)
    );
    let partner_after_first = partner.log();

    // What the first sender recorded, and what its group committed.
    let receipts = read_receipts(&bootstrap).await;
    let committed = blocking({
        let bootstrap = bootstrap.clone();
        move || committed_offsets(&bootstrap)
    })
    .await;
    let finished_by_first: BTreeSet<(i32, i64)> = receipts
        .iter()
        .map(|receipt| (receipt.partition, receipt.offset))
        .collect();
    for id in &in_flight_at_stop {
        assert!(
            receipts.iter().any(|receipt| receipt.message_id == *id),
            "{id} was in flight at SIGTERM and answered within the grace period, but the first sender recorded no outcome for it:\n{}",
            log_text(&first_log)
        );
    }
    assert!(
        !finished_by_first.contains(&HELD_BACK),
        "the held-back record got a receipt although the partner never answered it"
    );
    for partition in 0..PARTITIONS {
        let first_unfinished = first_unfinished(&finished_by_first, partition);
        let done: Vec<i64> = finished_by_first
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, offset)| *offset)
            .collect();
        assert_eq!(
            committed[partition as usize],
            first_unfinished,
            "partition {partition}: the group committed {} but the records with a recorded outcome are {done:?}, so the commit must be the first unfinished offset {first_unfinished}:\n{}",
            committed[partition as usize],
            log_text(&first_log)
        );
    }
    assert_eq!(
        committed[HELD_BACK.0 as usize], HELD_BACK.1,
        "the commit did not stop at the held-back record"
    );
    assert!(
        finished_by_first.contains(&(HELD_BACK.0, HELD_BACK.1 + 1)),
        "no record after the held-back one was finished, the test proves nothing"
    );
    assert!(
        finished_by_first.len() + 1 < records.len(),
        "the first sender left nothing but the held-back record for the second"
    );

    // The second sender on the same group finishes the rest.
    let second = spawn_sender(&stack, &second_log);
    let started = Instant::now();
    loop {
        let receipts = read_receipts(&bootstrap).await;
        let delivered: BTreeSet<&str> = receipts
            .iter()
            .filter(|receipt| receipt.outcome == "delivered")
            .map(|receipt| receipt.message_id.as_str())
            .collect();
        let missing: Vec<&OutboundRecord> = records
            .iter()
            .filter(|record| !delivered.contains(record.message_id.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the second sender did not deliver {missing:?}:\n{}",
            log_text(&second_log)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, _) = terminate(second, Duration::from_secs(30), &second_log).await;
    assert!(
        status.success(),
        "the second sender exited with {status}:\n{}",
        log_text(&second_log)
    );
    let committed = blocking({
        let bootstrap = bootstrap.clone();
        move || committed_offsets(&bootstrap)
    })
    .await;
    assert_eq!(
        committed,
        vec![RECORDS_PER_PARTITION; PARTITIONS as usize],
        "after the second sender every record is finished, so every partition is committed to its end"
    );

    // Every record: one Message-ID, delivered; repeats only where the doc comment allows.
    let receipts = read_receipts(&bootstrap).await;
    let partner_log = partner.log();
    let mut receipts_by_id: BTreeMap<&str, Vec<&Receipt>> = BTreeMap::new();
    for receipt in &receipts {
        receipts_by_id
            .entry(receipt.message_id.as_str())
            .or_default()
            .push(receipt);
    }
    assert_eq!(
        receipts_by_id.len(),
        records.len(),
        "receipts under Message-IDs no record has, or records without one: {receipts:#?}"
    );
    for record in &records {
        let key = (record.partition, record.offset);
        let id = record.message_id.as_str();
        let of_record = receipts_by_id.get(id).cloned().unwrap_or_default();
        assert!(
            of_record
                .iter()
                .all(|receipt| receipt.outcome == "delivered"
                    && (receipt.partition, receipt.offset) == key),
            "record {key:?} ({id}) has receipts {of_record:?}"
        );
        let reread_after_finishing = finished_by_first.contains(&key)
            && key.1 >= first_unfinished(&finished_by_first, key.0);
        let allowed_receipts = if reread_after_finishing { 2 } else { 1 };
        assert!(
            (1..=allowed_receipts).contains(&of_record.len()),
            "record {key:?} ({id}) has {} receipts, {allowed_receipts} at most are allowed",
            of_record.len()
        );
        let sent_before = PartnerLog::count(&partner_after_first.arrived, id);
        let sent_after = PartnerLog::count(&partner_log.arrived, id) - sent_before;
        if finished_by_first.contains(&key) {
            assert_eq!(
                (sent_before, sent_after),
                (1, 0),
                "record {key:?} ({id}) was finished by the first sender: sent once, never again"
            );
        } else {
            assert!(
                sent_before <= 1 && sent_after == 1,
                "record {key:?} ({id}) was unfinished at the stop: sent {sent_before} time(s) before it and {sent_after} after, expected at most once (in flight) and then exactly once"
            );
        }
    }
    assert!(
        partner_log
            .arrived
            .iter()
            .all(|id| records.iter().any(|record| record.message_id == *id)),
        "the partner got a Message-ID no record has: {:?}",
        partner_log.arrived
    );
}

/// The first offset of `partition` without a recorded outcome.
fn first_unfinished(finished: &BTreeSet<(i32, i64)>, partition: i32) -> i64 {
    (0..RECORDS_PER_PARTITION)
        .find(|offset| !finished.contains(&(partition, *offset)))
        .unwrap_or(RECORDS_PER_PARTITION)
}
