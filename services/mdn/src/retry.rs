//! When to try again: exponential backoff with jitter ([`as2_partner::retry`]), bounded
//! by attempts and age.

use std::time::Duration;

use as2_partner::retry::Backoff;
pub use as2_partner::retry::random_jitter;

use crate::config::DeliveryConfig;

/// The retry policy of MDN deliveries.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// How long after the enqueue attempts may still start.
    pub max_age: Duration,
    /// Delays between attempts.
    pub backoff: Backoff,
}

/// What follows a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Try again at this time (Unix ms).
    RetryAt(i64),
    /// Give up: the attempts or the age are used up.
    GiveUp,
}

impl RetryPolicy {
    /// The policy that `config` describes.
    pub fn from_config(config: &DeliveryConfig) -> Self {
        Self {
            max_attempts: config.max_attempts.max(1),
            max_age: Duration::from_secs(config.max_age_secs),
            backoff: Backoff {
                initial: Duration::from_millis(config.initial_backoff_ms),
                max: Duration::from_millis(config.max_backoff_ms.max(config.initial_backoff_ms)),
            },
        }
    }

    /// What follows when attempt number `attempts` failed at `now_ms` for a delivery
    /// enqueued at `enqueued_at_ms`. `jitter` in `[0, 1)` spreads retries of many
    /// deliveries that failed together: the delay is between half and all of the base
    /// delay.
    pub fn after_failure(
        &self,
        attempts: u32,
        enqueued_at_ms: i64,
        now_ms: i64,
        jitter: f64,
    ) -> NextStep {
        if attempts >= self.max_attempts {
            return NextStep::GiveUp;
        }
        let delay = self.backoff.delay(attempts, jitter);
        let due_ms = now_ms.saturating_add(millis(delay));
        let deadline_ms = enqueued_at_ms.saturating_add(millis(self.max_age));
        if due_ms > deadline_ms {
            return NextStep::GiveUp;
        }
        NextStep::RetryAt(due_ms)
    }

    /// Whether a delivery enqueued at `enqueued_at_ms` is too old for another attempt.
    pub fn is_expired(&self, enqueued_at_ms: i64, now_ms: i64) -> bool {
        now_ms > enqueued_at_ms.saturating_add(millis(self.max_age))
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            max_age: Duration::from_secs(3600),
            backoff: Backoff {
                initial: Duration::from_secs(10),
                max: Duration::from_secs(60),
            },
        }
    }

    #[test]
    fn jitter_keeps_the_delay_between_half_and_all() {
        let policy = policy();
        assert_eq!(
            policy.after_failure(1, 0, 1_000, 0.0),
            NextStep::RetryAt(6_000)
        );
        assert_eq!(
            policy.after_failure(1, 0, 1_000, 0.999_999),
            NextStep::RetryAt(10_999)
        );
    }

    #[test]
    fn attempts_and_age_are_bounded() {
        let policy = policy();
        assert_eq!(policy.after_failure(5, 0, 1_000, 0.5), NextStep::GiveUp);
        assert!(matches!(
            policy.after_failure(4, 0, 1_000, 0.5),
            NextStep::RetryAt(_)
        ));
        let almost_an_hour = 3_595_000;
        assert_eq!(
            policy.after_failure(1, 0, almost_an_hour, 0.9),
            NextStep::GiveUp
        );
        assert!(policy.is_expired(0, 3_600_001));
        assert!(!policy.is_expired(0, 3_600_000));
    }
}
