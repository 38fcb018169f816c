//! The counters behind the outcome layer's events, readable from outside
//! (the `counters` log line, benchmarks, tests, and later the Prometheus
//! exporter). Per app (label `app` = the topic); rejections and expiries
//! also per `reason`. Only [`super::events`] writes them (and
//! `Outcomes::holding`, the high-water mark `peak_outstanding`).
//!
//! A `reason` label is the outcome's reason up to its first `:` or ` (`:
//! `410 Unregistered`, `400 BadDeviceToken`, `binary status 8`,
//! `gave up after 10 retries`, `expired while retrying`; what follows
//! (an error's text) is for logs only, so the label set stays small.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prometheus_client::metrics::histogram::Histogram;

use super::link::LinkState;

/// Distinct `reason` labels kept per counter; further reasons are counted
/// under `other`, so a peer inventing reasons cannot grow memory.
pub const MAX_REASONS: usize = 64;

/// Counts by reason, bounded by [`MAX_REASONS`].
#[derive(Debug, Default)]
pub struct ReasonCounts(Mutex<BTreeMap<String, u64>>);

impl ReasonCounts {
    pub(crate) fn add(&self, reason: &str, n: u64) {
        let reason = label(reason);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get_mut(reason) {
            *v += n;
        } else if map.len() < MAX_REASONS {
            map.insert(reason.to_owned(), n);
        } else {
            *map.entry("other".to_owned()).or_default() += n;
        }
    }

    /// `(reason, count)` pairs, sorted by reason.
    pub fn get(&self) -> Vec<(String, u64)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The sum over every reason.
    pub fn total(&self) -> u64 {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.values().sum()
    }
}

/// The label of a reason: up to its first `:` or ` (`, trimmed.
pub fn label(reason: &str) -> &str {
    let end = [reason.find(':'), reason.find(" (")].into_iter().flatten().min();
    end.map_or(reason, |e| &reason[..e]).trim()
}

/// One app's counters. Counters only go up; `peak_outstanding` is a
/// high-water mark.
#[derive(Debug)]
pub struct AppCounters {
    app: Arc<str>,
    /// Notifications committed to the outbox for this app.
    pub accepted: AtomicU64,
    /// Notifications APNS accepted (HTTP/2 200, binary: no error response
    /// within `binary_confirm_ms`), or the `log` sink wrote.
    pub delivered: AtomicU64,
    /// Final rejections by reason (device-removing ones included).
    pub rejected: ReasonCounts,
    /// Notifications that expired or ran out of retries, by reason.
    pub expired: ReasonCounts,
    /// Devices the store removed because APNS said they are gone.
    pub devices_removed: AtomicU64,
    /// The same removals by reason label (`410 Unregistered`,
    /// `400 BadDeviceToken`, `400 DeviceTokenNotForTopic`,
    /// `binary status 8`, `feedback`).
    pub devices_removed_by: ReasonCounts,
    /// Devices the feedback service reported gone.
    pub devices_reported_gone: AtomicU64,
    /// Sends scheduled again after a transient failure, and holds of a
    /// notification because APNS refuses the credential (each counts).
    pub retried: AtomicU64,
    /// Sent, then lost with their connection before an answer came: APNS
    /// may have taken them, so their re-sends may arrive twice.
    pub lost: AtomicU64,
    /// Connections to APNS established.
    pub connects: AtomicU64,
    /// Connection attempts to APNS that failed.
    pub connect_failures: AtomicU64,
    /// Most notifications a sink held at once (in flight, queued or waiting
    /// for a retry); never above its dispatcher's limit.
    pub peak_outstanding: AtomicU64,
    /// The app's sink protocol (`http2`, `binary`, `log`), set when its
    /// sink is started; the `protocol` label.
    pub protocol: OnceLock<&'static str>,
    /// Seconds from writing a request to APNS to reading its answer
    /// (HTTP/2 sink).
    pub request_duration: Histogram,
    /// Connections per host and whether the sink can deliver now.
    pub link: LinkState,
    /// Unix seconds of the client certificate's `notAfter`; 0 when the app
    /// uses no certificate. Set when the sink is built.
    pub certificate_expiry_seconds: AtomicU64,
    /// Provider tokens (JWTs) minted since start.
    pub provider_tokens_minted: AtomicU64,
    /// Unix seconds of the current provider token's `iat`; 0 before the
    /// first mint. Set on every mint.
    pub provider_token_issued_at_seconds: AtomicU64,
    /// Times APNS started refusing the app's credential (one per change of
    /// state, not per request or reconnect).
    pub credential_refusals: AtomicU64,
    /// Which APNS hosts refuse the app's credential now, and why.
    pub credential: super::events::CredentialStatus,
}

/// Buckets of [`AppCounters::request_duration`], in seconds: 1 ms to 10 s.
pub const REQUEST_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl AppCounters {
    fn new(app: &str) -> Self {
        Self {
            app: app.into(),
            accepted: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            rejected: ReasonCounts::default(),
            expired: ReasonCounts::default(),
            devices_removed: AtomicU64::new(0),
            devices_removed_by: ReasonCounts::default(),
            devices_reported_gone: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            peak_outstanding: AtomicU64::new(0),
            protocol: OnceLock::new(),
            request_duration: Histogram::new(REQUEST_DURATION_BUCKETS),
            link: LinkState::default(),
            certificate_expiry_seconds: AtomicU64::new(0),
            provider_tokens_minted: AtomicU64::new(0),
            provider_token_issued_at_seconds: AtomicU64::new(0),
            credential_refusals: AtomicU64::new(0),
            credential: Default::default(),
        }
    }

    /// The app (topic) these count.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// `Ok(())` when the app's sink can deliver (see `/readyz`); else why
    /// not, in plain words: APNS refuses its credential (the first host's
    /// reason), its client certificate's date has passed, or its latest
    /// connection attempt failed. `now`: Unix seconds.
    pub fn readiness(&self, now: u64) -> Result<(), String> {
        if let Some((_, reason)) = self.credential.refused().into_iter().next() {
            return Err(reason);
        }
        let expiry = self.certificate_expiry_seconds.load(Relaxed);
        if expiry != 0 && expiry < now {
            return Err(format!(
                "client certificate expired on {}",
                crate::sink::credentials::date_of_unix(expiry)
            ));
        }
        self.link.ready().map_err(|u| u.to_string())
    }

    /// The app's sink protocol; `unknown` before its sink started.
    pub fn protocol(&self) -> &'static str {
        self.protocol.get().copied().unwrap_or("unknown")
    }

    /// Read a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

/// Every app's counters.
#[derive(Debug, Default)]
pub struct Counters {
    apps: RwLock<BTreeMap<Arc<str>, Arc<AppCounters>>>,
}

/// Totals over every app at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Sum of [`AppCounters::accepted`].
    pub accepted: u64,
    /// Sum of [`AppCounters::delivered`].
    pub delivered: u64,
    /// Sum of [`AppCounters::rejected`] over every reason.
    pub rejected: u64,
    /// Sum of [`AppCounters::expired`] over every reason.
    pub expired: u64,
    /// Sum of [`AppCounters::devices_removed`].
    pub devices_removed: u64,
}

impl Counters {
    /// The counters of `app`, made on first use.
    pub fn app(&self, app: &str) -> Arc<AppCounters> {
        if let Some(c) = self.apps.read().unwrap_or_else(|p| p.into_inner()).get(app) {
            return c.clone();
        }
        let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
        apps.entry(app.into())
            .or_insert_with(|| Arc::new(AppCounters::new(app)))
            .clone()
    }

    /// Every app's counters, sorted by app.
    pub fn apps(&self) -> Vec<Arc<AppCounters>> {
        self.apps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Totals over every app.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for a in self.apps() {
            s.accepted += a.accepted.load(Relaxed);
            s.delivered += a.delivered.load(Relaxed);
            s.rejected += a.rejected.total();
            s.expired += a.expired.total();
            s.devices_removed += a.devices_removed.load(Relaxed);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_drop_the_details() {
        assert_eq!(label("410 Unregistered"), "410 Unregistered");
        assert_eq!(
            label("gave up after 10 retries: stream lost: reset"),
            "gave up after 10 retries"
        );
        assert_eq!(label("binary status 8 (invalid token)"), "binary status 8");
        assert_eq!(
            label("expired while retrying: 503 ServiceUnavailable"),
            "expired while retrying"
        );
        let c = Counters::default();
        let a = c.app("x");
        a.expired.add("expired while retrying: 503 A", 1);
        a.expired.add("expired while retrying: 429 B", 1);
        assert_eq!(a.expired.get(), vec![("expired while retrying".to_owned(), 2)]);
    }

    #[test]
    fn reasons_are_bounded_and_totals_add_up() {
        let c = Counters::default();
        let a = c.app("com.example.chat");
        assert!(Arc::ptr_eq(&a, &c.app("com.example.chat")));
        for i in 0..100 {
            a.rejected.add(&format!("reason {i}"), 1);
        }
        a.rejected.add("reason 0", 1);
        let by_reason = a.rejected.get();
        assert_eq!(by_reason.len(), MAX_REASONS + 1);
        assert_eq!(by_reason.iter().find(|(r, _)| r == "other").map(|x| x.1), Some(36));
        assert_eq!(a.rejected.total(), 101);
        a.delivered.fetch_add(3, Relaxed);
        c.app("com.example.other").delivered.fetch_add(2, Relaxed);
        let s = c.snapshot();
        assert_eq!((s.delivered, s.rejected), (5, 101));
    }
}
