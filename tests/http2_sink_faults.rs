//! The HTTP/2 sink against the APNS simulator under faults, in-process,
//! over real TLS on loopback: GOAWAY and dropped connections, an APNS that
//! is not there yet, a storm of 503s, a silent connection found by PING, a
//! server certificate from another CA.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::apns::Creds;
use harness::sink::{always_503, later, note, run, settled, sink_for};
use harness::{free_port, token};
use pushbridge::config::Config;
use pushbridge::outcome::Outcome;
use pushbridge::simulator::http2::Options;
use pushbridge::sink::Detached;

/// 1000 notifications over 2 connections with faults; every one delivered,
/// at least once. Returns (records, distinct outbox ids).
async fn lossless_under(options: Options) -> (usize, usize, Arc<pushbridge::simulator::http2::State>) {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds
        .simulator(
            "127.0.0.1:0",
            Options {
                fail_rate: 0.05,
                ..options
            },
        )
        .await;
    let sink = sink_for(
        dir.path(),
        &creds.token_app(&sim.addr().to_string()),
        "connections = 2\n",
    );
    let exp = later();
    let notes = (1..=1000).map(|i| note(i, &token(i as u64), exp)).collect();
    let r = run(sink, notes, 1000).await;
    assert!(r.iter().all(|r| r.outcome == Outcome::Delivered));
    let records = sim.state().recorder.records();
    let mut ids: Vec<i64> = records
        .iter()
        .map(|r| pushbridge::sink::http2::request::outbox_id_of(&r.apns_id).unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
    (records.len(), ids.len(), sim.state().clone())
}

#[tokio::test]
async fn goaway_and_failures_deliver_each_exactly_once() {
    let (records, distinct, state) = lossless_under(Options {
        goaway_every: Some(50),
        ..Options::default()
    })
    .await;
    assert_eq!(records, distinct, "GOAWAY refuses unprocessed streams: no duplicates");
    assert!(state.goaways.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

#[tokio::test]
async fn dropped_connections_deliver_each_at_least_once() {
    let (records, distinct, state) = lossless_under(Options {
        drop_every: Some(100),
        ..Options::default()
    })
    .await;
    eprintln!("{records} accepted for {distinct} notifications (duplicates come from unanswered streams)");
    assert!(state.drops.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

#[tokio::test]
async fn waits_for_an_unreachable_apns_then_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    // Reserve a port, free it, start the simulator there later.
    let addr = format!("127.0.0.1:{}", free_port());
    let sink = sink_for(dir.path(), &creds.token_app(&addr), "");
    let Detached {
        input: tx,
        completions: mut rrx,
        ..
    } = sink.spawn_detached().unwrap();
    tx.send(note(1, &token(1), later())).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(1500), rrx.recv())
        .await
        .is_err());
    let sim = creds.simulator(&addr, creds.options(false)).await;
    match tokio::time::timeout(Duration::from_secs(15), rrx.recv()).await {
        Ok(Some(c)) => assert_eq!(settled(c).outcome, Outcome::Delivered),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.state().recorder.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_503s_holds_a_bounded_number_of_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    // Certificate auth: no one-stream priming, every stream in use at once.
    let sim = always_503(&creds, true).await;
    let sink = sink_for(
        dir.path(),
        &creds.cert_app(&sim.addr().to_string()),
        "max_retries = 1000\n",
    );
    let Detached {
        input: tx,
        completions: _rrx,
        counters: stats,
        task,
        ..
    } = sink.spawn_detached().unwrap();
    let exp = later();
    let total = 40_000;
    let feeder = tokio::spawn(async move {
        for i in 1..=total {
            if tx.send(note(i, &token(i as u64), exp)).await.is_err() {
                break;
            }
        }
    });
    // One connection: 2 × (2000 streams + 4096 queued) at most.
    let cap = 2 * (2000 + 4096);
    // Generous: reaching the cap takes seconds on a loaded 2-core machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stats.peak_outstanding.load(std::sync::atomic::Ordering::Relaxed) < cap as u64 {
        assert!(std::time::Instant::now() < deadline, "never reached the cap");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stats.peak_outstanding.load(std::sync::atomic::Ordering::Relaxed),
        cap as u64,
        "the sink stops taking input at its cap"
    );
    assert!(
        !feeder.is_finished(),
        "the rest waits upstream (in the outbox), not in memory"
    );
    feeder.abort();
    task.abort();
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    // The same keys, but a CA file of an unrelated PKI.
    let other = tempfile::tempdir().unwrap();
    let stranger = Creds::new(other.path());
    let keys = creds.token_app(&sim.addr().to_string()).replace(
        &format!("{:?}", creds.ca_file.display().to_string()),
        &format!("{:?}", stranger.ca_file.display().to_string()),
    );
    assert!(keys.contains(&stranger.ca_file.display().to_string()));
    let text = harness::apns::http2_config(dir.path(), &keys, "");
    let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
    let pushbridge::sink::SinkConfig::Http2(http2) = &config.apps[0].sink else {
        panic!("an http2 app")
    };
    let setup = pushbridge::sink::http2::Http2Setup::from_config(http2).unwrap();
    let err = pushbridge::sink::http2::send_one(
        &setup,
        &note(1, &token(1), later()),
        "00000000-0000-0000-0000-000000000001",
    )
    .await
    .expect_err("an unknown issuer must not be trusted");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    assert_eq!(sim.state().recorder.count(), 0);
}

/// A connection that goes silent (no answers, no PONG, socket open) is
/// found by the keep-alive PING and given up; the notification it held is
/// sent again on a new connection. Without the PING it would wait for the
/// 30 s answer timeout, past `run`'s 20 s limit.
#[tokio::test]
async fn a_silent_connection_is_found_by_ping_and_its_notification_resent() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let options = Options {
        stall_connections: 1,
        ..creds.options(false)
    };
    let sim = creds.simulator("127.0.0.1:0", options).await;
    let sink = sink_for(
        dir.path(),
        &format!("{}ping_interval = 1\n", creds.token_app(&sim.addr().to_string())),
        "",
    );
    let r = run(sink, vec![note(1, &token(1), later())], 1).await;
    assert_eq!(r[0].outcome, Outcome::Delivered);
    let state = sim.state();
    assert_eq!(state.stalls.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The silent connection may have taken it before going quiet (its
    // answer never came): at least once, and the last copy came over a
    // second connection.
    let records = state.recorder.records();
    assert!((1..=2).contains(&records.len()), "{records:?}");
    assert_eq!(records.last().unwrap().connection, 2, "sent again on a new connection");
}

#[test]
fn ping_interval_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    for (value, ok) in [("0", false), ("3601", false), ("1", true), ("3600", true)] {
        let keys = format!("{}ping_interval = {value}\n", creds.token_app("127.0.0.1:1"));
        let text = harness::apns::http2_config(dir.path(), &keys, "");
        match Config::parse(&text, std::path::Path::new("test.toml")) {
            Ok(_) => assert!(ok, "ping_interval = {value} accepted"),
            Err(e) => {
                assert!(!ok, "ping_interval = {value}: {e}");
                assert!(e.to_string().contains(&format!("ping_interval: {value}:")), "{e}");
            }
        }
    }
}
