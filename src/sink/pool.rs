//! What the APNS sinks (HTTP/2 and binary) share: the dispatcher that
//! routes notifications to a pool of connections per APNS environment, the
//! accounting that gives every notification exactly one outcome, and
//! retries with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushbridge_api::Environment;
use pushbridge_kit::Backoff;
use tokio::sync::{mpsc, Notify};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::SinkError;
use crate::outcome::{Notification, Outcome, Outcomes};

/// First retry delay; doubles per attempt up to the sink's
/// `max_retry_delay` (default [`RETRY_MAX`]).
pub const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest delay between two sends of one notification.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Queue between the dispatcher and a pool's workers.
pub const POOL_QUEUE: usize = 4096;
/// First delay before a notification held for a refused credential goes
/// out again; doubles with every refusal in a row up to [`HOLD_MAX`].
pub const HOLD_BASE: Duration = Duration::from_secs(1);
/// Longest delay between two tries of a refused credential.
pub const HOLD_MAX: Duration = Duration::from_secs(60);

/// A pool's queue, shared by its connection workers: whichever worker is
/// free takes the next notification. A multi-consumer channel
/// (`async-channel`): a worker that finds one waiting takes it without
/// waking the others. Cancel-safe: a notification leaves the
/// queue only when a `recv` completes. [`next`] takes from it under tokio's
/// cooperative budget, as tokio's own channels do: a worker that always
/// finds a notification waiting would otherwise never yield, and the
/// connection task that writes its requests would wait behind it.
pub type PoolQueue = async_channel::Receiver<Notification>;

/// The dispatcher's end of a [`PoolQueue`]; dropping every sender ends the
/// workers once the queue is empty.
pub type PoolSender = async_channel::Sender<Notification>;

/// A pool's queue: [`POOL_QUEUE`] notifications at most.
pub fn pool_queue() -> (PoolSender, PoolQueue) {
    async_channel::bounded(POOL_QUEUE)
}

/// The next notification for a worker; `None` when the sink is done (every
/// sender dropped and the queue empty). Spends a unit of the task's
/// cooperative budget (`tokio::task::coop`), yielding once it is used up.
pub async fn next(rx: &PoolQueue) -> Option<Notification> {
    tokio::task::coop::cooperative(rx.recv()).await.ok()
}

/// Up to `max` notifications at once: waits for the first, then takes what
/// is already queued. Returns how many were added to `into`; 0 when the
/// sink is done or `max` is 0.
pub async fn next_many(rx: &PoolQueue, into: &mut Vec<Notification>, max: usize) -> usize {
    if max == 0 {
        return 0;
    }
    let Some(first) = next(rx).await else { return 0 };
    into.push(first);
    let mut taken = 1;
    while taken < max {
        let Ok(n) = rx.try_recv() else { break };
        into.push(n);
        taken += 1;
    }
    taken
}

/// State shared by the dispatcher, the workers and their tasks.
pub struct Shared {
    /// Where every outcome and sink event is recorded.
    pub outcomes: Outcomes,
    /// Taken from the input, not yet settled.
    outstanding: AtomicUsize,
    idle: Notify,
    /// Most `outstanding` allowed: the dispatcher stops taking input there.
    max_outstanding: usize,
    room: Notify,
    retry_tx: mpsc::UnboundedSender<Notification>,
    max_retries: Option<u32>,
    max_retry_delay: Duration,
    /// Notifications held in a row because APNS refused the credential
    /// (sets the hold delay); 0 once it accepts it again.
    refused_streak: std::sync::atomic::AtomicU32,
    /// Every task the sink spawns (workers, retry timers, streams left to
    /// finish), so the sink ends only when they have.
    pub tasks: TaskTracker,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    /// Record the final outcome of a notification.
    pub fn finish(&self, n: Notification, outcome: Outcome) {
        drop(self.finish_keep(n, outcome));
    }

    /// [`Shared::finish`], handing the notification back (the binary sink
    /// remembers what it settled as delivered, for late error responses).
    pub fn finish_keep(&self, n: Notification, outcome: Outcome) -> Notification {
        self.outcomes.settle(&n, outcome);
        self.release();
        n
    }

    /// Take back a notification already settled as delivered, to send it
    /// again: it is held (and will be settled) like a new one.
    pub fn take_back(&self, mut n: Notification) -> Notification {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        n.attempts = 0;
        n.redelivery = true;
        n
    }

    /// One notification fewer held.
    fn release(&self) {
        let before = self.outstanding.fetch_sub(1, Ordering::AcqRel);
        if before >= self.max_outstanding {
            self.room.notify_waiters();
        }
        if before == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Expire the notification if its time has passed; otherwise hand it back.
    pub fn unless_expired(&self, n: Notification, why: &str) -> Option<Notification> {
        if n.expired_at(unix_now()) {
            self.finish(n, Outcome::Expired { reason: why.to_owned() });
            None
        } else {
            Some(n)
        }
    }

    /// Send again now, without counting an attempt: for notifications APNS
    /// provably never processed (streams past a GOAWAY, refused streams).
    pub fn resend(&self, n: Notification) {
        if let Some(n) = self.unless_expired(n, "expired before it could be sent") {
            let _ = self.retry_tx.send(n);
        }
    }

    /// Send again after a backoff delay (doubling from [`RETRY_BASE`] up to
    /// the sink's `max_retry_delay`), until the notification's own
    /// expiration - or `max_retries`, when the sink sets one.
    pub fn retry(&self, mut n: Notification, why: &str) {
        n.attempts += 1;
        if let Some(max) = self.max_retries.filter(|m| n.attempts > *m) {
            let reason = format!("gave up after {max} retries: {why}");
            return self.finish(n, Outcome::Expired { reason });
        }
        let Some(n) = self.unless_expired(n, &format!("expired while retrying: {why}")) else {
            return;
        };
        let delay = Backoff::delay_for(RETRY_BASE, self.max_retry_delay, n.attempts);
        self.outcomes.retried(&n, why, delay);
        let tx = self.retry_tx.clone();
        self.spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(n);
        });
    }

    /// APNS refused the credential (not the notification): `host` and the
    /// plain `reason` go to the outcome layer (one ERROR line per change of
    /// state), and `n` is held: sent again after a delay that grows with
    /// every refusal in a row up to [`HOLD_MAX`], without spending one of
    /// its retries, until its own expiration. It stays in the outbox.
    pub fn hold(&self, n: Notification, host: &str, reason: &str) {
        self.outcomes.credential_refused(host, reason);
        let Some(n) = self.unless_expired(n, &format!("expired while APNS refused the credential: {reason}")) else {
            return;
        };
        let streak = self.refused_streak.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let delay = Backoff::delay_for(HOLD_BASE, HOLD_MAX, streak.min(16));
        self.outcomes.retried(&n, reason, delay);
        let tx = self.retry_tx.clone();
        self.spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(n);
        });
    }

    /// While APNS refuses the credential: how long to wait before the next
    /// probe request (the hold back-off of the current streak); `None`
    /// when nothing is refused.
    pub fn refusal_delay(&self) -> Option<Duration> {
        match self.refused_streak.load(Ordering::Acquire) {
            0 => None,
            streak => Some(Backoff::delay_for(HOLD_BASE, HOLD_MAX, streak.min(16))),
        }
    }

    /// APNS at `host` accepted the credential (an answer past
    /// authentication): ends a refusal.
    pub fn accepted(&self, host: &str) {
        if self.refused_streak.load(Ordering::Relaxed) != 0 {
            self.refused_streak.store(0, Ordering::Relaxed);
        }
        self.outcomes.credential_accepted(host);
    }

    /// Spawn a task of the sink: tracked (the sink ends only after it) and
    /// inside the sink's span (its logs carry `app` and `protocol`).
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task.in_current_span());
    }
}

/// Starts the pool of connections for one environment: returns its queue.
pub trait PoolStarter {
    /// Called once when the sink starts (feedback pollers, …).
    fn started(&mut self, _shared: &Arc<Shared>) {}
    /// Start the connections for devices of `env`; returns their queue.
    fn start_pool(&mut self, env: Environment, shared: Arc<Shared>) -> Result<PoolSender, SinkError>;
}

/// How a sink retries transient failures (`max_retries`,
/// `max_retry_delay` of its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `None` (the default): until the notification's `apns-expiration`.
    pub max_retries: Option<u32>,
    /// The backoff's cap (default [`RETRY_MAX`]).
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// From the config keys; `max_retry_delay` is 1 to 3600 seconds.
    pub fn from_config(max_retries: Option<u32>, max_retry_delay: Option<u64>) -> Result<Self, SinkError> {
        let max_delay = match max_retry_delay {
            None => RETRY_MAX,
            Some(s @ 1..=3600) => Duration::from_secs(s),
            Some(s) => {
                return Err(SinkError::config(
                    "max_retry_delay",
                    format!("{s}: use 1 to 3600 seconds"),
                ))
            }
        };
        Ok(Self { max_retries, max_delay })
    }

    /// The dispatcher's limits with this policy and `max_outstanding`.
    pub fn limits(&self, max_outstanding: usize) -> Limits {
        Limits {
            max_retries: self.max_retries,
            max_retry_delay: self.max_delay,
            max_outstanding,
        }
    }
}

/// The dispatcher's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Transient failures before a notification is given up; `None`: until
    /// its `apns-expiration` (the default).
    pub max_retries: Option<u32>,
    /// Longest delay between two tries (the exponential backoff's cap).
    pub max_retry_delay: Duration,
    /// Most notifications held at once.
    pub max_outstanding: usize,
}

/// The dispatcher: takes notifications and retries, routes them to the
/// pool of their environment (started on first use), and ends when the
/// input is closed, every notification taken has been settled and every
/// task the sink spawned has ended.
///
/// It holds at most `max_outstanding` notifications (in flight, queued
/// for a connection, or sleeping before a retry): past that it stops
/// reading `input`, so a storm of 429/5xx answers backs up into the
/// core's queue and the durable outbox instead of memory, and the retry
/// rate falls with the backoff.
pub async fn dispatch(
    mut pools_for: impl PoolStarter,
    mut input: mpsc::Receiver<Notification>,
    outcomes: Outcomes,
    limits: Limits,
) {
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        outcomes,
        outstanding: AtomicUsize::new(0),
        idle: Notify::new(),
        max_outstanding: limits.max_outstanding.max(1),
        room: Notify::new(),
        retry_tx,
        max_retries: limits.max_retries,
        max_retry_delay: limits.max_retry_delay.max(RETRY_BASE),
        refused_streak: std::sync::atomic::AtomicU32::new(0),
        tasks: TaskTracker::new(),
    });
    pools_for.started(&shared);
    let mut pools: HashMap<Environment, PoolSender> = HashMap::new();
    let mut open = true;
    loop {
        // Armed before the counter is read, so a last outcome between the
        // check and the select still wakes us.
        let idle = shared.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        let room = shared.room.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        let held = shared.outstanding.load(Ordering::Acquire);
        if !open && held == 0 {
            break;
        }
        let full = held >= shared.max_outstanding;
        let n = tokio::select! {
            biased;
            Some(n) = retry_rx.recv() => n,
            n = input.recv(), if open && !full => match n {
                Some(n) => {
                    let held = shared.outstanding.fetch_add(1, Ordering::AcqRel) + 1;
                    shared.outcomes.holding(held);
                    n
                }
                None => { open = false; continue; }
            },
            _ = &mut idle, if !open => continue,
            _ = &mut room, if open && full => continue,
        };
        let env = n.environment;
        let tx = match pools.get(&env) {
            Some(tx) => tx.clone(),
            None => match pools_for.start_pool(env, shared.clone()) {
                Ok(tx) => {
                    pools.insert(env, tx.clone());
                    tx
                }
                Err(e) => {
                    shared.finish(n, Outcome::dropped(e.to_string()));
                    continue;
                }
            },
        };
        if tx.send(n).await.is_err() {
            break;
        }
    }
    // Dropping the pools' queues ends their workers; connections close
    // once what they hold is settled.
    drop(pools);
    // Stops what the starter runs beside the pools (feedback pollers).
    drop(pools_for);
    wait_for_tasks(&shared, &mut retry_rx).await;
}

/// Wait until every task of the sink has ended. A notification taken back
/// meanwhile (a binary late error response) can no longer be sent: it is
/// settled as expired, so it is counted and logged rather than dropped.
async fn wait_for_tasks(shared: &Shared, retry_rx: &mut mpsc::UnboundedReceiver<Notification>) {
    shared.tasks.close();
    let ended = shared.tasks.wait();
    tokio::pin!(ended);
    loop {
        tokio::select! {
            _ = &mut ended => return,
            Some(n) = retry_rx.recv() => shared.finish(n, Outcome::Expired {
                reason: "the sink stopped before it could be sent again".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use pushbridge_api::DeviceToken;
    use tokio::time::Instant;

    use super::*;
    use crate::outcome::{Completion, CompletionReceiver};

    /// A pool whose one worker hands every notification to `act`, noting
    /// when each attempt arrived.
    struct FakePools<F> {
        act: Arc<F>,
        seen: Arc<StdMutex<Vec<(i64, u32, Instant)>>>,
    }

    impl<F: Fn(&Shared, Notification) + Send + Sync + 'static> PoolStarter for FakePools<F> {
        fn start_pool(&mut self, _env: Environment, shared: Arc<Shared>) -> Result<PoolSender, SinkError> {
            let (tx, rx) = pool_queue();
            let (act, seen) = (self.act.clone(), self.seen.clone());
            shared.tasks.clone().spawn(async move {
                while let Some(n) = next(&rx).await {
                    seen.lock().unwrap().push((n.id, n.attempts, Instant::now()));
                    act(&shared, n);
                }
            });
            Ok(tx)
        }
    }

    fn note(id: i64) -> Notification {
        let token = DeviceToken::parse(&format!("{id:064x}")).unwrap();
        let mut n = Notification::new(id, "com.example.chat", token, Environment::Production, "{}");
        n.expiration = unix_now() + 3600;
        n
    }

    #[tokio::test]
    async fn next_many_waits_for_one_then_takes_what_is_queued() {
        let (tx, rx) = pool_queue();
        let mut got = Vec::new();
        assert_eq!(next_many(&rx, &mut got, 0).await, 0, "room for none");
        for id in 1..=5 {
            tx.send(note(id)).await.unwrap();
        }
        assert_eq!(next_many(&rx, &mut got, 3).await, 3);
        assert_eq!(next_many(&rx, &mut got, 10).await, 2);
        assert_eq!(got.iter().map(|n| n.id).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        // Nothing queued: it waits for the first.
        {
            let waiting = next_many(&rx, &mut got, 10);
            tokio::pin!(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            tx.send(note(6)).await.unwrap();
            assert_eq!(waiting.await, 1);
        }
        drop(tx);
        assert_eq!(next_many(&rx, &mut got, 10).await, 0, "closed and empty");
        assert!(next(&rx).await.is_none());
    }

    /// The workers' `select!`s drop a waiting `next` whenever another branch
    /// wins: a notification must then reach another worker, not be lost
    /// with the dropped wait.
    #[tokio::test]
    async fn a_dropped_wait_passes_its_notification_on() {
        let (tx, rx) = pool_queue();
        // The first waiter registers first: it is the one woken for the
        // notification below.
        let mut first = Box::pin(next(&rx));
        assert!(futures::poll!(first.as_mut()).is_pending());
        let other = rx.clone();
        let second = tokio::spawn(async move { next(&other).await.map(|n| n.id) });
        for _ in 0..10 {
            tokio::task::yield_now().await; // the second waiter registers
        }
        assert!(!second.is_finished());
        tx.send(note(7)).await.unwrap();
        // Woken for it, but dropped before it looked: the second waiter
        // must be woken in its place (it is never polled by this test).
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert_eq!(got.expect("the other waiter was woken").unwrap(), Some(7));
    }

    /// Run the dispatcher over `notes` with `act`; returns the completions
    /// and the attempts seen.
    async fn run<F: Fn(&Shared, Notification) + Send + Sync + 'static>(
        notes: Vec<Notification>,
        limits: Limits,
        act: F,
    ) -> (Vec<Completion>, Vec<(i64, u32, Instant)>) {
        let (outcomes, mut rx, _) = Outcomes::detached("com.example.chat");
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let pools = FakePools {
            act: Arc::new(act),
            seen: seen.clone(),
        };
        let (tx, input) = mpsc::channel(16);
        let task = tokio::spawn(dispatch(pools, input, outcomes, limits));
        for n in notes {
            tx.send(n).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        (drain(&mut rx), seen)
    }

    fn drain(rx: &mut CompletionReceiver) -> Vec<Completion> {
        let mut out = Vec::new();
        rx.drain(&mut out);
        out
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_then_give_up() {
        let limits = Limits {
            max_retries: Some(4),
            max_retry_delay: RETRY_MAX,
            max_outstanding: 100,
        };
        let start = Instant::now();
        let (done, seen) = run(vec![note(1)], limits, |shared, n| {
            shared.retry(n, "503 ServiceUnavailable")
        })
        .await;
        // The first send and 4 retries, each after a longer delay.
        assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        let mut at = start;
        for (k, (_, attempt, when)) in seen.iter().enumerate().skip(1) {
            let waited = when.duration_since(at);
            let full = RETRY_BASE * (1 << (attempt - 1));
            assert!(
                waited >= full / 2 && waited <= full,
                "retry {k}: waited {waited:?}, full {full:?}"
            );
            at = *when;
        }
        match done[0].outcome() {
            Some(Outcome::Expired { reason }) => {
                assert_eq!(reason, "gave up after 4 retries: 503 ServiceUnavailable")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(done.len(), 1, "exactly one outcome");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resend_spends_no_retry_and_waits_for_nothing() {
        let limits = Limits {
            max_retries: Some(0),
            max_retry_delay: RETRY_MAX,
            max_outstanding: 100,
        };
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let start = Instant::now();
        let (done, seen) = run(vec![note(7)], limits, move |shared, n| {
            if first.swap(false, Ordering::SeqCst) {
                shared.resend(n) // e.g. a stream past GOAWAY's last-stream-id
            } else {
                shared.finish(n, Outcome::Delivered)
            }
        })
        .await;
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].1, 0, "no attempt spent");
        assert_eq!(seen[1].2, start, "sent again at once");
        assert_eq!(done[0].outcome(), Some(&Outcome::Delivered));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_notification_is_not_retried() {
        let limits = Limits {
            max_retries: Some(10),
            max_retry_delay: RETRY_MAX,
            max_outstanding: 100,
        };
        let mut n = note(3);
        n.expiration = 1; // long past
        let (done, seen) = run(vec![n], limits, |shared, n| shared.retry(n, "429 TooManyRequests")).await;
        assert_eq!(seen.len(), 1);
        match done[0].outcome() {
            Some(Outcome::Expired { reason }) => assert!(reason.contains("expired while retrying"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn holds_at_most_max_outstanding_and_settles_everything() {
        let limits = Limits {
            max_retries: Some(1000),
            max_retry_delay: RETRY_MAX,
            max_outstanding: 50,
        };
        let (outcomes, mut rx, counters) = Outcomes::detached("com.example.chat");
        let pools = FakePools {
            act: Arc::new(|shared: &Shared, n: Notification| {
                // A 503 storm: five failures each before it passes.
                if n.attempts < 5 {
                    shared.retry(n, "503")
                } else {
                    shared.finish(n, Outcome::Delivered)
                }
            }),
            seen: Arc::new(StdMutex::new(Vec::new())),
        };
        let (tx, input) = mpsc::channel(16);
        let task = tokio::spawn(dispatch(pools, input, outcomes, limits));
        for i in 0..500 {
            tx.send(note(i)).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let peak = counters
            .app("com.example.chat")
            .peak_outstanding
            .load(Ordering::Relaxed);
        assert_eq!(peak, 50, "input is taken up to the cap, never beyond");
        assert_eq!(drain(&mut rx).len(), 500, "every notification settled once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_credential_holds_without_spending_retries() {
        let limits = Limits {
            max_retries: Some(0),
            max_retry_delay: RETRY_MAX,
            max_outstanding: 100,
        };
        let (outcomes, mut rx, counters) = Outcomes::detached("com.example.chat");
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let pools = FakePools {
            act: Arc::new(move |shared: &Shared, n: Notification| {
                if tries.fetch_add(1, Ordering::SeqCst) < 4 {
                    shared.hold(n, "api.push.apple.com:443", "APNS refuses the provider token")
                } else {
                    shared.accepted("api.push.apple.com:443");
                    shared.finish(n, Outcome::Delivered)
                }
            }),
            seen: seen.clone(),
        };
        let (tx, input) = mpsc::channel(16);
        let task = tokio::spawn(dispatch(pools, input, outcomes, limits));
        tx.send(note(1)).await.unwrap();
        drop(tx);
        task.await.unwrap();
        let done = drain(&mut rx);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome(), Some(&Outcome::Delivered), "held, never given up");
        let seen = seen.lock().unwrap().clone();
        assert!(seen.iter().all(|s| s.1 == 0), "no retry spent: {seen:?}");
        // The delay between tries grows.
        let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].2.duration_since(w[0].2)).collect();
        assert_eq!(gaps.len(), 4);
        assert!(gaps[0] <= HOLD_BASE && gaps[3] >= HOLD_BASE * 4, "{gaps:?}");
        let c = counters.app("com.example.chat");
        assert_eq!(c.credential_refusals.load(Ordering::Relaxed), 1, "one state change");
        assert!(c.credential.refused().is_empty(), "accepted again");
    }

    #[test]
    fn retry_policy_defaults_to_until_expiration_with_a_60_s_cap() {
        let p = RetryPolicy::from_config(None, None).unwrap();
        assert_eq!((p.max_retries, p.max_delay), (None, RETRY_MAX));
        let p = RetryPolicy::from_config(Some(3), Some(5)).unwrap();
        assert_eq!((p.max_retries, p.max_delay), (Some(3), Duration::from_secs(5)));
        for bad in [0, 3601] {
            let e = RetryPolicy::from_config(None, Some(bad)).unwrap_err().to_string();
            assert!(e.starts_with("max_retry_delay:"), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_max_retries_a_transient_failure_is_retried_until_expiration() {
        let limits = RetryPolicy::from_config(None, Some(1)).unwrap().limits(10);
        let (outcomes, mut rx, _) = Outcomes::detached("com.example.chat");
        let tries = Arc::new(AtomicUsize::new(0));
        let pools = FakePools {
            act: Arc::new({
                let tries = tries.clone();
                move |shared: &Shared, n: Notification| {
                    // 503 for the first 100 tries, then accepted.
                    if tries.fetch_add(1, Ordering::Relaxed) < 100 {
                        shared.retry(n, "503 ServiceUnavailable")
                    } else {
                        shared.finish(n, Outcome::Delivered)
                    }
                }
            }),
            seen: Arc::new(StdMutex::new(Vec::new())),
        };
        let (tx, input) = mpsc::channel(1);
        let task = tokio::spawn(dispatch(pools, input, outcomes, limits));
        let mut n = note(1);
        n.expiration = unix_now() + 3600;
        tx.send(n).await.unwrap();
        drop(tx);
        task.await.unwrap();
        let done = drain(&mut rx);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome(), Some(&Outcome::Delivered), "{done:?}");
        assert_eq!(tries.load(Ordering::Relaxed), 101);
    }
}
