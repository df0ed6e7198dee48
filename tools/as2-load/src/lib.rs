//! A load generator for the AS2 gateway's inbound edge.
//!
//! It builds every message first (signing and encrypting are the sender's cost, not the
//! gateway's), then sends them over keep-alive HTTP/1.1 connections, one per concurrent
//! worker, on a single-threaded runtime so that it takes as little CPU as possible from
//! the server it shares the machine with. Each answer must be 200 with a `processed`
//! MDN; `--verify-mdn` also checks the MDN's signature and MIC.

pub mod config;
pub mod prepare;
pub mod report;
pub mod send;

use std::time::Instant;

use anyhow::Context as _;

pub use config::LoadConfig;
use prepare::{MessageTemplate, Target};
use report::Report;
use send::AnswerCheck;

/// Builds the messages, warms up, runs the measured load and reports on it.
pub fn run(config: &LoadConfig) -> anyhow::Result<Report> {
    anyhow::ensure!(config.count > 0, "--count must be at least 1");
    anyhow::ensure!(config.concurrency > 0, "--concurrency must be at least 1");
    let target = Target::from_url(&config.url)?;
    let template = MessageTemplate::load(config, target.clone())?;
    let build_threads = config
        .build_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));

    let build_started = Instant::now();
    let mut messages = template.build_all(config.warmup + config.count, build_threads)?;
    let build_secs = build_started.elapsed().as_secs_f64();
    let measured = messages.split_off(config.warmup);
    let warmup = messages;

    let check = AnswerCheck {
        expect_mdn: config.mdn != config::MdnArg::None,
        expect_signed: config.mdn == config::MdnArg::Signed,
        verify_with: config
            .verify_mdn
            .then(|| vec![template.gateway_certificate().clone()]),
        timeout: config.timeout(),
    };
    let runtime = if config.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.client_threads)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;

    runtime.block_on(async {
        if !warmup.is_empty() {
            let outcome = send::run(&target.authority, warmup, config.concurrency, &check).await;
            if !outcome.errors.is_empty() {
                anyhow::bail!("the warm-up failed: {:?}", outcome.errors);
            }
        }
        let sent = measured.len();
        let cpu_before = report::process_cpu_secs();
        let outcome = send::run(&target.authority, measured, config.concurrency, &check).await;
        let client_cpu_secs = report::process_cpu_secs() - cpu_before;
        Ok(Report::new(
            config,
            build_secs,
            sent,
            outcome,
            client_cpu_secs,
        ))
    })
}
