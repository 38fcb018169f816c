//! What bounds a line-protocol connection: its timeouts (AUTH, idle, a
//! started line) and the listener's input budget.
//!
//! The timeouts are pure arithmetic on instants ([`Timeouts::check`]): the
//! connection arms one timer at the returned instant and asks again when it
//! fires. The budget is a semaphore of bytes shared by every connection of
//! a listener: a line holds [`cost`] bytes of it from the moment it is read
//! until the core has answered it, and a connection reads nothing more
//! while the budget is spent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::throttle::AuthThrottle;
use crate::LineConfig;

/// Budget bytes charged per command on top of its line: the event, its
/// envelope and reply channel, the reply future.
pub const COMMAND_OVERHEAD: usize = 512;

/// What the budget charges for a line of `len` bytes (terminator excluded).
pub fn cost(len: usize) -> u32 {
    u32::try_from(len + 1 + COMMAND_OVERHEAD).unwrap_or(u32::MAX)
}

/// What the connections of one listener share.
#[derive(Debug)]
pub struct Shared {
    /// Bytes of input that may be held at once (read lines not answered yet).
    pub budget: Arc<Semaphore>,
    /// Failed AUTH attempts per peer address.
    pub throttle: AuthThrottle,
}

impl Shared {
    /// The shared limits for a listener configured by `config`.
    pub fn new(config: &LineConfig) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(config.input_budget)),
            throttle: AuthThrottle::default(),
        }
    }
}

/// Why a connection timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A listener with a secret got no `AUTH` in time.
    Auth(Duration),
    /// No complete command (and nothing waiting for an answer) for this long.
    Idle(Duration),
    /// A started line was not completed in time.
    Line(Duration),
}

/// Where a connection stands, for [`Timeouts::check`].
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    /// When the connection was accepted.
    pub opened: Instant,
    /// `AUTH` succeeded, or none is required.
    pub authed: bool,
    /// The last complete command read or reply written.
    pub last_active: Instant,
    /// When the first byte of the line being read arrived (`None` between lines).
    pub line_started: Option<Instant>,
    /// Commands wait for an answer or for their turn: the client waits on us.
    pub busy: bool,
    /// An `AUTH` waits for its turn (the client did send it in time).
    pub auth_waiting: bool,
}

/// A connection's timeouts, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `auth_timeout`, when a secret is configured.
    pub auth: Option<Duration>,
    /// `idle_timeout`, unless 0.
    pub idle: Option<Duration>,
    /// `line_timeout`.
    pub line: Duration,
}

impl Timeouts {
    /// The timeouts of a connection to a listener configured by `config`.
    pub fn new(config: &LineConfig) -> Self {
        Self {
            auth: config
                .secret
                .is_some()
                .then(|| Duration::from_secs(config.auth_timeout)),
            idle: (config.idle_timeout > 0).then(|| Duration::from_secs(config.idle_timeout)),
            line: Duration::from_secs(config.line_timeout),
        }
    }

    /// At `now`: the timeout that expired, or when to check again (the
    /// earliest instant one could expire; never later than a full period
    /// from now, so a line started after this call is caught in time).
    pub fn check(&self, now: Instant, a: &Activity) -> Result<Instant, Expired> {
        let mut next = now + self.line;
        let mut due = |deadline: Instant, why: Expired| {
            if deadline <= now {
                return Err(why);
            }
            next = next.min(deadline);
            Ok(())
        };
        if let Some(t) = self.auth.filter(|_| !a.authed && !a.auth_waiting) {
            due(a.opened + t, Expired::Auth(t))?;
        }
        if let Some(started) = a.line_started {
            due(started + self.line, Expired::Line(self.line))?;
        }
        if let Some(t) = self.idle {
            let quiet = !a.busy && a.line_started.is_none();
            due(if quiet { a.last_active + t } else { now + t }, Expired::Idle(t))?;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timeouts() -> Timeouts {
        Timeouts {
            auth: Some(10 * S),
            idle: Some(300 * S),
            line: 30 * S,
        }
    }

    fn fresh(t0: Instant) -> Activity {
        Activity {
            opened: t0,
            authed: false,
            last_active: t0,
            line_started: None,
            busy: false,
            auth_waiting: false,
        }
    }

    #[test]
    fn auth_expires_unless_done_or_waiting_for_its_turn() {
        let t0 = Instant::now();
        let t = timeouts();
        let a = fresh(t0);
        assert_eq!(t.check(t0, &a), Ok(t0 + 10 * S));
        assert_eq!(t.check(t0 + 10 * S, &a), Err(Expired::Auth(10 * S)));
        let authed = Activity { authed: true, ..a };
        assert_eq!(t.check(t0 + 10 * S, &authed), Ok(t0 + 40 * S));
        let waiting = Activity {
            auth_waiting: true,
            ..a
        };
        assert!(t.check(t0 + 10 * S, &waiting).is_ok());
        let no_secret = Timeouts { auth: None, ..t };
        assert_eq!(no_secret.check(t0 + 10 * S, &a), Ok(t0 + 40 * S));
    }

    #[test]
    fn a_started_line_must_end_in_time() {
        let t0 = Instant::now();
        let t = timeouts();
        let a = Activity {
            authed: true,
            line_started: Some(t0 + 5 * S),
            ..fresh(t0)
        };
        assert_eq!(t.check(t0 + 6 * S, &a), Ok(t0 + 35 * S));
        assert_eq!(t.check(t0 + 35 * S, &a), Err(Expired::Line(30 * S)));
        // Between lines the next check is one line period away.
        let between = Activity {
            line_started: None,
            ..a
        };
        assert_eq!(t.check(t0 + 35 * S, &between), Ok(t0 + 65 * S));
    }

    #[test]
    fn idle_counts_only_while_the_client_owes_us_a_command() {
        let t0 = Instant::now();
        let t = timeouts();
        let a = Activity {
            authed: true,
            last_active: t0 + 100 * S,
            ..fresh(t0)
        };
        assert_eq!(t.check(t0 + 399 * S, &a), Ok(t0 + 400 * S));
        assert_eq!(t.check(t0 + 400 * S, &a), Err(Expired::Idle(300 * S)));
        let busy = Activity { busy: true, ..a };
        assert!(t.check(t0 + 400 * S, &busy).is_ok());
        let off = Timeouts { idle: None, ..t };
        assert!(off.check(t0 + 10_000 * S, &a).is_ok());
    }
}
