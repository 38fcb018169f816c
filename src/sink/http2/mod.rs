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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use pushbridge_api::Environment;
use tokio::sync::{mpsc, Mutex};

use self::conn::{Answer, Target};
use self::jwt::JwtSigner;
use super::pool::{dispatch, next_job, Job, JobQueue, PoolStarter, Shared, SinkStats, POOL_QUEUE};
use super::{BoxFuture, Notification, Outcome, ReportSender, Sink};
use crate::apns::{classify, Action, Reason};
use crate::config::AppConfig;
use pushbridge_kit::Backoff;

/// Streams one connection keeps open at most (the server's limit applies
/// when lower).
pub const MAX_IN_FLIGHT: usize = 2000;
/// A stream APNS has not answered by then is reset and retried (the
/// connection may still answer PINGs while a stream hangs).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
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
    /// Keep-alive PING interval (`ping_interval`).
    pub ping_interval: Duration,
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
        let ping_interval = match app.ping_interval {
            None => conn::PING_EVERY,
            Some(s @ 1..=3600) => Duration::from_secs(s),
            Some(s) => return Err(format!("ping_interval = {s}: use 1 to 3600 seconds")),
        };
        Ok(Self {
            tls: Arc::new(tls),
            auth,
            endpoint: app.endpoint.clone(),
            ping_interval,
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

/// The sink.
pub struct Http2Sink {
    setup: Http2Setup,
    topic: String,
    connections: usize,
    max_retries: u32,
    stats: Arc<SinkStats>,
}

impl Http2Sink {
    pub fn from_app(app: &AppConfig) -> Result<Self, String> {
        Ok(Self::new(
            Http2Setup::from_app(app)?,
            &app.topic,
            app.connections,
            app.max_retries,
        ))
    }

    pub fn new(setup: Http2Setup, topic: &str, connections: usize, max_retries: u32) -> Self {
        Self {
            setup,
            topic: topic.to_owned(),
            connections: connections.max(1),
            max_retries,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }
}

/// Act on Apple's answer.
fn answer(shared: &Arc<Shared>, auth: &Auth, job: Job, answer: Answer, bearer: Option<&str>) {
    let (reason, ts) = match &answer.error {
        Some(e) => (e.reason.clone(), e.timestamp_ms),
        None => (Reason::Other(String::new()), None),
    };
    match classify(answer.status, &reason) {
        Action::Delivered => {
            tracing::trace!(apns_id = %job.label, token = job.n.token.short(), "delivered");
            shared.finish(job, Outcome::Delivered)
        }
        Action::RemoveDevice => {
            tracing::info!(apns_id = %job.label, token = job.n.token.short(), status = answer.status, %reason, "APNS says the device is gone; removing it");
            let outcome = Outcome::Rejected {
                reason: format!("{} {reason}", answer.status),
                remove_device: true,
                since_ms: ts,
            };
            shared.finish(job, outcome)
        }
        Action::RefreshToken => {
            if let (Auth::Token(signer), Some(used)) = (auth, bearer) {
                signer.expired(used);
            }
            shared.retry(job, reason.as_str())
        }
        Action::Retry => {
            let why = format!("{} {reason}", answer.status);
            shared.retry(job, &why)
        }
        Action::Drop => {
            tracing::warn!(apns_id = %job.label, token = job.n.token.short(), status = answer.status, %reason, "APNS rejected the notification");
            let outcome = Outcome::dropped(format!("{} {reason}", answer.status));
            shared.finish(job, outcome)
        }
    }
}

impl Sink for Http2Sink {
    fn run(self: Box<Self>, input: mpsc::Receiver<Notification>, reports: ReportSender) -> BoxFuture {
        Box::pin(async move {
            let pools = Pools {
                sink: &self,
                prefix: process_prefix(),
            };
            let (max_retries, stats) = (self.max_retries, self.stats.clone());
            // Room for every connection's streams plus a queue's worth, in
            // both environments.
            let max_outstanding = 2 * (self.connections * MAX_IN_FLIGHT + POOL_QUEUE);
            dispatch(pools, input, reports, max_retries, max_outstanding, stats).await;
            self.stats.log(&self.topic, "http2");
        })
    }
}

/// Starts pools for the dispatcher.
struct Pools<'a> {
    sink: &'a Http2Sink,
    prefix: u64,
}

impl PoolStarter for Pools<'_> {
    fn start_pool(&mut self, env: Environment, shared: Arc<Shared>) -> Result<mpsc::Sender<Job>, String> {
        Ok(start_pool(self.sink.setup.target(env)?, self.sink, shared))
    }

    fn label(&self, n: &Notification) -> Arc<str> {
        request::apns_id(self.prefix, n.id).into()
    }
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
    let auth = sink.setup.auth.clone();
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
            auth.clone(),
            sink.setup.ping_interval,
        ));
    }
    tx
}

/// One connection's life: connect when there is work, stream notifications
/// until the connection ends, reconnect with backoff.
async fn worker(
    index: usize,
    target: Target,
    connector: tokio_rustls::TlsConnector,
    rx: JobQueue,
    shared: Arc<Shared>,
    auth: Auth,
    ping_interval: Duration,
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
        match conn::connect(&target, &connector, ping_interval).await {
            Ok(c) => {
                tracing::info!(endpoint = %target.authority, connection = index, "APNS connection up");
                let (left, answered) = stream_jobs(c, &target.authority, carry.take(), &rx, &shared, &auth).await;
                carry = left;
                if answered {
                    backoff.reset();
                    continue;
                }
            }
            Err(e) => tracing::warn!(connection = index, error = %e, "cannot reach APNS"),
        }
        if let Some(job) = carry.take() {
            carry = shared.unless_expired(job, "expired while APNS was unreachable");
        }
        let delay = backoff.next_delay();
        tracing::debug!(connection = index, ?delay, "reconnecting after delay");
        tokio::time::sleep(delay).await;
    }
}

/// How one stream ended.
struct Settled {
    /// APNS answered it.
    answered: bool,
    /// APNS checked the token: delivered, or refused for a reason about
    /// the notification itself.
    token_ok: bool,
}

/// The streams of one connection waiting for their answers.
type InFlight = FuturesUnordered<futures::future::BoxFuture<'static, Settled>>;

/// Send jobs over one connection until it ends. Returns the job it held
/// but could not send, and whether the connection answered anything.
///
/// Answers are read inside this task (not a task per stream): the answers
/// of one read are handled in one go. Streams still open when it returns
/// are left to finish in a task of their own.
async fn stream_jobs(
    c: conn::Conn,
    authority: &str,
    carry: Option<Job>,
    rx: &Mutex<mpsc::Receiver<Job>>,
    shared: &Arc<Shared>,
    auth: &Auth,
) -> (Option<Job>, bool) {
    let mut inflight = InFlight::new();
    let mut answered = false;
    let left = send_jobs(c, authority, carry, rx, shared, auth, &mut inflight, &mut answered).await;
    // Answers already here count for this connection.
    std::future::poll_fn(|cx| {
        settle_ready(&mut inflight, &mut answered, cx);
        Poll::Ready(())
    })
    .await;
    if !inflight.is_empty() {
        tokio::spawn(async move { while inflight.next().await.is_some() {} });
    }
    (left, answered)
}

/// Handle the answers that came; never completes (a branch of the
/// `select!`s below that keeps the open streams going).
async fn settle(inflight: &mut InFlight, answered: &mut bool) -> std::convert::Infallible {
    std::future::poll_fn(|cx| {
        settle_ready(inflight, answered, cx);
        Poll::Pending
    })
    .await
}

/// Handle the answers that came (those FuturesUnordered hands out in one go).
fn settle_ready(inflight: &mut InFlight, answered: &mut bool, cx: &mut std::task::Context<'_>) {
    while let Poll::Ready(Some(s)) = inflight.poll_next_unpin(cx) {
        *answered |= s.answered;
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_jobs(
    c: conn::Conn,
    authority: &str,
    mut carry: Option<Job>,
    rx: &Mutex<mpsc::Receiver<Job>>,
    shared: &Arc<Shared>,
    auth: &Auth,
    inflight: &mut InFlight,
    answered: &mut bool,
) -> Option<Job> {
    let conn::Conn { mut send, closed } = c;
    // With token auth Apple allows one stream until a request with a valid
    // token succeeded: the first request goes alone.
    let mut primed = matches!(auth, Auth::Certificate);
    let mut requests = request::RequestBuilder::new(authority);
    loop {
        let job = match carry.take() {
            Some(j) => j,
            None => tokio::select! {
                j = next_job(rx) => j?,
                _ = closed.cancelled() => return None,
                x = settle(inflight, answered) => match x {},
            },
        };
        while inflight.len() >= MAX_IN_FLIGHT {
            tokio::select! {
                s = inflight.next() => if let Some(s) = s { *answered |= s.answered },
                _ = closed.cancelled() => return Some(job),
            }
        }
        // Wait for a free stream slot (h2 honours SETTINGS_MAX_CONCURRENT_STREAMS).
        let ready = tokio::select! {
            r = send.clone().ready() => r,
            _ = closed.cancelled() => return Some(job),
            x = settle(inflight, answered) => match x {},
        };
        send = match ready {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "connection refuses new streams (GOAWAY or closed)");
                return Some(job);
            }
        };
        let Some(job) = shared.unless_expired(job, "expired before it could be sent") else {
            continue;
        };
        let bearer = match auth {
            Auth::Token(s) => Some(s.token()),
            Auth::Certificate => None,
        };
        let req = match requests.build(&job.n, &job.label, bearer.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(apns_id = %job.label, reason, "notification cannot be sent");
                shared.finish(job, Outcome::dropped(reason));
                continue;
            }
        };
        let (resp, mut body) = match send.send_request(req, false) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open stream");
                return Some(job);
            }
        };
        let payload = Bytes::copy_from_slice(job.n.payload.as_bytes());
        if let Err(e) = body.send_data(payload, true) {
            tracing::debug!(error = %e, "stream lost while sending");
            // The response future reports the loss below.
        }
        inflight.push(Box::pin(await_answer(resp, job, shared.clone(), auth.clone(), bearer)));
        if !primed {
            // Wait for the first answer before opening more streams.
            tokio::select! {
                s = inflight.next() => if let Some(s) = s {
                    *answered |= s.answered;
                    primed = s.token_ok;
                },
                _ = closed.cancelled() => return None,
            }
        }
    }
}

/// Wait for the answer on one stream and act on it.
async fn await_answer(
    resp: h2::client::ResponseFuture,
    job: Job,
    shared: Arc<Shared>,
    auth: Auth,
    bearer: Option<Arc<str>>,
) -> Settled {
    let lost = Settled {
        answered: false,
        token_ok: false,
    };
    let answer_or_timeout = match tokio::time::timeout(ANSWER_TIMEOUT, conn::read_answer(resp)).await {
        Ok(r) => r,
        Err(_) => {
            // Dropping the stream resets it (CANCEL).
            shared.stats.lost.fetch_add(1, Ordering::Relaxed);
            shared.retry(job, &format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()));
            return lost;
        }
    };
    match answer_or_timeout {
        Ok(a) => {
            let token_ok = a.status == 200 || matches!(a.status, 400 | 404 | 405 | 410 | 413);
            answer(&shared, &auth, job, a, bearer.as_deref());
            Settled {
                answered: true,
                token_ok,
            }
        }
        Err(e) => {
            // Streams past a GOAWAY's last-stream-id, and refused
            // ones, were not processed; anything else may have been.
            let unprocessed = e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM));
            if unprocessed {
                // APNS never looked at it: send again at once, without
                // spending one of its retries.
                shared.resend(job);
            } else {
                shared.stats.lost.fetch_add(1, Ordering::Relaxed);
                shared.retry(job, &format!("stream lost: {e}"));
            }
            lost
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
    let c = conn::connect(&target, &conn::connector(setup.tls.clone()), setup.ping_interval)
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
