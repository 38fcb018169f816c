//! The state of an app's link to APNS, as its sink reports it through
//! [`super::Outcomes`]: connections open, connects and disconnects (by
//! cause) per host, and whether the sink can deliver now (for `/readyz`).
//!
//! A sink connects when it has work, so an idle sink with no connection
//! is ready; it is not ready when its latest connection attempt failed
//! (until one succeeds). (A refused credential is kept beside it, in
//! [`super::events::CredentialStatus`]; [`super::AppCounters::readiness`]
//! looks at both.)

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::counters::{label, MAX_REASONS};

/// One APNS host's connection counts.
#[derive(Debug, Default, Clone)]
pub struct HostLink {
    /// Connections open now.
    pub open: i64,
    /// Connections established since start.
    pub connects: u64,
    /// Connections ended since start, by cause label (`closed`, `goaway`,
    /// `error`, `ping timeout`, `lost`, `error response`…), at most
    /// [`MAX_REASONS`] distinct, then `other`.
    pub disconnects: BTreeMap<String, u64>,
}

/// Why a sink cannot deliver now: the latest connection attempt to
/// `host` failed with `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// The APNS `host:port` of the failed attempt.
    pub host: String,
    /// The attempt's error, as displayed.
    pub error: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reach APNS at {}: {}", self.host, self.error)
    }
}

#[derive(Debug, Default)]
struct Inner {
    hosts: BTreeMap<String, HostLink>,
    unreachable: Option<Unreachable>,
}

/// An app's link state; every method takes one short lock (connection
/// events are rare next to notifications).
#[derive(Debug, Default)]
pub struct LinkState(Mutex<Inner>);

impl LinkState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `host` is up: the host is reachable again.
    pub(crate) fn connected(&self, host: &str) {
        let mut s = self.lock();
        let h = s.hosts.entry(host.to_owned()).or_default();
        h.open += 1;
        h.connects += 1;
        s.unreachable = None;
    }

    /// A connection to `host` ended because of `cause` (labelled as
    /// [`label`] does).
    pub(crate) fn disconnected(&self, host: &str, cause: &str) {
        let mut s = self.lock();
        let h = s.hosts.entry(host.to_owned()).or_default();
        h.open = (h.open - 1).max(0);
        let cause = label(cause);
        if let Some(v) = h.disconnects.get_mut(cause) {
            *v += 1;
        } else if h.disconnects.len() < MAX_REASONS {
            h.disconnects.insert(cause.to_owned(), 1);
        } else {
            *h.disconnects.entry("other".to_owned()).or_default() += 1;
        }
    }

    /// A connection attempt to `host` failed with `error`.
    pub(crate) fn unreachable(&self, host: &str, error: &dyn std::fmt::Display) {
        self.lock().unreachable = Some(Unreachable {
            host: host.to_owned(),
            error: error.to_string(),
        });
    }

    /// `Ok(())` unless the latest connection attempt failed.
    pub fn ready(&self) -> Result<(), Unreachable> {
        match self.lock().unreachable.clone() {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }

    /// Every host's counts, sorted by host.
    pub fn hosts(&self) -> Vec<(String, HostLink)> {
        self.lock().hosts.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Connections open now, over every host.
    pub fn open(&self) -> i64 {
        self.lock().hosts.values().map(|h| h.open).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_an_attempt_fails_and_again_once_connected() {
        let l = LinkState::default();
        assert!(l.ready().is_ok(), "an idle sink is ready");
        l.unreachable("api.push.apple.com:443", &"connection refused");
        assert_eq!(
            l.ready().unwrap_err().to_string(),
            "cannot reach APNS at api.push.apple.com:443: connection refused"
        );
        l.connected("api.push.apple.com:443");
        assert!(l.ready().is_ok());
        assert_eq!(l.open(), 1);
        l.disconnected("api.push.apple.com:443", "goaway: NO_ERROR");
        assert_eq!(l.open(), 0);
        let hosts = l.hosts();
        assert_eq!(hosts[0].1.connects, 1);
        assert_eq!(hosts[0].1.disconnects.get("goaway"), Some(&1));
    }
}
