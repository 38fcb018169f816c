//! The store thread: group commit, the outbox, and feeding the sinks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pushbridge_api::{DeviceToken, Environment, EventError, Reply, UserId};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::db::{now_ms, Db, NewNotification, StoreError};
use crate::metrics::Stats;
use crate::policy::{Alert, Policy};
use crate::sink::Notification;

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 4096;

/// Where an adapter's answer goes.
pub type ReplyTx = oneshot::Sender<Result<Reply, EventError>>;

/// A message the router decided to push.
#[derive(Debug)]
pub struct MessageJob {
    pub to: UserId,
    pub from: String,
    pub text: Option<String>,
    pub thread: Option<String>,
    /// Only this device.
    pub device: Option<DeviceToken>,
    /// Badge given by the IM server; `None`: increment the unread counter.
    pub badge: Option<u32>,
}

/// What the store thread does.
#[derive(Debug)]
pub enum Command {
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
    /// A sink reported a final outcome: drop it from the outbox.
    Complete {
        id: i64,
    },
    /// APNS said this token is gone.
    RemoveDevice {
        token: DeviceToken,
        topic: Arc<str>,
        since_ms: Option<i64>,
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
    /// Wake up to load waiting outbox entries into sinks with room.
    Tick,
    /// Shutdown: hand sinks nothing more (they drain and stop); keep
    /// recording their reports until every handle is gone.
    CloseSinks,
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

/// One configured app as the store thread sees it.
pub struct AppSlot {
    pub topic: Arc<str>,
    pub environment: Environment,
    /// Payload limit of the app's protocol.
    pub limit: usize,
    /// The sink's queue; `None` once shutting down.
    pub sender: Option<mpsc::Sender<Notification>>,
    /// Lowest outbox id of this app not yet handed to the sink; `None` when
    /// everything is in the sink's hands.
    pending_from: Option<i64>,
}

impl AppSlot {
    pub fn new(topic: &str, environment: Environment, limit: usize, sender: mpsc::Sender<Notification>) -> Self {
        Self {
            topic: topic.into(),
            environment,
            limit,
            sender: Some(sender),
            // On start everything in the outbox is re-queued.
            pending_from: Some(0),
        }
    }
}

/// The store thread's state.
pub struct Writer {
    db: Db,
    apps: Vec<AppSlot>,
    by_topic: HashMap<Arc<str>, usize>,
    policy: Policy,
    stats: Arc<Stats>,
}

impl Writer {
    pub fn new(db: Db, apps: Vec<AppSlot>, policy: Policy, stats: Arc<Stats>) -> Self {
        let by_topic = apps.iter().enumerate().map(|(i, a)| (a.topic.clone(), i)).collect();
        Self {
            db,
            apps,
            by_topic,
            policy,
            stats,
        }
    }

    /// Run until every handle is dropped, then checkpoint and close.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        self.warn_orphans();
        self.refill();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.apply_batch(&mut batch);
            self.refill();
        }
        self.db.checkpoint();
        tracing::debug!("store closed");
    }

    fn warn_orphans(&self) {
        match self.db.outbox_counts() {
            Ok(counts) => {
                for (topic, n) in counts {
                    if self.by_topic.contains_key(topic.as_str()) {
                        tracing::info!(topic, pending = n, "re-queueing notifications from the outbox");
                    } else {
                        tracing::warn!(
                            topic,
                            pending = n,
                            "outbox holds notifications for an app that is not configured; they are kept until it is"
                        );
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
    }

    fn apply_batch(&mut self, batch: &mut Vec<Command>) {
        let mut pending = Vec::with_capacity(batch.len());
        let mut out: Vec<(usize, Notification)> = Vec::new();
        let mut control = Vec::new();
        let result = self.db.begin().and_then(|_| {
            for cmd in batch.drain(..) {
                match cmd {
                    Command::Tick | Command::CloseSinks => control.push(cmd),
                    cmd => self.apply(cmd, &mut pending, &mut out)?,
                }
            }
            self.db.commit()
        });
        match result {
            Ok(()) => {
                for p in pending {
                    p.send();
                }
                self.dispatch(out);
            }
            Err(e) => {
                self.db.rollback();
                let msg = format!("store: {e}");
                tracing::error!(error = %e, commands = pending.len() + batch.len(), "store transaction failed; nothing in it was accepted");
                for p in pending {
                    p.fail(&msg);
                }
                for cmd in batch.drain(..) {
                    fail_command(cmd, &msg);
                }
            }
        }
        for cmd in control {
            if let Command::CloseSinks = cmd {
                for app in &mut self.apps {
                    app.sender = None;
                }
            }
        }
    }

    fn apply(
        &mut self,
        cmd: Command,
        pending: &mut Vec<Pending>,
        out: &mut Vec<(usize, Notification)>,
    ) -> Result<(), StoreError> {
        match cmd {
            Command::Register {
                user,
                token,
                topic,
                environment,
                reply,
            } => {
                let app = match &topic {
                    None => Some(0),
                    Some(t) => self.by_topic.get(t.as_str()).copied(),
                };
                let result = match app {
                    None => Err(EventError::UnknownTopic(topic.unwrap_or_default())),
                    Some(i) => {
                        let app = &self.apps[i];
                        let env = environment.unwrap_or(app.environment);
                        self.db.register(&user, &token, &app.topic, env, now_ms())?;
                        tracing::info!(user = %user, device = token.short(), topic = %app.topic, "device registered");
                        Ok(Reply::Done)
                    }
                };
                pending.push(Pending::Event(reply, result));
            }
            Command::Unregister { user, token, reply } => {
                let n = self.db.unregister(&user, &token)?;
                if n > 0 {
                    tracing::info!(user = %user, device = token.short(), "device unregistered");
                }
                pending.push(Pending::Event(reply, Ok(Reply::Done)));
            }
            Command::ResetUnread { user, reply } => {
                self.db.reset_unread(&user)?;
                pending.push(Pending::Event(reply, Ok(Reply::Done)));
            }
            Command::ListDevices { user, reply } => {
                let devices = self.db.devices_of(&user)?;
                pending.push(Pending::Event(reply, Ok(Reply::Devices(devices))));
            }
            Command::Enqueue { job, reply } => {
                let result = self.enqueue(job, out)?;
                pending.push(Pending::Event(reply, result));
            }
            Command::Complete { id } => self.db.delete_outbox(id)?,
            Command::RemoveDevice { token, topic, since_ms } => {
                if self.db.remove_device(&token, &topic, since_ms)? {
                    self.stats.inc_devices_removed();
                    tracing::info!(device = token.short(), topic = %topic, "device removed: APNS reports it invalid or unregistered");
                }
            }
            Command::StateGet { ns, key, reply } => {
                let v = self.db.state_get(&ns, &key)?;
                pending.push(Pending::Get(reply, v));
            }
            Command::StatePut { ns, key, value, reply } => {
                let v = match value {
                    Some(v) => {
                        self.db.state_put(&ns, &key, &v)?;
                        true
                    }
                    None => self.db.state_delete(&ns, &key)?,
                };
                pending.push(Pending::Put(reply, v));
            }
            Command::StateList { ns, prefix, reply } => {
                let v = self.db.state_list(&ns, &prefix)?;
                pending.push(Pending::List(reply, v));
            }
            Command::Tick | Command::CloseSinks => {}
        }
        Ok(())
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
            .filter_map(|(token, topic, env)| self.by_topic.get(topic.as_str()).map(|&i| (token, i, env)))
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
        let config = self.policy.config();
        let expiration = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + config.ttl;
        let thread = job.thread.as_deref().unwrap_or(&job.from);
        let collapse_id = config.collapse.then(|| crate::policy::clip(thread, 64).to_owned());
        let alert = Alert {
            title: &job.from,
            body: job.text.as_deref(),
            badge,
            thread,
        };
        // Payloads differ only by limit; build each once.
        let mut payloads: Vec<(usize, Arc<str>)> = Vec::new();
        for (token, i, env) in &targets {
            let limit = self.apps[*i].limit;
            let payload = match payloads.iter().find(|(l, _)| *l == limit) {
                Some((_, p)) => p.clone(),
                None => {
                    let p: Arc<str> = self.policy.payload(&alert, limit).into();
                    payloads.push((limit, p.clone()));
                    p
                }
            };
            let topic = self.apps[*i].topic.clone();
            let id = self.db.insert_outbox(&NewNotification {
                topic: &topic,
                token,
                environment: *env,
                payload: &payload,
                expiration,
                priority: 10,
                collapse_id: collapse_id.as_deref(),
                created_ms,
            })?;
            out.push((
                *i,
                Notification {
                    id,
                    topic,
                    token: token.clone(),
                    environment: *env,
                    payload,
                    expiration,
                    priority: 10,
                    collapse_id: collapse_id.clone(),
                    created_ms,
                },
            ));
        }
        self.stats.add_accepted(targets.len() as u64);
        Ok(Ok(Reply::Queued(targets.len())))
    }

    /// Hand freshly committed notifications to their sinks; what does not
    /// fit waits in the outbox.
    fn dispatch(&mut self, out: Vec<(usize, Notification)>) {
        for (i, n) in out {
            let app = &mut self.apps[i];
            if app.pending_from.is_some() {
                continue; // older ones are waiting; refill takes this one in order
            }
            let Some(sender) = &app.sender else { continue };
            match sender.try_send(n) {
                Ok(()) => {}
                Err(TrySendError::Full(n)) | Err(TrySendError::Closed(n)) => app.pending_from = Some(n.id),
            }
        }
    }

    /// Load waiting outbox entries into sinks that have room.
    fn refill(&mut self) {
        for app in &mut self.apps {
            let (Some(from), Some(sender)) = (app.pending_from, &app.sender) else {
                continue;
            };
            let room = sender.capacity();
            if room == 0 {
                continue;
            }
            let rows = match self.db.load_outbox(&app.topic, from, room) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, topic = %app.topic, "cannot load the outbox");
                    continue;
                }
            };
            let complete = rows.len() < room;
            let mut stuck = None;
            let mut last = from - 1;
            for n in rows {
                let id = n.id;
                if sender.try_send(n).is_err() {
                    stuck = Some(id);
                    break;
                }
                last = id;
            }
            app.pending_from = match stuck {
                Some(id) => Some(id),
                None if complete => None,
                None => Some(last + 1),
            };
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
        Command::Complete { .. } | Command::RemoveDevice { .. } | Command::Tick | Command::CloseSinks => {}
    }
}
