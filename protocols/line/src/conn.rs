//! One line-protocol connection.
//!
//! Commands are read and submitted in order; up to `pipeline` of them may be
//! waiting for the core at once, and their replies are written in the order
//! the commands came (a `FuturesOrdered`). A slow or silent client only
//! holds up itself.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use pushbridge_api::{Context, Device, Event, EventError, Message, UserId};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use crate::command::{self, Code, Command, ProtoError};
use crate::{LineConfig, MAX_LINE};
use pushbridge_kit::{Frame, LineCodec, OverLong};

type ReplyFuture = Pin<Box<dyn Future<Output = String> + Send>>;

fn ready(line: String) -> ReplyFuture {
    Box::pin(futures::future::ready(line))
}

/// What to do after a command.
enum After {
    Continue,
    /// Answer what is pending, then close.
    Close,
}

/// Serve one connection until the peer leaves, a fatal error, or shutdown.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Context<LineConfig>) {
    tracing::debug!(%peer, "connection opened");
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, LineCodec::new(MAX_LINE, OverLong::Close));
    let mut writer = BufWriter::new(write);
    let mut pending: FuturesOrdered<ReplyFuture> = FuturesOrdered::new();
    let mut authed = ctx.config().secret.is_none();
    let mut closing = false;
    let pipeline = ctx.config().pipeline;
    let shutdown = ctx.shutdown().clone();

    loop {
        if closing && pending.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(line) = pending.next(), if !pending.is_empty() => {
                if writer.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
                // Write every reply that is already known, then flush once.
                while let Some(Some(line)) = pending.next().now_or_never() {
                    if writer.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
                if writer.flush().await.is_err() {
                    return;
                }
            }
            frame = reader.next(), if !closing && pending.len() < pipeline => {
                match frame {
                    None => closing = true, // peer closed; answer what it sent
                    Some(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "read failed");
                        closing = true;
                    }
                    Some(Ok(Frame::TooLong)) => {
                        pending.push_back(ready(ProtoError::new(Code::TooLong, format!("line longer than {MAX_LINE} bytes")).line()));
                        closing = true;
                    }
                    Some(Ok(Frame::Line(bytes))) => {
                        tracing::trace!(line = %crate::redact::redact_line(&bytes), "line <");
                        let (reply, after) = handle(&bytes, &ctx, &mut authed).await;
                        pending.push_back(reply);
                        if let After::Close = after {
                            closing = true;
                        }
                    }
                }
            }
            _ = shutdown.cancelled(), if !closing => closing = true,
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
    tracing::debug!(%peer, "connection closed");
}

/// Handle one line: local commands are answered at once, the rest are
/// submitted to the core (waiting only for queue space, not for the answer).
async fn handle(bytes: &[u8], ctx: &Context<LineConfig>, authed: &mut bool) -> (ReplyFuture, After) {
    let cmd = match command::parse(bytes) {
        Ok(c) => c,
        Err(e) => return (ready(e.line()), After::Continue),
    };
    let cmd = match cmd {
        Command::Auth(secret) => {
            return match &ctx.config().secret {
                None => (ready("OK\n".into()), After::Continue),
                Some(expected) if bool::from(expected.as_bytes().ct_eq(secret.as_bytes())) => {
                    *authed = true;
                    (ready("OK\n".into()), After::Continue)
                }
                Some(_) => {
                    tracing::warn!(adapter = ctx.name(), "AUTH failed; closing the connection");
                    (ready(ProtoError::new(Code::Auth, "wrong secret").line()), After::Close)
                }
            };
        }
        Command::Quit => return (ready("OK\n".into()), After::Close),
        Command::Ping if *authed => return (ready("PONG\n".into()), After::Continue),
        _ if !*authed => {
            return (
                ready(ProtoError::new(Code::Auth, "authentication required: AUTH <secret>").line()),
                After::Continue,
            );
        }
        other => other,
    };
    let event = match to_event(cmd, ctx.name()) {
        Ok(e) => e,
        Err(e) => return (ready(e.line()), After::Continue),
    };
    match ctx.enqueue(event).await {
        Ok(rx) => (
            Box::pin(async move { command::reply_line(rx.await.unwrap_or(Err(EventError::ShuttingDown))) }),
            After::Continue,
        ),
        Err(e) => (ready(command::reply_line(Err(e))), After::Close),
    }
}

fn scoped(scope: &str, local: &str) -> Result<UserId, ProtoError> {
    UserId::scoped(scope, local).map_err(|e| ProtoError::new(Code::BadUser, e.to_string()))
}

/// Turn a parsed command into a core event.
fn to_event(cmd: Command, scope: &str) -> Result<Event, ProtoError> {
    Ok(match cmd {
        Command::Register {
            user,
            token,
            topic,
            environment,
        } => Event::Register {
            user: scoped(scope, &user)?,
            device: Device {
                token,
                topic,
                environment,
            },
        },
        Command::Unregister { user, token } => Event::Unregister {
            user: scoped(scope, &user)?,
            token,
        },
        Command::Presence { user, presence } => Event::Presence {
            user: scoped(scope, &user)?,
            presence,
        },
        Command::Msg { from, to, text } => {
            let mut m = Message::new(scoped(scope, &to)?, from.clone(), text);
            m.thread = Some(from);
            Event::Message(m)
        }
        Command::Auth(_) | Command::Ping | Command::Quit => {
            return Err(ProtoError::new(Code::Syntax, "not an event"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushbridge_api::Reply;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    fn config(secret: Option<&str>) -> LineConfig {
        LineConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            secret: secret.map(str::to_owned),
            name: "line".into(),
            max_connections: 16,
            pipeline: 4,
        }
    }

    /// A connection against a fake core that answers every event
    /// `Queued(1)` after checking it.
    async fn start(secret: Option<&str>) -> (SocketAddr, tokio::task::JoinHandle<Vec<Event>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ctx, mut rx) = Context::for_test("line", config(secret));
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            serve(stream, peer, ctx).await;
        });
        let core = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(env) = rx.recv().await {
                seen.push(env.event.clone());
                let r = match env.event {
                    Event::Message(_) => Ok(Reply::Queued(1)),
                    _ => Ok(Reply::Done),
                };
                if let Some(tx) = env.reply {
                    let _ = tx.send(r);
                }
            }
            seen
        });
        (addr, core)
    }

    #[tokio::test]
    async fn pipelined_replies_come_in_order() {
        let (addr, _core) = start(None).await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = stream.into_split();
        let tok = "ab".repeat(32);
        let mut script = String::new();
        for i in 0..20 {
            script.push_str(&format!("MSG bob alice hi {i}\nPING\nFROB\nREGISTER alice {tok}\n"));
        }
        script.push_str("QUIT\n");
        w.write_all(script.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(r).lines();
        for _ in 0..20 {
            assert_eq!(lines.next_line().await.unwrap().unwrap(), "OK 1");
            assert_eq!(lines.next_line().await.unwrap().unwrap(), "PONG");
            assert!(lines
                .next_line()
                .await
                .unwrap()
                .unwrap()
                .starts_with("ERR unknown-command"));
            assert_eq!(lines.next_line().await.unwrap().unwrap(), "OK");
        }
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "OK");
        assert_eq!(lines.next_line().await.unwrap(), None);
    }

    #[tokio::test]
    async fn auth_is_required_and_a_wrong_secret_closes() {
        let (addr, _core) = start(Some("s3cret")).await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = stream.into_split();
        w.write_all(b"PING\nAUTH nope\nPING\n").await.unwrap();
        let mut lines = BufReader::new(r).lines();
        assert!(lines.next_line().await.unwrap().unwrap().starts_with("ERR auth"));
        assert!(lines.next_line().await.unwrap().unwrap().starts_with("ERR auth"));
        assert_eq!(lines.next_line().await.unwrap(), None);

        let (addr, core) = start(Some("s3cret")).await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = stream.into_split();
        w.write_all(b"AUTH s3cret\nPRESENCE alice away\nQUIT\n").await.unwrap();
        let mut lines = BufReader::new(r).lines();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "OK");
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "OK");
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "OK");
        drop(lines);
        let seen = core.await.unwrap();
        assert!(matches!(&seen[0], Event::Presence { user, .. } if user.as_str() == "line:alice"));
    }

    #[tokio::test]
    async fn too_long_line_is_answered_then_closed() {
        let (addr, _core) = start(None).await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut data = b"PING\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 9000));
        data.push(b'\n');
        // The server may close before reading everything; ignore write errors.
        let _ = w.write_all(&data).await;
        let mut lines = BufReader::new(r).lines();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "PONG");
        assert!(lines.next_line().await.unwrap().unwrap().starts_with("ERR too-long"));
        assert!(matches!(lines.next_line().await, Ok(None) | Err(_)));
    }

    #[tokio::test]
    async fn core_failures_become_err_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ctx, mut rx) = Context::for_test("line", config(None));
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            serve(stream, peer, ctx).await;
        });
        tokio::spawn(async move {
            while let Some(env) = rx.recv().await {
                if let Some(tx) = env.reply {
                    let _ = tx.send(Err(EventError::Unavailable("store: disk I/O error".into())));
                }
            }
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = stream.into_split();
        w.write_all(b"MSG bob alice hi\nPING\n").await.unwrap();
        let mut lines = BufReader::new(r).lines();
        assert_eq!(
            lines.next_line().await.unwrap().unwrap(),
            "ERR unavailable unavailable: store: disk I/O error"
        );
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "PONG");
    }
}
