//! What an adapter tells the core, and what the core answers.

use std::time::Duration;

use crate::delivery::Receipts;
use crate::push::Push;
use crate::settings::{QuietHours, Settings};
use crate::types::{DeviceToken, Environment, Presence, UserId};

/// A device to register: its token, and optionally the app (APNS topic) and
/// environment it belongs to. `None` means the first configured app and that
/// app's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub token: DeviceToken,
    pub topic: Option<String>,
    pub environment: Option<Environment>,
}

/// A message for a user, to be turned into one push per registered device
/// when the user is not online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The recipient.
    pub to: UserId,
    /// Who sent it, as the alert title shows it (`alice`, `bob in #chat`).
    pub from: String,
    /// A line under the title (APNS `alert.subtitle`), e.g. the group chat
    /// the sender wrote in; `None` (the default): no subtitle.
    pub subtitle: Option<String>,
    /// The text; `None` when the IM side did not say (the core then sends
    /// its generic body). The core drops it anyway in privacy mode.
    pub text: Option<String>,
    /// Conversation id for `thread-id` (groups notifications on the lock
    /// screen); `None` groups by sender.
    pub thread: Option<String>,
    /// Push only to this device of the user (XEP-0357: the device behind a
    /// node). `None`: every registered device of the user.
    pub device: Option<DeviceToken>,
    /// `true` (the default for chat traffic): no push while the user is
    /// online. `false`: the IM server already decided a push is due
    /// (XEP-0357 publishes), so presence is not consulted.
    pub respect_presence: bool,
    /// The badge the IM server computed (XEP-0357 `message-count` when it
    /// is a real count). `None`: the core's unread counter, incremented.
    pub badge: Option<u32>,
}

impl Message {
    /// A message for every device of `to`, honouring presence.
    pub fn new(to: UserId, from: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            to,
            from: from.into(),
            subtitle: None,
            text: Some(text.into()),
            thread: None,
            device: None,
            respect_presence: true,
            badge: None,
        }
    }
}

/// Everything an adapter can ask of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Add (or move) a device to a user. A token belongs to one user per app:
    /// registering it again for another user moves it.
    Register { user: UserId, device: Device },
    /// Remove a device from a user. Answered `Done` even when it was unknown.
    Unregister { user: UserId, token: DeviceToken },
    /// The user's presence changed. `Online` resets the unread counter.
    Presence { user: UserId, presence: Presence },
    /// A message arrived for a user.
    Message(Message),
    /// List a user's devices (answered with `Reply::Devices`).
    ListDevices { user: UserId },
    /// Mute a conversation of the user (its thread, else its sender, as in
    /// [`Message::thread`]) for `duration`, or until unmuted (`None`): its
    /// messages still count toward the badge but push no alert.
    Mute {
        user: UserId,
        conversation: String,
        duration: Option<Duration>,
    },
    /// End a mute (answered `Done` also when there was none).
    Unmute { user: UserId, conversation: String },
    /// Set (`Some`) or clear the user's quiet hours: pushes are then
    /// delivered silently.
    Quiet { user: UserId, hours: Option<QuietHours> },
    /// The user's settings (answered with `Reply::Settings`).
    Settings { user: UserId },
    /// Pushes the IM server already decided on, each to one explicit
    /// device (which need not be registered; presence is not consulted),
    /// queued together: all or none. Answered with `Reply::Pushed` once
    /// durably queued; a push for an unconfigured topic refuses them all
    /// with `EventError::UnknownTopic`.
    Push(Vec<Push>),
}

/// The core's answer to an event that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done (register, unregister, presence).
    Done,
    /// The message became this many notifications, durably queued: from now
    /// on they are not lost, not even across a restart. `0` when the user is
    /// online or has no device.
    Queued(usize),
    /// The user's devices, with their topic and environment.
    Devices(Vec<(DeviceToken, String, Environment)>),
    /// The user's settings (quiet hours, muted conversations).
    Settings(Settings),
    /// An [`Event::Push`] became these notifications (one per push, in
    /// order), durably queued; the receipts resolve as Apple answers the
    /// pushes that asked to be tracked.
    Pushed(Receipts),
}

/// Why the core refused an event. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The device names an app that is not configured.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// `Message::device` is not registered (any more) for that user; e.g.
    /// APNS reported it unregistered and the core removed it.
    #[error("no such device for this user")]
    NoSuchDevice,
    /// The event could not be handled now (store failure, overload); the
    /// peer may retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The gateway is shutting down.
    #[error("gateway is shutting down")]
    ShuttingDown,
}
