//! The HTTP/2 sink against the APNS simulator, in-process, over real TLS
//! on loopback: delivery, both auth methods, and the outcome for every
//! kind of answer. Faults (lost connections, GOAWAY, silence, storms, an
//! untrusted server) are in `http2_sink_faults.rs`.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::apns::Creds;
use harness::sink::{always_503, later, note, run, run_counted, sink_for};
use harness::{token, TOPIC};
use pushbridge::config::Config;
use pushbridge::outcome::Outcome;
use pushbridge::simulator::http2::Options;

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
async fn expired_provider_token_mints_a_new_jwt_then_holds_the_notification() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    sim.state().reject(&token(1), 403, "ExpiredProviderToken");
    let sink = sink_for(
        dir.path(),
        &creds.token_app(&sim.addr().to_string()),
        "max_retries = 2\n",
    );
    // Expires in 4 s: while APNS calls even a fresh token expired (a clock
    // problem), the notification is held - not given up after
    // max_retries - until its own expiration.
    let expiration = later() - 3600 + 4;
    let (r, counters) = run_counted(sink, vec![note(1, &token(1), expiration)], 1).await;
    match &r[0].outcome {
        Outcome::Expired { reason } => assert!(reason.starts_with("expired "), "not given up on retries: {reason}"),
        other => panic!("{other:?}"),
    }
    // First token, then one new token for the first ExpiredProviderToken
    // answer; later answers mint none (a clock problem, not an old token).
    assert_eq!(sim.state().jwts_seen(), 2);
    let requests = sim.state().requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!((3..=6).contains(&requests), "held with a growing back-off: {requests}");
    assert_eq!(
        counters.credential_refusals.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_provider_token_is_probed_one_request_at_a_time_with_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    // The simulator knows another provider key: every token is refused.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let options = Options {
        jwt_key: Some(Arc::new(
            jsonwebtoken::DecodingKey::from_ec_pem(other.public_key_pem().as_bytes()).unwrap(),
        )),
        ..creds.options(false)
    };
    let sim = creds.simulator("127.0.0.1:0", options).await;
    let sink = sink_for(dir.path(), &creds.token_app(&sim.addr().to_string()), "");
    let detached = sink.spawn_detached().unwrap();
    let exp = later();
    for i in 1..=100 {
        detached.input.send(note(i, &token(i as u64), exp)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Not the backlog sent again and again: one probe, then one after
    // each back-off step (1 s, 2 s, ...).
    let requests = sim.state().requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!((2..=6).contains(&requests), "{requests} requests in 5 s");
    assert_eq!(sim.state().recorder.count(), 0);
    assert_eq!(
        detached
            .counters
            .credential_refusals
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one refusal: logged once"
    );
    detached.task.abort();
}
