//! Unit tests of coalescing, mutes and quiet hours in the store thread,
//! driving a [`Writer`] directly on an injected clock (no thread).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pushbridge_api::settings::QuietHours;
use pushbridge_api::{DeviceToken, Environment, EventError, Reply, UserId};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::command::{Command, MessageJob, SettingChange};
use super::db::Db;
use super::writer::Writer;
use crate::config::{PolicyConfig, Synchronous};
use crate::feed::Feed;
use crate::outcome::{CompletionSender, Counters, Notification};
use crate::policy::Policy;

const APP: &str = "com.example.chat";
/// 2026-01-10 12:00:00 UTC, in Unix ms.
const NOON: i64 = 1_768_046_400_000;

struct Fixture {
    writer: Writer,
    sink: mpsc::Receiver<Notification>,
    now: Arc<AtomicI64>,
    counters: Arc<Counters>,
    path: std::path::PathBuf,
    _completions: CompletionSender,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A writer with `[policy] coalesce = coalesce` over a fresh file, its
    /// clock at [`NOON`], alice with one device.
    fn new(coalesce: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open(&path, Synchronous::Normal).unwrap();
        db.register(&user("alice"), &token(1), APP, Environment::Production, 0)
            .unwrap();
        let counters = Arc::new(Counters::default());
        let (tx, sink) = mpsc::channel(64);
        let mut feed = Feed::new();
        feed.add(APP, Environment::Production, 4096, tx, &counters);
        let (completions, rx) = CompletionSender::new(None);
        let policy = Policy::new(PolicyConfig {
            coalesce,
            ..PolicyConfig::default()
        });
        let now = Arc::new(AtomicI64::new(NOON));
        let clock = now.clone();
        let mut writer = Writer::new(db, feed, policy, counters.clone(), rx, Default::default())
            .with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
        writer.refill_for_test();
        Fixture {
            writer,
            sink,
            now,
            counters,
            path,
            _completions: completions,
            _dir: dir,
        }
    }

    fn advance(&self, d: Duration) {
        self.now.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }

    /// Apply `cmd` in a batch of its own; its answer.
    fn run(&mut self, cmd: impl FnOnce(Option<super::ReplyTx>) -> Command) -> Result<Reply, EventError> {
        let (tx, mut rx) = oneshot::channel();
        self.writer.apply_batch(&mut vec![cmd(Some(tx))], &mut Vec::new());
        rx.try_recv().expect("answered after the commit")
    }

    /// A message from `from` to alice.
    fn message(&mut self, from: &str, text: &str) -> Result<Reply, EventError> {
        let job = MessageJob {
            to: user("alice"),
            from: from.into(),
            subtitle: None,
            text: Some(text.into()),
            thread: None,
            device: None,
            badge: None,
            respect_presence: false,
        };
        self.run(|reply| Command::Enqueue { job, reply })
    }

    fn setting(&mut self, change: SettingChange) -> Result<Reply, EventError> {
        self.run(|reply| Command::Setting {
            user: user("alice"),
            change,
            reply,
        })
    }

    /// An empty batch: what the thread runs when a window ends.
    fn tick(&mut self) {
        self.writer.apply_batch(&mut Vec::new(), &mut Vec::new());
    }

    /// The payloads handed to the sink so far.
    fn pushes(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(n) = self.sink.try_recv() {
            out.push(serde_json::from_str(&n.payload).unwrap());
        }
        out
    }
}

fn user(u: &str) -> UserId {
    UserId::parse(&format!("line:{u}")).unwrap()
}

fn token(i: u64) -> DeviceToken {
    DeviceToken::parse(&format!("{i:064x}")).unwrap()
}

fn title(p: &Value) -> &str {
    p["aps"]["alert"]["title"].as_str().unwrap()
}

fn body(p: &Value) -> &str {
    p["aps"]["alert"]["body"].as_str().unwrap()
}

#[test]
fn ten_messages_in_a_window_become_one_push_and_a_later_one_another() {
    let mut f = Fixture::new(5);
    for i in 1..=10 {
        assert_eq!(f.message("bob", &format!("m{i}")), Ok(Reply::Queued(1)));
        f.advance(Duration::from_millis(400));
    }
    // Another conversation has its own window.
    assert_eq!(f.message("carol", "hi"), Ok(Reply::Queued(1)));
    f.tick();
    assert!(f.pushes().is_empty(), "nothing before the window ends");
    assert_eq!(f.counters.snapshot().accepted, 0);
    // bob's window opened 4 s ago and ends at 5 s.
    f.advance(Duration::from_millis(999));
    f.tick();
    assert!(f.pushes().is_empty());
    f.advance(Duration::from_millis(1));
    f.tick();
    let p = f.pushes();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((title(&p[0]), body(&p[0])), ("bob (10)", "m10"));
    assert_eq!(
        p[0]["aps"]["badge"], 11,
        "the badge when sent counts carol's message too"
    );
    assert_eq!(f.counters.snapshot().accepted, 1);
    // carol's window ends 5 s after her message.
    f.advance(Duration::from_secs(5));
    f.tick();
    let p = f.pushes();
    assert_eq!((title(&p[0]), body(&p[0])), ("carol", "hi"));
    // A message after the window: a new window, a new push.
    assert_eq!(f.message("bob", "again"), Ok(Reply::Queued(1)));
    f.advance(Duration::from_secs(5));
    f.tick();
    let p = f.pushes();
    assert_eq!((title(&p[0]), body(&p[0])), ("bob", "again"));
    assert_eq!(p[0]["aps"]["badge"], 12);
    assert_eq!(
        f.writer.db_for_test().outbox_counts().unwrap(),
        vec![(APP.to_owned(), 3)]
    );
}

#[test]
fn coming_online_cancels_the_window_and_resets_the_badge() {
    let mut f = Fixture::new(5);
    f.message("bob", "one").unwrap();
    f.message("bob", "two").unwrap();
    let reset = f.run(|reply| Command::ResetUnread {
        user: user("alice"),
        reply,
    });
    assert_eq!(reset, Ok(Reply::Done));
    f.advance(Duration::from_secs(10));
    f.tick();
    assert!(f.pushes().is_empty());
    assert!(f.writer.db_for_test().outbox_counts().unwrap().is_empty());
    assert_eq!(f.writer.db_for_test().unread(&user("alice")).unwrap(), 0);
}

#[test]
fn a_waiting_window_survives_a_reopen() {
    let mut f = Fixture::new(5);
    f.message("bob", "one").unwrap();
    f.message("bob", "two").unwrap();
    // The store file, reopened as after a crash: the window is still there.
    let db = Db::open(&f.path, Synchronous::Normal).unwrap();
    let due = db.next_due().unwrap();
    assert_eq!(due, Some(NOON + 5000));
    let topic: Arc<str> = APP.into();
    assert!(
        db.load_outbox(&topic, 0, 10).unwrap().is_empty(),
        "the feed never loads it"
    );
    drop(db);
    f.advance(Duration::from_secs(60));
    f.tick();
    let p = f.pushes();
    assert_eq!((title(&p[0]), body(&p[0])), ("bob (2)", "two"));
}

#[test]
fn a_conversation_muted_for_two_seconds_alerts_again_afterwards() {
    let mut f = Fixture::new(0);
    let mute = SettingChange::Mute {
        conversation: "bob".into(),
        duration: Some(Duration::from_secs(2)),
    };
    assert_eq!(f.setting(mute), Ok(Reply::Done));
    f.message("bob", "psst").unwrap();
    f.message("carol", "hello").unwrap();
    let p = f.pushes();
    assert_eq!(p[0].to_string(), r#"{"aps":{"badge":1}}"#, "badge-only");
    assert_eq!((title(&p[1]), p[1]["aps"]["badge"].as_u64()), ("carol", Some(2)));
    f.advance(Duration::from_millis(1999));
    f.message("bob", "still muted").unwrap();
    assert_eq!(f.pushes()[0].to_string(), r#"{"aps":{"badge":3}}"#);
    f.advance(Duration::from_millis(1));
    f.message("bob", "back").unwrap();
    let p = f.pushes();
    assert_eq!((title(&p[0]), body(&p[0])), ("bob", "back"));
    // For good, then unmuted.
    let forever = SettingChange::Mute {
        conversation: "bob".into(),
        duration: None,
    };
    f.setting(forever).unwrap();
    f.advance(Duration::from_secs(86_400 * 365));
    f.message("bob", "x").unwrap();
    assert!(f.pushes()[0]["aps"].get("alert").is_none());
    f.setting(SettingChange::Unmute {
        conversation: "bob".into(),
    })
    .unwrap();
    f.message("bob", "y").unwrap();
    assert_eq!(body(&f.pushes()[0]), "y");
}

#[test]
fn quiet_hours_make_pushes_silent_and_settings_are_shown() {
    let mut f = Fixture::new(0);
    // NOON is 13:00 in Berlin.
    let q = QuietHours::parse("12:30-14:00", "Europe/Berlin").unwrap();
    f.setting(SettingChange::Quiet(Some(q.clone()))).unwrap();
    f.message("bob", "lunch").unwrap();
    let p = f.pushes();
    assert_eq!(p[0]["aps"]["interruption-level"], "passive");
    assert!(p[0]["aps"].get("sound").is_none());
    assert_eq!(body(&p[0]), "lunch");
    f.advance(Duration::from_secs(3600));
    f.message("bob", "after").unwrap();
    let p = f.pushes();
    assert_eq!(p[0]["aps"]["sound"], "default");
    assert!(p[0]["aps"].get("interruption-level").is_none());

    let mute = SettingChange::Mute {
        conversation: "carol".into(),
        duration: Some(Duration::from_secs(90)),
    };
    f.setting(mute).unwrap();
    let shown = f.run(|reply| Command::ShowSettings {
        user: user("alice"),
        reply,
    });
    let Ok(Reply::Settings(s)) = shown else {
        panic!("{shown:?}")
    };
    assert_eq!(s.quiet, Some(q));
    assert_eq!(s.muted.len(), 1);
    assert_eq!(s.muted[0].remaining, Some(Duration::from_secs(90)));
    f.setting(SettingChange::Quiet(None)).unwrap();
    f.advance(Duration::from_secs(91));
    let shown = f.run(|reply| Command::ShowSettings {
        user: user("alice"),
        reply,
    });
    assert_eq!(shown, Ok(Reply::Settings(Default::default())));
}

#[test]
fn quiet_hours_apply_when_a_coalesced_push_is_sent() {
    let mut f = Fixture::new(60);
    // 13:00 Berlin now; quiet from 13:01.
    let q = QuietHours::parse("13:01-14:00", "Europe/Berlin").unwrap();
    f.setting(SettingChange::Quiet(Some(q))).unwrap();
    f.message("bob", "soon").unwrap();
    f.advance(Duration::from_secs(60));
    f.tick();
    let p = f.pushes();
    assert_eq!(p[0]["aps"]["interruption-level"], "passive");
}
