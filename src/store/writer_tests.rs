//! Unit tests of the store thread's batching, failure handling and refill
//! order, driving a [`Writer`] directly (no thread, no gateway).

use std::sync::Arc;

use pushbridge_api::{DeviceToken, Environment, EventError, Reply, UserId};
use tokio::sync::{mpsc, oneshot};

use super::command::{Command, MessageJob, ReplyTx};
use super::db::Db;
use super::writer::Writer;
use crate::config::{PolicyConfig, Synchronous};
use crate::feed::Feed;
use crate::outcome::{Completion, CompletionReceiver, CompletionSender, Counters, Notification, Outcome};
use crate::policy::Policy;

const APP: &str = "com.example.chat";

struct Fixture {
    writer: Writer,
    /// The sink's queue.
    sink: mpsc::Receiver<Notification>,
    counters: Arc<Counters>,
    _completions: CompletionSender,
    _dir: tempfile::TempDir,
}

/// A writer over a fresh file, one app whose sink queue holds `queue`.
fn fixture(queue: usize) -> Fixture {
    fixture_with(queue, Synchronous::Normal)
}

fn fixture_with(queue: usize, sync: Synchronous) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db"), sync).unwrap();
    let counters = Arc::new(Counters::default());
    let (tx, sink) = mpsc::channel(queue);
    let mut feed = Feed::new();
    feed.add(APP, Environment::Production, 4096, tx, &counters);
    let (completions, rx): (CompletionSender, CompletionReceiver) = CompletionSender::new(None);
    let mut writer = Writer::new(
        db,
        feed,
        Policy::new(PolicyConfig::default()),
        counters.clone(),
        rx,
        Default::default(),
    );
    // As the thread does on start: load what the outbox holds (nothing).
    writer.refill_for_test();
    Fixture {
        writer,
        sink,
        counters,
        _completions: completions,
        _dir: dir,
    }
}

fn user(u: &str) -> UserId {
    UserId::parse(&format!("line:{u}")).unwrap()
}

fn token(i: u64) -> DeviceToken {
    DeviceToken::parse(&format!("{i:064x}")).unwrap()
}

fn register(u: &str, t: u64) -> (Command, oneshot::Receiver<Result<Reply, EventError>>) {
    let (tx, rx) = oneshot::channel();
    let cmd = Command::Register {
        user: user(u),
        token: token(t),
        topic: None,
        environment: None,
        reply: Some(tx),
    };
    (cmd, rx)
}

fn message(to: &str, text: &str) -> (Command, oneshot::Receiver<Result<Reply, EventError>>) {
    let (tx, rx): (ReplyTx, _) = oneshot::channel();
    let job = MessageJob {
        to: user(to),
        from: "bob".into(),
        subtitle: None,
        text: Some(text.into()),
        thread: None,
        device: None,
        badge: None,
        respect_presence: false,
    };
    (Command::Enqueue { job, reply: Some(tx) }, rx)
}

fn answer(rx: &mut oneshot::Receiver<Result<Reply, EventError>>) -> Result<Reply, EventError> {
    rx.try_recv().expect("answered once the batch committed")
}

#[test]
fn one_batch_is_one_transaction_answered_after_the_commit() {
    let mut f = fixture(64);
    let mut batch = Vec::new();
    let mut replies = Vec::new();
    for (i, u) in ["alice", "carol"].iter().enumerate() {
        let (c, r) = register(u, i as u64 + 1);
        batch.push(c);
        replies.push(r);
    }
    for k in 0..10 {
        let (c, r) = message(if k % 2 == 0 { "alice" } else { "carol" }, &format!("m{k}"));
        batch.push(c);
        replies.push(r);
    }
    let mut done = Vec::new();
    f.writer.apply_batch(&mut batch, &mut done);
    assert!(batch.is_empty());
    // Registrations made earlier in the same transaction are seen by the
    // messages after them.
    assert_eq!(answer(&mut replies[0]), Ok(Reply::Done));
    for r in &mut replies[2..] {
        assert_eq!(answer(r), Ok(Reply::Queued(1)));
    }
    // Handed to the sink in outbox order, with badges counting per user.
    let mut got = Vec::new();
    while let Ok(n) = f.sink.try_recv() {
        got.push(n);
    }
    assert_eq!(got.len(), 10);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    let badge =
        |n: &Notification| serde_json::from_str::<serde_json::Value>(&n.payload).unwrap()["aps"]["badge"].as_u64();
    assert_eq!(badge(&got[8]), Some(5), "alice's fifth message");
    assert_eq!(f.counters.snapshot().accepted, 10);
}

#[test]
fn a_failed_transaction_answers_every_command_and_keeps_completions() {
    let mut f = fixture(64);
    let (c, _r) = register("alice", 1);
    let mut done = Vec::new();
    f.writer.apply_batch(&mut vec![c], &mut done);
    let (c, mut first) = message("alice", "before");
    f.writer.apply_batch(&mut vec![c], &mut done);
    let n = f.sink.try_recv().unwrap();
    assert_eq!(answer(&mut first), Ok(Reply::Queued(1)));

    // Break the outbox: the next message cannot be queued, so the whole
    // batch (an earlier registration in it too) fails and is answered so.
    f.writer.db_for_test().execute_for_test("DROP TABLE outbox").unwrap();
    let (reg, mut reg_reply) = register("carol", 2);
    let (msg, mut msg_reply) = message("alice", "after");
    let mut done = vec![Completion::Settled {
        id: n.id,
        app: n.app.clone(),
        token: n.token.clone(),
        outcome: Outcome::Delivered,
    }];
    f.writer.apply_batch(&mut vec![reg, msg], &mut done);
    assert!(matches!(answer(&mut reg_reply), Err(EventError::Unavailable(_))));
    assert!(matches!(answer(&mut msg_reply), Err(EventError::Unavailable(_))));
    assert_eq!(done.len(), 1, "the completion is kept for the next batch");
    assert!(f.sink.try_recv().is_err(), "nothing of a failed batch reaches a sink");
    let devices = f.writer.db_for_test().devices_of(&user("carol")).unwrap();
    assert!(devices.is_empty(), "the registration was rolled back");
}

#[test]
fn a_failed_transaction_still_closes_the_sinks_and_answers_alive() {
    let mut f = fixture(64);
    let (c, _r) = register("alice", 1);
    f.writer.apply_batch(&mut vec![c], &mut Vec::new());
    f.writer.db_for_test().execute_for_test("DROP TABLE outbox").unwrap();
    let (msg, mut msg_reply) = message("alice", "after");
    let (alive_tx, mut alive_rx) = oneshot::channel();
    let mut batch = vec![msg, Command::CloseSinks, Command::Alive { reply: alive_tx }];
    f.writer.apply_batch(&mut batch, &mut Vec::new());
    assert!(matches!(answer(&mut msg_reply), Err(EventError::Unavailable(_))));
    assert_eq!(
        f.sink.try_recv().unwrap_err(),
        mpsc::error::TryRecvError::Disconnected,
        "shutdown goes on: the sinks get no more input"
    );
    assert!(
        alive_rx.try_recv().is_ok(),
        "liveness is answered: the thread goes on taking commands"
    );
}

#[test]
fn completions_remove_rows_and_gone_devices() {
    let mut f = fixture(64);
    let (c1, _) = register("alice", 1);
    let (c2, _) = register("alice", 2);
    let (m, _) = message("alice", "hi");
    let mut done = Vec::new();
    f.writer.apply_batch(&mut vec![c1, c2, m], &mut done);
    let a = f.sink.try_recv().unwrap();
    let b = f.sink.try_recv().unwrap();
    let mut done = vec![
        Completion::Settled {
            id: a.id,
            app: a.app.clone(),
            token: a.token.clone(),
            outcome: Outcome::Delivered,
        },
        Completion::Settled {
            id: b.id,
            app: b.app.clone(),
            token: b.token.clone(),
            outcome: Outcome::Rejected {
                reason: "410 Unregistered".into(),
                remove_device: true,
                since_ms: None,
            },
        },
    ];
    f.writer.apply_batch(&mut Vec::new(), &mut done);
    assert!(done.is_empty());
    let db = f.writer.db_for_test();
    assert_eq!(db.outbox_counts().unwrap(), vec![]);
    let left: Vec<DeviceToken> = db
        .devices_of(&user("alice"))
        .unwrap()
        .into_iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(left, vec![a.token.clone()]);
    assert_eq!(f.counters.snapshot().devices_removed, 1);
}

#[test]
fn what_does_not_fit_waits_in_the_outbox_and_refills_in_order() {
    let mut f = fixture(3);
    let (c, _) = register("alice", 1);
    let mut batch = vec![c];
    for k in 0..10 {
        batch.push(message("alice", &format!("m{k}")).0);
    }
    let mut done = Vec::new();
    f.writer.apply_batch(&mut batch, &mut done);
    let mut got = Vec::new();
    for _ in 0..10 {
        while let Ok(n) = f.sink.try_recv() {
            got.push(n.id);
        }
        f.writer.refill_for_test();
    }
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in outbox order: {got:?}");
    // A message committed while older ones wait goes behind them.
    f.writer.apply_batch(&mut vec![message("alice", "late").0], &mut done);
    let late = f.sink.try_recv().unwrap().id;
    assert!(late > got[9]);
}

#[test]
fn outcomes_that_cannot_be_recorded_never_block_commands_and_are_kept_until_they_can() {
    let mut f = fixture(64);
    let (c, _) = register("alice", 1);
    let mut done = Vec::new();
    f.writer.apply_batch(&mut vec![c, message("alice", "one").0], &mut done);
    let n = f.sink.try_recv().unwrap();
    // Deleting from the outbox fails from now on; inserting still works.
    f.writer
        .db_for_test()
        .execute_for_test("CREATE TRIGGER no_delete BEFORE DELETE ON outbox BEGIN SELECT RAISE(ABORT, 'no'); END;")
        .unwrap();
    let mut done = vec![Completion::Settled {
        id: n.id,
        app: n.app.clone(),
        token: n.token.clone(),
        outcome: Outcome::Delivered,
    }];
    for k in 0..50 {
        assert_eq!(done.len(), 1, "kept for another try ({k} failed so far)");
        let (msg, mut reply) = message("alice", &format!("m{k}"));
        f.writer.apply_batch(&mut vec![msg], &mut done);
        assert_eq!(answer(&mut reply), Ok(Reply::Queued(1)), "commands still commit");
    }
    assert_eq!(done.len(), 1, "never given up: a lost outcome would send it twice");
    // The store can write again: the outcome is recorded with the next batch.
    f.writer
        .db_for_test()
        .execute_for_test("DROP TRIGGER no_delete")
        .unwrap();
    f.writer.apply_batch(&mut Vec::new(), &mut done);
    assert!(done.is_empty());
    let counts = f.writer.db_for_test().outbox_counts().unwrap();
    assert_eq!(counts, vec![(APP.to_owned(), 50)], "only the 50 new messages wait");
}

#[test]
fn the_thread_ends_when_its_handles_are_gone_even_without_close_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
    let counters = Arc::new(Counters::default());
    let (sink_tx, mut sink_rx) = mpsc::channel::<Notification>(64);
    let mut feed = Feed::new();
    feed.add(APP, Environment::Production, 4096, sink_tx, &counters);
    let (completions, rx) = CompletionSender::new(None);
    let writer = Writer::new(
        db,
        feed,
        Policy::new(PolicyConfig::default()),
        counters.clone(),
        rx,
        Default::default(),
    );
    let (tx, cmd_rx) = mpsc::channel(16);
    let (finished_tx, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        writer.run(cmd_rx);
        let _ = finished_tx.send(());
    });
    // A sink: settles what it gets until its input closes, then ends.
    let sink = std::thread::spawn(move || {
        let outcomes = crate::outcome::Outcomes::new(&Counters::default(), APP, completions);
        while let Some(n) = sink_rx.blocking_recv() {
            outcomes.settle(&n, Outcome::Delivered);
        }
    });
    let (reg, reg_reply) = register("alice", 1);
    let (msg, msg_reply) = message("alice", "last words");
    tx.blocking_send(reg).unwrap();
    tx.blocking_send(msg).unwrap();
    assert_eq!(msg_reply.blocking_recv().unwrap(), Ok(Reply::Queued(1)));
    drop(reg_reply);
    drop(tx); // no CloseSinks
    finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the store thread ends once its handles are gone");
    sink.join().unwrap();
    let db = Db::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
    assert_eq!(db.outbox_counts().unwrap(), vec![], "the last outcome was recorded");
}

#[test]
fn a_new_policy_renders_the_messages_queued_after_it() {
    let mut f = fixture(64);
    let (reg, _r) = register("alice", 1);
    let (before, _b) = message("alice", "before");
    let quiet = PolicyConfig {
        privacy: true,
        sound: "chime".into(),
        ..PolicyConfig::default()
    };
    let set = Command::SetPolicy(Box::new(Policy::new(quiet)));
    let (after, _a) = message("alice", "after");
    f.writer
        .apply_batch(&mut vec![reg, before, set, after], &mut Vec::new());
    let aps = |n: Notification| serde_json::from_str::<serde_json::Value>(&n.payload).unwrap()["aps"].clone();
    let first = aps(f.sink.try_recv().unwrap());
    assert_eq!(first["sound"], "default");
    assert_eq!(first["alert"]["body"], "before");
    let second = aps(f.sink.try_recv().unwrap());
    assert_eq!(second["sound"], "chime");
    assert_eq!(second["alert"]["body"], "New message", "privacy hides the text");
}

#[test]
fn a_new_policy_applies_even_when_its_batch_fails() {
    let mut f = fixture(64);
    let (reg, _r) = register("alice", 1);
    f.writer.apply_batch(&mut vec![reg], &mut Vec::new());
    f.writer.db_for_test().execute_for_test("DROP TABLE outbox").unwrap();
    let (msg, _m) = message("alice", "lost");
    let set = Command::SetPolicy(Box::new(Policy::new(PolicyConfig {
        sound: "chime".into(),
        ..PolicyConfig::default()
    })));
    f.writer.apply_batch(&mut vec![msg, set], &mut Vec::new());
    assert_eq!(f.writer.policy_for_test().config().sound, "chime");
}

#[test]
fn under_synchronous_full_answers_wait_for_the_wal_sync_and_the_next_batch_does_not() {
    // Each sync takes one permit: the test decides when the disk answers.
    let (permit, permits) = std::sync::mpsc::channel::<()>();
    let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = syncs.clone();
    let sync: super::wal_sync::SyncFn = Box::new(move || {
        permits.recv().map_err(|_| std::io::Error::other("test over"))?;
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    });
    let Fixture {
        writer,
        mut sink,
        counters: _counters,
        _completions,
        _dir,
    } = fixture_with(64, Synchronous::Full);
    let mut writer = writer.with_wal_sync_fn(sync);
    let (c, mut registered) = register("alice", 1);
    writer.apply_batch(&mut vec![c], &mut Vec::new());
    // Committed (the next transaction sees it) but not answered.
    let (c, mut queued) = message("alice", "hi");
    writer.apply_batch(&mut vec![c], &mut Vec::new());
    assert_eq!(
        sink.try_recv().map(|n| n.token),
        Ok(token(1)),
        "the message saw the registration"
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        registered.try_recv().is_err() && queued.try_recv().is_err(),
        "answered before the sync"
    );
    // One sync answers both transactions (the second waited in the queue
    // while the first sync ran), or two syncs do; never none.
    permit.send(()).unwrap();
    permit.send(()).unwrap();
    assert_eq!(registered.blocking_recv().unwrap(), Ok(Reply::Done));
    assert_eq!(queued.blocking_recv().unwrap(), Ok(Reply::Queued(1)));
    assert!(syncs.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// `PRAGMA synchronous` of the writer's connection (1 NORMAL, 2 FULL).
fn synchronous_of(writer: &Writer) -> i64 {
    match writer.db_for_test() {
        Db::Sqlite(d) => d
            .conn_beside_outbox()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap(),
        Db::Postgres(_) => unreachable!("SQLite fixture"),
    }
}

#[test]
fn under_synchronous_full_the_wal_is_synced_by_its_own_thread_and_commits_do_not_sync() {
    let Fixture {
        writer,
        _completions,
        _dir,
        ..
    } = fixture_with(64, Synchronous::Full);
    assert_eq!(synchronous_of(&writer), 2, "FULL until the sync thread runs");
    let mut writer = writer.with_wal_sync();
    assert_eq!(synchronous_of(&writer), 1, "commits no longer sync themselves");
    // A real fsync of the real WAL answers.
    let (c, registered) = register("alice", 1);
    writer.apply_batch(&mut vec![c], &mut Vec::new());
    assert_eq!(registered.blocking_recv().unwrap(), Ok(Reply::Done));
    // Under "normal" nothing changes: commits never sync.
    let normal = fixture_with(64, Synchronous::Normal).writer.with_wal_sync();
    assert_eq!(synchronous_of(&normal), 1);
}

#[test]
fn after_a_failed_wal_sync_every_transaction_fails_whole() {
    let Fixture {
        writer,
        mut sink,
        counters,
        _completions,
        _dir,
    } = fixture_with(64, Synchronous::Full);
    let sync: super::wal_sync::SyncFn = Box::new(|| Err(std::io::Error::other("EIO")));
    let mut writer = writer.with_wal_sync_fn(sync);
    let (c, registered) = register("alice", 1);
    writer.apply_batch(&mut vec![c], &mut Vec::new());
    let err = registered.blocking_recv().unwrap().expect_err("the sync failed");
    assert!(err.to_string().contains("fsync failed: EIO"), "{err}");
    // Committed before the sync failed, so alice has her device; but from
    // now on nothing is written, pushed or counted.
    let (c, mut queued) = message("alice", "hi");
    writer.apply_batch(&mut vec![c], &mut Vec::new());
    let err = answer(&mut queued).expect_err("refused before the transaction");
    assert!(err.to_string().contains("fsync failed"), "{err}");
    assert!(sink.try_recv().is_err(), "nothing handed to the sink");
    assert_eq!(counters.snapshot().accepted, 0);
    match writer.db_for_test() {
        Db::Sqlite(d) => {
            let rows: i64 = d
                .conn()
                .unwrap()
                .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
                .unwrap();
            assert_eq!(rows, 0, "nothing written");
        }
        Db::Postgres(_) => unreachable!("SQLite fixture"),
    }
}
