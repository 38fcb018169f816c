//! The HTTP/2 provider API, simulated: TLS (ALPN `h2`) on a local port,
//! Apple's request validation, status codes and `{"reason": …}` bodies.
//!
//! Authentication: with a JWT public key, requests need a valid ES256
//! provider token (`403 MissingProviderToken`, `InvalidProviderToken`,
//! `ExpiredProviderToken` otherwise; a connection whose token is replaced
//! by another less than 20 minutes younger gets `429
//! TooManyProviderTokenUpdates`, unless the one replaced had expired);
//! with client certificates required,
//! a connection that presented one needs no token. With neither, anything
//! goes.
//!
//! Fault injection: reject given tokens with a given status and reason
//! (410 answers carry a `timestamp`), close every connection with GOAWAY
//! after N requests, drop connections with streams in flight after N
//! requests, answer 429/500/503 for a fraction of requests, let the first
//! connections go silent (no answers, no PONGs) after one request.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Record, Recorder};
use crate::apns::{ErrorBody, Reason};
use crate::sink::http2::request::{is_uuid, MAX_COLLAPSE_ID};

/// Apple's payload limit for alerts.
pub const MAX_PAYLOAD: usize = 4096;
/// Verified provider tokens remembered (verification is the costly part).
const TOKEN_CACHE: usize = 10_000;
/// Apple: update the provider token no more than once every 20 minutes.
pub const TOKEN_UPDATE_SECS: u64 = 20 * 60;

/// The provider token a connection uses now.
struct ConnToken {
    jwt: String,
    iat: u64,
    /// Answered `ExpiredProviderToken`: replacing it is always allowed.
    expired: bool,
}

/// One connection's token, shared by its streams.
type ConnAuth = Arc<Mutex<Option<ConnToken>>>;

/// Push types Apple knows.
const PUSH_TYPES: [&str; 11] = [
    "alert",
    "background",
    "voip",
    "location",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
];

/// What the simulator checks and what faults it injects.
#[derive(Clone)]
pub struct Options {
    /// Verify provider tokens against this ES256 public key.
    pub jwt_key: Option<Arc<DecodingKey>>,
    /// With `jwt_key`: the `iss` tokens must carry.
    pub team_id: Option<String>,
    /// Connections presenting a client certificate need no token (the TLS
    /// config decides which certificates are accepted).
    pub client_certs: bool,
    /// Send GOAWAY on a connection after this many requests (graceful:
    /// streams already sent are answered, later ones refused).
    pub goaway_every: Option<u64>,
    /// Drop a connection after this many requests without answering the
    /// streams in flight (their notifications may have been accepted: the
    /// client cannot know, and sends them again).
    pub drop_every: Option<u64>,
    /// Fraction of valid requests answered with `fail_status` instead.
    pub fail_rate: f64,
    /// 503 (`ServiceUnavailable`) or 429 (`TooManyRequests`).
    pub fail_status: u16,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` announced to clients.
    pub max_concurrent_streams: u32,
    /// Answer each request this much later (a distant APNS).
    pub response_delay: Option<std::time::Duration>,
    /// The first this many connections go silent after their first
    /// request: nothing more is read or answered, not even PINGs, and the
    /// socket stays open (a dead peer, a forgotten NAT mapping).
    pub stall_connections: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            jwt_key: None,
            team_id: None,
            client_certs: false,
            goaway_every: None,
            drop_every: None,
            fail_rate: 0.0,
            fail_status: 503,
            max_concurrent_streams: 1000,
            response_delay: None,
            stall_connections: 0,
        }
    }
}

/// Counters and settings a running simulator shares with its handle.
pub struct State {
    options: Options,
    rejects: Mutex<HashMap<String, (u16, String)>>,
    tokens: Mutex<HashMap<String, Result<u64, Reason>>>,
    jwts_seen: Mutex<HashSet<String>>,
    rng: Mutex<u64>,
    pub recorder: Recorder,
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    pub goaways: AtomicU64,
    pub drops: AtomicU64,
    pub failures_injected: AtomicU64,
    /// Connections that went silent (`stall_connections`).
    pub stalls: AtomicU64,
    /// Requests being handled now, and the most ever at once (the client
    /// must stay within SETTINGS_MAX_CONCURRENT_STREAMS).
    pub active: AtomicU64,
    pub max_active: AtomicU64,
}

impl State {
    fn coin(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut x = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (r as f64 / (1u64 << 53) as f64) < p
    }

    /// Answer `status`/`reason` for this token from now on.
    pub fn reject(&self, token: &str, status: u16, reason: &str) {
        self.rejects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_ascii_lowercase(), (status, reason.to_owned()));
    }

    /// Distinct provider tokens (JWTs) presented so far.
    pub fn jwts_seen(&self) -> usize {
        self.jwts_seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Check a provider token: the `iat` it carries, or the reason to refuse.
    fn verify_jwt(&self, key: &DecodingKey, jwt: &str) -> Result<u64, Reason> {
        {
            let mut seen = self.jwts_seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() < TOKEN_CACHE * 10 {
                seen.insert(jwt.to_owned());
            }
        }
        if let Some(r) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(jwt) {
            return r.clone();
        }
        let r = self.verify_uncached(key, jwt);
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TOKEN_CACHE {
            cache.clear();
        }
        cache.insert(jwt.to_owned(), r.clone());
        r
    }

    fn verify_uncached(&self, key: &DecodingKey, jwt: &str) -> Result<u64, Reason> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| Reason::InvalidProviderToken)?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref().is_none_or(str::is_empty) {
            return Err(Reason::InvalidProviderToken);
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        #[derive(serde::Deserialize)]
        struct Claims {
            iss: String,
            iat: u64,
        }
        let data = jsonwebtoken::decode::<Claims>(jwt, key, &v).map_err(|_| Reason::InvalidProviderToken)?;
        if let Some(team) = &self.options.team_id {
            if &data.claims.iss != team {
                return Err(Reason::InvalidProviderToken);
            }
        }
        Ok(data.claims.iat)
    }
}

/// A running HTTP/2 simulator.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Serve on `listener` with `tls` (its ALPN is set to `h2`).
    pub fn start(
        listener: TcpListener,
        mut tls: rustls::ServerConfig,
        options: Options,
        recorder: Recorder,
    ) -> std::io::Result<Simulator> {
        let addr = listener.local_addr()?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let state = Arc::new(State {
            options,
            rejects: Mutex::default(),
            tokens: Mutex::default(),
            jwts_seen: Mutex::default(),
            rng: Mutex::new(seed),
            recorder,
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            goaways: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            failures_injected: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            active: AtomicU64::new(0),
            max_active: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let task = tokio::spawn(accept_loop(listener, acceptor, state.clone(), stop.clone()));
        Ok(Simulator {
            addr,
            state,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stop listening and drop every connection.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let conns = TaskTracker::new();
    loop {
        let Some((tcp, peer)) = super::next_connection(&listener, &stop).await else {
            break;
        };
        let id = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (acceptor, state, stop) = (acceptor.clone(), state.clone(), stop.clone());
        conns.spawn(async move {
            tokio::select! {
                r = serve_connection(tcp, acceptor, state, id) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "simulator connection ended");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    id: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tls = acceptor.accept(tcp).await?;
    let has_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
    let mut conn = h2::server::Builder::new()
        .max_concurrent_streams(state.options.max_concurrent_streams)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(tls)
        .await?;
    let mut served = 0u64;
    let auth = ConnAuth::default();
    // The connection's requests are handled inside its task: the answers
    // ready after one round of reading go out together in one write (a
    // task per request ran between the connection's polls and each answer
    // cost a TLS record and a syscall of its own).
    let mut handlers = Handlers::new();
    loop {
        let next = tokio::select! {
            biased;
            n = conn.accept() => n,
            _ = drain(&mut handlers) => continue,
        };
        let Some(next) = next else { break };
        let (req, respond) = match next {
            Ok(x) => x,
            Err(e) => {
                detach(handlers);
                return Err(e.into());
            }
        };
        served += 1;
        state.requests.fetch_add(1, Ordering::Relaxed);
        handlers.push(handle(req, respond, state.clone(), has_cert, id, auth.clone()));
        if state.options.goaway_every == Some(served) {
            state.goaways.fetch_add(1, Ordering::Relaxed);
            conn.graceful_shutdown();
        }
        if state.options.drop_every == Some(served) {
            state.drops.fetch_add(1, Ordering::Relaxed);
            drop(conn); // closes the socket mid-stream
            detach(handlers);
            return Ok(());
        }
        if id <= state.options.stall_connections {
            state.stalls.fetch_add(1, Ordering::Relaxed);
            detach(handlers);
            // Hold the connection without polling it, until stopped.
            return std::future::pending().await;
        }
    }
    detach(handlers);
    Ok(())
}

/// Requests being handled on one connection.
type Handlers = FuturesUnordered<BoxFuture<'static, ()>>;

/// Run every handler that can make progress; completes once at least one
/// finished (pending while none did).
fn drain(handlers: &mut Handlers) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        let mut finished = false;
        while let Poll::Ready(Some(())) = handlers.poll_next_unpin(cx) {
            finished = true;
        }
        if finished {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// Let the handlers of a connection no longer polled finish on their own.
fn detach(mut handlers: Handlers) {
    if !handlers.is_empty() {
        tokio::spawn(async move { while handlers.next().await.is_some() {} });
    }
}

/// A refusal: status and reason (410 also gets a timestamp).
struct Refusal(u16, Reason);

fn handle(
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    state: Arc<State>,
    has_cert: bool,
    conn: u64,
    auth: ConnAuth,
) -> BoxFuture<'static, ()> {
    Box::pin(answer(req, respond, state, has_cert, conn, auth))
}

async fn answer(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    state: Arc<State>,
    has_cert: bool,
    conn: u64,
    auth: ConnAuth,
) {
    let apns_id = req
        .headers()
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let now_active = state.active.fetch_add(1, Ordering::AcqRel) + 1;
    state.max_active.fetch_max(now_active, Ordering::AcqRel);
    let result = check(req, &state, has_cert, conn, &auth).await;
    if let Err(Refusal(_, Reason::ExpiredProviderToken)) = &result {
        if let Some(t) = auth.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            t.expired = true;
        }
    }
    if let Some(d) = state.options.response_delay {
        tokio::time::sleep(d).await;
    }
    state.active.fetch_sub(1, Ordering::AcqRel);
    let echo = match &apns_id {
        Some(id) if is_uuid(id) => id.clone(),
        _ => uuid::Uuid::new_v4().to_string(),
    };
    let (status, body) = match result {
        Ok(record) => {
            state.recorder.record(record);
            (200, None)
        }
        Err(Refusal(status, reason)) => {
            let timestamp_ms = (status == 410).then(now_ms);
            (status, Some(ErrorBody { reason, timestamp_ms }.to_json()))
        }
    };
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("apns-id", echo);
    if body.is_some() {
        resp = resp.header("content-type", "application/json");
    }
    let Ok(resp) = resp.body(()) else { return };
    match body {
        None => {
            let _ = respond.send_response(resp, true);
        }
        Some(b) => {
            if let Ok(mut stream) = respond.send_response(resp, false) {
                let _ = stream.send_data(Bytes::from(b), true);
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn one_header<'a>(req: &'a Request<RecvStream>, name: &str) -> Result<Option<&'a str>, Refusal> {
    let mut all = req.headers().get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(Refusal(400, Reason::DuplicateHeaders));
    }
    match first {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| Refusal(400, Reason::Other("BadHeader".into()))),
    }
}

/// Apple's checks, in Apple's order; the record if it is accepted.
async fn check(
    req: Request<RecvStream>,
    state: &State,
    has_cert: bool,
    conn: u64,
    conn_auth: &ConnAuth,
) -> Result<Record, Refusal> {
    if req.method() != Method::POST {
        return Err(Refusal(405, Reason::MethodNotAllowed));
    }
    let path = req.uri().path().to_owned();
    let token = path.strip_prefix("/3/device/").ok_or(Refusal(404, Reason::BadPath))?;
    if token.is_empty() {
        return Err(Refusal(400, Reason::MissingDeviceToken));
    }
    if token.len() < 64 || token.len() > 200 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal(400, Reason::BadDeviceToken));
    }
    let token = token.to_ascii_lowercase();

    // Authentication.
    let auth = if has_cert && state.options.client_certs {
        "certificate"
    } else if let Some(key) = &state.options.jwt_key {
        let header = one_header(&req, "authorization")?.unwrap_or("");
        let jwt = header
            .strip_prefix("bearer ")
            .or_else(|| header.strip_prefix("Bearer "))
            .unwrap_or("");
        if jwt.is_empty() {
            return Err(Refusal(403, Reason::MissingProviderToken));
        }
        // The connection's current token was verified when it became
        // current (the verdict for a token never changes): only its age
        // is checked again.
        let known = conn_auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|t| (t.jwt == jwt).then_some(t.iat));
        let iat = match known {
            Some(iat) => iat,
            None => state.verify_jwt(key, jwt).map_err(|r| Refusal(403, r))?,
        };
        if (now_ms() / 1000) as u64 > iat + 3600 {
            return Err(Refusal(403, Reason::ExpiredProviderToken));
        }
        let mut current = conn_auth.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some(t) if t.jwt == jwt => {}
            Some(t) if !t.expired && iat < t.iat + TOKEN_UPDATE_SECS => {
                return Err(Refusal(429, Reason::TooManyProviderTokenUpdates));
            }
            _ => {
                *current = Some(ConnToken {
                    jwt: jwt.to_owned(),
                    iat,
                    expired: false,
                })
            }
        }
        "token"
    } else if state.options.client_certs {
        return Err(Refusal(403, Reason::MissingProviderToken));
    } else {
        "none"
    };

    let topic = one_header(&req, "apns-topic")?
        .filter(|t| !t.is_empty())
        .ok_or(Refusal(400, Reason::MissingTopic))?
        .to_owned();
    let push_type = one_header(&req, "apns-push-type")?.map(str::to_owned);
    if let Some(t) = &push_type {
        if !PUSH_TYPES.contains(&t.as_str()) {
            return Err(Refusal(400, Reason::InvalidPushType));
        }
    }
    let priority = match one_header(&req, "apns-priority")? {
        None => None,
        Some(p) => match p.parse::<u8>() {
            Ok(v @ (1 | 5 | 10)) => Some(v),
            _ => return Err(Refusal(400, Reason::BadPriority)),
        },
    };
    if push_type.as_deref() == Some("background") && priority == Some(10) {
        return Err(Refusal(400, Reason::BadPriority));
    }
    let expiration = match one_header(&req, "apns-expiration")? {
        None => None,
        Some(e) => Some(e.parse::<u64>().map_err(|_| Refusal(400, Reason::BadExpirationDate))?),
    };
    let apns_id = match one_header(&req, "apns-id")? {
        None => uuid::Uuid::new_v4().to_string(),
        Some(id) if is_uuid(id) => id.to_owned(),
        Some(_) => return Err(Refusal(400, Reason::BadMessageId)),
    };
    let collapse_id = one_header(&req, "apns-collapse-id")?.map(str::to_owned);
    if collapse_id.as_ref().is_some_and(|c| c.len() > MAX_COLLAPSE_ID) {
        return Err(Refusal(400, Reason::BadCollapseId));
    }

    // The body: read it all (flow control), keep at most the limit + 1.
    let mut body = req.into_body();
    let mut buf = Vec::with_capacity(512);
    let mut total = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| Refusal(400, Reason::Other("StreamReset".into())))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        total += chunk.len();
        if buf.len() <= MAX_PAYLOAD {
            let room = MAX_PAYLOAD + 1 - buf.len();
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
    if total == 0 {
        return Err(Refusal(400, Reason::PayloadEmpty));
    }
    if total > MAX_PAYLOAD {
        return Err(Refusal(413, Reason::PayloadTooLarge));
    }
    // Apple has no reason for malformed JSON; the simulator says so plainly.
    let payload: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|_| Refusal(400, Reason::Other("BadPayload".into())))?;
    if !payload.get("aps").is_some_and(|a| a.is_object()) {
        return Err(Refusal(400, Reason::Other("BadPayload".into())));
    }

    // Injected faults, then the configured refusals.
    if state.coin(state.options.fail_rate) {
        state.failures_injected.fetch_add(1, Ordering::Relaxed);
        return Err(match state.options.fail_status {
            429 => Refusal(429, Reason::TooManyRequests),
            500 => Refusal(500, Reason::InternalServerError),
            s => Refusal(s, Reason::ServiceUnavailable),
        });
    }
    if let Some((status, reason)) = state
        .rejects
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&token)
        .cloned()
    {
        return Err(Refusal(status, Reason::parse(&reason)));
    }
    Ok(Record {
        apns_id,
        identifier: None,
        command: None,
        device_token: token,
        topic,
        push_type,
        priority,
        expiration,
        collapse_id,
        auth: auth.to_owned(),
        connection: conn,
        payload,
    })
}
