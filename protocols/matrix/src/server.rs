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
    let deliveries = match receipts.wait(timeout).await {
        Ok(d) => d,
        Err(e) => {
            // Still queued, but not known to be on disk: not acknowledged.
            tracing::warn!(adapter = ctx.name(), error = %e, "notify not acknowledged: its pushes could not be made durable; the homeserver will retry");
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", e.to_string()));
        }
    };
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use axum::http::Method;
    use pushbridge_api::{Delivery, Envelope, Push, Receipts};
    use tokio::sync::mpsc;
    use tower::ServiceExt as _;

    use super::*;
    use crate::config::MatrixApp;

    const ALICE_B64: &str = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=";

    fn config(outcome_timeout: u64) -> MatrixConfig {
        let mut apps = BTreeMap::new();
        apps.insert(
            "com.example.chat.ios".to_owned(),
            MatrixApp {
                topic: "com.example.chat".into(),
                environment: None,
            },
        );
        MatrixConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            name: "matrix".into(),
            apps,
            outcome_timeout,
            max_body_size: 2048,
        }
    }

    /// What the fake core does with a push event.
    type Core = fn(&[Push]) -> Result<Reply, EventError>;

    /// The router on a test context whose core answers with `core` (and
    /// resolves the receipts as `resolve` says); the pushes it saw.
    fn gateway(
        outcome_timeout: u64,
        core: Core,
        resolve: Vec<Delivery>,
    ) -> (Router, mpsc::UnboundedReceiver<Vec<Push>>) {
        let (ctx, mut rx) = Context::for_test("matrix", config(outcome_timeout));
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Envelope { event, reply, .. }) = rx.recv().await {
                let Event::Push(pushes) = event else {
                    panic!("only pushes")
                };
                let answer = core(&pushes);
                if let Ok(Reply::Pushed(r)) = &answer {
                    let (r, resolve) = (r.clone(), resolve.clone());
                    tokio::spawn(async move {
                        tokio::task::yield_now().await;
                        for (id, d) in r.ids().to_vec().into_iter().zip(resolve) {
                            r.resolve(id, d);
                        }
                    });
                }
                let _ = seen_tx.send(pushes);
                if let Some(tx) = reply {
                    let _ = tx.send(answer);
                }
            }
        });
        (router(ctx), seen)
    }

    fn queued(pushes: &[Push]) -> Result<Reply, EventError> {
        Ok(Reply::Pushed(Receipts::new((1..=pushes.len() as i64).collect())))
    }

    fn body(devices: &str) -> String {
        format!(
            r#"{{"notification":{{"content":{{"body":"hello alice","msgtype":"m.text"}},"counts":{{"unread":1}},"devices":[{devices}],"event_id":"$e","prio":"high","room_id":"!r:localhost","room_name":"Probe room","sender":"@bob:localhost","sender_display_name":"Bob","type":"m.room.message"}}}}"#
        )
    }

    fn device(app_id: &str, pushkey: &str) -> String {
        format!(r#"{{"app_id":"{app_id}","pushkey":"{pushkey}","tweaks":{{"sound":"default"}}}}"#)
    }

    async fn call(app: &Router, method: Method, path: &str, body: String) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn get_and_unknown_paths_are_matrix_errors() {
        let (app, _) = gateway(0, queued, vec![]);
        let (s, v) = call(&app, Method::GET, NOTIFY_PATH, String::new()).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(v["errcode"], "M_UNRECOGNIZED");
        let (s, v) = call(&app, Method::POST, "/_matrix/push/v2/notify", body("")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v["errcode"], "M_UNRECOGNIZED");
    }

    #[tokio::test]
    async fn bad_bodies_are_400_with_the_matrix_error() {
        let (app, mut seen) = gateway(0, queued, vec![]);
        let (s, v) = call(&app, Method::POST, NOTIFY_PATH, "{not json".into()).await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_NOT_JSON"))
        );
        let (s, v) = call(
            &app,
            Method::POST,
            NOTIFY_PATH,
            r#"{"notification":{"devices":"x"}}"#.into(),
        )
        .await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
        );
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(seen.try_recv().is_err(), "nothing reached the core");
    }

    #[tokio::test]
    async fn an_over_large_body_is_413() {
        let (app, mut seen) = gateway(0, queued, vec![]);
        let big = body(&device("com.example.chat.ios", &"A".repeat(4000)));
        // Without a Content-Length: found while reading.
        let (s, v) = call(&app, Method::POST, NOTIFY_PATH, big.clone()).await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE"))
        );
        // With one: refused before reading.
        let req = Request::post(NOTIFY_PATH)
            .header(header::CONTENT_LENGTH, big.len())
            .body(Body::from(big))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(seen.try_recv().is_err());
    }

    #[tokio::test]
    async fn unknown_apps_and_malformed_pushkeys_are_rejected_the_rest_queued() {
        let (app, mut seen) = gateway(0, queued, vec![]);
        let hex = "CD".repeat(32);
        let devices = [
            device("com.example.chat.ios", ALICE_B64),
            device("com.example.unknown", ALICE_B64),
            device("com.example.chat.ios", "!!not a key!!"),
            device("com.example.chat.ios", &hex),
            device("com.example.chat.ios", ALICE_B64.trim_end_matches('=')),
        ]
        .join(",");
        let (s, v) = call(&app, Method::POST, NOTIFY_PATH, body(&devices)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!({"rejected": [ALICE_B64, "!!not a key!!"]}));
        let pushes = seen.try_recv().expect("one event for the valid devices");
        let tokens: Vec<&str> = pushes.iter().map(|p| p.token.as_str()).collect();
        let (ab, cd) = ("ab".repeat(32), "cd".repeat(32));
        assert_eq!(tokens, [ab.as_str(), cd.as_str(), ab.as_str()]);
        assert!(pushes.iter().all(|p| !p.track), "outcome_timeout = 0 tracks nothing");
        assert!(seen.try_recv().is_err(), "all pushes of a notify in one event");
    }

    #[tokio::test(start_paused = true)]
    async fn pushkeys_apple_refused_for_good_are_rejected() {
        let gone = Delivery::Refused {
            reason: "410 Unregistered".into(),
            device_gone: true,
        };
        let dropped = Delivery::Refused {
            reason: "400 PayloadTooLarge".into(),
            device_gone: false,
        };
        let (app, mut seen) = gateway(10, queued, vec![Delivery::Delivered, gone, dropped]);
        let hex = "cd".repeat(32);
        let other = "ef".repeat(32);
        let devices = [
            device("com.example.chat.ios", ALICE_B64),
            device("com.example.chat.ios", &hex),
            device("com.example.chat.ios", &other),
        ]
        .join(",");
        let started = tokio::time::Instant::now();
        let (s, v) = call(&app, Method::POST, NOTIFY_PATH, body(&devices)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!({"rejected": [hex]}));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered when the outcomes were in"
        );
        assert!(seen.try_recv().unwrap().iter().all(|p| p.track));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_outcomes_are_answered_at_the_deadline() {
        let (app, _seen) = gateway(10, queued, vec![Delivery::Delivered]);
        let devices = [
            device("com.example.chat.ios", ALICE_B64),
            device("com.example.chat.ios", &"cd".repeat(32)),
        ]
        .join(",");
        let started = tokio::time::Instant::now();
        let (s, v) = call(&app, Method::POST, NOTIFY_PATH, body(&devices)).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"rejected": []})));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_pushes_that_cannot_be_made_durable_are_503() {
        let core: Core = |p| {
            let r = Receipts::new((1..=p.len() as i64).collect());
            r.set_durability(Arc::new(|| {
                Box::pin(async { Err(EventError::Unavailable("store: disk full".into())) })
            }));
            Ok(Reply::Pushed(r))
        };
        // Apple answers in time: nothing to make durable, answered 200.
        let (app, _) = gateway(10, core, vec![Delivery::Delivered]);
        let one = body(&device("com.example.chat.ios", ALICE_B64));
        let (s, _) = call(&app, Method::POST, NOTIFY_PATH, one.clone()).await;
        assert_eq!(s, StatusCode::OK);
        // Pending at the deadline and not durable: not acknowledged.
        let (app, _) = gateway(10, core, vec![]);
        let (s, v) = call(&app, Method::POST, NOTIFY_PATH, one).await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("M_UNKNOWN"))
        );
    }

    #[tokio::test]
    async fn a_store_failure_is_503_and_a_misconfigured_topic_500() {
        let (app, _) = gateway(10, |_| Err(EventError::Unavailable("store: disk full".into())), vec![]);
        let (s, v) = call(
            &app,
            Method::POST,
            NOTIFY_PATH,
            body(&device("com.example.chat.ios", ALICE_B64)),
        )
        .await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("M_UNKNOWN"))
        );
        let (app, _) = gateway(10, |p| Err(EventError::UnknownTopic(p[0].topic.clone())), vec![]);
        let (s, _) = call(
            &app,
            Method::POST,
            NOTIFY_PATH,
            body(&device("com.example.chat.ios", ALICE_B64)),
        )
        .await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn a_badge_update_with_nothing_to_show_answers_without_queueing() {
        let (app, mut seen) = gateway(10, queued, vec![]);
        let body = format!(
            r#"{{"notification":{{"devices":[{}],"id":"","sender":"","type":null}}}}"#,
            device("com.example.chat.ios", ALICE_B64)
        );
        let (s, v) = call(&app, Method::POST, NOTIFY_PATH, body).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"rejected": []})));
        assert!(seen.try_recv().is_err());
    }
}
