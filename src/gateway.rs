//! The gateway: wires the store thread, the sinks, the report handler, the
//! router and the supervised adapters together, and shuts them down in
//! order.
//!
//! Shutdown order (bounded by `[gateway] shutdown_grace` in total):
//! 1. adapters are cancelled: listeners close, connections answer what they
//!    already read, then end;
//! 2. the router finishes the events already queued and ends;
//! 3. the store thread stops feeding sinks; sinks drain what they hold;
//! 4. the report handler records the last outcomes; the store checkpoints
//!    and closes.
//!
//! Whatever is still undelivered when the grace runs out stays in the
//! outbox and is sent on the next start.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::{Snapshot, Stats};
use crate::policy::Policy;
use crate::store::db::Checkpointer;
use crate::store::writer::{AppSlot, Writer};
use crate::store::{Command, Db, StoreError, StoreHandle};
use crate::supervisor::AdapterDeps;
use crate::{reports, router, sink};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("app {topic:?}: {message}")]
    Sink { topic: String, message: String },
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
}

/// Queue between adapters and the router.
const EVENT_QUEUE: usize = 65_536;
/// Queue between the router/report handler and the store thread.
const STORE_QUEUE: usize = 65_536;
/// How often the counters are logged (when they changed).
const STATS_EVERY: Duration = Duration::from_secs(60);
/// How often the WAL is folded into the main file (off the commit path).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// How often the store thread looks for outbox entries waiting for room.
const REFILL_TICK: Duration = Duration::from_millis(100);

/// Run the gateway until `shutdown` completes, then stop gracefully.
/// Returns the final counters.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Snapshot, GatewayError> {
    let stats = Arc::new(Stats::default());
    let db = Db::open(&config.store.path, config.store.synchronous)?;
    db.disable_autocheckpoint()?;
    let checkpointer = Checkpointer::start(&config.store.path, CHECKPOINT_EVERY)?;
    tracing::info!(path = %config.store.path.display(), "store open");

    // Sinks, one per app.
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let sinks = TaskTracker::new();
    let mut slots = Vec::with_capacity(config.apps.len());
    for app in &config.apps {
        let sink = sink::build(app).map_err(|message| GatewayError::Sink {
            topic: app.topic.clone(),
            message,
        })?;
        let (tx, rx) = mpsc::channel(app.queue);
        slots.push(AppSlot::new(
            &app.topic,
            app.environment,
            app.protocol.payload_limit(),
            tx,
        ));
        sinks.spawn(sink.run(rx, report_tx.clone()));
        tracing::info!(topic = %app.topic, protocol = app.protocol.as_str(), environment = %app.environment, "app ready");
    }
    sinks.close();
    drop(report_tx);

    // The store thread.
    let (store_tx, store_rx) = mpsc::channel(STORE_QUEUE);
    let writer = Writer::new(db, slots, Policy::new(config.policy.clone()), stats.clone());
    let writer_thread = std::thread::Builder::new()
        .name("pushbridge-store".into())
        .spawn(move || writer.run(store_rx))
        .map_err(GatewayError::Thread)?;
    let store = StoreHandle::new(store_tx);

    let ticker_stop = CancellationToken::new();
    let ticker = tokio::spawn({
        let store = store.clone();
        let stop = ticker_stop.clone();
        async move {
            let mut tick = tokio::time::interval(REFILL_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if store.send_command(Command::Tick).await.is_err() { return; }
                    }
                    _ = stop.cancelled() => return,
                }
            }
        }
    });
    let reports_task = tokio::spawn(reports::run(report_rx, store.clone(), stats.clone()));
    // A line of counters every minute something happened.
    let stats_task = tokio::spawn({
        let stats = stats.clone();
        async move {
            let mut tick = tokio::time::interval(STATS_EVERY);
            tick.tick().await;
            let mut last = stats.snapshot();
            loop {
                tick.tick().await;
                let now = stats.snapshot();
                if now != last {
                    tracing::info!(
                        accepted = now.accepted,
                        delivered = now.delivered,
                        rejected = now.rejected,
                        expired = now.expired,
                        devices_removed = now.devices_removed,
                        "counters"
                    );
                    last = now;
                }
            }
        }
    });

    // Router and adapters.
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let router_task = tokio::spawn(router::run(event_rx, store.clone()));
    let adapters_shutdown = CancellationToken::new();
    let deps = AdapterDeps {
        events: event_tx,
        shutdown: adapters_shutdown.clone(),
        state: Arc::new(store.clone()),
        tracker: TaskTracker::new(),
    };
    config.adapters.spawn_all(&deps);
    deps.tracker.close();
    let adapters = deps.tracker.clone();
    drop(deps);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "pushbridge running");

    shutdown.await;
    let grace = config.gateway.grace();
    let deadline = Instant::now() + grace;
    tracing::info!(grace = ?grace, "shutting down");

    adapters_shutdown.cancel();
    let mut clean = timeout_at(deadline, adapters.wait()).await.is_ok();
    clean = clean && timeout_at(deadline, router_task).await.is_ok();
    ticker_stop.cancel();
    let _ = ticker.await;
    let _ = store.send_command(Command::CloseSinks).await;
    clean = clean && timeout_at(deadline, sinks.wait()).await.is_ok();
    clean = clean && timeout_at(deadline, reports_task).await.is_ok();
    drop(store);
    if clean {
        // Every handle is gone: the store thread checkpoints and ends.
        let join = tokio::task::spawn_blocking(move || writer_thread.join());
        clean = timeout_at(deadline, join).await.is_ok();
    }
    stats_task.abort();
    drop(checkpointer);
    let snapshot = stats.snapshot();
    if clean {
        tracing::info!(?snapshot, "stopped cleanly");
    } else {
        tracing::warn!(
            ?snapshot,
            "shutdown grace ran out; undelivered notifications stay in the outbox for the next start"
        );
    }
    Ok(snapshot)
}
