//! Test fixtures shared by the service modules' tests: a [`Service`] over
//! counting memory state with a stand-in core, stanza builders, and a fake
//! XMPP server for the connection tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushbridge_api::context::{MemoryState, StateFuture};
use pushbridge_api::{AdapterError, Context, Envelope, Event, EventError, Reply, StateStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::service::Service;
use crate::stanza::{
    field, fields, Req, FORM_PUBLISH_OPTIONS, FORM_SUMMARY, NS_COMMANDS, NS_DATA, NS_DISCO_INFO, NS_PUBSUB, NS_PUSH,
};
use crate::xml::Element;
use crate::{commands, publish, XmppAdapter, XmppConfig};
use pushbridge_api::Adapter;

/// How the stand-in core answers messages (publishes).
#[derive(Clone, Copy)]
#[repr(u8)]
pub(crate) enum Core {
    Accepts = 0,
    /// APNS reported the device gone and the core removed it.
    DeviceGone = 1,
    /// The core cannot accept it now (store failure, overload).
    Unavailable = 2,
    /// Never answers (a stalled APNS path), keeping the reply open.
    Silent = 3,
}

/// Memory state that counts full listings, to show which paths scan.
#[derive(Default)]
pub(crate) struct CountingState {
    inner: MemoryState,
    /// Full listings so far.
    pub(crate) lists: AtomicUsize,
}

impl StateStore for CountingState {
    fn get<'a>(&'a self, ns: &'a str, key: &'a str) -> StateFuture<'a, Option<String>> {
        self.inner.get(ns, key)
    }
    fn put<'a>(&'a self, ns: &'a str, key: &'a str, value: &'a str) -> StateFuture<'a, ()> {
        self.inner.put(ns, key, value)
    }
    fn delete<'a>(&'a self, ns: &'a str, key: &'a str) -> StateFuture<'a, bool> {
        self.inner.delete(ns, key)
    }
    fn list<'a>(&'a self, ns: &'a str, prefix: &'a str) -> StateFuture<'a, Vec<(String, String)>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.inner.list(ns, prefix)
    }
}

/// A service over counting memory state, with a stand-in core.
pub(crate) struct Fixture {
    pub(crate) svc: Arc<Service>,
    /// The service's adapter context (its state).
    pub(crate) ctx: Context<XmppConfig>,
    /// Every event the core received, in order.
    pub(crate) events: Arc<Mutex<Vec<Event>>>,
    mode: Arc<AtomicU8>,
    pub(crate) state: Arc<CountingState>,
    /// What `Service::handle` sends to the connection's writer.
    pub(crate) out: mpsc::Receiver<Element>,
}

impl Fixture {
    /// From now on, the core answers messages as `mode` says.
    pub(crate) fn core(&self, mode: Core) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Execute an ad-hoc command as the service does.
    pub(crate) async fn execute(&self, req: &Req, cmd: &Element) -> Element {
        commands::execute(self.svc.registry(), req, cmd).await
    }

    /// Answer a publish as the service does.
    pub(crate) async fn publish(&self, req: &Req, pubsub: &Element) -> Element {
        publish::publish(&self.ctx, self.svc.registry(), req, pubsub).await
    }
}

pub(crate) fn fixture() -> Fixture {
    fixture_with(serde_json::json!({}))
}

/// A service with `extra` merged into its config.
pub(crate) fn fixture_with(extra: serde_json::Value) -> Fixture {
    let mut json = serde_json::json!({
        "server": "127.0.0.1:5347", "domain": "push.localhost", "secret": "s"
    });
    if let (Some(base), Some(extra)) = (json.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    let config: XmppConfig = serde_json::from_value(json).unwrap();
    let (events_tx, mut core) = mpsc::channel(1024);
    let state = Arc::new(CountingState::default());
    let ctx = Context::new(
        "xmpp",
        config,
        events_tx,
        tokio_util::sync::CancellationToken::new(),
        state.clone(),
    );
    let (out, out_rx) = mpsc::channel(16);
    let events = Arc::new(Mutex::new(Vec::new()));
    let mode = Arc::new(AtomicU8::new(Core::Accepts as u8));
    let (ev, m) = (events.clone(), mode.clone());
    // A stand-in for the core.
    tokio::spawn(async move {
        let mut unanswered = Vec::new();
        while let Some(Envelope { event, reply, .. }) = core.recv().await {
            let mode = m.load(Ordering::Relaxed);
            let answer = match &event {
                Event::Message(_) if mode == Core::DeviceGone as u8 => Err(EventError::NoSuchDevice),
                Event::Message(_) if mode == Core::Unavailable as u8 => {
                    Err(EventError::Unavailable("store is busy".into()))
                }
                Event::Message(_) if mode == Core::Silent as u8 => {
                    ev.lock().unwrap().push(event);
                    unanswered.push(reply);
                    continue;
                }
                Event::Message(_) => Ok(Reply::Queued(1)),
                _ => Ok(Reply::Done),
            };
            ev.lock().unwrap().push(event);
            if let Some(r) = reply {
                let _ = r.send(answer);
            }
        }
    });
    Fixture {
        svc: Arc::new(Service::new(ctx.clone(), out)),
        ctx,
        events,
        mode,
        state,
        out: out_rx,
    }
}

/// A request from alice's phone.
pub(crate) fn req() -> Req {
    Req {
        id: "q1".into(),
        from: "Alice@Localhost/phone".into(),
        to: "push.localhost".into(),
    }
}

/// A submitted command form.
pub(crate) fn command(node: &str, fields: &[(&str, &str)]) -> Element {
    let mut x = Element::new("x").attr("xmlns", NS_DATA).attr("type", "submit");
    for (k, v) in fields {
        x = x.child(field(k, v));
    }
    Element::new("command")
        .attr("xmlns", NS_COMMANDS)
        .attr("node", node)
        .attr("action", "execute")
        .child(x)
}

/// The fields of a completed command's result form.
pub(crate) fn result_fields(reply: &Element) -> HashMap<String, String> {
    assert_eq!(reply.get("type"), Some("result"), "{reply:?}");
    let cmd = reply.find("command", Some(NS_COMMANDS)).unwrap();
    assert_eq!(cmd.get("status"), Some("completed"));
    fields(cmd.find("x", Some(NS_DATA)).unwrap())
}

/// An error reply's (type, condition, text).
pub(crate) fn condition(reply: &Element) -> (String, String, String) {
    assert_eq!(reply.get("type"), Some("error"), "{reply:?}");
    let e = reply.find("error", None).unwrap();
    let cond = e.elements().next().unwrap().local().to_owned();
    let text = e.find("text", None).map(|t| t.text_content()).unwrap_or_default();
    (e.get("type").unwrap().to_owned(), cond, text)
}

/// A device token.
pub(crate) const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A XEP-0357 `<pubsub/>` publish, with `secret` in its options when given.
pub(crate) fn publish_stanza(node: &str, secret: Option<&str>, summary: &[(&str, &str)]) -> Element {
    let mut x = Element::new("x")
        .attr("xmlns", NS_DATA)
        .child(field("FORM_TYPE", FORM_SUMMARY));
    for (k, v) in summary {
        x = x.child(field(k, v));
    }
    let mut pubsub = Element::new("pubsub").attr("xmlns", NS_PUBSUB).child(
        Element::new("publish")
            .attr("node", node)
            .child(Element::new("item").child(Element::new("notification").attr("xmlns", NS_PUSH).child(x))),
    );
    if let Some(s) = secret {
        pubsub = pubsub.child(
            Element::new("publish-options").child(
                Element::new("x")
                    .attr("xmlns", NS_DATA)
                    .child(field("FORM_TYPE", FORM_PUBLISH_OPTIONS))
                    .child(field("secret", s)),
            ),
        );
    }
    pubsub
}

/// A request from `from`.
pub(crate) fn req_from(from: &str) -> Req {
    Req {
        id: "q1".into(),
        from: from.into(),
        to: "push.localhost".into(),
    }
}

/// Register `device` for `from`: (node, secret) or the error's
/// (type, condition, text).
pub(crate) async fn register_as(
    f: &Fixture,
    from: &str,
    device: &str,
) -> Result<(String, String), (String, String, String)> {
    let r = f
        .execute(
            &req_from(from),
            &command("register-push-apns", &[("token", TOKEN), ("device-id", device)]),
        )
        .await;
    if r.get("type") == Some("result") {
        let got = result_fields(&r);
        Ok((got["node"].clone(), got["secret"].clone()))
    } else {
        Err(condition(&r))
    }
}

/// The JID's index row.
pub(crate) async fn index(f: &Fixture, jid: &str) -> Vec<String> {
    match f.ctx.state_get(&format!("jid:{jid}")).await.unwrap() {
        Some(v) => serde_json::from_str(&v).unwrap(),
        None => Vec::new(),
    }
}

/// How many `Register` events reached the core.
pub(crate) fn registrations(f: &Fixture) -> usize {
    f.events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Register { .. }))
        .count()
}

/// A publish from the user's server.
pub(crate) fn server_req() -> Req {
    Req {
        id: "p1".into(),
        from: "localhost".into(),
        to: "push.localhost".into(),
    }
}

/// A stanza as the component stream reader gives it.
pub(crate) async fn read_stanza(xml: &str) -> Element {
    let doc =
        format!("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>{xml}");
    let mut r = crate::xml::StreamReader::new(doc.as_bytes(), fixture().ctx.config().limits());
    r.header().await.unwrap();
    r.next().await.unwrap()
}

/// An iq of `typ` from the user's server.
pub(crate) fn iq(typ: &str, id: &str, payload: Element) -> Element {
    Element::new("iq")
        .attr("type", typ)
        .attr("id", id)
        .attr("from", "localhost")
        .attr("to", "push.localhost")
        .child(payload)
}

/// A disco#info request.
pub(crate) fn disco_iq(id: &str) -> Element {
    iq("get", id, Element::new("query").attr("xmlns", NS_DISCO_INFO))
}
/// A connection config for a fake server on `port` (stanzas up to 4096 bytes).
pub(crate) fn link_config(port: u16) -> XmppConfig {
    serde_json::from_value(serde_json::json!({
        "server": format!("127.0.0.1:{port}"),
        "domain": "push.localhost",
        "secret": "secret",
        "max_stanza_size": 4096
    }))
    .unwrap()
}

/// A fake server: reads the stream header, sends its own with id
/// 3BF96D32, reads the handshake, then sends `then`; the task ends with
/// all it read once the adapter closes (or is silent for 5 s).
pub(crate) async fn fake_server(then: &'static [u8]) -> (u16, tokio::task::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("push.localhost") {
            let n = s.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='3BF96D32' from='push.localhost'>").await.unwrap();
        while !String::from_utf8_lossy(&seen).contains("</handshake>") {
            let n = s.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(then).await.unwrap();
        // Collect what the adapter says until it closes.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    (port, task)
}

/// Run the adapter against a fake server sending `then` after the
/// handshake: the error the adapter stopped with, and all it wrote.
pub(crate) async fn run_until_error(then: &'static [u8]) -> (AdapterError, String) {
    let (port, server) = fake_server(then).await;
    let (ctx, _core) = Context::for_test("xmpp", link_config(port));
    let err = tokio::time::timeout(Duration::from_secs(5), XmppAdapter::run(ctx))
        .await
        .expect("the adapter stops")
        .unwrap_err();
    (err, server.await.unwrap())
}
