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
//! `apns-expiration` passed, or `max_retries` transient failures when set). Retries
//! (429, 500, 503, streams lost with a connection) wait with exponential
//! backoff. Until a report, the notification stays in the outbox: a crash
//! re-sends it on the next start.
//!
//! Reload: new credentials (a new `.p8` and key id, a new client
//! certificate) arrive on the context's reload channel. Each connection is
//! made with one set of credentials: once new ones are published, its worker
//! opens no more streams on it and connects anew with them (new requests
//! carry the new provider token); the old connection answers its open
//! streams and closes. A stream refused with 403 after its credentials were
//! replaced is sent again with the new ones, without spending a retry.

pub mod config;
pub mod conn;
pub mod jwt;
pub mod request;
mod stream;

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use pushbridge_api::Environment;

pub use self::config::Http2Config;
use self::conn::Target;
use self::jwt::JwtSigner;
use self::stream::{open_stream, Opened};
pub use self::stream::{send_one, SendOneError};
use super::credentials::{check_common, inspect_ca_file, CertificateKeys, CredentialReport};
use super::live::{self, Live};
use super::pool::{self, dispatch, PoolQueue, PoolSender, PoolStarter, Shared, POOL_QUEUE};
use super::refusal;
use super::{SinkConfig, SinkContext, SinkError};
use crate::outcome::Notification;
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
    /// What inspecting the credentials found (certificate expiry, warnings).
    pub report: CredentialReport,
    /// `max_retries`, `max_retry_delay`.
    pub retry: pool::RetryPolicy,
}

impl Http2Setup {
    /// Load and check an app's credentials; errors name the key or file.
    pub fn from_config(c: &Http2Config) -> Result<Self, SinkError> {
        let token_keys = c.key_file.is_some() || c.key_id.is_some() || c.team_id.is_some();
        let certificate = CertificateKeys {
            cert_file: c.cert_file.as_ref(),
            private_key_file: c.private_key_file.as_ref(),
            pkcs12_file: c.pkcs12_file.as_ref(),
            pkcs12_password: c.pkcs12_password.as_deref(),
        };
        if token_keys && certificate.any() {
            return Err(SinkError::config(
                "key_file and cert_file/pkcs12_file",
                "choose one way to authenticate: key_file + key_id + team_id (token), \
                 cert_file [+ private_key_file] or pkcs12_file [+ pkcs12_password] (certificate)",
            ));
        }
        let (auth, identity, report) = if token_keys {
            let need = |key, what: &str| SinkError::config(key, format!("token auth needs it ({what})"));
            let key_file = c
                .key_file
                .as_deref()
                .ok_or_else(|| need("key_file", "the .p8 key from Apple"))?;
            let key_id = c.key_id.as_deref().ok_or_else(|| need("key_id", "10 characters"))?;
            let team_id = c.team_id.as_deref().ok_or_else(|| need("team_id", "10 characters"))?;
            let signer = JwtSigner::from_p8_file(key_file, key_id, team_id)?;
            (Auth::Token(Arc::new(signer)), None, CredentialReport::default())
        } else {
            match certificate.load()? {
                Some((id, report)) => (Auth::Certificate, Some(id), report),
                None => {
                    return Err(SinkError::config(
                        "key_file or cert_file",
                        "http2 needs credentials: key_file + key_id + team_id (token auth), \
                         cert_file [+ private_key_file] or pkcs12_file (certificate auth)",
                    ))
                }
            }
        };
        if let Some(ca) = &c.ca_file {
            inspect_ca_file(ca)?;
        }
        let tls = crate::tls::client_config(c.ca_file.as_deref(), identity, &[b"h2"]).map_err(|e| SinkError::Tls {
            what: "TLS setup",
            source: e.into(),
        })?;
        check_common(c.connections, &[("endpoint", c.endpoint.as_ref())])?;
        let ping_interval = match c.ping_interval {
            None => conn::PING_EVERY,
            Some(s @ 1..=3600) => Duration::from_secs(s),
            Some(s) => {
                return Err(SinkError::config(
                    "ping_interval",
                    format!("{s}: use 1 to 3600 seconds"),
                ))
            }
        };
        Ok(Self {
            tls: Arc::new(tls),
            auth,
            endpoint: c.endpoint.clone(),
            ping_interval,
            report,
            retry: pool::RetryPolicy::from_config(c.max_retries, c.max_retry_delay)?,
        })
    }

    /// Where notifications for devices of `env` go.
    pub fn target(&self, env: Environment) -> Result<Target, pushbridge_kit::AddressError> {
        match &self.endpoint {
            Some(ep) => Target::parse(ep),
            None => Target::parse(crate::apns::http2_host(env)),
        }
    }
}

/// The sink.
pub struct Http2Sink {
    setup: Http2Setup,
    connections: usize,
}

impl Http2Sink {
    /// A sink for `setup` with the pool size and retries of `config`.
    pub fn new(setup: Http2Setup, config: &Http2Config) -> Self {
        Self {
            setup,
            connections: config.connections.max(1),
        }
    }

    /// Deliver `ctx.input` until it closes and everything taken is settled.
    pub async fn run(self, ctx: SinkContext) {
        let (creds_tx, creds) = live::channel(Creds::of(&self.setup));
        let reloaded = ctx.outcomes.clone();
        let follow = live::follow(ctx.reload, creds_tx, move |c| match c {
            SinkConfig::Http2(c) => Http2Setup::from_config(c).map(|s| {
                reloaded.credential_loaded(s.report.certificate_expiry, &s.report.warnings);
                reloaded.credential_replaced();
                if let Auth::Token(signer) = &s.auth {
                    signer.attach(reloaded.clone());
                }
                Creds::of(&s)
            }),
            other => Err(SinkError::config(
                "protocol",
                format!("{} (changing it needs a restart)", other.protocol().as_str()),
            )),
        });
        let pools = Pools {
            sink: &self,
            prefix: process_prefix(),
            creds,
        };
        // Room for every connection's streams plus a queue's worth, in
        // both environments.
        let limits = self
            .setup
            .retry
            .limits(2 * (self.connections * MAX_IN_FLIGHT + POOL_QUEUE));
        let outcomes = ctx.outcomes.clone();
        let report = &self.setup.report;
        outcomes.credential_loaded(report.certificate_expiry, &report.warnings);
        if let Auth::Token(signer) = &self.setup.auth {
            signer.attach(outcomes.clone());
        }
        live::run_with(dispatch(pools, ctx.input, ctx.outcomes, limits), follow).await;
        outcomes.stopped("http2");
    }
}

/// The credentials a connection is made and its requests signed with.
pub struct Creds {
    connector: tokio_rustls::TlsConnector,
    auth: Auth,
    /// What the credential inspection found (to date a certificate alert).
    report: CredentialReport,
}

impl Creds {
    fn of(setup: &Http2Setup) -> Self {
        Self {
            connector: conn::connector(setup.tls.clone()),
            auth: setup.auth.clone(),
            report: setup.report.clone(),
        }
    }
}

/// The credentials one connection was made with.
type ConnCreds = Arc<live::Versioned<Creds>>;

/// Starts pools for the dispatcher.
struct Pools<'a> {
    sink: &'a Http2Sink,
    /// A random per-process prefix for our `apns-id`s.
    prefix: u64,
    /// The current credentials.
    creds: Live<Creds>,
}

impl PoolStarter for Pools<'_> {
    fn start_pool(&mut self, env: Environment, shared: Arc<Shared>) -> Result<PoolSender, SinkError> {
        let target = self.sink.setup.target(env)?;
        Ok(start_pool(target, self, shared))
    }
}

/// A random per-process prefix for our `apns-id`s.
fn process_prefix() -> u64 {
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// What every connection of a pool shares.
#[derive(Clone)]
struct Link {
    target: Target,
    /// The current credentials (a connection keeps those it was made with).
    creds: Live<Creds>,
    /// `target.authority`, shared by the streams (log field `host`).
    host: Arc<str>,
    ping_interval: Duration,
    /// The `apns-id` prefix.
    prefix: u64,
}

/// Start `connections` workers for one host; returns their queue.
fn start_pool(target: Target, pools: &Pools<'_>, shared: Arc<Shared>) -> PoolSender {
    let sink = pools.sink;
    let (tx, rx) = pool::pool_queue();
    tracing::info!(host = %target.authority, connections = sink.connections, "APNS pool starting");
    let link = Link {
        host: target.authority.as_str().into(),
        target,
        creds: pools.creds.clone(),
        ping_interval: sink.setup.ping_interval,
        prefix: pools.prefix,
    };
    for index in 0..sink.connections {
        shared.spawn(worker(index, link.clone(), rx.clone(), shared.clone()));
    }
    tx
}

/// One connection's life: connect when there is work, stream notifications
/// until the connection ends, reconnect with backoff.
async fn worker(index: usize, link: Link, rx: PoolQueue, shared: Arc<Shared>) {
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
    let mut carry: Option<Notification> = None;
    let host = link.target.authority.as_str();
    loop {
        if carry.is_none() {
            carry = pool::next(&rx).await;
            if carry.is_none() {
                return; // the sink is done
            }
        }
        let creds: ConnCreds = link.creds.borrow().clone();
        match conn::connect(&link.target, &creds.value.connector, link.ping_interval, &shared.tasks).await {
            Ok(c) => {
                shared.outcomes.connected(host, index);
                let cause = c.cause.clone();
                let (left, answered) = stream_notifications(c, &link, creds, carry.take(), &rx, &shared).await;
                let cause = cause.get().copied().unwrap_or("closed by pushbridge");
                shared.outcomes.disconnected(host, index, cause);
                carry = left;
                if answered {
                    backoff.reset();
                    continue;
                }
            }
            Err(e) => match e.credential_alert() {
                Some(alert) => {
                    let reason = refusal::alert_reason(alert, &creds.value.report, pool::unix_now());
                    shared.outcomes.credential_refused(host, &reason);
                }
                None => shared.outcomes.unreachable(host, index, &e),
            },
        }
        if let Some(n) = carry.take() {
            carry = shared.unless_expired(n, "expired while APNS was unreachable");
        }
        let delay = backoff.next_delay();
        tracing::debug!(host, connection = index, retry_in = ?delay, "reconnecting after delay");
        tokio::time::sleep(delay).await;
    }
}

/// How one stream ended (about the stream, not the notification, whose
/// outcome is already recorded).
struct StreamEnd {
    /// APNS answered it.
    answered: bool,
    /// APNS checked the token: delivered, or refused for a reason about
    /// the notification itself.
    token_ok: bool,
    /// APNS refused the credential (the connection does not count as
    /// working: reconnects keep backing off).
    refused: bool,
}

/// The streams of one connection waiting for their answers.
type InFlight = FuturesUnordered<futures::future::BoxFuture<'static, StreamEnd>>;

/// Send notifications over one connection until it ends. Returns the one
/// it held but could not send, and whether the connection answered anything.
///
/// Answers are read inside this task (not a task per stream): the answers
/// of one read are handled in one go. Streams still open when it returns
/// are left to finish in a task of their own.
async fn stream_notifications(
    c: conn::Conn,
    link: &Link,
    creds: ConnCreds,
    carry: Option<Notification>,
    rx: &PoolQueue,
    shared: &Arc<Shared>,
) -> (Option<Notification>, bool) {
    let mut streams = Streams {
        inflight: InFlight::new(),
        answered: false,
        refused: false,
    };
    let left = send_notifications(c, link, creds, carry, rx, shared, &mut streams).await;
    // Answers already here count for this connection.
    std::future::poll_fn(|cx| {
        streams.settle_ready(cx);
        Poll::Ready(())
    })
    .await;
    let Streams {
        mut inflight, answered, ..
    } = streams;
    if !inflight.is_empty() {
        shared.spawn(async move { while inflight.next().await.is_some() {} });
    }
    (left, answered)
}

/// The open streams of one connection.
struct Streams {
    inflight: InFlight,
    /// APNS answered at least one stream of this connection.
    answered: bool,
    /// A stream was answered with a credential refusal since the sender
    /// last looked: it goes back to one request at a time.
    refused: bool,
}

impl Streams {
    /// Handle the answers that came; never completes (a branch of the
    /// `select!`s below that keeps the open streams going).
    async fn settle(&mut self) -> std::convert::Infallible {
        std::future::poll_fn(|cx| {
            self.settle_ready(cx);
            Poll::Pending
        })
        .await
    }

    /// Handle the answers that came (those FuturesUnordered hands out in one go).
    fn settle_ready(&mut self, cx: &mut std::task::Context<'_>) {
        while let Poll::Ready(Some(s)) = self.inflight.poll_next_unpin(cx) {
            self.answered |= s.answered && !s.refused;
            self.refused |= s.refused;
        }
    }

    /// Wait for the next stream to end; `None` when none is open.
    async fn next(&mut self) -> Option<StreamEnd> {
        let s = self.inflight.next().await?;
        self.answered |= s.answered && !s.refused;
        self.refused |= s.refused;
        Some(s)
    }
}

/// Wait until the connection can open one more stream. h2 marks the last
/// request it could not open yet (`SETTINGS_MAX_CONCURRENT_STREAMS`
/// reached) on this handle, and `poll_ready` waits until it opens; a clone
/// of the handle carries no mark and is always ready, so the streams beyond
/// the server's limit would queue inside h2 (up to [`MAX_IN_FLIGHT`], each
/// costing time in its queues and an answer timeout running).
fn stream_slot(send: &mut h2::client::SendRequest<bytes::Bytes>) -> impl Future<Output = Result<(), h2::Error>> + '_ {
    std::future::poll_fn(move |cx| send.poll_ready(cx))
}

/// Open a stream per notification on one connection until the queue
/// closes (`None`), the connection stops taking streams, or new
/// credentials replace those it was made with (the notification it held
/// is returned, to go out on the next connection).
async fn send_notifications(
    c: conn::Conn,
    link: &Link,
    creds: ConnCreds,
    mut carry: Option<Notification>,
    rx: &PoolQueue,
    shared: &Arc<Shared>,
    streams: &mut Streams,
) -> Option<Notification> {
    let conn::Conn { mut send, closed, .. } = c;
    // With token auth Apple allows one stream until a request with a valid
    // token succeeded: the first request goes alone.
    let mut primed = matches!(creds.value.auth, Auth::Certificate);
    let mut requests = request::RequestBuilder::new(&link.target.authority);
    let mut current = link.creds.clone();
    loop {
        if current.borrow_and_update().generation != creds.generation {
            tracing::debug!("credentials replaced: moving to a new connection");
            return carry;
        }
        if std::mem::take(&mut streams.refused) {
            // APNS refuses the credential: one request at a time, each
            // after the refusal back-off (up to a minute), until one passes.
            primed = false;
            if let Some(delay) = shared.refusal_delay() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = closed.cancelled() => return carry,
                    Ok(()) = current.changed() => continue,
                }
            }
        }
        let n = match carry.take() {
            Some(n) => n,
            None => tokio::select! {
                n = pool::next(rx) => n?,
                _ = closed.cancelled() => return None,
                x = streams.settle() => match x {},
                Ok(()) = current.changed() => continue,
            },
        };
        while streams.inflight.len() >= MAX_IN_FLIGHT {
            tokio::select! {
                _ = streams.next() => {},
                _ = closed.cancelled() => return Some(n),
            }
        }
        let ready = tokio::select! {
            r = stream_slot(&mut send) => r,
            _ = closed.cancelled() => return Some(n),
            x = streams.settle() => match x {},
        };
        if let Err(e) = ready {
            tracing::debug!(error = %e, "connection refuses new streams (GOAWAY or closed)");
            return Some(n);
        }
        let Some(n) = shared.unless_expired(n, "expired before it could be sent") else {
            continue;
        };
        match open_stream(&mut send, &mut requests, (link, &creds), n, shared) {
            Opened::Stream(answer) => streams.inflight.push(answer),
            Opened::Settled => continue,
            Opened::Refused(n) => return Some(n),
        }
        if !primed {
            // Wait for the first answer before opening more streams (token
            // auth's first request; every request while the credential is
            // refused).
            tokio::select! {
                s = streams.next() => if let Some(s) = s { primed = s.token_ok },
                _ = closed.cancelled() => return None,
            }
        }
    }
}
