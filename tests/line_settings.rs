//! Coalescing, mutes and quiet hours end to end over the line protocol:
//! the real binary, real TCP, a real SQLite file, the `log` sink; kill -9
//! inside a coalescing window.

mod harness;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{config_text, token, Gateway};
use serde_json::Value;

fn aps(p: &Value) -> &Value {
    &p["payload"]["aps"]
}

fn title_body(p: &Value) -> (&str, &str) {
    let a = &aps(p)["alert"];
    (a["title"].as_str().unwrap(), a["body"].as_str().unwrap())
}

/// A config with `[policy] coalesce = seconds`.
fn coalescing(dir: &std::path::Path, seconds: u64) -> String {
    format!("{}\n[policy]\ncoalesce = {seconds}\n", config_text(dir, "", ""))
}

/// Quiet hours around now in UTC (`HH:MM-HH:MM`, an hour either side).
fn hours_around_now() -> String {
    let minute = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / 60 % 1440;
    let at = |m: u64| format!("{:02}:{:02}", m / 60, m % 60);
    format!("{}-{}", at((minute + 1440 - 60) % 1440), at((minute + 60) % 1440))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_messages_in_the_window_become_one_push_and_a_later_one_another() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &coalescing(dir.path(), 3));
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    for i in 1..=10 {
        assert_eq!(c.cmd(&format!("MSG bob alice message {i}")).await, "OK 1");
    }
    let p = gw.wait_pushes(1);
    assert_eq!(title_body(&p[0]), ("bob (10)", "message 10"));
    assert_eq!(aps(&p[0])["badge"], 10);
    assert_eq!(aps(&p[0])["thread-id"], "bob");
    gw.assert_pushes_stay(1);
    // After the window: a new one, a new push.
    assert_eq!(c.cmd("MSG bob alice later").await, "OK 1");
    let p = gw.wait_pushes(2);
    assert_eq!(title_body(&p[1]), ("bob", "later"));
    assert_eq!(aps(&p[1])["badge"], 11);
    assert!(gw.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_inside_the_window_still_delivers_the_merged_push_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let text = coalescing(dir.path(), 2);
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    for i in 1..=3 {
        assert_eq!(c.cmd(&format!("MSG bob alice kept {i}")).await, "OK 1");
    }
    assert!(gw.pushes().is_empty(), "the window is still open");
    gw.kill();

    let gw = Gateway::start(dir.path(), &text);
    let p = gw.wait_pushes(1);
    assert_eq!(title_body(&p[0]), ("bob (3)", "kept 3"));
    assert_eq!(aps(&p[0])["badge"], 3);
    gw.assert_pushes_stay(1);
    assert!(gw.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coming_online_inside_the_window_cancels_the_push() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &coalescing(dir.path(), 2));
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    assert_eq!(c.cmd("MSG bob alice one").await, "OK 1");
    assert_eq!(c.cmd("MSG bob alice two").await, "OK 1");
    assert_eq!(c.cmd("PRESENCE alice online").await, "OK");
    std::thread::sleep(Duration::from_secs(3));
    gw.assert_pushes_stay(0);
    // The badge was reset too.
    assert_eq!(c.cmd("PRESENCE alice offline").await, "OK");
    assert_eq!(c.cmd("MSG bob alice three").await, "OK 1");
    let p = gw.wait_pushes(1);
    assert_eq!(title_body(&p[0]), ("bob", "three"));
    assert_eq!(aps(&p[0])["badge"], 1);
    assert!(gw.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_quiet_hours_and_settings_over_the_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", "");
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    assert_eq!(c.cmd("SETTINGS alice").await, "OK quiet=off");
    assert_eq!(c.cmd("MUTE alice bob 2").await, "OK");
    assert_eq!(c.cmd("MUTE alice dave").await, "OK");
    assert_eq!(
        c.cmd("SETTINGS alice").await,
        "OK quiet=off mute=bob:2 mute=dave:forever"
    );
    // Muted: counts toward the badge, no alert.
    assert_eq!(c.cmd("MSG bob alice psst").await, "OK 1");
    assert_eq!(c.cmd("MSG carol alice hello").await, "OK 1");
    let p = gw.wait_pushes(2);
    assert_eq!(p[0]["payload"].to_string(), r#"{"aps":{"badge":1}}"#);
    assert_eq!(title_body(&p[1]), ("carol", "hello"));
    assert_eq!(aps(&p[1])["badge"], 2);
    // Two seconds later bob alerts again.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(c.cmd("MSG bob alice back").await, "OK 1");
    let p = gw.wait_pushes(3);
    assert_eq!(title_body(&p[2]), ("bob", "back"));
    assert_eq!(aps(&p[2])["sound"], "default");

    // Quiet hours: silent pushes.
    let hours = hours_around_now();
    assert_eq!(c.cmd(&format!("QUIET alice {hours} UTC")).await, "OK");
    assert_eq!(c.cmd("MSG carol alice shh").await, "OK 1");
    let p = gw.wait_pushes(4);
    assert_eq!(title_body(&p[3]), ("carol", "shh"));
    assert_eq!(aps(&p[3])["interruption-level"], "passive");
    assert!(aps(&p[3]).get("sound").is_none(), "{}", p[3]);
    assert!(c
        .cmd("QUIET alice 22:00-07:00 Mars/Olympus")
        .await
        .starts_with("ERR bad-zone unknown time zone \"Mars/Olympus\""));
    assert!(c.cmd("QUIET alice 7-22 UTC").await.starts_with("ERR bad-hours "));
    assert!(c.cmd("MUTE alice bob 0").await.starts_with("ERR syntax "));

    // Settings survive a restart.
    assert!(gw.stop().success());
    let gw = Gateway::start(dir.path(), &text);
    let mut c = gw.client().await;
    let want = format!("OK quiet={},UTC mute=dave:forever", hours);
    assert_eq!(c.cmd("SETTINGS alice").await, want);
    assert_eq!(c.cmd("MSG dave alice still muted").await, "OK 1");
    let p = gw.wait_pushes(5);
    assert_eq!(p[4]["payload"].to_string(), r#"{"aps":{"badge":5}}"#);
    assert_eq!(c.cmd("QUIET alice off").await, "OK");
    assert_eq!(c.cmd("UNMUTE alice dave").await, "OK");
    assert_eq!(c.cmd("SETTINGS alice").await, "OK quiet=off");
    assert_eq!(c.cmd("MSG dave alice loud").await, "OK 1");
    let p = gw.wait_pushes(6);
    assert_eq!(title_body(&p[5]), ("dave", "loud"));
    assert_eq!(aps(&p[5])["sound"], "default");
    assert!(gw.stop().success());
}
