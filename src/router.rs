//! The router: takes every adapter's events in order, keeps presence, and
//! decides what goes to the store thread. With SQLite presence lives here,
//! in memory: a user never seen is offline. With PostgreSQL several
//! gateways share it in the store ([`StoreHandle::shares_presence`]): the
//! router hands reports on, and the store decides whether a message
//! becomes a push in the transaction that queues it. Users' settings
//! (mutes, quiet hours) live in the store, which applies them to each
//! message.

use std::collections::HashMap;

use pushbridge_api::{Envelope, Event, EventError, Presence, Reply, UserId};
use tokio::sync::mpsc;

use crate::store::{MessageJob, ReplyTx, SettingChange, StoreError, StoreHandle};

/// Presence of users who are online or away (offline users are not kept,
/// so the map only grows with connected users).
#[derive(Debug, Default)]
pub struct PresenceMap(HashMap<UserId, Presence>);

impl PresenceMap {
    /// The user's presence (`Offline` when never seen).
    pub fn get(&self, user: &UserId) -> Presence {
        self.0.get(user).copied().unwrap_or(Presence::Offline)
    }

    /// Record a change; returns the previous presence.
    pub fn set(&mut self, user: UserId, presence: Presence) -> Presence {
        let previous = match presence {
            Presence::Offline => self.0.remove(&user),
            p => self.0.insert(user, p),
        };
        previous.unwrap_or(Presence::Offline)
    }
}

/// Route events until every adapter has stopped (all senders dropped).
pub async fn run(mut events: mpsc::Receiver<Envelope>, store: StoreHandle) {
    let mut presence = PresenceMap::default();
    while let Some(envelope) = events.recv().await {
        let Envelope { event, reply, .. } = envelope;
        if let Err(e) = route(event, reply, &mut presence, &store).await {
            tracing::error!(error = %e, "store is gone; refusing events");
        }
    }
}

/// Hand one event to the store, or answer it here when the store has
/// nothing to do with it.
async fn route(
    event: Event,
    reply: Option<ReplyTx>,
    presence: &mut PresenceMap,
    store: &StoreHandle,
) -> Result<(), StoreError> {
    match event {
        Event::Register { user, device } => {
            store
                .register(user, device.token, device.topic, device.environment, reply)
                .await
        }
        Event::Unregister { user, token } => store.unregister(user, token, reply).await,
        Event::ListDevices { user } => store.list_devices(user, reply).await,
        // Decided by the IM server: presence is not consulted.
        Event::Push(p) => store.push(p, reply).await,
        Event::Presence { user, presence: p } if store.shares_presence() => {
            tracing::debug!(user = %user, presence = ?p, "presence");
            store.set_presence(user, p, reply).await
        }
        Event::Presence { user, presence: p } => {
            let previous = presence.set(user.clone(), p);
            tracing::debug!(user = %user, presence = ?p, "presence");
            if p == Presence::Online && previous != Presence::Online {
                store.reset_unread(user, reply).await
            } else {
                answer(reply, Ok(Reply::Done));
                Ok(())
            }
        }
        Event::Message(m) => {
            let shared = store.shares_presence();
            if m.respect_presence && !shared && !presence.get(&m.to).wants_push() {
                answer(reply, Ok(Reply::Queued(0)));
                return Ok(());
            }
            let job = MessageJob {
                to: m.to,
                from: m.from,
                subtitle: m.subtitle,
                text: m.text,
                thread: m.thread,
                device: m.device,
                badge: m.badge,
                respect_presence: m.respect_presence && shared,
            };
            store.enqueue(job, reply).await
        }
        Event::Mute {
            user,
            conversation,
            duration,
        } => {
            let change = SettingChange::Mute { conversation, duration };
            store.change_setting(user, change, reply).await
        }
        Event::Unmute { user, conversation } => {
            store
                .change_setting(user, SettingChange::Unmute { conversation }, reply)
                .await
        }
        Event::Quiet { user, hours } => store.change_setting(user, SettingChange::Quiet(hours), reply).await,
        Event::Settings { user } => store.settings(user, reply).await,
    }
}

fn answer(reply: Option<ReplyTx>, r: Result<Reply, EventError>) {
    if let Some(tx) = reply {
        let _ = tx.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_defaults_to_offline_and_forgets_offline_users() {
        let mut p = PresenceMap::default();
        let u = UserId::parse("line:a").unwrap();
        assert_eq!(p.get(&u), Presence::Offline);
        assert_eq!(p.set(u.clone(), Presence::Online), Presence::Offline);
        assert_eq!(p.set(u.clone(), Presence::Away), Presence::Online);
        assert_eq!(p.set(u.clone(), Presence::Offline), Presence::Away);
        assert!(p.0.is_empty());
    }
}
