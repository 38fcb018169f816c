//! The delivery tracker: resolves adapters' [`Receipts`] when the sinks'
//! outcomes for their notifications arrive.
//!
//! The store thread registers receipts ([`Tracker::track`]) while it
//! writes their notifications, before any sink can see them; every
//! [`Completion::Settled`](super::Completion) passes
//! [`Tracker::resolve`] on its way to the store (in
//! [`super::CompletionSender`]), so no outcome can slip between queueing
//! and registration. Memory is bounded by the receipts alive: an entry
//! holds only a weak reference, goes when its notification resolves, and
//! the rest of an event's entries go when the adapter drops the last
//! clone of its receipts (its deadline passed, or its requester left).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use pushbridge_api::{Delivery, Receipts, WeakReceipts};

use super::Outcome;

/// Outbox id → the receipts waiting for it.
#[derive(Debug, Default)]
pub struct Tracker {
    entries: Mutex<HashMap<i64, WeakReceipts>>,
    /// `entries.len()`, readable without the lock (the completion path
    /// skips the lock while nothing is tracked).
    len: AtomicUsize,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Resolve `ids` (some or all of `receipts`' ids) as their
    /// notifications' outcomes arrive. Call it before the notifications can
    /// reach a sink.
    pub fn track(self: &Arc<Self>, receipts: &Receipts, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        {
            let mut entries = self.lock();
            for id in ids {
                entries.insert(*id, receipts.downgrade());
            }
            self.len.store(entries.len(), Ordering::Release);
        }
        let tracker: Weak<Self> = Arc::downgrade(self);
        let me = receipts.downgrade();
        receipts.on_drop(move |ids| {
            if let Some(t) = tracker.upgrade() {
                t.forget(ids, &me);
            }
        });
    }

    /// The outcome of notification `id` arrived: resolve its receipts, if
    /// any are waiting.
    pub fn resolve(&self, id: i64, outcome: &Outcome) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let weak = {
            let mut entries = self.lock();
            let w = entries.remove(&id);
            self.len.store(entries.len(), Ordering::Release);
            w
        };
        // Upgraded (and possibly dropped, which takes the lock in
        // `forget`) only after the lock is released.
        if let Some(receipts) = weak.and_then(|w| w.upgrade()) {
            receipts.resolve(id, delivery(outcome));
        }
    }

    /// Notifications tracked now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The receipts `me` are gone: drop their remaining entries (not those
    /// of newer receipts that reuse an id after a rolled-back transaction).
    fn forget(&self, ids: &[i64], me: &WeakReceipts) {
        let mut entries = self.lock();
        for id in ids {
            if entries.get(id).is_some_and(|w| w.same(me)) {
                entries.remove(id);
            }
        }
        self.len.store(entries.len(), Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, WeakReceipts>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What an adapter learns of an outcome.
pub fn delivery(outcome: &Outcome) -> Delivery {
    match outcome {
        Outcome::Delivered => Delivery::Delivered,
        Outcome::Rejected {
            reason, remove_device, ..
        } => Delivery::Refused {
            reason: reason.clone(),
            device_gone: *remove_device,
        },
        Outcome::Expired { reason } => Delivery::Expired { reason: reason.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_tracked_ids_and_forgets_them() {
        let t = Tracker::new();
        let r = Receipts::new(vec![10, 11]);
        t.track(&r, r.ids());
        assert_eq!(t.len(), 2);
        t.resolve(10, &Outcome::Delivered);
        t.resolve(99, &Outcome::Delivered);
        assert_eq!(t.len(), 1);
        t.resolve(
            11,
            &Outcome::Rejected {
                reason: "400 BadDeviceToken".into(),
                remove_device: true,
                since_ms: None,
            },
        );
        assert!(t.is_empty());
        let d = r.deliveries();
        assert_eq!(d[0], Delivery::Delivered);
        assert!(d[1].device_gone());
    }

    #[test]
    fn dropping_the_receipts_removes_their_entries() {
        let t = Tracker::new();
        let r = Receipts::new(vec![1, 2, 3]);
        t.track(&r, r.ids());
        t.resolve(1, &Outcome::Expired { reason: "ttl".into() });
        assert_eq!(t.len(), 2);
        drop(r);
        assert!(t.is_empty(), "the deadline passed: nothing kept");
        // An outcome after that finds nothing (and does not panic).
        t.resolve(2, &Outcome::Delivered);
    }

    #[test]
    fn old_receipts_do_not_forget_a_reused_id() {
        let t = Tracker::new();
        let old = Receipts::new(vec![5]);
        t.track(&old, &[5]);
        let new = Receipts::new(vec![5]);
        t.track(&new, &[5]);
        drop(old);
        assert_eq!(t.len(), 1);
        t.resolve(5, &Outcome::Delivered);
        assert_eq!(new.deliveries(), vec![Delivery::Delivered]);
    }
}
