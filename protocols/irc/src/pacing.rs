//! The writing side of a connection: what the bot asks for goes out at once
//! ([`Output::Now`]) or paced by a token bucket ([`Output::Paced`]: flood
//! protection; a burst, then `messages_per_second`), from a bounded queue.

use std::collections::VecDeque;
use std::time::Duration;

use pushbridge_api::AdapterError;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::bot::Output;
use crate::redact::redact_line;

/// Lines waiting for the token bucket at most (a flood of commands to the
/// bot cannot grow memory; past it new lines are dropped and counted).
const MAX_PACED: usize = 1000;

/// Outgoing pacing: a token bucket.
pub(crate) struct Bucket {
    tokens: f64,
    burst: f64,
    /// Tokens per second.
    rate: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `burst` tokens, refilled at `rate` per second.
    pub(crate) fn new(burst: u32, rate: f64) -> Self {
        Self {
            tokens: burst as f64,
            burst: burst as f64,
            rate,
            at: Instant::now(),
        }
    }

    /// Take a token, or say how long until one is there.
    pub(crate) fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Writes the bot's lines (CR LF added) to the server.
pub(crate) struct Writer<W> {
    wr: W,
    bucket: Bucket,
    /// Paced lines waiting for a token, oldest first (at most [`MAX_PACED`]).
    paced: VecDeque<String>,
    /// When the first waiting paced line may go.
    next_paced: Instant,
    /// Paced lines dropped because the queue was full.
    dropped: u64,
    /// The adapter's name, for logs.
    adapter: String,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(crate) fn new(wr: W, bucket: Bucket, adapter: &str) -> Self {
        Self {
            wr,
            bucket,
            paced: VecDeque::new(),
            next_paced: Instant::now(),
            dropped: 0,
            adapter: adapter.to_owned(),
        }
    }

    /// Write what the bot said (draining `out`): urgent lines now, the rest
    /// queued and sent as the bucket allows; then flush. An
    /// [`Output::Fail`] sends `QUIT` and is returned as the error; lines
    /// after it are dropped. Write errors end the connection too.
    pub(crate) async fn send(&mut self, out: &mut Vec<Output>) -> Result<(), AdapterError> {
        for o in out.drain(..) {
            match o {
                Output::Now(l) => self.write_line(&l).await?,
                Output::Paced(l) if self.paced.len() < MAX_PACED => self.paced.push_back(l),
                Output::Paced(l) => {
                    self.dropped += 1;
                    if self.dropped.is_power_of_two() {
                        tracing::warn!(adapter = self.adapter.as_str(), dropped = self.dropped, line = %redact_line(&l), "outgoing queue full; dropping lines");
                    }
                }
                Output::Fail(e) => {
                    let _ = self.wr.write_all(b"QUIT :bye\r\n").await;
                    return Err(e);
                }
            }
        }
        while let Some(l) = self.paced.front() {
            match self.bucket.take() {
                Ok(()) => {
                    tracing::trace!(line = %redact_line(l), "irc >");
                    self.wr.write_all(format!("{l}\r\n").as_bytes()).await?;
                    self.paced.pop_front();
                }
                Err(wait) => {
                    self.next_paced = Instant::now() + wait;
                    break;
                }
            }
        }
        self.wr.flush().await?;
        Ok(())
    }

    async fn write_line(&mut self, l: &str) -> std::io::Result<()> {
        tracing::trace!(line = %redact_line(l), "irc >");
        self.wr.write_all(format!("{l}\r\n").as_bytes()).await
    }

    /// Whether paced lines wait for the bucket.
    pub(crate) fn has_paced(&self) -> bool {
        !self.paced.is_empty()
    }

    /// When the first waiting paced line may go (meaningful while
    /// [`Writer::has_paced`]).
    pub(crate) fn next_paced(&self) -> Instant {
        self.next_paced
    }

    /// Say goodbye on shutdown (`QUIT :<reason>`), ignoring write errors.
    pub(crate) async fn quit(&mut self, reason: &str) {
        let _ = self.wr.write_all(format!("QUIT :{reason}\r\n").as_bytes()).await;
        let _ = self.wr.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_after_the_burst() {
        let mut b = Bucket::new(3, 2.0);
        for _ in 0..3 {
            assert!(b.take().is_ok());
        }
        let wait = b.take().unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::from_millis(400),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.take().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn now_lines_go_at_once_paced_ones_wait_and_fail_quits() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut w = Writer::new(client, Bucket::new(1, 1.0), "irc:test");
        let mut out = vec![
            Output::Paced("PRIVMSG a :1".into()),
            Output::Paced("PRIVMSG a :2".into()),
            Output::Now("PONG :x".into()),
        ];
        w.send(&mut out).await.unwrap();
        assert!(out.is_empty() && w.has_paced());
        assert_eq!(w.next_paced() - Instant::now(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        w.send(&mut out).await.unwrap();
        assert!(!w.has_paced());
        let mut out = vec![
            Output::Fail(AdapterError::Other("x".into())),
            Output::Now("NOT SENT".into()),
        ];
        assert!(w.send(&mut out).await.is_err());
        drop(w);
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut server, &mut got)
            .await
            .unwrap();
        assert_eq!(got, "PONG :x\r\nPRIVMSG a :1\r\nPRIVMSG a :2\r\nQUIT :bye\r\n");
    }
}
