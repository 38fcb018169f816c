//! One connection to the IRC server: connecting (plain TCP or TLS, with the
//! toolkit's connect and rustls setup), then the loop that feeds the
//! server's lines to the [`Bot`], writes what it answers through the
//! [`Writer`], keeps the link alive with PING and ticks the presence poll.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pushbridge_api::{AdapterError, Context};
use pushbridge_kit::{Frame, LineCodec, OverLong};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use crate::bot::{Bot, Output};
use crate::msg::{Msg, MAX_LINE};
use crate::pacing::{Bucket, Writer};
use crate::redact::redact_line;
use crate::IrcConfig;

/// Limit for the TCP connect, and again for the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Silence after which the bot PINGs the server.
const PING_AFTER: Duration = Duration::from_secs(90);
/// Silence after which the connection is given up.
const DEAD_AFTER: Duration = Duration::from_secs(240);

/// Connect to the configured server (TLS when `tls` is set) and serve the
/// connection: `Ok` on shutdown, else why it ended. A CA file or server
/// name TLS cannot use is an [`AdapterError::Config`]; connect failures
/// are [`AdapterError::Io`] naming the server.
pub(crate) async fn run(ctx: Context<IrcConfig>) -> Result<(), AdapterError> {
    let cfg = ctx.config().clone();
    if cfg.tls {
        let tls = pushbridge_kit::tls::client_config(cfg.ca_file.as_deref(), None, &[])
            .map_err(|e| AdapterError::Config(format!("ca_file: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let name =
            pushbridge_kit::server_name(&cfg.server).map_err(|e| AdapterError::Config(format!("server: {e}")))?;
        let stream = tokio::select! {
            r = pushbridge_kit::connect_tls(&cfg.server, name, &connector, CONNECT_TIMEOUT) => r.map_err(std::io::Error::from)?,
            _ = ctx.shutdown().cancelled() => return Ok(()),
        };
        serve(ctx, stream).await
    } else {
        let stream = tokio::select! {
            r = pushbridge_kit::connect(&cfg.server, CONNECT_TIMEOUT) => r.map_err(std::io::Error::from)?,
            _ = ctx.shutdown().cancelled() => return Ok(()),
        };
        serve(ctx, stream).await
    }
}

/// Serve one connection: until shutdown (`Ok`, after a `QUIT`), the
/// server closing or going silent, a write error, or the bot giving up.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(ctx: Context<IrcConfig>, stream: S) -> Result<(), AdapterError> {
    let cfg = ctx.config().clone();
    let (rd, wr) = tokio::io::split(stream);
    let mut bot = Bot::new(ctx.clone()).await?;
    let mut lines = Lines::new(rd, ctx.name());
    let mut writer = Writer::new(wr, Bucket::new(cfg.burst, cfg.messages_per_second), ctx.name());
    let mut keepalive = Keepalive::new();
    let mut ison = tokio::time::interval(Duration::from_secs(cfg.ison_interval));
    ison.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut out = bot.start();
    loop {
        // Write what the bot said: urgent lines now, the rest paced.
        writer.send(&mut out).await?;
        tokio::select! {
            r = lines.fill() => {
                r?;
                keepalive.heard();
                while let Some(l) = lines.next_line()? {
                    tracing::trace!(line = %redact_line(&l), "irc <");
                    if let Some(m) = Msg::parse(&l) {
                        bot.handle(&m, &mut out).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(writer.next_paced()), if writer.has_paced() => {}
            _ = tokio::time::sleep_until(keepalive.deadline()) => keepalive.silence(&mut out)?,
            _ = ison.tick() => bot.poll_presence(&mut out),
            _ = ctx.shutdown().cancelled() => {
                writer.quit("pushbridge shutting down").await;
                return Ok(());
            }
        }
    }
}

/// The reading side: bytes from the server, framed into lines by the
/// toolkit's [`LineCodec`]: at most [`MAX_LINE`] bytes, CR LF included;
/// a longer line is dropped with a warning and reading goes on with the
/// next one.
struct Lines<R> {
    rd: R,
    buf: BytesMut,
    codec: LineCodec,
    /// The adapter's name, for logs.
    adapter: String,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(rd: R, adapter: &str) -> Self {
        Self {
            rd,
            buf: BytesMut::with_capacity(8192),
            codec: LineCodec::new(MAX_LINE, OverLong::Discard),
            adapter: adapter.to_owned(),
        }
    }

    /// Read what the server sent next into the buffer. Cancel safe (what
    /// was read stays in the buffer). An error when the server closed the
    /// connection.
    async fn fill(&mut self) -> Result<(), AdapterError> {
        if self.rd.read_buf(&mut self.buf).await? == 0 {
            return Err(AdapterError::Io(std::io::Error::other(
                "the IRC server closed the connection",
            )));
        }
        Ok(())
    }

    /// The next whole line in the buffer, without CR LF; `None` until
    /// more is read. Decoded lossily: IRC promises no encoding (UTF-8 is
    /// common, Latin-1 and others still occur), and a line with a stray
    /// byte is better read with a replacement character than dropped.
    fn next_line(&mut self) -> Result<Option<String>, std::io::Error> {
        loop {
            match self.codec.decode(&mut self.buf)? {
                None => return Ok(None),
                Some(Frame::TooLong) => {
                    tracing::warn!(
                        adapter = self.adapter.as_str(),
                        "dropped an IRC line over {MAX_LINE} bytes"
                    );
                }
                Some(Frame::Line(l)) => {
                    return Ok(Some(
                        String::from_utf8_lossy(&l).trim_end_matches(['\r', '\n']).to_owned(),
                    ));
                }
            }
        }
    }
}

/// Silence watch: PING after [`PING_AFTER`] without a byte from the server,
/// give up at [`DEAD_AFTER`].
struct Keepalive {
    last_heard: Instant,
    pinged: bool,
}

impl Keepalive {
    fn new() -> Self {
        Self {
            last_heard: Instant::now(),
            pinged: false,
        }
    }

    /// The server sent something.
    fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.pinged = false;
    }

    /// When [`Keepalive::silence`] is due.
    fn deadline(&self) -> Instant {
        self.last_heard + if self.pinged { DEAD_AFTER } else { PING_AFTER }
    }

    /// The deadline passed: PING once, then give up.
    fn silence(&mut self, out: &mut Vec<Output>) -> Result<(), AdapterError> {
        if self.pinged {
            return Err(AdapterError::Io(std::io::Error::other(
                "the IRC server stopped answering",
            )));
        }
        self.pinged = true;
        out.push(Output::Now("PING :pushbridge".into()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[test]
    fn lines_are_framed_and_long_ones_dropped() {
        let mut lines = Lines::new(tokio::io::empty(), "irc:test");
        lines.buf.extend_from_slice(b"PING a\r\nPRIVMSG #c :hi\npartial");
        assert_eq!(lines.next_line().unwrap().as_deref(), Some("PING a"));
        assert_eq!(lines.next_line().unwrap().as_deref(), Some("PRIVMSG #c :hi"));
        assert_eq!(lines.next_line().unwrap(), None);
        lines.buf.extend_from_slice(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(lines.next_line().unwrap(), None);
        assert!(lines.buf.is_empty());
        lines.buf.extend_from_slice(b"tail of the long one\r\nPING b\r\n");
        assert_eq!(lines.next_line().unwrap().as_deref(), Some("PING b"));
        // The limit counts CR LF: a line of MAX_LINE bytes with it is read,
        // one byte more is dropped.
        let fits = format!("PING {}\r\n", "y".repeat(MAX_LINE - 7));
        lines.buf.extend_from_slice(fits.as_bytes());
        assert_eq!(lines.next_line().unwrap().as_deref(), Some(fits.trim_end()));
        let over = format!("PING {}\r\nPING c\r\n", "y".repeat(MAX_LINE - 6));
        lines.buf.extend_from_slice(over.as_bytes());
        assert_eq!(lines.next_line().unwrap().as_deref(), Some("PING c"));
        // Bytes that are not UTF-8 are replaced, not fatal.
        lines.buf.extend_from_slice(b"PRIVMSG #c :caf\xe9\r\n");
        assert_eq!(lines.next_line().unwrap().as_deref(), Some("PRIVMSG #c :caf\u{fffd}"));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_pinged_then_fatal() {
        let mut k = Keepalive::new();
        let mut out = Vec::new();
        assert_eq!(k.deadline() - Instant::now(), PING_AFTER);
        tokio::time::advance(PING_AFTER).await;
        k.silence(&mut out).unwrap();
        assert!(matches!(&out[..], [Output::Now(l)] if l == "PING :pushbridge"));
        assert_eq!(k.deadline() - Instant::now(), DEAD_AFTER - PING_AFTER);
        k.heard();
        assert_eq!(k.deadline() - Instant::now(), PING_AFTER, "an answer resets it");
        tokio::time::advance(PING_AFTER).await;
        k.silence(&mut out).unwrap();
        tokio::time::advance(DEAD_AFTER - PING_AFTER).await;
        assert!(k.silence(&mut out).is_err());
    }

    /// A whole connection over a duplex pipe: the opening lines, PONG, an
    /// over-long line skipped, QUIT on shutdown.
    #[tokio::test]
    async fn serves_a_connection_until_shutdown() {
        let config: IrcConfig =
            serde_json::from_value(serde_json::json!({"network": "test", "server": "127.0.0.1:6667"})).unwrap();
        let (ctx, _core) = Context::for_test("irc:test", config);
        let shutdown = ctx.shutdown().clone();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(serve(ctx, client));
        let (rd, mut wr) = tokio::io::split(server);
        let mut rd = BufReader::new(rd).lines();
        for want in [
            "CAP LS 302",
            "NICK pushbridge",
            "USER pushbridge 0 * :pushbridge push gateway",
        ] {
            assert_eq!(rd.next_line().await.unwrap().as_deref(), Some(want));
        }
        let long = format!("PING :{}\r\n", "z".repeat(MAX_LINE));
        wr.write_all(long.as_bytes()).await.unwrap();
        wr.write_all(b"PING :abc\r\n").await.unwrap();
        assert_eq!(rd.next_line().await.unwrap().as_deref(), Some("PONG :abc"));
        shutdown.cancel();
        assert_eq!(
            rd.next_line().await.unwrap().as_deref(),
            Some("QUIT :pushbridge shutting down")
        );
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_unusable_ca_file_is_a_config_error() {
        let dir = std::env::temp_dir().join(format!("pushbridge-irc-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let config: IrcConfig = serde_json::from_value(serde_json::json!({
            "network": "test", "server": "127.0.0.1:1", "tls": true, "ca_file": junk
        }))
        .unwrap();
        let (ctx, _core) = Context::for_test("irc:test", config);
        let err = run(ctx).await.unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(&err, AdapterError::Config(e) if e.contains("junk.pem")),
            "{err}"
        );
    }
}
