//! The SQLite backend ([`SqliteDb`]): schema, migrations and every
//! statement. Synchronous; the gateway drives it from its own thread (see
//! `writer`), the CLI directly. [`Db`] (in `backend`) is what both use.

use std::path::Path;
use std::sync::Arc;

use pushbridge_api::{DeviceToken, Environment};
use rusqlite::{params, Connection, OptionalExtension};

use crate::config::Synchronous;
use crate::outcome::Notification;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store {path}: {message}")]
    Open { path: String, message: String },
    #[error("store holds an invalid row: {0}")]
    Corrupt(String),
    #[error("store is closed")]
    Closed,
    /// A statement failed; shown with the server's SQLSTATE and message
    /// (tokio-postgres alone says only "db error").
    #[error("postgres: {}", postgres_reason(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// PostgreSQL could not be reached (at start, or again after it went
    /// away).
    #[error("cannot reach PostgreSQL at {host}:{port}: {message}")]
    Connect { host: String, port: u16, message: String },
    /// PostgreSQL went away; the store reconnects (with backoff).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A PostgreSQL error as the server gave it (`SQLSTATE: message`), or the
/// client's error with its cause.
pub(crate) fn postgres_reason(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{}: {}", db.code().code(), db.message()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts the
/// ones already applied. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: devices, unread counters, outbox, adapter state.
    "CREATE TABLE devices (
        token       TEXT NOT NULL,
        topic       TEXT NOT NULL,
        user        TEXT NOT NULL,
        environment TEXT NOT NULL,
        added_ms    INTEGER NOT NULL,
        PRIMARY KEY (token, topic)
     ) WITHOUT ROWID;
     CREATE INDEX devices_by_user ON devices(user);
     CREATE TABLE unread (
        user  TEXT PRIMARY KEY,
        count INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        topic       TEXT NOT NULL,
        token       TEXT NOT NULL,
        environment TEXT NOT NULL,
        payload     TEXT NOT NULL,
        expiration  INTEGER NOT NULL,
        priority    INTEGER NOT NULL,
        collapse_id TEXT,
        created_ms  INTEGER NOT NULL
     );
     CREATE INDEX outbox_by_topic ON outbox(topic, id);
     CREATE TABLE adapter_state (
        namespace TEXT NOT NULL,
        key       TEXT NOT NULL,
        value     TEXT NOT NULL,
        PRIMARY KEY (namespace, key)
     ) WITHOUT ROWID;",
    // 2: coalescing (waiting outbox rows: not_before_ms > 0, with their
    // user, conversation and the parts they are rendered from; partial
    // indexes, so rows sent at once cost nothing more), mutes, quiet hours.
    "ALTER TABLE outbox ADD COLUMN user TEXT;
     ALTER TABLE outbox ADD COLUMN conversation TEXT;
     ALTER TABLE outbox ADD COLUMN parts TEXT;
     ALTER TABLE outbox ADD COLUMN not_before_ms INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX outbox_waiting ON outbox(user, conversation, token, topic) WHERE not_before_ms > 0;
     CREATE INDEX outbox_due ON outbox(not_before_ms) WHERE not_before_ms > 0;
     CREATE TABLE mutes (
        user         TEXT NOT NULL,
        conversation TEXT NOT NULL,
        until_ms     INTEGER,
        PRIMARY KEY (user, conversation)
     ) WITHOUT ROWID;
     CREATE TABLE quiet_hours (
        user      TEXT PRIMARY KEY,
        start_min INTEGER NOT NULL,
        end_min   INTEGER NOT NULL,
        zone      TEXT NOT NULL
     ) WITHOUT ROWID;",
    // 3: one user's devices read from an index alone, in the order
    // `devices_of` returns them. `devices_by_user` held (user, token,
    // topic): each device was then looked up in the table by its token, a
    // page of its own once the registry is larger than the page cache
    // (~20 µs a message of 10 devices in a registry of 1,000,000).
    "CREATE INDEX devices_of_user ON devices(user, added_ms, token, environment);
     DROP INDEX devices_by_user;",
];

/// A registered device as listed by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub user: String,
    pub token: DeviceToken,
    pub topic: String,
    pub environment: Environment,
    pub added_ms: i64,
}

/// A notification about to be written to the outbox.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    pub topic: &'a str,
    pub token: &'a DeviceToken,
    pub environment: Environment,
    pub payload: &'a str,
    pub expiration: u64,
    pub priority: u8,
    pub collapse_id: Option<&'a str>,
    pub created_ms: i64,
}

/// A [`NewNotification`] owned, with its id: an outbox row a backend holds
/// until its transaction writes it (SQLite: [`super::sqlite_outbox`];
/// PostgreSQL: `pg::batch`).
#[derive(Debug)]
pub(super) struct OutboxRow {
    pub(super) id: i64,
    pub(super) topic: String,
    pub(super) token: String,
    pub(super) environment: &'static str,
    pub(super) payload: String,
    /// Unix seconds, capped at `i64::MAX` (both databases store a signed
    /// 64-bit integer).
    pub(super) expiration: i64,
    pub(super) priority: i64,
    pub(super) collapse_id: Option<String>,
    pub(super) created_ms: i64,
}

impl OutboxRow {
    pub(super) fn new(id: i64, n: &NewNotification<'_>) -> Self {
        Self {
            id,
            topic: n.topic.to_owned(),
            token: n.token.as_str().to_owned(),
            environment: n.environment.as_str(),
            payload: n.payload.to_owned(),
            expiration: n.expiration.min(i64::MAX as u64) as i64,
            priority: i64::from(n.priority),
            collapse_id: n.collapse_id.map(str::to_owned),
            created_ms: n.created_ms,
        }
    }
}

pub use super::backend::Db;

/// An open SQLite database (one of [`Db`]'s backends).
pub struct SqliteDb {
    /// Statements go through [`SqliteDb::conn`] or
    /// [`SqliteDb::conn_beside_outbox`]; only this file (transactions,
    /// statements off the outbox) and [`super::sqlite_outbox`] use it
    /// directly.
    pub(super) conn: Connection,
    /// `[store] synchronous`, as configured.
    synchronous: Synchronous,
    /// Whether commits skip the fsync now ([`SqliteDb::defer_sync`]).
    deferred: bool,
    /// Commits never sync: [`super::wal_sync`] does, after them
    /// ([`SqliteDb::sync_elsewhere`]).
    synced_elsewhere: bool,
    /// Users' devices as last read ([`super::sqlite_devices`]).
    pub(super) devices: std::cell::RefCell<super::sqlite_devices::DeviceCache>,
    /// Users' unread counters as last read or set ([`super::sqlite_unread`]).
    pub(super) unread: std::cell::RefCell<super::sqlite_unread::UnreadCache>,
    /// Inside a transaction of [`SqliteDb::begin`] (the caches are used
    /// only there).
    pub(super) in_tx: std::cell::Cell<bool>,
    /// `PRAGMA data_version` at the last [`SqliteDb::begin`]: another
    /// connection committed when it changes.
    pub(super) data_version: std::cell::Cell<Option<i64>>,
    /// The transaction's outbox rows not written yet
    /// ([`super::sqlite_outbox`]).
    pub(super) outbox: std::cell::RefCell<super::sqlite_outbox::OutboxBuffer>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SqliteDb {
    /// Open (creating if missing) and migrate. The database file is
    /// created owner-only (mode 0600) before SQLite opens it, which gives
    /// its `-wal` and `-shm` files the same mode; existing ones that
    /// others may read are tightened, with a warning
    /// ([`crate::private_file`]).
    pub fn open(path: &Path, sync: Synchronous) -> Result<Self, StoreError> {
        private_files(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // The store prepares ~40 distinct statements; rusqlite keeps 16 by
        // default, and a 64-row INSERT evicted is prepared again.
        conn.set_prepared_statement_cache_capacity(64);
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                message: format!("cannot switch to WAL mode (got {mode})"),
            });
        }
        conn.execute_batch(match sync {
            Synchronous::Full => "PRAGMA synchronous=FULL;",
            Synchronous::Normal => "PRAGMA synchronous=NORMAL;",
        })?;
        conn.execute_batch("PRAGMA foreign_keys=ON;")?;
        let mut db = Self {
            conn,
            synchronous: sync,
            deferred: false,
            synced_elsewhere: false,
            devices: Default::default(),
            unread: Default::default(),
            in_tx: Default::default(),
            data_version: Default::default(),
            outbox: Default::default(),
        };
        db.migrate().map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: format!("migration failed: {e}"),
        })?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: usize = self.conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "schema version {version} is newer than this pushbridge ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Migrations this pushbridge has.
    pub const MIGRATIONS: i64 = MIGRATIONS.len() as i64;

    /// The schema version of the file at `path`, read only (0 when it does
    /// not exist yet).
    pub fn schema_version_at(path: &Path) -> Result<i64, StoreError> {
        if !path.exists() {
            return Ok(0);
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Whether a commit waits for the disk (`synchronous = "full"`).
    pub fn syncs_commits(&self) -> bool {
        self.synchronous == Synchronous::Full
    }

    /// With `defer`, the next commits skip the fsync (SQLite WAL with
    /// `synchronous=NORMAL`: they survive a crash of the process, and the
    /// next synced commit makes them durable, as the WAL is synced as a
    /// whole); without, commits are as configured again. Call between
    /// transactions. A no-op under `synchronous = "normal"`.
    pub fn defer_sync(&mut self, defer: bool) -> Result<(), StoreError> {
        let defer = defer && self.syncs_commits() && !self.synced_elsewhere;
        if defer != self.deferred {
            self.conn.execute_batch(if defer {
                "PRAGMA synchronous=NORMAL;"
            } else {
                "PRAGMA synchronous=FULL;"
            })?;
            self.deferred = defer;
        }
        Ok(())
    }

    /// The `-wal` file beside the database (SQLite's naming); `None` for an
    /// in-memory database.
    pub fn wal_path(&self) -> Option<std::path::PathBuf> {
        match self.conn.path() {
            Some(p) if !p.is_empty() => Some(format!("{p}-wal").into()),
            _ => None,
        }
    }

    /// From now on commits do not sync (`synchronous=NORMAL`): under
    /// `synchronous = "full"` the caller syncs [`SqliteDb::wal_path`]
    /// before it answers ([`super::wal_sync`]). Call between transactions.
    pub fn sync_elsewhere(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        self.synced_elsewhere = true;
        self.deferred = false;
        Ok(())
    }

    /// Begin a write transaction (`BEGIN IMMEDIATE`: it holds the write
    /// lock until it ends), forgetting the cached devices and counters if
    /// another connection committed since the last one.
    pub fn begin(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.outbox.borrow_mut().clear();
        self.in_tx.set(true);
        self.forget_if_changed_elsewhere()
    }

    /// Write the unread counters the transaction changed in memory, and
    /// COMMIT. When it fails the caches are forgotten (what they hold may
    /// not have been written); the caller rolls back.
    pub fn commit(&self) -> Result<(), StoreError> {
        let r = self
            .flush_outbox()
            .and_then(|()| self.write_unread())
            .and_then(|()| Ok(self.conn.execute_batch("COMMIT")?));
        match &r {
            Ok(()) => self.unread_committed(),
            Err(_) => self.forget_cached(),
        }
        self.in_tx.set(!self.conn.is_autocommit());
        r
    }

    /// Roll back; the caches are forgotten (the transaction may have read
    /// what it changed).
    pub fn rollback(&self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.outbox.borrow_mut().clear();
        self.in_tx.set(false);
        self.forget_cached();
    }

    /// Forget the cached devices and unread counters.
    pub(super) fn forget_cached(&self) {
        self.devices.borrow_mut().clear();
        self.unread.borrow_mut().clear();
    }

    /// Up to `limit` outbox entries of `topic` with id ≥ `from_id`, oldest
    /// first; never one waiting in a coalescing window.
    pub fn load_outbox(&self, topic: &Arc<str>, from_id: i64, limit: usize) -> Result<Vec<Notification>, StoreError> {
        let mut stmt = self.conn()?.prepare_cached(
            "SELECT id, token, environment, payload, expiration, priority, collapse_id, created_ms
             FROM outbox WHERE topic = ?1 AND id >= ?2 AND not_before_ms = 0 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![&**topic, from_id, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, token, env, payload, expiration, priority, collapse_id, created_ms) = row?;
            out.push(Notification {
                id,
                app: topic.clone(),
                token: parse_token(&token)?,
                environment: parse_env(&env)?,
                payload: payload.into(),
                expiration: expiration.max(0) as u64,
                priority: priority.clamp(0, 255) as u8,
                collapse_id,
                created_ms,
                attempts: 0,
                redelivery: false,
            });
        }
        Ok(out)
    }

    /// Pending outbox entries per topic.
    pub fn outbox_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self
            .conn()?
            .prepare("SELECT topic, count(*) FROM outbox GROUP BY topic ORDER BY topic")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn state_get(&self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM adapter_state WHERE namespace = ?1 AND key = ?2")?
            .query_row([ns, key], |r| r.get(0))
            .optional()?)
    }

    pub fn state_put(&self, ns: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO adapter_state (namespace, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
            )?
            .execute([ns, key, value])?;
        Ok(())
    }

    pub fn state_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM adapter_state WHERE namespace = ?1 AND key = ?2")?
            .execute([ns, key])?
            > 0)
    }

    pub fn state_list(&self, ns: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, value FROM adapter_state WHERE namespace = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
        )?;
        let rows = stmt.query_map([ns, prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stop SQLite from checkpointing inside commits (a checkpoint copies the
    /// WAL into the main file and can stall the committing thread for
    /// milliseconds); the gateway runs [`Checkpointer`] instead.
    pub fn disable_autocheckpoint(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA wal_autocheckpoint=0;")?;
        Ok(())
    }

    /// Run raw SQL (tests break the schema on purpose with it).
    #[cfg(test)]
    pub(crate) fn execute_for_test(&self, sql: &str) -> Result<(), StoreError> {
        self.conn()?.execute_batch(sql)?;
        Ok(())
    }

    /// Fold the WAL back into the main file (clean shutdown).
    pub fn checkpoint(&self) {
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }
}

/// Every app's outbox depth and oldest entry, read over `conn` in one
/// statement, so the count and the oldest row come from the same moment
/// even while another connection deletes rows (the id index answers the
/// counts; one row read per app for the oldest's time). O(outbox rows):
/// 40–140 ms at 200,000 on the test machine.
pub(super) fn outbox_stats_of(conn: &Connection) -> Result<Vec<super::stats::AppOutbox>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.topic, s.depth, o.created_ms
         FROM (SELECT topic, count(*) AS depth, min(id) AS oldest FROM outbox GROUP BY topic) AS s
         JOIN outbox AS o ON o.id = s.oldest ORDER BY s.topic",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(super::stats::AppOutbox {
            app: r.get(0)?,
            depth: r.get::<_, i64>(1)?.max(0) as u64,
            oldest_ms: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Checkpoints the WAL from its own connection and thread, so the store
/// thread's commits never pay for it. PASSIVE checkpoints do not block the
/// writer; SQLite restarts the WAL from the beginning once one completes.
pub struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Checkpoint `path` every `every` until dropped.
    pub fn start(path: &Path, every: std::time::Duration) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_millis(100))?;
        // Checkpoints sync the WAL before copying it and the database before
        // the WAL starts over; `wal_sync` relies on it, so not left to the
        // build's default.
        conn.execute_batch("PRAGMA synchronous=FULL;")?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pushbridge-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                    }
                }
            })
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                message: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Create the database file owner-only, tighten it and its `-wal` and
/// `-shm` files if others may read them.
fn private_files(path: &Path) -> std::io::Result<()> {
    crate::private_file::create(path)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        crate::private_file::tighten(Path::new(&side))?;
    }
    Ok(())
}

pub(super) fn parse_token(s: &str) -> Result<DeviceToken, StoreError> {
    DeviceToken::parse(s).map_err(|e| StoreError::Corrupt(format!("device token: {e}")))
}

pub(super) fn parse_env(s: &str) -> Result<Environment, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

#[cfg(test)]
mod tests {
    use pushbridge_api::UserId;

    use super::super::sqlite_devices::{DEVICES_OF, EVERY_DEVICE, ONE_USERS_DEVICES};
    use super::*;

    fn token(c: char) -> DeviceToken {
        DeviceToken::parse(&c.to_string().repeat(64)).unwrap()
    }

    #[test]
    fn one_users_devices_are_read_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let plan = |sql: &str, user: Option<&str>| -> Vec<String> {
            db.conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([user], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        // One user's: a search of the covering index, in its order (no
        // table lookups, no sort). A scan in index order would still read
        // every device.
        for sql in [DEVICES_OF, ONE_USERS_DEVICES] {
            let plan = plan(sql, Some("line:alice"));
            assert_eq!(
                plan,
                ["SEARCH devices USING COVERING INDEX devices_of_user (user=?)"],
                "{sql}"
            );
        }
        // Every device (the CLI): the same index, in its order.
        assert_eq!(
            plan(EVERY_DEVICE, None),
            ["SCAN devices USING COVERING INDEX devices_of_user"]
        );
        let alice = UserId::parse("line:alice").unwrap();
        db.register(&alice, &token('a'), "t", Environment::Production, 1)
            .unwrap();
        db.register(
            &UserId::parse("line:bob").unwrap(),
            &token('b'),
            "t",
            Environment::Production,
            1,
        )
        .unwrap();
        assert_eq!(db.all_devices(Some("line:alice")).unwrap().len(), 1);
        assert_eq!(db.all_devices(None).unwrap().len(), 2);
    }

    #[test]
    fn devices_counters_outbox_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let alice = UserId::parse("line:alice").unwrap();
        let bob = UserId::parse("line:bob").unwrap();
        {
            let db = Db::open(&path, Synchronous::Full).unwrap();
            assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
            db.register(&alice, &token('a'), "t", Environment::Production, 1)
                .unwrap();
            db.register(&alice, &token('b'), "t", Environment::Sandbox, 2).unwrap();
            assert_eq!(db.devices_of(&alice).unwrap().len(), 2);
            // Registering a token again for bob moves it.
            db.register(&bob, &token('b'), "t", Environment::Sandbox, 3).unwrap();
            assert_eq!(db.devices_of(&alice).unwrap().len(), 1);
            assert_eq!(db.increment_unread(&alice).unwrap(), 1);
            assert_eq!(db.increment_unread(&alice).unwrap(), 2);
            db.reset_unread(&alice).unwrap();
            assert_eq!(db.unread(&alice).unwrap(), 0);
            assert_eq!(db.increment_unread(&alice).unwrap(), 1);
            let id = db
                .insert_outbox(&NewNotification {
                    topic: "t",
                    token: &token('a'),
                    environment: Environment::Production,
                    payload: "{}",
                    expiration: 5,
                    priority: 10,
                    collapse_id: None,
                    created_ms: 7,
                })
                .unwrap();
            let topic: Arc<str> = "t".into();
            assert_eq!(db.load_outbox(&topic, 0, 10).unwrap().len(), 1);
            assert_eq!(db.load_outbox(&topic, id + 1, 10).unwrap().len(), 0);
            db.state_put("xmpp", "node:1", "v").unwrap();
            db.state_put("xmpp", "other", "w").unwrap();
            assert_eq!(db.state_list("xmpp", "node:").unwrap().len(), 1);
            // remove_device honours since_ms.
            assert!(!db.remove_device(&token('a'), "t", Some(1)).unwrap());
            assert!(db.remove_device(&token('a'), "t", Some(2)).unwrap());
        }
        // Everything survives a reopen.
        let db = Db::open(&path, Synchronous::Normal).unwrap();
        assert_eq!(db.devices_of(&bob).unwrap().len(), 1);
        assert_eq!(db.unread(&alice).unwrap(), 1);
        assert_eq!(db.outbox_counts().unwrap(), vec![("t".to_owned(), 1)]);
        assert_eq!(db.state_get("xmpp", "node:1").unwrap().as_deref(), Some("v"));
        assert!(db.state_delete("xmpp", "node:1").unwrap());
    }

    #[test]
    fn store_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let side = |s: &str| dir.path().join(format!("t.db{s}"));
        let db = Db::open(&path, Synchronous::Full).unwrap();
        db.register(
            &UserId::parse("line:a").unwrap(),
            &token('a'),
            "t",
            Environment::Production,
            1,
        )
        .unwrap();
        for p in [path.clone(), side("-wal"), side("-shm")] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(db);
        // Files another tool (or an older pushbridge) left readable are
        // tightened on open.
        let open = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&path, open.clone()).unwrap();
        std::fs::write(side("-wal"), "").unwrap();
        std::fs::set_permissions(side("-wal"), open).unwrap();
        let db = Db::open(&path, Synchronous::Full).unwrap();
        assert_eq!(db.devices_of(&UserId::parse("line:a").unwrap()).unwrap().len(), 1);
        for p in [path.clone(), side("-wal"), side("-shm")] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    #[test]
    fn a_version_1_store_upgrades_and_keeps_its_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch("PRAGMA user_version = 1").unwrap();
            conn.execute(
                "INSERT INTO outbox (topic, token, environment, payload, expiration, priority, collapse_id, created_ms)
                 VALUES ('t', ?1, 'production', '{}', 5, 10, NULL, 7)",
                [token('a').as_str()],
            )
            .unwrap();
        }
        let db = Db::open(&path, Synchronous::Full).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let topic: Arc<str> = "t".into();
        let rows = db.load_outbox(&topic, 0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(&*rows[0].payload, "{}");
        assert_eq!(db.next_due().unwrap(), None);
    }
}
