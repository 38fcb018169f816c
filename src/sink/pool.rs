//! What the APNS sinks (HTTP/2 and binary) share: the dispatcher that
//! routes notifications to a pool of connections per APNS environment, the
//! accounting that gives every notification exactly one report, and
//! retries with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushbridge_api::Environment;
use tokio::sync::{mpsc, Mutex, Notify};

use super::{Notification, Outcome, Report, ReportSender, SinkReport};
use pushbridge_kit::Backoff;

/// First retry delay; doubles per attempt up to [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_millis(200);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Queue between the dispatcher and a pool's workers.
pub const POOL_QUEUE: usize = 4096;

/// Counters of one sink, for logs and the benchmarks.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub delivered: AtomicU64,
    pub devices_removed: AtomicU64,
    pub rejected: AtomicU64,
    pub expired: AtomicU64,
    pub retried: AtomicU64,
    /// Sent, then lost with their connection before an answer came: APNS
    /// may have taken them, so their re-sends may arrive twice.
    pub lost: AtomicU64,
    pub connects: AtomicU64,
    /// Most notifications held at once (in flight, queued or waiting for
    /// a retry); never above the dispatcher's limit.
    pub peak_outstanding: AtomicU64,
}

impl SinkStats {
    /// One log line with every counter.
    pub fn log(&self, topic: &str, protocol: &str) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            topic,
            protocol,
            delivered = g(&self.delivered),
            devices_removed = g(&self.devices_removed),
            rejected = g(&self.rejected),
            expired = g(&self.expired),
            retried = g(&self.retried),
            lost = g(&self.lost),
            connects = g(&self.connects),
            "sink stopped"
        );
    }
}

/// A notification on its way, with what happened to it so far.
pub struct Job {
    pub n: Notification,
    pub attempts: u32,
    /// How logs name it (the HTTP/2 `apns-id`, the binary identifier).
    pub label: Arc<str>,
    /// Already reported delivered once (its outbox row is gone) and taken
    /// back because APNS said otherwise later: a second "delivered" is not
    /// reported again.
    pub reported: bool,
}

/// A pool's queue, shared by its connection workers.
pub type JobQueue = Arc<Mutex<mpsc::Receiver<Job>>>;

/// The next job for a worker; `None` when the sink is done.
pub async fn next_job(rx: &Mutex<mpsc::Receiver<Job>>) -> Option<Job> {
    rx.lock().await.recv().await
}

/// Up to `max` jobs at once (at least one, waiting for it).
pub async fn next_jobs(rx: &Mutex<mpsc::Receiver<Job>>, into: &mut Vec<Job>, max: usize) -> usize {
    rx.lock().await.recv_many(into, max).await
}

/// State shared by the dispatcher, the workers and their tasks.
pub struct Shared {
    reports: ReportSender,
    /// Taken from the input, not yet reported.
    outstanding: AtomicUsize,
    idle: Notify,
    /// Most `outstanding` allowed: the dispatcher stops taking input there.
    max_outstanding: usize,
    room: Notify,
    retry_tx: mpsc::UnboundedSender<Job>,
    max_retries: u32,
    pub stats: Arc<SinkStats>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    /// Report the final outcome of a job.
    pub fn finish(&self, job: Job, outcome: Outcome) {
        drop(self.finish_keep(job, outcome));
    }

    /// [`Shared::finish`], handing the notification back (the binary sink
    /// remembers what it reported delivered, for late error responses).
    pub fn finish_keep(&self, job: Job, outcome: Outcome) -> Notification {
        if job.reported && outcome == Outcome::Delivered {
            self.release();
            return job.n;
        }
        let counter = match &outcome {
            Outcome::Delivered => &self.stats.delivered,
            Outcome::Rejected {
                remove_device: true, ..
            } => &self.stats.devices_removed,
            Outcome::Rejected { .. } => &self.stats.rejected,
            Outcome::Expired { .. } => &self.stats.expired,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let _ = self.reports.send(SinkReport::Done(Report::new(&job.n, outcome)));
        self.release();
        job.n
    }

    /// Take back a notification already reported delivered, to send it
    /// again: it is held (and will be reported) like a new one.
    pub fn take_back(&self, n: Notification, label: Arc<str>) -> Job {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Job {
            n,
            attempts: 0,
            label,
            reported: true,
        }
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

    /// Report a device gone outside any notification (feedback service).
    pub fn device_gone(&self, report: SinkReport) {
        let _ = self.reports.send(report);
    }

    /// Expire the job if its time has passed; otherwise hand it back.
    pub fn unless_expired(&self, job: Job, why: &str) -> Option<Job> {
        if job.n.expired_at(unix_now()) {
            self.finish(job, Outcome::Expired { reason: why.to_owned() });
            None
        } else {
            Some(job)
        }
    }

    /// Send again now, without counting an attempt: for notifications APNS
    /// provably never processed (streams past a GOAWAY, refused streams).
    pub fn resend(&self, job: Job) {
        if let Some(job) = self.unless_expired(job, "expired before it could be sent") {
            let _ = self.retry_tx.send(job);
        }
    }

    /// Send again after a backoff delay, unless retries or time ran out.
    pub fn retry(self: &Arc<Self>, mut job: Job, why: &str) {
        job.attempts += 1;
        if job.attempts > self.max_retries {
            tracing::warn!(id = %job.label, token = job.n.token.short(), reason = why, "giving up after {} retries", self.max_retries);
            let reason = format!("gave up after {} retries: {why}", self.max_retries);
            return self.finish(job, Outcome::Expired { reason });
        }
        let Some(job) = self.unless_expired(job, &format!("expired while retrying: {why}")) else {
            return;
        };
        self.stats.retried.fetch_add(1, Ordering::Relaxed);
        let exp = RETRY_BASE
            .saturating_mul(1 << (job.attempts - 1).min(16))
            .min(RETRY_MAX);
        let delay = Backoff::jitter(exp);
        tracing::debug!(id = %job.label, attempt = job.attempts, reason = why, ?delay, "retrying");
        let tx = self.retry_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(job);
        });
    }
}

/// Starts the pool of connections for one environment: returns its queue.
pub trait PoolStarter {
    /// Called once when the sink starts (feedback pollers, …).
    fn started(&mut self, _shared: &Arc<Shared>) {}
    fn start_pool(&mut self, env: Environment, shared: Arc<Shared>) -> Result<mpsc::Sender<Job>, String>;
    /// How logs name a notification.
    fn label(&self, n: &Notification) -> Arc<str>;
}

/// The dispatcher: takes notifications and retries, routes them to the
/// pool of their environment (started on first use), and ends when the
/// input is closed and every notification taken has been reported.
///
/// It holds at most `max_outstanding` notifications (in flight, queued
/// for a connection, or sleeping before a retry): past that it stops
/// reading `input`, so a storm of 429/5xx answers backs up into the
/// core's queue and the durable outbox instead of memory, and the retry
/// rate falls with the backoff.
pub async fn dispatch(
    mut pools_for: impl PoolStarter,
    mut input: mpsc::Receiver<Notification>,
    reports: ReportSender,
    max_retries: u32,
    max_outstanding: usize,
    stats: Arc<SinkStats>,
) {
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        reports,
        outstanding: AtomicUsize::new(0),
        idle: Notify::new(),
        max_outstanding: max_outstanding.max(1),
        room: Notify::new(),
        retry_tx,
        max_retries,
        stats,
    });
    pools_for.started(&shared);
    let mut pools: HashMap<Environment, mpsc::Sender<Job>> = HashMap::new();
    let mut open = true;
    loop {
        // Armed before the counter is read, so a last report between the
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
        let job = tokio::select! {
            biased;
            Some(job) = retry_rx.recv() => job,
            n = input.recv(), if open && !full => match n {
                Some(n) => {
                    let held = shared.outstanding.fetch_add(1, Ordering::AcqRel) + 1;
                    shared.stats.peak_outstanding.fetch_max(held as u64, Ordering::Relaxed);
                    let label = pools_for.label(&n);
                    Job {
                        n,
                        attempts: 0,
                        label,
                        reported: false,
                    }
                }
                None => { open = false; continue; }
            },
            _ = &mut idle, if !open => continue,
            _ = &mut room, if open && full => continue,
        };
        let env = job.n.environment;
        let tx = match pools.get(&env) {
            Some(tx) => tx.clone(),
            None => match pools_for.start_pool(env, shared.clone()) {
                Ok(tx) => {
                    pools.insert(env, tx.clone());
                    tx
                }
                Err(reason) => {
                    shared.finish(job, Outcome::dropped(reason));
                    continue;
                }
            },
        };
        if tx.send(job).await.is_err() {
            break;
        }
    }
    // Dropping the pools' queues ends their workers; connections close
    // once what they hold is settled.
    drop(pools);
}
