//! The outcome layer's events: small structs that log and count together,
//! each emitted from exactly one place, so logs and numbers always agree
//! (Vector's internal events are the model). Fields follow
//! `pushbridge_api::fields`.

use std::sync::atomic::Ordering::Relaxed;
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
            reason = self.cause,
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
