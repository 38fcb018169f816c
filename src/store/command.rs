//! What the store thread is asked to do ([`Command`], sent through
//! [`super::StoreHandle`]), and the answers it holds until the batch's
//! commit ([`Pending`]).

use std::time::Duration;

use pushbridge_api::settings::QuietHours;
use pushbridge_api::{DeviceToken, Environment, EventError, Reply, UserId};
use tokio::sync::oneshot;

use super::db::StoreError;
use crate::policy::Policy;

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
    /// The store decides from the shared presence table whether the user
    /// wants a push (PostgreSQL, several gateways: read in the transaction
    /// that queues the notifications). `false`: the router decided already
    /// (SQLite: its in-memory presence), or the message ignores presence.
    pub respect_presence: bool,
}

/// A change of a user's settings.
#[derive(Debug)]
pub enum SettingChange {
    /// Mute a conversation for a while (`Some`) or until unmuted.
    Mute {
        conversation: String,
        duration: Option<Duration>,
    },
    /// End a mute.
    Unmute { conversation: String },
    /// Set (`Some`) or clear quiet hours.
    Quiet(Option<QuietHours>),
}

/// What the store thread does.
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
    /// The user came online: reset the badge, cancel waiting pushes.
    ResetUnread {
        user: UserId,
        reply: Option<ReplyTx>,
    },
    /// A presence report kept in the shared store (PostgreSQL); coming
    /// online resets the badge as [`Command::ResetUnread`] does.
    Presence {
        user: UserId,
        presence: pushbridge_api::Presence,
        reply: Option<ReplyTx>,
    },
    Enqueue {
        job: MessageJob,
        reply: Option<ReplyTx>,
    },
    /// Pushes to explicit devices ([`pushbridge_api::Event::Push`]).
    Push {
        pushes: Vec<pushbridge_api::Push>,
        reply: Option<ReplyTx>,
    },
    ListDevices {
        user: UserId,
        reply: Option<ReplyTx>,
    },
    /// Change a user's settings (answered `Done`).
    Setting {
        user: UserId,
        change: SettingChange,
        reply: Option<ReplyTx>,
    },
    /// A user's settings (answered [`Reply::Settings`]).
    ShowSettings {
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
    /// Make every commit so far durable (answered `Done` once the WAL is
    /// synced): the durability hook of receipts whose pushes were
    /// committed without waiting for the disk.
    Sync {
        reply: Option<ReplyTx>,
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
    /// Answered after the batch: the thread is taking commands (the
    /// outbox statistics are read elsewhere, see [`super::stats::StatsReader`]).
    Alive {
        reply: oneshot::Sender<()>,
    },
}

impl Command {
    /// Not store data: handled after the batch (or, for a policy, in
    /// order), also when the transaction fails.
    /// Whether a transaction holding this command may commit without
    /// waiting for the disk: pushes whose adapter waits for their outcomes
    /// (their answer comes after Apple's, or after a [`Command::Sync`]),
    /// and commands that answer nobody (the sinks' outcomes they bring
    /// along are only sent again if lost). See `writer::durability`.
    pub(crate) fn may_defer_sync(&self) -> bool {
        match self {
            Command::Push { pushes, .. } => pushes.iter().all(|p| p.track),
            Command::Tick | Command::Wake | Command::Alive { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn is_control(&self) -> bool {
        matches!(
            self,
            Command::Tick | Command::CloseSinks | Command::Wake | Command::Alive { .. }
        )
    }
}

/// An answer held until the batch commits.
pub(crate) enum Pending {
    Event(Option<ReplyTx>, Result<Reply, EventError>),
    Get(oneshot::Sender<Result<Option<String>, StoreError>>, Option<String>),
    Put(oneshot::Sender<Result<bool, StoreError>>, bool),
    List(
        oneshot::Sender<Result<Vec<(String, String)>, StoreError>>,
        Vec<(String, String)>,
    ),
}

impl Pending {
    pub(crate) fn send(self) {
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

    pub(crate) fn fail(self, msg: &str) {
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

/// Hold `reply` with the result of its command; when the store failed, hold
/// it all the same (with `fallback`, never sent: the batch is answered with
/// the error) and fail the batch.
pub(crate) fn hold<R, T>(
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

/// Answer a command that was never applied with the transaction's error.
pub(crate) fn fail_command(cmd: Command, msg: &str) {
    let event_err = || Err(EventError::Unavailable(msg.to_owned()));
    let store_err = || StoreError::Corrupt(msg.to_owned());
    match cmd {
        Command::Register { reply, .. }
        | Command::Unregister { reply, .. }
        | Command::ResetUnread { reply, .. }
        | Command::Presence { reply, .. }
        | Command::Enqueue { reply, .. }
        | Command::Push { reply, .. }
        | Command::Setting { reply, .. }
        | Command::ShowSettings { reply, .. }
        | Command::ListDevices { reply, .. }
        | Command::Sync { reply } => {
            if let Some(tx) = reply {
                let _ = tx.send(event_err());
            }
        }
        Command::StateGet { reply, .. } => drop(reply.send(Err(store_err()))),
        Command::StatePut { reply, .. } => drop(reply.send(Err(store_err()))),
        Command::StateList { reply, .. } => drop(reply.send(Err(store_err()))),
        // Dropped: the caller learns that the store did not answer.
        Command::Alive { reply } => drop(reply),
        Command::Tick | Command::CloseSinks | Command::Wake | Command::SetPolicy(_) => {}
    }
}
