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

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pushbridge_api::{DeviceToken, Environment, EventError, Reply, UserId};
use tokio::sync::{mpsc, oneshot};

use super::db::{now_ms, Db, NewNotification, StoreError};
use super::stats::{self, AppOutbox, StoreMetrics};
use crate::feed::{Feed, OutboxReader};
use crate::outcome::counters::Counters;
use crate::outcome::{events, Completion, CompletionReceiver, Notification, Outcome};
use crate::policy::Policy;

/// Completions waiting to be recorded beyond which no new notification is
/// handed to the sinks (they wait in the outbox): memory stays bounded
/// however long the store cannot record outcomes.
pub(crate) const MAX_PENDING_COMPLETIONS: usize = 65_536;

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 4096;

/// Where an adapter's answer goes.
pub type ReplyTx = oneshot::Sender<Result<Reply, EventError>>;

/// A message the router decided to push.
#[derive(Debug)]
pub struct MessageJob {
    pub to: UserId,
    pub from: String,
    /// APNS `alert.subtitle` (api `Message::subtitle`).
    pub subtitle: Option<String>,
    pub text: Option<String>,
    pub thread: Option<String>,
    /// Only this device.
    pub device: Option<DeviceToken>,
    /// Badge given by the IM server; `None`: increment the unread counter.
    pub badge: Option<u32>,
}

/// What the store thread does (sent through [`super::StoreHandle`]).
#[derive(Debug)]
pub(crate) enum Command {
    Register {
        user: UserId,
        token: DeviceToken,
        topic: Option<String>,
        environment: Option<Environment>,
        reply: Option<ReplyTx>,
    },
    Unregister {
        user: UserId,
        token: DeviceToken,
        reply: Option<ReplyTx>,
    },
    ResetUnread {
        user: UserId,
        reply: Option<ReplyTx>,
    },
    Enqueue {
        job: MessageJob,
        reply: Option<ReplyTx>,
    },
    ListDevices {
        user: UserId,
        reply: Option<ReplyTx>,
    },
    StateGet {
        ns: String,
        key: String,
        reply: oneshot::Sender<Result<Option<String>, StoreError>>,
    },
    /// `value: None` deletes; the answer says whether the key existed.
    StatePut {
        ns: String,
        key: String,
        value: Option<String>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    StateList {
        ns: String,
        prefix: String,
        reply: oneshot::Sender<Result<Vec<(String, String)>, StoreError>>,
    },
    /// Render notifications with this policy from now on (a reload).
    SetPolicy(Box<Policy>),
    /// Wake up to load waiting outbox entries into sinks with room.
    Tick,
    /// Completions are waiting.
    Wake,
    /// Shutdown: hand sinks nothing more (they drain and stop); keep
    /// recording their reports until every handle is gone.
    CloseSinks,
    /// Read every app's outbox depth and oldest entry (after the batch).
    OutboxStats {
        reply: oneshot::Sender<Result<Vec<AppOutbox>, StoreError>>,
    },
}

/// An answer held until the batch commits.
enum Pending {
    Event(Option<ReplyTx>, Result<Reply, EventError>),
    Get(oneshot::Sender<Result<Option<String>, StoreError>>, Option<String>),
    Put(oneshot::Sender<Result<bool, StoreError>>, bool),
    List(
        oneshot::Sender<Result<Vec<(String, String)>, StoreError>>,
        Vec<(String, String)>,
    ),
}

impl Pending {
    fn send(self) {
        match self {
            Pending::Event(tx, r) => {
                if let Some(tx) = tx {
                    let _ = tx.send(r);
                }
            }
            Pending::Get(tx, v) => drop(tx.send(Ok(v))),
            Pending::Put(tx, v) => drop(tx.send(Ok(v))),
            Pending::List(tx, v) => drop(tx.send(Ok(v))),
        }
    }

    fn fail(self, msg: &str) {
        let err = || StoreError::Corrupt(msg.to_owned());
        match self {
            Pending::Event(tx, _) => {
                if let Some(tx) = tx {
                    let _ = tx.send(Err(EventError::Unavailable(msg.to_owned())));
                }
            }
            Pending::Get(tx, _) => drop(tx.send(Err(err()))),
            Pending::Put(tx, _) => drop(tx.send(Err(err()))),
            Pending::List(tx, _) => drop(tx.send(Err(err()))),
        }
    }
}

/// The store thread's state.
pub(crate) struct Writer {
    db: Db,
    feed: Feed,
    policy: Policy,
    counters: Arc<Counters>,
    completions: CompletionReceiver,
    /// Batches in a row whose completions could not be recorded.
    completion_failures: u32,
    /// Commit latency, batch sizes, the last failure.
    metrics: Arc<StoreMetrics>,
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
            metrics,
        }
    }

    /// Run until every command handle is dropped and every completion
    /// sender is gone, then checkpoint and close.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        self.warn_orphans();
        self.feed.refill(&mut Outbox(&self.db));
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut done = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.completions.drain(&mut done);
            self.apply_batch(&mut batch, &mut done);
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
                "store closing with outcomes it could not record; those notifications are sent again on the next start"
            );
        }
        self.db.checkpoint();
        tracing::debug!("store closed");
    }

    fn warn_orphans(&self) {
        match self.db.outbox_counts() {
            Ok(counts) => {
                for (app, n) in counts {
                    if self.feed.index(&app).is_some() {
                        tracing::info!(app, pending = n, "re-queueing notifications from the outbox");
                    } else {
                        tracing::warn!(
                            app,
                            pending = n,
                            "outbox holds notifications for an app that is not configured; they are kept until it is"
                        );
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
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
        let result = self.db.begin().and_then(|_| {
            if !completed {
                match done.iter().try_for_each(|c| self.complete(c, &mut removed)) {
                    Ok(()) => completed = true,
                    Err(e) => {
                        tracing::error!(error = %e, completions = done.len(), "cannot record outcomes; trying again with the next batch");
                        removed.clear();
                        self.db.rollback();
                        self.db.begin()?;
                    }
                }
            }
            let mut cmds = batch.drain(..);
            while let Some(cmd) = cmds.next() {
                match cmd {
                    Command::Tick | Command::CloseSinks | Command::Wake | Command::OutboxStats { .. } => control.push(cmd),
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
            self.db.commit()
        });
        match result {
            Ok(()) => {
                self.metrics.committed(started.elapsed(), size);
                for (app, token, reason) in removed {
                    events::DeviceRemoved { app, token, reason }.emit(&self.counters.app(app));
                }
                if completed {
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
                    self.completion_failed(done);
                }
                for p in pending {
                    p.send();
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
                Command::OutboxStats { reply } => drop(reply.send(stats::outbox(&self.db))),
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
        self.metrics.failed(e);
        let msg = format!("store: {e}");
        tracing::error!(error = %e, commands = pending.len() + batch.len(), completions, "store transaction failed; nothing in it was accepted");
        for p in pending {
            p.fail(&msg);
        }
        for cmd in batch.drain(..) {
            match cmd {
                // A policy is not store data: it applies anyway.
                Command::SetPolicy(p) => self.policy = *p,
                // Shutdown and statistics are not store data either: they
                // are handled after the batch as usual.
                Command::Tick | Command::CloseSinks | Command::Wake | Command::OutboxStats { .. } => control.push(cmd),
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

    /// Completions that failed again: kept, and tried again with every
    /// batch until the store can write them (never given up: a completion
    /// lost would send a delivered notification again). Logged when the
    /// failures start and every 1,000 batches after.
    fn completion_failed(&mut self, done: &[Completion]) {
        self.completion_failures += 1;
        if self.completion_failures % 1000 == 1 {
            tracing::error!(
                completions = done.len(),
                tries = self.completion_failures,
                "cannot record outcomes; they are kept and tried again with every batch"
            );
        }
    }

    /// Record one completion: the outbox row goes; a device APNS says is
    /// gone goes too (noted in `removed` for the event after the commit).
    fn complete<'c>(&self, c: &'c Completion, removed: &mut Vec<Removed<'c>>) -> Result<(), StoreError> {
        let (app, token, since_ms, reason) = match c {
            Completion::Settled {
                id,
                app,
                token,
                outcome,
            } => {
                self.db.delete_outbox(*id)?;
                match outcome {
                    Outcome::Rejected {
                        remove_device: true,
                        since_ms,
                        reason,
                    } => (app, token, *since_ms, reason.as_str()),
                    _ => return Ok(()),
                }
            }
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
                let r = self.db.reset_unread(&user).map(|_| Ok(Reply::Done));
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
            Command::Tick
            | Command::CloseSinks
            | Command::Wake
            | Command::OutboxStats { .. }
            | Command::SetPolicy(_) => Ok(()),
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

    /// Turn a message into outbox entries: one per device of the user in a
    /// configured app, with the unread counter incremented once.
    fn enqueue(
        &mut self,
        job: MessageJob,
        out: &mut Vec<(usize, Notification)>,
    ) -> Result<Result<Reply, EventError>, StoreError> {
        let devices = self.db.devices_of(&job.to)?;
        let targets: Vec<(DeviceToken, usize, Environment)> = devices
            .into_iter()
            .filter(|(token, _, _)| job.device.as_ref().is_none_or(|d| d == token))
            .filter_map(|(token, app, env)| self.feed.index(&app).map(|i| (token, i, env)))
            .collect();
        if targets.is_empty() {
            return Ok(match job.device {
                Some(_) => Err(EventError::NoSuchDevice),
                None => Ok(Reply::Queued(0)),
            });
        }
        let badge = match job.badge {
            Some(b) => b,
            None => self.db.increment_unread(&job.to)?,
        };
        let created_ms = now_ms();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut msg = self
            .policy
            .message(&job.from, job.text.as_deref(), job.thread.as_deref(), badge, now)
            .with_subtitle(job.subtitle.as_deref());
        for (token, i, environment) in &targets {
            let Some(slot) = self.feed.slot(*i) else { continue };
            let (app, payload) = (slot.app.clone(), msg.payload(&self.policy, slot.limit));
            let id = self.db.insert_outbox(&NewNotification {
                topic: &app,
                token,
                environment: *environment,
                payload: &payload,
                expiration: msg.expiration,
                priority: msg.priority,
                collapse_id: msg.collapse_id.as_deref(),
                created_ms,
            })?;
            let n = Notification {
                id,
                app,
                token: token.clone(),
                environment: *environment,
                payload,
                expiration: msg.expiration,
                priority: msg.priority,
                collapse_id: msg.collapse_id.clone(),
                created_ms,
                attempts: 0,
                redelivery: false,
            };
            out.push((*i, n));
        }
        Ok(Ok(Reply::Queued(targets.len())))
    }
}

/// Hold `reply` with the result of its command; when the store failed, hold
/// it all the same (with `fallback`, never sent: the batch is answered with
/// the error) and fail the batch.
fn hold<R, T>(
    pending: &mut Vec<Pending>,
    reply: R,
    result: Result<T, StoreError>,
    fallback: T,
    make: fn(R, T) -> Pending,
) -> Result<(), StoreError> {
    match result {
        Ok(v) => {
            pending.push(make(reply, v));
            Ok(())
        }
        Err(e) => {
            pending.push(make(reply, fallback));
            Err(e)
        }
    }
}

fn fail_command(cmd: Command, msg: &str) {
    let event_err = || Err(EventError::Unavailable(msg.to_owned()));
    let store_err = || StoreError::Corrupt(msg.to_owned());
    match cmd {
        Command::Register { reply, .. }
        | Command::Unregister { reply, .. }
        | Command::ResetUnread { reply, .. }
        | Command::Enqueue { reply, .. }
        | Command::ListDevices { reply, .. } => {
            if let Some(tx) = reply {
                let _ = tx.send(event_err());
            }
        }
        Command::StateGet { reply, .. } => drop(reply.send(Err(store_err()))),
        Command::StatePut { reply, .. } => drop(reply.send(Err(store_err()))),
        Command::StateList { reply, .. } => drop(reply.send(Err(store_err()))),
        Command::OutboxStats { reply } => drop(reply.send(Err(store_err()))),
        Command::Tick | Command::CloseSinks | Command::Wake | Command::SetPolicy(_) => {}
    }
}
