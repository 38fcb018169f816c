//! A push the IM server already decided on ([`crate::Event::Push`]): one
//! notification for one explicit device, with the payload parts the IM
//! side chose.
//!
//! Unlike [`crate::Message`], nothing here goes through the registry or
//! presence: the device need not be registered, presence is not
//! consulted, and the badge is the IM server's. It is what a Matrix push
//! gateway receives from a homeserver (one `notify` device), and what
//! any server that keeps its own pusher list needs.

use crate::types::{DeviceToken, Environment};

/// `apns-priority` of a push: when Apple delivers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Deliver immediately (`apns-priority: 10`).
    #[default]
    High,
    /// Deliver when convenient for the device's power (`apns-priority: 5`).
    Low,
}

impl Priority {
    /// The `apns-priority` header value: 10 or 5.
    pub fn apns(self) -> u8 {
        match self {
            Priority::High => 10,
            Priority::Low => 5,
        }
    }
}

/// The body line of an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushBody {
    /// A sender's message text: replaced by the generic body when
    /// `[policy] privacy` is on, shortened to fit the payload limit.
    Text(String),
    /// The adapter's own words, not message text (`Bob invited you`):
    /// shown even with `[policy] privacy`, shortened like text.
    Fixed(String),
    /// The policy's generic body (`[policy] generic_body`).
    Generic,
}

/// The visible part of a push (`aps.alert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAlert {
    /// `aps.alert.title`; `None` leaves it out.
    pub title: Option<String>,
    /// `aps.alert.body`.
    pub body: PushBody,
}

/// One notification for one device, fully decided by the IM server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The device.
    pub token: DeviceToken,
    /// The app's APNS topic; must be a configured `[[apps]] topic`
    /// (otherwise [`crate::EventError::UnknownTopic`]).
    pub topic: String,
    /// The device's environment; `None`: the app's own.
    pub environment: Option<Environment>,
    /// What the user sees; `None` for a silent badge update (no alert,
    /// no sound).
    pub alert: Option<PushAlert>,
    /// `aps.badge`; `None` leaves the badge alone.
    pub badge: Option<u32>,
    /// `aps.sound` (`default` or a sound file name); `None`: silent.
    pub sound: Option<String>,
    /// `apns-priority`.
    pub priority: Priority,
    /// `aps.thread-id` (groups notifications on the lock screen), cut to
    /// 128 bytes.
    pub thread: Option<String>,
    /// Top-level keys beside `aps` (e.g. Matrix `room_id`, `event_id`) so
    /// the app can open the right place; a key named `aps` is ignored.
    pub custom: serde_json::Map<String, serde_json::Value>,
    /// `aps.mutable-content: 1`: a notification service extension may
    /// rewrite it (fetch and decrypt the content) before it is shown.
    pub mutable_content: bool,
    /// Track the notification's delivery: the answer's
    /// [`crate::Receipts`] resolve when Apple answers. `false`: they never
    /// resolve (cheaper when nobody waits).
    pub track: bool,
}

impl Push {
    /// A high-priority push to `token` of app `topic` with nothing in it
    /// yet (fill in the fields).
    pub fn new(token: DeviceToken, topic: impl Into<String>) -> Self {
        Self {
            token,
            topic: topic.into(),
            environment: None,
            alert: None,
            badge: None,
            sound: None,
            priority: Priority::High,
            thread: None,
            custom: serde_json::Map::new(),
            mutable_content: false,
            track: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_maps_to_apns_values() {
        assert_eq!(Priority::High.apns(), 10);
        assert_eq!(Priority::Low.apns(), 5);
        assert_eq!(Priority::default(), Priority::High);
    }
}
