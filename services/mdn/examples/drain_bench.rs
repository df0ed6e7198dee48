//! Benchmark: how fast MDN service replicas drain a queue of delivery jobs.
//!
//! Starts a Redis server, a local MDN receiver that accepts everything, and an
//! API-only replica (no workers) that takes `--jobs` enqueue requests over gRPC. Then
//! it starts `--replicas` delivering replicas (in this process, each with its own
//! Redis connections, consumer name and `--workers` workers) and measures the time
//! until the receiver has every MDN. Each replica count runs on its own key prefix.
//!
//! ```text
//! cargo run --release -p as2-mdn --example drain_bench -- --jobs 10000 --replicas 1,2 --workers 32
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use support::{Receiver, RunningMdn, enqueue_request, fast_config};

struct Options {
    jobs: usize,
    replicas: Vec<usize>,
    workers: usize,
}

fn options() -> Options {
    let mut options = Options {
        jobs: 10_000,
        replicas: vec![1, 2],
        workers: 32,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--jobs" => options.jobs = value.parse().unwrap(),
            "--workers" => options.workers = value.parse().unwrap(),
            "--replicas" => {
                options.replicas = value.split(',').map(|n| n.parse().unwrap()).collect();
            }
            other => panic!("unknown option {other}"),
        }
    }
    options
}

#[tokio::main]
async fn main() {
    let options = options();
    let redis = as2_testkit::RedisServer::start();
    println!(
        "jobs={} workers/replica={} (build: {})",
        options.jobs,
        options.workers,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    for &replicas in &options.replicas {
        let prefix = format!("bench{replicas}");
        let receiver = Receiver::start().await;

        let mut api_config = fast_config(&redis.url(), &prefix);
        api_config.delivery.workers = 0;
        let api = RunningMdn::start(api_config).await;
        let client = api.client().await;
        let url = receiver.url();
        let started = Instant::now();
        futures::stream::iter(0..options.jobs)
            .map(|index| {
                let mut client = client.clone();
                let request = enqueue_request(&format!("bench-{replicas}-{index}"), &url);
                async move { client.enqueue_mdn_delivery(request).await.unwrap() }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        let enqueue_secs = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let mut running = Vec::new();
        for _ in 0..replicas {
            let mut config = fast_config(&redis.url(), &prefix);
            config.delivery.workers = options.workers;
            config.delivery.attempt_timeout_ms = 10_000;
            config.delivery.reclaim_idle_ms = 30_000;
            running.push(RunningMdn::start(config).await);
        }
        receiver
            .wait_until(Duration::from_secs(600), |receiver| {
                receiver.accepted().len() >= options.jobs
            })
            .await;
        let drain_secs = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let jobs = options.jobs as f64;
        println!(
            "replicas={replicas}: enqueued {} in {enqueue_secs:.2}s ({:.0}/s); drained in {drain_secs:.2}s ({:.0} MDNs/s); duplicates={}",
            options.jobs,
            jobs / enqueue_secs,
            jobs / drain_secs,
            receiver.accepted().len() - options.jobs,
        );
        for replica in running {
            replica.stop().await;
        }
        api.stop().await;
    }
}
