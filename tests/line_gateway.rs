//! End to end over the line protocol: the real binary, real TCP, the `log`
//! sink, and each test against both stores: a real SQLite file and a real
//! PostgreSQL cluster (`sqlite::…` and `postgres::…`).

mod harness;

use std::collections::HashSet;
use std::time::Duration;

use harness::postgres::Backend;
use harness::{token, Client, Gateway, TOPIC};
use serde_json::Value;

/// Each async test body runs against SQLite and PostgreSQL; a missing
/// PostgreSQL fails under `CI=true` and is skipped (saying so) elsewhere.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::Sqlite).await
                }
            )*
            #[test]
            fn devices_cli_manages_the_registry() {
                super::devices_cli_manages_the_registry(&super::Backend::Sqlite)
            }
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = super::Backend::postgres() {
                        super::$name(&b).await
                    }
                }
            )*
            #[test]
            fn devices_cli_manages_the_registry() {
                if let Some(b) = super::Backend::postgres() {
                    super::devices_cli_manages_the_registry(&b)
                }
            }
        }
    };
}

on_both_backends!(
    badges_presence_unregister_and_restart,
    auth_is_required_when_a_secret_is_set,
    every_error_code_and_the_connection_survives,
    a_stalled_client_does_not_block_others,
    two_hundred_clients_fifty_messages_each,
    a_tiny_sink_queue_spills_to_the_outbox_and_loses_nothing,
    undelivered_notifications_survive_a_kill_and_are_sent_on_restart,
    mixed_commands_in_one_pipelined_burst_apply_in_order,
);

fn alert(p: &Value) -> (&str, &str, u64) {
    let aps = &p["payload"]["aps"];
    (
        aps["alert"]["title"].as_str().unwrap(),
        aps["alert"]["body"].as_str().unwrap(),
        aps["badge"].as_u64().unwrap(),
    )
}

async fn badges_presence_unregister_and_restart(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let text = b.config(dir.path(), "", "");
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    let (alice, carol) = (token(0xa11ce), token(0xca201));

    assert_eq!(c.cmd(&format!("REGISTER alice {alice}")).await, "OK");
    assert_eq!(c.cmd(&format!("REGISTER carol {carol} {TOPIC} sandbox")).await, "OK");
    assert_eq!(c.cmd("PRESENCE alice offline").await, "OK");
    for text in ["are you coming?", "hello 😀 there", "third"] {
        assert_eq!(c.cmd(&format!("MSG bob alice {text}")).await, "OK 1");
    }
    let p = gw.wait_pushes(3);
    assert_eq!(alert(&p[0]), ("bob", "are you coming?", 1));
    assert_eq!(alert(&p[1]), ("bob", "hello 😀 there", 2));
    assert_eq!(alert(&p[2]), ("bob", "third", 3));
    for push in &p {
        assert_eq!(push["device_token"], alice.as_str());
        assert_eq!(push["topic"], TOPIC);
        assert_eq!(push["environment"], "production");
        assert_eq!(push["payload"]["aps"]["sound"], "default");
        assert_eq!(push["payload"]["aps"]["thread-id"], "bob");
    }

    // Online: nothing, and the badge resets.
    assert_eq!(c.cmd("PRESENCE alice online").await, "OK");
    assert_eq!(c.cmd("MSG bob alice you there?").await, "OK 0");
    gw.assert_pushes_stay(3);
    assert_eq!(c.cmd("PRESENCE alice offline").await, "OK");
    assert_eq!(c.cmd("MSG bob alice now?").await, "OK 1");
    assert_eq!(alert(&gw.wait_pushes(4)[3]), ("bob", "now?", 1));
    // Away gets pushes too, counting on.
    assert_eq!(c.cmd("PRESENCE alice away").await, "OK");
    assert_eq!(c.cmd("MSG dave alice hi").await, "OK 1");
    assert_eq!(alert(&gw.wait_pushes(5)[4]), ("dave", "hi", 2));

    // Unregister: no device, no push.
    assert_eq!(c.cmd(&format!("UNREGISTER alice {alice}")).await, "OK");
    assert_eq!(c.cmd("MSG bob alice gone?").await, "OK 0");
    // A user never seen is offline and has no device.
    assert_eq!(c.cmd("MSG bob nobody hello").await, "OK 0");
    gw.assert_pushes_stay(5);
    assert_eq!(c.cmd("QUIT").await, "OK");
    assert_eq!(c.line().await, None);

    // Graceful stop exits 0; the registry survives a restart on the same file.
    let status = gw.stop();
    assert!(status.success(), "exit status {status:?}");
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    assert_eq!(c.cmd("MSG bob carol after restart").await, "OK 1");
    assert_eq!(c.cmd("MSG bob alice after restart").await, "OK 0");
    let p = gw.wait_pushes(6);
    assert_eq!(p[5]["device_token"], carol.as_str());
    assert_eq!(p[5]["environment"], "sandbox");
    assert_eq!(alert(&p[5]), ("bob", "after restart", 1));
    assert!(gw.stop().success());
}

async fn auth_is_required_when_a_secret_is_set(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &b.config(dir.path(), "secret = \"s3cret pass\"", ""));
    assert!(!gw.logs().contains("s3cret"), "secret leaked into logs");

    let mut c = gw.client().await;
    assert!(c.cmd("PRESENCE alice away").await.starts_with("ERR auth "));
    assert!(c.cmd("PING").await.starts_with("ERR auth "));
    assert!(c.cmd("AUTH wrong").await.starts_with("ERR auth "));
    assert_eq!(c.line().await, None, "a failed AUTH closes the connection");

    let mut c = gw.client().await;
    assert_eq!(c.cmd("AUTH s3cret pass").await, "OK");
    assert_eq!(c.cmd("PING").await, "PONG");
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    assert_eq!(c.cmd("MSG bob alice hi").await, "OK 1");
    gw.wait_pushes(1);
    assert!(!gw.logs().contains("s3cret"), "secret leaked into logs");
    assert!(!gw.logs().contains(&token(1)), "full device token in logs");
}

async fn every_error_code_and_the_connection_survives(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &b.config(dir.path(), "", ""));
    let mut c = gw.client().await;
    let t = token(7);
    let cases = [
        ("".to_owned(), "ERR syntax"),
        ("PING now".to_owned(), "ERR syntax"),
        ("REGISTER alice".to_owned(), "ERR syntax"),
        (format!("REGISTER alice {t} {TOPIC} staging"), "ERR syntax"),
        ("PRESENCE alice busy".to_owned(), "ERR syntax"),
        ("MSG bob alice".to_owned(), "ERR syntax"),
        ("HELLO world".to_owned(), "ERR unknown-command"),
        ("REGISTER alice 12345".to_owned(), "ERR bad-token"),
        (format!("REGISTER alice {}zz", &t[..62]), "ERR bad-token"),
        (format!("REGISTER {} {t}", "u".repeat(257)), "ERR bad-user"),
        (format!("MSG {} alice hi", "u".repeat(300)), "ERR bad-user"),
        (format!("REGISTER alice {t} com.example.other"), "ERR unknown-topic"),
    ];
    for (line, expected) in &cases {
        let reply = c.cmd(line).await;
        assert!(reply.starts_with(expected), "{line:?} → {reply:?}, expected {expected}");
        assert_eq!(c.cmd("PING").await, "PONG", "connection unusable after {line:?}");
    }
    // Invalid UTF-8 is a syntax error, not a disconnect.
    c.send_raw(b"MSG bob alice \xff\xfe\n").await;
    assert!(c.line().await.unwrap().starts_with("ERR syntax"));
    assert_eq!(c.cmd("PING").await, "PONG");
    // CRLF is accepted.
    c.send_raw(b"PING\r\n").await;
    assert_eq!(c.line().await.unwrap(), "PONG");
    // A 9000-byte line: ERR too-long, then the connection closes.
    let mut long = vec![b'M'; 9000];
    long.push(b'\n');
    c.send_raw(&long).await;
    assert!(c.line().await.unwrap().starts_with("ERR too-long"));
    assert_eq!(c.line().await, None);
    // The gateway is fine.
    let mut c = gw.client().await;
    assert_eq!(c.cmd("PING").await, "PONG");
}

async fn a_stalled_client_does_not_block_others(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &b.config(dir.path(), "", ""));
    let mut staller = gw.client().await;
    assert_eq!(staller.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    staller.send_raw(b"MSG bob alice half a li").await;
    // A silent client too.
    let _silent = gw.client().await;

    let mut other = gw.client().await;
    for i in 0..20 {
        assert_eq!(other.cmd(&format!("MSG bob alice other {i}")).await, "OK 1");
    }
    gw.wait_pushes(20);
    staller.send_raw(b"ne\n").await;
    assert_eq!(staller.line().await.unwrap(), "OK 1");
    let p = gw.wait_pushes(21);
    assert_eq!(p[20]["payload"]["aps"]["alert"]["body"], "half a line");
}

async fn two_hundred_clients_fifty_messages_each(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &b.config(dir.path(), "", ""));
    let mut setup = gw.client().await;
    for u in 0..20 {
        assert_eq!(setup.cmd(&format!("REGISTER user{u} {}", token(1000 + u))).await, "OK");
    }
    let mut tasks = Vec::new();
    for c in 0..200 {
        let addr = gw.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await;
            // Pipeline all 50, then read the 50 replies in order.
            let mut script = String::new();
            for m in 0..50 {
                script.push_str(&format!("MSG sender{c} user{} msg-{c}-{m}\n", (c + m) % 20));
            }
            client.send_raw(script.as_bytes()).await;
            for m in 0..50 {
                assert_eq!(client.line().await.as_deref(), Some("OK 1"), "client {c} message {m}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let pushes = gw.wait_pushes(10_000);
    let bodies: HashSet<String> = pushes
        .iter()
        .map(|p| p["payload"]["aps"]["alert"]["body"].as_str().unwrap().to_owned())
        .collect();
    let expected: HashSet<String> = (0..200)
        .flat_map(|c| (0..50).map(move |m| format!("msg-{c}-{m}")))
        .collect();
    assert_eq!(bodies, expected);
    let ids: HashSet<u64> = pushes.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 10_000, "every notification written once");
    // Badges per user count 1..=500 (20 users × 500 messages each).
    for u in 0..20 {
        let t = token(1000 + u);
        let mut badges: Vec<u64> = pushes
            .iter()
            .filter(|p| p["device_token"] == t.as_str())
            .map(|p| p["payload"]["aps"]["badge"].as_u64().unwrap())
            .collect();
        badges.sort_unstable();
        assert_eq!(badges, (1..=500).collect::<Vec<u64>>(), "user{u}");
    }
    gw.assert_pushes_stay(10_000);
}

async fn a_tiny_sink_queue_spills_to_the_outbox_and_loses_nothing(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &b.config(dir.path(), "", "queue = 3"));
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    let mut script = String::new();
    for i in 0..2000 {
        script.push_str(&format!("MSG bob alice n{i}\n"));
    }
    c.send_raw(script.as_bytes()).await;
    for _ in 0..2000 {
        assert_eq!(c.line().await.as_deref(), Some("OK 1"));
    }
    let p = gw.wait_pushes(2000);
    // In order, each once.
    let bodies: Vec<String> = p
        .iter()
        .map(|p| p["payload"]["aps"]["alert"]["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, (0..2000).map(|i| format!("n{i}")).collect::<Vec<_>>());
    gw.assert_pushes_stay(2000);
}

async fn undelivered_notifications_survive_a_kill_and_are_sent_on_restart(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    // The log sink cannot open its output (a directory), so nothing is
    // delivered; every accepted notification waits in the outbox.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    let text = b.config(dir.path(), "", "").replace(
        &format!("output = {:?}", dir.path().join("pushes.jsonl").display().to_string()),
        &format!("output = {:?}", blocked.display().to_string()),
    );
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    for i in 0..300 {
        assert_eq!(c.cmd(&format!("MSG bob alice kept {i}")).await, "OK 1");
    }
    gw.kill();

    // Restart with a working output: all 300 arrive, each once.
    let gw = Gateway::start(dir.path(), &b.config(dir.path(), "", ""));
    let p = gw.wait_pushes(300);
    let bodies: HashSet<String> = p
        .iter()
        .map(|p| p["payload"]["aps"]["alert"]["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies.len(), 300);
    gw.assert_pushes_stay(300);
    // Delivered entries left the outbox: another restart sends nothing again.
    assert!(gw.stop().success());
    let gw = Gateway::start(dir.path(), &b.config(dir.path(), "", ""));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gw.pushes().len(), 300, "re-sent after delivery");
}

/// Registrations, presence and messages of one user written at once land in
/// one store batch: each must see the ones before it (the PostgreSQL store
/// reads a batch's devices and counters up front).
async fn mixed_commands_in_one_pipelined_burst_apply_in_order(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &b.config(dir.path(), "", ""));
    let mut c = gw.client().await;
    let (t1, t2) = (token(0x71), token(0x72));
    let script = [
        (format!("REGISTER alice {t1}"), "OK"),
        ("MSG bob alice one".to_owned(), "OK 1"),
        ("MSG bob alice two".to_owned(), "OK 1"),
        ("PRESENCE alice online".to_owned(), "OK"),
        ("PRESENCE alice offline".to_owned(), "OK"),
        ("MSG bob alice three".to_owned(), "OK 1"),
        (format!("UNREGISTER alice {t1}"), "OK"),
        ("MSG bob alice four".to_owned(), "OK 0"),
        (format!("REGISTER alice {t2}"), "OK"),
        ("MSG bob alice five".to_owned(), "OK 1"),
    ];
    let burst: String = script.iter().map(|(l, _)| format!("{l}\n")).collect();
    c.send_raw(burst.as_bytes()).await;
    for (line, want) in &script {
        assert_eq!(c.line().await.as_deref(), Some(*want), "{line}");
    }
    let p = gw.wait_pushes(4);
    let got: Vec<(&str, u64, &str)> = p
        .iter()
        .map(|p| {
            let (_, body, badge) = alert(p);
            (body, badge, p["device_token"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("one", 1, t1.as_str()),
            ("two", 2, t1.as_str()),
            ("three", 1, t1.as_str()),
            ("five", 2, t2.as_str())
        ]
    );
    gw.assert_pushes_stay(4);
    // The counter the burst left is the one stored ("four" counted nothing).
    assert_eq!(c.cmd("MSG bob alice six").await, "OK 1");
    assert_eq!(alert(&gw.wait_pushes(5)[4]), ("bob", "six", 3));
}

#[test]
fn check_names_bad_keys_and_accepts_the_example() {
    let bin = env!("CARGO_BIN_EXE_pushbridge");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example");
    let out = std::process::Command::new(bin)
        .args(["check", "--config", example])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("com.example.chat") && stdout.contains("adapter: line"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[apps]]\ntopic = \"a\"\nprotocol = \"log\"\n\n[[adapters.line]]\nlisten = \"127.0.0.1:0\"\nbacklog = 5\n",
    )
    .unwrap();
    for cmd in ["check", "run"] {
        let out = std::process::Command::new(bin)
            .args([cmd, "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("backlog") && err.contains("line 7"), "{cmd}: {err}");
    }
    let out = std::process::Command::new(bin)
        .args(["check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}

fn devices_cli_manages_the_registry(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, b.config(dir.path(), "", "")).unwrap();
    let run = |args: &[&str]| {
        let config = config.to_str().unwrap();
        harness::pushbridge(&[&["devices", "--config", config], args].concat())
    };
    let t = token(42);
    assert!(run(&["add", "line:alice", &t]).0);
    assert!(run(&["add", "irc:libera:bob", &token(43), "--environment", "sandbox"]).0);
    let (ok, _, err) = run(&["add", "line:alice", &t, "--topic", "com.nope"]);
    assert!(!ok && err.contains("com.nope"), "{err}");
    let (ok, _, err) = run(&["add", "line:alice", "xyz"]);
    assert!(!ok && err.contains("token"), "{err}");
    let (_, out, _) = run(&["list"]);
    assert!(out.contains(&format!("line:alice\t{t}\t{TOPIC}\tproduction")), "{out}");
    assert!(out.contains("irc:libera:bob") && out.contains("sandbox"), "{out}");
    let (_, out, _) = run(&["list", "--user", "line:alice"]);
    assert_eq!(out.lines().count(), 1);
    assert!(run(&["remove", "line:alice", &t]).0);
    let (ok, _, err) = run(&["remove", "line:alice", &t]);
    assert!(!ok && err.contains("no device"), "{err}");
}
