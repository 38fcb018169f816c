//! The store's backends behind one face: [`Db`] is SQLite ([`SqliteDb`],
//! one file, the default) or PostgreSQL ([`PgDb`], shared by several
//! gateways). The writer loop, the feed and the CLI call [`Db`]; neither
//! they nor the router, policy or sinks know which backend runs.
//!
//! An enum rather than a trait object: there are exactly two backends, the
//! compiler checks every method is given by both (the [`dispatch`] list),
//! and the writer keeps a plain value it can move into its thread.

use std::path::Path;
use std::sync::Arc;

use pushbridge_api::settings::QuietHours;
use pushbridge_api::{DeviceToken, Environment, Presence, UserId};

use super::coalesce::{NewWaiting, Parts, Waiting};
use super::command::Command;
use super::db::{DeviceRow, NewNotification, SqliteDb, StoreError};
use super::pg::claims::Taken;
use super::pg::PgDb;
use super::settings::SettingsCache;
use crate::config::{StoreConfig, Synchronous};
use crate::outcome::Notification;

/// An open store: SQLite or PostgreSQL.
pub enum Db {
    /// One SQLite file (WAL), written by this process alone.
    Sqlite(Box<SqliteDb>),
    /// A PostgreSQL database, possibly shared with other gateways.
    Postgres(Box<PgDb>),
}

impl Db {
    /// Whether transactions may commit without waiting for the disk
    /// ([`Db::defer_sync`]): SQLite under `synchronous = "full"` only.
    /// Not PostgreSQL: an asynchronous commit there is lost when the
    /// database server (not only the machine) crashes, and the outcomes it
    /// recorded would then linger in the shared outbox until a restart.
    pub fn can_defer_sync(&self) -> bool {
        match self {
            Db::Sqlite(d) => d.syncs_commits(),
            Db::Postgres(_) => false,
        }
    }

    /// With `defer`, the next transactions commit without waiting for the
    /// disk (SQLite WAL with `synchronous=NORMAL`); a later waiting commit
    /// makes them durable too, as the WAL is synced as a whole. See
    /// `writer::durability`. Call between transactions; a no-op where
    /// [`Db::can_defer_sync`] is false.
    pub fn defer_sync(&mut self, defer: bool) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(d) => d.defer_sync(defer),
            Db::Postgres(_) => Ok(()),
        }
    }
}

/// Forward each listed method to the backend.
macro_rules! dispatch {
    ($( $(#[$m:meta])* $vis:vis fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        impl Db {
            $(
                $(#[$m])*
                $vis fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Db::Sqlite(d) => d.$name($($arg),*),
                        Db::Postgres(d) => d.$name($($arg),*),
                    }
                }
            )*
        }
    };
}

dispatch! {
    /// The number of migrations applied.
    pub fn schema_version(&self) -> Result<i64, StoreError>;
    /// Start a transaction (PostgreSQL: reconnects first if the server
    /// went away, with backoff).
    pub fn begin(&self) -> Result<(), StoreError>;
    /// Commit (PostgreSQL: writes what the transaction buffered first).
    pub fn commit(&self) -> Result<(), StoreError>;
    /// Add a device, or move it (token + topic are unique) to `user`.
    pub fn register(&self, user: &UserId, token: &DeviceToken, topic: &str, env: Environment, now_ms: i64) -> Result<(), StoreError>;
    /// Remove a user's device (every topic); how many rows went.
    pub fn unregister(&self, user: &UserId, token: &DeviceToken) -> Result<usize, StoreError>;
    /// Remove a device APNS reported invalid; with `since_ms`, only when
    /// it was (re)registered before then.
    pub fn remove_device(&self, token: &DeviceToken, topic: &str, since_ms: Option<i64>) -> Result<bool, StoreError>;
    /// A user's devices: (token, topic, environment).
    pub fn devices_of(&self, user: &UserId) -> Result<Vec<(DeviceToken, String, Environment)>, StoreError>;
    /// Every device, optionally of one user (the CLI).
    pub fn all_devices(&self, user: Option<&str>) -> Result<Vec<DeviceRow>, StoreError>;
    /// Add one to a user's unread counter and return the new value.
    pub fn increment_unread(&self, user: &UserId) -> Result<u32, StoreError>;
    /// A user's unread counter.
    pub fn unread(&self, user: &UserId) -> Result<u32, StoreError>;
    /// Reset a user's unread counter.
    pub fn reset_unread(&self, user: &UserId) -> Result<(), StoreError>;
    /// Write a notification to the outbox; its id. Inside a transaction
    /// both backends may only buffer the row until a later statement or
    /// COMMIT: after an error from any statement the caller must roll back.
    pub fn insert_outbox(&self, n: &NewNotification<'_>) -> Result<i64, StoreError>;
    /// Delete outbox entries (settled, or waiting rows a coalescing window
    /// released), in any order; ids not in the outbox are passed over.
    pub fn delete_outbox_ids(&self, ids: Vec<i64>) -> Result<(), StoreError>;
    /// Up to `limit` outbox entries of `topic` with id ≥ `from_id`, oldest
    /// first; never one waiting in a coalescing window.
    pub fn load_outbox(&self, topic: &Arc<str>, from_id: i64, limit: usize) -> Result<Vec<Notification>, StoreError>;
    /// Pending outbox entries per topic.
    pub fn outbox_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// An adapter's state value.
    pub fn state_get(&self, ns: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// Set an adapter's state value.
    pub fn state_put(&self, ns: &str, key: &str, value: &str) -> Result<(), StoreError>;
    /// Delete an adapter's state value; whether it existed.
    pub fn state_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError>;
    /// An adapter's state values whose key starts with `prefix`, by key.
    pub fn state_list(&self, ns: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Mute `conversation` for `user` until `until_ms` (`None`: for good).
    pub fn set_mute(&self, user: &UserId, conversation: &str, until_ms: Option<i64>) -> Result<(), StoreError>;
    /// Unmute; whether it was muted.
    pub fn unmute(&self, user: &UserId, conversation: &str) -> Result<bool, StoreError>;
    /// Forget mutes that ended before `now_ms`; how many.
    pub fn expire_mutes(&self, now_ms: i64) -> Result<usize, StoreError>;
    /// Set (`Some`) or clear the user's quiet hours.
    pub fn set_quiet(&self, user: &UserId, hours: Option<&QuietHours>) -> Result<(), StoreError>;
    /// Every user's settings.
    pub(crate) fn load_settings(&self) -> Result<SettingsCache, StoreError>;
    /// Merge into a waiting row or open a coalescing window (see
    /// [`super::coalesce`]); the window's end when a new one started.
    pub(crate) fn coalesce(&self, w: &NewWaiting<'_>, parts: &Parts) -> Result<Option<i64>, StoreError>;
    /// The end of the earliest coalescing window still open (Unix ms).
    pub(crate) fn next_due(&self) -> Result<Option<i64>, StoreError>;
    /// Waiting rows whose window ended by `now_ms`, earliest first.
    pub(crate) fn due_waiting(&self, now_ms: i64) -> Result<Vec<Waiting>, StoreError>;
    /// Drop the user's waiting rows (they came online); how many.
    pub(crate) fn cancel_waiting(&self, user: &UserId) -> Result<usize, StoreError>;
}

impl Db {
    /// Roll back (errors ignored: the transaction is gone either way).
    pub fn rollback(&self) {
        match self {
            Db::Sqlite(d) => d.rollback(),
            Db::Postgres(d) => d.rollback(),
        }
    }

    /// Clean shutdown: SQLite folds its WAL back into the file;
    /// PostgreSQL has nothing to do (the server owns durability).
    pub fn checkpoint(&self) {
        if let Db::Sqlite(d) = self {
            d.checkpoint();
        }
    }

    /// Open (creating if missing) and migrate the SQLite file at `path`.
    pub fn open(path: &Path, sync: Synchronous) -> Result<Self, StoreError> {
        SqliteDb::open(path, sync).map(|d| Db::Sqlite(Box::new(d)))
    }

    /// Open (and migrate) the store `config` names: PostgreSQL when it has
    /// a `url`, else the SQLite `path`. Blocking; PostgreSQL's client must
    /// not run inside an async runtime, so it is opened on a thread of its
    /// own.
    pub fn open_config(config: &StoreConfig) -> Result<Self, StoreError> {
        Self::open_with(config, false)
    }

    /// [`Db::open_config`] for a gateway: on PostgreSQL it registers as
    /// one of the gateways sharing the database (see [`super::pg::claims`]).
    pub fn open_gateway(config: &StoreConfig) -> Result<Self, StoreError> {
        Self::open_with(config, true)
    }

    fn open_with(config: &StoreConfig, gateway: bool) -> Result<Self, StoreError> {
        match &config.url {
            None => Self::open(&config.path, config.synchronous),
            Some(_) => {
                let config = config.clone();
                std::thread::spawn(move || {
                    let db = PgDb::open(&config)?;
                    if gateway {
                        db.register_gateway()?;
                    }
                    Ok(db)
                })
                .join()
                .map_err(|_| StoreError::Unavailable("the PostgreSQL connect thread panicked".into()))?
                .map(|d| Db::Postgres(Box::new(d)))
            }
        }
    }

    /// Load what the batch's messages need in a few set-based queries
    /// (PostgreSQL: their users' devices and unread counters, locked for
    /// the transaction), instead of one round trip per message. SQLite
    /// reads in-process and needs nothing.
    pub(crate) fn prefetch(&self, batch: &[Command]) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(d) => d.prefetch(batch),
        }
    }

    /// Whether presence lives in the store, shared by several gateways
    /// (PostgreSQL), rather than in the router's memory (SQLite).
    pub fn shares_presence(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// `user`'s presence in the shared store (PostgreSQL; a report of a
    /// dead gateway reads as offline); `None` on SQLite, where the router
    /// keeps presence.
    pub fn presence_of(&self, user: &UserId) -> Result<Option<Presence>, StoreError> {
        match self {
            Db::Sqlite(_) => Ok(None),
            Db::Postgres(d) => d.presence_of(user).map(Some),
        }
    }

    /// Record a presence report in the shared store (PostgreSQL; a no-op
    /// on SQLite).
    pub fn set_presence(&self, user: &UserId, presence: Presence) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(d) => d.set_presence(user, presence),
        }
    }

    /// How often the store thread heartbeats and takes over dead
    /// gateways' claims; `None`: a store of one gateway (SQLite).
    pub fn maintenance_every(&self) -> Option<std::time::Duration> {
        match self {
            Db::Sqlite(_) => None,
            Db::Postgres(d) => Some(d.maintenance_every()),
        }
    }

    /// Heartbeat this gateway (PostgreSQL); whether rows of `topics`
    /// wait to be taken over ([`Db::take_over`]).
    pub fn heartbeat(&self, topics: &[String]) -> Result<bool, StoreError> {
        match self {
            Db::Sqlite(_) => Ok(false),
            Db::Postgres(d) => d.heartbeat(topics),
        }
    }

    /// Take over up to `limit` unclaimed or dead gateways' outbox rows of
    /// `topics` (PostgreSQL; see [`super::pg::claims`]).
    pub fn take_over(&self, topics: &[String], limit: i64) -> Result<Vec<Taken>, StoreError> {
        match self {
            Db::Sqlite(_) => Ok(Vec::new()),
            Db::Postgres(d) => d.take_over(topics, limit),
        }
    }

    /// Release this gateway's claims on the outbox entries of `topics`
    /// (apps whose sink stopped), so that another gateway sharing the
    /// store takes them over (PostgreSQL); how many. SQLite: none.
    pub fn release_topics(&self, topics: &[String]) -> Result<u64, StoreError> {
        match self {
            Db::Sqlite(_) => Ok(0),
            Db::Postgres(d) => d.release_topics(topics),
        }
    }

    /// Clean shutdown of a gateway: release its claims (PostgreSQL).
    pub fn release_claims(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(d) => d.release_claims(),
        }
    }

    /// Run raw SQL (tests break the schema on purpose with it).
    #[cfg(test)]
    pub(crate) fn execute_for_test(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(d) => d.execute_for_test(sql),
            Db::Postgres(d) => d.execute_for_test(sql),
        }
    }
}
