//! Adapter supervision: run each configured adapter instance as its own
//! task; one that fails (or panics) is logged and restarted with capped
//! exponential backoff; shutdown cancels them all. A singleton instance on
//! a shared PostgreSQL store runs only while this gateway holds its lock
//! ([`crate::singleton`]): it stands by until then, and is stopped at once
//! when the lock session is lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushbridge_api::{Adapter, AdapterError, AdapterStatus, Context, Envelope, StateStore};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use pushbridge_kit::Backoff;

use crate::singleton::{lock_key, SingletonLocks};

/// First restart delay.
const RESTART_BASE: Duration = Duration::from_secs(1);
/// Longest restart delay (also used at once for configuration errors).
const RESTART_MAX: Duration = Duration::from_secs(60);
/// An adapter that ran this long before failing starts its backoff over.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// How long a gateway whose singleton lock session was lost waits before
/// trying the lock again (two of the others' tries).
const AFTER_LOSS: Duration = crate::singleton::RETRY.saturating_mul(2);
/// How long a singleton instance whose lock session was lost may take to
/// stop after its cancellation before its task is aborted (which drops its
/// connections).
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// How long a gateway that has just taken a singleton lock waits before it
/// starts the instance: the longest a previous holder may still run after
/// the server freed the lock without it noticing at once (a session
/// terminated by an administrator, a crashed backend, a failover to a
/// replica, which does not carry advisory locks): its next check
/// ([`crate::singleton::KEEPALIVE`]) and that check's timeout, then
/// [`STOP_GRACE`], plus a margin.
pub const TAKEOVER_FENCE: Duration = crate::singleton::KEEPALIVE
    .saturating_add(crate::singleton::KEEPALIVE_TIMEOUT)
    .saturating_add(STOP_GRACE)
    .saturating_add(Duration::from_millis(500));

/// What every adapter instance is wired to.
#[derive(Clone)]
pub struct AdapterDeps {
    /// Events to the router. Each supervisor holds a clone; the router stops
    /// once all are dropped.
    pub events: mpsc::Sender<Envelope>,
    /// Cancelled at shutdown; each adapter gets a child token.
    pub shutdown: CancellationToken,
    /// Adapters' persistent key-value state.
    pub state: Arc<dyn StateStore>,
    /// Tracks supervisor tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Every instance's self-report, for metrics and readiness.
    pub statuses: AdapterStatuses,
    /// Singleton locks on the shared PostgreSQL store; `None` (SQLite):
    /// singleton instances run at once like any other.
    pub singletons: Option<Arc<SingletonLocks>>,
}

/// The self-reports of every adapter instance, in start order.
#[derive(Clone, Default)]
pub struct AdapterStatuses(Arc<Mutex<Vec<Arc<AdapterStatus>>>>);

impl AdapterStatuses {
    fn add(&self, status: Arc<AdapterStatus>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(status);
    }

    /// Every instance's status.
    pub fn all(&self) -> Vec<Arc<AdapterStatus>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Start one supervised task per configured instance of adapter `A`.
pub fn spawn_all<A: Adapter>(configs: &[A::Config], deps: &AdapterDeps) {
    for config in configs {
        let name = A::instance_name(config);
        let status = Arc::new(AdapterStatus::new(A::KIND, name.as_str(), A::OUTBOUND));
        deps.statuses.add(status.clone());
        deps.tracker
            .spawn(supervise::<A>(name, config.clone(), status, deps.clone()));
    }
}

async fn supervise<A: Adapter>(name: String, config: A::Config, status: Arc<AdapterStatus>, deps: AdapterDeps) {
    let instance = Instance::<A> {
        name,
        config,
        status,
        deps,
    };
    match instance.deps.singletons.clone() {
        Some(locks) if A::singleton(&instance.config) => instance.run_singleton(&locks).await,
        _ => instance.run_restarting(&instance.deps.shutdown, None).await,
    }
}

/// One adapter instance and what it is wired to.
struct Instance<A: Adapter> {
    name: String,
    config: A::Config,
    status: Arc<AdapterStatus>,
    deps: AdapterDeps,
}

impl<A: Adapter> Instance<A> {
    /// Run the instance whenever this gateway holds its singleton lock,
    /// until shutdown.
    ///
    /// Order, so that two gateways never run it at once: the lock is taken
    /// before the adapter starts; when the lock session is lost, the
    /// adapter is cancelled at once and aborted after [`STOP_GRACE`]
    /// *before* this gateway tries the lock again. When the server frees
    /// the lock on its own (the session terminated, a crash, a failover),
    /// the previous holder may notice only at its next check: a gateway
    /// that takes the lock waits [`TAKEOVER_FENCE`] (the previous holder's
    /// detection plus `STOP_GRACE`) before it starts the instance. When the
    /// holder's link goes silent instead, the server frees the lock only
    /// after its TCP keepalive (see [`crate::singleton`]), later still. At
    /// shutdown the adapter stops first and the lock is given up after it.
    async fn run_singleton(&self, locks: &SingletonLocks) {
        let name = self.name.as_str();
        self.status.set_singleton();
        self.status.set_standby("standing by: trying the lock");
        let key = lock_key(A::KIND, name);
        loop {
            let Some(held) = locks.acquire(name, key, &self.status, &self.deps.shutdown).await else {
                return;
            };
            self.status.set_standby(format!(
                "taking over: waiting {TAKEOVER_FENCE:?} for a previous holder to stop"
            ));
            let fenced = tokio::select! {
                _ = tokio::time::sleep(TAKEOVER_FENCE) => true,
                _ = held.lost().cancelled() => false,
                _ = self.deps.shutdown.cancelled() => false,
            };
            if !fenced {
                held.release().await;
                if self.deps.shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            self.status.set_active();
            let scope = self.deps.shutdown.child_token();
            let (lost, stop) = (held.lost().clone(), scope.clone());
            let stop_on_loss = tokio::spawn(async move {
                tokio::select! {
                    _ = lost.cancelled() => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            });
            self.run_restarting(&scope, Some(held.lost())).await;
            scope.cancel();
            let _ = stop_on_loss.await;
            // The adapter has stopped: only now may the lock go.
            held.release().await;
            if self.deps.shutdown.is_cancelled() {
                tracing::info!(adapter = %name, lock = key, "singleton lock released");
                return;
            }
            // Give the gateways standing by (trying every `RETRY`) the
            // first chance: this one's link to the database just failed.
            self.status.set_standby("standing by: the lock session was lost");
            tokio::select! {
                _ = tokio::time::sleep(AFTER_LOSS) => {}
                _ = self.deps.shutdown.cancelled() => return,
            }
        }
    }

    /// Run the adapter, restarting it with backoff, until `scope` is
    /// cancelled. When `lost` is cancelled (the singleton lock session was
    /// lost) a running adapter gets [`STOP_GRACE`] before it is aborted.
    async fn run_restarting(&self, scope: &CancellationToken, lost: Option<&CancellationToken>) {
        let (name, status) = (self.name.as_str(), &self.status);
        let mut backoff = Backoff::new(RESTART_BASE, RESTART_MAX);
        loop {
            // A lost lock reaches `scope` through a relay task: never start
            // the adapter again once it is lost, even before the relay ran.
            if scope.is_cancelled() || lost.is_some_and(CancellationToken::is_cancelled) {
                return;
            }
            let ctx = Context::new(
                name,
                self.config.clone(),
                self.deps.events.clone(),
                scope.child_token(),
                self.deps.state.clone(),
            )
            .with_status(status.clone());
            let started = Instant::now();
            tracing::info!(adapter = %name, "adapter starting");
            let result = run_once::<A>(ctx, lost, name).await;
            if scope.is_cancelled() {
                if let Err(e) = result {
                    tracing::warn!(adapter = %name, error = %e, "adapter failed while shutting down");
                }
                tracing::info!(adapter = %name, "adapter stopped");
                return;
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff.reset();
            }
            let delay = match &result {
                Err(AdapterError::Config(_)) => backoff.max(),
                _ => backoff.next_delay(),
            };
            if A::OUTBOUND {
                status.set_disconnected(match &result {
                    Ok(()) => "adapter restarting".to_owned(),
                    Err(e) => format!("adapter restarting: {e}"),
                });
            }
            match result {
                Ok(()) => {
                    tracing::warn!(adapter = %name, retry_in = ?delay, "adapter returned before shutdown; restarting")
                }
                Err(e) => tracing::error!(adapter = %name, error = %e, retry_in = ?delay, "adapter failed; restarting"),
            }
            let lost_now = async {
                match lost {
                    Some(l) => l.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = scope.cancelled() => return,
                _ = lost_now => return,
            }
        }
    }
}

/// Run the adapter once in its own task. A panic inside the adapter
/// surfaces as a JoinError, not a dead gateway. Once `lost` is cancelled,
/// the adapter (cancelled through its context too) gets [`STOP_GRACE`],
/// then its task is aborted.
async fn run_once<A: Adapter>(
    ctx: Context<A::Config>,
    lost: Option<&CancellationToken>,
    name: &str,
) -> Result<(), AdapterError> {
    let mut task = tokio::spawn(A::run(ctx));
    let never = CancellationToken::new();
    let lost = lost.unwrap_or(&never);
    let joined = tokio::select! {
        r = &mut task => r,
        _ = lost.cancelled() => match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(r) => r,
            Err(_) => {
                task.abort();
                tracing::warn!(adapter = %name, timeout = ?STOP_GRACE, "adapter did not stop in time; aborted");
                return task.await.unwrap_or(Ok(()));
            }
        },
    };
    match joined {
        Ok(r) => r,
        Err(e) => Err(AdapterError::Other(format!("adapter panicked: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RUNS: AtomicUsize = AtomicUsize::new(0);

    struct Flaky;
    impl Adapter for Flaky {
        type Config = ();
        const KIND: &'static str = "flaky";
        async fn run(ctx: Context<()>) -> Result<(), AdapterError> {
            let n = RUNS.fetch_add(1, Ordering::SeqCst);
            match n {
                0 => Err(AdapterError::Protocol("first run fails".into())),
                1 => panic!("second run panics"),
                _ => {
                    ctx.shutdown().cancelled().await;
                    Ok(())
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_and_panicking_adapters_are_restarted_and_stop_on_shutdown() {
        let (tx, _rx) = mpsc::channel(1);
        let deps = AdapterDeps {
            events: tx,
            shutdown: CancellationToken::new(),
            state: Arc::new(pushbridge_api::context::MemoryState::default()),
            tracker: TaskTracker::new(),
            statuses: AdapterStatuses::default(),
            singletons: None,
        };
        spawn_all::<Flaky>(&[()], &deps);
        deps.tracker.close();
        for _ in 0..50 {
            if RUNS.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(RUNS.load(Ordering::SeqCst), 3);
        deps.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), deps.tracker.wait())
            .await
            .expect("supervisor stops on shutdown");
    }
}
