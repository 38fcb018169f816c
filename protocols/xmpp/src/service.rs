//! What the component answers: service discovery, the registration
//! commands (XEP-0050) and XEP-0357 publishes.

use std::collections::HashMap;
use std::sync::Arc;

use pushbridge_api::{Context, Device, DeviceToken, Environment, Event, EventError, Message, Reply, UserId};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, Semaphore};

use crate::xml::Element;
use crate::XmppConfig;

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUSH: &str = "urn:xmpp:push:0";
pub const NS_DATA: &str = "jabber:x:data";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const FORM_SUMMARY: &str = "urn:xmpp:push:summary";
pub const FORM_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// The registration commands, with their names for disco#items.
pub const COMMANDS: [(&str, &str); 3] = [
    ("register-push-apns", "Register an APNS device for push notifications"),
    ("unregister-push-apns", "Unregister an APNS device"),
    ("v1-register-push", "Register a device (mod_push_appserver dialect)"),
];

/// State key marking that the per-JID index covers every node row.
const INDEX_MARKER: &str = "meta:jid-index";

/// A device behind a node, as kept in the adapter's state (`node:<node>`).
/// The adapter's state also holds `dev:<bare jid>\n<device id or token>` →
/// node (to reuse the node of a device registering again) and
/// `jid:<bare jid>` → JSON list of that JID's nodes (the per-JID index that
/// bounds registrations and serves unregistration).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    pub jid: String,
    pub token: String,
    pub secret: String,
    pub device_id: Option<String>,
    pub topic: Option<String>,
    pub environment: Option<Environment>,
}

/// The addressing of a request, to answer it.
#[derive(Debug, Clone)]
pub struct Req {
    pub id: String,
    pub from: String,
    pub to: String,
}

impl Req {
    fn reply(&self, typ: &str) -> Element {
        Element::new("iq")
            .attr("type", typ)
            .attr("id", &self.id)
            .attr("from", &self.to)
            .attr("to", &self.from)
    }

    pub fn result(&self, payload: Option<Element>) -> Element {
        let r = self.reply("result");
        match payload {
            Some(p) => r.child(p),
            None => r,
        }
    }

    /// An error reply: `typ` (cancel, modify, wait, auth), a defined
    /// condition, and an optional human-readable text.
    pub fn error(&self, typ: &str, condition: &str, text: Option<&str>) -> Element {
        let mut err = Element::new("error")
            .attr("type", typ)
            .child(Element::new(condition).attr("xmlns", NS_STANZAS));
        if let Some(t) = text {
            err = err.child(Element::new("text").attr("xmlns", NS_STANZAS).text(t));
        }
        self.reply("error").child(err)
    }
}

/// The bare JID (no resource), lower-cased.
pub fn bare(jid: &str) -> String {
    jid.split('/').next().unwrap_or(jid).to_lowercase()
}

/// The fields of a data form: var → first value.
pub fn fields(form: &Element) -> HashMap<String, String> {
    form.elements()
        .filter(|f| f.local() == "field")
        .filter_map(|f| {
            let var = f.get("var")?.to_owned();
            let value = f.find("value", None).map(|v| v.text_content()).unwrap_or_default();
            Some((var, value))
        })
        .collect()
}

fn field(var: &str, value: &str) -> Element {
    Element::new("field")
        .attr("var", var)
        .child(Element::new("value").text(value))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // An OS RNG failure leaves zeros: refuse to hand those out as secrets.
    if getrandom::fill(&mut buf).is_err() {
        return String::new();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers stanzas; replies go to the connection's writer.
pub struct Service {
    ctx: Context<XmppConfig>,
    out: mpsc::Sender<Element>,
    /// Serializes changes to registrations (node, device and index rows),
    /// so the per-JID cap and index stay exact under concurrent commands.
    registry: tokio::sync::Mutex<()>,
}

impl Service {
    pub fn new(ctx: Context<XmppConfig>, out: mpsc::Sender<Element>) -> Self {
        Self {
            ctx,
            out,
            registry: tokio::sync::Mutex::new(()),
        }
    }

    fn send_now(&self, e: Element) {
        if self.out.try_send(e).is_err() {
            tracing::warn!("XMPP reply queue full; reply dropped");
        }
    }

    /// Handle one stanza. Anything that waits on the core runs in its own
    /// task (at most `max_inflight`), so the stream never stalls.
    pub fn handle(self: &Arc<Self>, stanza: Element, inflight: &Arc<Semaphore>) {
        if stanza.local() != "iq" {
            return; // messages and presence are not for us
        }
        let typ = stanza.get("type").unwrap_or("");
        if typ != "get" && typ != "set" {
            return; // results and errors need no answer
        }
        let req = Req {
            id: stanza.get("id").unwrap_or("").to_owned(),
            from: stanza.get("from").unwrap_or("").to_owned(),
            to: stanza.get("to").unwrap_or(&self.ctx.config().domain).to_owned(),
        };
        let Some(payload) = stanza.elements().next().cloned() else {
            self.send_now(req.error("modify", "bad-request", Some("empty iq")));
            return;
        };
        match (typ, payload.local(), payload.ns()) {
            ("get", "query", Some(NS_DISCO_INFO)) => self.send_now(req.result(Some(disco_info(&payload)))),
            ("get", "query", Some(NS_DISCO_ITEMS)) => {
                let reply = disco_items(&payload, &req.to);
                self.send_now(req.result(Some(reply)))
            }
            ("set", "command", Some(NS_COMMANDS)) | ("set", "pubsub", Some(NS_PUBSUB)) => {
                let Ok(permit) = inflight.clone().try_acquire_owned() else {
                    self.send_now(req.error("wait", "resource-constraint", Some("too many requests in progress")));
                    return;
                };
                let svc = self.clone();
                tokio::spawn(async move {
                    let reply = if payload.local() == "command" {
                        svc.command(&req, &payload).await
                    } else {
                        let reply = svc.publish(&req, &payload).await;
                        let outcome = reply
                            .find("error", None)
                            .and_then(|e| e.elements().next())
                            .map(|c| c.local().to_owned())
                            .unwrap_or_else(|| "result".to_owned());
                        // Debug-formatted: peer data cannot forge log lines.
                        tracing::info!(
                            adapter = svc.ctx.name(),
                            from = ?req.from,
                            id = ?req.id,
                            outcome,
                            "XEP-0357 publish answered"
                        );
                        reply
                    };
                    let _ = svc.out.send(reply).await;
                    drop(permit);
                });
            }
            _ => self.send_now(req.error("cancel", "service-unavailable", None)),
        }
    }

    fn user(&self, jid: &str) -> Option<UserId> {
        UserId::scoped(self.ctx.name(), jid).ok()
    }

    /// XEP-0050 command execution.
    pub async fn command(&self, req: &Req, cmd: &Element) -> Element {
        let node = cmd.get("node").unwrap_or("");
        if !COMMANDS.iter().any(|(n, _)| *n == node) {
            return req.error("cancel", "item-not-found", Some("unknown command"));
        }
        let session = cmd.get("sessionid").map(str::to_owned).unwrap_or_else(|| random_hex(8));
        let head = |status: &str| {
            Element::new("command")
                .attr("xmlns", NS_COMMANDS)
                .attr("node", node)
                .attr("sessionid", &session)
                .attr("status", status)
        };
        if cmd.get("action") == Some("cancel") {
            return req.result(Some(head("canceled")));
        }
        let Some(form) = cmd
            .find("x", Some(NS_DATA))
            .filter(|x| x.get("type").unwrap_or("submit") == "submit")
        else {
            // A bare execute: hand out the form to fill.
            return req.result(Some(
                head("executing")
                    .child(
                        Element::new("actions")
                            .attr("execute", "complete")
                            .child(Element::new("complete")),
                    )
                    .child(form_to_fill(node)),
            ));
        };
        let f = fields(form);
        let jid = bare(&req.from);
        if jid.is_empty() || jid.contains(char::is_whitespace) {
            return req.error("modify", "bad-request", Some("the request has no usable sender JID"));
        }
        let result = match node {
            "register-push-apns" => {
                let Some(token) = f.get("token").filter(|t| !t.is_empty()) else {
                    return req.error("modify", "bad-request", Some("field 'token' is required"));
                };
                let device_id = f.get("device-id").filter(|d| !d.is_empty()).cloned();
                let env = match f.get("sandbox").map(String::as_str) {
                    Some("true" | "1") => Some(Environment::Sandbox),
                    Some("false" | "0") => Some(Environment::Production),
                    _ => None,
                };
                match self
                    .register(&jid, token, device_id, f.get("topic").cloned(), env)
                    .await
                {
                    Ok(reg_node) => vec![("node", reg_node.0), ("secret", reg_node.1)],
                    Err(e) => return e.reply(req),
                }
            }
            "v1-register-push" => {
                match f.get("type").map(String::as_str) {
                    Some("apns") => {}
                    other => {
                        return req.error(
                            "modify",
                            "not-acceptable",
                            Some(&format!("field 'type' must be apns, got {:?}", other.unwrap_or(""))),
                        )
                    }
                }
                let Some(device) = f.get("node").filter(|n| !n.is_empty()) else {
                    return req.error("modify", "bad-request", Some("field 'node' is required"));
                };
                let Some(token) = f.get("token").filter(|t| !t.is_empty()) else {
                    return req.error("modify", "bad-request", Some("field 'token' is required"));
                };
                match self.register(&jid, token, Some(device.clone()), None, None).await {
                    Ok((n, s)) => vec![("jid", req.to.clone()), ("node", n), ("secret", s)],
                    Err(e) => return e.reply(req),
                }
            }
            _ => {
                let token = f.get("token").filter(|t| !t.is_empty());
                let device_id = f.get("device-id").filter(|d| !d.is_empty());
                if token.is_none() && device_id.is_none() {
                    return req.error(
                        "modify",
                        "bad-request",
                        Some("field 'token' or 'device-id' is required"),
                    );
                }
                match self
                    .unregister(&jid, token.map(String::as_str), device_id.map(String::as_str))
                    .await
                {
                    Ok(n) => vec![("removed", n.to_string())],
                    Err(e) => return e.reply(req),
                }
            }
        };
        let mut x = Element::new("x").attr("xmlns", NS_DATA).attr("type", "result");
        for (var, value) in &result {
            x = x.child(field(var, value));
        }
        req.result(Some(head("completed").child(x)))
    }

    /// Bind a device to a (node, secret); reuse the node of the same
    /// device of the same JID. A new node is refused once the JID has
    /// `max_devices_per_jid` of them.
    async fn register(
        &self,
        jid: &str,
        token: &str,
        device_id: Option<String>,
        topic: Option<String>,
        environment: Option<Environment>,
    ) -> Result<(String, String), Fail> {
        let token = DeviceToken::parse(token)
            .map_err(|e| Fail::new("modify", "not-acceptable", format!("field 'token': {e}")))?;
        let user = self
            .user(jid)
            .ok_or_else(|| Fail::new("modify", "bad-request", "unusable JID".into()))?;
        let topic = topic.or_else(|| self.ctx.config().topic.clone());
        let environment = environment.or(self.ctx.config().environment);
        let _registry = self.registry.lock().await;
        let dev_key = format!("dev:{jid}\n{}", device_id.as_deref().unwrap_or(token.as_str()));
        let existing = match self.ctx.state_get(&dev_key).await.map_err(Fail::store)? {
            Some(node) => self
                .ctx
                .state_get(&format!("node:{node}"))
                .await
                .map_err(Fail::store)?
                .and_then(|v| serde_json::from_str::<Registration>(&v).ok())
                .map(|r| (node, r.secret)),
            None => None,
        };
        let mut nodes = self.jid_nodes(jid).await?;
        let (node, secret) = match existing {
            Some(reused) => reused,
            None => {
                // Count only nodes that still exist (an index entry can
                // outlive its node if the store failed half-way).
                nodes = self.live_nodes(jid, nodes).await?;
                let max = self.ctx.config().max_devices_per_jid;
                if nodes.len() >= max {
                    tracing::info!(
                        adapter = self.ctx.name(),
                        jid,
                        max,
                        "XMPP registration refused: device limit reached"
                    );
                    return Err(Fail::new(
                        "cancel",
                        "not-allowed",
                        format!(
                            "{jid} already has {} devices registered, the most allowed (max_devices_per_jid = {max}); unregister one with unregister-push-apns first",
                            nodes.len()
                        ),
                    ));
                }
                (random_hex(12), random_hex(18))
            }
        };
        if node.is_empty() || secret.is_empty() {
            return Err(Fail::new(
                "wait",
                "internal-server-error",
                "no randomness available".into(),
            ));
        }
        match self
            .ctx
            .submit(Event::Register {
                user,
                device: Device {
                    token: token.clone(),
                    topic: topic.clone(),
                    environment,
                },
            })
            .await
        {
            Ok(_) => {}
            Err(EventError::UnknownTopic(t)) => {
                return Err(Fail::new("modify", "not-acceptable", format!("unknown topic {t:?}")))
            }
            Err(e) => return Err(Fail::new("wait", "internal-server-error", e.to_string())),
        }
        let reg = Registration {
            jid: jid.to_owned(),
            token: token.as_str().to_owned(),
            secret: secret.clone(),
            device_id,
            topic,
            environment,
        };
        let json =
            serde_json::to_string(&reg).map_err(|e| Fail::new("wait", "internal-server-error", e.to_string()))?;
        self.ctx
            .state_put(&format!("node:{node}"), &json)
            .await
            .map_err(Fail::store)?;
        self.ctx.state_put(&dev_key, &node).await.map_err(Fail::store)?;
        if !nodes.contains(&node) {
            nodes.push(node.clone());
            self.put_jid_nodes(jid, &nodes).await?;
        }
        tracing::info!(
            adapter = self.ctx.name(),
            jid,
            device = token.short(),
            "XMPP device registered"
        );
        Ok((node, secret))
    }

    /// Remove the JID's devices matching the token or device id; reads
    /// only that JID's nodes (the `jid:` index).
    async fn unregister(&self, jid: &str, token: Option<&str>, device_id: Option<&str>) -> Result<usize, Fail> {
        let _registry = self.registry.lock().await;
        let mut keep = Vec::new();
        let mut removed = 0;
        for node in self.jid_nodes(jid).await? {
            let key = format!("node:{node}");
            let Some(reg) = self.registration(&key).await? else {
                continue; // gone or unreadable: drop it from the index
            };
            let matches = reg.jid == jid
                && (token.is_some_and(|t| t.eq_ignore_ascii_case(&reg.token))
                    || (device_id.is_some() && reg.device_id.as_deref() == device_id));
            if !matches {
                keep.push(node);
                continue;
            }
            self.forget_rows(&key, &reg).await?;
            if let (Some(user), Ok(token)) = (self.user(jid), DeviceToken::parse(&reg.token)) {
                let _ = self.ctx.submit(Event::Unregister { user, token }).await;
            }
            removed += 1;
        }
        self.put_jid_nodes(jid, &keep).await?;
        Ok(removed)
    }

    /// Forget a node the core reported gone: its rows and its index entry.
    async fn forget(&self, node: &str, reg: &Registration) -> Result<(), Fail> {
        let _registry = self.registry.lock().await;
        self.forget_rows(&format!("node:{node}"), reg).await?;
        let mut nodes = self.jid_nodes(&reg.jid).await?;
        nodes.retain(|n| n != node);
        self.put_jid_nodes(&reg.jid, &nodes).await
    }

    /// Delete a node's rows (not its index entry). Call with `registry` held.
    async fn forget_rows(&self, node_key: &str, reg: &Registration) -> Result<(), Fail> {
        self.ctx.state_delete(node_key).await.map_err(Fail::store)?;
        let dev_key = format!("dev:{}\n{}", reg.jid, reg.device_id.as_deref().unwrap_or(&reg.token));
        self.ctx.state_delete(&dev_key).await.map_err(Fail::store)?;
        Ok(())
    }

    /// A node row, `None` when absent or unreadable.
    async fn registration(&self, node_key: &str) -> Result<Option<Registration>, Fail> {
        Ok(self
            .ctx
            .state_get(node_key)
            .await
            .map_err(Fail::store)?
            .and_then(|v| serde_json::from_str::<Registration>(&v).ok()))
    }

    /// The JID's nodes from the index. An unreadable index is rebuilt from
    /// the node rows (a full scan, only then).
    async fn jid_nodes(&self, jid: &str) -> Result<Vec<String>, Fail> {
        let Some(v) = self.ctx.state_get(&format!("jid:{jid}")).await.map_err(Fail::store)? else {
            return Ok(Vec::new());
        };
        if let Ok(nodes) = serde_json::from_str::<Vec<String>>(&v) {
            return Ok(nodes);
        }
        tracing::warn!(adapter = self.ctx.name(), jid, "unreadable device index; rebuilding it");
        let mut nodes = Vec::new();
        for (key, value) in self.ctx.state_list("node:").await.map_err(Fail::store)? {
            if serde_json::from_str::<Registration>(&value).is_ok_and(|r| r.jid == jid) {
                nodes.push(key.trim_start_matches("node:").to_owned());
            }
        }
        Ok(nodes)
    }

    /// Those of `nodes` whose row exists and belongs to `jid`.
    async fn live_nodes(&self, jid: &str, nodes: Vec<String>) -> Result<Vec<String>, Fail> {
        let mut live = Vec::with_capacity(nodes.len());
        for node in nodes {
            if self
                .registration(&format!("node:{node}"))
                .await?
                .is_some_and(|r| r.jid == jid)
            {
                live.push(node);
            }
        }
        Ok(live)
    }

    async fn put_jid_nodes(&self, jid: &str, nodes: &[String]) -> Result<(), Fail> {
        let key = format!("jid:{jid}");
        if nodes.is_empty() {
            self.ctx.state_delete(&key).await.map_err(Fail::store)?;
        } else {
            let json =
                serde_json::to_string(nodes).map_err(|e| Fail::new("wait", "internal-server-error", e.to_string()))?;
            self.ctx.state_put(&key, &json).await.map_err(Fail::store)?;
        }
        Ok(())
    }

    /// Build the per-JID index for node rows stored before it existed
    /// (once: a marker row records that it is done).
    pub async fn index_existing(&self) -> Result<(), String> {
        let _registry = self.registry.lock().await;
        let err = |e: pushbridge_api::StateError| e.to_string();
        if self.ctx.state_get(INDEX_MARKER).await.map_err(err)?.is_some() {
            return Ok(());
        }
        let mut by_jid: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (key, value) in self.ctx.state_list("node:").await.map_err(err)? {
            if let Ok(reg) = serde_json::from_str::<Registration>(&value) {
                by_jid
                    .entry(reg.jid)
                    .or_default()
                    .push(key.trim_start_matches("node:").to_owned());
            }
        }
        let jids = by_jid.len();
        for (jid, mut nodes) in by_jid {
            for n in self.jid_nodes(&jid).await.map_err(|f| f.text)? {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
            self.put_jid_nodes(&jid, &nodes).await.map_err(|f| f.text)?;
        }
        self.ctx.state_put(INDEX_MARKER, "1").await.map_err(err)?;
        if jids > 0 {
            tracing::info!(adapter = self.ctx.name(), jids, "per-JID device index built");
        }
        Ok(())
    }

    /// A XEP-0357 publish.
    pub async fn publish(&self, req: &Req, pubsub: &Element) -> Element {
        let Some(publish) = pubsub.find("publish", None) else {
            return req.error("modify", "bad-request", Some("no publish element"));
        };
        let Some(node) = publish.get("node") else {
            return req.error("modify", "bad-request", Some("publish without a node"));
        };
        let node_key = format!("node:{node}");
        let reg = match self.ctx.state_get(&node_key).await {
            Ok(Some(v)) => match serde_json::from_str::<Registration>(&v) {
                Ok(r) => r,
                Err(_) => return req.error("wait", "internal-server-error", Some("unreadable registration")),
            },
            Ok(None) => return req.error("cancel", "item-not-found", Some("unknown push node/secret")),
            Err(e) => return req.error("wait", "internal-server-error", Some(&e.to_string())),
        };
        let secret = pubsub
            .find("publish-options", None)
            .and_then(|o| o.find("x", Some(NS_DATA)))
            .map(fields)
            .and_then(|f| f.get("secret").cloned())
            .unwrap_or_default();
        if secret.is_empty() || !bool::from(secret.as_bytes().ct_eq(reg.secret.as_bytes())) {
            tracing::info!(
                adapter = self.ctx.name(),
                node,
                "publish with a missing or wrong secret refused"
            );
            return req.error("cancel", "item-not-found", Some("unknown push node/secret"));
        }
        let summary = publish
            .find("item", None)
            .and_then(|i| i.find("notification", Some(NS_PUSH)))
            .and_then(|n| n.find("x", Some(NS_DATA)))
            .map(fields)
            .unwrap_or_default();
        let sender = summary
            .get("last-message-sender")
            .map(|s| bare(s))
            .filter(|s| !s.is_empty());
        let body = summary.get("last-message-body").filter(|b| !b.is_empty()).cloned();
        let badge = summary.get("message-count").and_then(|c| c.trim().parse::<u32>().ok());
        let (Some(user), Ok(token)) = (self.user(&reg.jid), DeviceToken::parse(&reg.token)) else {
            return req.error("cancel", "item-not-found", Some("registration unusable"));
        };
        let message = Message {
            to: user,
            from: sender
                .clone()
                .unwrap_or_else(|| self.ctx.config().anonymous_title.clone()),
            text: body,
            thread: sender,
            device: Some(token.clone()),
            respect_presence: false,
            badge,
        };
        match self.ctx.submit(Event::Message(message)).await {
            Ok(Reply::Queued(n)) if n > 0 => req.result(None),
            Ok(_) | Err(EventError::NoSuchDevice) => {
                // APNS reported the device gone (or it was removed): the
                // node is dead, so the user's server should disable it.
                if let Err(e) = self.forget(node, &reg).await {
                    tracing::warn!(adapter = self.ctx.name(), node, error = %e.text, "could not forget a dead node");
                }
                tracing::info!(
                    adapter = self.ctx.name(),
                    node,
                    device = token.short(),
                    "publish for a removed device: node disabled"
                );
                req.error("cancel", "item-not-found", Some("the device is no longer registered"))
            }
            Err(EventError::UnknownTopic(t)) => {
                req.error("cancel", "item-not-found", Some(&format!("unknown topic {t:?}")))
            }
            Err(e) => req.error("wait", "internal-server-error", Some(&e.to_string())),
        }
    }
}

/// A failure to answer as an iq error.
pub struct Fail {
    typ: &'static str,
    condition: &'static str,
    text: String,
}

impl Fail {
    fn new(typ: &'static str, condition: &'static str, text: String) -> Self {
        Self { typ, condition, text }
    }

    fn store(e: impl std::fmt::Display) -> Self {
        Self::new("wait", "internal-server-error", format!("store: {e}"))
    }

    fn reply(&self, req: &Req) -> Element {
        req.error(self.typ, self.condition, Some(&self.text))
    }
}

fn disco_info(query: &Element) -> Element {
    let mut q = Element::new("query").attr("xmlns", NS_DISCO_INFO);
    if let Some(node) = query.get("node") {
        q = q.attr("node", node);
    }
    q.child(
        Element::new("identity")
            .attr("category", "pubsub")
            .attr("type", "push")
            .attr("name", "pushbridge"),
    )
    .child(Element::new("feature").attr("var", NS_PUSH))
    .child(Element::new("feature").attr("var", NS_COMMANDS))
    .child(Element::new("feature").attr("var", NS_DISCO_INFO))
    .child(Element::new("feature").attr("var", NS_DISCO_ITEMS))
}

fn disco_items(query: &Element, domain: &str) -> Element {
    let mut q = Element::new("query").attr("xmlns", NS_DISCO_ITEMS);
    if let Some(node) = query.get("node") {
        q = q.attr("node", node);
        if node == NS_COMMANDS {
            for (n, name) in COMMANDS {
                q = q.child(
                    Element::new("item")
                        .attr("jid", domain)
                        .attr("node", n)
                        .attr("name", name),
                );
            }
        }
    }
    q
}

fn form_to_fill(node: &str) -> Element {
    let mut x = Element::new("x").attr("xmlns", NS_DATA).attr("type", "form");
    let text = |var: &str, label: &str, required: bool| {
        let mut f = Element::new("field")
            .attr("var", var)
            .attr("type", "text-single")
            .attr("label", label);
        if required {
            f = f.child(Element::new("required"));
        }
        f
    };
    match node {
        "register-push-apns" => {
            x = x
                .child(text("token", "APNS device token (hex)", true))
                .child(text("device-id", "Device id", false))
        }
        "v1-register-push" => {
            x = x
                .child(text("type", "Push type (apns)", true))
                .child(text("node", "Device id", true))
                .child(text("token", "APNS device token (hex)", true))
        }
        _ => {
            x = x
                .child(text("token", "APNS device token (hex)", false))
                .child(text("device-id", "Device id", false))
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushbridge_api::context::{MemoryState, StateFuture};
    use pushbridge_api::{Envelope, StateStore};
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// How the stand-in core answers messages (publishes).
    #[derive(Clone, Copy)]
    #[repr(u8)]
    enum Core {
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
    struct CountingState {
        inner: MemoryState,
        lists: AtomicUsize,
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

    struct Fixture {
        svc: Arc<Service>,
        events: Arc<Mutex<Vec<Event>>>,
        mode: Arc<AtomicU8>,
        state: Arc<CountingState>,
        /// What `Service::handle` sends to the connection's writer.
        out: mpsc::Receiver<Element>,
    }

    impl Fixture {
        fn core(&self, mode: Core) {
            self.mode.store(mode as u8, Ordering::Relaxed);
        }
    }

    fn fixture() -> Fixture {
        fixture_with(serde_json::json!({}))
    }

    /// A service with `extra` merged into its config.
    fn fixture_with(extra: serde_json::Value) -> Fixture {
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
            svc: Arc::new(Service::new(ctx, out)),
            events,
            mode,
            state,
            out: out_rx,
        }
    }

    fn req() -> Req {
        Req {
            id: "q1".into(),
            from: "Alice@Localhost/phone".into(),
            to: "push.localhost".into(),
        }
    }

    fn command(node: &str, fields: &[(&str, &str)]) -> Element {
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

    fn result_fields(reply: &Element) -> HashMap<String, String> {
        assert_eq!(reply.get("type"), Some("result"), "{reply:?}");
        let cmd = reply.find("command", Some(NS_COMMANDS)).unwrap();
        assert_eq!(cmd.get("status"), Some("completed"));
        fields(cmd.find("x", Some(NS_DATA)).unwrap())
    }

    fn condition(reply: &Element) -> (String, String, String) {
        assert_eq!(reply.get("type"), Some("error"), "{reply:?}");
        let e = reply.find("error", None).unwrap();
        let cond = e.elements().next().unwrap().local().to_owned();
        let text = e.find("text", None).map(|t| t.text_content()).unwrap_or_default();
        (e.get("type").unwrap().to_owned(), cond, text)
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn register_reuse_and_unregister() {
        let f = fixture();
        let r = f
            .svc
            .command(
                &req(),
                &command("register-push-apns", &[("token", TOKEN), ("device-id", "d1")]),
            )
            .await;
        let got = result_fields(&r);
        let (node, secret) = (got["node"].clone(), got["secret"].clone());
        assert_eq!(node.len(), 24);
        assert_eq!(secret.len(), 36);
        assert_eq!(r.get("to"), Some("Alice@Localhost/phone"));
        assert_eq!(r.get("from"), Some("push.localhost"));
        match &f.events.lock().unwrap()[0] {
            Event::Register { user, device } => {
                assert_eq!(user.as_str(), "xmpp:alice@localhost");
                assert_eq!(device.token.as_str(), TOKEN);
            }
            other => panic!("{other:?}"),
        }
        // The same device again: same node and secret.
        let again = f
            .svc
            .command(
                &req(),
                &command("register-push-apns", &[("token", TOKEN), ("device-id", "d1")]),
            )
            .await;
        assert_eq!(result_fields(&again)["node"], node);
        assert_eq!(result_fields(&again)["secret"], secret);
        // Unregister by device id.
        let un = f
            .svc
            .command(&req(), &command("unregister-push-apns", &[("device-id", "d1")]))
            .await;
        assert_eq!(result_fields(&un)["removed"], "1");
        assert!(matches!(
            f.events.lock().unwrap().last(),
            Some(Event::Unregister { .. })
        ));
        assert!(f.svc.ctx.state_get(&format!("node:{node}")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_forms_are_explained() {
        let f = fixture();
        let r = f
            .svc
            .command(&req(), &command("register-push-apns", &[("token", "xyz")]))
            .await;
        let (typ, cond, text) = condition(&r);
        assert_eq!((typ.as_str(), cond.as_str()), ("modify", "not-acceptable"));
        assert!(text.contains("token"), "{text}");
        let r = f.svc.command(&req(), &command("register-push-apns", &[])).await;
        assert_eq!(condition(&r).1, "bad-request");
        let r = f
            .svc
            .command(
                &req(),
                &command("v1-register-push", &[("type", "fcm"), ("node", "n"), ("token", TOKEN)]),
            )
            .await;
        assert_eq!(condition(&r).1, "not-acceptable");
        let r = f
            .svc
            .command(
                &req(),
                &command("v1-register-push", &[("type", "apns"), ("token", TOKEN)]),
            )
            .await;
        assert!(condition(&r).2.contains("'node'"));
        let r = f.svc.command(&req(), &command("unregister-push-apns", &[])).await;
        assert_eq!(condition(&r).1, "bad-request");
        let r = f.svc.command(&req(), &command("no-such-command", &[])).await;
        assert_eq!(condition(&r).1, "item-not-found");
        // A bare execute gets the form to fill.
        let bare_exec = Element::new("command")
            .attr("xmlns", NS_COMMANDS)
            .attr("node", "register-push-apns")
            .attr("action", "execute");
        let r = f.svc.command(&req(), &bare_exec).await;
        let cmd = r.find("command", Some(NS_COMMANDS)).unwrap();
        assert_eq!(cmd.get("status"), Some("executing"));
        let form = cmd.find("x", Some(NS_DATA)).unwrap();
        assert_eq!(form.get("type"), Some("form"));
        assert!(form.elements().any(|f| f.get("var") == Some("token")));
        assert!(f.events.lock().unwrap().is_empty(), "nothing reached the core");
    }

    #[tokio::test]
    async fn v1_register_push_answers_jid_node_secret() {
        let f = fixture();
        let r = f
            .svc
            .command(
                &req(),
                &command(
                    "v1-register-push",
                    &[("type", "apns"), ("node", "dev-7"), ("token", TOKEN)],
                ),
            )
            .await;
        let got = result_fields(&r);
        assert_eq!(got["jid"], "push.localhost");
        assert!(!got["node"].is_empty() && !got["secret"].is_empty());
    }

    fn publish(node: &str, secret: Option<&str>, summary: &[(&str, &str)]) -> Element {
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

    #[tokio::test]
    async fn publishes_checked_and_turned_into_messages() {
        let f = fixture();
        let r = f
            .svc
            .command(&req(), &command("register-push-apns", &[("token", TOKEN)]))
            .await;
        let got = result_fields(&r);
        let (node, secret) = (got["node"].clone(), got["secret"].clone());
        let server = Req {
            id: "p1".into(),
            from: "localhost".into(),
            to: "push.localhost".into(),
        };
        let sum = [
            ("message-count", "3"),
            ("last-message-sender", "bob@localhost/pc"),
            ("last-message-body", "hi <there> & you"),
        ];
        // Unknown node, wrong secret, no secret: item-not-found.
        for p in [
            publish("nope", Some(&secret), &sum),
            publish(&node, Some("wrong"), &sum),
            publish(&node, None, &sum),
        ] {
            let r = f.svc.publish(&server, &p).await;
            assert_eq!(condition(&r).0, "cancel");
            assert_eq!(condition(&r).1, "item-not-found");
        }
        let before = f.events.lock().unwrap().len();
        assert_eq!(before, 1, "only the registration reached the core");
        // A good one.
        let r = f.svc.publish(&server, &publish(&node, Some(&secret), &sum)).await;
        assert_eq!(r.get("type"), Some("result"));
        match f.events.lock().unwrap().last().unwrap() {
            Event::Message(m) => {
                assert_eq!(m.to.as_str(), "xmpp:alice@localhost");
                assert_eq!(m.from, "bob@localhost");
                assert_eq!(m.text.as_deref(), Some("hi <there> & you"));
                assert_eq!(m.badge, Some(3));
                assert_eq!(m.device.as_ref().map(|d| d.as_str()), Some(TOKEN));
                assert!(!m.respect_presence);
            }
            other => panic!("{other:?}"),
        }
        // A summary without body or sender.
        let r = f.svc.publish(&server, &publish(&node, Some(&secret), &[])).await;
        assert_eq!(r.get("type"), Some("result"));
        match f.events.lock().unwrap().last().unwrap() {
            Event::Message(m) => {
                assert_eq!(m.text, None);
                assert_eq!(m.from, "New message");
                assert_eq!(m.badge, None);
            }
            other => panic!("{other:?}"),
        }
        // The core removed the device (APNS said 410): item-not-found, and
        // the node is forgotten.
        f.core(Core::DeviceGone);
        let r = f.svc.publish(&server, &publish(&node, Some(&secret), &sum)).await;
        assert_eq!(condition(&r).1, "item-not-found");
        assert!(f.svc.ctx.state_get(&format!("node:{node}")).await.unwrap().is_none());
        assert_eq!(
            index(&f, "alice@localhost").await,
            Vec::<String>::new(),
            "index entry gone too"
        );
    }

    fn req_from(from: &str) -> Req {
        Req {
            id: "q1".into(),
            from: from.into(),
            to: "push.localhost".into(),
        }
    }

    /// Register `device` for `from`: (node, secret) or the error's
    /// (type, condition, text).
    async fn register_as(f: &Fixture, from: &str, device: &str) -> Result<(String, String), (String, String, String)> {
        let r = f
            .svc
            .command(
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

    async fn index(f: &Fixture, jid: &str) -> Vec<String> {
        match f.svc.ctx.state_get(&format!("jid:{jid}")).await.unwrap() {
            Some(v) => serde_json::from_str(&v).unwrap(),
            None => Vec::new(),
        }
    }

    fn registrations(f: &Fixture) -> usize {
        f.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::Register { .. }))
            .count()
    }

    #[tokio::test]
    async fn device_cap_refuses_new_nodes_but_reuses_known_devices() {
        let f = fixture_with(serde_json::json!({ "max_devices_per_jid": 2 }));
        let alice = "alice@localhost/phone";
        let (n1, s1) = register_as(&f, alice, "d1").await.unwrap();
        register_as(&f, "Alice@localhost/tablet", "d2").await.unwrap();
        // A third device of the same bare JID is refused, clearly…
        let (typ, cond, text) = register_as(&f, alice, "d3").await.unwrap_err();
        assert_eq!((typ.as_str(), cond.as_str()), ("cancel", "not-allowed"));
        assert!(text.contains("max_devices_per_jid = 2"), "{text}");
        assert_eq!(registrations(&f), 2, "the refused one never reached the core");
        assert_eq!(index(&f, "alice@localhost").await.len(), 2);
        // …but a known device registering again gets its node back.
        assert_eq!(register_as(&f, alice, "d1").await.unwrap(), (n1.clone(), s1));
        // Other JIDs have their own allowance.
        register_as(&f, "bob@localhost/pc", "d3").await.unwrap();
        // Unregistering one makes room.
        let un = f
            .svc
            .command(
                &req_from(alice),
                &command("unregister-push-apns", &[("device-id", "d1")]),
            )
            .await;
        assert_eq!(result_fields(&un)["removed"], "1");
        let (n3, _) = register_as(&f, alice, "d3").await.unwrap();
        assert_ne!(n3, n1);
        assert_eq!(register_as(&f, alice, "d4").await.unwrap_err().1, "not-allowed");
        // An index entry whose node row is gone does not count.
        f.svc.ctx.state_delete(&format!("node:{n3}")).await.unwrap();
        register_as(&f, alice, "d4").await.unwrap();
        assert!(!index(&f, "alice@localhost").await.contains(&n3));
    }

    #[tokio::test]
    async fn unregister_reads_only_the_jid_index() {
        let f = fixture();
        let (a1, _) = register_as(&f, "alice@localhost/phone", "d1").await.unwrap();
        let (a2, _) = register_as(&f, "alice@localhost/phone", "d2").await.unwrap();
        let (b1, _) = register_as(&f, "bob@localhost/pc", "d1").await.unwrap();
        assert_eq!(index(&f, "alice@localhost").await, [a1.clone(), a2.clone()]);
        assert_eq!(index(&f, "bob@localhost").await, std::slice::from_ref(&b1));
        // Many other JIDs' nodes: unregistering alice must not read them.
        for i in 0..50 {
            register_as(&f, &format!("user{i}@localhost"), "d").await.unwrap();
        }
        let lists = f.state.lists.load(Ordering::Relaxed);
        // By token: both of alice's devices (same token), not bob's.
        let un = f
            .svc
            .command(&req(), &command("unregister-push-apns", &[("token", TOKEN)]))
            .await;
        assert_eq!(result_fields(&un)["removed"], "2");
        assert_eq!(f.state.lists.load(Ordering::Relaxed), lists, "no scan of all nodes");
        assert!(index(&f, "alice@localhost").await.is_empty());
        assert!(f.svc.ctx.state_get("jid:alice@localhost").await.unwrap().is_none());
        for n in [&a1, &a2] {
            assert!(f.svc.ctx.state_get(&format!("node:{n}")).await.unwrap().is_none());
        }
        assert!(f.svc.ctx.state_get(&format!("node:{b1}")).await.unwrap().is_some());
        assert_eq!(index(&f, "bob@localhost").await, [b1]);
        let unregs = f
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::Unregister { .. }))
            .count();
        assert_eq!(unregs, 2);
    }

    #[tokio::test]
    async fn index_is_built_once_for_older_registrations() {
        let f = fixture();
        // Rows as written before the index existed.
        for (node, dev) in [("n1", "d1"), ("n2", "d2")] {
            let reg = Registration {
                jid: "alice@localhost".into(),
                token: TOKEN.into(),
                secret: "s".into(),
                device_id: Some(dev.into()),
                topic: None,
                environment: None,
            };
            let json = serde_json::to_string(&reg).unwrap();
            f.svc.ctx.state_put(&format!("node:{node}"), &json).await.unwrap();
            f.svc
                .ctx
                .state_put(&format!("dev:alice@localhost\n{dev}"), node)
                .await
                .unwrap();
        }
        f.svc.index_existing().await.unwrap();
        assert_eq!(index(&f, "alice@localhost").await, ["n1", "n2"]);
        let lists = f.state.lists.load(Ordering::Relaxed);
        f.svc.index_existing().await.unwrap();
        assert_eq!(f.state.lists.load(Ordering::Relaxed), lists, "only once");
        let un = f
            .svc
            .command(&req(), &command("unregister-push-apns", &[("device-id", "d2")]))
            .await;
        assert_eq!(result_fields(&un)["removed"], "1");
        assert_eq!(index(&f, "alice@localhost").await, ["n1"]);
    }

    fn server_req() -> Req {
        Req {
            id: "p1".into(),
            from: "localhost".into(),
            to: "push.localhost".into(),
        }
    }

    #[tokio::test]
    async fn publish_the_core_cannot_take_now_answers_wait_and_keeps_the_node() {
        let f = fixture();
        let (node, secret) = register_as(&f, "alice@localhost/phone", "d1").await.unwrap();
        f.core(Core::Unavailable);
        let r = f
            .svc
            .publish(&server_req(), &publish(&node, Some(&secret), &[("message-count", "1")]))
            .await;
        let (typ, cond, text) = condition(&r);
        assert_eq!((typ.as_str(), cond.as_str()), ("wait", "internal-server-error"));
        assert!(text.contains("store is busy"), "{text}");
        assert!(matches!(f.events.lock().unwrap().last(), Some(Event::Message(_))));
        // The registration stays, so the next publish goes through.
        assert!(f.svc.ctx.state_get(&format!("node:{node}")).await.unwrap().is_some());
        assert_eq!(index(&f, "alice@localhost").await, std::slice::from_ref(&node));
        f.core(Core::Accepts);
        let r = f.svc.publish(&server_req(), &publish(&node, Some(&secret), &[])).await;
        assert_eq!(r.get("type"), Some("result"), "{r:?}");
    }

    /// A stanza as the component stream reader gives it.
    async fn read_stanza(xml: &str) -> Element {
        let doc = format!(
            "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>{xml}"
        );
        let mut r = crate::xml::StreamReader::new(doc.as_bytes(), 65536);
        r.header().await.unwrap();
        r.next().await.unwrap()
    }

    /// Namespaces are matched as resolved, not as spelled: a publish using
    /// prefixes (legal XML, unusual from servers) works like the plain one,
    /// and a `pubsub` element in another namespace is not taken for one.
    #[tokio::test]
    async fn publish_with_prefixed_namespaces_is_understood() {
        let mut f = fixture();
        let (node, secret) = register_as(&f, "alice@localhost/phone", "d1").await.unwrap();
        let stanza = read_stanza(&format!(
            "<iq type='set' id='px' from='localhost' to='push.localhost'>\
             <ps:pubsub xmlns:ps='{NS_PUBSUB}'><ps:publish node='{node}'><ps:item>\
             <n:notification xmlns:n='{NS_PUSH}'><d:x xmlns:d='{NS_DATA}' type='submit'>\
             <d:field var='FORM_TYPE'><d:value>urn:xmpp:push:summary</d:value></d:field>\
             <d:field var='message-count'><d:value>4</d:value></d:field>\
             <d:field var='last-message-sender'><d:value>bob@localhost</d:value></d:field>\
             </d:x></n:notification></ps:item></ps:publish>\
             <ps:publish-options><x xmlns='{NS_DATA}' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='secret'><value>{secret}</value></field></x></ps:publish-options>\
             </ps:pubsub></iq>"
        ))
        .await;
        let inflight = Arc::new(Semaphore::new(8));
        f.svc.handle(stanza, &inflight);
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.get("id"), r.get("type")), (Some("px"), Some("result")), "{r:?}");
        match f.events.lock().unwrap().last().unwrap() {
            Event::Message(m) => {
                assert_eq!(m.from, "bob@localhost");
                assert_eq!(m.badge, Some(4));
            }
            other => panic!("{other:?}"),
        }
        // The same shape in a foreign namespace is not a pubsub publish.
        let stanza = read_stanza(&format!(
            "<iq type='set' id='py' from='localhost' to='push.localhost'>\
             <p:pubsub xmlns:p='urn:example:not-pubsub'><p:publish node='{node}'/></p:pubsub></iq>"
        ))
        .await;
        f.svc.handle(stanza, &inflight);
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.get("id"), r.get("type")), (Some("py"), Some("error")), "{r:?}");
    }

    fn iq(typ: &str, id: &str, payload: Element) -> Element {
        Element::new("iq")
            .attr("type", typ)
            .attr("id", id)
            .attr("from", "localhost")
            .attr("to", "push.localhost")
            .child(payload)
    }

    fn disco_iq(id: &str) -> Element {
        iq("get", id, Element::new("query").attr("xmlns", NS_DISCO_INFO))
    }

    #[tokio::test]
    async fn publishes_beyond_max_inflight_answer_resource_constraint() {
        let mut f = fixture();
        let none_free = Arc::new(Semaphore::new(0));
        f.svc.handle(iq("set", "p9", publish("n", Some("s"), &[])), &none_free);
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.get("id"), Some("p9"));
        let (typ, cond, _) = condition(&r);
        assert_eq!((typ.as_str(), cond.as_str()), ("wait", "resource-constraint"));
    }

    #[tokio::test]
    async fn a_publish_the_core_never_answers_does_not_stall_other_stanzas() {
        let mut f = fixture();
        let (node, secret) = register_as(&f, "alice@localhost/phone", "d1").await.unwrap();
        f.core(Core::Silent);
        let inflight = Arc::new(Semaphore::new(8));
        f.svc
            .handle(iq("set", "p1", publish(&node, Some(&secret), &[])), &inflight);
        // The publish reached the core, which sits on it.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !matches!(f.events.lock().unwrap().last(), Some(Event::Message(_))) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the publish reaches the core");
        // Still, disco is answered (first: the publish has no answer).
        f.svc.handle(disco_iq("d1"), &inflight);
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .expect("disco answered while a publish hangs")
            .unwrap();
        assert_eq!((r.get("id"), r.get("type")), (Some("d1"), Some("result")), "{r:?}");
        assert_eq!(inflight.available_permits(), 7, "the publish still holds its slot");
        // And so is a registration command.
        f.svc.handle(
            iq(
                "set",
                "c1",
                command("register-push-apns", &[("token", TOKEN), ("device-id", "d2")]),
            ),
            &inflight,
        );
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .expect("command answered while a publish hangs")
            .unwrap();
        assert_eq!((r.get("id"), r.get("type")), (Some("c1"), Some("result")), "{r:?}");
    }

    #[test]
    fn disco_says_push_and_commands() {
        let info = disco_info(&Element::new("query").attr("xmlns", NS_DISCO_INFO));
        let id = info.find("identity", None).unwrap();
        assert_eq!((id.get("category"), id.get("type")), (Some("pubsub"), Some("push")));
        let features: Vec<&str> = info.elements().filter_map(|e| e.get("var")).collect();
        assert!(features.contains(&NS_PUSH) && features.contains(&NS_COMMANDS));
        let items = disco_items(
            &Element::new("query")
                .attr("xmlns", NS_DISCO_ITEMS)
                .attr("node", NS_COMMANDS),
            "push.localhost",
        );
        let nodes: Vec<&str> = items.elements().filter_map(|e| e.get("node")).collect();
        assert_eq!(
            nodes,
            ["register-push-apns", "unregister-push-apns", "v1-register-push"]
        );
    }
}
