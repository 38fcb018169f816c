//! The outcome layer's events: small structs that log and count together,
//! each emitted from exactly one place, so logs and numbers always agree
//! (Vector's internal events are the model). Fields follow
//! `pushbridge_api::fields`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use pushbridge_api::DeviceToken;

use super::counters::AppCounters;
use super::{Notification, Outcome};

/// A notification reached its outcome (from [`super::Outcomes::settle`]).
pub struct NotificationSettled<'a> {
    pub n: &'a Notification,
    pub outcome: &'a Outcome,
}

impl NotificationSettled<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        let n = self.n;
        match self.outcome {
            Outcome::Delivered => {
                c.delivered.fetch_add(1, Relaxed);
                tracing::trace!(app = %n.app, notification = n.id, device = n.token.short(), outcome = "delivered");
            }
            Outcome::Rejected {
                reason, remove_device, ..
            } => {
                c.rejected.add(reason, 1);
                if *remove_device {
                    tracing::info!(app = %n.app, notification = n.id, device = n.token.short(), outcome = "rejected", reason = %reason, "APNS says the device is gone; removing it");
                } else {
                    tracing::warn!(app = %n.app, notification = n.id, device = n.token.short(), outcome = "rejected", reason = %reason, "notification rejected");
                }
            }
            Outcome::Expired { reason } => {
                c.expired.add(reason, 1);
                tracing::warn!(app = %n.app, notification = n.id, device = n.token.short(), outcome = "expired", reason = %reason, "notification expired undelivered");
            }
        }
    }
}

/// The feedback service reported a device gone.
pub struct DeviceGoneReported<'a> {
    pub app: &'a str,
    pub token: &'a DeviceToken,
    pub reason: &'a str,
}

impl DeviceGoneReported<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        c.devices_reported_gone.fetch_add(1, Relaxed);
        tracing::info!(
            app = self.app,
            device = self.token.short(),
            reason = self.reason,
            "APNS reports a device gone"
        );
    }
}

/// The store removed a device APNS said is gone (emitted by the store,
/// which alone knows whether the device was still registered).
pub struct DeviceRemoved<'a> {
    pub app: &'a str,
    pub token: &'a DeviceToken,
    /// Why APNS said it is gone (an outcome's reason, or `feedback`).
    pub reason: &'a str,
}

impl DeviceRemoved<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        c.devices_removed.fetch_add(1, Relaxed);
        c.devices_removed_by.add(self.reason, 1);
        tracing::info!(
            app = self.app,
            device = self.token.short(),
            reason = self.reason,
            "device removed from the registry"
        );
    }
}

/// APNS rejected a notification already settled as delivered (a binary
/// error response later than `binary_confirm_ms`).
pub struct LateRejection<'a> {
    pub n: &'a Notification,
    pub reason: &'a str,
}

impl LateRejection<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        c.rejected.add(self.reason, 1);
        tracing::warn!(app = %self.n.app, notification = self.n.id, device = self.n.token.short(), outcome = "rejected", reason = self.reason, "APNS rejected a notification already settled as delivered");
    }
}

/// Notifications committed to the outbox (emitted where they are handed
/// on to the sinks).
pub struct NotificationsAccepted {
    pub count: u64,
}

impl NotificationsAccepted {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        c.accepted.fetch_add(self.count, Relaxed);
    }
}

/// A notification will be sent again after a transient failure.
pub struct NotificationRetried<'a> {
    pub n: &'a Notification,
    pub reason: &'a str,
    pub retry_in: Duration,
}

impl NotificationRetried<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        c.retried.fetch_add(1, Relaxed);
        tracing::debug!(app = %self.n.app, notification = self.n.id, attempt = self.n.attempts, reason = self.reason, retry_in = ?self.retry_in, "retrying");
    }
}

/// Notifications were written to a connection that ended before APNS
/// answered them: they will be sent again and may arrive twice.
pub struct NotificationsLost<'a> {
    pub app: &'a str,
    pub count: u64,
    pub reason: &'a str,
}

impl NotificationsLost<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        c.lost.fetch_add(self.count, Relaxed);
        tracing::debug!(
            app = self.app,
            count = self.count,
            reason = self.reason,
            "sent without an answer; sending again"
        );
    }
}

/// A connection to APNS is up.
pub struct ApnsConnected<'a> {
    pub app: &'a str,
    pub host: &'a str,
    pub connection: usize,
}

impl ApnsConnected<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        c.connects.fetch_add(1, Relaxed);
        c.link.connected(self.host);
        tracing::info!(
            app = self.app,
            host = self.host,
            connection = self.connection,
            "APNS connection up"
        );
    }
}

/// A connection attempt to APNS failed.
pub struct ApnsUnreachable<'a> {
    pub app: &'a str,
    pub host: &'a str,
    pub connection: usize,
    pub error: &'a dyn std::fmt::Display,
}

impl ApnsUnreachable<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        c.connect_failures.fetch_add(1, Relaxed);
        c.link.unreachable(self.host, self.error);
        tracing::warn!(app = self.app, host = self.host, connection = self.connection, error = %self.error, "cannot reach APNS");
    }
}

/// A connection to APNS ended.
pub struct ApnsDisconnected<'a> {
    pub app: &'a str,
    pub host: &'a str,
    pub connection: usize,
    /// Why, as a short label first (`closed`, `goaway`, `error: …`).
    pub cause: &'a str,
}

impl ApnsDisconnected<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        c.link.disconnected(self.host, self.cause);
        tracing::debug!(
            app = self.app,
            host = self.host,
            connection = self.connection,
            cause = self.cause,
            "APNS connection closed"
        );
    }
}

/// A sink stopped: one line with every counter of its app.
pub struct SinkStopped<'a> {
    pub protocol: &'a str,
}

impl SinkStopped<'_> {
    /// Log the event and count it in `c`, the app's counters.
    pub fn emit(&self, c: &AppCounters) {
        let g = AppCounters::get;
        tracing::info!(
            app = c.app(),
            protocol = self.protocol,
            delivered = g(&c.delivered),
            devices_removed = g(&c.devices_removed),
            rejected = c.rejected.total(),
            expired = c.expired.total(),
            retried = g(&c.retried),
            lost = g(&c.lost),
            connects = g(&c.connects),
            "sink stopped"
        );
    }
}

/// Which APNS hosts refuse an app's credential now, and why (the state
/// behind [`CredentialRefused`] and [`CredentialAccepted`], so each logs
/// once per change of state). Readable from outside (readiness).
#[derive(Debug, Default)]
pub struct CredentialStatus {
    /// Some host refuses: the fast path of [`CredentialAccepted`] (one
    /// atomic load per answer while everything works).
    any: AtomicBool,
    /// Host (`host:port`) -> the plain reason.
    refused: Mutex<BTreeMap<String, String>>,
}

impl CredentialStatus {
    /// `(host, reason)` for every host that refuses the credential now,
    /// sorted by host; empty when every host accepts it.
    pub fn refused(&self) -> Vec<(String, String)> {
        let map = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(h, r)| (h.clone(), r.clone())).collect()
    }

    /// Record a refusal; whether it changed the state.
    fn refuse(&self, host: &str, reason: &str) -> bool {
        let mut map = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        self.any.store(true, Relaxed);
        if map.get(host).is_some_and(|r| r == reason) {
            return false;
        }
        map.insert(host.to_owned(), reason.to_owned());
        true
    }

    /// Forget every refusal (the credential was replaced); whether there
    /// was one.
    pub(crate) fn clear(&self) -> bool {
        let mut map = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        self.any.store(false, Relaxed);
        let had = !map.is_empty();
        map.clear();
        had
    }

    /// Record that `host` accepts it; the reason it refused before, if it did.
    fn accept(&self, host: &str) -> Option<String> {
        if !self.any.load(Relaxed) {
            return None;
        }
        let mut map = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let was = map.remove(host);
        self.any.store(!map.is_empty(), Relaxed);
        was
    }
}

/// APNS refuses the app's credential (a TLS alert about the client
/// certificate, a 403 about the provider token or certificate): not the
/// notifications' fault, so they wait. Logged at ERROR once per change of
/// state; repeats (every reconnect, every request) are logged at DEBUG.
pub struct CredentialRefused<'a> {
    pub app: &'a str,
    pub host: &'a str,
    /// The plain reason, e.g. `APNS refused the client certificate:
    /// certificate expired on 2024-02-01`.
    pub reason: &'a str,
}

impl CredentialRefused<'_> {
    /// Log the event (on a change of state) and count it in `c`.
    pub fn emit(&self, c: &AppCounters) {
        if c.credential.refuse(self.host, self.reason) {
            c.credential_refusals.fetch_add(1, Relaxed);
            tracing::error!(
                app = %self.app,
                host = %self.host,
                reason = %self.reason,
                "APNS refuses the credential; notifications wait in the outbox"
            );
        } else {
            tracing::debug!(app = %self.app, host = %self.host, reason = %self.reason, "credential still refused");
        }
    }
}

/// APNS accepted the app's credential (an answer that got past
/// authentication). Logged at INFO only when it was refused before.
pub struct CredentialAccepted<'a> {
    pub app: &'a str,
    pub host: &'a str,
}

impl CredentialAccepted<'_> {
    /// Log the event (when it ends a refusal) and update `c`.
    pub fn emit(&self, c: &AppCounters) {
        if let Some(was) = c.credential.accept(self.host) {
            tracing::info!(app = %self.app, host = %self.host, reason = %was, "APNS accepts the credential again");
        }
    }
}

/// A sink loaded its credentials: the certificate's expiry, and warnings
/// (logged at WARN).
pub struct CredentialLoaded<'a> {
    pub app: &'a str,
    /// Unix seconds of the client certificate's `notAfter`, if any.
    pub certificate_expiry: Option<u64>,
    pub warnings: &'a [String],
}

impl CredentialLoaded<'_> {
    /// Log the warnings and record the expiry in `c`.
    pub fn emit(&self, c: &AppCounters) {
        c.certificate_expiry_seconds
            .store(self.certificate_expiry.unwrap_or(0), Relaxed);
        for w in self.warnings {
            tracing::warn!(app = %self.app, reason = %w, "credential needs attention");
        }
    }
}

/// A provider token (JWT) was minted with `iat` (Unix seconds).
pub struct ProviderTokenMinted<'a> {
    pub app: &'a str,
    pub iat: u64,
}

impl ProviderTokenMinted<'_> {
    /// Log the event and count it in `c`.
    pub fn emit(&self, c: &AppCounters) {
        c.provider_tokens_minted.fetch_add(1, Relaxed);
        c.provider_token_issued_at_seconds.store(self.iat, Relaxed);
        tracing::debug!(app = self.app, iat = self.iat, "minted provider token");
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outcomes;
    use super::AppCounters;

    #[test]
    fn a_refusal_counts_once_per_change_of_state() {
        let (o, _rx, counters) = Outcomes::detached("com.example.chat");
        let c = counters.app("com.example.chat");
        let refusals = || AppCounters::get(&c.credential_refusals);
        for _ in 0..5 {
            o.credential_refused("api.push.apple.com:443", "client certificate expired on 2024-02-01");
        }
        assert_eq!(refusals(), 1);
        assert_eq!(
            c.credential.refused(),
            vec![(
                "api.push.apple.com:443".to_owned(),
                "client certificate expired on 2024-02-01".to_owned()
            )]
        );
        // Another reason is another state; another host its own.
        o.credential_refused("api.push.apple.com:443", "APNS refuses the provider token");
        o.credential_refused("api.sandbox.push.apple.com:443", "APNS refuses the provider token");
        assert_eq!(refusals(), 3);
        o.credential_accepted("api.push.apple.com:443");
        o.credential_accepted("api.push.apple.com:443");
        assert_eq!(c.credential.refused().len(), 1);
        o.credential_accepted("api.sandbox.push.apple.com:443");
        assert!(c.credential.refused().is_empty());
        // Refused again after it worked: a new change of state.
        o.credential_refused("api.push.apple.com:443", "APNS refuses the provider token");
        assert_eq!(refusals(), 4);
    }
}
