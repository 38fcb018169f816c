//! The store thread: applies commands and completions in batches, one
//! transaction per batch (group commit: one fsync for many messages),
//! answers only after the commit, then lets the [`Feed`] hand the new
//! notifications to the sinks.
//!
//! A message's payload is rendered by the [`Policy`] here, on the store
//! thread, because its badge (the unread counter) is incremented inside
//! the same transaction that writes the outbox rows: the payload cannot be
//! built before the transaction without a second round trip. The writer
//! only asks; what a push says is the policy's.
//!
//! With coalescing on, messages wait in the outbox until their window ends
//! (see [`super::coalesce`]): the thread then wakes by itself at the
//! earliest window's end, and releases what is due at the start of a
//! transaction. How messages and settings are applied is in
//! [`super::messages`].

use std::sync::Arc;
use std::time::Duration;

use pushbridge_api::{DeviceToken, Environment, EventError, Reply, UserId};
use tokio::sync::mpsc;

use super::command::Command;
use super::command::{fail_command, hold, Pending};
use super::db::{now_ms, Db, StoreError};
use super::settings::SettingsCache;
use super::stats::StoreMetrics;
use super::streak::{log_failure, Streak};
use super::wal_sync::WalSync;
use crate::feed::{Feed, OutboxReader};
use crate::outcome::counters::Counters;
use crate::outcome::{events, Completion, CompletionReceiver, Notification, Outcome};
use crate::policy::Policy;

/// The store's clock: Unix milliseconds. Decides when a coalescing window
/// ends, whether a mute is over and whether quiet hours apply (tests
/// inject their own).
pub(crate) type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

mod claims;
mod durability;
mod push;

/// Completions waiting to be recorded beyond which no new notification is
/// handed to the sinks (they wait in the outbox): memory stays bounded
/// however long the store cannot record outcomes.
pub(crate) const MAX_PENDING_COMPLETIONS: usize = 65_536;

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 4096;

/// The store thread's state.
pub(crate) struct Writer {
    pub(super) db: Db,
    pub(super) feed: Feed,
    pub(super) policy: Policy,
    counters: Arc<Counters>,
    completions: CompletionReceiver,
    /// Batches in a row whose completions could not be recorded.
    completion_failures: u32,
    /// Recording completions fails (logged once a streak, see [`Streak`]).
    outcome_errors: Streak,
    /// Transactions fail (the database is away, the disk is full).
    transaction_errors: Streak,
    /// Commit latency, batch sizes, the last failure.
    metrics: Arc<StoreMetrics>,
    /// Every user's mutes and quiet hours (the tables' copy).
    pub(super) settings: SettingsCache,
    /// Now, in Unix milliseconds.
    pub(super) clock: Clock,
    /// The earliest end of a coalescing window (Unix ms); `None`: nothing
    /// waits.
    pub(super) next_due: Option<i64>,
    /// The store's own command channel, for receipts' durability hooks;
    /// `None`: every commit waits for the disk (see [`durability`]).
    durability: Option<mpsc::WeakSender<Command>>,
    /// The current transaction commits without waiting for the disk.
    deferring: bool,
    /// The last commit did not wait for the disk.
    unsynced: bool,
    /// When this gateway last heartbeat and looked for rows to take over
    /// (PostgreSQL; see [`claims`]); `None`: at the next chance.
    maintained_at: Option<std::time::Instant>,
    /// Heartbeats fail (the database is away; see [`Streak`]).
    heartbeat_errors: Streak,
    /// Taking over dead gateways' rows fails.
    takeover_errors: Streak,
    /// A heartbeat passed since the stopped sinks' entries were last
    /// released (see [`Writer::release_stopped`]).
    release_due: bool,
    /// Entries of stopped sinks released so far (the first release is
    /// logged at warn).
    released_stopped: u64,
    /// Syncs the SQLite WAL after commits and answers then (see
    /// [`super::wal_sync`]); `None`: commits sync themselves, or need not.
    wal_sync: Option<WalSync>,
}

/// A device removed in the current transaction: app, token, reason.
type Removed<'c> = (&'c str, &'c DeviceToken, &'c str);

/// The outbox as the feed reads it.
struct Outbox<'a>(&'a Db);

impl OutboxReader for Outbox<'_> {
    type Error = StoreError;
    fn load(&mut self, app: &Arc<str>, from: i64, limit: usize) -> Result<Vec<Notification>, StoreError> {
        self.0.load_outbox(app, from, limit)
    }
}

impl Writer {
    pub(crate) fn new(
        db: Db,
        feed: Feed,
        policy: Policy,
        counters: Arc<Counters>,
        completions: CompletionReceiver,
        metrics: Arc<StoreMetrics>,
    ) -> Self {
        Self {
            db,
            feed,
            policy,
            counters,
            completions,
            completion_failures: 0,
            outcome_errors: Streak::default(),
            transaction_errors: Streak::default(),
            metrics,
            settings: SettingsCache::default(),
            clock: Arc::new(now_ms),
            next_due: None,
            durability: None,
            deferring: false,
            unsynced: false,
            maintained_at: None,
            heartbeat_errors: Streak::default(),
            takeover_errors: Streak::default(),
            release_due: false,
            released_stopped: 0,
            wal_sync: None,
        }
        .load_settings()
    }

    /// Use `clock` instead of the system's (tests).
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.next_due = self.db.next_due().unwrap_or(None);
        self
    }

    /// (Re)load the settings' copy from the tables; logged when it fails
    /// (then no settings apply until the next successful load).
    fn load_settings(mut self) -> Self {
        self.reload_settings();
        self
    }

    fn reload_settings(&mut self) {
        match self.db.load_settings() {
            Ok(s) => self.settings = s,
            Err(e) => tracing::error!(error = %e, "cannot read users' settings (mutes, quiet hours)"),
        }
    }

    /// The next command; `Some(None)` when the earliest coalescing window
    /// ended first (or already had), `None` when every handle is gone.
    fn next_command(
        &self,
        rx: &mut mpsc::Receiver<Command>,
        timer: Option<&tokio::runtime::Runtime>,
    ) -> Option<Option<Command>> {
        let (Some(due), Some(rt)) = (self.next_due, timer) else {
            return rx.blocking_recv().map(Some);
        };
        let wait = due.saturating_sub((self.clock)());
        if wait <= 0 {
            return Some(rx.try_recv().ok());
        }
        // The timeout is made inside the runtime (its timer is that runtime's).
        let wait = Duration::from_millis(wait as u64);
        match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
            Ok(cmd) => cmd.map(Some),
            Err(_) => Some(None),
        }
    }

    /// Run until every command handle is dropped and every completion
    /// sender is gone, then checkpoint and close.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        self.warn_orphans();
        self.maintain(false);
        self.feed.refill(&mut Outbox(&self.db));
        match self.db.next_due() {
            Ok(due) => self.next_due = due,
            Err(e) => tracing::error!(error = %e, "cannot read the outbox's coalescing windows"),
        }
        // Waits for a command or the end of a coalescing window; without
        // one, windows end only with the next command.
        let timer = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the store thread's timer; coalesced pushes wait for the next command");
                None
            }
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut done = Vec::new();
        while let Some(first) = self.next_command(&mut rx, timer.as_ref()) {
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.completions.drain(&mut done);
            // Heartbeat (and take over) before the batch: after a stall
            // longer than the lease, this gateway is alive again before it
            // commits what it accepts, so others leave those rows alone.
            self.maintain(self.holding_sinks(&done));
            self.apply_batch(&mut batch, &mut done);
            self.release_stopped(&mut done);
            if !self.holding_sinks(&done) {
                self.feed.refill(&mut Outbox(&self.db));
            }
        }
        // Every handle is gone: the sinks get no more input (they drain and
        // end, dropping their completion senders), and their last
        // completions are recorded until the last sender is gone.
        self.feed.close();
        while let Some(c) = self.completions.blocking_recv() {
            done.push(c);
            self.completions.drain(&mut done);
            self.apply_batch(&mut batch, &mut done);
        }
        if !done.is_empty() {
            self.apply_batch(&mut batch, &mut done);
        }
        if !done.is_empty() {
            tracing::warn!(
                completions = done.len(),
                "store closing with outcomes it could not record; those notifications are sent again on the next start (or by another gateway sharing the store)"
            );
        }
        self.release();
        // What waits for the disk is answered before the file is closed.
        self.wal_sync = None;
        self.db.checkpoint();
        tracing::debug!("store closed");
    }

    /// Apply `batch` and `done` in one transaction (one fsync). If it
    /// fails, every command in it is answered with the error; the
    /// completions are kept in `done` and tried again with the next batch
    /// (a completion lost would re-send a delivered notification on the next
    /// start). Completions are applied first: if they cannot be recorded the
    /// transaction starts over with the commands alone, so they can never
    /// block the adapters' commands; they are kept and tried again with every
    /// batch until the store can write them (while more than
    /// [`MAX_PENDING_COMPLETIONS`] wait, new notifications wait in the
    /// outbox instead of going to the sinks). (Not a savepoint: SQLite keeps a savepoint's sub-journal in
    /// a temporary file, which cost every batch ~10% of end-to-end
    /// throughput.)
    pub(crate) fn apply_batch(&mut self, batch: &mut Vec<Command>, done: &mut Vec<Completion>) {
        let mut pending = Vec::with_capacity(batch.len());
        let mut out: Vec<(usize, Notification)> = Vec::new();
        let mut control = Vec::new();
        let mut removed = Vec::new();
        let mut completed = done.is_empty();
        let mut size = done.len();
        let started = std::time::Instant::now();
        let result = self.prepare_durability(batch).and_then(|mark| {
            self.db.begin()?;
            if !completed {
                match self.complete(done, &mut removed) {
                    Ok(()) => completed = true,
                    Err(e) => {
                        log_failure!(
                            self.outcome_errors,
                            error = %e,
                            completions = done.len(),
                            "cannot record outcomes; they are kept and tried again with every batch"
                        );
                        removed.clear();
                        self.db.rollback();
                        self.db.begin()?;
                    }
                }
            }
            // After the completions: their retry above rolls back.
            self.release_due(&mut out)?;
            self.db.prefetch(batch)?;
            let mut cmds = batch.drain(..);
            while let Some(cmd) = cmds.next() {
                match cmd {
                    cmd if cmd.is_control() => control.push(cmd),
                    // In order: messages before it keep the old policy.
                    Command::SetPolicy(p) => self.policy = *p,
                    cmd => {
                        size += 1;
                        if let Err(e) = self.apply(cmd, &mut pending, &mut out) {
                            // The rest is answered with the error below
                            // (dropping the drain would drop them unanswered).
                            let rest: Vec<Command> = cmds.collect();
                            batch.extend(rest);
                            return Err(e);
                        }
                    }
                }
            }
            if mark {
                self.write_mark()?;
            }
            self.db.commit()
        });
        match result {
            Ok(()) => {
                let failures = self.transaction_errors.succeeded();
                if failures > 0 {
                    tracing::info!(failures, "store transactions commit again");
                }
                self.committed_durability();
                self.metrics.committed(started.elapsed(), size);
                for (app, token, reason) in removed {
                    events::DeviceRemoved { app, token, reason }.emit(&self.counters.app(app));
                }
                if completed {
                    self.outcome_errors.succeeded();
                    if self.completion_failures > 0 {
                        tracing::info!(
                            completions = done.len(),
                            tries = self.completion_failures,
                            "outcomes recorded again"
                        );
                    }
                    done.clear();
                    self.completion_failures = 0;
                } else {
                    self.completion_failures += 1;
                }
                match &self.wal_sync {
                    Some(wal) if !self.deferring => wal.answer_when_synced(pending),
                    _ => pending.into_iter().for_each(Pending::send),
                }
                if self.holding_sinks(done) {
                    self.feed.hold(out);
                } else {
                    self.feed.dispatch(out);
                }
            }
            Err(e) => self.transaction_failed(&e, pending, batch, done.len(), &mut control),
        }
        for c in control {
            match c {
                Command::CloseSinks => self.feed.close(),
                Command::Alive { reply } => drop(reply.send(())),
                _ => {}
            }
        }
    }

    /// The transaction failed with `e`: roll back and answer every
    /// command (held answers and those not applied yet) with the error.
    fn transaction_failed(
        &mut self,
        e: &StoreError,
        pending: Vec<Pending>,
        batch: &mut Vec<Command>,
        completions: usize,
        control: &mut Vec<Command>,
    ) {
        self.db.rollback();
        // What the transaction changed in the settings and the coalescing
        // windows is undone too; a release that failed is tried again in a
        // second, not in a busy loop.
        self.reload_settings();
        let now = (self.clock)();
        self.next_due = match self.db.next_due() {
            Ok(Some(due)) if due <= now => Some(now + 1000),
            Ok(due) => due,
            Err(_) => Some(now + 1000),
        };
        self.metrics.failed(e);
        let msg = format!("store: {e}");
        let commands = pending.len() + batch.len();
        // Every batch fails while the database is away: one error a streak.
        log_failure!(
            self.transaction_errors,
            error = %e,
            commands,
            completions,
            "store transaction failed; nothing in it was accepted"
        );
        for p in pending {
            p.fail(&msg);
        }
        for cmd in batch.drain(..) {
            match cmd {
                // A policy is not store data: it applies anyway.
                Command::SetPolicy(p) => self.policy = *p,
                // Shutdown and the liveness question (`Alive`) are not
                // store data either: they are handled after the batch as usual.
                cmd if cmd.is_control() => control.push(cmd),
                cmd => fail_command(cmd, &msg),
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn db_for_test(&self) -> &Db {
        &self.db
    }

    #[cfg(test)]
    pub(crate) fn policy_for_test(&self) -> &Policy {
        &self.policy
    }

    #[cfg(test)]
    pub(crate) fn refill_for_test(&mut self) {
        self.feed.refill(&mut Outbox(&self.db));
    }

    /// Whether new notifications wait in the outbox instead of going to the
    /// sinks, because [`MAX_PENDING_COMPLETIONS`] outcomes wait to be
    /// recorded.
    fn holding_sinks(&self, done: &[Completion]) -> bool {
        done.len() >= MAX_PENDING_COMPLETIONS
    }

    /// Record completions: their outbox rows go, in one statement per run
    /// of consecutive ids ([`Db::delete_outbox_ids`]); a device APNS says
    /// is gone goes too (noted in `removed` for the event after the commit).
    fn complete<'c>(&self, done: &'c [Completion], removed: &mut Vec<Removed<'c>>) -> Result<(), StoreError> {
        let settled: Vec<i64> = done
            .iter()
            .filter_map(|c| match c {
                Completion::Settled { id, .. } => Some(*id),
                Completion::DeviceGone { .. } => None,
            })
            .collect();
        self.db.delete_outbox_ids(settled)?;
        for c in done {
            let (app, token, since_ms, reason) = match c {
                Completion::Settled {
                    app,
                    token,
                    outcome:
                        Outcome::Rejected {
                            remove_device: true,
                            since_ms,
                            reason,
                        },
                    ..
                } => (app, token, *since_ms, reason.as_str()),
                Completion::Settled { .. } => continue,
                Completion::DeviceGone {
                    app,
                    token,
                    since_ms,
                    reason,
                } => (app, token, *since_ms, reason.as_str()),
            };
            if self.db.remove_device(token, app, since_ms)? {
                removed.push((app, token, reason));
            }
        }
        Ok(())
    }

    /// Apply one command; its answer is held in `pending` until the commit
    /// (also when it fails: then the whole batch is answered with the error).
    fn apply(
        &mut self,
        cmd: Command,
        pending: &mut Vec<Pending>,
        out: &mut Vec<(usize, Notification)>,
    ) -> Result<(), StoreError> {
        let done = || Ok(Reply::Done);
        match cmd {
            Command::Register {
                user,
                token,
                topic,
                environment,
                reply,
            } => {
                let r = self.register(user, token, topic, environment);
                hold(pending, reply, r, done(), Pending::Event)
            }
            Command::Unregister { user, token, reply } => {
                let r = self.db.unregister(&user, &token).map(|n| {
                    if n > 0 {
                        tracing::info!(user = %user, device = token.short(), "device unregistered");
                    }
                    Ok(Reply::Done)
                });
                hold(pending, reply, r, done(), Pending::Event)
            }
            Command::ResetUnread { user, reply } => {
                let r = self.came_online(&user).map(|_| Ok(Reply::Done));
                hold(pending, reply, r, done(), Pending::Event)
            }
            Command::Presence { user, presence, reply } => {
                let r = self.record_presence(&user, presence).map(|_| Ok(Reply::Done));
                hold(pending, reply, r, done(), Pending::Event)
            }
            Command::Setting { user, change, reply } => {
                let r = self.change_setting(&user, change).map(|_| Ok(Reply::Done));
                hold(pending, reply, r, done(), Pending::Event)
            }
            Command::ShowSettings { user, reply } => {
                let r = self.show_settings(&user);
                hold(pending, reply, r, done(), Pending::Event)
            }
            Command::ListDevices { user, reply } => {
                let r = self.db.devices_of(&user).map(|d| Ok(Reply::Devices(d)));
                hold(pending, reply, r, done(), Pending::Event)
            }
            Command::Enqueue { job, reply } => {
                let r = self.enqueue(job, out);
                hold(pending, reply, r, done(), Pending::Event)
            }
            Command::Push { pushes, reply } => {
                let r = self.push(pushes, out);
                hold(pending, reply, r, done(), Pending::Event)
            }
            Command::Sync { reply } => hold(pending, reply, Ok(done()), done(), Pending::Event),
            Command::StateGet { ns, key, reply } => {
                let r = self.db.state_get(&ns, &key);
                hold(pending, reply, r, None, Pending::Get)
            }
            Command::StatePut { ns, key, value, reply } => {
                let r = match value {
                    Some(v) => self.db.state_put(&ns, &key, &v).map(|_| true),
                    None => self.db.state_delete(&ns, &key),
                };
                hold(pending, reply, r, false, Pending::Put)
            }
            Command::StateList { ns, prefix, reply } => {
                let r = self.db.state_list(&ns, &prefix);
                hold(pending, reply, r, Vec::new(), Pending::List)
            }
            Command::Tick | Command::CloseSinks | Command::Wake | Command::Alive { .. } | Command::SetPolicy(_) => {
                Ok(())
            }
        }
    }

    /// Add (or move) a device; an unknown topic is the adapter's error.
    fn register(
        &mut self,
        user: UserId,
        token: DeviceToken,
        topic: Option<String>,
        environment: Option<Environment>,
    ) -> Result<Result<Reply, EventError>, StoreError> {
        let app = match &topic {
            None => self.feed.slot(0),
            Some(t) => self.feed.index(t).and_then(|i| self.feed.slot(i)),
        };
        let Some(app) = app else {
            return Ok(Err(EventError::UnknownTopic(topic.unwrap_or_default())));
        };
        let env = environment.unwrap_or(app.environment);
        self.db.register(&user, &token, &app.app, env, now_ms())?;
        tracing::info!(user = %user, device = token.short(), app = %app.app, "device registered");
        Ok(Ok(Reply::Done))
    }
}
