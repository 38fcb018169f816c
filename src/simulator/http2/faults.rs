//! Fault injection per request: a fraction of valid requests answered
//! with `Options::fail_status`, and the refusals configured for given
//! device tokens ([`State::reject`]). The faults per connection (GOAWAY,
//! drop, stall) are in `server`.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::check::Refusal;
use super::State;
use crate::apns::Reason;

/// A small xorshift generator for `fail_rate` draws (no need for more).
pub(super) struct Coin(Mutex<u64>);

impl Coin {
    /// Seeded from the clock (odd, so never the all-zero state).
    pub(super) fn seeded_from_clock() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Self(Mutex::new(seed))
    }

    /// True with probability `p` (never for `p <= 0`).
    pub(super) fn toss(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut x = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (r as f64 / (1u64 << 53) as f64) < p
    }
}

/// With probability `fail_rate`: the configured failure (429
/// `TooManyRequests`, 500 `InternalServerError`, otherwise
/// `ServiceUnavailable` with the configured status), counted.
pub(super) fn injected_failure(state: &State) -> Result<(), Refusal> {
    if !state.coin.toss(state.options.fail_rate) {
        return Ok(());
    }
    state.failures_injected.fetch_add(1, Ordering::Relaxed);
    Err(failure(state.options.fail_status))
}

/// The refusal `fail_status` stands for.
fn failure(status: u16) -> Refusal {
    match status {
        429 => Refusal(429, Reason::TooManyRequests),
        500 => Refusal(500, Reason::InternalServerError),
        s => Refusal(s, Reason::ServiceUnavailable),
    }
}

/// The refusal configured for `token` (lower-case hex), if any.
pub(super) fn configured_refusal(state: &State, token: &str) -> Result<(), Refusal> {
    let configured = state
        .rejects
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(token)
        .cloned();
    match configured {
        Some((status, reason)) => Err(Refusal(status, Reason::parse(&reason))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coin_follows_its_probability() {
        let coin = Coin::seeded_from_clock();
        assert!(!(0..1000).any(|_| coin.toss(0.0)));
        assert!((0..1000).all(|_| coin.toss(1.0)));
        let heads = (0..10_000).filter(|_| coin.toss(0.25)).count();
        assert!((2000..3000).contains(&heads), "{heads} of 10000");
    }

    #[test]
    fn failure_statuses_carry_apples_reasons() {
        assert!(matches!(failure(429), Refusal(429, Reason::TooManyRequests)));
        assert!(matches!(failure(500), Refusal(500, Reason::InternalServerError)));
        assert!(matches!(failure(503), Refusal(503, Reason::ServiceUnavailable)));
    }
}
