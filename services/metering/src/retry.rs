//! How long to wait before trying again, one rule for every retry in the service: the
//! collector's attempts on a store that is down, the alarm notifier's webhook retries.
//!
//! The wait doubles from `initial` with each failure in a row, stops growing at `max`, and a
//! random part of up to half of it is taken off ("equal jitter"): many collectors (or
//! notifiers) that lost the same database or endpoint at the same instant spread their
//! attempts instead of arriving in step, and no wait is ever longer than `max`.
//!
//! Pure arithmetic on a count and a random sample; callers own the count and the sleeping.

use std::time::Duration;

/// Doubling waits between `initial` and `max`, jittered (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure (before jitter).
    pub initial: Duration,
    /// The longest wait, whatever the number of failures.
    pub max: Duration,
}

impl Backoff {
    /// Waits from `initial` up to `max` (a `max` below `initial` is raised to it).
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The wait before retry number `retry` (0 after the first failure): `initial × 2^retry`,
    /// capped at `max`, less a random part of up to half.
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, fastrand::f64())
    }

    /// [`delay`](Self::delay) with the random sample (in `[0, 1)`) given.
    pub(crate) fn delay_with(&self, retry: u32, sample: f64) -> Duration {
        let cap = self.max.max(self.initial);
        let grown = self
            .initial
            .saturating_mul(2_u32.saturating_pow(retry.min(31)))
            .min(cap);
        grown.saturating_sub(grown.mul_f64(sample.clamp(0.0, 1.0) / 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_from_the_initial_one_up_to_the_cap() {
        let backoff = Backoff::new(100 * MS, 1000 * MS);
        assert_eq!(backoff.delay_with(0, 0.0), 100 * MS);
        assert_eq!(backoff.delay_with(1, 0.0), 200 * MS);
        assert_eq!(backoff.delay_with(3, 0.0), 800 * MS);
        assert_eq!(backoff.delay_with(4, 0.0), 1000 * MS);
        assert_eq!(backoff.delay_with(u32::MAX, 0.0), 1000 * MS);
    }

    #[test]
    fn jitter_takes_off_at_most_half_and_never_goes_past_the_cap() {
        let backoff = Backoff::new(100 * MS, 1000 * MS);
        let least = backoff.delay_with(0, 0.999_999_999);
        assert!(least >= 50 * MS && least < 51 * MS, "{least:?}");
        for retry in [0, 2, 9, 40] {
            for _ in 0..100 {
                let wait = backoff.delay(retry);
                assert!(wait <= 1000 * MS, "{wait:?}");
                assert!(wait >= backoff.delay_with(retry, 0.0) / 2, "{wait:?}");
            }
        }
    }

    #[test]
    fn a_cap_below_the_initial_wait_is_the_initial_wait() {
        let backoff = Backoff::new(500 * MS, 100 * MS);
        assert_eq!(backoff.delay_with(3, 0.0), 500 * MS);
    }
}
