//! The Matrix adapter against a real Synapse homeserver (PyPI
//! `matrix-synapse` in `.venv`, see `tests/matrix/synapse.rs`): alice's
//! HTTP pushers point at pushbridge's push gateway, bob writes to her, and
//! the HTTP/2 APNS simulator receives the pushes. Then APNS says her token
//! is gone (Synapse deletes the pusher on pushbridge's `rejected`), and a
//! `kill -9` after a notify was answered loses nothing.

mod harness;
#[path = "matrix/synapse.rs"]
mod synapse;

use std::time::{Duration, Instant};

use base64::Engine as _;
use harness::apns::{http2_config, Creds};
use harness::{free_port, token, Gateway};
use pushbridge::simulator::http2::Simulator;
use serde_json::{json, Value};
use synapse::Synapse;

const APP_ID: &str = "com.example.chat.ios";

/// The pushkey of a hex token: base64 of its bytes, as an iOS client
/// uploads it.
fn pushkey(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// pushbridge with an HTTP/2 app pointed at `sim` and a Matrix adapter on
/// `port`.
fn start_gateway(dir: &std::path::Path, creds: &Creds, sim: std::net::SocketAddr, port: u16) -> Gateway {
    let text = format!(
        "{}\n[[adapters.matrix]]\nlisten = \"127.0.0.1:{port}\"\noutcome_timeout = 2\napps = {{ \"{APP_ID}\" = {{ topic = \"{}\" }} }}\n",
        http2_config(dir, &creds.token_app(&sim.to_string()), "[admin]\nlisten = \"127.0.0.1:0\"\n"),
        harness::TOPIC,
    );
    let gw = Gateway::start_with_log(dir, &text, "info,pushbridge_matrix=debug");
    wait_for(
        "the matrix adapter",
        || gw.logs().contains("matrix adapter listening"),
        || gw.logs(),
    );
    gw
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The simulator's records for `token`, waiting until there are `n`.
async fn pushes_for(sim: &Simulator, token: &str, n: usize, within: Duration, logs: impl Fn() -> String) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got: Vec<Value> = sim
            .state()
            .recorder
            .records()
            .into_iter()
            .filter(|r| r.device_token == token)
            .map(|r| r.payload)
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} pushes for {}… within {within:?}:\n{}",
            got.len(),
            &token[..8],
            logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Synapse with alice and bob in a named two-member room.
struct Room {
    hs: Synapse,
    alice: String,
    bob: String,
    id: String,
    sent: std::cell::Cell<u32>,
}

impl Room {
    async fn start(python: &std::path::Path, dir: &std::path::Path) -> Room {
        let hs = Synapse::start(python, dir);
        let deadline = Instant::now() + Duration::from_secs(60);
        while hs.call("GET", "/_matrix/client/versions", None, None).await.0 != 200 {
            assert!(Instant::now() < deadline, "synapse not ready:\n{}", hs.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let alice = hs.register("alice").await;
        let bob = hs.register("bob").await;
        let room = hs
            .ok(
                "POST",
                "/_matrix/client/v3/createRoom",
                &alice,
                json!({"name": "Probe room", "preset": "private_chat", "invite": ["@bob:localhost"]}),
            )
            .await;
        let id = room["room_id"].as_str().expect("room id").to_owned();
        hs.ok("POST", &format!("/_matrix/client/v3/join/{id}"), &bob, json!({}))
            .await;
        Room {
            hs,
            alice,
            bob,
            id,
            sent: std::cell::Cell::new(0),
        }
    }

    /// alice adds an HTTP pusher for `token` (hex) pointing at `port`.
    async fn pusher(&self, token: &str, port: u16, format: Option<&str>) {
        let mut data = json!({"url": format!("http://127.0.0.1:{port}/_matrix/push/v1/notify")});
        if let Some(f) = format {
            data["format"] = json!(f);
        }
        let body = json!({"kind": "http", "app_id": APP_ID, "pushkey": pushkey(token), "app_display_name": "Chat",
            "device_display_name": "phone", "lang": "en", "data": data});
        self.hs
            .ok("POST", "/_matrix/client/v3/pushers/set", &self.alice, body)
            .await;
    }

    /// alice removes the pusher for `token`.
    async fn remove_pusher(&self, token: &str) {
        let body = json!({"kind": null, "app_id": APP_ID, "pushkey": pushkey(token)});
        self.hs
            .ok("POST", "/_matrix/client/v3/pushers/set", &self.alice, body)
            .await;
    }

    /// alice's pushers' pushkeys.
    async fn pushkeys(&self) -> Vec<String> {
        let (status, v) = self
            .hs
            .call("GET", "/_matrix/client/v3/pushers", Some(&self.alice), None)
            .await;
        assert_eq!(status, 200, "{v}");
        v["pushers"]
            .as_array()
            .expect("pushers")
            .iter()
            .filter_map(|p| p["pushkey"].as_str().map(str::to_owned))
            .collect()
    }

    /// bob writes `text` in the room.
    async fn bob_says(&self, text: &str) {
        self.sent.set(self.sent.get() + 1);
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/t{}",
            self.id,
            self.sent.get()
        );
        self.hs
            .ok("PUT", &path, &self.bob, json!({"msgtype": "m.text", "body": text}))
            .await;
    }
}

/// The adapter's events are exported like other inbound adapters', and
/// `/readyz` is 200 with it running.
async fn assert_exported(gw: &Gateway) {
    let admin = gw.admin_url();
    harness::admin::wait_status(&format!("{admin}/readyz"), 200, Duration::from_secs(10), || gw.logs()).await;
    let (_, scrape) = harness::admin::get(&format!("{admin}/metrics")).await;
    let events = harness::admin::sample(
        &scrape,
        "pushbridge_adapter_events_total{adapter=\"matrix\",kind=\"push\"}",
    );
    assert!(events.is_some_and(|n| n >= 1.0), "{scrape}");
}

/// pushbridge rejects alice's pushkey and Synapse deletes her pusher.
async fn pusher_goes(room: &Room, gw: &Gateway) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !room.pushkeys().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pusher is still there:\n{}\n--- synapse ---\n{}",
            gw.logs(),
            room.hs.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.logs().contains("pushkey rejected: APNS refused the token"),
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_pushes_through_pushbridge() {
    let python = match synapse::python() {
        Ok(p) => p,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true and {why}"),
        Err(why) => {
            eprintln!("SKIPPED (not counted as passing): {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let sim = creds.simulator("127.0.0.1:0", creds.options(false)).await;
    let sim_addr = sim.addr();
    let port = free_port();
    let gw = start_gateway(dir.path(), &creds, sim_addr, port);
    let hs_dir = dir.path().join("synapse");
    std::fs::create_dir_all(&hs_dir).unwrap();
    let room = Room::start(&python, &hs_dir).await;
    let logs = || format!("{}\n--- synapse ---\n{}", gw.logs(), room.hs.log());

    // 1. The default format: one push with title, body, badge, room id.
    let (alice_token, ids_token, phone_token) = (token(0xa11ce), token(0x1d5), token(0xc0ffee));
    room.pusher(&alice_token, port, None).await;
    let sent = tokio::time::Instant::now();
    room.bob_says("hello alice").await;
    let p = pushes_for(&sim, &alice_token, 1, Duration::from_secs(2), logs).await;
    let took = sent.elapsed();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0]["aps"]["alert"]["title"], "bob in Probe room", "{}", p[0]);
    assert_eq!(p[0]["aps"]["alert"]["body"], "hello alice");
    assert_eq!(p[0]["aps"]["badge"], 1);
    assert_eq!(p[0]["room_id"], room.id.as_str());
    assert_eq!(p[0]["aps"]["thread-id"], room.id.as_str());
    assert!(p[0]["event_id"].as_str().is_some_and(|e| e.starts_with('$')));
    eprintln!("bob's message reached the simulator {took:?} after his send");
    assert_exported(&gw).await;

    // 2. An event_id_only pusher: ids, no text.
    room.pusher(&ids_token, port, Some("event_id_only")).await;
    room.bob_says("second, secret text").await;
    let p = pushes_for(&sim, &ids_token, 1, Duration::from_secs(5), logs).await;
    assert!(!p[0].to_string().contains("secret"), "{}", p[0]);
    assert_eq!(p[0]["aps"]["mutable-content"], 1);
    assert_eq!(p[0]["room_id"], room.id.as_str());
    assert!(p[0]["event_id"].as_str().is_some());
    pushes_for(&sim, &alice_token, 2, Duration::from_secs(5), logs).await;
    room.remove_pusher(&ids_token).await;

    // 3. APNS says alice's token is gone: the next notify's answer rejects
    // her pushkey, and Synapse deletes the pusher.
    sim.state().reject(&alice_token, 410, "Unregistered");
    room.bob_says("third").await;
    pusher_goes(&room, &gw).await;

    // 4. A notify answered while APNS is unreachable, then kill -9: the
    // push is in the outbox and arrives after the restart.
    sim.stop().await;
    room.pusher(&phone_token, port, None).await;
    let answered = gw.logs().matches("notify answered").count();
    room.bob_says("fourth").await;
    wait_for(
        "the notify to be answered",
        || gw.logs().matches("notify answered").count() > answered,
        logs,
    );
    gw.kill();
    let sim = creds.simulator(&sim_addr.to_string(), creds.options(false)).await;
    let gw = start_gateway(dir.path(), &creds, sim_addr, port);
    let p = pushes_for(&sim, &phone_token, 1, Duration::from_secs(20), || gw.logs()).await;
    assert_eq!(p[0]["aps"]["alert"]["body"], "fourth");
    drop(gw);
}
