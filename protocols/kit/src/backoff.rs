//! Capped exponential backoff with jitter: the one reconnect/restart policy
//! shared by adapters' supervision and every outbound connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Delays `base`, `2·base`, `4·base`… capped at `max`, each scaled by a
/// random factor in [0.5, 1.0] so that many clients do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff whose first delay is at most `base` and whose delays never
    /// exceed `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Self {
            base,
            max,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.max);
        // xorshift64*: jitter needs no cryptographic randomness.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11; // 53 bits
        let factor = 0.5 + 0.5 * (r as f64 / (1u64 << 53) as f64);
        capped.mul_f64(factor)
    }

    /// The longest delay this backoff gives.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay before attempt `attempt` (1 = the first retry) of
    /// something that keeps its own attempt count (a notification's
    /// retries): `base · 2^(attempt-1)`, capped at `max`, then
    /// [`Backoff::jitter`]ed.
    pub fn delay_for(base: Duration, max: Duration, attempt: u32) -> Duration {
        let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        Self::jitter(exp.min(max))
    }

    /// `d` scaled by a random factor in [0.5, 1.0], for one-off delays
    /// (per-notification retries) that keep no backoff state.
    pub fn jitter(d: Duration) -> Duration {
        use std::sync::atomic::{AtomicU64, Ordering};
        static STATE: AtomicU64 = AtomicU64::new(0);
        let step = |mut x: u64| {
            if x == 0 {
                x = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x9e37_79b9_7f4a_7c15)
                    | 1;
            }
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        // One atomic step, so tasks retrying at the same moment draw
        // different factors.
        let prev = STATE
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .unwrap_or(0);
        let x = step(prev);
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        d.mul_f64(0.5 + 0.5 * (r as f64 / (1u64 << 53) as f64))
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        for x in &d[5..] {
            assert!(*x >= Duration::from_secs(1) && *x <= Duration::from_secs(2));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        let j: Vec<Duration> = (0..20).map(|_| Backoff::jitter(Duration::from_secs(1))).collect();
        assert!(j
            .iter()
            .all(|d| *d >= Duration::from_millis(500) && *d <= Duration::from_secs(1)));
        assert!(j.iter().any(|d| *d != j[0]), "jitter varies");
        let base = Duration::from_millis(200);
        let max = Duration::from_secs(60);
        let d1 = Backoff::delay_for(base, max, 1);
        assert!(d1 >= Duration::from_millis(100) && d1 <= base, "{d1:?}");
        let d4 = Backoff::delay_for(base, max, 4);
        assert!(
            d4 >= Duration::from_millis(800) && d4 <= Duration::from_millis(1600),
            "{d4:?}"
        );
        let d30 = Backoff::delay_for(base, max, 30);
        assert!(d30 >= Duration::from_secs(30) && d30 <= max, "{d30:?}");
    }
}
