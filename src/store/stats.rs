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

/// Reads a SQLite store's outbox statistics over a connection of its own
/// (read only), so a scrape never stalls the store thread: the count is
/// O(outbox rows), ~140 ms at 200,000, and WAL lets it read while the
/// store thread writes. One read at a time; callers wait in turn.
pub(crate) struct StatsReader {
    conn: std::sync::Arc<tokio::sync::Mutex<rusqlite::Connection>>,
}

impl StatsReader {
    /// Open a connection on the SQLite file at `path` (already created and
    /// migrated by the store).
    pub(crate) fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(1))?;
        conn.execute_batch("PRAGMA query_only=1;")?;
        Ok(Self {
            conn: std::sync::Arc::new(tokio::sync::Mutex::new(conn)),
        })
    }

    /// The outbox of every app with entries, read on a blocking thread.
    pub(crate) async fn read(&self) -> Result<Vec<AppOutbox>, StoreError> {
        let conn = self.conn.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || super::db::outbox_stats_of(&conn))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::store::db::{NewNotification, SqliteDb};
    use pushbridge_api::{DeviceToken, Environment};

    #[tokio::test]
    async fn the_stats_reader_reads_committed_rows_while_a_write_transaction_is_open() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let db = SqliteDb::open(&path, Synchronous::Normal).expect("open");
        let token = DeviceToken::parse(&"ab".repeat(32)).expect("token");
        let row = |created_ms| NewNotification {
            topic: "com.example.chat",
            token: &token,
            environment: Environment::Production,
            payload: "{}",
            expiration: 0,
            priority: 10,
            collapse_id: None,
            created_ms,
        };
        db.begin().expect("begin");
        for t in [1_000, 2_000, 3_000] {
            db.insert_outbox(&row(t)).expect("insert");
        }
        db.commit().expect("commit");
        let reader = StatsReader::open(&path).expect("reader");
        // The store thread is inside a transaction (it holds the write
        // lock, with a row not committed yet): the reader neither waits
        // for it nor sees the row.
        db.begin().expect("begin");
        db.insert_outbox(&row(500)).expect("insert");
        let read = tokio::time::timeout(Duration::from_secs(5), reader.read()).await;
        let stats = read.expect("did not wait for the writer").expect("read");
        assert_eq!(
            stats,
            vec![AppOutbox {
                app: "com.example.chat".into(),
                depth: 3,
                oldest_ms: Some(1_000),
            }]
        );
        db.rollback();
    }
}
