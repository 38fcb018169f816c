//! A connected component stream: a reader task turns the stream into
//! stanzas, the [`Service`] answers them, and one loop writes the replies
//! and a whitespace keepalive until the server ends the stream, the
//! stream breaks, or shutdown (answering what is being answered first,
//! for at most 2 s).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use pushbridge_api::{AdapterError, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::task::AbortOnDropHandle;

use crate::component::{protocol, stream_error, stream_error_parts, Link, NS_STREAM_ERRORS};
use crate::redact::redact_stanza;
use crate::service::Service;
use crate::xml::{Element, ReadError, StreamReader};
use crate::XmppConfig;

/// Whitespace keepalive interval.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Stanzas read ahead of the session loop. Small: a parsed stanza takes
/// many times its size in memory (about 100 bytes per element), and a
/// server that stops reading our replies stalls the loop while the reader
/// fills this queue.
const READ_QUEUE: usize = 16;

/// How long shutdown waits for replies being prepared.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The end of the session: `Ok` on shutdown.
type End = Result<(), AdapterError>;

/// A `<stream:error>` with `condition`, then the end of our stream.
pub fn closing_stream_error(condition: &str) -> Vec<u8> {
    let err = Element::new("stream:error").child(Element::new(condition).attr("xmlns", NS_STREAM_ERRORS));
    let mut b = err.to_bytes();
    b.extend_from_slice(b"</stream:stream>");
    b
}

/// Serve `link` until it ends: `Ok(())` after shutdown, else why it ended.
pub async fn run(ctx: &Context<XmppConfig>, link: Link) -> End {
    let Link { reader, writer } = link;
    let (mut stanzas, reader_task) = spawn_reader(reader);
    let (out_tx, out) = mpsc::channel::<Element>(1024);
    let svc = Arc::new(Service::new(ctx.clone(), out_tx));
    if let Err(e) = svc.registry().index_existing().await {
        // Unregistration may miss devices registered before the index
        // existed until it is built (tried again at the next start).
        tracing::warn!(adapter = ctx.name(), error = %e, "could not build the per-JID device index");
    }
    let mut s = Session {
        ctx,
        cfg: ctx.config(),
        writer,
        out,
        inflight: Arc::new(Semaphore::new(ctx.config().max_inflight)),
        svc,
    };
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    let result = loop {
        tokio::select! {
            read = stanzas.recv() => if let ControlFlow::Break(end) = s.on_read(read).await {
                break end;
            },
            Some(reply) = s.out.recv() => {
                tracing::trace!(stanza = %redact_stanza(&reply), "xmpp >");
                s.writer.write_all(&reply.to_bytes()).await?;
            }
            _ = keepalive.tick() => {
                s.writer.write_all(b" ").await?;
            }
            _ = ctx.shutdown().cancelled() => {
                s.drain().await;
                break Ok(());
            }
        }
    };
    drop(reader_task);
    let _ = s.writer.shutdown().await;
    result
}

/// Read stanzas in a task of their own, so the session loop can select
/// freely; the channel ends after the first error. The task (and the read
/// half of the socket with it) ends when the handle is dropped, also when
/// the session's future is dropped unfinished (the supervisor aborting a
/// singleton whose lock was lost).
fn spawn_reader(
    mut reader: StreamReader<OwnedReadHalf>,
) -> (mpsc::Receiver<Result<Element, ReadError>>, AbortOnDropHandle<()>) {
    let (stanza_tx, stanzas) = mpsc::channel::<Result<Element, ReadError>>(READ_QUEUE);
    let task = tokio::spawn(async move {
        loop {
            let r = reader.next().await;
            let end = r.is_err();
            if stanza_tx.send(r).await.is_err() || end {
                return;
            }
        }
    });
    (stanzas, AbortOnDropHandle::new(task))
}

/// The connected state of [`run`].
struct Session<'a> {
    ctx: &'a Context<XmppConfig>,
    cfg: &'a XmppConfig,
    writer: OwnedWriteHalf,
    /// The service's replies, to write.
    out: mpsc::Receiver<Element>,
    /// Slots for commands and publishes being answered (`max_inflight`);
    /// all free again means nothing is being answered.
    inflight: Arc<Semaphore>,
    svc: Arc<Service>,
}

impl Session<'_> {
    /// Act on what the reader task gave: a stanza to answer, or the end
    /// of the stream (closing it with a stream error where one is due).
    async fn on_read(&mut self, read: Option<Result<Element, ReadError>>) -> ControlFlow<End> {
        if let Some(Ok(stanza)) = &read {
            tracing::trace!(stanza = %redact_stanza(stanza), "xmpp <");
        }
        match read {
            Some(Ok(stanza)) if stanza.local() == "error" => ControlFlow::Break(self.on_stream_error(&stanza).await),
            Some(Ok(stanza)) => {
                self.svc.handle(stanza, &self.inflight);
                ControlFlow::Continue(())
            }
            Some(Err(ReadError::Closed)) | None => ControlFlow::Break(Err(AdapterError::Io(std::io::Error::other(
                "the XMPP server closed the stream",
            )))),
            Some(Err(e)) => {
                if let Some((limit, max)) = e.limit() {
                    tracing::warn!(
                        adapter = self.ctx.name(),
                        max,
                        "stanza over {limit}; closing the stream with policy-violation"
                    );
                    let _ = self.writer.write_all(&closing_stream_error("policy-violation")).await;
                    return ControlFlow::Break(Err(AdapterError::Protocol(e.to_string())));
                }
                let _ = self.writer.write_all(&closing_stream_error("not-well-formed")).await;
                ControlFlow::Break(Err(protocol("stream", e)))
            }
        }
    }

    /// A `<stream:error>`: the server is ending the stream.
    async fn on_stream_error(&mut self, stanza: &Element) -> End {
        let (condition, text) = stream_error_parts(stanza);
        tracing::error!(
            adapter = self.ctx.name(),
            host = %self.cfg.server,
            reason = condition,
            text = text.as_deref().unwrap_or(""),
            "the XMPP server ended the component stream with a stream error"
        );
        let _ = self.writer.write_all(b"</stream:stream>").await;
        Err(stream_error(self.cfg, &condition, text.as_deref()))
    }

    /// Shutdown: write the replies being prepared (for at most
    /// [`SHUTDOWN_GRACE`]), then close the stream.
    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.inflight.available_permits() < self.cfg.max_inflight || !self.out.is_empty() {
            match tokio::time::timeout_at(deadline, self.out.recv()).await {
                Ok(Some(reply)) => {
                    tracing::trace!(stanza = %redact_stanza(&reply), "xmpp >");
                    let _ = self.writer.write_all(&reply.to_bytes()).await;
                }
                _ => break,
            }
        }
        let _ = self.writer.write_all(b"</stream:stream>").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registration;
    use crate::test_support::{fake_server, link_config, run_until_error};
    use crate::XmppAdapter;
    use pushbridge_api::Adapter;

    #[tokio::test]
    async fn conflict_after_the_handshake_is_a_config_error() {
        let (err, seen) = run_until_error(
            b"<handshake/><stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced by new connection</text></stream:error></stream:stream>",
        )
        .await;
        assert!(
            matches!(err, AdapterError::Config(ref m)
                if m.contains("conflict") && m.contains("Replaced by new connection") && m.contains("push.localhost")),
            "{err}"
        );
        assert!(seen.ends_with("</stream:stream>"), "{seen}");
    }

    #[tokio::test]
    async fn other_stream_errors_end_the_link_for_a_normal_retry() {
        let (err, _) = run_until_error(
            b"<handshake/><stream:error><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bye</text><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        )
        .await;
        assert!(
            matches!(err, AdapterError::Other(ref m) if m.contains("system-shutdown") && m.contains("bye")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_publish_stuck_in_the_core_does_not_stall_the_stream() {
        // The core (`_core`) never reads, so the publish waits forever;
        // the disco request after it must still be answered.
        let (port, server) = fake_server(
            b"<handshake/><iq type='set' id='pub1' from='localhost' to='push.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n1'><item><notification xmlns='urn:xmpp:push:0'/></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s1</value></field></x></publish-options></pubsub></iq><iq type='get' id='disco1' from='localhost' to='push.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
        let (ctx, mut core) = Context::for_test("xmpp", link_config(port));
        let reg = Registration {
            jid: "alice@localhost".into(),
            token: "ab".repeat(32),
            secret: "s1".into(),
            device_id: None,
            topic: None,
            environment: None,
        };
        ctx.state_put("node:n1", &serde_json::to_string(&reg).unwrap())
            .await
            .unwrap();
        let stop = ctx.shutdown().clone();
        let run = tokio::spawn(XmppAdapter::run(ctx));
        // The publish reaches the core, which holds it unanswered.
        let held = tokio::time::timeout(Duration::from_secs(5), core.recv())
            .await
            .expect("the publish reaches the core")
            .unwrap();
        assert!(matches!(held.event, pushbridge_api::Event::Message(_)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        assert!(run.await.unwrap().is_ok());
        let seen = server.await.unwrap();
        assert!(seen.contains("disco1") && seen.contains("urn:xmpp:push:0"), "{seen}");
        assert!(!seen.contains("pub1"), "the publish is still unanswered: {seen}");
        drop(held);
    }

    #[tokio::test]
    async fn oversized_stanza_ends_the_stream_with_policy_violation() {
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let mut v = b"<handshake/><message from='a@localhost' to='push.localhost'><body>".to_vec();
            v.extend(std::iter::repeat_n(b'x', 10_000));
            v.extend_from_slice(b"</body></message>");
            v
        });
        let (err, seen) = run_until_error(big).await;
        assert!(
            matches!(err, AdapterError::Protocol(ref m) if m.contains("4096")),
            "{err}"
        );
        assert!(seen.contains("policy-violation"), "{seen}");
    }

    #[tokio::test]
    async fn deep_stanza_ends_the_stream_with_policy_violation() {
        static DEEP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let deep = DEEP.get_or_init(|| {
            // 6,000 levels in 42 KB: over the depth limit, under the size limit
            // once it is raised.
            let mut v = b"<handshake/><iq type='get' id='deep' from='localhost' to='push.localhost'>".to_vec();
            v.extend("<a>".repeat(6000).bytes());
            v.extend("</a>".repeat(6000).bytes());
            v.extend_from_slice(b"</iq>");
            v
        });
        let (err, seen) = run_until_error(deep).await;
        assert!(
            matches!(err, AdapterError::Protocol(ref m) if m.contains("nested deeper than 64 elements")),
            "{err}"
        );
        assert!(seen.contains("policy-violation"), "{seen}");
        assert!(seen.ends_with("</stream:stream>"), "{seen}");
    }

    #[tokio::test]
    async fn answers_disco_over_the_link_and_stops_on_shutdown() {
        let (port, server) = fake_server(
            b"<handshake/><iq type='get' id='d1' from='alice@localhost/x' to='push.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq><iq type='get' id='d2' from='alice@localhost/x' to='push.localhost'><vcard xmlns='vcard-temp'/></iq>",
        )
        .await;
        let (ctx, _core) = Context::for_test("xmpp", link_config(port));
        let stop = ctx.shutdown().clone();
        let run = tokio::spawn(XmppAdapter::run(ctx));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        assert!(run.await.unwrap().is_ok());
        let seen = server.await.unwrap();
        assert!(
            seen.contains("urn:xmpp:push:0") && seen.contains("category=\"pubsub\""),
            "{seen}"
        );
        assert!(seen.contains("service-unavailable"), "unknown iq gets an error: {seen}");
        assert!(seen.ends_with("</stream:stream>"), "{seen}");
    }
}
