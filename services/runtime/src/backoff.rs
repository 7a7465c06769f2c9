//! How long the engine waits before starting a manifold again: the base delay grown by the
//! backoff factor for each recent failure, capped, then jittered.
//!
//! Pure arithmetic on durations and a random sample, so it is tested without a clock. The
//! engine owns *when* to count a failure; this module only turns a count into a delay.

use std::time::Duration;

/// The knobs of the delay computation, copied out of the engine's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Backoff {
    /// Growth per recent failure; 1.0 keeps the delay constant.
    pub(crate) factor: f64,
    /// Upper bound of the grown delay, before jitter.
    pub(crate) max_delay: Option<Duration>,
    /// Fraction of the delay added or removed at random (0.1 = ±10%).
    pub(crate) jitter: f64,
}

impl Backoff {
    /// The delay before the next start.
    ///
    /// `base` is the error or bounce delay; `recent_failures` how many failures in a row the
    /// manifold has had (0 and 1 both mean "the base delay"); `sample` a number in `[0, 1)`
    /// that picks the jitter. A zero base stays zero: a first start is immediate.
    pub(crate) fn delay(&self, base: Duration, recent_failures: u32, sample: f64) -> Duration {
        if base.is_zero() {
            return Duration::ZERO;
        }
        // Exponents past a few thousand overflow to infinity anyway; the cap (or the saturation
        // below) takes over long before that.
        let exponent = i32::try_from(recent_failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let mut secs = base.as_secs_f64() * self.factor.powi(exponent);
        if let Some(max) = self.max_delay {
            secs = secs.min(max.as_secs_f64());
        }
        secs *= 1.0 - self.jitter + 2.0 * self.jitter * sample.clamp(0.0, 1.0);
        // Round to whole milliseconds: finer precision means nothing for a restart.
        let millis = (secs * 1000.0).round();
        if millis.is_finite() && millis < u64::MAX as f64 {
            Duration::from_millis(millis as u64)
        } else {
            // Only reachable without a cap: wait "forever" rather than overflow.
            Duration::from_secs(u64::from(u32::MAX))
        }
    }
}

/// A uniform sample in `[0, 1)` for the jitter.
pub(crate) fn jitter_sample() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOUBLING: Backoff = Backoff {
        factor: 2.0,
        max_delay: Some(Duration::from_secs(3)),
        jitter: 0.1,
    };

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn first_and_second_failure_wait_the_base_delay() {
        let base = Duration::from_secs(1);
        assert_eq!(DOUBLING.delay(base, 0, 0.5), base);
        assert_eq!(DOUBLING.delay(base, 1, 0.5), base);
        assert_eq!(DOUBLING.delay(base, 2, 0.5), Duration::from_secs(2));
    }

    #[test]
    fn delay_is_capped_before_jitter() {
        let base = Duration::from_secs(1);
        assert_eq!(DOUBLING.delay(base, 3, 0.5), Duration::from_secs(3));
        assert!((secs(DOUBLING.delay(base, 3, 0.0)) - 2.7).abs() < 1e-9);
        assert!(secs(DOUBLING.delay(base, 3, 0.999_999)) <= 3.3);
    }

    #[test]
    fn zero_base_is_immediate() {
        assert_eq!(DOUBLING.delay(Duration::ZERO, 9, 0.9), Duration::ZERO);
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let base = Duration::from_secs(1);
        assert_eq!(DOUBLING.delay(base, u32::MAX, 0.5), Duration::from_secs(3));
        let uncapped = Backoff {
            max_delay: None,
            ..DOUBLING
        };
        assert_eq!(
            uncapped.delay(base, u32::MAX, 0.5),
            Duration::from_secs(u64::from(u32::MAX))
        );
    }
}
