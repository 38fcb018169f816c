//! SIGHUP reloads against the real binary: a provider-key rotation under
//! load (the simulator accepts both keys, then refuses the old one), an
//! invalid file refused with `check`'s message, a policy change and a
//! change that needs a restart.

mod harness;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::apns::{http2_config, Creds, KEY_ID, TEAM_ID};
use harness::{config_text, outbox_len, token, wait_outbox_empty, Client, Gateway};
use pushbridge::simulator::http2::Options;
use pushbridge::sink::http2::request::outbox_id_of;

/// The key id of the key rotated to.
const NEW_KEY_ID: &str = "NEWKEY6789";
const USERS: u64 = 20;
const MESSAGES: usize = 2000;

fn sighup(gw: &Gateway) {
    let pid = gw.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
}

/// Wait until the gateway logged a line containing every one of `needles`;
/// returns that line.
fn wait_log(gw: &Gateway, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = gw.logs();
        if let Some(line) = logs.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no log line with {needles:?}:\n{logs}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `count` messages round-robin to the users, pipelined.
async fn send_messages(c: &mut Client, from: usize, count: usize) {
    let lines: Vec<String> = (from..from + count)
        .map(|i| format!("MSG bob user{} message {i}", i as u64 % USERS))
        .collect();
    c.pipeline(&lines, "OK 1").await;
}

/// Every one of the [`MESSAGES`] outbox entries accepted exactly once,
/// [`MESSAGES`] / [`USERS`] per device.
fn assert_each_delivered_once(recs: &[pushbridge::simulator::Record], logs: &str) {
    let mut per_entry: HashMap<i64, usize> = HashMap::new();
    for r in recs {
        *per_entry.entry(outbox_id_of(&r.apns_id).unwrap()).or_default() += 1;
    }
    assert_eq!(per_entry.len(), MESSAGES, "every message delivered:\n{logs}");
    let twice: Vec<_> = per_entry.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let mut per_device: HashMap<&str, usize> = HashMap::new();
    for r in recs {
        *per_device.entry(r.device_token.as_str()).or_default() += 1;
    }
    assert_eq!(per_device.len(), USERS as usize);
    assert!(
        per_device.values().all(|n| *n == MESSAGES / USERS as usize),
        "{per_device:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_key_rotated_by_sighup_under_load_delivers_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let new_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let new_p8 = dir.path().join("AuthKey_NEWKEY6789.p8");
    std::fs::write(&new_p8, new_key.serialize_pem()).unwrap();
    let public = |pem: &str| jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).unwrap();

    // Apple accepts the team's old and new key during a rotation; answers
    // take a little while, so the reload lands among streams in flight.
    let sim = creds
        .simulator(
            "127.0.0.1:0",
            Options {
                team_id: Some(TEAM_ID.to_owned()),
                response_delay: Some(Duration::from_millis(2)),
                ..Options::default()
            },
        )
        .await;
    let state = sim.state().clone();
    state.accept_provider_key(KEY_ID, public(&creds.p8_public_pem));
    state.accept_provider_key(NEW_KEY_ID, public(&new_key.public_key_pem()));

    let old_app = creds.token_app(&sim.addr().to_string());
    let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &old_app, ""));
    let mut c = gw.client().await;
    for u in 0..USERS {
        assert_eq!(c.cmd(&format!("REGISTER user{u} {}", token(u + 1))).await, "OK");
    }
    send_messages(&mut c, 0, MESSAGES / 2).await;

    // Rotate: the new .p8 and key id in the file, then SIGHUP, while the
    // second half streams in.
    let new_app = old_app
        .replace(&creds.p8_file.display().to_string(), &new_p8.display().to_string())
        .replace(KEY_ID, NEW_KEY_ID);
    assert_ne!(new_app, old_app);
    std::fs::write(&gw.config, http2_config(dir.path(), &new_app, "")).unwrap();
    sighup(&gw);
    let mut c2 = gw.client().await;
    let second_half = tokio::spawn(async move {
        send_messages(&mut c2, MESSAGES / 2, MESSAGES / 2).await;
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    while state.key_uses(NEW_KEY_ID) == 0 {
        assert!(Instant::now() < deadline, "new key never used:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The old key is revoked: anything still signed with it is refused.
    state.refuse_provider_key(KEY_ID);
    let old_uses = state.key_uses(KEY_ID);
    second_half.await.unwrap();
    wait_outbox_empty(dir.path(), &gw).await;

    let applied = wait_log(&gw, &["configuration reloaded", "credentials of com.example.chat"]);
    assert!(!applied.contains("restart"), "{applied}");
    let (status, logs) = gw.stop_with_logs();
    assert!(status.success(), "{logs}");
    assert!(!logs.contains("needs a restart"), "{logs}");

    assert_each_delivered_once(&state.recorder.records(), &logs);
    assert_eq!(outbox_len(dir.path()), 0);

    // Every delivery was authenticated with one of the keys; the old key
    // verified nothing after its revocation, so whatever it had not
    // carried by then carried a token from the new key.
    assert!(old_uses > 0, "the old key was in use before the reload");
    assert!(old_uses < MESSAGES as u64, "the reload came in the middle");
    assert_eq!(state.key_uses(KEY_ID), old_uses);
    assert!(
        state.key_uses(NEW_KEY_ID) >= MESSAGES as u64 - old_uses,
        "{} deliveries not signed with the old key, {} with the new one",
        MESSAGES as u64 - old_uses,
        state.key_uses(NEW_KEY_ID)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_with_checks_message_and_the_gateway_keeps_delivering() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", "");
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    assert_eq!(c.cmd("MSG bob alice before").await, "OK 1");
    gw.wait_pushes(1);

    let broken = text.replace("[gateway]\n", "[gateway]\ncolour = \"blue\"\n");
    std::fs::write(&gw.config, &broken).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_pushbridge"))
        .args(["check", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let stderr = String::from_utf8(check.stderr).unwrap();
    let message = stderr.trim().strip_prefix("pushbridge: ").unwrap().to_owned();
    assert!(message.contains("colour"), "{message}");

    sighup(&gw);
    let refused = wait_log(&gw, &["configuration not reloaded"]);
    assert!(refused.contains("ERROR"), "{refused}");
    assert!(
        refused.contains(&message),
        "same message as check:\n{refused}\n{message}"
    );

    // Still running on the old configuration.
    assert_eq!(c.cmd("MSG bob alice after").await, "OK 1");
    let pushes = gw.wait_pushes(2);
    assert_eq!(pushes[1]["payload"]["aps"]["alert"]["body"], "after");
    let (status, logs) = gw.stop_with_logs();
    assert!(status.success(), "{logs}");
    assert!(!logs.contains("configuration reloaded"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_shows_in_the_next_payload_and_a_store_change_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", "");
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    assert_eq!(c.cmd("MSG bob alice hi").await, "OK 1");
    let first = &gw.wait_pushes(1)[0]["payload"]["aps"];
    assert_eq!(first["sound"], "default");
    assert_eq!(first["alert"]["body"], "hi");

    let changed = text
        .replace("synchronous = \"normal\"", "synchronous = \"full\"")
        .replace(
            "[gateway]\n",
            "[policy]\nsound = \"chime\"\nprivacy = true\n\n[gateway]\n",
        );
    std::fs::write(&gw.config, changed).unwrap();
    sighup(&gw);
    let warned = wait_log(&gw, &["needs a restart"]);
    assert!(
        warned.contains("WARN") && warned.contains("store.synchronous"),
        "{warned}"
    );
    let applied = wait_log(&gw, &["configuration reloaded"]);
    assert!(applied.contains("policy"), "{applied}");

    assert_eq!(c.cmd("MSG bob alice secret plans").await, "OK 1");
    let second = &gw.wait_pushes(2)[1]["payload"]["aps"];
    assert_eq!(second["sound"], "chime");
    assert_eq!(second["alert"]["body"], "New message", "privacy now hides the text");
    let (status, logs) = gw.stop_with_logs();
    assert!(status.success(), "{logs}");
    // The store kept its running setting: nothing reopened it.
    assert_eq!(logs.matches("store open").count(), 1, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_client_certificate_replaced_by_sighup_reconnects_and_delivers_everything_once() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds
        .binary_simulator("127.0.0.1:0", pushbridge::simulator::binary::Options::default())
        .await;
    let old_app = creds.binary_app(&sim);
    let gw = Gateway::start(dir.path(), &http2_config(dir.path(), &old_app, ""));
    let mut c = gw.client().await;
    for u in 0..USERS {
        assert_eq!(c.cmd(&format!("REGISTER user{u} {}", token(u + 1))).await, "OK");
    }
    send_messages(&mut c, 0, 500).await;
    assert!(
        sim.state().recorder.wait_for(1, Duration::from_secs(20)).await,
        "{}",
        gw.logs()
    );
    let connections = sim.state().connections.load(Ordering::Acquire);

    // A new certificate (same CA) in a new file.
    let (cert, key) = creds.pki.issue_client("com.example.chat").unwrap();
    let new_pem = dir.path().join("client-2025.pem");
    std::fs::write(&new_pem, format!("{cert}{key}")).unwrap();
    let new_app = old_app.replace(&creds.client_pem.display().to_string(), &new_pem.display().to_string());
    assert_ne!(new_app, old_app);
    std::fs::write(&gw.config, http2_config(dir.path(), &new_app, "")).unwrap();
    sighup(&gw);
    wait_log(&gw, &["configuration reloaded", "credentials of com.example.chat"]);
    send_messages(&mut c, 500, 500).await;
    wait_outbox_empty(dir.path(), &gw).await;
    let (status, logs) = gw.stop_with_logs();
    assert!(status.success(), "{logs}");

    assert!(
        sim.state().connections.load(Ordering::Acquire) > connections,
        "a new connection after the reload:\n{logs}"
    );
    let mut per_entry: HashMap<u32, usize> = HashMap::new();
    for r in sim.state().recorder.records() {
        *per_entry.entry(r.identifier.unwrap()).or_default() += 1;
    }
    assert_eq!(per_entry.len(), 1000, "every message delivered:\n{logs}");
    assert!(per_entry.values().all(|n| *n == 1), "each once");
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    // [log] format = "text" in the file; the flag wins.
    let text = config_text(dir.path(), "", "").replace("[gateway]\n", "[log]\nformat = \"text\"\n\n[gateway]\n");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushbridge"))
        .args(["run", "--log-format", "json", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        seen.push(v["fields"]["message"].as_str().unwrap_or("").to_owned());
        if v["fields"]["message"] == "line adapter listening" {
            assert_eq!(v["level"], "INFO");
            assert!(v["fields"]["listen"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
        }
        let has = |m: &str| seen.iter().any(|s| s == m);
        if has("line adapter listening") && has("pushbridge running") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|m| m == "line adapter listening"), "{seen:?}");
    assert!(seen.iter().any(|m| m == "pushbridge running"), "{seen:?}");
}
