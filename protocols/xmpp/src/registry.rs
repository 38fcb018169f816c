//! The device registry: which device (APNS token, app, environment) is
//! behind each XEP-0357 push node, kept in the adapter's key-value state
//! (`Context::state_*`).
//!
//! Rows:
//! - `node:<node>` → JSON [`Registration`];
//! - `dev:<bare jid>\n<device id or token>` → node, so a device registering
//!   again gets its node (and secret) back;
//! - `jid:<bare jid>` → JSON list of that JID's nodes: the per-JID index
//!   that bounds registrations (`max_devices_per_jid`) and serves
//!   unregistration without a scan of every node;
//! - `meta:jid-index` → present once the index covers every node row.
//!
//! Registering and unregistering also tell the core (`Event::Register`,
//! `Event::Unregister`).

use pushbridge_api::{Context, Device, DeviceToken, Environment, Event, EventError, StateError, TokenError, UserId};
use serde::{Deserialize, Serialize};

use crate::stanza::Req;
use crate::xml::Element;
use crate::XmppConfig;

/// State key marking that the per-JID index covers every node row.
const INDEX_MARKER: &str = "meta:jid-index";

/// A device behind a node, as kept in the adapter's state (`node:<node>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    /// The owner's bare JID, lower-cased.
    pub jid: String,
    /// The APNS device token, hex.
    pub token: String,
    /// The secret the user's server must present with each publish.
    pub secret: String,
    /// The client's own name for the device, when it gave one.
    pub device_id: Option<String>,
    /// The app (APNS topic); `None`: the adapter's default.
    pub topic: Option<String>,
    /// `None`: the app's environment.
    pub environment: Option<Environment>,
}

/// A registered push node and its secret, as handed to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushNode {
    /// The node name (24 hex digits).
    pub node: String,
    /// The publish secret (36 hex digits).
    pub secret: String,
}

/// Why a registry operation failed; [`RegistryError::reply`] answers it as
/// an iq error.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The device token is not one.
    #[error("field 'token': {0}")]
    BadToken(TokenError),
    /// The JID cannot be a user id.
    #[error("unusable JID")]
    BadJid,
    /// A new node would pass `max_devices_per_jid`.
    #[error(
        "{jid} already has {count} devices registered, the most allowed (max_devices_per_jid = {max}); unregister one with unregister-push-apns first"
    )]
    TooManyDevices { jid: String, count: usize, max: usize },
    /// The OS RNG failed: no node or secret can be made.
    #[error("no randomness available")]
    NoRandomness,
    /// The core refused the registration (e.g. an unknown topic).
    #[error("{0}")]
    Core(#[from] EventError),
    /// A node row that is not a [`Registration`].
    #[error("unreadable registration")]
    Unreadable,
    /// The adapter state store failed.
    #[error("store: {0}")]
    Store(#[from] StateError),
    /// A row could not be serialized.
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
}

impl RegistryError {
    /// The stanza error type and defined condition (RFC 6120 §8.3) this is
    /// answered with.
    pub fn condition(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadToken(_) | Self::Core(EventError::UnknownTopic(_)) => ("modify", "not-acceptable"),
            Self::BadJid => ("modify", "bad-request"),
            Self::TooManyDevices { .. } => ("cancel", "not-allowed"),
            Self::NoRandomness | Self::Core(_) | Self::Unreadable | Self::Store(_) | Self::Encode(_) => {
                ("wait", "internal-server-error")
            }
        }
    }

    /// The iq error answering `req`, with this error as its text.
    pub fn reply(&self, req: &Req) -> Element {
        let (typ, condition) = self.condition();
        req.error(typ, condition, Some(&self.to_string()))
    }
}

/// Random bytes as lower-case hex; empty when the OS RNG fails (zeros
/// must never be handed out as secrets).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        return String::new();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn node_key(node: &str) -> String {
    format!("node:{node}")
}

fn dev_key(jid: &str, device: &str) -> String {
    format!("dev:{jid}\n{device}")
}

fn jid_key(jid: &str) -> String {
    format!("jid:{jid}")
}

/// The registry over one adapter's state.
pub struct Registry {
    ctx: Context<XmppConfig>,
    /// Serializes changes to registrations (node, device and index rows),
    /// so the per-JID cap and index stay exact under concurrent commands.
    lock: tokio::sync::Mutex<()>,
}

impl Registry {
    /// The registry in `ctx`'s state, telling `ctx`'s core of changes.
    pub fn new(ctx: Context<XmppConfig>) -> Self {
        Self {
            ctx,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The user id of a bare JID in this adapter's scope.
    pub fn user(&self, jid: &str) -> Option<UserId> {
        UserId::scoped(self.ctx.name(), jid).ok()
    }

    /// Bind a device to a node and secret; reuse the node of the same
    /// device (device id, else token) of the same JID. A new node is
    /// refused once the JID has `max_devices_per_jid` of them. The core
    /// learns the device before any row is written.
    pub async fn register(
        &self,
        jid: &str,
        token: &str,
        device_id: Option<String>,
        topic: Option<String>,
        environment: Option<Environment>,
    ) -> Result<PushNode, RegistryError> {
        let token = DeviceToken::parse(token).map_err(RegistryError::BadToken)?;
        let user = self.user(jid).ok_or(RegistryError::BadJid)?;
        let topic = topic.or_else(|| self.ctx.config().topic.clone());
        let environment = environment.or(self.ctx.config().environment);
        let _lock = self.lock.lock().await;
        let dev_key = dev_key(jid, device_id.as_deref().unwrap_or(token.as_str()));
        let existing = self.known_node(&dev_key).await?;
        let mut nodes = self.jid_nodes(jid).await?;
        let pushnode = match existing {
            Some(reused) => reused,
            None => self.new_node(jid, &user, &mut nodes).await?,
        };
        if pushnode.node.is_empty() || pushnode.secret.is_empty() {
            return Err(RegistryError::NoRandomness);
        }
        let device = Device {
            token: token.clone(),
            topic: topic.clone(),
            environment,
        };
        self.ctx
            .submit(Event::Register {
                user: user.clone(),
                device,
            })
            .await?;
        let reg = Registration {
            jid: jid.to_owned(),
            token: token.as_str().to_owned(),
            secret: pushnode.secret.clone(),
            device_id,
            topic,
            environment,
        };
        self.write_rows(&pushnode.node, &reg, &dev_key, nodes).await?;
        tracing::info!(
            adapter = self.ctx.name(),
            user = user.as_str(),
            device = token.short(),
            "XMPP device registered"
        );
        Ok(pushnode)
    }

    /// The node and secret of a device already registered (its `dev:` row).
    async fn known_node(&self, dev_key: &str) -> Result<Option<PushNode>, RegistryError> {
        let Some(node) = self.ctx.state_get(dev_key).await? else {
            return Ok(None);
        };
        Ok(self
            .ctx
            .state_get(&node_key(&node))
            .await?
            .and_then(|v| serde_json::from_str::<Registration>(&v).ok())
            .map(|r| PushNode { node, secret: r.secret }))
    }

    /// A fresh node and secret for `jid`, unless it has its most devices.
    /// `nodes` (the JID's index) is narrowed to the nodes that still exist:
    /// an index entry can outlive its node if the store failed half-way.
    async fn new_node(&self, jid: &str, user: &UserId, nodes: &mut Vec<String>) -> Result<PushNode, RegistryError> {
        *nodes = self.live_nodes(jid, std::mem::take(nodes)).await?;
        let max = self.ctx.config().max_devices_per_jid;
        if nodes.len() >= max {
            tracing::info!(
                adapter = self.ctx.name(),
                user = user.as_str(),
                max,
                "XMPP registration refused: device limit reached"
            );
            return Err(RegistryError::TooManyDevices {
                jid: jid.to_owned(),
                count: nodes.len(),
                max,
            });
        }
        Ok(PushNode {
            node: random_hex(12),
            secret: random_hex(18),
        })
    }

    /// Write a registration's node and device rows, and its index entry.
    /// Call with `lock` held.
    async fn write_rows(
        &self,
        node: &str,
        reg: &Registration,
        dev_key: &str,
        mut nodes: Vec<String>,
    ) -> Result<(), RegistryError> {
        let json = serde_json::to_string(reg)?;
        self.ctx.state_put(&node_key(node), &json).await?;
        self.ctx.state_put(dev_key, node).await?;
        if !nodes.iter().any(|n| n == node) {
            nodes.push(node.to_owned());
            self.put_jid_nodes(&reg.jid, &nodes).await?;
        }
        Ok(())
    }

    /// Remove the JID's devices matching the token or device id; reads
    /// only that JID's nodes (the `jid:` index). Returns how many went.
    pub async fn unregister(
        &self,
        jid: &str,
        token: Option<&str>,
        device_id: Option<&str>,
    ) -> Result<usize, RegistryError> {
        let _lock = self.lock.lock().await;
        let mut keep = Vec::new();
        let mut removed = 0;
        for node in self.jid_nodes(jid).await? {
            let key = node_key(&node);
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

    /// The registration behind `node`: `None` when there is none,
    /// [`RegistryError::Unreadable`] when its row cannot be read.
    pub async fn lookup(&self, node: &str) -> Result<Option<Registration>, RegistryError> {
        match self.ctx.state_get(&node_key(node)).await? {
            Some(v) => serde_json::from_str(&v)
                .map(Some)
                .map_err(|_| RegistryError::Unreadable),
            None => Ok(None),
        }
    }

    /// Forget a node the core reported gone: its rows and its index entry.
    pub async fn forget(&self, node: &str, reg: &Registration) -> Result<(), RegistryError> {
        let _lock = self.lock.lock().await;
        self.forget_rows(&node_key(node), reg).await?;
        let mut nodes = self.jid_nodes(&reg.jid).await?;
        nodes.retain(|n| n != node);
        self.put_jid_nodes(&reg.jid, &nodes).await
    }

    /// Delete a node's rows (not its index entry). Call with `lock` held.
    async fn forget_rows(&self, node_key: &str, reg: &Registration) -> Result<(), RegistryError> {
        self.ctx.state_delete(node_key).await?;
        let dev_key = dev_key(&reg.jid, reg.device_id.as_deref().unwrap_or(&reg.token));
        self.ctx.state_delete(&dev_key).await?;
        Ok(())
    }

    /// A node row, `None` when absent or unreadable.
    async fn registration(&self, node_key: &str) -> Result<Option<Registration>, RegistryError> {
        Ok(self
            .ctx
            .state_get(node_key)
            .await?
            .and_then(|v| serde_json::from_str::<Registration>(&v).ok()))
    }

    /// The JID's nodes from the index. An unreadable index is rebuilt from
    /// the node rows (a full scan, only then).
    async fn jid_nodes(&self, jid: &str) -> Result<Vec<String>, RegistryError> {
        let Some(v) = self.ctx.state_get(&jid_key(jid)).await? else {
            return Ok(Vec::new());
        };
        if let Ok(nodes) = serde_json::from_str::<Vec<String>>(&v) {
            return Ok(nodes);
        }
        let user = format!("{}:{jid}", self.ctx.name());
        tracing::warn!(
            adapter = self.ctx.name(),
            user = user.as_str(),
            "unreadable device index; rebuilding it"
        );
        let mut nodes = Vec::new();
        for (key, value) in self.ctx.state_list("node:").await? {
            if serde_json::from_str::<Registration>(&value).is_ok_and(|r| r.jid == jid) {
                nodes.push(key.trim_start_matches("node:").to_owned());
            }
        }
        Ok(nodes)
    }

    /// Those of `nodes` whose row exists and belongs to `jid`.
    async fn live_nodes(&self, jid: &str, nodes: Vec<String>) -> Result<Vec<String>, RegistryError> {
        let mut live = Vec::with_capacity(nodes.len());
        for node in nodes {
            if self.registration(&node_key(&node)).await?.is_some_and(|r| r.jid == jid) {
                live.push(node);
            }
        }
        Ok(live)
    }

    /// Write the JID's index (deleted when empty).
    async fn put_jid_nodes(&self, jid: &str, nodes: &[String]) -> Result<(), RegistryError> {
        let key = jid_key(jid);
        if nodes.is_empty() {
            self.ctx.state_delete(&key).await?;
        } else {
            let json = serde_json::to_string(nodes)?;
            self.ctx.state_put(&key, &json).await?;
        }
        Ok(())
    }

    /// Build the per-JID index for node rows stored before it existed
    /// (once: a marker row records that it is done).
    pub async fn index_existing(&self) -> Result<(), RegistryError> {
        let _lock = self.lock.lock().await;
        if self.ctx.state_get(INDEX_MARKER).await?.is_some() {
            return Ok(());
        }
        let mut by_jid: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (key, value) in self.ctx.state_list("node:").await? {
            if let Ok(reg) = serde_json::from_str::<Registration>(&value) {
                by_jid
                    .entry(reg.jid)
                    .or_default()
                    .push(key.trim_start_matches("node:").to_owned());
            }
        }
        let jids = by_jid.len();
        for (jid, mut nodes) in by_jid {
            for n in self.jid_nodes(&jid).await? {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
            self.put_jid_nodes(&jid, &nodes).await?;
        }
        self.ctx.state_put(INDEX_MARKER, "1").await?;
        if jids > 0 {
            tracing::info!(adapter = self.ctx.name(), jids, "per-JID device index built");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use std::sync::atomic::Ordering;

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
            .execute(
                &req_from(alice),
                &command("unregister-push-apns", &[("device-id", "d1")]),
            )
            .await;
        assert_eq!(result_fields(&un)["removed"], "1");
        let (n3, _) = register_as(&f, alice, "d3").await.unwrap();
        assert_ne!(n3, n1);
        assert_eq!(register_as(&f, alice, "d4").await.unwrap_err().1, "not-allowed");
        // An index entry whose node row is gone does not count.
        f.ctx.state_delete(&format!("node:{n3}")).await.unwrap();
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
            .execute(&req(), &command("unregister-push-apns", &[("token", TOKEN)]))
            .await;
        assert_eq!(result_fields(&un)["removed"], "2");
        assert_eq!(f.state.lists.load(Ordering::Relaxed), lists, "no scan of all nodes");
        assert!(index(&f, "alice@localhost").await.is_empty());
        assert!(f.ctx.state_get("jid:alice@localhost").await.unwrap().is_none());
        for n in [&a1, &a2] {
            assert!(f.ctx.state_get(&format!("node:{n}")).await.unwrap().is_none());
        }
        assert!(f.ctx.state_get(&format!("node:{b1}")).await.unwrap().is_some());
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
            f.ctx.state_put(&format!("node:{node}"), &json).await.unwrap();
            f.ctx
                .state_put(&format!("dev:alice@localhost\n{dev}"), node)
                .await
                .unwrap();
        }
        f.svc.registry().index_existing().await.unwrap();
        assert_eq!(index(&f, "alice@localhost").await, ["n1", "n2"]);
        let lists = f.state.lists.load(Ordering::Relaxed);
        f.svc.registry().index_existing().await.unwrap();
        assert_eq!(f.state.lists.load(Ordering::Relaxed), lists, "only once");
        let un = f
            .execute(&req(), &command("unregister-push-apns", &[("device-id", "d2")]))
            .await;
        assert_eq!(result_fields(&un)["removed"], "1");
        assert_eq!(index(&f, "alice@localhost").await, ["n1"]);
    }
}
