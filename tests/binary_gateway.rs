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
    assert!(gw.logs().contains("the device is gone"), "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_every_1000_during_20000_delivers_all_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds
        .binary_simulator(
            "127.0.0.1:0",
            Options {
                drop_every: Some(1000),
                ..Options::default()
            },
        )
        .await;
    // Written notifications count as delivered only after this long
    // without an error response (the protocol has no acknowledgement); a
    // busy machine can leave them unread in socket buffers for longer than
    // the harness's 100 ms, and a dropped connection then loses them
    // (500 ms is the default).
    let app = creds
        .binary_app(&sim)
        .replace("binary_confirm_ms = 100", "binary_confirm_ms = 500");
    let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &app, ""));
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
    let tls_records = sim.state().tls_records.load(Ordering::Relaxed);
    eprintln!(
        "{} records for 20000 notifications over {drops} dropped connections in {tls_records} TLS records",
        records.len()
    );
    // Coalesced: many notifications per TLS record, not one each.
    assert!(
        tls_records >= drops,
        "at least one record per connection: {tls_records}"
    );
    assert!(
        tls_records * 10 < records.len() as u64,
        "{tls_records} TLS records for {} notifications",
        records.len()
    );
}

/// Error responses that come late: within `binary_confirm_ms` (the named
/// notification is still in the replay window) and after it (it was
/// already reported delivered). Either way the device is removed and
/// everything written after it, which the simulator read and discarded,
/// arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_error_responses_remove_the_device_and_resend_what_followed() {
    for (delay_ms, confirm_ms, late) in [(150u64, 2000u64, false), (400, 100, true)] {
        let dir = tempfile::tempdir().unwrap();
        let creds = Creds::new(dir.path());
        let options = Options {
            error_delay: Some(Duration::from_millis(delay_ms)),
            ..Options::default()
        };
        let sim = creds.binary_simulator("127.0.0.1:0", options).await;
        let app = creds
            .binary_app(&sim)
            .replace("binary_confirm_ms = 100", &format!("binary_confirm_ms = {confirm_ms}"));
        let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &app, ""));
        let mut c = gw.client().await;
        let users = 50u64;
        let bad = users; // one more user, sent exactly one notification
        sim.state().reject(&token(0x9000 + bad), 8);
        let regs: Vec<String> = (0..=users)
            .map(|u| format!("REGISTER u{u} {}", token(0x9000 + u)))
            .collect();
        c.pipeline(&regs, "OK").await;
        let total = 3000u64;
        let msgs: Vec<String> = (0..total)
            .map(|i| {
                let to = if i == total / 2 { bad } else { i % users };
                format!("MSG bob u{to} n{i}")
            })
            .collect();
        c.pipeline(&msgs, "OK 1").await;
        wait_outbox_empty(dir.path(), &gw).await;
        // The removal and the re-sent ones may still be on their way
        // when the outbox is empty (the late path reported them once).
        assert!(
            sim.state().recorder.wait_for(total - 1, Duration::from_secs(30)).await,
            "delay {delay_ms} ms: {} of {} arrived\n{}",
            sim.state().recorder.count(),
            total - 1,
            gw.logs()
        );
        let discarded = sim.state().discarded.load(Ordering::Relaxed);
        assert!(
            discarded > 0,
            "delay {delay_ms} ms: nothing was written after the bad one"
        );
        let records = sim.state().recorder.records();
        let mut bodies: Vec<&str> = records
            .iter()
            .map(|r| r.payload["aps"]["alert"]["body"].as_str().unwrap())
            .collect();
        bodies.sort_unstable();
        let mut want: Vec<String> = (0..total)
            .filter(|i| *i != total / 2)
            .map(|i| format!("n{i}"))
            .collect();
        want.sort_unstable();
        assert_eq!(bodies, want, "delay {delay_ms} ms: each good one exactly once");
        assert_eq!(sim.state().errors_sent.load(Ordering::Relaxed), 1);
        let mut removed = false;
        for _ in 0..100 {
            if c.cmd(&format!("MSG bob u{bad} anyone?")).await == "OK 0" {
                removed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(removed, "delay {delay_ms} ms: device not removed\n{}", gw.logs());
        let logs = gw.logs();
        assert_eq!(
            logs.contains("error response later than binary_confirm_ms"),
            late,
            "delay {delay_ms} ms\n{logs}"
        );
        eprintln!("delay {delay_ms} ms, confirm {confirm_ms} ms: {discarded} discarded after the bad one, all re-sent");
        assert!(gw.stop().success());
    }
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

/// What the simulator answers a malformed notification, by format: an
/// error response naming it for commands 1 and 2, a silent close for
/// command 0 (it has no identifier to name), as Apple's gateway did.
#[tokio::test]
async fn the_simulator_answers_bad_frames_as_apple_did() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.binary_simulator("127.0.0.1:0", Options::default()).await;
    let identity = pushbridge::tls::load_identity(&creds.client_pem, None).unwrap();
    let tls = pushbridge::tls::client_config(Some(&creds.ca_file), Some(identity), &[]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let target = pushbridge::sink::net::Target::parse(&format!("localhost:{}", sim.addr().port())).unwrap();
    // Command 1, identifier 7, expiry 0, token length 0: missing token (2).
    let bad_1: &[u8] = &[1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0];
    // Command 0 with token length 0.
    let bad_0: &[u8] = &[0, 0, 0];
    let mut answers = Vec::new();
    for frame in [bad_1, bad_0] {
        let mut s = pushbridge::sink::net::connect_tls(&target, &connector).await.unwrap();
        s.write_all(frame).await.unwrap();
        s.flush().await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("the simulator closes the connection");
        answers.push(got);
    }
    assert_eq!(
        answers[0],
        vec![8, 2, 0, 0, 0, 7],
        "error response: status 2 for identifier 7"
    );
    assert!(answers[1].is_empty(), "command 0: closed without a word");
    assert_eq!(sim.state().errors_sent.load(Ordering::Relaxed), 1);
}
