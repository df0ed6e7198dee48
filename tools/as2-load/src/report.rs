//! The report of a run: throughput, latency percentiles, errors, the client's own CPU.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::config::{CipherArg, DigestArg, LoadConfig, MdnArg};
use crate::send::RunOutcome;

/// Everything a run measured, as printed (text or JSON).
#[derive(Debug, Serialize)]
pub struct Report {
    /// What was sent.
    pub scenario: Scenario,
    /// Seconds spent building the messages (not part of the measurement).
    pub build_secs: f64,
    /// Requests sent in the measured run.
    pub sent: usize,
    /// Requests answered 200 with a `processed` MDN (and a valid one, with `--verify-mdn`).
    pub ok: u64,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Seconds from the first request to the last answer.
    pub elapsed_secs: f64,
    /// Successful messages per second.
    pub messages_per_sec: f64,
    /// Payload (business document) megabytes (10^6 bytes) per second of successful messages.
    pub payload_mb_per_sec: f64,
    /// Request body (signed, encrypted MIME) megabytes (10^6 bytes) per second.
    pub wire_mb_per_sec: f64,
    /// Latency of successful requests, in milliseconds.
    pub latency_ms: Latency,
    /// CPU seconds the load generator itself used during the run (user + system).
    pub client_cpu_secs: f64,
}

/// What was sent.
#[derive(Debug, Serialize)]
pub struct Scenario {
    /// The endpoint.
    pub url: String,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Concurrent connections.
    pub concurrency: usize,
    /// Signature digest.
    pub digest: DigestArg,
    /// Content cipher.
    pub cipher: CipherArg,
    /// MDN requested.
    pub mdn: MdnArg,
    /// Whether MDNs were fully verified.
    pub verify_mdn: bool,
}

impl Scenario {
    /// The scenario of `config`.
    pub fn of(config: &LoadConfig) -> Self {
        Self {
            url: config.url.clone(),
            payload_bytes: config.size,
            concurrency: config.concurrency,
            digest: config.digest,
            cipher: config.cipher,
            mdn: config.mdn,
            verify_mdn: config.verify_mdn,
        }
    }
}

/// Latency percentiles in milliseconds (nearest rank); all zero when nothing succeeded.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles of `latencies` (sorted in place).
    pub fn of(latencies: &mut [Duration]) -> Self {
        if latencies.is_empty() {
            return Self::default();
        }
        latencies.sort_unstable();
        let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
        let rank = |fraction: f64| {
            let index = (fraction * latencies.len() as f64).ceil() as usize;
            millis(latencies[index.clamp(1, latencies.len()) - 1])
        };
        let total: Duration = latencies.iter().sum();
        Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: millis(latencies[latencies.len() - 1]),
            mean: millis(total) / latencies.len() as f64,
        }
    }
}

impl Report {
    /// Builds the report of a measured run.
    pub fn new(
        config: &LoadConfig,
        build_secs: f64,
        sent: usize,
        mut outcome: RunOutcome,
        client_cpu_secs: f64,
    ) -> Self {
        let ok = outcome.latencies.len() as u64;
        let elapsed_secs = outcome.elapsed.as_secs_f64().max(f64::EPSILON);
        Self {
            scenario: Scenario::of(config),
            build_secs,
            sent,
            ok,
            errors: std::mem::take(&mut outcome.errors),
            elapsed_secs,
            messages_per_sec: ok as f64 / elapsed_secs,
            payload_mb_per_sec: (ok as f64 * config.size as f64) / elapsed_secs / 1e6,
            wire_mb_per_sec: outcome.body_bytes as f64 / elapsed_secs / 1e6,
            latency_ms: Latency::of(&mut outcome.latencies),
            client_cpu_secs,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scenario = &self.scenario;
        writeln!(
            f,
            "as2-load: {} bytes, sign {:?}, encrypt {:?}, mdn {:?}, concurrency {} -> {}",
            scenario.payload_bytes,
            scenario.digest,
            scenario.cipher,
            scenario.mdn,
            scenario.concurrency,
            scenario.url
        )?;
        writeln!(
            f,
            "  built        {} messages in {:.1} s (not measured)",
            self.sent, self.build_secs
        )?;
        writeln!(
            f,
            "  sent         {} in {:.2} s, {} ok, {} failed",
            self.sent,
            self.elapsed_secs,
            self.ok,
            self.sent as u64 - self.ok
        )?;
        writeln!(
            f,
            "  throughput   {:.1} messages/s, {:.1} MB/s payload, {:.1} MB/s on the wire",
            self.messages_per_sec, self.payload_mb_per_sec, self.wire_mb_per_sec
        )?;
        let latency = &self.latency_ms;
        writeln!(
            f,
            "  latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}",
            latency.p50, latency.p90, latency.p99, latency.max, latency.mean
        )?;
        writeln!(
            f,
            "  client cpu   {:.2} s ({:.0}% of one core)",
            self.client_cpu_secs,
            100.0 * self.client_cpu_secs / self.elapsed_secs
        )?;
        for (kind, count) in &self.errors {
            writeln!(f, "  error        {count:>6} x {kind}")?;
        }
        Ok(())
    }
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`;
/// zero where that file does not exist.
pub fn process_cpu_secs() -> f64 {
    // Fields 14 and 15 (utime, stime) in clock ticks; Linux reports them in USER_HZ = 100.
    const TICKS_PER_SEC: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; count fields after its closing paren.
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or_default()
    };
    // after_name starts at field 3, so utime (14) is index 11 and stime (15) index 12.
    (ticks(11) + ticks(12)) / TICKS_PER_SEC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut latencies: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let latency = Latency::of(&mut latencies);
        assert_eq!(latency.p50, 50.0);
        assert_eq!(latency.p90, 90.0);
        assert_eq!(latency.p99, 99.0);
        assert_eq!(latency.max, 100.0);
        assert!((latency.mean - 50.5).abs() < 1e-9);
        assert_eq!(Latency::of(&mut []).p99, 0.0);
        assert_eq!(Latency::of(&mut [Duration::from_millis(3)]).p50, 3.0);
    }
}
