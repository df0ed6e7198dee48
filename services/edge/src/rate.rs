//! Rate limits on the AS2 endpoint, so that one sender cannot starve the others: per
//! source address (before anything else, unknown senders included) and per partnership
//! (`SecurityPolicy.max_messages_per_minute`). Token buckets, one per key, in this
//! replica's memory: with N edge replicas behind a balancer a sender gets about N times
//! the limit, which bounds each replica's work, the thing being protected.
//!
//! A request over its limit is answered 429 with Retry-After before its body is read;
//! AS2 senders resend such a message later like any other non-2xx answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Keys tracked at most; past it the buckets that are full again (idle keys) are
/// dropped, and if none is, the whole map is cleared (a flood of fresh source
/// addresses then costs no memory, only the limit's precision).
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key: `per_minute` requests a minute, bursts of up to `per_minute`.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// A request over its limit: when the next one may come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a token is back (at least 1).
    pub retry_after_secs: u64,
}

impl RateLimiter {
    /// Takes a token of `key`'s bucket (`per_minute` a minute; 0: unlimited).
    pub fn check(&self, key: &str, per_minute: u32) -> Result<(), Limited> {
        self.check_at(key, per_minute, Instant::now())
    }

    fn check_at(&self, key: &str, per_minute: u32, now: Instant) -> Result<(), Limited> {
        if per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = match self.buckets.lock() {
            Ok(buckets) => buckets,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            buckets.retain(|_, bucket| {
                let refilled =
                    bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second;
                refilled < capacity
            });
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / per_second;
            Err(Limited {
                retry_after_secs: (wait.ceil() as u64).max(1),
            })
        }
    }
}

/// The key of a source address: IPv6 by its /64 (one host usually holds a whole /64, so
/// per-address buckets would not limit it), IPv4 by address.
pub fn source_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let segments = v6.segments();
                format!(
                    "{:x}:{:x}:{:x}:{:x}::/64",
                    segments[0], segments[1], segments[2], segments[3]
                )
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_up_to_the_limit_then_one_a_period() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("a", 3, start).is_ok());
        }
        assert_eq!(
            limiter.check_at("a", 3, start),
            Err(Limited {
                retry_after_secs: 20
            })
        );
        // Another key has its own bucket.
        assert!(limiter.check_at("b", 3, start).is_ok());
        // One token back after 20 s (3 a minute).
        let later = start + Duration::from_secs(20);
        assert!(limiter.check_at("a", 3, later).is_ok());
        assert!(limiter.check_at("a", 3, later).is_err());
        assert!(limiter.check_at("a", 0, later).is_ok(), "0 is unlimited");
    }

    #[test]
    fn sources_are_keyed_by_address_and_ipv6_by_its_64() {
        assert_eq!(source_key("192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(source_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(
            source_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            source_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_ne!(
            source_key("2001:db8:1:2::1".parse().unwrap()),
            source_key("2001:db8:1:3::1".parse().unwrap())
        );
    }
}
