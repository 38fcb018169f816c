//! Counters of what the gateway did. Each is bumped where the event is
//! logged, so logs and numbers agree.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    delivered: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
    devices_removed: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub accepted: u64,
    pub delivered: u64,
    pub rejected: u64,
    pub expired: u64,
    pub devices_removed: u64,
}

impl Stats {
    pub fn add_accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Relaxed);
    }
    pub fn inc_delivered(&self) {
        self.delivered.fetch_add(1, Relaxed);
    }
    pub fn inc_rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }
    pub fn inc_expired(&self) {
        self.expired.fetch_add(1, Relaxed);
    }
    pub fn inc_devices_removed(&self) {
        self.devices_removed.fetch_add(1, Relaxed);
    }
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            accepted: self.accepted.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            expired: self.expired.load(Relaxed),
            devices_removed: self.devices_removed.load(Relaxed),
        }
    }
}
