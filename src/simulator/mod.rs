//! A local stand-in for Apple: `pushbridge simulate`, the tests and the
//! benchmarks talk to it instead of APNS.
//!
//! [`http2`] serves the HTTP/2 provider API over TLS with Apple's
//! validation, status codes and reasons; [`binary`] the legacy binary
//! gateway and its feedback service. Accepted notifications are kept
//! as [`Record`]s: in memory for tests, and as JSON lines on stdout or in a
//! file for people.

pub mod binary;
pub mod http2;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// One notification the simulator accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// HTTP/2: the `apns-id` (empty for the binary protocol).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub apns_id: String,
    /// Binary: the notification identifier and the command it came in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<u8>,
    pub device_token: String,
    /// HTTP/2: `apns-topic` (the binary protocol has none: the client
    /// certificate names the app).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collapse_id: Option<String>,
    /// `token` (verified JWT), `certificate` (client certificate) or `none`.
    pub auth: String,
    /// Which connection (counted from 1) carried it.
    pub connection: u64,
    pub payload: serde_json::Value,
}

/// Where records go.
pub struct Recorder {
    memory: Option<Mutex<Vec<Record>>>,
    out: Option<Mutex<Box<dyn Write + Send>>>,
    count: AtomicU64,
    changed: Notify,
}

impl Recorder {
    /// `keep`: hold records in memory (tests); `out`: write JSON lines.
    pub fn new(keep: bool, out: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            memory: keep.then(|| Mutex::new(Vec::new())),
            out: out.map(Mutex::new),
            count: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    pub fn record(&self, r: Record) {
        if let Some(out) = &self.out {
            let mut line = serde_json::to_vec(&r).unwrap_or_default();
            line.push(b'\n');
            let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = w.write_all(&line).and_then(|_| w.flush()) {
                tracing::error!(error = %e, "simulator cannot write its record");
            }
        }
        if let Some(m) = &self.memory {
            m.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        }
        self.count.fetch_add(1, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Accepted notifications so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// The records kept in memory.
    pub fn records(&self) -> Vec<Record> {
        match &self.memory {
            Some(m) => m.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            None => Vec::new(),
        }
    }

    /// Wait until at least `n` were accepted; false on timeout.
    pub async fn wait_for(&self, n: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.count() >= n;
            }
        }
    }
}

/// The next connection on `listener` (with TCP_NODELAY), or `None` once
/// `stop` is cancelled. Accept errors (out of descriptors) are logged and
/// retried after a pause instead of ending the simulator.
pub(crate) async fn next_connection(
    listener: &tokio::net::TcpListener,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.cancelled() => return None,
        }
    }
}
