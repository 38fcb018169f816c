//! `protocol = "binary"`: the legacy binary provider protocol (command 2
//! frames by default, command 1 when `binary_command = 1`) over TLS with a
//! client certificate, and the feedback service.
//!
//! APNS answers nothing on success and, on a bad notification, one error
//! response naming it, after which it discards everything sent after it
//! and closes the connection. So each connection keeps a *replay window*
//! of what it wrote:
//!
//! - an error response for identifier X: everything written before X was
//!   accepted (delivered); X failed (status 8 removes the device; 1 and
//!   255 are retried; 10, "shutdown", names the last one accepted); all
//!   after X is sent again on a new connection;
//! - a connection lost without an error response: the whole window is sent
//!   again on a new connection (at least once, never lost);
//! - a notification that stayed in the window `binary_confirm_ms` (500 ms
//!   by default) on a healthy connection is taken as delivered, and
//!   remembered a while longer (up to 16,384 per connection, 30 s): an
//!   error response that arrives later still fails the one it names, and
//!   what followed it is taken back and sent again.
//!
//! Identifiers are the outbox ids (low 32 bits), so a re-sent notification
//! keeps its identifier. Frames are coalesced: everything taken from the
//! queue at once goes out in one write (TLS records of up to 16 KiB).

pub mod codec;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pushbridge_api::{DeviceToken, Environment};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::{CancellationToken, DropGuard};

use self::codec::{status, ErrorResponseCodec, FeedbackCodec, PushEncoder, PushRef};
use super::net::{connect_tls, Target, CONNECT_TIMEOUT};
use super::pool::{dispatch, next_jobs, Job, JobQueue, PoolStarter, Shared, SinkStats, POOL_QUEUE};
use super::{BoxFuture, Notification, Outcome, ReportSender, Sink, SinkReport};
use crate::config::AppConfig;
use pushbridge_kit::Backoff;

/// Default for `binary_confirm_ms`: a notification written this long ago
/// on a connection that reported no error is taken as accepted.
pub const CONFIRM_AFTER_MS: u64 = 500;
/// Most notifications in one connection's replay window; writing pauses
/// while it is full.
pub const MAX_WINDOW: usize = 262_144;
/// The smallest the adaptive window gets.
pub const MIN_WINDOW: usize = 16;
/// Notifications coalesced into one write.
const BATCH: usize = 512;
/// How often the window is checked for confirmed notifications.
const CONFIRM_TICK: Duration = Duration::from_millis(50);
const RECONNECT_BASE: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// Default seconds between feedback polls (Apple suggested daily; hourly
/// is what the original providers did).
pub const FEEDBACK_INTERVAL: u64 = 3600;
/// A feedback poll that takes longer than this is cut off.
const FEEDBACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything needed to talk to the binary gateway for one app, checked.
#[derive(Clone)]
pub struct BinarySetup {
    pub tls: Arc<rustls::ClientConfig>,
    pub endpoint: Option<String>,
    pub feedback_endpoint: Option<String>,
    pub command: u8,
    pub feedback_interval: Duration,
    pub confirm_after: Duration,
}

impl BinarySetup {
    pub fn from_app(app: &AppConfig) -> Result<Self, String> {
        if app.key_file.is_some() || app.key_id.is_some() || app.team_id.is_some() {
            return Err("key_file/key_id/team_id (token auth) work with http2 only; \
                 the binary protocol authenticates with a client certificate"
                .into());
        }
        let identity = if let Some(cert) = &app.cert_file {
            if app.pkcs12_file.is_some() {
                return Err("choose cert_file or pkcs12_file, not both".into());
            }
            crate::tls::load_identity(cert, app.private_key_file.as_deref())
                .map_err(|e| format!("client certificate: {e}"))?
        } else if let Some(p12) = &app.pkcs12_file {
            crate::tls::load_pkcs12(p12, app.pkcs12_password.as_deref().unwrap_or(""))
                .map_err(|e| format!("client certificate: {e}"))?
        } else if app.private_key_file.is_some() {
            return Err("private_key_file needs cert_file (the certificate it belongs to)".into());
        } else {
            return Err("binary needs a client certificate: cert_file [+ private_key_file] or pkcs12_file".into());
        };
        if app.ping_interval.is_some() {
            return Err("ping_interval works with http2 only (the binary protocol has no PING)".into());
        }
        let command = match app.binary_command {
            None | Some(2) => 2,
            Some(1) => 1,
            Some(other) => {
                return Err(format!(
                    "binary_command = {other}: use 2 (frames, default) or 1 (enhanced); \
                     command 0 cannot report errors"
                ))
            }
        };
        let interval = app.feedback_interval.unwrap_or(FEEDBACK_INTERVAL);
        if interval == 0 {
            return Err("feedback_interval must be at least 1 second".into());
        }
        let tls = crate::tls::client_config(app.ca_file.as_deref(), Some(identity), &[])
            .map_err(|e| format!("TLS setup: {e}"))?;
        for ep in app.endpoint.iter().chain(app.feedback_endpoint.iter()) {
            Target::parse(ep)?;
        }
        Ok(Self {
            tls: Arc::new(tls),
            endpoint: app.endpoint.clone(),
            feedback_endpoint: app.feedback_endpoint.clone(),
            command,
            feedback_interval: Duration::from_secs(interval),
            confirm_after: Duration::from_millis(app.binary_confirm_ms.unwrap_or(CONFIRM_AFTER_MS).max(1)),
        })
    }

    pub fn target(&self, env: Environment) -> Result<Target, String> {
        Target::parse(self.endpoint.as_deref().unwrap_or(crate::apns::binary_host(env)))
    }

    /// The feedback service: `feedback_endpoint`, or Apple's when the
    /// gateway is Apple's; none when only `endpoint` was overridden.
    pub fn feedback_target(&self, env: Environment) -> Option<Result<Target, String>> {
        match (&self.feedback_endpoint, &self.endpoint) {
            (Some(f), _) => Some(Target::parse(f)),
            (None, Some(_)) => None,
            (None, None) => Some(Target::parse(crate::apns::feedback_host(env))),
        }
    }
}

/// Sink checks for `pushbridge check` and start-up.
pub fn check(app: &AppConfig) -> Result<(), String> {
    BinarySetup::from_app(app).map(|_| ())
}

/// The sink.
pub struct BinarySink {
    setup: BinarySetup,
    topic: Arc<str>,
    environment: Environment,
    connections: usize,
    max_retries: u32,
    stats: Arc<SinkStats>,
}

impl BinarySink {
    pub fn from_app(app: &AppConfig) -> Result<Self, String> {
        Ok(Self {
            setup: BinarySetup::from_app(app)?,
            topic: Arc::from(app.topic.as_str()),
            environment: app.environment,
            connections: app.connections.max(1),
            max_retries: app.max_retries,
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }
}

impl Sink for BinarySink {
    fn run(self: Box<Self>, input: mpsc::Receiver<Notification>, reports: ReportSender) -> BoxFuture {
        Box::pin(async move {
            let stop = CancellationToken::new();
            let pools = Pools {
                sink: &self,
                feedback_started: Vec::new(),
                stop: stop.clone(),
                _guard: stop.drop_guard(),
            };
            // Room for every connection's full replay window plus a queue's
            // worth, in both environments.
            let max_outstanding = 2 * (self.connections * MAX_WINDOW + POOL_QUEUE);
            dispatch(
                pools,
                input,
                reports,
                self.max_retries,
                max_outstanding,
                self.stats.clone(),
            )
            .await;
            self.stats.log(&self.topic, "binary");
        })
    }
}

struct Pools<'a> {
    sink: &'a BinarySink,
    feedback_started: Vec<Environment>,
    stop: CancellationToken,
    /// Stops the feedback pollers when the sink ends.
    _guard: DropGuard,
}

impl Pools<'_> {
    fn start_feedback(&mut self, env: Environment, shared: &Arc<Shared>) {
        if self.feedback_started.contains(&env) {
            return;
        }
        self.feedback_started.push(env);
        match self.sink.setup.feedback_target(env) {
            Some(Ok(target)) => {
                tokio::spawn(feedback_loop(
                    target,
                    TlsConnector::from(self.sink.setup.tls.clone()),
                    self.sink.setup.feedback_interval,
                    self.sink.topic.clone(),
                    shared.clone(),
                    self.stop.clone(),
                ));
            }
            Some(Err(e)) => tracing::error!(error = %e, "feedback service address"),
            None => tracing::info!(
                topic = %self.sink.topic,
                "endpoint overridden without feedback_endpoint: not polling a feedback service"
            ),
        }
    }
}

impl PoolStarter for Pools<'_> {
    fn started(&mut self, shared: &Arc<Shared>) {
        self.start_feedback(self.sink.environment, shared);
    }

    fn start_pool(&mut self, env: Environment, shared: Arc<Shared>) -> Result<mpsc::Sender<Job>, String> {
        let target = self.sink.setup.target(env)?;
        self.start_feedback(env, &shared);
        let (tx, rx) = mpsc::channel(POOL_QUEUE);
        let rx: JobQueue = Arc::new(tokio::sync::Mutex::new(rx));
        tracing::info!(endpoint = %target.authority, connections = self.sink.connections, command = self.sink.setup.command, "binary APNS pool starting");
        for index in 0..self.sink.connections {
            tokio::spawn(worker(
                index,
                target.clone(),
                TlsConnector::from(self.sink.setup.tls.clone()),
                self.sink.setup.command,
                self.sink.setup.confirm_after,
                rx.clone(),
                shared.clone(),
            ));
        }
        Ok(tx)
    }

    fn label(&self, n: &Notification) -> Arc<str> {
        format!("#{}", ident(n)).into()
    }
}

/// The identifier a notification is sent with.
fn ident(n: &Notification) -> u32 {
    n.id as u32
}

/// A notification written on the current connection.
struct Sent {
    id: u32,
    at: Instant,
    job: Job,
}

/// How a connection ended.
enum End {
    /// The queue closed and everything written was confirmed.
    Done,
    /// APNS sent an error response.
    Error(codec::ErrorResponse),
    /// Closed or failed without an error response.
    Lost(String),
}

/// One connection's life: connect when there is work, stream, settle the
/// window, reconnect with backoff.
///
/// The window's size limit adapts like a congestion window: halved (down
/// to [`MIN_WINDOW`]) when a connection is lost with notifications
/// unconfirmed, doubled (up to [`MAX_WINDOW`]) each time notifications are
/// confirmed. A link that keeps dropping still makes progress instead of
/// re-sending the same window forever.
#[allow(clippy::too_many_arguments)]
async fn worker(
    index: usize,
    target: Target,
    tls: TlsConnector,
    command: u8,
    confirm_after: Duration,
    rx: JobQueue,
    shared: Arc<Shared>,
) {
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
    // Jobs to send before any new ones: replayed after a failure.
    let mut replay: VecDeque<Job> = VecDeque::new();
    let mut limit = MAX_WINDOW;
    loop {
        if replay.is_empty() {
            let mut first = Vec::with_capacity(1);
            if next_jobs(&rx, &mut first, 1).await == 0 {
                return;
            }
            replay.extend(first);
        }
        shared.stats.connects.fetch_add(1, Ordering::Relaxed);
        let stream = match connect_tls(&target, &tls).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(connection = index, error = %e, "cannot reach the binary gateway");
                replay = replay
                    .drain(..)
                    .filter_map(|j| shared.unless_expired(j, "expired while APNS was unreachable"))
                    .collect();
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        tracing::debug!(endpoint = %target.authority, connection = index, "binary APNS connection up");
        let mut conn = ConnState {
            window: VecDeque::new(),
            limit,
            confirmed: 0,
            confirm_after,
            recent: VecDeque::new(),
        };
        let end = stream_jobs(stream, command, &mut replay, &mut conn, &rx, &shared).await;
        let progressed = conn.confirmed > 0;
        limit = conn.limit;
        match end {
            End::Done => return,
            End::Error(err) => {
                // Everything before the named notification was accepted.
                settle_error(err, &mut conn, &mut replay, &shared);
                backoff.reset();
                continue;
            }
            End::Lost(why) => {
                let unconfirmed = conn.window.len();
                shared.stats.lost.fetch_add(unconfirmed as u64, Ordering::Relaxed);
                tracing::warn!(connection = index, reason = %why, unconfirmed, "binary connection lost; re-sending what it had not confirmed");
                requeue_front(&mut replay, conn.window.drain(..).map(|s| s.job));
                limit = (unconfirmed / 2).clamp(MIN_WINDOW, MAX_WINDOW);
            }
        }
        if progressed {
            backoff.reset();
        } else {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// One connection's replay window.
struct ConnState {
    window: VecDeque<Sent>,
    /// Most unconfirmed notifications allowed now.
    limit: usize,
    /// Notifications confirmed on this connection.
    confirmed: u64,
    confirm_after: Duration,
    /// Notifications confirmed by time on this connection, newest last
    /// (at most [`RECENT`], none older than [`RECENT_FOR`]): an error
    /// response later than `binary_confirm_ms` that names one of them still
    /// fails it, and what followed it (APNS discarded that) is taken back
    /// and sent again.
    recent: VecDeque<(u32, Instant, Notification)>,
}

/// Most confirmed notifications remembered per connection for late error
/// responses.
const RECENT: usize = 16_384;
/// How long a confirmed notification is remembered for a late error.
const RECENT_FOR: Duration = Duration::from_secs(30);

/// Put `jobs` (in order) before what `replay` already holds.
fn requeue_front(replay: &mut VecDeque<Job>, jobs: impl DoubleEndedIterator<Item = Job>) {
    for j in jobs.rev() {
        replay.push_front(j);
    }
}

/// Apply an error response to the window.
fn settle_error(err: codec::ErrorResponse, conn: &mut ConnState, replay: &mut VecDeque<Job>, shared: &Arc<Shared>) {
    let desc = status::describe(err.status);
    let window = &mut conn.window;
    let Some(pos) = window.iter().position(|s| s.id == err.id) else {
        // Everything still in the window followed the named notification.
        requeue_front(replay, conn.window.drain(..).map(|s| s.job));
        if let Some(i) = conn.recent.iter().position(|(id, ..)| *id == err.id) {
            settle_late_error(err, i, conn, replay, shared);
        } else {
            shared.stats.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                status = err.status,
                id = err.id,
                "error response for a notification neither in the window nor remembered; \
                 what followed it may be lost (raise binary_confirm_ms); re-sending the window"
            );
        }
        return;
    };
    let mut before: Vec<Sent> = window.drain(..=pos).collect();
    let Some(named) = before.pop() else { return };
    for s in before {
        shared.finish(s.job, Outcome::Delivered);
    }
    let reason = format!("binary status {} ({desc})", err.status);
    match err.status {
        status::SHUTDOWN => shared.finish(named.job, Outcome::Delivered),
        status::INVALID_TOKEN => {
            tracing::info!(
                id = err.id,
                token = named.job.n.token.short(),
                "APNS says the token is invalid; removing the device"
            );
            shared.finish(
                named.job,
                Outcome::Rejected {
                    reason,
                    remove_device: true,
                    since_ms: None,
                },
            )
        }
        status::PROCESSING_ERROR | status::UNKNOWN => shared.retry(named.job, &reason),
        _ => {
            tracing::warn!(id = err.id, token = named.job.n.token.short(), %reason, "APNS rejected the notification");
            shared.finish(named.job, Outcome::dropped(reason))
        }
    }
    if !window.is_empty() {
        tracing::info!(count = window.len(), "re-sending what followed the failed notification");
    }
    requeue_front(replay, window.drain(..).map(|s| s.job));
}

/// An error response for the `i`-th remembered notification, one already
/// confirmed by time and reported delivered: APNS failed it and discarded
/// everything written after it, so those are taken back and put first in
/// `replay`; the named one is acted on as if the answer had come in time.
fn settle_late_error(
    err: codec::ErrorResponse,
    i: usize,
    conn: &mut ConnState,
    replay: &mut VecDeque<Job>,
    shared: &Arc<Shared>,
) {
    let mut tail = conn.recent.split_off(i);
    conn.recent.clear();
    let Some((_, _, named)) = tail.pop_front() else { return };
    let desc = status::describe(err.status);
    tracing::warn!(
        status = err.status,
        id = err.id,
        resent = tail.len(),
        confirm_ms = conn.confirm_after.as_millis() as u64,
        "error response later than binary_confirm_ms; re-sending what followed the failed notification"
    );
    let label = |n: &Notification| Arc::<str>::from(format!("#{}", ident(n)));
    let mut back: Vec<Job> = Vec::with_capacity(tail.len() + 1);
    match err.status {
        status::SHUTDOWN => {}
        status::INVALID_TOKEN => {
            tracing::info!(
                id = err.id,
                token = named.token.short(),
                "APNS says the token is invalid; removing the device"
            );
            shared.stats.devices_removed.fetch_add(1, Ordering::Relaxed);
            shared.device_gone(SinkReport::DeviceGone {
                topic: named.topic.clone(),
                token: named.token.clone(),
                since_ms: None,
                reason: format!("binary status {} ({desc})", err.status),
            });
        }
        status::PROCESSING_ERROR | status::UNKNOWN => {
            let l = label(&named);
            back.push(shared.take_back(named, l));
        }
        _ => tracing::warn!(
            id = err.id,
            token = named.token.short(),
            reason = %format!("binary status {} ({desc})", err.status),
            "APNS rejected a notification already reported delivered"
        ),
    }
    back.extend(tail.into_iter().map(|(_, _, n)| {
        let l = label(&n);
        shared.take_back(n, l)
    }));
    requeue_front(replay, back.into_iter());
}

/// Hex token to bytes into `buf`; the token was validated on registration.
fn token_bytes<'b>(t: &DeviceToken, buf: &'b mut [u8; 100]) -> &'b [u8] {
    let hex = t.as_str().as_bytes();
    let n = (hex.len() / 2).min(buf.len());
    let val = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    };
    for i in 0..n {
        buf[i] = (val(hex[2 * i]) << 4) | val(hex[2 * i + 1]);
    }
    &buf[..n]
}

/// Write jobs, watch for an error response, confirm old entries.
async fn stream_jobs(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    command: u8,
    replay: &mut VecDeque<Job>,
    conn: &mut ConnState,
    rx: &JobQueue,
    shared: &Arc<Shared>,
) -> End {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(64);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(CONFIRM_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut queue_open = true;
    let mut tokbuf = [0u8; 100];
    loop {
        if !queue_open && replay.is_empty() && conn.window.is_empty() {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, wr.shutdown()).await;
            return End::Done;
        }
        let room = conn.limit.saturating_sub(conn.window.len()).min(BATCH);
        tokio::select! {
            biased;
            r = rd.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) => return End::Lost("closed by APNS".into()),
                    Err(e) => return End::Lost(e.to_string()),
                    Ok(_) => match ErrorResponseCodec.decode(&mut rbuf) {
                        Ok(Some(err)) => return End::Error(err),
                        Ok(None) => continue,
                        Err(e) => return End::Lost(e.to_string()),
                    },
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let before = conn.confirmed;
                while conn.window.front().is_some_and(|s| now.duration_since(s.at) >= conn.confirm_after) {
                    if let Some(s) = conn.window.pop_front() {
                        if conn.recent.len() == RECENT {
                            conn.recent.pop_front();
                        }
                        let n = shared.finish_keep(s.job, Outcome::Delivered);
                        conn.recent.push_back((s.id, now, n));
                        conn.confirmed += 1;
                    }
                }
                while conn.recent.front().is_some_and(|(_, at, _)| now.duration_since(*at) > RECENT_FOR) {
                    conn.recent.pop_front();
                }
                if conn.confirmed > before {
                    conn.limit = (conn.limit * 2).min(MAX_WINDOW);
                }
                continue;
            }
            n = async {
                if replay.is_empty() {
                    next_jobs(rx, &mut batch, room).await
                } else {
                    let k = replay.len().min(room);
                    batch.extend(replay.drain(..k));
                    k
                }
            }, if room > 0 && (queue_open || !replay.is_empty()) => {
                if n == 0 {
                    queue_open = false;
                    continue;
                }
            }
        }
        // Encode the batch into one write.
        wbuf.clear();
        let now = Instant::now();
        let mut written: Vec<Sent> = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            let Some(job) = shared.unless_expired(job, "expired before it could be sent") else {
                continue;
            };
            let n = &job.n;
            let push = PushRef {
                command,
                id: ident(n),
                expiry: n.expiration.min(u32::MAX as u64) as u32,
                priority: n.priority,
                token: token_bytes(&n.token, &mut tokbuf),
                payload: n.payload.as_bytes(),
            };
            if let Err(e) = PushEncoder.encode(push, &mut wbuf) {
                let reason = format!("cannot be sent over the binary protocol: {e}");
                tracing::warn!(id = %job.label, %reason);
                shared.finish(job, Outcome::dropped(reason));
                continue;
            }
            written.push(Sent {
                id: ident(n),
                at: now,
                job,
            });
        }
        let count = written.len();
        conn.window.extend(written);
        if wbuf.is_empty() {
            continue;
        }
        let write = async {
            wr.write_all(&wbuf).await?;
            wr.flush().await
        };
        let result = write.await;
        // The confirmation clock starts once the bytes are handed to the
        // kernel, not when they were encoded: a write held up by a full
        // socket buffer does not eat into the time an error response has.
        let flushed = Instant::now();
        for s in conn.window.iter_mut().rev().take(count) {
            s.at = flushed;
        }
        if let Err(e) = result {
            // An error response may already be waiting: prefer it.
            let mut tail = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), rd.read(&mut tail)).await {
                rbuf.extend_from_slice(&tail[..n]);
                if let Ok(Some(err)) = ErrorResponseCodec.decode(&mut rbuf) {
                    return End::Error(err);
                }
            }
            return End::Lost(e.to_string());
        }
    }
}

/// Poll the feedback service now and every `interval`, until stopped.
async fn feedback_loop(
    target: Target,
    tls: TlsConnector,
    interval: Duration,
    topic: Arc<str>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let poll = tokio::time::timeout(FEEDBACK_TIMEOUT, poll_feedback(&target, &tls, &topic, &shared));
        tokio::select! {
            r = poll => match r {
                Ok(Ok(n)) => tracing::info!(endpoint = %target.authority, devices = n, "feedback service polled"),
                Ok(Err(e)) => tracing::warn!(endpoint = %target.authority, error = %e, "feedback service poll failed"),
                Err(_) => tracing::warn!(endpoint = %target.authority, "feedback service poll timed out"),
            },
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One feedback read: every tuple until EOF becomes a device-gone report
/// (the store removes the device only if it was registered before the
/// tuple's time).
async fn poll_feedback(target: &Target, tls: &TlsConnector, topic: &Arc<str>, shared: &Shared) -> Result<u64, String> {
    let mut stream = connect_tls(target, tls).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut count = 0u64;
    loop {
        let n = stream.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
        while let Some(t) = FeedbackCodec.decode(&mut buf).map_err(|e| e.to_string())? {
            match DeviceToken::from_bytes(&t.token) {
                Ok(token) => {
                    count += 1;
                    shared.device_gone(SinkReport::DeviceGone {
                        topic: topic.clone(),
                        token,
                        since_ms: Some(t.time as i64 * 1000),
                        reason: "listed by the feedback service".into(),
                    });
                }
                Err(e) => tracing::warn!(error = %e, "feedback service listed an unusable token"),
            }
        }
        if n == 0 {
            if !buf.is_empty() {
                return Err(format!(
                    "feedback stream ended inside a tuple ({} bytes left)",
                    buf.len()
                ));
            }
            return Ok(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hex_to_bytes() {
        let t = DeviceToken::parse(&"0aF1".repeat(16)).unwrap();
        let mut buf = [0u8; 100];
        let b = token_bytes(&t, &mut buf);
        assert_eq!(b.len(), 32);
        assert_eq!(&b[..2], &[0x0a, 0xf1]);
        assert_eq!(b, t.to_bytes().as_slice());
    }
}
