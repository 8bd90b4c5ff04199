//! The reconnect policy: exponential backoff with jitter, reset after a healthy session.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// First reconnect delay.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const MAX_DELAY: Duration = Duration::from_secs(15);
/// A session that stayed up this long was healthy: the next loss starts from [`MIN_DELAY`].
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Delays between reconnect attempts: 100 ms doubling to 15 s, each with up to +100 % jitter
/// (capped at 15 s) so that many connectors do not reconnect in step after a server restart.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    max: Duration,
    iter: ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(MIN_DELAY, MAX_DELAY)
    }
}

impl Backoff {
    /// A policy from `min` doubling to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            max,
            iter: builder.build(),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.iter.next().unwrap_or(self.max).min(self.max)
    }

    /// Start again from the first delay (after a healthy session).
    pub fn reset(&mut self) {
        self.iter = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the schedule the way the supervisor does (sleeping each delay) under paused time,
    /// and checks each delay lies in [base, min(2 * base, 15 s)].
    #[tokio::test(start_paused = true)]
    async fn schedule_doubles_with_jitter_and_caps() {
        let mut b = Backoff::default();
        let start = tokio::time::Instant::now();
        let mut total = Duration::ZERO;
        let mut base = MIN_DELAY;
        for attempt in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= base.min(MAX_DELAY),
                "attempt {attempt}: {d:?} < {base:?}"
            );
            assert!(
                d <= (base * 2).min(MAX_DELAY),
                "attempt {attempt}: {d:?} > 2 * {base:?}"
            );
            tokio::time::sleep(d).await;
            total += d;
            base = (base * 2).min(MAX_DELAY);
        }
        // Each sleep is rounded up to the timer's 1 ms resolution.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= total && elapsed <= total + Duration::from_millis(20),
            "{elapsed:?} vs {total:?}"
        );
        // Far along, every delay is the cap (base 15 s, jitter clipped to 15 s).
        for _ in 0..10 {
            assert_eq!(b.next_delay(), MAX_DELAY);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..8 {
            b.next_delay();
        }
        assert!(b.next_delay() >= Duration::from_secs(12));
        b.reset();
        let first = b.next_delay();
        assert!((MIN_DELAY..=MIN_DELAY * 2).contains(&first), "{first:?}");
        let second = b.next_delay();
        assert!(
            (MIN_DELAY * 2..=MIN_DELAY * 4).contains(&second),
            "{second:?}"
        );
    }

    #[test]
    fn jitter_varies() {
        let firsts: std::collections::HashSet<Duration> =
            (0..50).map(|_| Backoff::default().next_delay()).collect();
        assert!(
            firsts.len() > 1,
            "jitter spreads the first delay: {firsts:?}"
        );
        assert!(firsts
            .iter()
            .all(|d| (MIN_DELAY..=MIN_DELAY * 2).contains(d)));
    }
}
