//! What a running adapter instance reports about itself, for the
//! gateway's metrics and readiness (`/metrics`, `/readyz`): whether an
//! outbound adapter (XMPP component, IRC bot) is connected to its server
//! and why not, how many inbound connections it holds (the line protocol),
//! and how many events of each kind it submitted; and, for a singleton
//! instance on a shared PostgreSQL store, whether it stands by while
//! another gateway runs it.
//!
//! One [`AdapterStatus`] lives as long as its instance's supervisor, across
//! restarts; the adapter reaches it through
//! [`crate::Context::status`]. Everything in it is lock-free or a short
//! lock, cheap enough for every event.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::Event;

/// The kinds of [`Event`], in the order of [`AdapterStatus::events`]; the
/// `kind` label of `pushbridge_adapter_events_total`.
pub const EVENT_KINDS: [&str; 10] = [
    "register",
    "unregister",
    "presence",
    "message",
    "list_devices",
    "mute",
    "unmute",
    "quiet",
    "settings",
    "push",
];

impl Event {
    /// This event's kind: one of [`EVENT_KINDS`].
    pub fn kind(&self) -> &'static str {
        EVENT_KINDS[self.kind_index()]
    }

    fn kind_index(&self) -> usize {
        match self {
            Event::Register { .. } => 0,
            Event::Unregister { .. } => 1,
            Event::Presence { .. } => 2,
            Event::Message(_) => 3,
            Event::ListDevices { .. } => 4,
            Event::Mute { .. } => 5,
            Event::Unmute { .. } => 6,
            Event::Quiet { .. } => 7,
            Event::Settings { .. } => 8,
            Event::Push(_) => 9,
        }
    }
}

/// One adapter instance's self-report.
#[derive(Debug)]
pub struct AdapterStatus {
    kind: &'static str,
    name: Arc<str>,
    outbound: bool,
    connected: AtomicBool,
    /// Runs under a singleton lock (several gateways, one store): set by
    /// the core when it supervises the instance that way.
    singleton: AtomicBool,
    /// A singleton instance waiting for its lock (another gateway runs it,
    /// or the database cannot be reached); the reason is `down_reason`.
    standby: AtomicBool,
    /// Why an outbound adapter is not connected (`None` once connected).
    down_reason: Mutex<Option<String>>,
    connections: AtomicI64,
    /// Times an inbound listener ran out of connection slots.
    slots_exhausted: AtomicU64,
    events: [AtomicU64; EVENT_KINDS.len()],
}

impl AdapterStatus {
    /// The status of instance `name` of adapter kind `kind`. An `outbound`
    /// adapter starts as not connected ("not connected yet").
    pub fn new(kind: &'static str, name: impl Into<Arc<str>>, outbound: bool) -> Self {
        Self {
            kind,
            name: name.into(),
            outbound,
            connected: AtomicBool::new(false),
            singleton: AtomicBool::new(false),
            standby: AtomicBool::new(false),
            down_reason: Mutex::new(outbound.then(|| "not connected yet".to_owned())),
            connections: AtomicI64::new(0),
            slots_exhausted: AtomicU64::new(0),
            events: Default::default(),
        }
    }

    /// The adapter kind (`line`, `xmpp`, `irc`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The instance name (`line`, `irc:libera`): the `adapter` label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the adapter connects out to a server (and so can be down).
    pub fn is_outbound(&self) -> bool {
        self.outbound
    }

    /// The adapter is connected (and registered/authenticated) to its server.
    pub fn set_connected(&self) {
        self.connected.store(true, Relaxed);
        *self.lock_reason() = None;
    }

    /// The adapter lost (or could not make) its connection, because of `reason`.
    pub fn set_disconnected(&self, reason: impl Into<String>) {
        self.connected.store(false, Relaxed);
        *self.lock_reason() = Some(reason.into());
    }

    /// Mark this instance as run under a singleton lock (the core does,
    /// once, before it first waits for the lock).
    pub fn set_singleton(&self) {
        self.singleton.store(true, Relaxed);
    }

    /// Whether this instance runs under a singleton lock.
    pub fn is_singleton(&self) -> bool {
        self.singleton.load(Relaxed)
    }

    /// The instance is not running here: it waits for its singleton lock,
    /// because of `reason` (e.g. another gateway holds it). Not a
    /// readiness problem; reported by [`AdapterStatus::standby`].
    pub fn set_standby(&self, reason: impl Into<String>) {
        self.standby.store(true, Relaxed);
        self.set_disconnected(reason);
    }

    /// The instance holds its singleton lock and is started here.
    pub fn set_active(&self) {
        self.standby.store(false, Relaxed);
        if self.outbound {
            self.set_disconnected("not connected yet");
        } else {
            *self.lock_reason() = None;
        }
    }

    /// `Some(why)` while the instance stands by (see
    /// [`AdapterStatus::set_standby`]), else `None`.
    pub fn standby(&self) -> Option<String> {
        if !self.standby.load(Relaxed) {
            return None;
        }
        Some(self.lock_reason().clone().unwrap_or_else(|| "standing by".to_owned()))
    }

    /// `Ok(())` when connected (or inbound); otherwise why not.
    pub fn connection(&self) -> Result<(), String> {
        if !self.outbound || self.connected.load(Relaxed) {
            return Ok(());
        }
        Err(self.lock_reason().clone().unwrap_or_else(|| "not connected".to_owned()))
    }

    /// Whether an outbound adapter is connected (inbound ones: always true).
    pub fn is_connected(&self) -> bool {
        self.connection().is_ok()
    }

    /// Count one inbound connection until the guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Inbound connections open now.
    pub fn connections(&self) -> i64 {
        self.connections.load(Relaxed)
    }

    /// Count one time an inbound listener had every connection slot in use
    /// (new clients wait in the kernel's backlog): once per episode, not per
    /// waiting client.
    pub fn count_slots_exhausted(&self) {
        self.slots_exhausted.fetch_add(1, Relaxed);
    }

    /// Times an inbound listener ran out of connection slots since start.
    pub fn slots_exhausted(&self) -> u64 {
        self.slots_exhausted.load(Relaxed)
    }

    /// Count one submitted event.
    pub fn count(&self, event: &Event) {
        self.events[event.kind_index()].fetch_add(1, Relaxed);
    }

    /// `(kind, events submitted)` for every kind in [`EVENT_KINDS`].
    pub fn events(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        EVENT_KINDS.iter().zip(&self.events).map(|(k, c)| (*k, c.load(Relaxed)))
    }

    fn lock_reason(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.down_reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One open inbound connection; counted until dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<AdapterStatus>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Presence, UserId};

    #[test]
    fn outbound_adapters_start_down_and_report_why() {
        let s = AdapterStatus::new("irc", "irc:libera", true);
        assert_eq!(s.connection(), Err("not connected yet".to_owned()));
        s.set_connected();
        assert!(s.is_connected());
        s.set_disconnected("connection refused");
        assert_eq!(s.connection(), Err("connection refused".to_owned()));
        let inbound = AdapterStatus::new("line", "line", false);
        assert!(inbound.is_connected());
    }

    #[test]
    fn a_standing_by_instance_reports_why_until_it_is_active() {
        let s = AdapterStatus::new("irc", "irc:libera", true);
        assert!(!s.is_singleton());
        s.set_singleton();
        assert!(s.is_singleton());
        assert_eq!(s.standby(), None);
        s.set_standby("held by another gateway");
        assert_eq!(s.standby().as_deref(), Some("held by another gateway"));
        assert!(!s.is_connected());
        s.set_active();
        assert_eq!(s.standby(), None);
        assert_eq!(s.connection(), Err("not connected yet".to_owned()));
        s.set_connected();
        assert!(s.is_connected());
        let inbound = AdapterStatus::new("line", "line", false);
        inbound.set_standby("held by another gateway");
        assert!(inbound.standby().is_some());
        inbound.set_active();
        assert!(inbound.is_connected());
    }

    #[test]
    fn connections_and_events_are_counted() {
        let s = Arc::new(AdapterStatus::new("line", "line", false));
        let a = s.connection_opened();
        let b = s.connection_opened();
        assert_eq!(s.connections(), 2);
        drop(a);
        assert_eq!(s.connections(), 1);
        drop(b);
        assert_eq!(s.connections(), 0);
        assert_eq!(s.slots_exhausted(), 0);
        s.count_slots_exhausted();
        assert_eq!(s.slots_exhausted(), 1);
        let user = UserId::parse("line:alice").expect("valid user");
        s.count(&Event::Presence {
            user,
            presence: Presence::Online,
        });
        let events: Vec<_> = s.events().collect();
        assert_eq!(events[2], ("presence", 1));
        assert_eq!(events.iter().map(|e| e.1).sum::<u64>(), 1);
    }
}
