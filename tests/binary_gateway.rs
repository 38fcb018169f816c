//! The legacy binary protocol end to end over real TLS with client
//! certificates: line adapter → gateway (the real binary) → binary sink →
//! binary simulator (in this test process), and the feedback service.

mod harness;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use harness::apns::{http2_config, Creds};
use harness::{token, wait_outbox_empty, Gateway};
use pushbridge::simulator::binary::Options;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_2_and_1_end_to_end_with_client_certificates() {
    for (command, extra) in [(2u8, ""), (1, "binary_command = 1\n")] {
        let dir = tempfile::tempdir().unwrap();
        let creds = Creds::new(dir.path());
        let sim = creds.binary_simulator("127.0.0.1:0", Options::default()).await;
        let app = format!("{}{extra}", creds.binary_app(&sim));
        let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &app, ""));
        let mut c = gw.client().await;
        let alice = token(0xa11ce);
        assert_eq!(c.cmd(&format!("REGISTER alice {alice}")).await, "OK");
        assert_eq!(c.cmd("MSG bob alice dinner at 8?").await, "OK 1");
        assert_eq!(c.cmd("MSG bob alice or 9").await, "OK 1");
        assert!(
            sim.state().recorder.wait_for(2, Duration::from_secs(20)).await,
            "{}",
            gw.logs()
        );
        let r = sim.state().recorder.records();
        assert!(r.iter().all(|r| r.command == Some(command) && r.device_token == alice));
        assert_eq!(r[0].payload["aps"]["alert"]["title"], "bob");
        assert_eq!(r[0].payload["aps"]["alert"]["body"], "dinner at 8?");
        assert_eq!(r[1].payload["aps"]["badge"], 2);
        assert_ne!(r[0].identifier, r[1].identifier);
        if command == 2 {
            assert_eq!(r[0].priority, Some(10));
            assert!(r[0].expiration.unwrap() > 1_700_000_000);
        }
        wait_outbox_empty(dir.path(), &gw).await;
        assert!(gw.stop().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_token_mid_stream_removes_the_device_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.binary_simulator("127.0.0.1:0", Options::default()).await;
    let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &creds.binary_app(&sim), ""));
    let mut c = gw.client().await;
    let users = 100u64;
    let bad = 37u64;
    sim.state().reject(&token(0x5000 + bad), 8);
    let regs: Vec<String> = (0..users)
        .map(|u| format!("REGISTER u{u} {}", token(0x5000 + u)))
        .collect();
    c.pipeline(&regs, "OK").await;
    // 10,000 notifications; the bad device's first one is number 37.
    let msgs: Vec<String> = (0..10_000).map(|i| format!("MSG bob u{} n{i}", i % users)).collect();
    // Until the bad device is removed its messages are accepted too.
    for chunk in msgs.chunks(500) {
        let mut buf = String::new();
        for l in chunk {
            buf.push_str(l);
            buf.push('\n');
        }
        c.send_raw(buf.as_bytes()).await;
        for _ in chunk {
            let reply = c.line().await.unwrap();
            assert!(reply == "OK 1" || reply == "OK 0", "{reply}");
        }
    }
    wait_outbox_empty(dir.path(), &gw).await;
    let records = sim.state().recorder.records();
    let bodies: HashSet<String> = records
        .iter()
        .map(|r| r.payload["aps"]["alert"]["body"].as_str().unwrap().to_owned())
        .collect();
    // Every message for a good device arrived; none for the bad one.
    for i in 0..10_000u64 {
        let good = i % users != bad;
        assert_eq!(bodies.contains(&format!("n{i}")), good, "message n{i}");
    }
    assert!(sim.state().errors_sent.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        c.cmd(&format!("MSG bob u{bad} anyone?")).await,
        "OK 0",
        "device removed"
    );
    assert_eq!(c.cmd("MSG bob u1 still here").await, "OK 1");
    assert!(gw.logs().contains("token is invalid"), "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_every_1000_during_20000_delivers_all_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds
        .binary_simulator("127.0.0.1:0", Options { drop_every: Some(1000) })
        .await;
    let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &creds.binary_app(&sim), ""));
    let mut c = gw.client().await;
    let users = 200u64;
    let regs: Vec<String> = (0..users)
        .map(|u| format!("REGISTER u{u} {}", token(0x7000 + u)))
        .collect();
    c.pipeline(&regs, "OK").await;
    let msgs: Vec<String> = (0..20_000).map(|i| format!("MSG bob u{} m{i}", i % users)).collect();
    c.pipeline(&msgs, "OK 1").await;
    wait_outbox_empty(dir.path(), &gw).await;
    let records = sim.state().recorder.records();
    let ids: HashSet<u32> = records.iter().map(|r| r.identifier.unwrap()).collect();
    assert_eq!(ids.len(), 20_000, "distinct identifiers delivered");
    let bodies: HashSet<&str> = records
        .iter()
        .map(|r| r.payload["aps"]["alert"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), 20_000);
    let drops = sim.state().drops.load(Ordering::Relaxed);
    assert!(drops >= 19, "drops: {drops}");
    eprintln!(
        "{} records for 20000 notifications over {drops} dropped connections",
        records.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_removes_gone_devices_but_keeps_re_registered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.binary_simulator("127.0.0.1:0", Options::default()).await;
    let app = format!("{}feedback_interval = 1\n", creds.binary_app(&sim));
    let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &app, ""));
    let mut c = gw.client().await;
    let (gone, back) = (token(0x90), token(0x91));
    assert_eq!(c.cmd(&format!("REGISTER gone {gone}")).await, "OK");
    assert_eq!(c.cmd(&format!("REGISTER back {back}")).await, "OK");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    // `gone` uninstalled the app after registering; `back` was listed an
    // hour ago and registered again since.
    assert!(sim.state().add_feedback(&gone, now + 1));
    assert!(sim.state().add_feedback(&back, now - 3600));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if c.cmd("MSG bob gone hi").await == "OK 0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never removed:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.cmd("MSG bob back hi").await, "OK 1");
    // It keeps polling every feedback_interval (1 s here).
    let reads = sim.state().feedback_reads.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sim.state().feedback_reads.load(Ordering::Relaxed) <= reads {
        assert!(std::time::Instant::now() < deadline, "no further feedback poll");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.logs().contains("feedback service"), "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_polled_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.binary_simulator("127.0.0.1:0", Options::default()).await;
    // An hour between polls: only the poll at start can find it.
    let app = format!("{}feedback_interval = 3600\n", creds.binary_app(&sim));
    let text = http2_config(dir.path(), &app, "");
    let gone = token(0x92);
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER gone {gone}")).await, "OK");
    assert!(gw.stop().success());
    let reads = sim.state().feedback_reads.load(Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    assert!(sim.state().add_feedback(&gone, now + 1));
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.cmd("MSG bob gone hi").await != "OK 0" {
        assert!(
            std::time::Instant::now() < deadline,
            "not removed at start:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sim.state().feedback_reads.load(Ordering::Relaxed),
        reads + 1,
        "one poll, at start"
    );
    assert!(gw.stop().success());
}
