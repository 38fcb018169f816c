//! What the store reports about itself for `/metrics`, `/readyz` and
//! `pushbridge status`: commit latency and batch sizes (recorded by the
//! store thread per transaction), whether the last transaction failed, and
//! the outbox depth and oldest entry per app (read on demand).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::db::{Db, StoreError};

/// Buckets of [`StoreMetrics::commit_duration`], in seconds: 0.1 ms to ~3.3 s.
fn commit_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 16)
}

/// The store thread's own numbers; shared with the admin listener.
#[derive(Debug)]
pub struct StoreMetrics {
    /// Seconds from `BEGIN` to the end of `COMMIT`, per transaction (the
    /// fsync included, unless [`super::wal_sync`] syncs after the commit).
    pub commit_duration: Histogram,
    /// Seconds per sync of the SQLite WAL by [`super::wal_sync`] (each one
    /// makes one or more transactions durable); empty when commits sync
    /// themselves.
    pub sync_duration: Histogram,
    /// Commands and completions applied per transaction.
    pub batch_size: Histogram,
    /// Transactions that failed (nothing in them was accepted).
    pub failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Why the WAL can no longer be synced (sticky: see [`super::wal_sync`]).
    sync_error: Mutex<Option<String>>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            commit_duration: Histogram::new(commit_buckets()),
            sync_duration: Histogram::new(commit_buckets()),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            sync_error: Mutex::new(None),
        }
    }
}

impl StoreMetrics {
    /// A transaction of `size` commands and completions committed in `took`.
    /// (Transactions with nothing in them, the store thread's periodic
    /// wake-ups, are not observed.)
    pub(crate) fn committed(&self, took: Duration, size: usize) {
        if size > 0 {
            self.commit_duration.observe(took.as_secs_f64());
            self.batch_size.observe(size as f64);
        }
        *self.lock() = None;
    }

    /// A transaction failed with `error`.
    pub(crate) fn failed(&self, error: &StoreError) {
        self.failures.fetch_add(1, Relaxed);
        *self.lock() = Some(error.to_string());
    }

    /// A sync of the WAL took `took`.
    pub(crate) fn synced(&self, took: Duration) {
        self.sync_duration.observe(took.as_secs_f64());
    }

    /// A sync of the WAL failed: counted as a failed transaction, and
    /// [`StoreMetrics::writable`] reports `error` until the process ends.
    pub(crate) fn sync_failed(&self, error: &str) {
        self.failures.fetch_add(1, Relaxed);
        *lock(&self.sync_error) = Some(error.to_owned());
    }

    /// `Ok(())` unless the last transaction failed or a sync of the WAL
    /// ever did (then its error).
    pub fn writable(&self) -> Result<(), String> {
        match lock(&self.sync_error).clone().or_else(|| self.lock().clone()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        lock(&self.last_error)
    }
}

fn lock(m: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One app's outbox at one moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppOutbox {
    /// The app (topic).
    pub app: String,
    /// Notifications waiting (not yet settled), including those a sink holds.
    pub depth: u64,
    /// Unix milliseconds when the oldest of them was accepted.
    pub oldest_ms: Option<i64>,
}

/// The outbox of every app with entries, read by the store thread.
pub(crate) fn outbox(db: &Db) -> Result<Vec<AppOutbox>, StoreError> {
    db.outbox_stats()
}
