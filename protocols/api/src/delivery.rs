//! Delivery tracking as a type: [`Receipts`] name the notifications an
//! event became (their outbox ids) and resolve, one by one, to what Apple
//! made of them ([`Delivery`]). An adapter waits for them with a deadline
//! ([`Receipts::wait`]); what is still [`Delivery::Pending`] then stays in
//! the outbox and is delivered later as usual.
//!
//! Race-free by construction: the core registers the receipts with its
//! tracker inside the store transaction that creates the notifications,
//! before any sink can see them, and hands them to the adapter in the
//! event's answer ([`crate::Reply::Pushed`]). Memory stays bounded: the
//! core keeps only a weak reference per id, and forgets the ids when the
//! last clone of the receipts is dropped (after the adapter's deadline, or
//! when the requester went away); a resolved id is forgotten at once.
//!
//! Durability: notifications queued for tracking may be committed without
//! waiting for the disk (the answer waits for Apple anyway, and a requester
//! that got no answer retries). [`Receipts::wait`] therefore makes the ones
//! still pending at the deadline durable (through the hook the core set
//! with [`Receipts::set_durability`]) before it returns them: what an
//! adapter acknowledges as queued is on disk.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::EventError;

/// What became of one notification, as far as the gateway knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// No answer from Apple yet (or not tracked).
    Pending,
    /// Apple accepted it.
    Delivered,
    /// Refused for good. `reason`: Apple's reason with its status
    /// (`410 Unregistered`) or the gateway's own; `device_gone`: Apple
    /// says the token is invalid for the app (410, `BadDeviceToken`,
    /// `DeviceTokenNotForTopic`) and it should not be used again.
    Refused { reason: String, device_gone: bool },
    /// Its expiration passed (or its retries ran out) before Apple took it.
    Expired { reason: String },
}

impl Delivery {
    /// Whether this is a final outcome (anything but [`Delivery::Pending`]).
    pub fn is_final(&self) -> bool {
        !matches!(self, Delivery::Pending)
    }

    /// Whether Apple refused the device token for good.
    pub fn device_gone(&self) -> bool {
        matches!(self, Delivery::Refused { device_gone: true, .. })
    }
}

/// Called with the ids when the last clone of the receipts goes.
type Forget = Box<dyn FnOnce(&[i64]) + Send>;

/// Makes every notification committed so far durable (the core's store:
/// one synced commit); `Err` when the store cannot.
pub type DurabilityHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), EventError>> + Send>> + Send + Sync>;

struct Shared {
    ids: Vec<i64>,
    state: Mutex<Vec<Delivery>>,
    /// How many are still pending (waiters watch it reach 0).
    open: watch::Sender<usize>,
    forget: Mutex<Option<Forget>>,
    /// `None`: committed durably already (or nothing was deferred).
    durability: Mutex<Option<DurabilityHook>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let forget = self.forget.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = forget {
            f(&self.ids);
        }
    }
}

/// The notifications one event became, and their deliveries. Cheap to
/// clone (shared); equal when they name the same notifications.
#[derive(Clone)]
pub struct Receipts(Arc<Shared>);

impl Receipts {
    /// Receipts for outbox ids `ids`, all pending. Nothing resolves them
    /// until the core's tracker registers them (the core does that).
    pub fn new(ids: Vec<i64>) -> Self {
        let n = ids.len();
        Self(Arc::new(Shared {
            state: Mutex::new(vec![Delivery::Pending; n]),
            ids,
            open: watch::Sender::new(n),
            forget: Mutex::new(None),
            durability: Mutex::new(None),
        }))
    }

    /// The outbox ids (the log field `notification`), in the order the
    /// notifications were queued.
    pub fn ids(&self) -> &[i64] {
        &self.0.ids
    }

    /// How many notifications.
    pub fn len(&self) -> usize {
        self.0.ids.len()
    }

    /// Whether the event became no notification at all.
    pub fn is_empty(&self) -> bool {
        self.0.ids.is_empty()
    }

    /// Each notification's delivery now, in [`Receipts::ids`] order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().clone()
    }

    /// Wait until every notification has a final outcome or `timeout`
    /// passes, whichever is first; then [`Receipts::deliveries`]. A zero
    /// `timeout` does not wait. When some are still pending, they are made
    /// durable first (see the module docs), so the caller may acknowledge
    /// them as queued.
    ///
    /// # Errors
    /// [`EventError::Unavailable`] (or another store error) when pending
    /// notifications could not be made durable: the caller must not
    /// acknowledge them (they are still queued and will be sent, so a retry
    /// by the requester can only duplicate them).
    pub async fn wait(&self, timeout: Duration) -> Result<Vec<Delivery>, EventError> {
        if !timeout.is_zero() {
            let mut rx = self.0.open.subscribe();
            let _ = tokio::time::timeout(timeout, rx.wait_for(|open| *open == 0)).await;
        }
        let deliveries = self.deliveries();
        if deliveries.iter().any(|d| !d.is_final()) {
            let hook = self.0.durability.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(sync) = hook {
                sync().await?;
                *self.0.durability.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        Ok(deliveries)
    }

    /// The notifications were committed without waiting for the disk:
    /// `hook` makes them durable ([`Receipts::wait`] calls it when some are
    /// still pending at its deadline). Set by the core.
    pub fn set_durability(&self, hook: DurabilityHook) {
        *self.0.durability.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Record the delivery of notification `id` (the core's tracker).
    /// Returns `false` when `id` is not one of these, it was already
    /// final, or `delivery` is [`Delivery::Pending`].
    pub fn resolve(&self, id: i64, delivery: Delivery) -> bool {
        let Some(i) = self.0.ids.iter().position(|x| *x == id) else {
            return false;
        };
        if !delivery.is_final() {
            return false;
        }
        {
            let mut state = self.lock();
            if state[i].is_final() {
                return false;
            }
            state[i] = delivery;
        }
        self.0.open.send_modify(|open| *open = open.saturating_sub(1));
        true
    }

    /// Run `forget` with the ids when the last clone is dropped (the core's
    /// tracker drops its entries then). Replaces an earlier one.
    pub fn on_drop(&self, forget: impl FnOnce(&[i64]) + Send + 'static) {
        *self.0.forget.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(forget));
    }

    /// A reference that does not keep the receipts alive.
    pub fn downgrade(&self) -> WeakReceipts {
        WeakReceipts(Arc::downgrade(&self.0))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Delivery>> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PartialEq for Receipts {
    fn eq(&self, other: &Self) -> bool {
        self.0.ids == other.0.ids
    }
}

impl Eq for Receipts {}

impl fmt::Debug for Receipts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipts")
            .field("ids", &self.0.ids)
            .field("deliveries", &*self.lock())
            .finish()
    }
}

/// A [`Receipts`] that does not keep them alive (what the core's tracker
/// holds).
#[derive(Clone, Debug)]
pub struct WeakReceipts(Weak<Shared>);

impl WeakReceipts {
    /// The receipts, if anyone still holds them.
    pub fn upgrade(&self) -> Option<Receipts> {
        self.0.upgrade().map(Receipts)
    }

    /// Whether both refer to the same receipts.
    pub fn same(&self, other: &WeakReceipts) -> bool {
        Weak::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn refused() -> Delivery {
        Delivery::Refused {
            reason: "410 Unregistered".into(),
            device_gone: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_when_all_resolve() {
        let r = Receipts::new(vec![7, 8]);
        let r2 = r.clone();
        let waiter = tokio::spawn(async move { r2.wait(Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        assert!(r.resolve(7, Delivery::Delivered));
        assert!(!r.resolve(7, refused()), "a final delivery stays");
        assert!(!r.resolve(9, Delivery::Delivered), "not one of ours");
        assert!(!r.is_empty());
        assert!(r.resolve(8, refused()));
        let started = tokio::time::Instant::now();
        let got = waiter.await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(got, vec![Delivery::Delivered, refused()]);
        assert!(got[1].device_gone() && !got[0].device_gone());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_gives_up_at_the_deadline_with_pending() {
        let r = Receipts::new(vec![1, 2]);
        r.resolve(1, Delivery::Delivered);
        let started = tokio::time::Instant::now();
        let got = r.wait(Duration::from_secs(10)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(got, vec![Delivery::Delivered, Delivery::Pending]);
        assert!(!r.resolve(2, Delivery::Pending), "pending is not an outcome");
    }

    #[tokio::test]
    async fn zero_timeout_and_empty_receipts_do_not_wait() {
        let r = Receipts::new(vec![1]);
        assert_eq!(r.wait(Duration::ZERO).await.unwrap(), vec![Delivery::Pending]);
        let none = Receipts::new(Vec::new());
        assert!(none.wait(Duration::from_secs(3600)).await.unwrap().is_empty());
    }

    /// A hook counting its calls, failing while `fail` is set.
    fn hook(calls: &Arc<AtomicUsize>, fail: &Arc<std::sync::atomic::AtomicBool>) -> DurabilityHook {
        let (calls, fail) = (calls.clone(), fail.clone());
        Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let failed = fail.load(Ordering::SeqCst);
            Box::pin(async move {
                if failed {
                    Err(EventError::Unavailable("disk full".into()))
                } else {
                    Ok(())
                }
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn pending_notifications_are_made_durable_before_wait_returns_them() {
        let (calls, fail) = (Arc::new(AtomicUsize::new(0)), Arc::new(Default::default()));
        // All final: nothing to make durable.
        let r = Receipts::new(vec![1]);
        r.set_durability(hook(&calls, &fail));
        r.resolve(1, Delivery::Delivered);
        assert_eq!(r.wait(Duration::from_secs(1)).await.unwrap(), vec![Delivery::Delivered]);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // Pending at the deadline: synced first, once.
        let r = Receipts::new(vec![2]);
        r.set_durability(hook(&calls, &fail));
        assert_eq!(r.wait(Duration::from_secs(1)).await.unwrap(), vec![Delivery::Pending]);
        assert_eq!(r.wait(Duration::ZERO).await.unwrap(), vec![Delivery::Pending]);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "durable once is durable");
        // The store cannot sync: the caller must not acknowledge them.
        fail.store(true, Ordering::SeqCst);
        let r = Receipts::new(vec![3]);
        r.set_durability(hook(&calls, &fail));
        assert_eq!(
            r.wait(Duration::ZERO).await,
            Err(EventError::Unavailable("disk full".into()))
        );
        fail.store(false, Ordering::SeqCst);
        assert!(r.wait(Duration::ZERO).await.is_ok(), "tried again on the next wait");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn the_last_drop_forgets_and_weak_references_do_not_keep_them() {
        let forgotten = Arc::new(AtomicUsize::new(0));
        let r = Receipts::new(vec![4, 5]);
        let f = forgotten.clone();
        r.on_drop(move |ids| {
            f.fetch_add(ids.len(), Ordering::SeqCst);
        });
        let weak = r.downgrade();
        assert!(weak.same(&r.downgrade()));
        let clone = r.clone();
        assert_eq!(clone, r);
        drop(r);
        assert_eq!(forgotten.load(Ordering::SeqCst), 0);
        assert!(weak.upgrade().is_some());
        drop(clone);
        assert_eq!(forgotten.load(Ordering::SeqCst), 2);
        assert!(weak.upgrade().is_none());
    }
}
