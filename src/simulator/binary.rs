//! The legacy binary gateway and feedback service, simulated: TLS with a
//! required client certificate, strict validation of every notification
//! (commands 0, 1 and 2), error responses with Apple's statuses, and the
//! feedback list.
//!
//! Faults: rejected tokens (an error response with a given status, then
//! the connection is closed and what followed is discarded, as Apple
//! does), and dropping a connection after N notifications without any
//! error response.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Record, Recorder};
use crate::sink::binary::codec::{ErrorResponse, ErrorResponseCodec, FeedbackCodec, FeedbackTuple, PushDecoder};

/// Faults to inject.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Close a connection after it carried this many notifications.
    pub drop_every: Option<u64>,
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

async fn serve_gateway(tls: TlsStream<tokio::net::TcpStream>, state: &State) {
    let id = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let (rd, mut wr) = tokio::io::split(tls);
    let mut frames = FramedRead::new(rd, PushDecoder::default());
    let mut count = 0u64;
    while let Some(item) = frames.next().await {
        let refusal = match item {
            Err(_) => return,
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
        state.errors_sent.fetch_add(1, Ordering::Relaxed);
        let mut out = BytesMut::with_capacity(6);
        let _ = ErrorResponseCodec.encode(refusal, &mut out);
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
        return;
    }
}

async fn serve_feedback(mut tls: TlsStream<tokio::net::TcpStream>, state: &State) {
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
