//! When to try again: exponential backoff with jitter.
//!
//! The sender retries sends to a partner and the MDN service retries MDN deliveries
//! with the same timing: the delay doubles from `initial` up to `max`, and a random
//! jitter spreads the retries of many messages that failed together over between half
//! and all of that delay.

use std::time::Duration;

/// Retry timing: doubling delays between `initial` and `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Longest delay (never shorter than `initial`).
    pub max: Duration,
}

impl Backoff {
    /// The delay after attempt number `attempts` (1-based) failed, before jitter:
    /// `initial * 2^(attempts - 1)`, at most `max` (or `initial` when `max` is shorter).
    pub fn base_delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.initial
            .saturating_mul(1_u32 << doublings)
            .min(self.max.max(self.initial))
    }

    /// The delay after attempt number `attempts` failed, with `jitter` in `[0, 1)`:
    /// [`Backoff::base_delay`] scaled by `0.5 + jitter / 2`, so between half and all of it.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        self.base_delay(attempts)
            .mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A random number in `[0, 1)` from OpenSSL's generator (0.5 should it fail).
pub fn random_jitter() -> f64 {
    let mut bytes = [0_u8; 4];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum() {
        let backoff = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
        };
        assert_eq!(backoff.base_delay(1), Duration::from_secs(10));
        assert_eq!(backoff.base_delay(2), Duration::from_secs(20));
        assert_eq!(backoff.base_delay(3), Duration::from_secs(40));
        assert_eq!(backoff.base_delay(4), Duration::from_secs(60));
        assert_eq!(backoff.base_delay(400), Duration::from_secs(60));
    }

    #[test]
    fn a_maximum_below_the_initial_delay_is_the_initial_delay() {
        let backoff = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(1),
        };
        assert_eq!(backoff.base_delay(3), Duration::from_secs(10));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
        };
        assert_eq!(backoff.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff.delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff.delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff.delay(4, 1.0), Duration::from_secs(5));
        assert_eq!(backoff.delay(400, 0.0), Duration::from_millis(2500));
    }

    #[test]
    fn jitter_is_between_zero_and_one() {
        for _ in 0..100 {
            let jitter = random_jitter();
            assert!((0.0..1.0).contains(&jitter));
        }
    }
}
