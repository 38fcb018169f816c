//! The admin HTTP listener (`[admin] listen`): `GET /metrics` (Prometheus
//! text format), `GET /healthz` (liveness), `GET /readyz` (readiness, with
//! the reason when not ready) and `GET /status` (the JSON summary
//! `pushbridge status` prints). Served by axum over HTTP/1.1; meant for
//! loopback or a private network (it has no authentication).
//!
//! - [`ready`]: what "ready" means, part by part;
//! - [`status`]: the JSON summary and its one-minute history.

pub mod ready;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Scrape, Sources};
use crate::store::stats::AppOutbox;
use crate::store::StoreHandle;

/// `[admin]`: absent means no admin listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to serve on, e.g. `127.0.0.1:9464` (Prometheus exporters'
    /// conventional range). Anyone who can reach it can read the metrics.
    pub listen: SocketAddr,
}

impl AdminConfig {
    /// Only the `[admin]` section of the config file at `path` (what
    /// `pushbridge status` needs: it must work while the rest, e.g. an
    /// expired certificate, would be refused, and without read access to
    /// the credentials). `Ok(None)` when the file has no `[admin]`.
    pub fn peek(path: &std::path::Path) -> Result<Option<AdminConfig>, crate::config::ConfigError> {
        use crate::config::ConfigError;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        match table.get("admin") {
            None => Ok(None),
            Some(v) => v
                .clone()
                .try_into()
                .map(Some)
                .map_err(|e: toml::de::Error| ConfigError::Invalid(format!("[admin]: {e}"))),
        }
    }
}

/// How long a scrape or readiness check waits for the store thread's
/// answer and the outbox statistics.
const STORE_ANSWER: Duration = Duration::from_secs(2);

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Counters, store numbers, adapter statuses.
    pub sources: Sources,
    /// For outbox statistics (and to see that the store thread answers);
    /// `None` for a sink benchmark without a store.
    pub store: Option<StoreHandle>,
    /// Recent totals, for "in the last minute".
    pub history: Arc<status::History>,
    /// The last outbox statistics, reused for [`OUTBOX_FRESH`] (counting
    /// a large outbox is work, done over a connection of the store's
    /// statistics reader, not by the store thread).
    pub outbox_cache: Arc<std::sync::Mutex<Option<OutboxSample>>>,
}

/// Outbox statistics and when they were read.
pub type OutboxSample = (tokio::time::Instant, Vec<AppOutbox>);

/// How long outbox statistics are reused by scrapes and readiness checks.
pub const OUTBOX_FRESH: Duration = Duration::from_secs(1);

impl AdminState {
    /// The outbox per app, or why the store did not answer.
    async fn outbox(&self) -> Result<Vec<AppOutbox>, String> {
        let Some(store) = &self.store else {
            return Err("no store".to_owned());
        };
        let cached = |c: &Option<OutboxSample>| {
            c.as_ref()
                .filter(|(at, _)| at.elapsed() < OUTBOX_FRESH)
                .map(|(_, v)| v.clone())
        };
        if let Some(v) = cached(&self.outbox_cache.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(v);
        }
        match tokio::time::timeout(STORE_ANSWER, store.outbox_stats()).await {
            Ok(Ok(v)) => {
                *self.outbox_cache.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((tokio::time::Instant::now(), v.clone()));
                Ok(v)
            }
            Ok(Err(e)) => Err(format!("store: {e}")),
            Err(_) => Err(format!(
                "the store did not answer within {} s (its thread, or counting the outbox)",
                STORE_ANSWER.as_secs()
            )),
        }
    }
}

/// The routes, for [`serve`] and tests.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .route("/readyz", get(get_readyz))
        .route("/status", get(get_status))
        .with_state(state)
}

/// Bind `config.listen` (errors name the address).
pub async fn bind(config: &AdminConfig) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("admin listen {}: {e}", config.listen)))
}

/// Serve the admin routes on `listener` until `stop` is cancelled; also
/// samples the totals every few seconds for `/status`.
pub async fn serve(listener: tokio::net::TcpListener, state: AdminState, stop: CancellationToken) {
    match listener.local_addr() {
        Ok(local) => tracing::info!(listen = %local, "admin listener up (/metrics, /healthz, /readyz, /status)"),
        Err(e) => tracing::warn!(error = %e, "admin listener up, address unknown"),
    }
    let sampler = tokio::spawn(status::sample_every(
        state.history.clone(),
        state.sources.counters.clone(),
        stop.clone(),
    ));
    let app = router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin listener failed");
    }
    sampler.abort();
}

async fn get_metrics(State(s): State<AdminState>) -> Response {
    let outbox = match s.outbox().await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "scrape without outbox numbers");
            None
        }
    };
    let scrape = Scrape {
        outbox,
        now_ms: crate::store::db::now_ms(),
        process: metrics::process::ProcessStats::read(),
    };
    let body = metrics::render(&s.sources, scrape);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

async fn get_healthz(State(s): State<AdminState>) -> Response {
    if s.store.as_ref().is_some_and(|st| st.is_closed()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "store thread stopped\n").into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn get_readyz(State(s): State<AdminState>) -> Response {
    let report = ready::check(&s).await;
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn get_status(State(s): State<AdminState>) -> Response {
    Json(status::collect(&s).await).into_response()
}
