//! The HTTP/2 sink against the APNS simulator, in-process, over real TLS
//! on loopback: outcomes for every kind of answer.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::apns::Creds;
use harness::{token, TOPIC};
use pushbridge::config::Config;
use pushbridge::outcome::{Completion, Notification, Outcome};
use pushbridge::simulator::http2::Options;
use pushbridge::sink::{AppConfig, Detached};
use pushbridge_api::{DeviceToken, Environment};

fn note(id: i64, tok: &str, expiration: u64) -> Notification {
    let payload = format!(r#"{{"aps":{{"alert":{{"title":"bob","body":"msg {id}"}},"badge":{id}}}}}"#);
    let mut n = Notification::new(
        id,
        TOPIC,
        DeviceToken::parse(tok).unwrap(),
        Environment::Production,
        &payload,
    );
    n.expiration = expiration;
    n.collapse_id = Some("bob".into());
    n
}

/// A notification's outcome as the sink settled it.
#[derive(Debug)]
struct Settled {
    id: i64,
    outcome: Outcome,
}

fn settled(c: Completion) -> Settled {
    match c {
        Completion::Settled { id, outcome, .. } => Settled { id, outcome },
        other => panic!("unexpected {other:?}"),
    }
}

fn later() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

fn sink_for(dir: &std::path::Path, app_keys: &str, extra: &str) -> AppConfig {
    let text = harness::apns::http2_config(dir, app_keys, extra);
    let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
    config.apps[0].clone()
}

/// Run `sink` over `notes`; collect `n` reports (or time out).
async fn run(sink: AppConfig, notes: Vec<Notification>, n: usize) -> Vec<Settled> {
    let Detached {
        input: tx,
        completions: mut rrx,
        task,
        ..
    } = sink.spawn_detached().unwrap();
    for x in notes {
        tx.send(x).await.unwrap();
    }
    drop(tx);
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), rrx.recv()).await {
            Ok(Some(c)) => out.push(settled(c)),
            Ok(None) => break,
            Err(_) => panic!("timed out with {} of {n} reports", out.len()),
        }
    }
    // The sink ends once everything it took is reported.
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    out.sort_by_key(|r| r.id);
    out
}

/// [`run`], also returning the app's counters.
async fn run_counted(
    sink: AppConfig,
    notes: Vec<Notification>,
    n: usize,
) -> (Vec<Settled>, Arc<pushbridge::outcome::AppCounters>) {
    let Detached {
        input: tx,
        completions: mut rrx,
        counters,
        task,
    } = sink.spawn_detached().unwrap();
    for x in notes {
        tx.send(x).await.unwrap();
    }
    drop(tx);
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), rrx.recv()).await {
            Ok(Some(c)) => out.push(settled(c)),
            Ok(None) => break,
            Err(_) => panic!("timed out with {} of {n} outcomes", out.len()),
        }
    }
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    (out, counters)
}

#[tokio::test]
async fn token_auth_delivers_with_apples_headers_and_one_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let sink = sink_for(dir.path(), &creds.token_app(&sim.addr().to_string()), "");
    let exp = later();
    let notes: Vec<_> = (1..=300).map(|i| note(i, &token(i as u64), exp)).collect();
    let reports = run(sink, notes, 300).await;
    assert!(
        reports.iter().all(|r| r.outcome == Outcome::Delivered),
        "{:?}",
        reports[0]
    );
    let records = sim.state().recorder.records();
    assert_eq!(records.len(), 300);
    let mut ids: Vec<i64> = records
        .iter()
        .map(|r| pushbridge::sink::http2::request::outbox_id_of(&r.apns_id).unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=300).collect::<Vec<_>>());
    let r = records.iter().find(|r| r.device_token == token(7)).unwrap();
    assert_eq!(r.topic, TOPIC);
    assert_eq!(r.push_type.as_deref(), Some("alert"));
    assert_eq!(r.priority, Some(10));
    assert_eq!(r.expiration, Some(exp));
    assert_eq!(r.collapse_id.as_deref(), Some("bob"));
    assert_eq!(r.auth, "token");
    assert_eq!(r.payload["aps"]["alert"]["body"], "msg 7");
    assert_eq!(sim.state().jwts_seen(), 1);
    assert_eq!(sim.state().connections.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn certificate_auth_delivers_and_no_credentials_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(true)).await;
    let sink = sink_for(dir.path(), &creds.cert_app(&sim.addr().to_string()), "");
    let reports = run(sink, vec![note(1, &token(1), later())], 1).await;
    assert_eq!(reports[0].outcome, Outcome::Delivered);
    assert_eq!(sim.state().recorder.records()[0].auth, "certificate");
    assert_eq!(sim.state().jwts_seen(), 0);
}

#[tokio::test]
async fn certificate_auth_from_separate_pem_files_and_from_pkcs12() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds
        .simulator(
            "127.0.0.1:0",
            Options {
                client_certs: true,
                ..Options::default()
            },
        )
        .await;
    let (cert, key) = creds.pki.issue_client(TOPIC).unwrap();
    let (cert_file, key_file) = (dir.path().join("apns-cert.pem"), dir.path().join("apns-key.pem"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let identity = pushbridge::tls::identity_from_pem(&cert, &key).unwrap();
    let p12 = dir.path().join("apns.p12");
    std::fs::write(&p12, pushbridge::tls::to_pkcs12(&identity, "hunter2").unwrap()).unwrap();
    let endpoint = sim.addr().to_string();
    let ca = creds.ca_file.display().to_string();
    let separate = format!(
        "protocol = \"http2\"\nendpoint = \"{endpoint}\"\nca_file = {ca:?}\ncert_file = {:?}\nprivate_key_file = {:?}\n",
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let pkcs12 = format!(
        "protocol = \"http2\"\nendpoint = \"{endpoint}\"\nca_file = {ca:?}\npkcs12_file = {:?}\npkcs12_password = \"hunter2\"\n",
        p12.display().to_string()
    );
    for (i, keys) in [separate, pkcs12].iter().enumerate() {
        let sink = sink_for(dir.path(), keys, "");
        let r = run(sink, vec![note(i as i64 + 1, &token(1), later())], 1).await;
        assert_eq!(r[0].outcome, Outcome::Delivered, "{keys}");
    }
    assert!(sim.state().recorder.records().iter().all(|r| r.auth == "certificate"));
    assert_eq!(sim.state().recorder.count(), 2);
    // A wrong password is a config error naming the file.
    let text = harness::apns::http2_config(
        dir.path(),
        &format!(
            "protocol = \"http2\"\npkcs12_file = {:?}\npkcs12_password = \"nope\"\n",
            p12.display().to_string()
        ),
        "",
    );
    let err = Config::parse(&text, std::path::Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("apns.p12") && err.contains("pkcs12_password"), "{err}");
}

#[tokio::test]
async fn unregistered_and_bad_tokens_remove_the_device_other_4xx_drop() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    sim.state().reject(&token(1), 410, "Unregistered");
    sim.state().reject(&token(2), 400, "BadDeviceToken");
    sim.state().reject(&token(3), 400, "DeviceTokenNotForTopic");
    sim.state().reject(&token(4), 400, "TopicDisallowed");
    sim.state().reject(&token(5), 413, "PayloadTooLarge");
    let sink = sink_for(dir.path(), &creds.token_app(&sim.addr().to_string()), "");
    let exp = later();
    let notes = (1..=6).map(|i| note(i, &token(i as u64), exp)).collect();
    let r = run(sink, notes, 6).await;
    match &r[0].outcome {
        Outcome::Rejected {
            reason,
            remove_device: true,
            since_ms: Some(ts),
        } => {
            assert_eq!(reason, "410 Unregistered");
            assert!(*ts > 1_600_000_000_000, "timestamp in milliseconds: {ts}");
        }
        other => panic!("{other:?}"),
    }
    for (i, want) in [(1, "400 BadDeviceToken"), (2, "400 DeviceTokenNotForTopic")] {
        assert!(
            matches!(&r[i].outcome, Outcome::Rejected { reason, remove_device: true, .. } if reason == want),
            "{:?}",
            r[i]
        );
    }
    for (i, want) in [(3, "400 TopicDisallowed"), (4, "413 PayloadTooLarge")] {
        assert!(
            matches!(&r[i].outcome, Outcome::Rejected { reason, remove_device: false, .. } if reason == want),
            "{:?}",
            r[i]
        );
    }
    assert_eq!(r[5].outcome, Outcome::Delivered);
}

/// A simulator answering every valid request 503 (`certs`: accepting our
/// client certificates as well as tokens).
async fn always_503(creds: &Creds, certs: bool) -> pushbridge::simulator::http2::Simulator {
    let options = Options {
        fail_rate: 1.0,
        fail_status: 503,
        ..creds.options(certs)
    };
    creds.simulator("127.0.0.1:0", options).await
}

#[tokio::test]
async fn transient_failures_are_retried_until_max_retries() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = always_503(&creds, false).await;
    let sink = sink_for(
        dir.path(),
        &creds.token_app(&sim.addr().to_string()),
        "max_retries = 2\n",
    );
    let r = run(sink, vec![note(1, &token(1), later())], 1).await;
    match &r[0].outcome {
        Outcome::Expired { reason } => assert!(
            reason.contains("gave up after 2 retries: 503 ServiceUnavailable"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.state().requests.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test]
async fn expired_provider_token_mints_a_new_jwt_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    sim.state().reject(&token(1), 403, "ExpiredProviderToken");
    let sink = sink_for(
        dir.path(),
        &creds.token_app(&sim.addr().to_string()),
        "max_retries = 2\n",
    );
    let r = run(sink, vec![note(1, &token(1), later())], 1).await;
    assert!(matches!(r[0].outcome, Outcome::Expired { .. }), "{:?}", r[0]);
    // First token, then one new token for the first ExpiredProviderToken
    // answer; the second answer, a moment later, mints none (a clock
    // problem, not an old token).
    assert_eq!(sim.state().jwts_seen(), 2);
    assert_eq!(sim.state().requests.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[tokio::test]
async fn streams_stay_within_the_servers_max_concurrent_streams() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds
        .simulator(
            "127.0.0.1:0",
            Options {
                max_concurrent_streams: 4,
                response_delay: Some(Duration::from_millis(20)),
                ..creds.options(false)
            },
        )
        .await;
    let sink = sink_for(dir.path(), &creds.token_app(&sim.addr().to_string()), "");
    let exp = later();
    let notes = (1..=200).map(|i| note(i, &token(i as u64), exp)).collect();
    let (r, stats) = run_counted(sink, notes, 200).await;
    assert!(r.iter().all(|r| r.outcome == Outcome::Delivered));
    let max = sim.state().max_active.load(std::sync::atomic::Ordering::Relaxed);
    assert!((2..=4).contains(&max), "several streams at once, never over 4: {max}");
    // Had the sink opened more streams than allowed, the server would have
    // refused them and the sink would have sent them again.
    assert_eq!(stats.retried.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn expired_notifications_are_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let sink = sink_for(dir.path(), &creds.token_app(&sim.addr().to_string()), "");
    let r = run(sink, vec![note(1, &token(1), later()), note(2, &token(2), 1_000)], 2).await;
    assert_eq!(r[0].outcome, Outcome::Delivered);
    assert!(matches!(r[1].outcome, Outcome::Expired { .. }), "{:?}", r[1]);
    assert_eq!(sim.state().recorder.count(), 1);
}

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
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sink = sink_for(dir.path(), &creds.token_app(&addr.to_string()), "");
    let Detached {
        input: tx,
        completions: mut rrx,
        ..
    } = sink.spawn_detached().unwrap();
    tx.send(note(1, &token(1), later())).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(1500), rrx.recv())
        .await
        .is_err());
    let sim = creds.simulator(&addr.to_string(), creds.options(false)).await;
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
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
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

#[tokio::test]
async fn a_request_without_credentials_gets_missing_provider_token() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    // The simulator wants tokens and asks for no client certificate, so the
    // certificate-auth app arrives with neither.
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let sink = sink_for(dir.path(), &creds.cert_app(&sim.addr().to_string()), "");
    let r = run(sink, vec![note(1, &token(1), later())], 1).await;
    match &r[0].outcome {
        Outcome::Rejected {
            reason,
            remove_device: false,
            ..
        } => assert!(reason.contains("403 MissingProviderToken"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.state().recorder.count(), 0);
}

/// One request with provider token `jwt` on `send`; Apple's status and reason.
async fn post_with(send: &mut h2::client::SendRequest<bytes::Bytes>, jwt: &str, tok: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost/3/device/{tok}"))
        .header("authorization", format!("bearer {jwt}"))
        .header("apns-topic", TOPIC)
        .header("apns-push-type", "alert")
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (resp, mut body) = ready.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(br#"{"aps":{"alert":"hi"}}"#), true)
        .unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut stream = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = stream.data().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    *send = ready;
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// Apple: a provider token may be replaced no more than once every 20
/// minutes on a connection. The simulator enforces it (so the sink's
/// one-JWT-for-everything tests are checked by the server too).
#[tokio::test]
async fn the_simulator_refuses_provider_token_updates_within_20_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&creds.p8_file).unwrap()).unwrap();
    let now = later() - 3600;
    let jwt = |iat: u64| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(harness::apns::KEY_ID.to_owned());
        let claims = serde_json::json!({"iss": harness::apns::TEAM_ID, "iat": iat});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let (a, b, c) = (jwt(now - 1250), jwt(now - 100), jwt(now - 10));
    let connect = || async {
        let tls = pushbridge::tls::client_config(Some(&creds.ca_file), None, &[b"h2"]).unwrap();
        let target = pushbridge::sink::net::Target::parse(&format!("localhost:{}", sim.addr().port())).unwrap();
        let stream = pushbridge::sink::net::connect_tls(&target, &tokio_rustls::TlsConnector::from(Arc::new(tls)))
            .await
            .unwrap();
        let (send, conn) = h2::client::handshake(stream).await.unwrap();
        tokio::spawn(conn);
        send
    };
    let tok = token(1);
    let mut one = connect().await;
    assert_eq!(post_with(&mut one, &a, &tok).await.0, 200);
    let (status, reason) = post_with(&mut one, &b, &tok).await;
    assert_eq!(
        (status, reason.contains("TooManyProviderTokenUpdates")),
        (429, true),
        "{reason}"
    );
    assert_eq!(
        post_with(&mut one, &a, &tok).await.0,
        200,
        "the current token still works"
    );
    assert_eq!(
        post_with(&mut one, &c, &tok).await.0,
        200,
        "20 minutes younger: allowed"
    );
    let mut two = connect().await;
    assert_eq!(
        post_with(&mut two, &b, &tok).await.0,
        200,
        "a new connection starts afresh"
    );
    assert_eq!(sim.state().recorder.count(), 4);
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
