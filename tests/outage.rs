//! Long outages against the real binary: an APNS that answers 503 for
//! longer than any fixed retry count would cover, and a store that cannot
//! record outcomes for a while. Neither may lose an accepted notification
//! or send one twice.

mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::apns::{http2_config, Creds};
use harness::{free_port, outbox_len, token, wait_outbox_empty, Gateway};
use pushbridge::simulator::Record;
use pushbridge::sink::http2::request::outbox_id_of;

/// Outbox id -> how many times the simulator accepted it.
fn by_outbox_id(records: &[Record]) -> HashMap<i64, usize> {
    let mut m = HashMap::new();
    for r in records {
        *m.entry(outbox_id_of(&r.apns_id).expect("apns-id carries the outbox id"))
            .or_insert(0) += 1;
    }
    m
}

async fn register_and_send(gw: &Gateway, n: usize) {
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(7))).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice away").await, "OK");
    let lines: Vec<String> = (0..n).map(|i| format!("MSG bob alice number {i}")).collect();
    c.pipeline(&lines, "OK 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_longer_than_any_retry_count_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    // The storm answers on the endpoint's port.
    let storm = {
        let options = pushbridge::simulator::http2::Options {
            fail_rate: 1.0,
            fail_status: 503,
            ..creds.options(false)
        };
        creds.simulator(&endpoint, options).await
    };
    // A short backoff cap: 15 s of 503 are ~15 tries each, more than the
    // 10 retries a fixed count used to allow.
    let app = format!("{}max_retry_delay = 1\n", creds.token_app(&endpoint));
    let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &app, ""));
    register_and_send(&gw, 100).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let refused = storm
        .state()
        .failures_injected
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused >= 1000, "every notification was refused many times: {refused}");
    assert_eq!(outbox_len(dir.path()), 100, "{}", gw.logs());
    storm.stop().await;

    // Apple recovers: every notification arrives, once.
    let sim = creds.simulator(&endpoint, creds.options(false)).await;
    wait_outbox_empty(dir.path(), &gw).await;
    let got = by_outbox_id(&sim.state().recorder.records());
    assert_eq!(got.len(), 100);
    assert!(got.values().all(|&k| k == 1), "{got:?}");
    let logs = gw.logs();
    assert!(
        !logs.contains("gave up") && !logs.contains("expired undelivered"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_record_outcomes_for_a_while_sends_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let text = http2_config(dir.path(), &creds.token_app(&sim.addr().to_string()), "");
    let gw = Gateway::start(dir.path(), &text);
    register_and_send(&gw, 1).await;
    wait_outbox_empty(dir.path(), &gw).await;

    // From now on the store cannot delete from the outbox (as when the
    // disk is full: the outcomes of delivered notifications cannot be
    // written), while new messages still commit.
    let db = rusqlite::Connection::open(dir.path().join("pushbridge.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER no_delete BEFORE DELETE ON outbox BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;",
    )
    .unwrap();
    let mut c = gw.client().await;
    let lines: Vec<String> = (0..50).map(|i| format!("MSG bob alice during {i}")).collect();
    c.pipeline(&lines, "OK 1").await;
    assert!(
        sim.state().recorder.wait_for(51, Duration::from_secs(20)).await,
        "{}",
        gw.logs()
    );
    // Long enough for many failed tries (the store retries every 100 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(outbox_len(dir.path()), 50, "delivered, but not yet recorded");
    assert!(gw.logs().contains("cannot record outcomes"), "{}", gw.logs());

    // The store can write again: the outcomes are recorded...
    db.execute_batch("DROP TRIGGER no_delete").unwrap();
    wait_outbox_empty(dir.path(), &gw).await;
    assert!(gw.stop().success());
    // ...so a restart sends nothing again.
    let gw = Gateway::start(dir.path(), &text);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = by_outbox_id(&sim.state().recorder.records());
    assert_eq!(got.len(), 51);
    assert!(got.values().all(|&k| k == 1), "sent twice: {got:?}");
    assert!(gw.stop().success());
}
