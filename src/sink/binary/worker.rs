//! One connection to the binary gateway: connect when there is work,
//! write notifications in coalesced batches, watch for an error response,
//! confirm by time, and reconnect with backoff.
//!
//! When a reload replaces the client certificate, a connection made with
//! the old one takes no more notifications, waits until everything it
//! wrote is confirmed (or failed by an error response), closes, and the
//! worker connects again with the new one; new notifications wait for it
//! (about `binary_confirm_ms`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pushbridge_api::DeviceToken;
use pushbridge_kit::Backoff;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Decoder, Encoder};

use super::codec::{self, ErrorResponseCodec, PushEncoder, PushRef};
use super::window::{requeue_front, settle_error, ConnState, Sent};
use super::{ident, MAX_WINDOW, MIN_WINDOW};
use crate::outcome::{Notification, Outcome};
use crate::sink::credentials::CredentialReport;
use crate::sink::live::Live;
use crate::sink::net::{connect_tls, is_credential_alert, PeerState, Target, Watched, CONNECT_TIMEOUT};
use crate::sink::pool::{self, PoolQueue, Shared};
use crate::sink::refusal::alert_reason;

/// Notifications coalesced into one write.
const BATCH: usize = 512;
/// How often the window is checked for confirmed notifications.
const CONFIRM_TICK: Duration = Duration::from_millis(50);
const RECONNECT_BASE: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(60);

/// What every connection of a pool shares.
#[derive(Clone)]
pub struct Link {
    pub target: Target,
    /// The current TLS config (a connection keeps the one it was made with).
    pub creds: Live<TlsConnector>,
    /// 2 (frames) or 1 (enhanced).
    pub command: u8,
    pub confirm_after: Duration,
    /// What the credential inspection found (to date a certificate alert).
    pub report: Arc<CredentialReport>,
}

/// How a connection ended.
enum End {
    /// The queue closed and everything written was confirmed.
    Done,
    /// APNS sent an error response.
    Error(codec::ErrorResponse),
    /// Closed or failed without an error response.
    Lost(String),
    /// Closed after everything written was confirmed, because a reload
    /// replaced the credentials it was made with.
    Replaced,
}

/// One connection's life.
///
/// The window's size limit adapts like a congestion window: halved (down
/// to [`MIN_WINDOW`]) when a connection is lost with notifications
/// unconfirmed, doubled (up to [`MAX_WINDOW`]) each time notifications are
/// confirmed. A link that keeps dropping still makes progress instead of
/// re-sending the same window forever.
pub async fn worker(index: usize, link: Link, rx: PoolQueue, shared: Arc<Shared>) {
    let host = link.target.authority.as_str();
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
    // Notifications to send before any new ones: replayed after a failure.
    let mut replay: VecDeque<Notification> = VecDeque::new();
    let mut limit = MAX_WINDOW;
    loop {
        if replay.is_empty() {
            let mut first = Vec::with_capacity(1);
            if pool::next_many(&rx, &mut first, 1).await == 0 {
                return;
            }
            replay.extend(first);
        }
        let creds = link.creds.borrow().clone();
        let stream = match connect_tls(&link.target, &creds.value).await {
            Ok(s) => s,
            Err(e) => {
                connect_failed(&e, (host, index), &link, &shared, &mut replay);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        shared.outcomes.connected(host, index);
        // The binary gateway says nothing when it accepts a certificate;
        // in TLS 1.3 its refusal comes as an alert on the first read.
        let peer = Arc::new(PeerState::default());
        let stream = Watched::new(stream, peer.clone());
        let mut conn = ConnState::new(limit, link.confirm_after);
        let current = (link.creds.clone(), creds.generation);
        let end = Session::new(stream, link.command, &shared)
            .run(&mut replay, &mut conn, &rx, current)
            .await;
        let progressed = conn.confirmed > 0;
        limit = conn.limit;
        shared.outcomes.disconnected(host, index, end.cause());
        match end {
            End::Done => return,
            End::Replaced => {
                tracing::debug!(
                    host,
                    connection = index,
                    "connection closed after a reload; connecting with the new credentials"
                );
                backoff.reset();
                continue;
            }
            End::Error(err) => {
                // Everything before the named notification was accepted.
                settle_error(err, &mut conn, &mut replay, &shared);
                backoff.reset();
                continue;
            }
            End::Lost(_) if peer.alert().is_some_and(is_credential_alert) => {
                if let Some(a) = peer.alert() {
                    shared
                        .outcomes
                        .credential_refused(host, &alert_reason(a, &link.report, pool::unix_now()));
                }
                // APNS never took them: sent again on the next connection.
                requeue_front(&mut replay, conn.window.drain(..).map(|s| s.n));
            }
            End::Lost(why) => {
                let unconfirmed = conn.window.len();
                shared.outcomes.lost(unconfirmed as u64, &why);
                tracing::warn!(host, connection = index, reason = %why, unconfirmed, "binary connection lost; re-sending what it had not confirmed");
                requeue_front(&mut replay, conn.window.drain(..).map(|s| s.n));
                limit = (unconfirmed / 2).clamp(MIN_WINDOW, MAX_WINDOW);
            }
        }
        if progressed {
            shared.accepted(host);
            backoff.reset();
        } else {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// A connection attempt failed with `e`: a credential refusal or an
/// unreachable host, recorded; what waits and has expired is settled.
fn connect_failed(
    e: &crate::sink::net::ConnectError,
    (host, index): (&str, usize),
    link: &Link,
    shared: &Shared,
    replay: &mut VecDeque<Notification>,
) {
    match e.credential_alert() {
        Some(a) => shared
            .outcomes
            .credential_refused(host, &alert_reason(a, &link.report, pool::unix_now())),
        None => shared.outcomes.unreachable(host, index, e),
    }
    *replay = replay
        .drain(..)
        .filter_map(|n| shared.unless_expired(n, "expired while APNS was unreachable"))
        .collect();
}

impl End {
    /// The `cause` label of the disconnect.
    fn cause(&self) -> &'static str {
        match self {
            End::Done => "closed by pushbridge",
            End::Error(_) => "error response",
            End::Lost(_) => "lost",
            End::Replaced => "credentials replaced",
        }
    }
}

/// One connection's I/O: the read half watched for an error response, the
/// write half fed coalesced batches.
struct Session<'a, S> {
    rd: ReadHalf<S>,
    wr: WriteHalf<S>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    command: u8,
    shared: &'a Shared,
}

impl<'a, S: AsyncRead + AsyncWrite> Session<'a, S> {
    fn new(stream: S, command: u8, shared: &'a Shared) -> Self {
        let (rd, wr) = tokio::io::split(stream);
        Self {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(64),
            wbuf: BytesMut::with_capacity(64 * 1024),
            command,
            shared,
        }
    }

    /// Write notifications (replays first), watch for an error response,
    /// confirm old entries, until the connection ends. `creds`: the
    /// current credentials and the generation this connection was made with.
    async fn run(
        mut self,
        replay: &mut VecDeque<Notification>,
        conn: &mut ConnState,
        rx: &PoolQueue,
        (mut current, generation): (Live<TlsConnector>, u64),
    ) -> End {
        let mut batch: Vec<Notification> = Vec::with_capacity(BATCH);
        let mut tick = tokio::time::interval(CONFIRM_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut queue_open = true;
        loop {
            let replaced = current.borrow_and_update().generation != generation;
            let done = !queue_open && replay.is_empty();
            if (done || replaced) && conn.window.is_empty() {
                let _ = tokio::time::timeout(CONNECT_TIMEOUT, self.wr.shutdown()).await;
                return if replaced { End::Replaced } else { End::Done };
            }
            let room = match replaced {
                // Draining: nothing new on this connection.
                true => 0,
                false => conn.limit.saturating_sub(conn.window.len()).min(BATCH),
            };
            tokio::select! {
                biased;
                r = self.rd.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => return End::Lost("closed by APNS".into()),
                    Err(e) => return End::Lost(e.to_string()),
                    Ok(_) => match ErrorResponseCodec.decode(&mut self.rbuf) {
                        Ok(Some(err)) => return End::Error(err),
                        Ok(None) => continue,
                        Err(e) => return End::Lost(e.to_string()),
                    },
                },
                _ = tick.tick() => {
                    conn.confirm_due(self.shared);
                    continue;
                }
                n = async {
                    if replay.is_empty() {
                        pool::next_many(rx, &mut batch, room).await
                    } else {
                        let k = replay.len().min(room);
                        batch.extend(replay.drain(..k));
                        k
                    }
                }, if room > 0 && (queue_open || !replay.is_empty()) => {
                    if n == 0 {
                        queue_open = false;
                        continue;
                    }
                }
                Ok(()) = current.changed(), if !replaced => continue,
            }
            let count = self.encode(&mut batch, conn);
            if let Some(end) = self.write(conn, count).await {
                return end;
            }
        }
    }

    /// Encode `batch` into the write buffer and put it in the window;
    /// returns how many went in.
    fn encode(&mut self, batch: &mut Vec<Notification>, conn: &mut ConnState) -> usize {
        self.wbuf.clear();
        let now = Instant::now();
        let mut tokbuf = [0u8; 100];
        let before = conn.window.len();
        for n in batch.drain(..) {
            let Some(n) = self.shared.unless_expired(n, "expired before it could be sent") else {
                continue;
            };
            let push = PushRef {
                command: self.command,
                id: ident(&n),
                expiry: n.expiration.min(u32::MAX as u64) as u32,
                priority: n.priority,
                token: token_bytes(&n.token, &mut tokbuf),
                payload: n.payload.as_bytes(),
            };
            if let Err(e) = PushEncoder.encode(push, &mut self.wbuf) {
                let reason = format!("cannot be sent over the binary protocol: {e}");
                self.shared.finish(n, Outcome::dropped(reason));
                continue;
            }
            conn.window.push_back(Sent {
                id: ident(&n),
                at: now,
                n,
            });
        }
        conn.window.len() - before
    }

    /// Write what [`Session::encode`] buffered; `Some` when the connection
    /// ended.
    async fn write(&mut self, conn: &mut ConnState, count: usize) -> Option<End> {
        if self.wbuf.is_empty() {
            return None;
        }
        let result = async {
            self.wr.write_all(&self.wbuf).await?;
            self.wr.flush().await
        }
        .await;
        // The confirmation clock starts once the bytes are handed to the
        // kernel, not when they were encoded: a write held up by a full
        // socket buffer does not eat into the time an error response has.
        let flushed = Instant::now();
        for s in conn.window.iter_mut().rev().take(count) {
            s.at = flushed;
        }
        let e = result.err()?;
        // An error response may already be waiting: prefer it.
        let mut tail = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), self.rd.read(&mut tail)).await {
            self.rbuf.extend_from_slice(&tail[..n]);
            if let Ok(Some(err)) = ErrorResponseCodec.decode(&mut self.rbuf) {
                return Some(End::Error(err));
            }
        }
        Some(End::Lost(e.to_string()))
    }
}

/// Hex token to bytes into `buf`, without allocating (the token was
/// validated on registration).
fn token_bytes<'b>(t: &DeviceToken, buf: &'b mut [u8; 100]) -> &'b [u8] {
    let hex = t.as_str().as_bytes();
    let n = (hex.len() / 2).min(buf.len());
    let val = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    };
    for i in 0..n {
        buf[i] = (val(hex[2 * i]) << 4) | val(hex[2 * i + 1]);
    }
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hex_to_bytes() {
        let t = DeviceToken::parse(&"0aF1".repeat(16)).unwrap();
        let mut buf = [0u8; 100];
        let b = token_bytes(&t, &mut buf);
        assert_eq!(b.len(), 32);
        assert_eq!(&b[..2], &[0x0a, 0xf1]);
        assert_eq!(b, t.to_bytes().as_slice());
    }
}
