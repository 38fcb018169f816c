//! The XMPP adapter: an external component (XEP-0114) that acts as a
//! XEP-0357 push App Server.
//!
//! The user's XMPP server (Prosody's mod_cloud_notify, ejabberd's mod_push,
//! …) publishes a notification to a node of this component whenever a
//! message reaches an offline or hibernated session of a user who enabled
//! push; the component turns it into a push to the device behind that node.
//! Devices register with XEP-0050 ad-hoc commands (`register-push-apns` /
//! `unregister-push-apns`, and mod_push_appserver's `v1-register-push`).
//!
//! Layout: [`xml`] reads and writes stanzas (quick-xml, bounded);
//! [`service`] answers disco, commands and publishes; this file holds the
//! config, the component handshake and the connection loop.
#![forbid(unsafe_code)]

pub mod service;
pub mod xml;

use std::sync::Arc;
use std::time::Duration;

use pushbridge_api::{Adapter, AdapterError, ConfigError, Context, Environment};
use serde::Deserialize;
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use self::xml::{Element, ReadError, StreamReader};

pub const NS_COMPONENT: &str = "jabber:component:accept";
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// Whitespace keepalive interval.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// `[[adapters.xmpp]]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmppConfig {
    /// The XMPP server's component port, `host:port` (Prosody: 5347).
    pub server: String,
    /// The component's domain, as in Prosody's `Component "push.example.org"`.
    pub domain: String,
    /// The shared secret (`component_secret`).
    pub secret: String,
    /// Scope of user ids: `<name>:<bare jid>` (default `xmpp`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Largest stanza accepted; a larger one ends the stream with a
    /// policy-violation error (default 65536).
    #[serde(default = "default_max_stanza")]
    pub max_stanza_size: usize,
    /// App (APNS topic) of devices registered here; default: the first app.
    pub topic: Option<String>,
    /// Environment of devices registered here when the client does not say
    /// (`sandbox` field in the command); default: the app's.
    pub environment: Option<Environment>,
    /// Alert title when the server does not say who sent the message.
    #[serde(default = "default_title")]
    pub anonymous_title: String,
    /// Publishes being handed to the core at once; more are answered
    /// `wait`/`resource-constraint` so the server retries later.
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
    /// Devices (push nodes) one bare JID may register; one more is refused
    /// with `cancel`/`not-allowed` until one is unregistered (default 10).
    #[serde(default = "default_max_devices")]
    pub max_devices_per_jid: usize,
}

impl std::fmt::Debug for XmppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmppConfig")
            .field("server", &self.server)
            .field("domain", &self.domain)
            .field("secret", &"<redacted>")
            .field("name", &self.name)
            .field("max_stanza_size", &self.max_stanza_size)
            .field("topic", &self.topic)
            .field("environment", &self.environment)
            .field("anonymous_title", &self.anonymous_title)
            .field("max_inflight", &self.max_inflight)
            .field("max_devices_per_jid", &self.max_devices_per_jid)
            .finish()
    }
}

fn default_name() -> String {
    "xmpp".to_owned()
}
fn default_max_stanza() -> usize {
    65_536
}
fn default_title() -> String {
    "New message".to_owned()
}
fn default_inflight() -> usize {
    1024
}
fn default_max_devices() -> usize {
    10
}

/// The XEP-0114 handshake: lower-case hex SHA-1 of stream id ‖ secret.
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let d = Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The XMPP adapter.
pub struct XmppAdapter;

impl Adapter for XmppAdapter {
    type Config = XmppConfig;
    const KIND: &'static str = "xmpp";

    fn instance_name(config: &XmppConfig) -> String {
        config.name.clone()
    }

    fn check(c: &XmppConfig) -> Result<(), ConfigError> {
        pushbridge_kit::check_host_port(&c.server).map_err(|e| ConfigError::new("server", e))?;
        if c.domain.is_empty()
            || c.domain
                .contains(|ch: char| ch.is_whitespace() || ch == '@' || ch == '/')
        {
            return Err(ConfigError::new(
                "domain",
                format!("{:?} is not a component domain", c.domain),
            ));
        }
        if c.secret.is_empty() {
            return Err(ConfigError::new("secret", "must be the server's component_secret"));
        }
        if c.name.is_empty() || c.name.contains(char::is_whitespace) {
            return Err(ConfigError::new("name", "must be non-empty without spaces"));
        }
        if c.max_stanza_size < 1024 {
            return Err(ConfigError::new("max_stanza_size", "must be at least 1024"));
        }
        if c.max_inflight == 0 {
            return Err(ConfigError::new("max_inflight", "must be at least 1"));
        }
        if c.max_devices_per_jid == 0 {
            return Err(ConfigError::new("max_devices_per_jid", "must be at least 1"));
        }
        Ok(())
    }

    async fn run(ctx: Context<XmppConfig>) -> Result<(), AdapterError> {
        let cfg = ctx.config().clone();
        let tcp = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&cfg.server)) => r
                .map_err(|_| AdapterError::Io(std::io::Error::other(format!("connect to {}: timed out", cfg.server))))?
                .map_err(|e| AdapterError::Io(std::io::Error::new(e.kind(), format!("connect to {}: {e}", cfg.server))))?,
            _ = ctx.shutdown().cancelled() => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let (rd, mut wr) = tcp.into_split();
        let mut reader = StreamReader::new(rd, cfg.max_stanza_size);

        // Open the stream and authenticate.
        let mut open = Vec::new();
        open.extend_from_slice(b"<?xml version='1.0'?>");
        let header = Element::new("stream:stream")
            .attr("xmlns", NS_COMPONENT)
            .attr("xmlns:stream", NS_STREAM)
            .attr("to", &cfg.domain);
        let mut h = header.to_bytes();
        // An opening tag only: drop the self-closing "/>".
        if h.ends_with(b"/>") {
            h.truncate(h.len() - 2);
            h.push(b'>');
        }
        open.extend_from_slice(&h);
        wr.write_all(&open).await?;
        let server_header = reader.header().await.map_err(|e| protocol("stream header", e))?;
        let id = server_header
            .get("id")
            .ok_or_else(|| AdapterError::Protocol("the server's stream header has no id".into()))?
            .to_owned();
        let hs = Element::new("handshake").text(&handshake_digest(&id, &cfg.secret));
        wr.write_all(&hs.to_bytes()).await?;
        match reader.next().await {
            Ok(e) if e.local() == "handshake" => {}
            Ok(e) if e.local() == "error" => {
                let (cond, text) = stream_error_parts(&e);
                let text = text.map(|t| format!(" ({t})")).unwrap_or_default();
                return Err(if cond == "not-authorized" {
                    AdapterError::Config(format!(
                        "{} refused the component secret for {} (not-authorized){text}: check secret against the server's component_secret",
                        cfg.server, cfg.domain
                    ))
                } else {
                    AdapterError::Config(format!("{} refused component {}: {cond}{text}", cfg.server, cfg.domain))
                });
            }
            Ok(e) => {
                return Err(AdapterError::Protocol(format!(
                    "expected <handshake/>, got <{}>",
                    e.name
                )))
            }
            Err(ReadError::Closed) => {
                return Err(AdapterError::Config(format!(
                    "{} closed the stream during the handshake: wrong secret or unknown component {}?",
                    cfg.server, cfg.domain
                )))
            }
            Err(e) => return Err(protocol("handshake", e)),
        }
        tracing::info!(adapter = ctx.name(), server = %cfg.server, domain = %cfg.domain, "XMPP component connected");

        // Reader task: stanzas in, so the main loop can select freely.
        let (stanza_tx, mut stanzas) = mpsc::channel::<Result<Element, ReadError>>(256);
        let reader_task = tokio::spawn(async move {
            loop {
                let r = reader.next().await;
                let end = r.is_err();
                if stanza_tx.send(r).await.is_err() || end {
                    return;
                }
            }
        });
        let (out_tx, mut out) = mpsc::channel::<Element>(1024);
        let svc = Arc::new(service::Service::new(ctx.clone(), out_tx));
        if let Err(e) = svc.index_existing().await {
            // Unregistration may miss devices registered before the index
            // existed until it is built (tried again at the next start).
            tracing::warn!(adapter = ctx.name(), error = %e, "could not build the per-JID device index");
        }
        let inflight = Arc::new(Semaphore::new(cfg.max_inflight));
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        let result = loop {
            tokio::select! {
                s = stanzas.recv() => match s {
                    Some(Ok(stanza)) if stanza.local() == "error" => {
                        // A <stream:error>: the server is ending the stream.
                        let (condition, text) = stream_error_parts(&stanza);
                        tracing::error!(
                            adapter = ctx.name(),
                            server = %cfg.server,
                            condition,
                            text = text.as_deref().unwrap_or(""),
                            "the XMPP server ended the component stream with a stream error"
                        );
                        let _ = wr.write_all(b"</stream:stream>").await;
                        break Err(stream_error(&cfg, &condition, text.as_deref()));
                    }
                    Some(Ok(stanza)) => svc.handle(stanza, &inflight),
                    Some(Err(ReadError::TooBig(max))) => {
                        tracing::warn!(adapter = ctx.name(), max, "stanza over max_stanza_size; closing the stream");
                        let err = Element::new("stream:error").child(
                            Element::new("policy-violation").attr("xmlns", NS_STREAM_ERRORS),
                        );
                        let mut b = err.to_bytes();
                        b.extend_from_slice(b"</stream:stream>");
                        let _ = wr.write_all(&b).await;
                        break Err(AdapterError::Protocol(format!("stanza larger than {max} bytes")));
                    }
                    Some(Err(ReadError::Closed)) | None => {
                        break Err(AdapterError::Io(std::io::Error::other("the XMPP server closed the stream")))
                    }
                    Some(Err(e)) => {
                        let err = Element::new("stream:error").child(
                            Element::new("not-well-formed").attr("xmlns", NS_STREAM_ERRORS),
                        );
                        let mut b = err.to_bytes();
                        b.extend_from_slice(b"</stream:stream>");
                        let _ = wr.write_all(&b).await;
                        break Err(protocol("stream", e));
                    }
                },
                Some(reply) = out.recv() => {
                    wr.write_all(&reply.to_bytes()).await?;
                }
                _ = keepalive.tick() => {
                    wr.write_all(b" ").await?;
                }
                _ = ctx.shutdown().cancelled() => {
                    // Answer what is being answered, then close.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                    while inflight.available_permits() < cfg.max_inflight || !out.is_empty() {
                        match tokio::time::timeout_at(deadline, out.recv()).await {
                            Ok(Some(reply)) => {
                                let _ = wr.write_all(&reply.to_bytes()).await;
                            }
                            _ => break,
                        }
                    }
                    let _ = wr.write_all(b"</stream:stream>").await;
                    break Ok(());
                }
            }
        };
        reader_task.abort();
        let _ = wr.shutdown().await;
        result
    }
}

/// The defined condition and the text (at most 200 characters, control
/// characters blanked) of a `<stream:error>`.
pub fn stream_error_parts(e: &Element) -> (String, Option<String>) {
    let condition = e
        .elements()
        .find(|c| c.local() != "text")
        .map(|c| c.local().to_owned())
        .unwrap_or_else(|| "undefined-condition".to_owned());
    let text = e
        .find("text", None)
        .map(|t| {
            // Peer text goes into logs: no control characters (new lines).
            t.text_content()
                .trim()
                .chars()
                .take(200)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
        })
        .filter(|t| !t.is_empty());
    (condition, text)
}

/// Why the adapter stops after a `<stream:error>` received once connected.
/// `conflict` means another component connected as our domain (or the
/// server replaced us with it): reconnecting at once would only fight it,
/// so it is a configuration error (longest backoff).
pub fn stream_error(cfg: &XmppConfig, condition: &str, text: Option<&str>) -> AdapterError {
    let text = text.map(|t| format!(" ({t})")).unwrap_or_default();
    if condition == "conflict" {
        AdapterError::Config(format!(
            "{} ended the stream with conflict{text}: another component is connected as {}; is the domain configured for a second pushbridge or another service?",
            cfg.server, cfg.domain
        ))
    } else {
        AdapterError::Other(format!(
            "{} ended the stream with stream error {condition}{text}",
            cfg.server
        ))
    }
}

fn protocol(what: &str, e: ReadError) -> AdapterError {
    match e {
        ReadError::Io(io) => AdapterError::Io(io),
        other => AdapterError::Protocol(format!("{what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_test_vector() {
        // PROTOCOLS.md §4.
        assert_eq!(
            handshake_digest("3BF96D32", "secret"),
            "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"
        );
    }

    #[test]
    fn config_checks() {
        let ok: XmppConfig = serde_json::from_value(serde_json::json!({
            "server": "127.0.0.1:5347", "domain": "push.localhost", "secret": "s"
        }))
        .unwrap();
        assert!(XmppAdapter::check(&ok).is_ok());
        assert_eq!(ok.max_devices_per_jid, 10);
        let mut bad = ok.clone();
        bad.max_devices_per_jid = 0;
        assert!(XmppAdapter::check(&bad)
            .unwrap_err()
            .to_string()
            .contains("max_devices_per_jid"));
        assert!(!format!("{ok:?}").contains("\"s\""));
        let mut bad = ok.clone();
        bad.server = "nohost".into();
        assert!(XmppAdapter::check(&bad).unwrap_err().to_string().contains("host:port"));
        let mut bad = ok.clone();
        bad.secret = String::new();
        assert!(XmppAdapter::check(&bad).is_err());
        let mut bad = ok;
        bad.domain = "a@b".into();
        assert!(XmppAdapter::check(&bad).is_err());
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn config(port: u16) -> XmppConfig {
        serde_json::from_value(serde_json::json!({
            "server": format!("127.0.0.1:{port}"),
            "domain": "push.localhost",
            "secret": "secret",
            "max_stanza_size": 4096
        }))
        .unwrap()
    }

    /// A fake server: reads the stream header, sends its own with id
    /// 3BF96D32, reads the handshake, then runs `then` with what it read.
    async fn fake_server(then: &'static [u8]) -> (u16, tokio::task::JoinHandle<String>) {
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
    async fn run_until_error(then: &'static [u8]) -> (AdapterError, String) {
        let (port, server) = fake_server(then).await;
        let (ctx, _core) = Context::for_test("xmpp", config(port));
        let err = tokio::time::timeout(Duration::from_secs(5), XmppAdapter::run(ctx))
            .await
            .expect("the adapter stops")
            .unwrap_err();
        (err, server.await.unwrap())
    }

    #[tokio::test]
    async fn wrong_secret_is_a_config_error() {
        let (err, seen) = run_until_error(
            b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        )
        .await;
        assert!(
            matches!(err, AdapterError::Config(ref m) if m.contains("not-authorized")),
            "{err}"
        );
        assert!(seen.contains("b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"), "{seen}");
        assert!(seen.contains("jabber:component:accept"), "{seen}");
    }

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

    #[test]
    fn stream_error_parts_read_condition_and_text() {
        let e = Element::new("stream:error")
            .child(
                Element::new("text")
                    .attr("xmlns", NS_STREAM_ERRORS)
                    .text(&"x".repeat(500)),
            )
            .child(Element::new("host-unknown").attr("xmlns", NS_STREAM_ERRORS));
        let (_, text) =
            stream_error_parts(&Element::new("stream:error").child(Element::new("text").text(" two\nlines\r\n")));
        assert_eq!(text.as_deref(), Some("two lines"));
        let (cond, text) = stream_error_parts(&e);
        assert_eq!(cond, "host-unknown");
        assert_eq!(text.map(|t| t.len()), Some(200));
        let (cond, text) = stream_error_parts(&Element::new("stream:error"));
        assert_eq!((cond.as_str(), text), ("undefined-condition", None));
    }

    #[tokio::test]
    async fn a_publish_stuck_in_the_core_does_not_stall_the_stream() {
        // The core (`_core`) never reads, so the publish waits forever;
        // the disco request after it must still be answered.
        let (port, server) = fake_server(
            b"<handshake/><iq type='set' id='pub1' from='localhost' to='push.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n1'><item><notification xmlns='urn:xmpp:push:0'/></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s1</value></field></x></publish-options></pubsub></iq><iq type='get' id='disco1' from='localhost' to='push.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
        let (ctx, mut core) = Context::for_test("xmpp", config(port));
        let reg = service::Registration {
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
    async fn answers_disco_over_the_link_and_stops_on_shutdown() {
        let (port, server) = fake_server(
            b"<handshake/><iq type='get' id='d1' from='alice@localhost/x' to='push.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq><iq type='get' id='d2' from='alice@localhost/x' to='push.localhost'><vcard xmlns='vcard-temp'/></iq>",
        )
        .await;
        let (ctx, _core) = Context::for_test("xmpp", config(port));
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
