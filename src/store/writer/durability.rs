//! Commits that do not wait for the disk, for pushes whose adapter waits
//! for Apple's answer anyway ([`pushbridge_api::Receipts::wait`]).
//!
//! Under `synchronous = "full"` every commit is fsynced before anyone is
//! answered. A Matrix homeserver, though, gets its answer only after Apple
//! answered (or the adapter's deadline passed), and retries a request it
//! got no answer to; so a transaction holding such tracked pushes and
//! nothing else but the sinks' outcomes commits without the fsync, which takes the disk's
//! latency out of every request. What the adapter acknowledges while
//! Apple has not answered yet is made durable first: the receipts carry a
//! hook that sends [`Command::Sync`], answered after a synced commit. In
//! WAL mode the WAL is synced as a whole, so one synced commit makes every
//! earlier one durable; if nothing else is written, a marker row is (an
//! empty transaction would not sync).
//!
//! Where the WAL is synced off the store thread
//! ([`super::super::wal_sync`], the default under `synchronous = "full"`),
//! every commit is written without the fsync; "waiting for the disk" then
//! means the transaction's answers go through that thread's next fsync,
//! and a deferred transaction's answers do not (a [`Command::Sync`]'s
//! always do; no marker is written then, as that thread syncs the file
//! whether or not the transaction wrote anything).
//!
//! The same holds for transactions of outcomes alone ("delivered, remove
//! it"): an outcome lost only sends its notification again, which
//! at-least-once delivery allows, so they do not wait for the disk either.
//!
//! What this costs: a machine crash (not a process crash) can lose the
//! rows of unsynced commits, at most the last `CHECKPOINT_EVERY` (the
//! checkpointer syncs the WAL before each checkpoint, and any synced commit
//! syncs it whole): unacknowledged pushes, which the requester sends again,
//! and outcomes, whose notifications are sent again. Their pushes were either answered by Apple
//! already (then a lost outbox row only means nothing to send) or not yet
//! acknowledged to the requester, which sends them again.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use pushbridge_api::{DurabilityHook, EventError, Reply};
use tokio::sync::{mpsc, oneshot};

use super::super::command::Command;
use super::super::db::{Db, StoreError};
use super::super::stats::StoreMetrics;
use super::super::wal_sync::WalSync;
use super::Writer;

/// Adapter-state namespace and key of the marker row (adapters' namespaces
/// are their instance names; none of ours writes this key).
const MARK_NS: &str = "pushbridge/store";
const MARK_KEY: &str = "synced-at-ms";

impl Writer {
    /// Let transactions of tracked pushes skip the fsync, made durable on
    /// demand through `tx` (the store's own command channel; weak, so it
    /// does not keep the store open).
    pub(crate) fn with_durability(mut self, tx: mpsc::WeakSender<Command>) -> Self {
        self.durability = Some(tx);
        self
    }

    /// Under SQLite's `synchronous = "full"`, sync the WAL on a thread of
    /// its own after commits instead of inside them, answering then (see
    /// [`super::super::wal_sync`]). If that thread cannot start, commits
    /// keep syncing themselves (logged).
    pub(crate) fn with_wal_sync(self) -> Self {
        self.with_wal_sync_by(WalSync::start)
    }

    /// [`Writer::with_wal_sync`] with `sync` instead of an fsync of the
    /// WAL (tests: a sync that waits, or fails).
    #[cfg(test)]
    pub(crate) fn with_wal_sync_fn(self, sync: super::super::wal_sync::SyncFn) -> Self {
        self.with_wal_sync_by(|_, metrics| WalSync::start_with(sync, metrics))
    }

    fn with_wal_sync_by(mut self, start: impl FnOnce(PathBuf, Arc<StoreMetrics>) -> io::Result<WalSync>) -> Self {
        let Db::Sqlite(db) = &mut self.db else { return self };
        if !db.syncs_commits() {
            return self;
        }
        let Some(wal) = db.wal_path() else {
            tracing::warn!("the database has no WAL file path; commits sync the WAL themselves, on the store thread");
            return self;
        };
        let started = start(wal.clone(), self.metrics.clone())
            .map_err(|e| StoreError::Open {
                path: wal.display().to_string(),
                message: format!("cannot sync the WAL off the store thread: {e}"),
            })
            .and_then(|sync| db.sync_elsewhere().map(|()| sync));
        match started {
            Ok(sync) => self.wal_sync = Some(sync),
            Err(e) => tracing::warn!(error = %e, "commits sync the WAL themselves, on the store thread"),
        }
        self
    }

    /// Before a transaction: fail it whole when the WAL can no longer be
    /// synced (a sync failed: see [`WalSync::poisoned`]).
    fn check_wal(&self) -> Result<(), StoreError> {
        match self.wal_sync.as_ref().and_then(WalSync::poisoned) {
            Some(why) => Err(StoreError::Unavailable(why)),
            None => Ok(()),
        }
    }

    /// Before a transaction: choose whether its commit waits for the disk.
    /// `Ok(true)`: it answers a [`Command::Sync`] while earlier commits
    /// are not synced, so it must write (the marker) to sync.
    /// Fails (the whole transaction) once the WAL can no longer be synced.
    pub(super) fn prepare_durability(&mut self, batch: &[Command]) -> Result<bool, StoreError> {
        self.check_wal()?;
        self.deferring =
            self.durability.is_some() && self.db.can_defer_sync() && batch.iter().all(Command::may_defer_sync);
        self.db.defer_sync(self.deferring)?;
        // The sync thread syncs the file itself: no marker needed.
        Ok(self.unsynced && self.wal_sync.is_none() && batch.iter().any(|c| matches!(c, Command::Sync { .. })))
    }

    /// Inside the transaction: the marker a sync writes.
    pub(super) fn write_mark(&self) -> Result<(), StoreError> {
        self.db.state_put(MARK_NS, MARK_KEY, &(self.clock)().to_string())
    }

    /// The transaction committed.
    pub(super) fn committed_durability(&mut self) {
        self.unsynced = self.deferring;
    }

    /// The hook for receipts of pushes committed in this transaction;
    /// `None` when the commit waits for the disk.
    pub(super) fn durability_hook(&self) -> Option<DurabilityHook> {
        let weak = self.durability.clone().filter(|_| self.deferring)?;
        Some(std::sync::Arc::new(move || {
            let weak = weak.clone();
            Box::pin(async move {
                let tx = weak.upgrade().ok_or(EventError::ShuttingDown)?;
                let (reply, rx) = oneshot::channel();
                tx.send(Command::Sync { reply: Some(reply) })
                    .await
                    .map_err(|_| EventError::ShuttingDown)?;
                match rx.await {
                    Ok(Ok(Reply::Done)) => Ok(()),
                    Ok(Ok(other)) => Err(EventError::Unavailable(format!(
                        "unexpected answer to a sync: {other:?}"
                    ))),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(EventError::ShuttingDown),
                }
            })
        }))
    }
}
