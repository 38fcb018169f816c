//! The legacy binary gateway and feedback service, simulated: TLS with a
//! required client certificate, strict validation of every notification
//! (commands 0, 1 and 2), error responses with Apple's statuses, and the
//! feedback list.
//!
//! Faults: rejected tokens (an error response with a given status, then
//! the connection is closed and what followed is discarded, as Apple
//! does), error responses sent late (what followed the bad notification
//! is read and discarded meanwhile), and dropping a connection after N
//! notifications without any error response.
//!
//! It also counts the TLS application-data records clients send, which is
//! how coalescing (many notifications per record) is observed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::{Decoder, Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Record, Recorder};
use crate::sink::binary::codec::{
    ErrorResponse, ErrorResponseCodec, FeedbackCodec, FeedbackTuple, Push, PushDecoder, Refused,
};

/// Faults to inject.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Close a connection after it carried this many notifications.
    pub drop_every: Option<u64>,
    /// Send error responses this late, reading and discarding what the
    /// client writes meanwhile (a distant or busy APNS).
    pub error_delay: Option<Duration>,
}

/// Shared state of a running binary simulator.
pub struct State {
    options: Options,
    rejects: Mutex<HashMap<Bytes, u8>>,
    feedback: Mutex<Vec<FeedbackTuple>>,
    pub recorder: Recorder,
    pub connections: AtomicU64,
    pub drops: AtomicU64,
    pub errors_sent: AtomicU64,
    pub feedback_reads: AtomicU64,
    /// TLS application-data records received on gateway connections.
    pub tls_records: AtomicU64,
    /// Notifications read after a bad one and discarded.
    pub discarded: AtomicU64,
}

fn hex_bytes(token: &str) -> Option<Bytes> {
    pushbridge_api::DeviceToken::parse(token)
        .ok()
        .map(|t| Bytes::from(t.to_bytes()))
}

impl State {
    /// Answer notifications for `token` (hex) with an error response.
    pub fn reject(&self, token: &str, status: u8) -> bool {
        match hex_bytes(token) {
            Some(t) => {
                self.rejects.lock().unwrap_or_else(|e| e.into_inner()).insert(t, status);
                true
            }
            None => false,
        }
    }

    /// List `token` (hex) in the feedback service as gone since `time`.
    pub fn add_feedback(&self, token: &str, time: u32) -> bool {
        match hex_bytes(token) {
            Some(t) => {
                self.feedback
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(FeedbackTuple { time, token: t });
                true
            }
            None => false,
        }
    }
}

/// A running binary gateway (and feedback service) simulator.
pub struct Simulator {
    addr: SocketAddr,
    feedback_addr: Option<SocketAddr>,
    state: Arc<State>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Simulator {
    /// Serve the gateway on `listener` and the feedback service on
    /// `feedback` with `tls`, which must verify client certificates (a
    /// connection without one is closed at once).
    pub fn start(
        listener: TcpListener,
        feedback: Option<TcpListener>,
        tls: rustls::ServerConfig,
        options: Options,
        recorder: Recorder,
    ) -> std::io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let feedback_addr = feedback.as_ref().map(|l| l.local_addr()).transpose()?;
        let state = Arc::new(State {
            options,
            rejects: Mutex::default(),
            feedback: Mutex::default(),
            recorder,
            connections: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            errors_sent: AtomicU64::new(0),
            feedback_reads: AtomicU64::new(0),
            tls_records: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            acceptor.clone(),
            state.clone(),
            stop.clone(),
            false,
        ));
        if let Some(f) = feedback {
            tasks.spawn(accept_loop(f, acceptor, state.clone(), stop.clone(), true));
        }
        tasks.close();
        Ok(Simulator {
            addr,
            feedback_addr,
            state,
            stop,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn feedback_addr(&self) -> Option<SocketAddr> {
        self.feedback_addr
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    stop: CancellationToken,
    feedback: bool,
) {
    let conns = TaskTracker::new();
    loop {
        let Some((tcp, _)) = super::next_connection(&listener, &stop).await else {
            break;
        };
        let (acceptor, state, stop) = (acceptor.clone(), state.clone(), stop.clone());
        conns.spawn(async move {
            let tcp = RecordCounter::new(tcp, state.clone());
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            if tls.get_ref().1.peer_certificates().is_none_or(|c| c.is_empty()) {
                tracing::info!("binary simulator: connection without a client certificate closed");
                return;
            }
            tokio::select! {
                _ = async {
                    if feedback {
                        serve_feedback(tls, &state).await
                    } else {
                        serve_gateway(tls, &state).await
                    }
                } => {}
                _ = stop.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

type Conn = TlsStream<RecordCounter>;

/// [`PushDecoder`], remembering the command byte of the last frame it
/// looked at (Apple answers a bad command-0 frame by closing, not with an
/// error response: that format has no identifier).
#[derive(Default)]
struct Watched {
    inner: PushDecoder,
    command: u8,
}

impl Decoder for Watched {
    type Item = Result<Push, Refused>;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, std::io::Error> {
        if let Some(&c) = src.first() {
            self.command = c;
        }
        self.inner.decode(src)
    }
}

async fn serve_gateway(tls: Conn, state: &State) {
    let id = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let (rd, mut wr) = tokio::io::split(tls);
    let mut frames = FramedRead::new(rd, Watched::default());
    let mut count = 0u64;
    while let Some(item) = frames.next().await {
        let refusal = match item {
            Err(_) => return,
            Ok(Err(_)) if frames.decoder().command == 0 => return,
            Ok(Err(refused)) => ErrorResponse {
                status: refused.status,
                id: refused.id,
            },
            Ok(Ok(push)) => {
                let rejected = state
                    .rejects
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&push.token)
                    .copied();
                match rejected {
                    Some(_) if push.command == 0 => return,
                    Some(status) => ErrorResponse { status, id: push.id },
                    None => {
                        let payload = serde_json::from_slice(&push.payload).unwrap_or_else(|_| {
                            serde_json::Value::String(String::from_utf8_lossy(&push.payload).into_owned())
                        });
                        state.recorder.record(Record {
                            apns_id: String::new(),
                            identifier: Some(push.id),
                            command: Some(push.command),
                            device_token: push.token.iter().map(|b| format!("{b:02x}")).collect(),
                            topic: String::new(),
                            push_type: None,
                            priority: Some(push.priority),
                            expiration: Some(push.expiry as u64),
                            collapse_id: None,
                            auth: "certificate".into(),
                            connection: id,
                            payload,
                        });
                        count += 1;
                        if state.options.drop_every == Some(count) {
                            state.drops.fetch_add(1, Ordering::Relaxed);
                            return; // closed without a word
                        }
                        continue;
                    }
                }
            }
        };
        // Apple: an error response, then the connection is closed and
        // everything after the bad notification is discarded.
        if let Some(delay) = state.options.error_delay {
            let discard = async {
                while let Some(Ok(_)) = frames.next().await {
                    state.discarded.fetch_add(1, Ordering::Relaxed);
                }
                // The client closed: wait out the delay all the same.
                std::future::pending::<()>().await
            };
            let _ = tokio::time::timeout(delay, discard).await;
        }
        state.errors_sent.fetch_add(1, Ordering::Relaxed);
        let mut out = BytesMut::with_capacity(6);
        let _ = ErrorResponseCodec.encode(refusal, &mut out);
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
        return;
    }
}

async fn serve_feedback(mut tls: Conn, state: &State) {
    state.feedback_reads.fetch_add(1, Ordering::Relaxed);
    // The list is cleared once read, as Apple's was.
    let list = std::mem::take(&mut *state.feedback.lock().unwrap_or_else(|e| e.into_inner()));
    let mut out = BytesMut::new();
    for t in &list {
        let _ = FeedbackCodec.encode(t, &mut out);
    }
    let _ = tls.write_all(&out).await;
    let _ = tls.shutdown().await;
}

/// The TCP stream under the TLS session, counting the application-data
/// records the client sends.
pub struct RecordCounter {
    tcp: TcpStream,
    state: Arc<State>,
    scanner: RecordScanner,
}

impl RecordCounter {
    fn new(tcp: TcpStream, state: Arc<State>) -> Self {
        Self {
            tcp,
            state,
            scanner: RecordScanner::default(),
        }
    }
}

/// Follows TLS record headers (type, version, 2-byte length) through a
/// byte stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
struct RecordScanner {
    head: [u8; 5],
    have: usize,
    body_left: usize,
}

impl RecordScanner {
    /// Application-data records (content type 23) whose header is in `data`.
    fn scan(&mut self, mut data: &[u8]) -> u64 {
        let mut records = 0;
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                self.body_left = u16::from_be_bytes([self.head[3], self.head[4]]) as usize;
                if self.head[0] == 23 {
                    records += 1;
                }
            }
        }
        records
    }
}

impl AsyncRead for RecordCounter {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = this.scanner.scan(&buf.filled()[before..]);
            if n > 0 {
                this.state.tls_records.fetch_add(n, Ordering::Relaxed);
            }
        }
        r
    }
}

impl AsyncWrite for RecordCounter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::RecordScanner;

    #[test]
    fn records_are_counted_across_any_split() {
        // A handshake record, then three application-data records.
        let mut stream = vec![22, 3, 3, 0, 4, 1, 2, 3, 4];
        for len in [0u16, 300, 17] {
            stream.extend_from_slice(&[23, 3, 3]);
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend(std::iter::repeat_n(23u8, len as usize));
        }
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let mut s = RecordScanner::default();
                let n = s.scan(&stream[..a]) + s.scan(&stream[a..b]) + s.scan(&stream[b..]);
                assert_eq!(n, 3, "split at {a} and {b}");
            }
        }
    }
}
