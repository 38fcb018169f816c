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
//!
//! Layout: [`Options`] and the [`Simulator`] handle here; `state` holds
//! the shared [`State`] (counters, configured refusals); `server` the
//! accept loop and each connection's loop (GOAWAY, drop and stall
//! faults); `answer` turns a checked request into its response; `check`
//! is Apple's validation in Apple's order, with `auth` (provider tokens,
//! client certificates) and `faults` (injected failures, configured
//! refusals) as steps of it.

mod answer;
mod auth;
mod check;
mod faults;
mod server;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use jsonwebtoken::DecodingKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Recorder;
pub use check::check_headers;
pub use state::State;

/// Apple's payload limit for alerts, in bytes.
pub const MAX_PAYLOAD: usize = 4096;
/// Apple: update the provider token no more than once every 20 minutes
/// (seconds).
pub const TOKEN_UPDATE_SECS: u64 = 20 * 60;

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

/// A running HTTP/2 simulator.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Serve on `listener` with `tls` (its ALPN is set to `h2`). Fails
    /// only if the listener's local address cannot be read.
    pub fn start(
        listener: TcpListener,
        mut tls: rustls::ServerConfig,
        options: Options,
        recorder: Recorder,
    ) -> std::io::Result<Simulator> {
        let addr = listener.local_addr()?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let state = Arc::new(State::new(options, recorder));
        let stop = CancellationToken::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let task = tokio::spawn(server::accept_loop(listener, acceptor, state.clone(), stop.clone()));
        Ok(Simulator {
            addr,
            state,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters, records and configured refusals.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stop listening and drop every connection.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Milliseconds since 1970 (0 if the clock is before it).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
