//! The line protocol adapter: one command per line over TCP, one reply per
//! command, in order. See the README's protocol reference.
//!
//! Layout: lines are framed by the toolkit's [`pushbridge_kit::LineCodec`]
//! (hard limit, close after an over-long line); [`command`] parses
//! commands and formats replies (pure); [`conn`] serves one connection with
//! in-order pipelining; [`limits`] holds its timeouts and the listener's
//! input budget, [`throttle`] the per-address AUTH throttle; [`redact`] is
//! what its trace shows of a line (no secret, message text or full token);
//! this file holds the config and the accept loop.
#![forbid(unsafe_code)]

pub mod command;
pub mod conn;
pub mod limits;
pub mod redact;
pub mod throttle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pushbridge_api::{Adapter, AdapterError, ConfigError, Context};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::limits::Shared;

/// Longest line, terminator included.
pub const MAX_LINE: usize = 8192;

/// `[[adapters.line]]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    /// Address to listen on (loopback by default).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// When set, `AUTH <secret>` is required first.
    pub secret: Option<String>,
    /// Scope of user ids: `<name>:<user>` (default `line`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Most simultaneous connections; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most commands of one connection being processed at once (pipelining).
    #[serde(default = "default_pipeline")]
    pub pipeline: usize,
    /// Seconds a client of a listener with a `secret` has to send `AUTH`
    /// (at least 1).
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout: u64,
    /// Seconds without a command (while no reply is owed) after which a
    /// connection is closed; 0 = never.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: u64,
    /// Seconds a started line may take to complete, and a reply to be read
    /// by the client (at least 1).
    #[serde(default = "default_line_timeout")]
    pub line_timeout: u64,
    /// Bytes of input all connections of this listener may hold at once:
    /// lines read and not answered yet (each charged its length plus
    /// [`limits::COMMAND_OVERHEAD`]). At least 65536.
    #[serde(default = "default_input_budget")]
    pub input_budget: usize,
}

/// Smallest `input_budget`: room for several longest lines.
pub const MIN_INPUT_BUDGET: usize = 65_536;

impl std::fmt::Debug for LineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineConfig")
            .field("listen", &self.listen)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .field("max_connections", &self.max_connections)
            .field("pipeline", &self.pipeline)
            .field("auth_timeout", &self.auth_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("line_timeout", &self.line_timeout)
            .field("input_budget", &self.input_budget)
            .finish()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_name() -> String {
    "line".to_owned()
}
fn default_max_connections() -> usize {
    1024
}
fn default_pipeline() -> usize {
    256
}
fn default_auth_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_line_timeout() -> u64 {
    30
}
fn default_input_budget() -> usize {
    32 << 20
}

/// The line protocol adapter.
pub struct LineAdapter;

impl Adapter for LineAdapter {
    type Config = LineConfig;
    const KIND: &'static str = "line";

    /// Several listeners (ports, addresses) may serve one user-id scope.
    const UNIQUE_NAMES: bool = false;

    /// Never: a listener; every gateway serves the line protocol (behind a
    /// TCP load balancer) and the shared store keeps them consistent.
    fn singleton(_config: &LineConfig) -> bool {
        false
    }

    fn instance_name(config: &LineConfig) -> String {
        config.name.clone()
    }

    fn check(config: &LineConfig) -> Result<(), ConfigError> {
        if config.name.is_empty() || config.name.contains(char::is_whitespace) {
            return Err(ConfigError::new("name", "must be non-empty without spaces"));
        }
        if config.max_connections == 0 {
            return Err(ConfigError::new("max_connections", "must be at least 1"));
        }
        if config.pipeline == 0 {
            return Err(ConfigError::new("pipeline", "must be at least 1"));
        }
        if config.auth_timeout == 0 {
            return Err(ConfigError::new("auth_timeout", "must be at least 1 (seconds)"));
        }
        if config.line_timeout == 0 {
            return Err(ConfigError::new("line_timeout", "must be at least 1 (seconds)"));
        }
        if config.input_budget < MIN_INPUT_BUDGET || config.input_budget > u32::MAX as usize {
            return Err(ConfigError::new(
                "input_budget",
                format!("must be between {MIN_INPUT_BUDGET} and {} (bytes)", u32::MAX),
            ));
        }
        if config.secret.as_deref() == Some("") {
            return Err(ConfigError::new(
                "secret",
                "must not be empty (remove it to disable AUTH)",
            ));
        }
        Ok(())
    }

    async fn run(ctx: Context<LineConfig>) -> Result<(), AdapterError> {
        let listener = TcpListener::bind(ctx.config().listen)
            .await
            .map_err(|e| AdapterError::Config(format!("cannot listen on {}: {e}", ctx.config().listen)))?;
        serve(listener, ctx).await
    }
}

/// Logs and counts the times every connection slot is in use: one WARN
/// when the listener fills up (at most one a minute), one INFO when a slot
/// frees after it.
struct SlotWatch {
    warned_at: Option<Instant>,
}

impl SlotWatch {
    const QUIET: Duration = Duration::from_secs(60);

    /// Every slot is in use; `true` when this was logged.
    fn full(&mut self, ctx: &Context<LineConfig>) -> bool {
        ctx.status().count_slots_exhausted();
        let now = Instant::now();
        if self.warned_at.is_some_and(|t| now.duration_since(t) < Self::QUIET) {
            return false;
        }
        self.warned_at = Some(now);
        let connections = ctx.config().max_connections;
        tracing::warn!(
            adapter = ctx.name(),
            connections,
            "all connection slots in use; new clients wait in the backlog"
        );
        true
    }

    /// Take a connection slot, waiting (and saying so) when none is free;
    /// `None` on shutdown.
    async fn acquire(&mut self, limit: &Arc<Semaphore>, ctx: &Context<LineConfig>) -> Option<OwnedSemaphorePermit> {
        match limit.clone().try_acquire_owned() {
            Ok(p) => return Some(p),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {}
        }
        let logged = self.full(ctx);
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.ok()?,
            _ = ctx.shutdown().cancelled() => return None,
        };
        if logged {
            tracing::info!(adapter = ctx.name(), "a connection slot is free again");
        }
        Some(permit)
    }
}

/// Accept connections on `listener` until shutdown, then wait for the open
/// connections to answer what they already read.
pub async fn serve(listener: TcpListener, ctx: Context<LineConfig>) -> Result<(), AdapterError> {
    let local = listener.local_addr()?;
    tracing::info!(adapter = ctx.name(), listen = %local, auth = ctx.config().secret.is_some(), "line adapter listening");
    let limit = Arc::new(Semaphore::new(ctx.config().max_connections));
    let shared = Arc::new(Shared::new(ctx.config()));
    let mut slots = SlotWatch { warned_at: None };
    let connections = TaskTracker::new();
    let shutdown = ctx.shutdown().clone();
    // EMFILE and friends: back off instead of spinning.
    let mut accept_backoff = pushbridge_kit::Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        // Take the permit before accepting, so excess clients wait in the backlog.
        let Some(permit) = slots.acquire(&limit, &ctx).await else {
            break;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                accept_backoff.reset();
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let shared = shared.clone();
                let open = ctx.status().connection_opened();
                let span = tracing::debug_span!("line_conn", adapter = ctx.name(), %peer);
                connections.spawn(
                    async move {
                        conn::serve(stream, peer, ctx, shared).await;
                        drop((open, permit));
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                let delay = accept_backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "accept failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    tracing::info!(adapter = ctx.name(), "line adapter stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[tokio::test]
    async fn exhausted_slots_are_counted_once_per_episode() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = LineConfig {
            listen: addr,
            secret: None,
            name: "line".into(),
            max_connections: 1,
            pipeline: 4,
            auth_timeout: 10,
            idle_timeout: 300,
            line_timeout: 30,
            input_budget: MIN_INPUT_BUDGET,
        };
        let (ctx, _rx) = Context::for_test("line", config);
        let status = ctx.status().clone();
        tokio::spawn(serve(listener, ctx));
        let ping = |stream: tokio::net::TcpStream| async move {
            let (r, mut w) = stream.into_split();
            w.write_all(b"PING\n").await.unwrap();
            let mut lines = BufReader::new(r).lines();
            assert_eq!(lines.next_line().await.unwrap().unwrap(), "PONG");
            (lines, w)
        };
        let first = ping(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        let second = tokio::spawn(ping(tokio::net::TcpStream::connect(addr).await.unwrap()));
        while status.slots_exhausted() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!second.is_finished(), "the second client waits for a slot");
        drop(first);
        let _second = second.await.unwrap();
        // The second client's connection fills the one slot again: a new episode.
        assert_eq!(status.slots_exhausted(), 2);
    }
}
