//! What the store reports about itself for `/metrics`, `/readyz` and
//! `pushbridge status`: commit latency and batch sizes (recorded by the
//! store thread per transaction), whether the last transaction failed, and
//! the outbox depth and oldest entry per app (read on demand).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rusqlite::{Connection, OpenFlags};

use super::db::StoreError;

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

/// Reads the outbox statistics over a connection of its own, not the store
/// thread's, so counting a deep outbox (O(rows), 40–140 ms at 200,000 in
/// SQLite) does not hold up the store thread's transactions. SQLite: a
/// read-only connection, on a blocking thread (WAL lets it read while the
/// store thread writes); PostgreSQL: a session of its own
/// ([`super::pg::stats::StatsSession`]).
///
/// One count at a time, never back to back: a count's figures are handed
/// to every caller for [`StatsReader::fresh`] (at least a second, longer
/// when counting takes long), also when the caller that started it gave up
/// waiting; while a later count runs, callers get the previous figures at
/// once instead of waiting for it. A failed count is answered with its
/// error, without counting again, for [`FAILED_MIN`] doubling up to
/// [`FAILED_MAX`] while the failures go on.
pub(crate) struct StatsReader {
    /// Held while a count runs.
    source: Arc<tokio::sync::Mutex<Source>>,
    /// What the counts gave; read without waiting for a running count.
    last: Arc<Mutex<Last>>,
}

/// After a failed count, the wait before the next (doubling while they fail).
pub(crate) const FAILED_MIN: Duration = Duration::from_secs(1);
/// The longest wait between failed counts.
pub(crate) const FAILED_MAX: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Last {
    /// The last count that succeeded: when it ended, how long it took, its figures.
    good: Option<(Instant, Duration, Vec<AppOutbox>)>,
    /// Since the last count failed: no count before `retry_at`.
    failed: Option<Failed>,
}

struct Failed {
    retry_at: Instant,
    /// The wait after the next failure.
    next: Duration,
    /// The failure, as handed to callers meanwhile.
    error: String,
}

impl Last {
    /// The answer without counting, if there is one now: the failure
    /// while its wait runs, or figures still fresh.
    fn answer(&self, now: Instant) -> Option<Result<Vec<AppOutbox>, StoreError>> {
        if let Some(f) = &self.failed {
            return (now < f.retry_at).then(|| Err(StoreError::Unavailable(f.error.clone())));
        }
        let (at, took, v) = self.good.as_ref()?;
        (now.duration_since(*at) < StatsReader::fresh(*took)).then(|| Ok(v.clone()))
    }

    /// What to hand out while a count runs: the failure, or the previous
    /// figures; `None` when there are none (the caller waits).
    fn meanwhile(&self) -> Option<Result<Vec<AppOutbox>, StoreError>> {
        if let Some(f) = &self.failed {
            return Some(Err(StoreError::Unavailable(f.error.clone())));
        }
        self.good.as_ref().map(|(_, _, v)| Ok(v.clone()))
    }

    /// Record a count's result, which ended at `now` after `took`.
    fn record(&mut self, now: Instant, took: Duration, result: &Result<Vec<AppOutbox>, StoreError>) {
        match result {
            Ok(v) => {
                self.good = Some((now, took, v.clone()));
                self.failed = None;
            }
            Err(e) => {
                let wait = self.failed.as_ref().map_or(FAILED_MIN, |f| f.next);
                self.failed = Some(Failed {
                    retry_at: now + wait,
                    next: (wait * 2).min(FAILED_MAX),
                    // Handed out again as `Unavailable`: without its prefix.
                    error: match e {
                        StoreError::Unavailable(m) => m.clone(),
                        other => other.to_string(),
                    },
                });
            }
        }
    }
}

enum Source {
    /// Shared with the blocking thread that counts.
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(Box<super::pg::stats::StatsSession>),
}

impl Source {
    async fn count(&mut self) -> Result<Vec<AppOutbox>, StoreError> {
        match self {
            Source::Sqlite(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    super::db::outbox_stats_of(&conn)
                })
                .await
                .map_err(|e| StoreError::Unavailable(format!("the outbox statistics' reader failed: {e}")))?
            }
            Source::Postgres(session) => session.outbox_stats().await,
        }
    }
}

impl StatsReader {
    /// Open a read-only connection on the SQLite file at `path` (created
    /// and migrated by the store already).
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let open = || -> rusqlite::Result<Connection> {
            let conn =
                Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
            conn.busy_timeout(Duration::from_secs(1))?;
            Ok(conn)
        };
        let conn = open().map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: format!("cannot open a connection for the outbox statistics: {e}"),
        })?;
        Ok(Self::of(Source::Sqlite(Arc::new(Mutex::new(conn)))))
    }

    /// A reader of the PostgreSQL database `config.url` names; it connects
    /// on the first count. Errors: as [`super::pg::Endpoint::of`].
    pub(crate) fn postgres(config: &crate::config::StoreConfig) -> Result<Self, StoreError> {
        Ok(Self::of(Source::Postgres(Box::new(
            super::pg::stats::StatsSession::new(config)?,
        ))))
    }

    fn of(source: Source) -> Self {
        Self {
            source: Arc::new(tokio::sync::Mutex::new(source)),
            last: Arc::default(),
        }
    }

    /// How long a count that took `took` is handed out: a second, or four
    /// times as long as it took (then the reader counts at most a fifth of
    /// the time).
    fn fresh(took: Duration) -> Duration {
        (took * 4).max(Duration::from_secs(1))
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Last> {
        self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The outbox of every app with entries. Errors: the count failed
    /// (the same error until the next count, see the type's doc).
    pub(crate) async fn read(&self) -> Result<Vec<AppOutbox>, StoreError> {
        loop {
            if let Some(answer) = self.last().answer(Instant::now()) {
                return answer;
            }
            let mut source = match self.source.clone().try_lock_owned() {
                Ok(source) => source,
                Err(_) => {
                    // A count runs: what the last one gave, or wait for it.
                    if let Some(answer) = self.last().meanwhile() {
                        return answer;
                    }
                    drop(self.source.lock().await);
                    continue;
                }
            };
            // A count may have ended between the look and the lock.
            if let Some(answer) = self.last().answer(Instant::now()) {
                return answer;
            }
            // The count runs in a task of its own holding the lock, so that
            // it completes (and is kept) even when this caller stops waiting.
            let last = self.last.clone();
            let task = tokio::spawn(async move {
                let started = Instant::now();
                let result = source.count().await;
                let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                last.record(Instant::now(), started.elapsed(), &result);
                result
            });
            return task
                .await
                .map_err(|e| StoreError::Unavailable(format!("the outbox statistics' reader failed: {e}")))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::store::db::{NewNotification, SqliteDb};
    use pushbridge_api::{DeviceToken, Environment};

    /// An outbox row of the app `com.example.chat` accepted at `created_ms`.
    fn row(token: &DeviceToken, created_ms: i64) -> NewNotification<'_> {
        NewNotification {
            topic: "com.example.chat",
            token,
            environment: Environment::Production,
            payload: "{}",
            expiration: 0,
            priority: 10,
            collapse_id: None,
            created_ms,
        }
    }

    #[test]
    fn failed_counts_wait_doubling_and_a_running_count_hands_out_the_last_figures() {
        let s = Duration::from_secs;
        let figures = vec![AppOutbox {
            app: "com.example.chat".into(),
            depth: 2,
            oldest_ms: Some(5),
        }];
        let gone = || Err(StoreError::Unavailable("gone".into()));
        let mut last = Last::default();
        let t0 = Instant::now();
        assert!(last.answer(t0).is_none(), "nothing counted yet: count");
        assert!(last.meanwhile().is_none(), "nothing counted yet: wait for the count");
        last.record(t0, Duration::from_millis(10), &Ok(figures.clone()));
        assert_eq!(last.answer(t0 + Duration::from_millis(999)).unwrap().unwrap(), figures);
        assert!(last.answer(t0 + s(1)).is_none(), "a second old: count again");
        assert_eq!(
            last.meanwhile().unwrap().unwrap(),
            figures,
            "meanwhile: the last figures"
        );

        // Failures: their error, without counting, for 1 s, 2 s, 4 s … 30 s.
        let mut t = t0 + s(1);
        for wait in [1, 2, 4, 8, 16, 30, 30] {
            last.record(t, s(0), &gone());
            let err = last
                .answer(t + s(wait) - Duration::from_millis(1))
                .unwrap()
                .unwrap_err();
            assert_eq!(err.to_string(), "store unavailable: gone", "the prefix once");
            assert!(last.answer(t + s(wait)).is_none(), "count again after {wait} s");
            assert!(
                last.meanwhile().unwrap().is_err(),
                "meanwhile: the failure, not old figures"
            );
            t += s(wait);
        }
        // A count that succeeds ends the failures.
        last.record(t, s(0), &Ok(Vec::new()));
        assert_eq!(last.answer(t).unwrap().unwrap(), Vec::new());
        last.record(t + s(1), s(0), &gone());
        assert!(last.answer(t + s(2)).is_none(), "the first failure waits 1 s again");
    }

    #[tokio::test]
    async fn the_stats_reader_reads_committed_rows_while_a_write_transaction_is_open() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let db = SqliteDb::open(&path, Synchronous::Normal).expect("open");
        let token = DeviceToken::parse(&"ab".repeat(32)).expect("token");
        let row = |created_ms| row(&token, created_ms);
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
        // Written into the transaction now (inserts are buffered until a
        // statement reads the outbox, or COMMIT).
        assert_eq!(
            db.outbox_counts().expect("counts"),
            [("com.example.chat".to_owned(), 4)]
        );
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

    #[tokio::test]
    async fn sqlite_statistics_ask_the_store_thread_only_whether_it_answers() {
        use crate::store::command::Command;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let db = SqliteDb::open(&path, Synchronous::Normal).expect("open");
        let token = DeviceToken::parse(&"cd".repeat(32)).expect("token");
        db.insert_outbox(&row(&token, 7)).expect("insert");
        // A stand-in for the store thread: answers `Alive` (or drops it),
        // and would fail the test if asked to count.
        let handle = |answer: bool| {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Command>(8);
            let thread = tokio::spawn(async move {
                let mut asked = 0;
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        Command::Alive { reply } if answer => {
                            asked += 1;
                            let _ = reply.send(());
                        }
                        Command::Alive { .. } => asked += 1,
                        other => panic!("the store thread was asked for {other:?}"),
                    }
                }
                asked
            });
            let handle = crate::store::StoreHandle {
                tx,
                metrics: Arc::default(),
                shared_presence: false,
                stats: Arc::new(StatsReader::open(&path).expect("reader")),
            };
            (handle, thread)
        };
        let (alive, thread) = handle(true);
        let stats = alive.outbox_stats().await.expect("statistics");
        assert_eq!(
            stats.iter().map(|a| (a.depth, a.oldest_ms)).collect::<Vec<_>>(),
            [(1, Some(7))]
        );
        drop(alive);
        assert_eq!(thread.await.expect("stand-in"), 1);
        let (stuck, thread) = handle(false);
        assert!(
            stuck.outbox_stats().await.is_err(),
            "no answer from the thread: no statistics"
        );
        drop(stuck);
        assert_eq!(thread.await.expect("stand-in"), 1);
    }
}
