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
use crate::store::StoreHandle;

/// `[admin]`: absent means no admin listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to serve on, e.g. `127.0.0.1:9464` (Prometheus exporters'
    /// conventional range). Anyone who can reach it can read the metrics.
    pub listen: SocketAddr,
}

/// How long a scrape or readiness check waits for the store thread.
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
}

impl AdminState {
    /// The outbox per app, or why the store did not answer.
    async fn outbox(&self) -> Result<Vec<crate::store::stats::AppOutbox>, String> {
        let Some(store) = &self.store else {
            return Err("no store".to_owned());
        };
        match tokio::time::timeout(STORE_ANSWER, store.outbox_stats()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("store: {e}")),
            Err(_) => Err(format!(
                "the store thread did not answer within {} s",
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
