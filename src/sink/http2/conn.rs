//! One TLS + HTTP/2 connection to an APNS host: connecting (ALPN `h2`,
//! certificates verified), keep-alive PINGs, and reading Apple's answers.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use h2::Ping;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::apns::ErrorBody;
pub use crate::sink::net::{connect_tls, ConnectError, PeerState, Target, Watched, CONNECT_TIMEOUT};

/// Default `ping_interval`: a PING goes out this often; Apple recommends
/// keeping connections open for hours, and middleboxes forget quiet ones.
pub const PING_EVERY: Duration = Duration::from_secs(60);
/// A connection whose PING is not answered within this (or within the
/// PING interval, if shorter) is given up.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to speak first (its SETTINGS) before we
/// write our preface anyway (see [`crate::sink::net`] for why we wait).
pub const FIRST_WORD: Duration = Duration::from_secs(2);
/// Error bodies are small JSON; anything longer is cut.
const MAX_ERROR_BODY: usize = 4096;

/// A live connection: the handle to open streams, and a token cancelled
/// when the connection is gone (closed, GOAWAY drained, PING unanswered).
pub struct Conn {
    pub send: SendRequest<Bytes>,
    pub closed: CancellationToken,
    /// Why the connection ended (`closed`, `goaway`, `io error`, `error`,
    /// `ping timeout`), set before `closed` is cancelled; unset while it
    /// is up or when pushbridge closed it.
    pub cause: Arc<OnceLock<&'static str>>,
}

/// Connect, handshake and start the connection's driver task in `tasks`.
/// The connection is returned once the server has sent its first frame
/// (its SETTINGS, RFC 9113 §3.4): only then do we know that it accepted
/// the TLS session, client certificate included. A server that refuses it
/// is [`ConnectError::Closed`] with its alert.
pub async fn connect(
    target: &Target,
    tls: &TlsConnector,
    ping_every: Duration,
    tasks: &TaskTracker,
) -> Result<Conn, ConnectError> {
    let name = &target.authority;
    let timed = |what: &str| ConnectError::Timeout(format!("{what} {name}"));
    let stream = connect_tls(target, tls).await?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(ConnectError::NoH2(name.clone()));
    }
    let peer = Arc::new(PeerState::default());
    let mut stream = Watched::new(stream, peer.clone());
    if let Err(e) = stream.first_word(FIRST_WORD).await {
        return Err(match peer.alert() {
            Some(alert) => ConnectError::Closed {
                host: name.clone(),
                alert: Some(alert),
            },
            None => ConnectError::Session(name.clone(), e),
        });
    }
    let (send, connection) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .max_frame_size(1 << 16)
            .enable_push(false)
            .handshake::<_, Bytes>(stream),
    )
    .await
    .map_err(|_| timed("HTTP/2 handshake with"))?
    .map_err(|e| ConnectError::H2(name.clone(), e))?;
    let closed = CancellationToken::new();
    let cause = Arc::new(OnceLock::new());
    let ended = Ended {
        closed: closed.clone(),
        cause: cause.clone(),
    };
    tasks.spawn(drive(connection, name.clone(), ended, ping_every, Some(peer.clone())).in_current_span());
    tokio::select! {
        biased;
        _ = peer.spoken() => Ok(Conn { send, closed, cause }),
        _ = closed.cancelled() => Err(ConnectError::Closed { host: name.clone(), alert: peer.alert() }),
        _ = tokio::time::sleep(CONNECT_TIMEOUT) => Err(timed("HTTP/2 SETTINGS from")),
    }
}

/// How [`drive`] says the connection ended.
struct Ended {
    closed: CancellationToken,
    cause: Arc<OnceLock<&'static str>>,
}

impl Ended {
    fn with(&self, r: &Result<(), h2::Error>) {
        let cause = match r {
            Ok(()) => "closed",
            Err(e) if e.is_go_away() => "goaway",
            Err(e) if e.is_io() => "io error",
            Err(_) => "error",
        };
        let _ = self.cause.set(cause);
    }
}

/// Run the connection until it ends, PINGing it every `ping_every`; a
/// PING left unanswered ends it (a dead peer or a forgotten NAT mapping
/// would otherwise hold streams until their answer timeout). A connection
/// the server ends before it `peer` spoke is logged at DEBUG only: the
/// caller of [`connect`] reports it.
async fn drive<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut conn: Connection<T, Bytes>,
    name: String,
    ended: Ended,
    ping_every: Duration,
    peer: Option<Arc<PeerState>>,
) {
    let quiet = || peer.as_ref().is_some_and(|p| !p.spoke());
    let pong_timeout = PONG_TIMEOUT.min(ping_every);
    let mut pinger = conn.ping_pong();
    loop {
        tokio::select! {
            r = &mut conn => {
                ended.with(&r);
                match r {
                    Ok(()) => tracing::debug!(host = %name, "APNS connection closed"),
                    Err(e) if quiet() => tracing::debug!(host = %name, error = %e, "APNS connection ended before it started"),
                    Err(e) => tracing::info!(host = %name, error = %e, "APNS connection ended"),
                }
                break;
            }
            _ = tokio::time::sleep(ping_every) => {}
        }
        let Some(p) = pinger.as_mut() else { continue };
        tokio::select! {
            r = &mut conn => {
                ended.with(&r);
                if let Err(e) = r {
                    tracing::info!(host = %name, error = %e, "APNS connection ended");
                }
                break;
            }
            pong = tokio::time::timeout(pong_timeout, p.ping(Ping::opaque())) => {
                if !matches!(pong, Ok(Ok(_))) {
                    let _ = ended.cause.set("ping timeout");
                    tracing::warn!(host = %name, "APNS did not answer PING; reconnecting");
                    break;
                }
            }
        }
    }
    ended.closed.cancel();
}

/// Apple's answer to one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Echoed (or Apple-generated) `apns-id`.
    pub apns_id: Option<String>,
    /// The error body for non-200 answers.
    pub error: Option<ErrorBody>,
}

/// Wait for and read the answer on a stream.
pub async fn read_answer(resp: h2::client::ResponseFuture) -> Result<Answer, h2::Error> {
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let apns_id = resp
        .headers()
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        let room = MAX_ERROR_BODY.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    let error = (status != 200).then(|| ErrorBody::parse(status, &buf));
    Ok(Answer { status, apns_id, error })
}

/// TLS connector for a client config.
pub fn connector(config: Arc<rustls::ClientConfig>) -> TlsConnector {
    TlsConnector::from(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's stream handle (the connection ends when it is
    /// dropped), its `closed` token, and the server end.
    type Pair = (
        SendRequest<Bytes>,
        CancellationToken,
        h2::server::Connection<tokio::io::DuplexStream, Bytes>,
        Arc<OnceLock<&'static str>>,
    );

    /// A client connection over an in-memory pipe, driven by [`drive`], and
    /// the server end after its handshake.
    async fn pair(ping_every: Duration) -> Pair {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(h2::server::handshake(server_io));
        let (send, connection) = h2::client::Builder::new()
            .handshake::<_, Bytes>(client_io)
            .await
            .unwrap();
        let closed = CancellationToken::new();
        let ended = Ended {
            closed: closed.clone(),
            cause: Default::default(),
        };
        let cause = ended.cause.clone();
        tokio::spawn(drive(connection, "test".into(), ended, ping_every, None));
        (send, closed, server.await.unwrap().unwrap(), cause)
    }

    #[tokio::test(start_paused = true)]
    async fn an_answering_peer_keeps_the_connection() {
        let (_send, closed, mut server, _) = pair(Duration::from_secs(1)).await;
        // A polled server answers PINGs.
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!closed.is_cancelled(), "30 PINGs answered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_given_up_after_the_pong_timeout() {
        let ping_every = Duration::from_secs(60);
        let (_send, closed, _server, cause) = pair(ping_every).await;
        // The server is never polled again: nothing answers the PING.
        tokio::time::sleep(ping_every + PONG_TIMEOUT - Duration::from_secs(1)).await;
        assert!(!closed.is_cancelled(), "still waiting for the PONG");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(closed.is_cancelled(), "given up once the PONG timeout passed");
        assert_eq!(cause.get(), Some(&"ping timeout"));
    }
}
