//! The persistent store: device registry, unread counters, the outbox and
//! adapters' key-value state, in one SQLite file or a PostgreSQL database.
//!
//! - [`backend`]: [`Db`], the one face of both backends; [`db`]: the
//!   SQLite backend's schema, migrations, statements (synchronous);
//!   [`settings`] and [`coalesce`] add the statements of their tables and
//!   columns; [`pg`]: the PostgreSQL backend (set-based per batch);
//!   [`copy`]: every row of one store into another (`store copy`).
//! - [`command`]: what the store thread is asked to do.
//! - [`writer`]: the store thread. Every change goes through it; it applies
//!   commands and completions in batches, one transaction per batch (group
//!   commit: one fsync for many messages), answers only after the commit,
//!   and then lets the [`crate::feed::Feed`] hand the new notifications to
//!   the sinks.
//! - [`messages`]: how a message, a user coming online and a setting are
//!   applied; [`coalesce`]: messages merged in the outbox until their
//!   window ends; [`settings`]: mutes and quiet hours.
//! - [`stats`]: commit latency, batch sizes, outbox depth (metrics).
//! - [`StoreHandle`]: the async face the router and adapters' state use;
//!   [`Store::open`] + [`OpenStore::start`]: how the gateway starts it.

pub mod backend;
pub mod coalesce;
pub mod command;
pub mod copy;
pub mod db;
pub mod messages;
pub mod pg;
pub mod settings;
mod sqlite_devices;
mod sqlite_outbox;
mod sqlite_unread;
pub mod stats;
pub mod streak;
mod wal_sync;
pub mod writer;

#[cfg(test)]
mod coalesce_tests;
#[cfg(test)]
mod writer_tests;

use std::sync::Arc;
use std::time::Duration;

use pushbridge_api::context::StateFuture;
use pushbridge_api::{DeviceToken, Environment, StateError, StateStore, UserId};
use tokio::sync::{mpsc, oneshot};

use command::Command;
pub use command::{MessageJob, ReplyTx, SettingChange};
pub use db::{Db, DeviceRow, StoreError};
use stats::{AppOutbox, StoreMetrics};

use crate::config::StoreConfig;
use crate::feed::Feed;
use crate::outcome::{CompletionReceiver, CompletionSender, Counters};
use crate::policy::Policy;

/// Commands queued for the store thread at most; senders wait beyond.
const STORE_QUEUE: usize = 65_536;
/// How often the WAL is folded into the main file (off the commit path).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Cheap, cloneable handle to the store thread.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
    metrics: Arc<StoreMetrics>,
    /// Presence lives in the store, shared by several gateways
    /// (PostgreSQL): the router hands it reports and leaves it the
    /// decision whether a message becomes a push.
    shared_presence: bool,
    /// The outbox statistics' own connection (SQLite) or session
    /// (PostgreSQL), not the store thread's.
    stats: Arc<stats::StatsReader>,
}

/// The store, opened, before its thread starts.
pub struct OpenStore {
    db: Db,
    rx: mpsc::Receiver<Command>,
    completions: CompletionReceiver,
    checkpointer: Option<db::Checkpointer>,
    metrics: Arc<StoreMetrics>,
    /// For receipts' durability hooks ([`writer`]'s `durability`).
    sync_tx: mpsc::WeakSender<Command>,
}

/// The running store thread.
pub struct StoreThread {
    thread: std::thread::JoinHandle<()>,
    _checkpointer: Option<db::Checkpointer>,
}

/// Opening the store.
pub struct Store;

/// A store's schema: migrations applied and migrations this pushbridge
/// knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Migrations applied (0: a new store).
    pub version: i64,
    /// Migrations this pushbridge has.
    pub latest: i64,
}

impl SchemaStatus {
    /// Migrations the next start applies.
    pub fn pending(&self) -> i64 {
        (self.latest - self.version).max(0)
    }
}

/// The schema of the store `config` names, read without changing it (a
/// missing SQLite file is version 0). Blocking (PostgreSQL is asked).
pub fn schema_status(config: &StoreConfig) -> Result<SchemaStatus, StoreError> {
    Ok(match &config.url {
        None => SchemaStatus {
            version: db::SqliteDb::schema_version_at(&config.path)?,
            latest: db::SqliteDb::MIGRATIONS,
        },
        Some(_) => SchemaStatus {
            version: pg::PgDb::schema_version_of(config)?,
            latest: pg::schema::MIGRATIONS.len() as i64,
        },
    })
}

impl Store {
    /// Open (and migrate) the SQLite file or the PostgreSQL database.
    /// Returns the handle, where sinks' completions go, and the store to
    /// [`OpenStore::start`] once the sinks are built.
    pub fn open(config: &StoreConfig) -> Result<(StoreHandle, CompletionSender, OpenStore), StoreError> {
        let db = Db::open_gateway(config)?;
        let checkpointer = match &db {
            Db::Sqlite(sqlite) => {
                sqlite.disable_autocheckpoint()?;
                Some(db::Checkpointer::start(&config.path, CHECKPOINT_EVERY)?)
            }
            Db::Postgres(_) => None,
        };
        let (tx, rx) = mpsc::channel(STORE_QUEUE);
        let wake_tx = tx.clone().downgrade();
        let sync_tx = tx.downgrade();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(tx) = wake_tx.upgrade() {
                // Full: the thread is busy and drains completions anyway.
                let _ = tx.try_send(Command::Wake);
            }
        });
        let (completion_tx, completions) = CompletionSender::new(Some(wake));
        let metrics = Arc::new(StoreMetrics::default());
        let shared_presence = db.shares_presence();
        let open = OpenStore {
            db,
            rx,
            completions,
            checkpointer,
            metrics: metrics.clone(),
            sync_tx,
        };
        let stats = Arc::new(match &open.db {
            Db::Sqlite(_) => stats::StatsReader::open(&config.path)?,
            Db::Postgres(_) => stats::StatsReader::postgres(config)?,
        });
        let handle = StoreHandle {
            tx,
            metrics,
            shared_presence,
            stats,
        };
        Ok((handle, completion_tx, open))
    }
}

impl OpenStore {
    /// This gateway's id in a shared PostgreSQL store (see
    /// [`pg::claims`]); `None` on SQLite.
    pub fn gateway_id(&self) -> Option<i64> {
        match &self.db {
            Db::Postgres(d) => d.gateway_id(),
            Db::Sqlite(_) => None,
        }
    }

    /// Start the store thread, feeding `feed` with what `policy` renders.
    pub fn start(self, feed: Feed, policy: Policy, counters: Arc<Counters>) -> std::io::Result<StoreThread> {
        let (db, completions, metrics, rx) = (self.db, self.completions, self.metrics, self.rx);
        let sync_tx = self.sync_tx;
        // Built on its thread: the writer reads the settings when made,
        // and PostgreSQL's blocking client must not run on the runtime.
        let thread = std::thread::Builder::new()
            .name("pushbridge-store".into())
            .spawn(move || {
                writer::Writer::new(db, feed, policy, counters, completions, metrics)
                    .with_durability(sync_tx)
                    .with_wal_sync()
                    .run(rx)
            })?;
        Ok(StoreThread {
            thread,
            _checkpointer: self.checkpointer,
        })
    }
}

/// Release the claims of gateway `gateway` on the PostgreSQL store
/// `config` names, over a connection of its own: a shutdown whose grace ran
/// out (the store thread still waits for the sinks) hands its notifications
/// to the other gateways at once instead of after the lease. What its sinks
/// still send may then be sent twice (at-least-once). Blocking.
pub fn release_claims_of(config: &StoreConfig, gateway: i64) -> Result<(), StoreError> {
    let config = config.clone();
    std::thread::spawn(move || {
        let db = pg::PgDb::open(&config)?;
        db.act_for(gateway);
        db.release_claims()
    })
    .join()
    .map_err(|_| StoreError::Unavailable("the PostgreSQL release thread panicked".into()))?
}

impl StoreThread {
    /// Wait for the thread to end (every handle and completion sender
    /// dropped); it checkpoints and closes the file first.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the store thread panicked; what it had not committed is sent again on the next start");
        }
    }
}

impl StoreHandle {
    /// The store thread's commit latency, batch sizes and last failure.
    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.metrics
    }

    /// Every app's outbox depth and oldest entry, once the store thread
    /// answered between transactions (so also a sign that it is alive).
    /// Counted over a connection of its own ([`stats::StatsReader`]), so a
    /// deep outbox's count does not stall the thread's transactions.
    pub async fn outbox_stats(&self) -> Result<Vec<AppOutbox>, StoreError> {
        self.call(|reply| Command::Alive { reply }).await?;
        self.stats.read().await
    }

    /// Whether the store thread has stopped taking commands.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    async fn send(&self, cmd: Command) -> Result<(), StoreError> {
        self.tx.send(cmd).await.map_err(|_| StoreError::Closed)
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Add a device for `user` (`topic` `None`: the first app); the answer
    /// goes to `reply` after the commit.
    pub async fn register(
        &self,
        user: UserId,
        token: DeviceToken,
        topic: Option<String>,
        environment: Option<Environment>,
        reply: Option<ReplyTx>,
    ) -> Result<(), StoreError> {
        self.send(Command::Register {
            user,
            token,
            topic,
            environment,
            reply,
        })
        .await
    }

    /// Remove a device of `user`.
    pub async fn unregister(&self, user: UserId, token: DeviceToken, reply: Option<ReplyTx>) -> Result<(), StoreError> {
        self.send(Command::Unregister { user, token, reply }).await
    }

    /// The user's devices ([`pushbridge_api::Reply::Devices`]).
    pub async fn list_devices(&self, user: UserId, reply: Option<ReplyTx>) -> Result<(), StoreError> {
        self.send(Command::ListDevices { user, reply }).await
    }

    /// Reset the user's unread counter (the badge) and drop their pushes
    /// still waiting in a coalescing window (they came online).
    pub async fn reset_unread(&self, user: UserId, reply: Option<ReplyTx>) -> Result<(), StoreError> {
        self.send(Command::ResetUnread { user, reply }).await
    }

    /// Whether presence lives in the store (PostgreSQL, shared by the
    /// gateways of one database) instead of the router's memory.
    pub fn shares_presence(&self) -> bool {
        self.shared_presence
    }

    /// Record a presence report in the shared store (PostgreSQL); coming
    /// online resets the badge there. Answered `Done` after the commit.
    pub async fn set_presence(
        &self,
        user: UserId,
        presence: pushbridge_api::Presence,
        reply: Option<ReplyTx>,
    ) -> Result<(), StoreError> {
        self.send(Command::Presence { user, presence, reply }).await
    }

    /// Queue a message's notifications; `reply` gets
    /// [`pushbridge_api::Reply::Queued`] once they are committed.
    pub async fn enqueue(&self, job: MessageJob, reply: Option<ReplyTx>) -> Result<(), StoreError> {
        self.send(Command::Enqueue { job, reply }).await
    }

    /// Change `user`'s settings (a mute, quiet hours); answered `Done`.
    pub async fn change_setting(
        &self,
        user: UserId,
        change: SettingChange,
        reply: Option<ReplyTx>,
    ) -> Result<(), StoreError> {
        self.send(Command::Setting { user, change, reply }).await
    }

    /// `user`'s settings ([`pushbridge_api::Reply::Settings`]).
    pub async fn settings(&self, user: UserId, reply: Option<ReplyTx>) -> Result<(), StoreError> {
        self.send(Command::ShowSettings { user, reply }).await
    }

    /// Queue pushes to explicit devices (all or none); `reply` gets
    /// [`pushbridge_api::Reply::Pushed`] once they are committed (receipts
    /// registered with the tracker for the pushes that ask for tracking).
    pub async fn push(&self, pushes: Vec<pushbridge_api::Push>, reply: Option<ReplyTx>) -> Result<(), StoreError> {
        self.send(Command::Push { pushes, reply }).await
    }

    /// Look for outbox entries waiting for room in a sink.
    pub async fn tick(&self) -> Result<(), StoreError> {
        self.send(Command::Tick).await
    }

    /// Render the notifications of messages queued after this with
    /// `policy` (a reload); those already in the outbox keep their payload.
    pub async fn set_policy(&self, policy: Policy) -> Result<(), StoreError> {
        self.send(Command::SetPolicy(Box::new(policy))).await
    }

    /// Shutdown: hand sinks nothing more (they drain and stop); keep
    /// recording their completions until they are gone.
    pub async fn close_sinks(&self) -> Result<(), StoreError> {
        self.send(Command::CloseSinks).await
    }
}

fn state_err(e: StoreError) -> StateError {
    StateError(e.to_string())
}

impl StateStore for StoreHandle {
    fn get<'a>(&'a self, ns: &'a str, key: &'a str) -> StateFuture<'a, Option<String>> {
        Box::pin(async move {
            self.call(|reply| Command::StateGet {
                ns: ns.to_owned(),
                key: key.to_owned(),
                reply,
            })
            .await
            .map_err(state_err)?
            .map_err(state_err)
        })
    }
    fn put<'a>(&'a self, ns: &'a str, key: &'a str, value: &'a str) -> StateFuture<'a, ()> {
        Box::pin(async move {
            self.call(|reply| Command::StatePut {
                ns: ns.to_owned(),
                key: key.to_owned(),
                value: Some(value.to_owned()),
                reply,
            })
            .await
            .map_err(state_err)?
            .map(|_| ())
            .map_err(state_err)
        })
    }
    fn delete<'a>(&'a self, ns: &'a str, key: &'a str) -> StateFuture<'a, bool> {
        Box::pin(async move {
            self.call(|reply| Command::StatePut {
                ns: ns.to_owned(),
                key: key.to_owned(),
                value: None,
                reply,
            })
            .await
            .map_err(state_err)?
            .map_err(state_err)
        })
    }
    fn list<'a>(&'a self, ns: &'a str, prefix: &'a str) -> StateFuture<'a, Vec<(String, String)>> {
        Box::pin(async move {
            self.call(|reply| Command::StateList {
                ns: ns.to_owned(),
                prefix: prefix.to_owned(),
                reply,
            })
            .await
            .map_err(state_err)?
            .map_err(state_err)
        })
    }
}
