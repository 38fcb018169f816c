//! AUTH throttling per peer address.
//!
//! After a wrong secret, every further `AUTH` from the same address waits
//! for its turn: [`AUTH_DELAY`] after the first failure, doubling with each
//! failure up to [`AUTH_DELAY_MAX`]. Attempts from one address are spaced
//! by that delay even when they come over many connections at once (each
//! attempt reserves the next turn); an attempt whose turn is further away
//! than the connection's `auth_timeout` is refused at once without looking
//! at the secret. Success clears the address; an address is forgotten
//! [`FORGET_AFTER`] after its last failure.
//!
//! Only addresses with failures are kept, at most [`MAX_PEERS`] of them
//! (least recently seen evicted first), so memory is bounded and other
//! addresses are never delayed. IPv6 addresses count per /64 (one host
//! usually holds the whole /64), IPv4-mapped IPv6 as IPv4.
//!
//! Failures are logged at most once per [`LOG_EVERY`], with the number of
//! failures since the previous line.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use hashlink::LruCache;
use tokio::time::Instant;

/// Delay after the first failure.
pub const AUTH_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between two attempts from one address.
pub const AUTH_DELAY_MAX: Duration = Duration::from_secs(5);
/// An address is forgotten this long after its last failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most addresses remembered.
pub const MAX_PEERS: usize = 10_000;
/// At most one failed-AUTH log line per this period.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// When an AUTH attempt may be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check it now.
    Now,
    /// Check it at this instant (answer nothing before).
    At(Instant),
    /// Too many failures queued for this address: refuse without checking.
    Refused,
}

/// What is known about one address.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// Failures since the last success (or since it was forgotten).
    failures: u32,
    /// The earliest time the next attempt may be checked.
    next_turn: Instant,
    /// The last failure.
    last_failure: Instant,
}

#[derive(Debug)]
struct Inner {
    peers: LruCache<IpAddr, Peer>,
    /// When the last failed-AUTH line was logged.
    logged_at: Option<Instant>,
    /// Failures since then.
    unlogged: u64,
}

/// The AUTH throttle of one listener (shared by its connections).
#[derive(Debug)]
pub struct AuthThrottle {
    inner: Mutex<Inner>,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self::new(MAX_PEERS)
    }
}

/// The key of an address: IPv4 as is, IPv6 cut to its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The delay after `failures` failures (0: none).
pub fn delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        f => AUTH_DELAY.saturating_mul(1 << (f - 1).min(16)).min(AUTH_DELAY_MAX),
    }
}

impl AuthThrottle {
    /// A throttle remembering at most `max_peers` addresses (at least 1).
    pub fn new(max_peers: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                peers: LruCache::new(max_peers.max(1)),
                logged_at: None,
                unlogged: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An AUTH attempt from `ip` arrived at `now`: when may it be checked?
    /// Attempts whose turn would come later than `now + horizon` are
    /// [`Admission::Refused`]; the others reserve their turn.
    pub fn admit(&self, ip: IpAddr, now: Instant, horizon: Duration) -> Admission {
        let k = key(ip);
        let mut inner = self.lock();
        let Some(peer) = inner.peers.get_mut(&k) else {
            return Admission::Now;
        };
        if now.saturating_duration_since(peer.last_failure) >= FORGET_AFTER {
            inner.peers.remove(&k);
            return Admission::Now;
        }
        let turn = peer.next_turn.max(now);
        if turn > now + horizon {
            return Admission::Refused;
        }
        peer.next_turn = turn + delay(peer.failures);
        if turn <= now {
            Admission::Now
        } else {
            Admission::At(turn)
        }
    }

    /// A wrong secret from `ip` at `now`. Returns `Some(n)` when this
    /// failure should be logged, `n` being the failures (of all addresses)
    /// since the last logged one, this one included.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let k = key(ip);
        let mut inner = self.lock();
        let peer = match inner.peers.get_mut(&k) {
            Some(p) => p,
            None => {
                let fresh = Peer {
                    failures: 0,
                    next_turn: now,
                    last_failure: now,
                };
                inner.peers.insert(k, fresh);
                inner.peers.get_mut(&k)?
            }
        };
        peer.failures = peer.failures.saturating_add(1);
        peer.last_failure = now;
        peer.next_turn = peer.next_turn.max(now + delay(peer.failures));
        inner.unlogged += 1;
        let due = inner
            .logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
        if !due {
            return None;
        }
        inner.logged_at = Some(now);
        Some(std::mem::take(&mut inner.unlogged))
    }

    /// The right secret from `ip`: forget its failures.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().peers.remove(&key(ip));
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.lock().peers.len()
    }

    /// No address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HORIZON: Duration = Duration::from_secs(10);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn delay_doubles_up_to_the_cap() {
        assert_eq!(delay(0), Duration::ZERO);
        assert_eq!(delay(1), Duration::from_millis(100));
        assert_eq!(delay(2), Duration::from_millis(200));
        assert_eq!(delay(4), Duration::from_millis(800));
        assert_eq!(delay(7), AUTH_DELAY_MAX);
        assert_eq!(delay(u32::MAX), AUTH_DELAY_MAX);
    }

    #[test]
    fn failures_space_the_next_attempts_of_that_address_only() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let a = ip("127.0.0.2");
        assert_eq!(t.admit(a, now, HORIZON), Admission::Now);
        t.failed(a, now);
        // The next attempt waits 100 ms; one more at once waits for the turn after.
        assert_eq!(t.admit(a, now, HORIZON), Admission::At(now + delay(1)));
        assert_eq!(t.admit(a, now, HORIZON), Admission::At(now + delay(1) * 2));
        // Another address is not delayed.
        assert_eq!(t.admit(ip("127.0.0.3"), now, HORIZON), Admission::Now);
        assert_eq!(t.len(), 1);
        // Sequential guesses: each waits at least the growing delay.
        let mut clock = now + delay(1) * 2;
        let mut waited = Duration::ZERO;
        for f in 1..=6 {
            t.failed(a, clock);
            let Admission::At(turn) = t.admit(a, clock, HORIZON) else {
                panic!("attempt after {f} failures not delayed");
            };
            assert!(turn - clock >= delay(f + 1), "after {f} failures: {:?}", turn - clock);
            waited += turn - clock;
            clock = turn;
        }
        assert!(waited >= Duration::from_millis(200 + 400 + 800 + 1600 + 3200 + 5000));
    }

    #[test]
    fn far_turns_are_refused_and_success_or_time_forgives() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..10 {
            t.failed(a, now);
        }
        // Attempts queue up until the horizon, then are refused.
        let mut admitted = 0;
        while t.admit(a, now, HORIZON) != Admission::Refused {
            admitted += 1;
            assert!(admitted < 100, "never refused");
        }
        assert_eq!(admitted, 2, "turns at +5 s and +10 s, the next beyond the horizon");
        t.succeeded(a);
        assert_eq!(t.admit(a, now, HORIZON), Admission::Now);
        t.failed(a, now);
        assert_eq!(t.admit(a, now + FORGET_AFTER, HORIZON), Admission::Now);
        assert!(t.is_empty());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        t.failed(ip("2001:db8:1:2::1"), now);
        assert!(matches!(
            t.admit(ip("2001:db8:1:2:ffff::9"), now, HORIZON),
            Admission::At(_)
        ));
        assert_eq!(t.admit(ip("2001:db8:1:3::1"), now, HORIZON), Admission::Now);
        t.failed(ip("192.0.2.7"), now);
        assert!(matches!(
            t.admit(ip("::ffff:192.0.2.7"), now, HORIZON),
            Admission::At(_)
        ));
    }

    #[test]
    fn memory_is_capped_oldest_evicted() {
        let t = AuthThrottle::new(100);
        let now = Instant::now();
        let first = ip("10.1.0.0");
        t.failed(first, now);
        for i in 1..1000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            t.failed(IpAddr::from([10, 1, a, b]), now);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.admit(first, now, HORIZON), Admission::Now, "oldest evicted");
        assert!(
            matches!(t.admit(ip("10.1.3.231"), now, HORIZON), Admission::At(_)),
            "newest kept"
        );
    }

    #[test]
    fn failures_are_logged_at_most_once_per_period_with_a_count() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let a = ip("10.0.0.1");
        assert_eq!(t.failed(a, now), Some(1));
        for i in 0..9999 {
            assert_eq!(t.failed(ip("10.0.0.2"), now + Duration::from_micros(i)), None);
        }
        assert_eq!(t.failed(a, now + LOG_EVERY), Some(10_000));
    }
}
