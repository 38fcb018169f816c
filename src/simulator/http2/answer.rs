//! One request from start to answer: count it as active, check it, wait
//! the configured delay, record it if accepted, and send the response
//! (`apns-id` echoed or made up; refusals carry Apple's JSON body).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response, StatusCode};

use super::auth::{self, ConnAuth};
use super::check::{check, Refusal};
use super::{now_ms, State};
use crate::apns::{ErrorBody, Reason};
use crate::sink::http2::request::is_uuid;

/// The answer to one request as a boxed future (the connection keeps its
/// requests in a `FuturesUnordered`). `has_cert`: the connection
/// presented a client certificate; `conn`: its number (from 1).
pub(super) fn handle(
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
    respond: SendResponse<Bytes>,
    state: Arc<State>,
    has_cert: bool,
    conn: u64,
    conn_auth: ConnAuth,
) {
    let apns_id = req
        .headers()
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let now_active = state.active.fetch_add(1, Ordering::AcqRel) + 1;
    state.max_active.fetch_max(now_active, Ordering::AcqRel);
    let result = check(req, &state, has_cert, conn, &conn_auth).await;
    if let Err(Refusal(_, Reason::ExpiredProviderToken)) = &result {
        auth::mark_expired(&conn_auth);
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
    send(respond, status, echo, body);
}

/// Send the response: `status`, the `apns-id` header and, for a refusal,
/// the JSON `body`. A stream the client already reset is let go.
fn send(mut respond: SendResponse<Bytes>, status: u16, apns_id: String, body: Option<String>) {
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("apns-id", apns_id);
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
