//! One notification on one HTTP/2 stream: opening it (headers, body),
//! waiting for Apple's answer and acting on it, and `pushbridge push`'s
//! single request ([`send_one`]).

use std::sync::Arc;

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use super::conn::{self, Answer};
use super::{refusal, request, Auth, ConnCreds, Creds, Http2Setup, Link, StreamEnd, ANSWER_TIMEOUT};
use crate::apns::{classify, Action, Reason};
use crate::outcome::{Notification, Outcome};
use crate::sink::live::Live;
use crate::sink::pool::{self, Shared};

/// Act on Apple's answer from `host`; whether it refused the credential
/// (the notification is then held, not settled).
fn answer(shared: &Shared, auth: &Auth, host: &str, n: Notification, answer: Answer, bearer: Option<&str>) -> bool {
    let (reason, ts) = match &answer.error {
        Some(e) => (e.reason.clone(), e.timestamp_ms),
        None => (Reason::Other(String::new()), None),
    };
    let reminted = match (auth, bearer) {
        (Auth::Token(signer), Some(used)) => signer.is_reminted(used),
        _ => false,
    };
    if let Some(plain) = refusal::answer_reason(answer.status, &reason, reminted) {
        if let (Reason::ExpiredProviderToken, Auth::Token(signer), Some(used)) = (&reason, auth, bearer) {
            // Even a fresh token is called expired (a clock that is off):
            // held like any refusal; the signer mints again when its
            // minimum interval allows, in case the clock was put right.
            signer.expired(used);
        }
        shared.hold(n, host, &plain);
        return true;
    }
    // "410 Unregistered"; the status alone when Apple gave no reason.
    let status_reason = match reason.as_str() {
        "" => answer.status.to_string(),
        r => format!("{} {r}", answer.status),
    };
    match classify(answer.status, &reason) {
        Action::Delivered => shared.finish(n, Outcome::Delivered),
        Action::RemoveDevice => {
            let outcome = Outcome::Rejected {
                reason: status_reason,
                remove_device: true,
                since_ms: ts,
            };
            shared.finish(n, outcome)
        }
        Action::RefreshToken => {
            if let (Auth::Token(signer), Some(used)) = (auth, bearer) {
                signer.expired(used);
            }
            shared.retry(n, &status_reason)
        }
        Action::Retry => shared.retry(n, &status_reason),
        Action::Drop => shared.finish(n, Outcome::dropped(status_reason)),
    }
    false
}

/// What [`open_stream`] did with a notification.
pub(super) enum Opened {
    /// Sent: its answer arrives through this future.
    Stream(futures::future::BoxFuture<'static, StreamEnd>),
    /// It cannot be sent at all and is settled.
    Settled,
    /// The connection refused a new stream: send it elsewhere.
    Refused(Notification),
}

/// Send `n` on a new stream of a ready connection.
pub(super) fn open_stream(
    send: &mut h2::client::SendRequest<Bytes>,
    requests: &mut request::RequestBuilder,
    (link, creds): (&Link, &ConnCreds),
    n: Notification,
    shared: &Arc<Shared>,
) -> Opened {
    let bearer = match &creds.value.auth {
        Auth::Token(s) => Some(s.token()),
        Auth::Certificate => None,
    };
    let apns_id = request::apns_id(link.prefix, n.id);
    let req = match requests.build(&n, &apns_id, bearer.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            shared.finish(n, Outcome::dropped(format!("cannot be sent: {e}")));
            return Opened::Settled;
        }
    };
    let (resp, mut body) = match send.send_request(req, false) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "cannot open stream");
            return Opened::Refused(n);
        }
    };
    let payload = Bytes::copy_from_slice(n.payload.as_bytes());
    if let Err(e) = body.send_data(payload, true) {
        tracing::debug!(apns_id, error = %e, "stream lost while sending");
        // The response future reports the loss.
    }
    let signed = Signed {
        creds: creds.clone(),
        current: link.creds.clone(),
        host: link.host.clone(),
        bearer,
    };
    Opened::Stream(Box::pin(await_answer(resp, n, shared.clone(), signed)))
}

/// How a request was authenticated.
struct Signed {
    /// The credentials of its connection.
    creds: ConnCreds,
    /// The current ones (replaced by a reload since?).
    current: Live<Creds>,
    /// The provider token it carried (token auth).
    bearer: Option<Arc<str>>,
    /// The APNS host (log field `host`).
    host: Arc<str>,
}

impl Signed {
    /// A reload replaced the credentials it was sent with.
    fn outdated(&self) -> bool {
        self.current.borrow().generation != self.creds.generation
    }
}

/// Wait for the answer on one stream and act on it.
async fn await_answer(
    resp: h2::client::ResponseFuture,
    n: Notification,
    shared: Arc<Shared>,
    signed: Signed,
) -> StreamEnd {
    let lost = StreamEnd {
        answered: false,
        token_ok: false,
        refused: false,
    };
    let sent = tokio::time::Instant::now();
    let answer_or_timeout = match tokio::time::timeout(ANSWER_TIMEOUT, conn::read_answer(resp)).await {
        Ok(r) => r,
        Err(_) => {
            // Dropping the stream resets it (CANCEL).
            let why = format!("no answer within {} s", ANSWER_TIMEOUT.as_secs());
            shared.outcomes.lost(1, &why);
            shared.retry(n, &why);
            return lost;
        }
    };
    match answer_or_timeout {
        Ok(a) if a.status == 403 && signed.outdated() => {
            // Refused with credentials a reload has replaced (the old key
            // revoked): send again with the new ones, not a retry spent.
            tracing::debug!(apns_id = ?a.apns_id, "refused with replaced credentials; sending again");
            shared.resend(n);
            StreamEnd {
                answered: true,
                token_ok: false,
                refused: false,
            }
        }
        Ok(a) => {
            shared.outcomes.answered(sent.elapsed());
            let token_ok = a.status == 200 || matches!(a.status, 400 | 404 | 405 | 410 | 413);
            let refused = answer(
                &shared,
                &signed.creds.value.auth,
                &signed.host,
                n,
                a,
                signed.bearer.as_deref(),
            );
            if token_ok && !refused {
                shared.accepted(&signed.host);
            }
            StreamEnd {
                answered: true,
                token_ok: token_ok && !refused,
                refused,
            }
        }
        Err(e) => {
            // Streams past a GOAWAY's last-stream-id, and refused
            // ones, were not processed; anything else may have been.
            let unprocessed = e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM));
            if unprocessed {
                // APNS never looked at it: send again at once, without
                // spending one of its retries.
                shared.resend(n);
            } else {
                let why = format!("stream lost: {e}");
                shared.outcomes.lost(1, &why);
                shared.retry(n, &why);
            }
            lost
        }
    }
}

/// Why `pushbridge push` got no answer from APNS.
#[derive(Debug, thiserror::Error)]
pub enum SendOneError {
    #[error("endpoint {0}")]
    Endpoint(#[from] pushbridge_kit::AddressError),
    #[error(transparent)]
    Connect(#[from] conn::ConnectError),
    /// APNS refused the client certificate (its TLS alert, in plain words).
    #[error("{0}")]
    Refused(String),
    #[error("cannot build the request: {0}")]
    Request(#[from] request::BuildError),
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("no answer from APNS within {} s", conn::CONNECT_TIMEOUT.as_secs())]
    Timeout,
}

/// Send one notification on a fresh connection and return Apple's answer
/// (`pushbridge push`). `apns_id`: the id to send.
pub async fn send_one(setup: &Http2Setup, n: &Notification, apns_id: &str) -> Result<Answer, SendOneError> {
    let target = setup.target(n.environment)?;
    let tasks = TaskTracker::new();
    let c = conn::connect(
        &target,
        &conn::connector(setup.tls.clone()),
        setup.ping_interval,
        &tasks,
    )
    .await
    .map_err(|e| match e.credential_alert() {
        Some(alert) => SendOneError::Refused(refusal::alert_reason(alert, &setup.report, pool::unix_now())),
        None => e.into(),
    })?;
    let bearer = match &setup.auth {
        Auth::Token(s) => Some(s.token()),
        Auth::Certificate => None,
    };
    let req = request::build(n, &target.authority, apns_id, bearer.as_deref())?;
    let mut send = c.send.ready().await?;
    let (resp, mut body) = send.send_request(req, false)?;
    body.send_data(Bytes::copy_from_slice(n.payload.as_bytes()), true)?;
    Ok(tokio::time::timeout(conn::CONNECT_TIMEOUT, conn::read_answer(resp))
        .await
        .map_err(|_| SendOneError::Timeout)??)
}
