//! The singleton lock logic against a real PostgreSQL, without IRC: two
//! in-process "gateways" (each its own supervisor deps and lock sessions)
//! run one singleton instance of a probe adapter that records where and
//! when it runs.

mod harness;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::postgres::PgCluster;
use pushbridge::config::StoreConfig;
use pushbridge::singleton::{SingletonLocks, RETRY};
use pushbridge::supervisor::{spawn_all, AdapterDeps, AdapterStatuses, STOP_GRACE, TAKEOVER_FENCE};
use pushbridge_api::context::MemoryState;
use pushbridge_api::{Adapter, AdapterError, AdapterStatus, Context};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the probe did on one gateway.
#[derive(Debug, Default, Clone)]
struct Runs {
    running: bool,
    starts: usize,
    stops: usize,
}

/// Every probe's record, by gateway label; and whether two probes of one
/// test ever ran at once (labels share a test's prefix before `/`).
static RUNS: Mutex<Option<HashMap<String, Runs>>> = Mutex::new(None);
static OVERLAPS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn runs(label: &str) -> Runs {
    let map = RUNS.lock().unwrap();
    map.as_ref().and_then(|m| m.get(label)).cloned().unwrap_or_default()
}

fn record(label: &str, running: bool) {
    let mut guard = RUNS.lock().unwrap();
    let map = guard.get_or_insert_with(HashMap::new);
    let test = label.split('/').next().unwrap_or_default();
    if running && map.iter().any(|(l, r)| l != label && l.starts_with(test) && r.running) {
        OVERLAPS.lock().unwrap().push(label.to_owned());
    }
    let r = map.entry(label.to_owned()).or_default();
    r.running = running;
    if running {
        r.starts += 1;
    } else {
        r.stops += 1;
    }
}

/// A singleton adapter that runs until cancelled; `(label, stuck)`: a
/// stuck one ignores its cancellation.
struct Probe;

impl Adapter for Probe {
    type Config = (String, bool);
    const KIND: &'static str = "probe";

    fn singleton(_c: &(String, bool)) -> bool {
        true
    }

    async fn run(ctx: Context<(String, bool)>) -> Result<(), AdapterError> {
        let (label, stuck) = ctx.config().clone();
        struct Stop(String);
        impl Drop for Stop {
            fn drop(&mut self) {
                record(&self.0, false);
            }
        }
        record(&label, true);
        let _stop = Stop(label);
        if stuck {
            std::future::pending::<()>().await;
        }
        ctx.shutdown().cancelled().await;
        Ok(())
    }
}

/// One in-process gateway running the probe under its singleton lock.
struct Gw {
    label: String,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    status: Arc<AdapterStatus>,
}

/// What the supervisor needs to run instances on `store`, this gateway
/// labelled `label`.
fn deps(store: &StoreConfig, label: &str) -> AdapterDeps {
    let (events, _) = mpsc::channel(1);
    AdapterDeps {
        events,
        shutdown: CancellationToken::new(),
        state: Arc::new(MemoryState::default()),
        tracker: TaskTracker::new(),
        statuses: AdapterStatuses::default(),
        singletons: SingletonLocks::new(store, label).expect("locks"),
    }
}

impl Gw {
    fn start(pg: &PgCluster, label: &str, stuck: bool) -> Gw {
        let store = StoreConfig {
            url: Some(pg.url()),
            ..StoreConfig::default()
        };
        let deps = deps(&store, label);
        assert!(deps.singletons.is_some(), "PostgreSQL has singleton locks");
        spawn_all::<Probe>(&[(label.to_owned(), stuck)], &deps);
        deps.tracker.close();
        let status = deps.statuses.all().remove(0);
        Gw {
            label: label.to_owned(),
            shutdown: deps.shutdown,
            tracker: deps.tracker,
            status,
        }
    }

    /// Graceful stop: the adapter ends, then the lock is released.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .expect("supervisor stops");
    }

    /// Close this gateway's lock session from the server's side.
    fn terminate_session(&self, pg: &PgCluster) {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pushbridge singleton {}'",
            self.label
        );
        assert_eq!(pg.psql(&sql), "1", "one lock session of {}", self.label);
    }
}

/// Wait up to `within` for `cond`.
async fn wait(within: Duration, what: &str, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_runs_it_the_other_stands_by_and_takes_over() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("pushbridge=debug")
        .with_test_writer()
        .try_init();
    let Some(pg) = PgCluster::start() else { return };
    let a = Gw::start(&pg, "t1/a", false);
    wait(Duration::from_secs(10), "a runs", || runs("t1/a").running).await;
    assert_eq!(a.status.standby(), None);
    assert!(a.status.is_singleton());
    let b = Gw::start(&pg, "t1/b", false);
    wait(Duration::from_secs(10), "b stands by", || {
        b.status.standby().is_some_and(|w| w.contains("held by"))
    })
    .await;
    let why = b.status.standby().unwrap_or_default();
    assert!(why.contains("held by pushbridge singleton t1/a"), "{why}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(runs("t1/b").starts, 0, "b never ran while a held the lock");

    // A graceful stop of the holder: the other takes over within a few
    // seconds (its next try, then the fence), and never while a still runs.
    a.stop().await;
    assert_eq!(runs("t1/a").stops, 1);
    let took = wait(TAKEOVER_FENCE + Duration::from_secs(3), "b takes over", || {
        runs("t1/b").running
    })
    .await;
    assert!(took >= TAKEOVER_FENCE, "{took:?}: started before the fence");
    assert!(took <= TAKEOVER_FENCE + Duration::from_secs(2), "{took:?}");
    assert_eq!(b.status.standby(), None);

    // The holder's session closes (server side): its adapter stops at once;
    // a gateway standing by takes over.
    let a2 = Gw::start(&pg, "t1/a2", false);
    wait(Duration::from_secs(10), "a2 stands by", || {
        a2.status.standby().is_some()
    })
    .await;
    b.terminate_session(&pg);
    wait(Duration::from_secs(1), "b's adapter stops", || !runs("t1/b").running).await;
    assert_eq!(runs("t1/b").stops, 1);
    wait(TAKEOVER_FENCE + Duration::from_secs(3), "a2 takes over", || {
        runs("t1/a2").running
    })
    .await;
    wait(Duration::from_secs(3), "b stands by again", || {
        b.status
            .standby()
            .is_some_and(|w| w.contains("held by pushbridge singleton t1/a2"))
    })
    .await;
    assert_eq!(runs("t1/b").starts, 1, "b stands by, it does not run");
    a2.stop().await;
    wait(TAKEOVER_FENCE + Duration::from_secs(3), "b runs again", || {
        runs("t1/b").running
    })
    .await;
    b.stop().await;
    assert!(OVERLAPS.lock().unwrap().iter().all(|l| !l.starts_with("t1/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_session_stops_the_adapter_even_a_stuck_one() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("pushbridge=debug")
        .with_test_writer()
        .try_init();
    let Some(pg) = PgCluster::start() else { return };
    let gw = Gw::start(&pg, "t2/stuck", true);
    wait(Duration::from_secs(10), "it runs", || runs("t2/stuck").running).await;
    gw.terminate_session(&pg);
    // Cancelled at once, ignored, aborted after the grace.
    let stopped = wait(STOP_GRACE * 3, "aborted", || !runs("t2/stuck").running).await;
    assert!(stopped >= STOP_GRACE - Duration::from_millis(100), "{stopped:?}");
    // Nobody else holds the lock: it is taken again and the instance runs.
    wait(TAKEOVER_FENCE + Duration::from_secs(5), "runs again", || {
        runs("t2/stuck").starts == 2
    })
    .await;
    assert_eq!(gw.status.standby(), None);
    // Shutdown waits for the stuck adapter; a lost session ends it.
    gw.shutdown.cancel();
    gw.terminate_session(&pg);
    gw.stop().await;
    assert!(!runs("t2/stuck").running);

    // With the server gone, a holder stops its adapter; the lock session
    // comes back with the server.
    let gw = Gw::start(&pg, "t2/plain", false);
    wait(Duration::from_secs(10), "it runs", || runs("t2/plain").running).await;
    pg.stop_now();
    wait(Duration::from_secs(4), "stopped with the server", || {
        !runs("t2/plain").running
    })
    .await;
    wait(Duration::from_secs(5), "stands by", || gw.status.standby().is_some()).await;
    pg.restart();
    wait(TAKEOVER_FENCE + Duration::from_secs(10), "runs again", || {
        runs("t2/plain").starts == 2
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_keeps_it_standing_by_and_shutdown_is_prompt() {
    // A "server" that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let store = StoreConfig {
        url: Some(format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable")),
        ..StoreConfig::default()
    };
    let deps = deps(&store, "t3/a");
    spawn_all::<Probe>(&[("t3/a".to_owned(), false)], &deps);
    deps.tracker.close();
    let status = deps.statuses.all().remove(0);
    let want = format!("standing by: cannot reach PostgreSQL at 127.0.0.1:{port}: no answer within");
    wait(Duration::from_secs(8), "stands by", || {
        status.standby().is_some_and(|w| w.starts_with(&want))
    })
    .await;
    assert_eq!(runs("t3/a").starts, 0);
    // Shutdown while the next connection attempt hangs (after the retry
    // delay): the supervisor ends now.
    tokio::time::sleep(RETRY + Duration::from_millis(500)).await;
    deps.shutdown.cancel();
    tokio::time::timeout(Duration::from_millis(500), deps.tracker.wait())
        .await
        .expect("prompt shutdown while connecting");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_the_server_frees_at_once_is_fenced_while_the_old_holder_stops() {
    // The server frees the holder's lock the moment its session is
    // terminated (as on a crash of the backend, or a failover), while the
    // holder's adapter is stuck and stops only when aborted after the
    // grace: the gateway standing by takes the lock within a second, but
    // starts the instance only after the fence, so the two never overlap.
    let Some(pg) = PgCluster::start() else { return };
    let a = Gw::start(&pg, "t4/a", true);
    wait(Duration::from_secs(10), "a runs", || runs("t4/a").running).await;
    let b = Gw::start(&pg, "t4/b", false);
    wait(Duration::from_secs(10), "b stands by", || b.status.standby().is_some()).await;
    a.terminate_session(&pg);
    wait(STOP_GRACE * 3, "a aborted", || !runs("t4/a").running).await;
    wait(TAKEOVER_FENCE + Duration::from_secs(5), "b takes over", || {
        runs("t4/b").running
    })
    .await;
    assert!(
        OVERLAPS.lock().unwrap().iter().all(|l| !l.starts_with("t4/")),
        "two instances ran at once: {:?}",
        OVERLAPS.lock().unwrap()
    );
    b.stop().await;
    a.stop().await;
}
