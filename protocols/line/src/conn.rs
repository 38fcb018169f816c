//! One line-protocol connection.
//!
//! Commands are read and submitted in order; up to `pipeline` of them may be
//! waiting for the core at once, and their replies are written in the order
//! the commands came (a `FuturesOrdered`). A slow or silent client only
//! holds up itself: it is cut off by the timeouts of [`crate::limits`]
//! (AUTH, idle, a started line, and a reply it does not read within
//! `line_timeout`). Every line read holds its [`limits::cost`] of the
//! listener's input budget until the core answered it; while the budget is
//! spent, or an `AUTH` waits for its turn ([`crate::throttle`]), the
//! connection reads nothing more but still writes its replies.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use pushbridge_api::{Context, Device, Event, EventError, Message, UserId};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::{Decoder, FramedRead};

use crate::command::{self, Code, Command, ProtoError};
use crate::limits::{self, Activity, Expired, Shared, Timeouts};
use crate::throttle::Admission;
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

/// The toolkit's [`LineCodec`], noting when the line being read started.
struct TimedCodec {
    inner: LineCodec,
    /// When the first byte of the unfinished line was seen (`None`: no
    /// unfinished line).
    started: Option<Instant>,
}

impl TimedCodec {
    fn note(&mut self, framed: bool, buf: &BytesMut) {
        if buf.is_empty() {
            self.started = None;
        } else if framed || self.started.is_none() {
            self.started = Some(Instant::now());
        }
    }
}

impl Decoder for TimedCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        let frame = self.inner.decode(buf)?;
        self.note(frame.is_some(), buf);
        Ok(frame)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        let frame = self.inner.decode_eof(buf)?;
        self.note(frame.is_some(), buf);
        Ok(frame)
    }
}

/// A command read but not yet handled: it waits for its share of the
/// input budget and, for `AUTH`, for its turn.
struct Gate {
    cmd: Result<Command, ProtoError>,
    /// An `AUTH` waiting for its turn.
    auth: bool,
    /// Resolves to the budget permit (`None`: the budget was closed).
    ready: Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>,
}

/// Wait for the gated command, if any (never resolves without one).
async fn gate_open(gate: &mut Option<Gate>) -> Option<OwnedSemaphorePermit> {
    match gate {
        Some(g) => g.ready.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Serve one TCP connection until the peer leaves, a fatal error, a
/// timeout, or shutdown.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Context<LineConfig>, shared: Arc<Shared>) {
    let (read, write) = stream.into_split();
    serve_io(read, write, peer, ctx, shared).await;
}

/// [`serve`] on any byte stream halves (tests use in-memory pipes).
pub async fn serve_io<R, W>(read: R, write: W, peer: SocketAddr, ctx: Context<LineConfig>, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tracing::debug!(%peer, "connection opened");
    let codec = TimedCodec {
        inner: LineCodec::new(MAX_LINE, OverLong::Close),
        started: None,
    };
    let mut reader = FramedRead::new(read, codec);
    let mut writer = BufWriter::new(write);
    let mut c = Conn::new(peer, ctx, shared);
    let mut check = Box::pin(sleep_until(c.check(None).unwrap_or_else(|_| Instant::now())));
    let shutdown = c.ctx.shutdown().clone();

    loop {
        if c.closing && c.pending.is_empty() && c.gate.is_none() {
            break;
        }
        tokio::select! {
            biased;
            Some(line) = c.pending.next(), if !c.pending.is_empty() => {
                if !c.write(&mut writer, line).await {
                    return;
                }
            }
            permit = gate_open(&mut c.gate), if c.gate.is_some() => c.admitted(permit).await,
            frame = reader.next(), if c.reading() => c.on_frame(frame).await,
            () = &mut check, if !c.closing => {
                let started = if c.reading() { reader.decoder().started } else { None };
                match c.check(started) {
                    Ok(next) => check.as_mut().reset(next),
                    Err(why) => c.expired(why),
                }
            }
            () = shutdown.cancelled(), if !c.closing => c.closing = true,
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
    tracing::debug!(%peer, "connection closed");
}

/// The state of one connection.
struct Conn {
    peer: SocketAddr,
    ctx: Context<LineConfig>,
    shared: Arc<Shared>,
    timeouts: Timeouts,
    opened: Instant,
    /// `AUTH` succeeded, or none is required.
    authed: bool,
    /// No more reading: answer what is pending, then close.
    closing: bool,
    /// The last command read or reply written.
    last_active: Instant,
    /// Replies in command order.
    pending: FuturesOrdered<ReplyFuture>,
    /// The command waiting for budget or its AUTH turn (reading stops).
    gate: Option<Gate>,
}

impl Conn {
    fn new(peer: SocketAddr, ctx: Context<LineConfig>, shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        Self {
            peer,
            timeouts: Timeouts::new(ctx.config()),
            authed: ctx.config().secret.is_none(),
            ctx,
            shared,
            opened: now,
            closing: false,
            last_active: now,
            pending: FuturesOrdered::new(),
            gate: None,
        }
    }

    /// Whether to read the next command.
    fn reading(&self) -> bool {
        !self.closing && self.gate.is_none() && self.pending.len() < self.ctx.config().pipeline
    }

    /// The timeouts now, with the unfinished line started at `line_started`.
    fn check(&self, line_started: Option<Instant>) -> Result<Instant, Expired> {
        let activity = Activity {
            opened: self.opened,
            authed: self.authed,
            last_active: self.last_active,
            line_started,
            busy: !self.pending.is_empty() || self.gate.is_some(),
            auth_waiting: self.gate.as_ref().is_some_and(|g| g.auth),
        };
        self.timeouts.check(Instant::now(), &activity)
    }

    /// A timeout expired: say why (where the protocol allows) and close.
    fn expired(&mut self, why: Expired) {
        let (error, what, timeout) = match why {
            Expired::Auth(t) => (
                ProtoError::new(Code::Auth, format!("no AUTH within {} s", t.as_secs())),
                "no AUTH in time; closing the connection",
                t,
            ),
            Expired::Idle(t) => (
                ProtoError::new(Code::Timeout, format!("idle for {} s", t.as_secs())),
                "connection idle; closing it",
                t,
            ),
            Expired::Line(t) => (
                ProtoError::new(Code::Timeout, format!("line not completed within {} s", t.as_secs())),
                "line not completed in time; closing the connection",
                t,
            ),
        };
        tracing::info!(adapter = self.ctx.name(), peer = %self.peer, ?timeout, "{what}");
        self.pending.push_back(ready(error.line()));
        self.closing = true;
    }

    /// Write `first` and every other reply already known, then flush; a
    /// client that reads none of it for `line_timeout` is cut off.
    /// `false`: the connection is gone.
    async fn write<W: AsyncWrite + Unpin>(&mut self, writer: &mut BufWriter<W>, first: String) -> bool {
        let pending = &mut self.pending;
        let write = async {
            writer.write_all(first.as_bytes()).await?;
            while let Some(Some(line)) = pending.next().now_or_never() {
                writer.write_all(line.as_bytes()).await?;
            }
            writer.flush().await
        };
        match tokio::time::timeout(self.timeouts.line, write).await {
            Ok(Ok(())) => {
                self.last_active = Instant::now();
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "write failed");
                false
            }
            Err(_) => {
                let timeout = self.timeouts.line;
                tracing::info!(adapter = self.ctx.name(), peer = %self.peer, ?timeout, "client reads no replies; closing the connection");
                false
            }
        }
    }

    /// One frame (or the end of input) from the reader.
    async fn on_frame(&mut self, frame: Option<std::io::Result<Frame>>) {
        match frame {
            None => self.closing = true, // peer closed; answer what it sent
            Some(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "read failed");
                self.closing = true;
            }
            Some(Ok(Frame::TooLong)) => {
                let error = ProtoError::new(Code::TooLong, format!("line longer than {MAX_LINE} bytes"));
                self.pending.push_back(ready(error.line()));
                self.closing = true;
            }
            Some(Ok(Frame::Line(bytes))) => {
                tracing::trace!(line = %crate::redact::redact_line(&bytes), "line <");
                self.last_active = Instant::now();
                let cost = limits::cost(bytes.len());
                let cmd = command::parse(&bytes);
                drop(bytes);
                self.admit(cmd, cost).await;
            }
        }
    }

    /// Handle `cmd` now if its budget is free and it need not wait for an
    /// AUTH turn; otherwise gate it.
    async fn admit(&mut self, cmd: Result<Command, ProtoError>, cost: u32) {
        let mut turn = None;
        if let (Ok(Command::Auth(_)), Some(horizon)) = (&cmd, self.timeouts.auth) {
            match self.shared.throttle.admit(self.peer.ip(), Instant::now(), horizon) {
                Admission::Now => {}
                Admission::At(t) => turn = Some(t),
                Admission::Refused => {
                    tracing::debug!(peer = %self.peer, "AUTH refused: too many failures from this address");
                    let error = ProtoError::new(Code::Auth, "too many failed attempts from this address; retry later");
                    self.pending.push_back(ready(error.line()));
                    self.closing = true;
                    return;
                }
            }
        }
        let budget = self.shared.budget.clone();
        if turn.is_none() {
            if let Ok(permit) = budget.clone().try_acquire_many_owned(cost) {
                return self.process(cmd, permit).await;
            }
        }
        let ready = async move {
            if let Some(t) = turn {
                sleep_until(t).await;
            }
            budget.acquire_many_owned(cost).await.ok()
        };
        self.gate = Some(Gate {
            cmd,
            auth: turn.is_some(),
            ready: Box::pin(ready),
        });
    }

    /// The gated command may go on.
    async fn admitted(&mut self, permit: Option<OwnedSemaphorePermit>) {
        let Some(gate) = self.gate.take() else { return };
        match permit {
            Some(p) => self.process(gate.cmd, p).await,
            None => self.closing = true, // the budget is gone: the listener stopped
        }
    }

    /// Handle a command holding its budget `permit` until it is answered.
    async fn process(&mut self, cmd: Result<Command, ProtoError>, permit: OwnedSemaphorePermit) {
        let (reply, after) = handle(cmd, &self.ctx, &self.shared, self.peer, &mut self.authed).await;
        self.pending.push_back(Box::pin(async move {
            let line = reply.await;
            drop(permit);
            line
        }));
        if let After::Close = after {
            self.closing = true;
        }
    }
}

/// Check an `AUTH` secret (constant time) and record the outcome for the
/// peer's address.
fn auth(
    secret: &str,
    ctx: &Context<LineConfig>,
    shared: &Shared,
    peer: SocketAddr,
    authed: &mut bool,
) -> (ReplyFuture, After) {
    let Some(expected) = &ctx.config().secret else {
        return (ready("OK\n".into()), After::Continue);
    };
    if bool::from(expected.as_bytes().ct_eq(secret.as_bytes())) {
        shared.throttle.succeeded(peer.ip());
        *authed = true;
        return (ready("OK\n".into()), After::Continue);
    }
    match shared.throttle.failed(peer.ip(), Instant::now()) {
        Some(count) => {
            tracing::warn!(adapter = ctx.name(), %peer, count, "AUTH failed (wrong secret); closing the connection")
        }
        None => tracing::debug!(adapter = ctx.name(), %peer, "AUTH failed (wrong secret); closing the connection"),
    }
    (ready(ProtoError::new(Code::Auth, "wrong secret").line()), After::Close)
}

/// Handle one parsed line: local commands are answered at once, the rest
/// are submitted to the core (waiting only for queue space, not for the
/// answer).
async fn handle(
    cmd: Result<Command, ProtoError>,
    ctx: &Context<LineConfig>,
    shared: &Shared,
    peer: SocketAddr,
    authed: &mut bool,
) -> (ReplyFuture, After) {
    let cmd = match cmd {
        Ok(c) => c,
        Err(e) => return (ready(e.line()), After::Continue),
    };
    let cmd = match cmd {
        Command::Auth(secret) => return auth(&secret, ctx, shared, peer, authed),
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
        Command::Mute {
            user,
            conversation,
            seconds,
        } => Event::Mute {
            user: scoped(scope, &user)?,
            conversation,
            duration: seconds.map(std::time::Duration::from_secs),
        },
        Command::Unmute { user, conversation } => Event::Unmute {
            user: scoped(scope, &user)?,
            conversation,
        },
        Command::Quiet { user, hours } => Event::Quiet {
            user: scoped(scope, &user)?,
            hours,
        },
        Command::Settings { user } => Event::Settings {
            user: scoped(scope, &user)?,
        },
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
            auth_timeout: 10,
            idle_timeout: 300,
            line_timeout: 30,
            input_budget: 1 << 20,
        }
    }

    fn shared(c: &LineConfig) -> Arc<Shared> {
        Arc::new(Shared::new(c))
    }

    /// A connection against a fake core that answers every event
    /// `Queued(1)` after checking it.
    async fn start(secret: Option<&str>) -> (SocketAddr, tokio::task::JoinHandle<Vec<Event>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ctx, mut rx) = Context::for_test("line", config(secret));
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let shared = shared(ctx.config());
            serve(stream, peer, ctx, shared).await;
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
            let shared = shared(ctx.config());
            serve(stream, peer, ctx, shared).await;
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

    /// A core that answers every event at once (`OK 1` for messages).
    fn answer_all(mut rx: tokio::sync::mpsc::Receiver<pushbridge_api::Envelope>) {
        tokio::spawn(async move {
            while let Some(env) = rx.recv().await {
                let r = match env.event {
                    Event::Message(_) => Ok(Reply::Queued(1)),
                    _ => Ok(Reply::Done),
                };
                if let Some(tx) = env.reply {
                    let _ = tx.send(r);
                }
            }
        });
    }

    /// A connection from `peer` over an in-memory pipe; the client's end.
    fn pipe(ctx: &Context<LineConfig>, shared: &Arc<Shared>, peer: &str) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (r, w) = tokio::io::split(server);
        tokio::spawn(serve_io(r, w, peer.parse().unwrap(), ctx.clone(), shared.clone()));
        client
    }

    /// The next line, or a failure after an hour (of the paused clock).
    async fn next<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> Option<String> {
        let hour = std::time::Duration::from_secs(3600);
        tokio::time::timeout(hour, lines.next_line())
            .await
            .expect("a line or the end within an hour")
            .unwrap()
    }

    /// A served connection with `cfg` against [`answer_all`].
    fn connect(cfg: LineConfig) -> tokio::io::DuplexStream {
        let (ctx, rx) = Context::for_test("line", cfg);
        answer_all(rx);
        pipe(&ctx, &shared(ctx.config()), "127.0.0.1:40000")
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_authenticates_is_closed_after_auth_timeout() {
        let t0 = Instant::now();
        let mut lines = BufReader::new(connect(config(Some("s3cret")))).lines();
        assert_eq!(next(&mut lines).await.unwrap(), "ERR auth no AUTH within 10 s");
        assert_eq!(t0.elapsed(), std::time::Duration::from_secs(10));
        assert_eq!(next(&mut lines).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dribbling_client_is_cut_after_line_timeout_a_slow_line_is_not() {
        let (r, mut w) = tokio::io::split(connect(config(None)));
        let t0 = Instant::now();
        tokio::spawn(async move {
            // One line over 25 s is fine, then one byte a second forever.
            for b in b"PING\n".iter().chain(b"PING".iter().cycle()) {
                if w.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        });
        let mut lines = BufReader::new(r).lines();
        assert_eq!(next(&mut lines).await.unwrap(), "PONG");
        assert_eq!(
            next(&mut lines).await.unwrap(),
            "ERR timeout line not completed within 30 s"
        );
        // The second line started at 25 s.
        assert_eq!(t0.elapsed(), std::time::Duration::from_secs(55));
        assert_eq!(next(&mut lines).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_is_closed_after_idle_timeout() {
        let (r, mut w) = tokio::io::split(connect(config(None)));
        let mut lines = BufReader::new(r).lines();
        tokio::time::sleep(std::time::Duration::from_secs(200)).await;
        w.write_all(b"PING\n").await.unwrap();
        assert_eq!(next(&mut lines).await.unwrap(), "PONG");
        let t0 = Instant::now();
        assert_eq!(next(&mut lines).await.unwrap(), "ERR timeout idle for 300 s");
        assert_eq!(t0.elapsed(), std::time::Duration::from_secs(300));
        assert_eq!(next(&mut lines).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_no_replies_is_cut_after_line_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let (ctx, rx) = Context::for_test("line", config(None));
        answer_all(rx);
        let (sr, sw) = tokio::io::split(server);
        let shared = shared(ctx.config());
        tokio::spawn(serve_io(sr, sw, "127.0.0.1:40000".parse().unwrap(), ctx, shared));
        let (r, mut w) = tokio::io::split(client);
        tokio::spawn(async move {
            for _ in 0..100 {
                if w.write_all(b"PING\n").await.is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(std::time::Duration::from_secs(31)).await;
        let mut lines = BufReader::new(r).lines();
        let mut pongs = 0;
        while let Some(l) = next(&mut lines).await {
            assert!("PONG".starts_with(&l), "{l:?}");
            pongs += 1;
        }
        assert!(pongs < 100, "the connection was closed, not drained ({pongs} replies)");
    }

    #[tokio::test(start_paused = true)]
    async fn lines_in_flight_are_bounded_by_the_input_budget() {
        let mut cfg = config(None);
        cfg.pipeline = 256;
        cfg.input_budget = crate::MIN_INPUT_BUDGET;
        let (ctx, mut rx) = Context::for_test("line", cfg);
        let shared = shared(ctx.config());
        let client = pipe(&ctx, &shared, "127.0.0.1:40000");
        let (r, mut w) = tokio::io::split(client);
        let line = format!("MSG bob alice {}\n", "x".repeat(4000));
        let fits = crate::MIN_INPUT_BUDGET / limits::cost(line.len() - 1) as usize;
        tokio::spawn(async move {
            for _ in 0..100 {
                w.write_all(line.as_bytes()).await.unwrap();
            }
        });
        // The core holds every event: only what the budget allows gets in.
        let mut held = Vec::new();
        while held.len() < fits {
            held.push(rx.recv().await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        assert!(rx.try_recv().is_err(), "more than {fits} lines in flight");
        assert!(shared.budget.available_permits() < limits::cost(4014) as usize);
        for env in held.drain(..) {
            let _ = env.reply.unwrap().send(Ok(Reply::Queued(1)));
        }
        answer_all(rx);
        let mut lines = BufReader::new(r).lines();
        for _ in 0..100 {
            assert_eq!(lines.next_line().await.unwrap().unwrap(), "OK 1");
        }
        assert_eq!(shared.budget.available_permits(), crate::MIN_INPUT_BUDGET);
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_secrets_delay_the_next_auth_from_that_address_only() {
        let (ctx, rx) = Context::for_test("line", config(Some("s3cret")));
        answer_all(rx);
        let shared = shared(ctx.config());
        let attempt = |peer: &'static str, secret: &'static str| {
            let client = pipe(&ctx, &shared, peer);
            async move {
                let (r, mut w) = tokio::io::split(client);
                w.write_all(format!("AUTH {secret}\n").as_bytes()).await.unwrap();
                let t0 = Instant::now();
                let reply = BufReader::new(r).lines().next_line().await.unwrap().unwrap();
                (reply, t0.elapsed())
            }
        };
        let ms = std::time::Duration::from_millis;
        assert_eq!(
            attempt("127.0.0.2:1", "nope").await,
            ("ERR auth wrong secret".into(), ms(0))
        );
        assert_eq!(
            attempt("127.0.0.2:2", "nope").await,
            ("ERR auth wrong secret".into(), ms(100))
        );
        // Another address is not held up.
        assert_eq!(attempt("127.0.0.3:1", "s3cret").await, ("OK".into(), ms(0)));
        // Even the right secret waits for that address's turn, then clears it.
        assert_eq!(attempt("127.0.0.2:3", "s3cret").await, ("OK".into(), ms(200)));
        assert_eq!(attempt("127.0.0.2:4", "s3cret").await, ("OK".into(), ms(0)));
    }
}
