//! The legacy feedback service: polled now and every `feedback_interval`;
//! every listed device is reported gone (the store removes it only if it
//! was registered before the tuple's time).

use std::time::Duration;

use bytes::BytesMut;
use pushbridge_api::DeviceToken;
use tokio::io::AsyncReadExt;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::codec::FeedbackCodec;
use crate::sink::net::{connect_tls, ConnectError, Target};
use crate::sink::pool::Shared;

/// Devices read in one poll at most; the rest are read by the next poll
/// (Apple keeps listing a device until it is removed), so a misbehaving
/// service cannot queue unbounded work for the store.
const MAX_PER_POLL: u64 = 100_000;
/// A feedback poll that takes longer than this is cut off.
const FEEDBACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a feedback poll failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error("feedback stream ended inside a tuple ({0} bytes left)")]
    Truncated(usize),
}

/// Poll the feedback service now and every `interval`, until stopped.
pub async fn poll_loop(
    target: Target,
    creds: crate::sink::live::Live<TlsConnector>,
    interval: Duration,
    shared: std::sync::Arc<Shared>,
    stop: CancellationToken,
) {
    let host = target.authority.as_str();
    loop {
        // Each poll connects with the current client certificate.
        let tls = creds.borrow().clone();
        let poll = tokio::time::timeout(FEEDBACK_TIMEOUT, poll_once(&target, &tls.value, &shared));
        tokio::select! {
            r = poll => match r {
                Ok(Ok(n)) => tracing::info!(host, devices = n, "feedback service polled"),
                Ok(Err(e)) => tracing::warn!(host, error = %e, "feedback service poll failed"),
                Err(_) => tracing::warn!(host, "feedback service poll timed out"),
            },
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One feedback read: every tuple until EOF; returns how many.
async fn poll_once(target: &Target, tls: &TlsConnector, shared: &Shared) -> Result<u64, FeedbackError> {
    let mut stream = connect_tls(target, tls).await?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut count = 0u64;
    loop {
        let n = stream.read_buf(&mut buf).await?;
        while let Some(t) = FeedbackCodec.decode(&mut buf)? {
            if count >= MAX_PER_POLL {
                tracing::warn!(
                    devices = count,
                    "feedback service listed more than one poll reads; the rest waits for the next poll"
                );
                return Ok(count);
            }
            match DeviceToken::from_bytes(&t.token) {
                Ok(token) => {
                    count += 1;
                    shared.outcomes.device_gone(
                        token,
                        Some(t.time as i64 * 1000),
                        "feedback: listed by the feedback service",
                    );
                }
                Err(e) => tracing::warn!(error = %e, "feedback service listed an unusable token"),
            }
        }
        if n == 0 {
            if !buf.is_empty() {
                return Err(FeedbackError::Truncated(buf.len()));
            }
            return Ok(count);
        }
    }
}
