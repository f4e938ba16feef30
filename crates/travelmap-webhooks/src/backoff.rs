//! How long to wait before trying an event again: exponential, capped, with jitter.
//!
//! The pause doubles with every failure from `base` up to `cap`, and is then drawn at random
//! from the upper half of that span, so that receivers coming back after an outage are not hit
//! by every sender at the same instant, while no pause is shorter than half the nominal one.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The nominal pause after the first failure.
    pub base: Duration,
    /// The longest nominal pause.
    pub cap: Duration,
}

impl Default for Backoff {
    /// 1 s, 2 s, 4 s, ... up to 15 minutes.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(15 * 60),
        }
    }
}

impl Backoff {
    /// The nominal pause after `failures` failures in a row (at least 1): `base · 2^(failures-1)`,
    /// at most `cap`.
    pub fn nominal(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }

    /// The pause to take after `failures` failures in a row: a random point in the upper half
    /// of the nominal pause.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_at(failures, rand::random::<f64>())
    }

    /// The pause for a given draw `unit` in `[0, 1)`.
    pub fn delay_at(&self, failures: u32, unit: f64) -> Duration {
        let nominal = self.nominal(failures);
        nominal / 2 + (nominal / 2).mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nominal_pause_doubles_up_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        };
        let pauses: Vec<u64> = (1..=8).map(|n| backoff.nominal(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff.nominal(0), Duration::from_secs(1));
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_nominal_pause() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        };
        for failures in 1..12 {
            let nominal = backoff.nominal(failures);
            assert_eq!(backoff.delay_at(failures, 0.0), nominal / 2);
            assert_eq!(backoff.delay_at(failures, 1.0), nominal);
            for _ in 0..100 {
                let delay = backoff.delay(failures);
                assert!(
                    delay >= nominal / 2 && delay <= nominal,
                    "{delay:?} of {nominal:?}"
                );
            }
        }
    }

    #[test]
    fn draws_spread_the_pauses() {
        let backoff = Backoff::default();
        let draws: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff.delay(5)).collect();
        assert!(draws.len() > 1, "twenty draws gave one pause");
    }
}
