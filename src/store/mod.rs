//! The persistent store: device registry, unread counters, the outbox and
//! adapters' key-value state, in one SQLite file.
//!
//! - [`db`]: schema, migrations, statements (synchronous).
//! - [`writer`]: the store thread. Every change goes through it; it applies
//!   commands in batches, one transaction per batch (group commit: one fsync
//!   for many messages), answers only after the commit, and then hands the
//!   new notifications to the apps' sinks. When a sink's queue is full the
//!   notifications wait in the outbox and are loaded as it drains, so memory
//!   stays bounded however long Apple is unreachable.
//! - [`StoreHandle`]: the async face the router, the report handler and
//!   adapters' state use.

pub mod db;
pub mod writer;

use pushbridge_api::context::StateFuture;
use pushbridge_api::{StateError, StateStore};
use tokio::sync::{mpsc, oneshot};

pub use db::{Db, DeviceRow, StoreError};
pub use writer::{Command, MessageJob};

/// Cheap, cloneable handle to the store thread.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
}

impl StoreHandle {
    pub(crate) fn new(tx: mpsc::Sender<Command>) -> Self {
        Self { tx }
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Send a command without waiting for it (the reply, if any, travels
    /// inside the command).
    pub async fn send_command(&self, cmd: Command) -> Result<(), StoreError> {
        self.tx.send(cmd).await.map_err(|_| StoreError::Closed)
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
