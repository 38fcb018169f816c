//! Several gateways (the real binary) sharing one real PostgreSQL database,
//! each sending to the same APNS simulator over real TLS: presence reported
//! to one gateway is honoured by another, a device removed by one is gone
//! for all, and a gateway `kill -9`ed while 10,000 messages stream through
//! both loses nothing: the survivor takes over its claims after the lease.

mod harness;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::apns::{http2_config, Creds};
use harness::postgres::PgCluster;
use harness::{token, Client, Gateway};
use pushbridge::simulator::http2::{Options, Simulator};
use tokio::io::AsyncWriteExt;

/// `[store] lease` of the tests' gateways, seconds: short, so a killed
/// gateway's claims are taken over within seconds.
const LEASE: u64 = harness::postgres::TEST_LEASE;
/// The sink queue of each gateway's app (`[[apps]] queue`).
const QUEUE: usize = 256;
/// Streams the simulator lets a connection have in flight.
const STREAMS: u32 = 100;
/// What one gateway's HTTP/2 sink holds in memory at most (taken from the
/// outbox, not settled): its app queue, its pool's queue, the streams in
/// flight on its one connection.
const HELD: usize = QUEUE + pushbridge::sink::pool::POOL_QUEUE + STREAMS as usize;

/// A gateway's config: the http2 app against `sim`, the store on `pg`.
fn config(dir: &Path, creds: &Creds, sim: &Simulator, pg: &PgCluster) -> String {
    let text = http2_config(
        dir,
        &creds.token_app(&sim.addr().to_string()),
        &format!("queue = {QUEUE}\n"),
    );
    let path_line = format!("path = {:?}\n", dir.join("pushbridge.db").display().to_string());
    assert!(text.contains(&path_line));
    text.replace(&path_line, &format!("url = {:?}\nlease = {LEASE}\n", pg.url()))
}

/// Two gateways, A and B, on one database, sending to one simulator.
/// Fields drop in order: the gateways stop before their dirs go.
struct Two {
    a: Gateway,
    b: Gateway,
    sim: Simulator,
    _creds: Creds,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Start [`Two`] on `pg` with `lease` seconds; the simulator answers at
/// once, or with `delay` on each of [`STREAMS`] streams per connection (a
/// distant APNS).
async fn two_gateways(pg: &PgCluster, lease: u64, delay: Option<Duration>) -> Two {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let creds = Creds::new(dir_a.path());
    let options = match delay {
        None => creds.options(false),
        Some(d) => Options {
            max_concurrent_streams: STREAMS,
            response_delay: Some(d),
            ..creds.options(false)
        },
    };
    let sim = creds.simulator("127.0.0.1:0", options).await;
    let config = |dir: &Path| {
        config(dir, &creds, &sim, pg).replace(&format!("lease = {LEASE}\n"), &format!("lease = {lease}\n"))
    };
    let a = Gateway::start(dir_a.path(), &config(dir_a.path()));
    let b = Gateway::start(dir_b.path(), &config(dir_b.path()));
    Two {
        a,
        b,
        sim,
        _creds: creds,
        _dirs: (dir_a, dir_b),
    }
}

/// The alert bodies the simulator accepted, with how often.
fn bodies(sim: &Simulator) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sim.state().recorder.records() {
        let body = r.payload["aps"]["alert"]["body"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *m.entry(body).or_insert(0) += 1;
    }
    m
}

/// Send `MSG bob TO TEXT`; the reply (`OK n`: n pushes queued).
async fn msg(c: &mut Client, to: &str, text: &str) -> String {
    c.cmd(&format!("MSG bob {to} {text}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_share_presence_and_device_removals() {
    let Some(pg) = PgCluster::start() else { return };
    // A lease long enough that a gateway killed a moment ago is surely
    // still alive when the next message reads its presence.
    const PRESENCE_LEASE: u64 = 5;
    let two = two_gateways(&pg, PRESENCE_LEASE, None).await;
    let Two { a, b, sim, .. } = two;
    let (mut ca, mut cb) = (a.client().await, b.client().await);

    // Presence reported to A decides what B does with a message.
    assert_eq!(ca.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    assert_eq!(ca.cmd("PRESENCE alice online").await, "OK");
    assert_eq!(msg(&mut cb, "alice", "while online").await, "OK 0");
    assert_eq!(ca.cmd("PRESENCE alice away").await, "OK");
    assert_eq!(msg(&mut cb, "alice", "while away").await, "OK 1");
    assert_eq!(ca.cmd("PRESENCE alice offline").await, "OK");
    assert_eq!(msg(&mut cb, "alice", "while offline").await, "OK 1");
    assert!(sim.state().recorder.wait_for(2, Duration::from_secs(20)).await);
    // Coming online on A resets the badge B's messages counted.
    assert_eq!(ca.cmd("PRESENCE alice online").await, "OK");
    assert_eq!(ca.cmd("PRESENCE alice away").await, "OK");
    assert_eq!(msg(&mut cb, "alice", "badge again").await, "OK 1");
    assert!(sim.state().recorder.wait_for(3, Duration::from_secs(20)).await);
    let records = sim.state().recorder.records();
    let badge_of = |body: &str| {
        records
            .iter()
            .find(|r| r.payload["aps"]["alert"]["body"] == body)
            .map(|r| r.payload["aps"]["badge"].clone())
    };
    assert_eq!(badge_of("while away"), Some(1.into()));
    assert_eq!(badge_of("while offline"), Some(2.into()));
    assert_eq!(badge_of("badge again"), Some(1.into()), "reset by coming online on A");
    assert!(badge_of("while online").is_none());

    // A token Apple answers 410 for, seen by B's sink: gone for A too.
    let gone = token(2);
    sim.state().reject(&gone, 410, "Unregistered");
    assert_eq!(ca.cmd(&format!("REGISTER carol {gone}")).await, "OK");
    assert_eq!(msg(&mut cb, "carol", "to a dead phone").await, "OK 1");
    pg.wait_for(&format!("SELECT count(*) FROM devices WHERE token = '{gone}'"), "0");
    assert_eq!(msg(&mut ca, "carol", "nobody left").await, "OK 0");
    assert!(b.logs().contains("device removed"), "{}", b.logs());

    // Presence reported by a gateway that died reads as offline.
    assert_eq!(ca.cmd("PRESENCE alice online").await, "OK");
    assert_eq!(msg(&mut cb, "alice", "A still alive").await, "OK 0");
    a.kill();
    let killed = Instant::now();
    // Its last heartbeat is less than a lease old: its report still counts.
    assert_eq!(msg(&mut cb, "alice", "A just killed").await, "OK 0");
    loop {
        let reply = msg(&mut cb, "alice", "A is dead").await;
        if reply == "OK 1" {
            break;
        }
        assert_eq!(reply, "OK 0");
        assert!(
            killed.elapsed() < Duration::from_secs(PRESENCE_LEASE * 5),
            "A's presence outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.stop().success());
}

/// Pipeline `lines` to the line listener at `addr` (200 at a time), as a
/// client behind a load balancer would: when the connection ends, the
/// lines not answered yet go again to `fallback`. The replies, in order
/// (one per line), and how many lines were sent again; `ok` counts the
/// `OK 1`s as they come.
async fn stream(addr: String, fallback: String, lines: Vec<String>, ok: Arc<AtomicUsize>) -> (Vec<String>, usize) {
    let mut c = Client::connect(&addr).await;
    let (mut replies, mut resent, mut moved) = (Vec::with_capacity(lines.len()), 0, false);
    while replies.len() < lines.len() {
        let chunk = &lines[replies.len()..lines.len().min(replies.len() + 200)];
        let mut buf = String::new();
        for l in chunk {
            buf.push_str(l);
            buf.push('\n');
        }
        let mut broken = c.writer.write_all(buf.as_bytes()).await.is_err();
        let mut answered = 0;
        while !broken && answered < chunk.len() {
            match tokio::time::timeout(Duration::from_secs(30), c.reader.next_line()).await {
                Ok(Ok(Some(reply))) => {
                    if reply == "OK 1" {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    replies.push(reply);
                    answered += 1;
                }
                _ => broken = true,
            }
        }
        if broken {
            assert!(!moved, "the fallback gateway went away too");
            moved = true;
            resent = chunk.len() - answered;
            c = Client::connect(&fallback).await;
        }
    }
    (replies, resent)
}

/// Wait (up to 120 s) until the simulator accepted every message of
/// `accepted` (alert bodies).
async fn wait_delivered(sim: &Simulator, accepted: &[String], survivor: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = bodies(sim);
        let missing: Vec<&String> = accepted.iter().filter(|m| !seen.contains_key(*m)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted messages never delivered (e.g. {:?}):\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            survivor.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_loses_nothing_and_the_survivor_sends_its_claims() {
    const USERS: usize = 100;
    const EACH: usize = 5000;
    let Some(pg) = PgCluster::start() else { return };
    // A distant APNS (20 ms per answer): notifications are in flight, and
    // queued behind the sink, when A is killed.
    let two = two_gateways(&pg, LEASE, Some(Duration::from_millis(20))).await;
    let Two { a, b, sim, .. } = two;
    let mut ca = a.client().await;
    let registers: Vec<String> = (0..USERS)
        .map(|u| format!("REGISTER u{u} {}", token(1000 + u as u64)))
        .collect();
    ca.pipeline(&registers, "OK").await;

    let lines = |gw: &str| -> Vec<String> { (0..EACH).map(|i| format!("MSG bob u{} {gw}{i}", i % USERS)).collect() };
    let (ok_a, ok_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let to_a = tokio::spawn(stream(a.addr.clone(), b.addr.clone(), lines("a"), ok_a.clone()));
    let to_b = tokio::spawn(stream(b.addr.clone(), a.addr.clone(), lines("b"), ok_b.clone()));
    let deadline = Instant::now() + Duration::from_secs(120);
    while ok_a.load(Ordering::Relaxed) < EACH * 3 / 10 {
        assert!(Instant::now() < deadline, "A accepted too little:\n{}", a.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took_before = b.logs().matches("took over outbox entries").count();
    a.kill();
    let killed = Instant::now();
    let at_kill = ok_a.load(Ordering::Relaxed);
    // B takes A's claims over only once A's heartbeat is a lease old: at
    // the earliest two thirds of a lease after the kill (A heartbeats every
    // third of a lease).
    while b.logs().matches("took over outbox entries").count() == took_before {
        assert!(
            killed.elapsed() < Duration::from_secs(LEASE * 10),
            "B took nothing over:\n{}",
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took_after = killed.elapsed();
    assert!(
        took_after >= Duration::from_secs(LEASE) * 2 / 3,
        "B took over {took_after:?} after the kill, before A's lease ({LEASE} s)"
    );
    let ((replies_a, resent), (replies_b, _)) = (to_a.await.unwrap(), to_b.await.unwrap());
    assert!(at_kill < EACH, "A was killed while messages streamed");
    let mut accepted = Vec::with_capacity(2 * EACH);
    for (gw, replies) in [("a", &replies_a), ("b", &replies_b)] {
        assert_eq!(replies.len(), EACH);
        for (i, r) in replies.iter().enumerate() {
            assert_eq!(r, "OK 1", "reply to {gw}{i}");
            accepted.push(format!("{gw}{i}"));
        }
    }

    // Every OK is delivered: B's own, and A's after B took them over.
    wait_delivered(&sim, &accepted, &b).await;
    // Nothing is left: what A committed without answering went too.
    pg.wait_for("SELECT count(*) FROM outbox", "0");

    let seen = bodies(&sim);
    let records: usize = seen.values().sum();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let repeated: HashSet<&String> = seen.iter().filter(|(_, n)| **n > 1).map(|(b, _)| b).collect();
    println!(
        "multi_gateway: {} accepted (A {at_kill} before the kill, then B; {resent} sent again), {records} pushes, {duplicates} duplicates",
        accepted.len(),
    );
    // Only what was in flight at the kill may repeat: what A held in
    // memory (its sink queue, the HTTP/2 sink's pool queue, the streams in
    // flight, outcomes not committed yet: at most 200 ms of answers at
    // STREAMS per 20 ms = 1,000), and the lines A committed but could not
    // answer, sent again to B.
    let bound = HELD + 1000 + resent;
    assert!(duplicates <= bound, "{duplicates} duplicates > {bound}");
    assert!(
        repeated.iter().all(|b| b.starts_with('a')),
        "only entries A held at the kill repeat: {repeated:?}"
    );
    assert!(b.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_hands_its_claims_over_at_once() {
    let Some(pg) = PgCluster::start() else { return };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let creds = Creds::new(dir_a.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    // A long lease: only the release can hand A's rows over in time.
    let long = |text: String| text.replace(&format!("lease = {LEASE}\n"), "lease = 300\n");
    let b = Gateway::start(dir_b.path(), &long(config(dir_b.path(), &creds, &sim, &pg)));
    // A's APNS is unreachable: what it accepts stays in the outbox.
    let nowhere = format!("127.0.0.1:{}", harness::free_port());
    let text_a = config(dir_a.path(), &creds, &sim, &pg).replace(&sim.addr().to_string(), &nowhere);
    let a = Gateway::start(dir_a.path(), &long(text_a));
    let mut ca = a.client().await;
    assert_eq!(ca.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    for i in 0..20 {
        assert_eq!(msg(&mut ca, "alice", &format!("held {i}")).await, "OK 1");
    }
    pg.wait_for("SELECT count(*) FROM outbox WHERE claimed_by IS NOT NULL", "20");
    assert_eq!(sim.state().recorder.count(), 0, "A holds them");
    drop(ca);
    let (status, logs) = a.stop_with_logs();
    assert!(status.success(), "{logs}");
    assert!(logs.contains("outbox entries released"), "{logs}");
    let stopped = Instant::now();
    assert!(
        sim.state().recorder.wait_for(20, Duration::from_secs(20)).await,
        "B did not send A's released entries:\n{}",
        b.logs()
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "long before A's lease (300 s)"
    );
    let seen = bodies(&sim);
    assert!((0..20).all(|i| seen.get(&format!("held {i}")) == Some(&1)), "{seen:?}");
    pg.wait_for("SELECT count(*) FROM outbox", "0");
    // A's row stays (until the clean-up of long-dead gateways), dead.
    let live = "SELECT count(*) FROM gateways WHERE heartbeat >= clock_timestamp() - interval '300 seconds'";
    assert_eq!(pg.psql(live), "1", "A counts as dead at once");
    assert_eq!(pg.psql("SELECT count(*) FROM gateways"), "2");
    assert!(b.stop().success());
}

/// SIGSTOP or SIGCONT the gateway's process.
fn signal(gw: &Gateway, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_gateway_loses_its_claims_and_resumes_without_losing_any() {
    const N: usize = 2000;
    let Some(pg) = PgCluster::start() else { return };
    // STREAMS streams answered after 100 ms: about 1,000 pushes/s, so A
    // still holds most of what it accepted when it stalls.
    let two = two_gateways(&pg, LEASE, Some(Duration::from_millis(100))).await;
    let Two { a, b, sim, .. } = two;
    let mut ca = a.client().await;
    let registers: Vec<String> = (0..10).map(|u| format!("REGISTER u{u} {}", token(100 + u))).collect();
    ca.pipeline(&registers, "OK").await;
    let before: Vec<String> = (0..N).map(|i| format!("MSG bob u{} s{i}", i % 10)).collect();
    ca.pipeline(&before, "OK 1").await;

    // A stalls (its heartbeat stops) longer than its lease: B takes over
    // what A had not delivered yet.
    signal(&a, "-STOP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.logs().contains("took over outbox entries") {
        assert!(Instant::now() < deadline, "B took nothing over:\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&a, "-CONT");
    // A goes on: it heartbeats again, and what it accepts now is its own.
    let after: Vec<String> = (0..100).map(|i| format!("MSG bob u{} r{i}", i % 10)).collect();
    ca.pipeline(&after, "OK 1").await;

    let accepted: Vec<String> = (0..N)
        .map(|i| format!("s{i}"))
        .chain((0..100).map(|i| format!("r{i}")))
        .collect();
    wait_delivered(&sim, &accepted, &b).await;
    pg.wait_for("SELECT count(*) FROM outbox", "0");
    let seen = bodies(&sim);
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "multi_gateway stall: {} pushes for {} messages, {duplicates} duplicates",
        seen.values().sum::<usize>(),
        accepted.len()
    );
    // What A held in memory when it stalled may go twice (its sinks send
    // it when it resumes, B sent it too); nothing else.
    assert!(duplicates <= HELD, "{duplicates} duplicates");
    assert!(
        (0..100).all(|i| seen.get(&format!("r{i}")) == Some(&1)),
        "what A accepted after it resumed goes once"
    );
    assert!(a.stop().success());
    assert!(b.stop().success());
}
