//! The line protocol adapter: one command per line over TCP, one reply per
//! command, in order. See the README's protocol reference.
//!
//! Layout: lines are framed by the toolkit's [`pushbridge_kit::LineCodec`]
//! (hard limit, close after an over-long line); [`command`] parses
//! commands and formats replies (pure); [`conn`] serves one connection with
//! in-order pipelining; [`redact`] is what its trace shows of a line (no
//! secret, message text or full token); this file holds the config and the accept loop.
#![forbid(unsafe_code)]

pub mod command;
pub mod conn;
pub mod redact;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pushbridge_api::{Adapter, AdapterError, ConfigError, Context};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

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
}

impl std::fmt::Debug for LineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineConfig")
            .field("listen", &self.listen)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .field("max_connections", &self.max_connections)
            .field("pipeline", &self.pipeline)
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

/// The line protocol adapter.
pub struct LineAdapter;

impl Adapter for LineAdapter {
    type Config = LineConfig;
    const KIND: &'static str = "line";

    /// Several listeners (ports, addresses) may serve one user-id scope.
    const UNIQUE_NAMES: bool = false;

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

/// Accept connections on `listener` until shutdown, then wait for the open
/// connections to answer what they already read.
pub async fn serve(listener: TcpListener, ctx: Context<LineConfig>) -> Result<(), AdapterError> {
    let local = listener.local_addr()?;
    tracing::info!(adapter = ctx.name(), listen = %local, auth = ctx.config().secret.is_some(), "line adapter listening");
    let limit = Arc::new(Semaphore::new(ctx.config().max_connections));
    let connections = TaskTracker::new();
    let shutdown = ctx.shutdown().clone();
    // EMFILE and friends: back off instead of spinning.
    let mut accept_backoff = pushbridge_kit::Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        // Take the permit before accepting, so excess clients wait in the backlog.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.map_err(|e| AdapterError::Other(e.to_string()))?,
            _ = shutdown.cancelled() => break,
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
                let open = ctx.status().connection_opened();
                let span = tracing::debug_span!("line_conn", adapter = ctx.name(), %peer);
                connections.spawn(
                    async move {
                        conn::serve(stream, peer, ctx).await;
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
