//! End to end over real TLS: line adapter → gateway (the real binary) →
//! HTTP/2 sink → APNS simulator (in this test process).

mod harness;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use harness::apns::{http2_config, Creds};
use harness::{outbox_len, token, wait_outbox_empty, Gateway, TOPIC};
use pushbridge::simulator::http2::Options;
use pushbridge::simulator::Record;
use pushbridge::sink::http2::request::outbox_id_of;

/// Outbox id → how many times the simulator accepted it.
fn by_outbox_id(records: &[Record]) -> HashMap<i64, usize> {
    let mut m = HashMap::new();
    for r in records {
        *m.entry(outbox_id_of(&r.apns_id).expect("apns-id carries the outbox id"))
            .or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_end_to_end_with_headers_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let text = http2_config(
        dir.path(),
        &creds.token_app(&sim.addr().to_string()),
        "[policy]\ncollapse = true\n",
    );
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    let alice = token(0xa11ce);
    assert_eq!(c.cmd(&format!("REGISTER alice {alice}")).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice away").await, "OK");
    assert_eq!(c.cmd("MSG bob alice see you at 8? 🍕").await, "OK 1");
    assert_eq!(c.cmd("MSG bob alice bring the cards").await, "OK 1");
    assert!(
        sim.state().recorder.wait_for(2, Duration::from_secs(20)).await,
        "{}",
        gw.logs()
    );
    let mut r = sim.state().recorder.records();
    r.sort_by_key(|r| r.payload["aps"]["badge"].as_u64());
    assert_eq!(r[0].device_token, alice);
    assert_eq!(r[0].topic, TOPIC);
    assert_eq!(r[0].push_type.as_deref(), Some("alert"));
    assert_eq!(r[0].priority, Some(10));
    // The conversation's digest (ASCII, within Apple's 64 bytes).
    assert_eq!(r[0].collapse_id, Some(pushbridge::policy::collapse_id("bob")));
    assert_eq!(r[0].auth, "token");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = r[0].expiration.unwrap();
    assert!(
        exp > now + 86_000 && exp <= now + 86_400 + 5,
        "apns-expiration = now + policy.ttl: {exp}"
    );
    let aps = &r[0].payload["aps"];
    assert_eq!(aps["alert"]["title"], "bob");
    assert_eq!(aps["alert"]["body"], "see you at 8? 🍕");
    assert_eq!(aps["badge"], 1);
    assert_eq!(aps["sound"], "default");
    assert_eq!(aps["thread-id"], "bob");
    assert_eq!(r[1].payload["aps"]["badge"], 2);
    assert_eq!(sim.state().jwts_seen(), 1);
    assert!(gw.stop().success());
    assert_eq!(outbox_len(dir.path()), 0);
}

/// The sink threads of process `pid` (named `pb-sink-<i>`; their blocking
/// pools' `pb-sink-<i>-blk` left out), each with the nanoseconds it has run
/// on a CPU (Linux: `/proc/<pid>/task/<tid>/{comm,schedstat}`).
#[cfg(target_os = "linux")]
fn sink_threads(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task") {
        let dir = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let name = name.trim().to_owned();
        if !name.starts_with("pb-sink-") || name.ends_with("-blk") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let ran = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("schedstat's first field");
        threads.push((name, ran));
    }
    threads
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_run_on_a_thread_of_their_own_unless_sink_threads_is_0() {
    // (the [gateway] line, sink threads expected): the default; more
    // threads than apps (one app: one thread); none.
    for (threads, want) in [("", 1), ("sink_threads = 4\n", 1), ("sink_threads = 0\n", 0)] {
        let dir = tempfile::tempdir().unwrap();
        let creds = Creds::new(dir.path());
        let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
        let text = http2_config(dir.path(), &creds.token_app(&sim.addr().to_string()), "")
            .replace("[gateway]\n", &format!("[gateway]\n{threads}"));
        let gw = Gateway::start(dir.path(), &text);
        let mut c = gw.client().await;
        let alice = token(0xa11ce);
        assert_eq!(c.cmd(&format!("REGISTER alice {alice}")).await, "OK");
        assert_eq!(c.cmd("PRESENCE alice away").await, "OK");
        assert_eq!(c.cmd("MSG bob alice ping").await, "OK 1");
        let recorder = &sim.state().recorder;
        assert!(
            recorder.wait_for(1, Duration::from_secs(20)).await,
            "{threads:?}: {}",
            gw.logs()
        );
        let before = sink_threads(gw.child.id());
        assert_eq!(before.len(), want, "{threads:?}: {before:?}");
        // The sink's work runs on its thread: 300 more pushes make it run.
        let more: Vec<String> = (0..300).map(|i| format!("MSG bob alice number {i}")).collect();
        c.pipeline(&more, "OK 1").await;
        assert!(
            recorder.wait_for(301, Duration::from_secs(20)).await,
            "{threads:?}: {}",
            gw.logs()
        );
        let after = sink_threads(gw.child.id());
        for ((name, ran_before), (_, ran_after)) in before.iter().zip(&after) {
            assert!(ran_after > ran_before, "{name} did not run while 300 pushes went out");
        }
        assert!(gw.stop().success());
        assert_eq!(outbox_len(dir.path()), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_auth_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    // The simulator takes client certificates from our CA only; no JWT key.
    let sim = creds
        .simulator(
            "127.0.0.1:0",
            Options {
                client_certs: true,
                ..Options::default()
            },
        )
        .await;
    let text = http2_config(dir.path(), &creds.cert_app(&sim.addr().to_string()), "");
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER carol {}", token(0xca201))).await, "OK");
    assert_eq!(c.cmd("MSG dave carol lunch?").await, "OK 1");
    assert!(
        sim.state().recorder.wait_for(1, Duration::from_secs(20)).await,
        "{}",
        gw.logs()
    );
    let r = &sim.state().recorder.records()[0];
    assert_eq!(r.auth, "certificate");
    assert_eq!(r.device_token, token(0xca201));
    assert_eq!(r.payload["aps"]["alert"]["body"], "lunch?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_token_is_removed_and_next_message_gets_ok_0() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let text = http2_config(dir.path(), &creds.token_app(&sim.addr().to_string()), "");
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    let (gone, kept) = (token(0x410), token(0x200));
    sim.state().reject(&gone, 410, "Unregistered");
    assert_eq!(c.cmd(&format!("REGISTER erin {gone}")).await, "OK");
    assert_eq!(c.cmd(&format!("REGISTER frank {kept}")).await, "OK");
    assert_eq!(c.cmd("MSG bob erin hello").await, "OK 1");
    assert_eq!(c.cmd("MSG bob frank hello").await, "OK 1");
    assert!(sim.state().recorder.wait_for(1, Duration::from_secs(20)).await);
    // The removal happens when the 410 is reported; poll for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = c.cmd("MSG bob erin still there?").await;
        if reply == "OK 0" {
            break;
        }
        assert_eq!(reply, "OK 1");
        assert!(
            std::time::Instant::now() < deadline,
            "device never removed:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.cmd("MSG bob frank again").await, "OK 1");
    let out = Command::new(env!("CARGO_BIN_EXE_pushbridge"))
        .args(["devices", "list", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(!listing.contains(&gone), "{listing}");
    assert!(listing.contains(&kept), "{listing}");
    assert!(gw.logs().contains("removing it"), "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_and_503s_during_5000_notifications_lose_nothing_and_one_jwt_serves_all() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds
        .simulator(
            "127.0.0.1:0",
            Options {
                goaway_every: Some(100),
                fail_rate: 0.05,
                fail_status: 503,
                ..creds.options(false)
            },
        )
        .await;
    let text = http2_config(dir.path(), &creds.token_app(&sim.addr().to_string()), "");
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    let users = 50;
    let regs: Vec<String> = (0..users)
        .map(|u| format!("REGISTER u{u} {}", token(0x1000 + u)))
        .collect();
    c.pipeline(&regs, "OK").await;
    let msgs: Vec<String> = (0..5000)
        .map(|i| format!("MSG bob u{} message {i}", i % users))
        .collect();
    c.pipeline(&msgs, "OK 1").await;
    assert!(
        sim.state().recorder.wait_for(5000, Duration::from_secs(60)).await,
        "only {} arrived:\n{}",
        sim.state().recorder.count(),
        gw.logs()
    );
    // Every outbox entry (= every accepted notification) arrived.
    wait_outbox_empty(dir.path(), &gw).await;
    let records = sim.state().recorder.records();
    let counts = by_outbox_id(&records);
    assert_eq!(counts.len(), 5000, "distinct notifications delivered");
    let mut bodies: Vec<String> = records
        .iter()
        .map(|r| r.payload["aps"]["alert"]["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 5000, "every message text arrived");
    // Duplicates only come from streams lost with their connection (sent,
    // then the connection ended before the answer was read: APNS may have
    // taken them). A GOAWAY lets the streams the server took finish; the
    // socket closing under a client still writing can cost the answers in
    // flight. The sink counts those streams; no other duplicates exist.
    let goaways = sim.state().goaways.load(Ordering::Relaxed);
    let conns = sim.state().connections.load(Ordering::Relaxed);
    assert!(
        goaways >= 5 && conns >= goaways,
        "GOAWAYs {goaways}, connections {conns}"
    );
    assert!(sim.state().failures_injected.load(Ordering::Relaxed) >= 100);
    let dups = (records.len() - counts.len()) as u64;
    assert_eq!(sim.state().jwts_seen(), 1, "one provider token for every connection");
    let (status, logs) = gw.stop_with_logs();
    assert!(status.success());
    let lost = Gateway::log_number(&logs, "sink stopped", "lost").expect("sink counters logged at stop");
    assert!(dups <= lost, "{dups} duplicates but only {lost} streams lost");
    eprintln!("{dups} duplicates, {lost} streams lost, {goaways} GOAWAYs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_with_apns_down_then_everything_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    // APNS is down: a port nobody listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = http2_config(dir.path(), &creds.token_app(&addr.to_string()), "");
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER gina {}", token(0x61))).await, "OK");
    let msgs: Vec<String> = (0..1000).map(|i| format!("MSG bob gina note {i}")).collect();
    c.pipeline(&msgs, "OK 1").await;
    gw.kill();
    assert_eq!(outbox_len(dir.path()), 1000, "every OK is in the outbox");

    let sim = creds.simulator(&addr.to_string(), creds.options(false)).await;
    let gw = Gateway::start(dir.path(), &text);
    assert!(
        sim.state().recorder.wait_for(1000, Duration::from_secs(60)).await,
        "{} arrived:\n{}",
        sim.state().recorder.count(),
        gw.logs()
    );
    wait_outbox_empty(dir.path(), &gw).await;
    assert!(gw.stop().success());
    // A third start has nothing left to send.
    let gw = Gateway::start(dir.path(), &text);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gw.stop().success());
    let records = sim.state().recorder.records();
    let counts = by_outbox_id(&records);
    assert_eq!(counts.len(), 1000);
    assert!(counts.values().all(|n| *n == 1), "an entry arrived twice");
    assert_eq!(records.len(), 1000);
    let mut badges: Vec<u64> = records
        .iter()
        .map(|r| r.payload["aps"]["badge"].as_u64().unwrap())
        .collect();
    badges.sort();
    assert_eq!(badges, (1..=1000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_prints_apples_answer() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let gone = token(0x410);
    sim.state().reject(&gone, 410, "Unregistered");
    let path = dir.path().join("push.toml");
    std::fs::write(
        &path,
        http2_config(dir.path(), &creds.token_app(&sim.addr().to_string()), ""),
    )
    .unwrap();
    let push = |tok: &str| {
        let path = path.clone();
        let tok = tok.to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_pushbridge"))
                    .args(["push", "--config"])
                    .arg(&path)
                    .args([
                        "--token",
                        &tok,
                        "--alert",
                        "hello from push",
                        "--badge",
                        "7",
                        "--sound",
                        "ping.aiff",
                    ])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let ok = push(&token(0x200)).await;
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains("status 200"), "{out}");
    let r = &sim.state().recorder.records()[0];
    assert!(out.contains(&r.apns_id), "the apns-id is printed: {out}");
    assert_eq!(r.payload["aps"]["alert"], "hello from push");
    assert_eq!(r.payload["aps"]["badge"], 7);
    assert_eq!(r.payload["aps"]["sound"], "ping.aiff");
    let refused = push(&gone).await;
    let out = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success());
    assert!(
        out.contains("status 410: Unregistered") && out.contains("token invalid since"),
        "{out}"
    );
}

/// `check` and `run` with a broken app: both fail, with the same message.
fn check_and_run(dir: &std::path::Path, app_keys: &str) -> String {
    let text = http2_config(dir, app_keys, "");
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let bin = env!("CARGO_BIN_EXE_pushbridge");
    let check = Command::new(bin)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let run = Command::new(bin)
        .args(["run", "--config"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!run.status.success(), "run must refuse to start");
    let check_err = String::from_utf8_lossy(&check.stderr).to_string();
    let run_err = String::from_utf8_lossy(&run.stderr).to_string();
    assert_eq!(check_err.trim(), run_err.trim().lines().last().unwrap().trim());
    check_err
}

#[test]
fn bad_credentials_are_named_by_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let missing = creds
        .token_app("127.0.0.1:9")
        .replace("AuthKey_KEYID12345.p8", "nope.p8");
    let e = check_and_run(dir.path(), &missing);
    assert!(e.contains("nope.p8") && e.contains("No such file"), "{e}");

    let malformed = dir.path().join("AuthKey_BAD.p8");
    std::fs::write(
        &malformed,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = check_and_run(
        dir.path(),
        &creds
            .token_app("127.0.0.1:9")
            .replace("AuthKey_KEYID12345.p8", "AuthKey_BAD.p8"),
    );
    assert!(e.contains("AuthKey_BAD.p8") && e.contains("P-256"), "{e}");

    let e = check_and_run(
        dir.path(),
        &format!("environment = \"staging\"\n{}", creds.token_app("127.0.0.1:9")),
    );
    assert!(e.contains("staging") && e.contains("line"), "{e}");

    let e = check_and_run(dir.path(), "protocol = \"http2\"\n");
    assert!(e.contains("needs credentials"), "{e}");

    let e = check_and_run(
        dir.path(),
        &creds.token_app("127.0.0.1:9").replace("key_id = \"KEYID12345\"\n", ""),
    );
    assert!(e.contains("key_id"), "{e}");
}
