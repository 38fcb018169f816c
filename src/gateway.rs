//! The gateway: wires the store thread, the sinks, the router and the
//! supervised adapters together, and shuts them down in order.
//!
//! Shutdown order (bounded by `[gateway] shutdown_grace` in total):
//! 1. adapters are cancelled: listeners close, connections answer what they
//!    already read, then end;
//! 2. the router finishes the events already queued and ends;
//! 3. the store thread stops feeding sinks; sinks drain what they hold;
//! 4. the store records the sinks' last completions, checkpoints and
//!    closes;
//! 5. the sinks' threads end (`[gateway] sink_threads`), dropping what a
//!    sink still runs when the grace ran out.
//!
//! Whatever is still undelivered when the grace runs out stays in the
//! outbox and is sent on the next start; on a PostgreSQL store shared by
//! several gateways it is released to them at once (`store::pg::claims`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::feed::Feed;
use crate::outcome::{CompletionSender, Counters, Outcomes, Snapshot};
use crate::policy::Policy;
use crate::reload::{Reload, Targets};
use crate::router;
use crate::sink::threads::SinkThreads;
use crate::sink::{SinkContext, SinkError};
use crate::store::{Store, StoreError, StoreHandle};
use crate::supervisor::AdapterDeps;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("app {app:?}: {source}")]
    Sink { app: String, source: SinkError },
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot start the sinks' threads ([gateway] sink_threads): {0}")]
    SinkThreads(std::io::Error),
    #[error("{0}")]
    Admin(std::io::Error),
    #[error("singleton adapters: {0}")]
    Singleton(#[from] crate::singleton::SingletonError),
}

/// Queue between adapters and the router.
const EVENT_QUEUE: usize = 65_536;
/// How often the counters are logged (when they changed).
const STATS_EVERY: Duration = Duration::from_secs(60);
/// How often the store thread looks for outbox entries waiting for room.
const REFILL_TICK: Duration = Duration::from_millis(100);
/// How long the gateway waits, at the end, for the sinks' threads to drop
/// what their sinks still run (only a sink stuck in blocking code takes
/// longer; the process exits anyway).
const SINK_THREADS_STOP: Duration = Duration::from_secs(2);

/// Run the gateway until `shutdown` completes, then stop gracefully.
/// Returns the final counters.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Snapshot, GatewayError> {
    run_with_reload(config, shutdown, None).await
}

/// [`run`], also serving `reload`'s requests (see [`crate::reload`]).
pub async fn run_with_reload(
    config: Config,
    shutdown: impl Future<Output = ()>,
    reload: Option<Reload>,
) -> Result<Snapshot, GatewayError> {
    // Bound first: a port in use stops the start before anything is sent.
    let admin_listener = match &config.admin {
        Some(a) => Some(crate::admin::bind(a).await.map_err(GatewayError::Admin)?),
        None => None,
    };
    let counters = Arc::new(Counters::default());
    let (store, completions, open) = Store::open(&config.store)?;
    let singletons = crate::singleton::SingletonLocks::new(&config.store, &crate::singleton::gateway_label())?;
    tracing::info!(store = %config.store.describe(), "store open");
    // Never more threads than apps (a thread without a sink would idle).
    let sink_threads = config.gateway.sink_threads.min(config.apps.len());
    let mut threads = SinkThreads::start(sink_threads).map_err(GatewayError::SinkThreads)?;
    let (feed, sinks, reloads) = start_sinks(&config, &counters, completions, &mut threads)?;
    let gateway_id = open.gateway_id();
    let store_thread = open
        .start(feed, Policy::new(config.policy.clone()), counters.clone())
        .map_err(GatewayError::Thread)?;

    let background = CancellationToken::new();
    let ticker = tokio::spawn(refill_ticker(store.clone(), background.clone()));
    let statuses = crate::supervisor::AdapterStatuses::default();
    let sources = crate::metrics::Sources {
        counters: counters.clone(),
        store: store.metrics().clone(),
        adapters: statuses.clone(),
    };
    let admin = admin_listener.map(|l| start_admin(l, sources, &store, &background));
    let stats_task = tokio::spawn(log_counters(counters.clone()));
    // Without a reload source the senders drop: sinks keep their config.
    let reload_task = reload.map(|r| {
        let targets = Targets {
            apps: reloads,
            store: store.clone(),
        };
        tokio::spawn(crate::reload::follow(r, config.clone(), targets))
    });

    let (router_task, adapters_shutdown, adapters) = start_adapters(&config, &store, statuses, singletons);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "pushbridge running");

    shutdown.await;
    let grace = config.gateway.grace();
    let deadline = Instant::now() + grace;
    tracing::info!(grace = ?grace, "shutting down");

    if let Some(t) = reload_task {
        t.abort();
    }
    adapters_shutdown.cancel();
    let mut clean = timeout_at(deadline, adapters.wait()).await.is_ok();
    clean = clean && timeout_at(deadline, router_task).await.is_ok();
    background.cancel();
    let _ = ticker.await;
    if let Some(admin) = admin {
        let _ = timeout_at(deadline, admin).await;
    }
    clean = clean && timeout_at(deadline, store.close_sinks()).await.is_ok();
    clean = clean && timeout_at(deadline, sinks.wait()).await.is_ok();
    drop(store);
    if clean {
        // Every handle and sink is gone: the store thread records the last
        // completions, checkpoints and ends.
        let join = tokio::task::spawn_blocking(move || store_thread.join());
        clean = timeout_at(deadline, join).await.is_ok();
    }
    stats_task.abort();
    // What the sinks still run (the grace ran out) ends with their threads,
    // before this gateway's entries are handed to others below.
    if !threads.stop(SINK_THREADS_STOP).await {
        tracing::warn!("the sinks' threads did not end within {SINK_THREADS_STOP:?}");
    }
    let snapshot = counters.snapshot();
    if clean {
        tracing::info!(?snapshot, "stopped cleanly");
    } else {
        tracing::warn!(
            ?snapshot,
            "shutdown grace ran out; undelivered notifications stay in the outbox for the next start (or another gateway sharing the store)"
        );
        release_claims(&config, gateway_id).await;
    }
    Ok(snapshot)
}

/// Start the router and every configured adapter instance (singletons
/// under `singletons` when the store is shared); returns the router's
/// task, the adapters' shutdown token and their tracker.
fn start_adapters(
    config: &Config,
    store: &StoreHandle,
    statuses: crate::supervisor::AdapterStatuses,
    singletons: Option<Arc<crate::singleton::SingletonLocks>>,
) -> (tokio::task::JoinHandle<()>, CancellationToken, TaskTracker) {
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let router_task = tokio::spawn(router::run(event_rx, store.clone()));
    let shutdown = CancellationToken::new();
    let deps = AdapterDeps {
        events: event_tx,
        shutdown: shutdown.clone(),
        state: Arc::new(store.clone()),
        tracker: TaskTracker::new(),
        statuses,
        singletons,
    };
    config.adapters.spawn_all(&deps);
    deps.tracker.close();
    (router_task, shutdown, deps.tracker.clone())
}

/// Serve the admin routes on `listener` until `stop`.
fn start_admin(
    listener: tokio::net::TcpListener,
    sources: crate::metrics::Sources,
    store: &StoreHandle,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let state = crate::admin::AdminState {
        sources,
        store: Some(store.clone()),
        history: Default::default(),
        outbox_cache: Default::default(),
    };
    tokio::spawn(crate::admin::serve(listener, state, stop.clone()))
}

/// Each app's topic and the sender of its sink's reload channel.
type ReloadSenders = Vec<(String, tokio::sync::watch::Sender<Arc<crate::sink::SinkConfig>>)>;

/// Build and start every app's sink on `threads`; returns the feed that
/// fills their queues, the tracker of their tasks and their reload channels.
fn start_sinks(
    config: &Config,
    counters: &Arc<Counters>,
    completions: CompletionSender,
    threads: &mut SinkThreads,
) -> Result<(Feed, TaskTracker, ReloadSenders), GatewayError> {
    let sinks = TaskTracker::new();
    let mut feed = Feed::new();
    let mut reloads = Vec::new();
    for app in &config.apps {
        let (tx, input) = mpsc::channel(app.queue);
        let (reload_tx, reload) = tokio::sync::watch::channel(Arc::new(app.sink.clone()));
        reloads.push((app.topic.clone(), reload_tx));
        let ctx = SinkContext {
            app: app.topic.as_str().into(),
            environment: app.environment,
            input,
            outcomes: Outcomes::new(counters, &app.topic, completions.clone()),
            reload,
        };
        let sink = app.sink.build(ctx).map_err(|source| GatewayError::Sink {
            app: app.topic.clone(),
            source,
        })?;
        let span = tracing::info_span!("sink", app = %app.topic, protocol = app.sink.protocol().as_str());
        let _ = counters.app(&app.topic).protocol.set(app.sink.protocol().as_str());
        let task = threads.spawn(sink.instrument(span));
        let topic = app.topic.clone();
        sinks.spawn(async move {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!(app = %topic, "the sink panicked; its notifications stay in the outbox for the next start");
                }
            }
        });
        feed.add(&app.topic, app.environment, app.sink.payload_limit(), tx, counters);
        tracing::info!(app = %app.topic, protocol = app.sink.protocol().as_str(), environment = %app.environment, "app ready");
    }
    sinks.close();
    Ok((feed, sinks, reloads))
}

/// Wake the store thread every [`REFILL_TICK`] until `stop`.
async fn refill_ticker(store: StoreHandle, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFILL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => if store.tick().await.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// The grace ran out with notifications in the sinks: hand this gateway's
/// claims (`gateway`: its id on a PostgreSQL store, else nothing to do) to
/// the other gateways sharing the store now rather than after the lease
/// (see `store::pg::claims`).
async fn release_claims(config: &Config, gateway: Option<i64>) {
    let Some(gateway) = gateway else { return };
    let store = config.store.clone();
    let released = tokio::task::spawn_blocking(move || crate::store::release_claims_of(&store, gateway)).await;
    match released {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot release this gateway's outbox entries; others take them over once its lease ran out")
        }
        Err(e) => tracing::warn!(error = %e, "the release of this gateway's outbox entries failed"),
    }
}

/// A line of counters every minute something happened.
async fn log_counters(counters: Arc<Counters>) {
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.tick().await;
    let mut last = counters.snapshot();
    loop {
        tick.tick().await;
        let now = counters.snapshot();
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
