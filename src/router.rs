//! The router: takes every adapter's events in order, keeps presence, and
//! decides what goes to the store thread. Presence lives here, in memory: a
//! user never seen is offline.

use std::collections::HashMap;

use pushbridge_api::{Envelope, Event, EventError, Presence, Reply, UserId};
use tokio::sync::mpsc;

use crate::store::{Command, MessageJob, StoreHandle};

/// Presence of users who are online or away (offline users are not kept,
/// so the map only grows with connected users).
#[derive(Debug, Default)]
pub struct PresenceMap(HashMap<UserId, Presence>);

impl PresenceMap {
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
        let cmd = match event {
            Event::Register { user, device } => Command::Register {
                user,
                token: device.token,
                topic: device.topic,
                environment: device.environment,
                reply,
            },
            Event::Unregister { user, token } => Command::Unregister { user, token, reply },
            Event::ListDevices { user } => Command::ListDevices { user, reply },
            Event::Presence { user, presence: p } => {
                let previous = presence.set(user.clone(), p);
                tracing::debug!(user = %user, presence = ?p, "presence");
                if p == Presence::Online && previous != Presence::Online {
                    Command::ResetUnread { user, reply }
                } else {
                    answer(reply, Ok(Reply::Done));
                    continue;
                }
            }
            Event::Message(m) => {
                if m.respect_presence && !presence.get(&m.to).wants_push() {
                    answer(reply, Ok(Reply::Queued(0)));
                    continue;
                }
                Command::Enqueue {
                    job: MessageJob {
                        to: m.to,
                        from: m.from,
                        text: m.text,
                        thread: m.thread,
                        device: m.device,
                        badge: m.badge,
                    },
                    reply,
                }
            }
        };
        if let Err(e) = store.send_command(cmd).await {
            tracing::error!(error = %e, "store is gone; refusing events");
        }
    }
}

fn answer(reply: Option<tokio::sync::oneshot::Sender<Result<Reply, EventError>>>, r: Result<Reply, EventError>) {
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
