//! Adapter supervision: run each configured adapter instance as its own
//! task; one that fails (or panics) is logged and restarted with capped
//! exponential backoff; shutdown cancels them all.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushbridge_api::{Adapter, AdapterError, AdapterStatus, Context, Envelope, StateStore};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use pushbridge_kit::Backoff;

/// First restart delay.
const RESTART_BASE: Duration = Duration::from_secs(1);
/// Longest restart delay (also used at once for configuration errors).
const RESTART_MAX: Duration = Duration::from_secs(60);
/// An adapter that ran this long before failing starts its backoff over.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

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
    let mut backoff = Backoff::new(RESTART_BASE, RESTART_MAX);
    loop {
        let ctx = Context::new(
            name.as_str(),
            config.clone(),
            deps.events.clone(),
            deps.shutdown.child_token(),
            deps.state.clone(),
        )
        .with_status(status.clone());
        let started = Instant::now();
        tracing::info!(adapter = %name, "adapter starting");
        // A panic inside the adapter surfaces as a JoinError, not a dead gateway.
        let result = match tokio::spawn(A::run(ctx)).await {
            Ok(r) => r,
            Err(e) => Err(AdapterError::Other(format!("adapter panicked: {e}"))),
        };
        if deps.shutdown.is_cancelled() {
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
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = deps.shutdown.cancelled() => return,
        }
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
