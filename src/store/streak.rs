//! Logging a failure that repeats: while the database is away (a
//! PostgreSQL server restarting, a full disk) the store thread meets the same
//! error on every batch and every refill, many times a second. A [`Streak`]
//! says which of them to log at ERROR: the first of a streak, then one per
//! [`REPEAT_EVERY`] with the number seen since; the rest go to DEBUG, and the
//! end of the streak is logged once, with its length.

use std::time::{Duration, Instant};

/// Log one failure of `streak` (a [`Streak`]) now: at ERROR with
/// `repeats` when [`Streak::failed`] says so, else at DEBUG. The fields and
/// the message are `tracing`'s, as in `tracing::error!`:
/// `log_failure!(self.errors, error = %e, "cannot read the outbox")`.
macro_rules! log_failure {
    ($streak:expr, $($fields_and_message:tt)+) => {
        match $streak.failed(std::time::Instant::now()) {
            $crate::store::streak::Report::Error { repeats } => {
                tracing::error!(repeats, $($fields_and_message)+)
            }
            $crate::store::streak::Report::Quiet => tracing::debug!($($fields_and_message)+),
        }
    };
}
pub(crate) use log_failure;

/// How often a failure that goes on is logged at ERROR again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// What to do with one failure of a streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Log it at ERROR: the first of the streak (`repeats` 0), or the first
    /// after [`REPEAT_EVERY`], with the `repeats` not logged since.
    Error { repeats: u64 },
    /// Log it at DEBUG only.
    Quiet,
}

/// One kind of failure at one place (the feed's loading of one app, the
/// writer's transactions, …). Not shared between threads.
#[derive(Debug, Default)]
pub struct Streak {
    /// Failures since the last success.
    failures: u64,
    /// Failures since the last one logged at ERROR.
    unlogged: u64,
    /// When a failure was last logged at ERROR.
    logged_at: Option<Instant>,
}

impl Streak {
    /// A failure happened `now`: how to log it.
    pub fn failed(&mut self, now: Instant) -> Report {
        self.failures += 1;
        match self.logged_at {
            Some(at) if now.saturating_duration_since(at) < REPEAT_EVERY => {
                self.unlogged += 1;
                Report::Quiet
            }
            _ => {
                let repeats = std::mem::take(&mut self.unlogged);
                self.logged_at = Some(now);
                Report::Error { repeats }
            }
        }
    }

    /// It worked: the failures of the streak that just ended (0 when there
    /// was none, so nothing to log).
    pub fn succeeded(&mut self) -> u64 {
        let n = std::mem::take(&mut self.failures);
        self.unlogged = 0;
        self.logged_at = None;
        n
    }

    /// Whether the last attempt failed.
    pub fn failing(&self) -> bool {
        self.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_an_error_repeats_are_quiet_then_counted_each_minute() {
        let t0 = Instant::now();
        let mut s = Streak::default();
        assert!(!s.failing());
        assert_eq!(s.failed(t0), Report::Error { repeats: 0 });
        for i in 1..=9 {
            assert_eq!(s.failed(t0 + Duration::from_secs(i)), Report::Quiet);
        }
        assert!(s.failing());
        assert_eq!(s.failed(t0 + REPEAT_EVERY), Report::Error { repeats: 9 });
        assert_eq!(s.failed(t0 + REPEAT_EVERY + Duration::from_secs(1)), Report::Quiet);
        assert_eq!(s.succeeded(), 12);
        assert!(!s.failing());
        assert_eq!(s.succeeded(), 0, "a success after a success ends no streak");
        // A new streak starts over: its first failure is logged at once.
        assert_eq!(
            s.failed(t0 + REPEAT_EVERY + Duration::from_secs(2)),
            Report::Error { repeats: 0 }
        );
    }
}
