//! `protocol = "http2"`: Apple's HTTP/2 provider API.
//!
//! Shape of the sink:
//!
//! ```text
//!  input ──► dispatcher ──► pool[production] ──► connection workers (N) ──► streams
//!              ▲   │                                 │
//!              │   └──► pool[sandbox] (on first use) │ answers
//!              └──────── retries (after a delay) ◄───┘──► reports
//! ```
//!
//! A device's notifications go to the host of the environment it was
//! registered with (the app's `environment` is the default for devices
//! that did not say); `endpoint` replaces both hosts. Each pool holds
//! `connections` long-lived connections; a worker keeps as many streams
//! open as the server's `SETTINGS_MAX_CONCURRENT_STREAMS` allows (h2
//! enforces it), capped by [`MAX_IN_FLIGHT`] per connection.
//!
//! Every notification taken from the input ends in exactly one report:
//! delivered; rejected (logged, and the device removed for 410,
//! `BadDeviceToken`, `DeviceTokenNotForTopic`); or expired (its
//! `apns-expiration` passed, or `max_retries` transient failures). Retries
//! (429, 500, 503, streams lost with a connection) wait with exponential
//! backoff. Until a report, the notification stays in the outbox: a crash
//! re-sends it on the next start.

pub mod conn;
pub mod jwt;
pub mod request;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pushbridge_api::Environment;
use tokio::sync::{mpsc, oneshot, Mutex, Notify, Semaphore};

use self::conn::{Answer, Target};
use self::jwt::JwtSigner;
use super::{BoxFuture, Notification, Outcome, Report, ReportSender, Sink, SinkReport};
use crate::apns::{classify, Action, Reason};
use crate::backoff::Backoff;
use crate::config::AppConfig;

/// Streams one connection keeps open at most (the server's limit applies
/// when lower).
pub const MAX_IN_FLIGHT: usize = 2000;
/// Queue between the dispatcher and a pool's workers.
const POOL_QUEUE: usize = 4096;
/// First retry delay; doubles per attempt up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Reconnect backoff.
const RECONNECT_BASE: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(60);

/// How the sink proves who it is.
#[derive(Clone)]
pub enum Auth {
    /// Token auth: a provider JWT on every request.
    Token(Arc<JwtSigner>),
    /// Certificate auth: the client certificate in the TLS config.
    Certificate,
}

/// Everything needed to talk to APNS for one app, checked.
#[derive(Clone)]
pub struct Http2Setup {
    pub tls: Arc<rustls::ClientConfig>,
    pub auth: Auth,
    /// `endpoint` override, or Apple's host per environment.
    pub endpoint: Option<String>,
}

impl Http2Setup {
    /// Load and check an app's credentials; errors name the key or file.
    pub fn from_app(app: &AppConfig) -> Result<Self, String> {
        let token_keys = app.key_file.is_some() || app.key_id.is_some() || app.team_id.is_some();
        let cert_keys = app.cert_file.is_some() || app.private_key_file.is_some();
        let p12_keys = app.pkcs12_file.is_some() || app.pkcs12_password.is_some();
        if [token_keys, cert_keys, p12_keys].iter().filter(|b| **b).count() > 1 {
            return Err("choose one way to authenticate: key_file + key_id + team_id (token), \
                 cert_file [+ private_key_file] (certificate), or pkcs12_file [+ pkcs12_password]"
                .into());
        }
        let (auth, identity) = if token_keys {
            let key_file = app
                .key_file
                .as_deref()
                .ok_or("token auth needs key_file (the .p8 key from Apple)")?;
            let key_id = app.key_id.as_deref().ok_or("token auth needs key_id (10 characters)")?;
            let team_id = app
                .team_id
                .as_deref()
                .ok_or("token auth needs team_id (10 characters)")?;
            let signer = JwtSigner::from_p8_file(key_file, key_id, team_id).map_err(|e| e.to_string())?;
            (Auth::Token(Arc::new(signer)), None)
        } else if cert_keys {
            let cert = app
                .cert_file
                .as_deref()
                .ok_or("private_key_file needs cert_file (the certificate it belongs to)")?;
            let id = crate::tls::load_identity(cert, app.private_key_file.as_deref())
                .map_err(|e| format!("certificate auth: {e}"))?;
            (Auth::Certificate, Some(id))
        } else if p12_keys {
            let file = app.pkcs12_file.as_deref().ok_or("pkcs12_password needs pkcs12_file")?;
            let id = crate::tls::load_pkcs12(file, app.pkcs12_password.as_deref().unwrap_or(""))
                .map_err(|e| format!("certificate auth: {e}"))?;
            (Auth::Certificate, Some(id))
        } else {
            return Err("http2 needs credentials: key_file + key_id + team_id (token auth), \
                 cert_file [+ private_key_file] or pkcs12_file (certificate auth)"
                .into());
        };
        let tls = crate::tls::client_config(app.ca_file.as_deref(), identity, &[b"h2"])
            .map_err(|e| format!("TLS setup: {e}"))?;
        if let Some(ep) = &app.endpoint {
            Target::parse(ep)?;
        }
        Ok(Self {
            tls: Arc::new(tls),
            auth,
            endpoint: app.endpoint.clone(),
        })
    }

    /// Where notifications for devices of `env` go.
    pub fn target(&self, env: Environment) -> Result<Target, String> {
        match &self.endpoint {
            Some(ep) => Target::parse(ep),
            None => Target::parse(crate::apns::http2_host(env)),
        }
    }
}

/// Counters of one sink, for logs and the benchmark.
#[derive(Debug, Default)]
pub struct Http2Stats {
    pub delivered: AtomicU64,
    pub devices_removed: AtomicU64,
    pub rejected: AtomicU64,
    pub expired: AtomicU64,
    pub retried: AtomicU64,
    pub connects: AtomicU64,
}

/// The sink.
pub struct Http2Sink {
    setup: Http2Setup,
    connections: usize,
    max_retries: u32,
    stats: Arc<Http2Stats>,
}

impl Http2Sink {
    pub fn from_app(app: &AppConfig) -> Result<Self, String> {
        Ok(Self::new(Http2Setup::from_app(app)?, app.connections, app.max_retries))
    }

    pub fn new(setup: Http2Setup, connections: usize, max_retries: u32) -> Self {
        Self {
            setup,
            connections: connections.max(1),
            max_retries,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<Http2Stats> {
        self.stats.clone()
    }
}

/// A notification on its way, with what happened to it so far.
struct Job {
    n: Notification,
    attempts: u32,
    apns_id: Arc<str>,
}

/// State shared by the dispatcher, the workers and the stream tasks.
struct Shared {
    reports: ReportSender,
    /// Taken from the input, not yet reported.
    outstanding: AtomicUsize,
    idle: Notify,
    retry_tx: mpsc::UnboundedSender<Job>,
    auth: Auth,
    max_retries: u32,
    stats: Arc<Http2Stats>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    fn finish(&self, job: Job, outcome: Outcome) {
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
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Send again after a backoff delay, unless retries or time ran out.
    fn retry(self: &Arc<Self>, mut job: Job, why: &str) {
        job.attempts += 1;
        if job.attempts > self.max_retries {
            tracing::warn!(apns_id = %job.apns_id, token = job.n.token.short(), reason = why, "giving up after {} retries", self.max_retries);
            let reason = format!("gave up after {} retries: {why}", self.max_retries);
            return self.finish(job, Outcome::Expired { reason });
        }
        if job.n.expired_at(unix_now()) {
            return self.finish(
                job,
                Outcome::Expired {
                    reason: format!("expired while retrying: {why}"),
                },
            );
        }
        self.stats.retried.fetch_add(1, Ordering::Relaxed);
        let exp = RETRY_BASE
            .saturating_mul(1 << (job.attempts - 1).min(16))
            .min(RETRY_MAX);
        let delay = Backoff::jitter(exp);
        tracing::debug!(apns_id = %job.apns_id, attempt = job.attempts, reason = why, ?delay, "retrying");
        let tx = self.retry_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(job);
        });
    }

    /// Act on Apple's answer.
    fn answer(self: &Arc<Self>, job: Job, answer: Answer, bearer: Option<&str>) {
        let (reason, ts) = match &answer.error {
            Some(e) => (e.reason.clone(), e.timestamp_ms),
            None => (Reason::Other(String::new()), None),
        };
        match classify(answer.status, &reason) {
            Action::Delivered => {
                tracing::trace!(apns_id = %job.apns_id, token = job.n.token.short(), "delivered");
                self.finish(job, Outcome::Delivered)
            }
            Action::RemoveDevice => {
                tracing::info!(apns_id = %job.apns_id, token = job.n.token.short(), status = answer.status, %reason, "APNS says the device is gone; removing it");
                let outcome = Outcome::Rejected {
                    reason: format!("{} {reason}", answer.status),
                    remove_device: true,
                    since_ms: ts,
                };
                self.finish(job, outcome)
            }
            Action::RefreshToken => {
                if let (Auth::Token(signer), Some(used)) = (&self.auth, bearer) {
                    signer.expired(used);
                }
                self.retry(job, reason.as_str())
            }
            Action::Retry => {
                let why = format!("{} {reason}", answer.status);
                self.retry(job, &why)
            }
            Action::Drop => {
                tracing::warn!(apns_id = %job.apns_id, token = job.n.token.short(), status = answer.status, %reason, "APNS rejected the notification");
                let outcome = Outcome::Rejected {
                    reason: format!("{} {reason}", answer.status),
                    remove_device: false,
                    since_ms: None,
                };
                self.finish(job, outcome)
            }
        }
    }
}

impl Sink for Http2Sink {
    fn run(self: Box<Self>, input: mpsc::Receiver<Notification>, reports: ReportSender) -> BoxFuture {
        Box::pin(dispatch(*self, input, reports))
    }
}

/// The dispatcher: takes notifications and retries, routes them to the
/// pool of their environment, and ends when the input is closed and every
/// notification taken has been reported.
async fn dispatch(sink: Http2Sink, mut input: mpsc::Receiver<Notification>, reports: ReportSender) {
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        reports,
        outstanding: AtomicUsize::new(0),
        idle: Notify::new(),
        retry_tx,
        auth: sink.setup.auth.clone(),
        max_retries: sink.max_retries,
        stats: sink.stats.clone(),
    });
    let prefix = process_prefix();
    let mut pools: HashMap<Environment, mpsc::Sender<Job>> = HashMap::new();
    let mut open = true;
    loop {
        // Armed before the counter is read, so a last report between the
        // check and the select still wakes us.
        let idle = shared.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if !open && shared.outstanding.load(Ordering::Acquire) == 0 {
            break;
        }
        let job = tokio::select! {
            biased;
            Some(job) = retry_rx.recv() => job,
            n = input.recv(), if open => match n {
                Some(n) => {
                    shared.outstanding.fetch_add(1, Ordering::AcqRel);
                    let apns_id = request::apns_id(prefix, n.id).into();
                    Job { n, attempts: 0, apns_id }
                }
                None => { open = false; continue; }
            },
            _ = &mut idle, if !open => continue,
        };
        let env = job.n.environment;
        let tx = match pools.get(&env) {
            Some(tx) => tx.clone(),
            None => match sink.setup.target(env) {
                Ok(target) => {
                    let tx = start_pool(target, &sink, shared.clone());
                    pools.insert(env, tx.clone());
                    tx
                }
                Err(e) => {
                    shared.finish(
                        job,
                        Outcome::Rejected {
                            reason: e,
                            remove_device: false,
                            since_ms: None,
                        },
                    );
                    continue;
                }
            },
        };
        if tx.send(job).await.is_err() {
            break;
        }
    }
    // Dropping the pools' queues ends their workers; connections close
    // once their streams are answered.
    drop(pools);
}

/// A random per-process prefix for our `apns-id`s.
fn process_prefix() -> u64 {
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Start `connections` workers for one host; returns their queue.
fn start_pool(target: Target, sink: &Http2Sink, shared: Arc<Shared>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(POOL_QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    let connector = conn::connector(sink.setup.tls.clone());
    tracing::info!(endpoint = %target.authority, connections = sink.connections, "APNS pool starting");
    for index in 0..sink.connections {
        tokio::spawn(worker(
            index,
            target.clone(),
            connector.clone(),
            rx.clone(),
            shared.clone(),
        ));
    }
    tx
}

async fn next_job(rx: &Mutex<mpsc::Receiver<Job>>) -> Option<Job> {
    rx.lock().await.recv().await
}

/// One connection's life: connect when there is work, stream notifications
/// until the connection ends, reconnect with backoff.
async fn worker(
    index: usize,
    target: Target,
    connector: tokio_rustls::TlsConnector,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    shared: Arc<Shared>,
) {
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
    let mut carry: Option<Job> = None;
    loop {
        if carry.is_none() {
            carry = next_job(&rx).await;
            if carry.is_none() {
                return; // the sink is done
            }
        }
        shared.stats.connects.fetch_add(1, Ordering::Relaxed);
        match conn::connect(&target, &connector).await {
            Ok(c) => {
                tracing::info!(endpoint = %target.authority, connection = index, "APNS connection up");
                let (left, answered) = stream_jobs(c, &target.authority, carry.take(), &rx, &shared).await;
                carry = left;
                if answered {
                    backoff.reset();
                    continue;
                }
            }
            Err(e) => tracing::warn!(connection = index, error = %e, "cannot reach APNS"),
        }
        if let Some(job) = carry.take() {
            if job.n.expired_at(unix_now()) {
                shared.finish(
                    job,
                    Outcome::Expired {
                        reason: "expired while APNS was unreachable".into(),
                    },
                );
            } else {
                carry = Some(job);
            }
        }
        let delay = backoff.next_delay();
        tracing::debug!(connection = index, ?delay, "reconnecting after delay");
        tokio::time::sleep(delay).await;
    }
}

/// Send jobs over one connection until it ends. Returns the job it held
/// but could not send, and whether the connection answered anything.
async fn stream_jobs(
    c: conn::Conn,
    authority: &str,
    mut carry: Option<Job>,
    rx: &Mutex<mpsc::Receiver<Job>>,
    shared: &Arc<Shared>,
) -> (Option<Job>, bool) {
    let conn::Conn { mut send, closed } = c;
    let window = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // With token auth Apple allows one stream until a request with a valid
    // token succeeded: the first request goes alone.
    let mut primed = matches!(shared.auth, Auth::Certificate);
    loop {
        let job = match carry.take() {
            Some(j) => j,
            None => tokio::select! {
                j = next_job(rx) => match j { Some(j) => j, None => return (None, answered.load(Ordering::Relaxed)) },
                _ = closed.cancelled() => return (None, answered.load(Ordering::Relaxed)),
            },
        };
        let permit = tokio::select! {
            p = window.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return (Some(job), false) },
            _ = closed.cancelled() => return (Some(job), answered.load(Ordering::Relaxed)),
        };
        // Wait for a free stream slot (h2 honours SETTINGS_MAX_CONCURRENT_STREAMS).
        let ready = tokio::select! {
            r = send.clone().ready() => r,
            _ = closed.cancelled() => return (Some(job), answered.load(Ordering::Relaxed)),
        };
        send = match ready {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "connection refuses new streams (GOAWAY or closed)");
                return (Some(job), answered.load(Ordering::Relaxed));
            }
        };
        if job.n.expired_at(unix_now()) {
            shared.finish(
                job,
                Outcome::Expired {
                    reason: "expired before it could be sent".into(),
                },
            );
            continue;
        }
        let bearer = match &shared.auth {
            Auth::Token(s) => Some(s.token()),
            Auth::Certificate => None,
        };
        let req = match request::build(&job.n, authority, &job.apns_id, bearer.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(apns_id = %job.apns_id, reason, "notification cannot be sent");
                shared.finish(
                    job,
                    Outcome::Rejected {
                        reason,
                        remove_device: false,
                        since_ms: None,
                    },
                );
                continue;
            }
        };
        let (resp, mut body) = match send.send_request(req, false) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open stream");
                return (Some(job), answered.load(Ordering::Relaxed));
            }
        };
        let payload = Bytes::copy_from_slice(job.n.payload.as_bytes());
        if let Err(e) = body.send_data(payload, true) {
            tracing::debug!(error = %e, "stream lost while sending");
            // The response future reports the loss below.
        }
        let (done_tx, done_rx) = oneshot::channel();
        let shared2 = shared.clone();
        let answered2 = answered.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match conn::read_answer(resp).await {
                Ok(a) => {
                    answered2.store(true, Ordering::Relaxed);
                    let ok = a.status == 200;
                    shared2.answer(job, a, bearer.as_deref());
                    let _ = done_tx.send(ok);
                }
                Err(e) => {
                    shared2.retry(job, &format!("stream lost: {e}"));
                    let _ = done_tx.send(false);
                }
            }
        });
        if !primed {
            // Wait for the first answer before opening more streams.
            tokio::select! {
                ok = done_rx => primed = ok.unwrap_or(false),
                _ = closed.cancelled() => return (None, answered.load(Ordering::Relaxed)),
            }
        }
    }
}

/// Sink checks for `pushbridge check` and start-up.
pub fn check(app: &AppConfig) -> Result<(), String> {
    Http2Setup::from_app(app).map(|_| ())
}

/// Send one notification on a fresh connection and return Apple's answer
/// (`pushbridge push`). `apns_id`: the id to send.
pub async fn send_one(setup: &Http2Setup, n: &Notification, apns_id: &str) -> Result<Answer, String> {
    let target = setup.target(n.environment)?;
    let c = conn::connect(&target, &conn::connector(setup.tls.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let bearer = match &setup.auth {
        Auth::Token(s) => Some(s.token()),
        Auth::Certificate => None,
    };
    let req = request::build(n, &target.authority, apns_id, bearer.as_deref()).map_err(|e| e.to_string())?;
    let mut send = c.send.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
    let (resp, mut body) = send.send_request(req, false).map_err(|e| format!("HTTP/2: {e}"))?;
    body.send_data(Bytes::copy_from_slice(n.payload.as_bytes()), true)
        .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::time::timeout(conn::CONNECT_TIMEOUT, conn::read_answer(resp))
        .await
        .map_err(|_| "no answer from APNS within 10 s".to_owned())?
        .map_err(|e| format!("HTTP/2: {e}"))
}
