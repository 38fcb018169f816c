//! The store thread's side of [`Push`]: one outbox entry per push for its
//! explicit device, rendered by [`crate::policy::Policy::push`], all of an
//! event's pushes or none; their receipts are registered with the delivery
//! tracker inside the same transaction (so before any sink can see the
//! notifications).

use std::time::{SystemTime, UNIX_EPOCH};

use pushbridge_api::{EventError, Push, Receipts, Reply};

use super::super::db::{now_ms, NewNotification, StoreError};
use super::Writer;
use crate::outcome::Notification;

impl Writer {
    /// Queue `pushes` (their devices need not be registered); a push for
    /// an unconfigured topic refuses them all before anything is written.
    /// Answered with their receipts, in order.
    pub(super) fn push(
        &mut self,
        pushes: Vec<Push>,
        out: &mut Vec<(usize, Notification)>,
    ) -> Result<Result<Reply, EventError>, StoreError> {
        let mut apps = Vec::with_capacity(pushes.len());
        for p in &pushes {
            match self.feed.index(&p.topic).filter(|i| self.feed.slot(*i).is_some()) {
                Some(i) => apps.push(i),
                None => return Ok(Err(EventError::UnknownTopic(p.topic.clone()))),
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let created_ms = now_ms();
        let (mut ids, mut tracked) = (Vec::with_capacity(pushes.len()), Vec::new());
        for (push, i) in pushes.into_iter().zip(apps) {
            let Some(slot) = self.feed.slot(i) else { continue };
            let (app, limit) = (slot.app.clone(), slot.limit);
            let environment = push.environment.unwrap_or(slot.environment);
            let mut rendered = self.policy.push(&push, now);
            let payload = rendered.payload(limit);
            let id = self.db.insert_outbox(&NewNotification {
                topic: &app,
                token: &push.token,
                environment,
                payload: &payload,
                expiration: rendered.expiration,
                priority: rendered.priority,
                collapse_id: None,
                created_ms,
            })?;
            tracing::debug!(app = %app, device = push.token.short(), notification = id, "push queued");
            ids.push(id);
            if push.track {
                tracked.push(id);
            }
            let mut n = Notification::new(id, app, push.token, environment, payload);
            n.expiration = rendered.expiration;
            n.priority = rendered.priority;
            n.created_ms = created_ms;
            out.push((i, n));
        }
        let receipts = Receipts::new(ids);
        // Before the commit and the feed: no outcome can come first. A
        // rolled-back batch drops the receipts, which forgets them.
        self.completions.tracker().track(&receipts, &tracked);
        if !tracked.is_empty() {
            if let Some(hook) = self.durability_hook() {
                receipts.set_durability(hook);
            }
        }
        Ok(Ok(Reply::Pushed(receipts)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pushbridge_api::{Delivery, DeviceToken, Environment, Event, Priority};
    use tokio::sync::{mpsc, oneshot};

    use super::super::Command;
    use super::*;
    use crate::config::{PolicyConfig, Synchronous};
    use crate::feed::Feed;
    use crate::outcome::{CompletionSender, Counters, Outcome, Outcomes};
    use crate::policy::Policy;
    use crate::store::db::Db;

    const APP: &str = "com.example.chat";

    struct Fixture {
        writer: Writer,
        sink: mpsc::Receiver<Notification>,
        outcomes: Outcomes,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        fixture_with(Synchronous::Normal, None)
    }

    fn fixture_with(sync: Synchronous, durability: Option<mpsc::WeakSender<Command>>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), sync).unwrap();
        let counters = Arc::new(Counters::default());
        let (tx, sink) = mpsc::channel(64);
        let mut feed = Feed::new();
        feed.add(APP, Environment::Sandbox, 4096, tx, &counters);
        let (completions, rx) = CompletionSender::new(None);
        let policy = Policy::new(PolicyConfig::default());
        let mut writer = Writer::new(db, feed, policy, counters.clone(), rx, Default::default());
        if let Some(tx) = durability {
            writer = writer.with_durability(tx);
        }
        writer.refill_for_test();
        Fixture {
            writer,
            sink,
            outcomes: Outcomes::new(&counters, APP, completions),
            _dir: dir,
        }
    }

    fn push(token: u64, topic: &str) -> Push {
        let mut p = Push::new(DeviceToken::parse(&format!("{token:064x}")).unwrap(), topic);
        p.badge = Some(4);
        p.priority = Priority::Low;
        p.track = true;
        p
    }

    type Answer = oneshot::Receiver<Result<Reply, EventError>>;

    fn command(pushes: Vec<Push>) -> (Command, Answer) {
        let (tx, rx) = oneshot::channel();
        (
            Command::Push {
                pushes,
                reply: Some(tx),
            },
            rx,
        )
    }

    fn apply(f: &mut Fixture, pushes: Vec<Push>) -> Result<Reply, EventError> {
        let (c, mut rx) = command(pushes);
        f.writer.apply_batch(&mut vec![c], &mut Vec::new());
        rx.try_recv().expect("answered after the commit")
    }

    #[test]
    fn pushes_are_queued_unregistered_and_tracked_until_apple_answers() {
        let mut f = fixture();
        let Ok(Reply::Pushed(receipts)) = apply(&mut f, vec![push(1, APP), push(2, APP)]) else {
            panic!("pushed");
        };
        assert_eq!(receipts.len(), 2);
        let tracker = f.writer.completions.tracker().clone();
        assert_eq!(tracker.len(), 2, "registered before the sink sees them");
        let a = f.sink.try_recv().unwrap();
        let b = f.sink.try_recv().unwrap();
        assert_eq!((a.id, b.id), (receipts.ids()[0], receipts.ids()[1]));
        assert_eq!(a.priority, 5);
        assert_eq!(a.environment, Environment::Sandbox, "the app's environment");
        assert_eq!(&*a.payload, r#"{"aps":{"badge":4}}"#);
        f.outcomes.settle(&a, Outcome::Delivered);
        let gone = Outcome::Rejected {
            reason: "410 Unregistered".into(),
            remove_device: true,
            since_ms: None,
        };
        f.outcomes.settle(&b, gone);
        assert!(tracker.is_empty());
        let d = receipts.deliveries();
        assert_eq!(d[0], Delivery::Delivered);
        assert!(d[1].device_gone());
    }

    #[test]
    fn an_unknown_topic_refuses_every_push_of_the_event() {
        let mut f = fixture();
        let r = apply(&mut f, vec![push(1, APP), push(2, "com.example.other")]);
        assert_eq!(r, Err(EventError::UnknownTopic("com.example.other".into())));
        assert!(f.sink.try_recv().is_err());
        assert!(f.writer.db_for_test().outbox_counts().unwrap().is_empty());
        assert!(f.writer.completions.tracker().is_empty());
    }

    #[test]
    fn a_store_failure_queues_nothing_and_forgets_the_receipts() {
        let mut f = fixture();
        let bad = format!("{:064x}", 2);
        f.writer
            .db_for_test()
            .execute_for_test(&format!(
                "CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.token = '{bad}' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
            ))
            .unwrap();
        let r = apply(&mut f, vec![push(1, APP), push(2, APP)]);
        assert!(matches!(r, Err(EventError::Unavailable(_))), "{r:?}");
        assert!(f.sink.try_recv().is_err(), "nothing of a failed batch reaches a sink");
        assert!(
            f.writer.db_for_test().outbox_counts().unwrap().is_empty(),
            "nothing half-queued"
        );
        assert!(
            f.writer.completions.tracker().is_empty(),
            "receipts of a failed batch are forgotten"
        );
    }

    #[test]
    fn untracked_pushes_are_not_registered() {
        let mut f = fixture();
        let mut p = push(1, APP);
        p.track = false;
        assert!(matches!(apply(&mut f, vec![p]), Ok(Reply::Pushed(_))));
        assert!(f.writer.completions.tracker().is_empty());
        assert_eq!(Event::Push(Vec::new()).kind(), "push");
    }

    /// The connection's `PRAGMA synchronous` (1 NORMAL, 2 FULL).
    fn synchronous(f: &Fixture) -> i64 {
        let Db::Sqlite(db) = f.writer.db_for_test() else {
            panic!("SQLite")
        };
        db.conn_beside_outbox()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    fn mark(f: &Fixture) -> Option<String> {
        f.writer
            .db_for_test()
            .state_get("pushbridge/store", "synced-at-ms")
            .unwrap()
    }

    #[tokio::test]
    async fn tracked_pushes_skip_the_fsync_until_a_waiter_acknowledges_them_pending() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut f = fixture_with(Synchronous::Full, Some(tx.downgrade()));
        let Ok(Reply::Pushed(receipts)) = apply(&mut f, vec![push(1, APP)]) else {
            panic!("pushed");
        };
        assert_eq!(synchronous(&f), 1, "committed without waiting for the disk");
        // Apple has not answered at the deadline: made durable first.
        let waiter = tokio::spawn(async move { receipts.wait(std::time::Duration::ZERO).await });
        let sync = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("the hook asks the store to sync")
            .expect("the channel is open");
        assert!(matches!(sync, Command::Sync { .. }), "{sync:?}");
        assert!(!waiter.is_finished(), "not acknowledged before the sync");
        f.writer.apply_batch(&mut vec![sync], &mut Vec::new());
        assert_eq!(synchronous(&f), 2, "the sync's commit waits for the disk");
        assert!(mark(&f).is_some(), "an otherwise empty sync writes its marker");
        assert_eq!(waiter.await.unwrap(), Ok(vec![Delivery::Pending]));
        // Nothing unsynced now: a sync writes nothing.
        f.writer
            .db_for_test()
            .execute_for_test("DELETE FROM adapter_state")
            .unwrap();
        f.writer
            .apply_batch(&mut vec![Command::Sync { reply: None }], &mut Vec::new());
        assert_eq!(mark(&f), None);
    }

    #[tokio::test]
    async fn other_commands_and_untracked_pushes_keep_every_commit_synced() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut f = fixture_with(Synchronous::Full, Some(tx.downgrade()));
        let mut untracked = push(1, APP);
        untracked.track = false;
        let Ok(Reply::Pushed(r)) = apply(&mut f, vec![untracked, push(2, APP)]) else {
            panic!("pushed");
        };
        assert_eq!(synchronous(&f), 2);
        assert_eq!(r.wait(std::time::Duration::ZERO).await.unwrap().len(), 2);
        // A tracked push beside a registration: the registration's answer
        // promises durability, so the whole transaction is synced.
        let (p, _answer) = command(vec![push(3, APP)]);
        let register = Command::Register {
            user: pushbridge_api::UserId::parse("line:alice").unwrap(),
            token: DeviceToken::parse(&format!("{:064x}", 9)).unwrap(),
            topic: None,
            environment: None,
            reply: None,
        };
        f.writer.apply_batch(&mut vec![p, register], &mut Vec::new());
        assert_eq!(synchronous(&f), 2);
        assert!(rx.try_recv().is_err(), "no sync was ever needed");
        // The sinks' outcomes alone answer nobody: not waited for.
        f.writer.apply_batch(&mut vec![Command::Wake], &mut Vec::new());
        assert_eq!(synchronous(&f), 1);
        // Configured `synchronous = "normal"`: nothing is deferred (and
        // nothing synced: the operator chose so).
        let mut f = fixture_with(Synchronous::Normal, Some(tx.downgrade()));
        let Ok(Reply::Pushed(r)) = apply(&mut f, vec![push(4, APP)]) else {
            panic!("pushed");
        };
        assert_eq!(
            r.wait(std::time::Duration::ZERO).await.unwrap(),
            vec![Delivery::Pending]
        );
        assert!(rx.try_recv().is_err());
    }
}
