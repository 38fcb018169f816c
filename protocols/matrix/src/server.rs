//! The HTTP side: `POST /_matrix/push/v1/notify` over HTTP/1.1 (axum),
//! answered `200 {"rejected":[…]}`; errors in the Matrix error JSON
//! (`{"errcode":…,"error":…}`): 400 `M_NOT_JSON` / `M_BAD_JSON`, 413
//! `M_TOO_LARGE`, 405 / 404 `M_UNRECOGNIZED`, 503 `M_UNKNOWN` when the
//! pushes could not be queued (the homeserver retries; nothing was
//! queued), 500 `M_UNKNOWN` when the gateway is misconfigured.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use pushbridge_api::{Context, Event, EventError, Reply};
use serde_json::json;

use crate::config::MatrixConfig;
use crate::notify::{decode_pushkey, parse_notify, Notify};
use crate::payload::to_push;

/// The one endpoint.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// The routes, for the listener and tests.
pub fn router(ctx: Context<MatrixConfig>) -> Router {
    Router::new()
        .route(NOTIFY_PATH, post(notify).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(Arc::new(ctx))
}

/// A Matrix error answer.
fn error(status: StatusCode, errcode: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"errcode": errcode, "error": message.into()}))).into_response()
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "only POST is allowed here",
    )
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "unknown endpoint")
}

/// Read the body, at most `limit` bytes; `Err` is the answer.
async fn read_body(body: Body, declared: Option<u64>, limit: usize) -> Result<axum::body::Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            format!("request body over {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let over = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                Err(too_large())
            } else {
                Err(error(
                    StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "cannot read the request body",
                ))
            }
        }
    }
}

async fn notify(State(ctx): State<Arc<Context<MatrixConfig>>>, request: Request) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = match read_body(request.into_body(), declared, ctx.config().max_body_size).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let notify = match parse_notify(&bytes) {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(adapter = ctx.name(), error = %e, "notify refused");
            return error(StatusCode::BAD_REQUEST, e.errcode(), e.to_string());
        }
    };
    match handle(&ctx, &notify).await {
        Ok(rejected) => (StatusCode::OK, Json(json!({ "rejected": rejected }))).into_response(),
        Err(answer) => answer,
    }
}

/// Queue the pushes of `notify` and wait for their outcomes (up to
/// `outcome_timeout`); the pushkeys to reject, or the error answer.
async fn handle(ctx: &Context<MatrixConfig>, notify: &Notify) -> Result<Vec<String>, Response> {
    let n = &notify.notification;
    let config = ctx.config();
    let timeout = config.outcome_timeout();
    let mut rejected = Vec::new();
    // The pushkey of each push, in the order of the receipts.
    let (mut pushes, mut keys) = (Vec::new(), Vec::new());
    for device in &n.devices {
        let Some(app) = config.apps.get(&device.app_id) else {
            tracing::info!(adapter = ctx.name(), app_id = %device.app_id, "pushkey rejected: app_id not configured");
            rejected.push(device.pushkey.clone());
            continue;
        };
        let token = match decode_pushkey(&device.pushkey) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(adapter = ctx.name(), app = %app.topic, error = %e, "pushkey rejected: malformed");
                rejected.push(device.pushkey.clone());
                continue;
            }
        };
        if let Some(p) = to_push(n, device, app, token, !timeout.is_zero()) {
            keys.push(device.pushkey.as_str());
            pushes.push(p);
        }
    }
    if pushes.is_empty() {
        return Ok(rejected);
    }
    let receipts = match ctx.submit(Event::Push(pushes)).await {
        Ok(Reply::Pushed(r)) => r,
        Ok(_) => {
            tracing::error!(adapter = ctx.name(), "unexpected answer to a push");
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "unexpected answer",
            ));
        }
        Err(e @ (EventError::Unavailable(_) | EventError::ShuttingDown)) => {
            tracing::warn!(adapter = ctx.name(), error = %e, "notify not queued; the homeserver will retry");
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", e.to_string()));
        }
        Err(e @ (EventError::UnknownTopic(_) | EventError::NoSuchDevice)) => {
            tracing::error!(adapter = ctx.name(), error = %e, "notify not queued: [[adapters.matrix]] apps names a topic that is not an [[apps]] topic");
            return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", e.to_string()));
        }
    };
    let deliveries = receipts.wait(timeout).await;
    for ((delivery, key), id) in deliveries.iter().zip(&keys).zip(receipts.ids()) {
        if delivery.device_gone() {
            tracing::info!(
                adapter = ctx.name(),
                notification = id,
                "pushkey rejected: APNS refused the token"
            );
            rejected.push((*key).to_owned());
        }
    }
    tracing::debug!(
        adapter = ctx.name(),
        devices = n.devices.len(),
        rejected = rejected.len(),
        pending = deliveries.iter().filter(|d| !d.is_final()).count(),
        "notify answered"
    );
    Ok(rejected)
}
