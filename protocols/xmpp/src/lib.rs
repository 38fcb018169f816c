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
//! Layout, from the socket up:
//! - [`xml`]: the stream read stanza by stanza into element trees bounded
//!   in size and depth (quick-xml, namespaces resolved); [`xml::tree`]:
//!   the trees, walked without recursion, and written escaped;
//! - [`component`]: connect and the XEP-0114 handshake, stream errors;
//! - [`session`]: the connected loop (reader task, replies, keepalive,
//!   shutdown);
//! - [`service`]: routes each iq to [`disco`] (XEP-0030), [`commands`]
//!   (XEP-0050 registration forms) or [`publish`] (XEP-0357 publishes);
//! - [`alert`]: what a publish's summary shows (1:1, group chat,
//!   anonymous);
//! - [`registry`]: the node → device registry over the adapter's key-value
//!   state, with its per-JID index and `max_devices_per_jid`;
//! - [`stanza`]: namespaces, iq replies and errors, data forms;
//! - [`redact`]: what the stanza traces show (markup, never text);
//! - this file: the config and the [`Adapter`] implementation.
#![forbid(unsafe_code)]

pub mod alert;
pub mod commands;
pub mod component;
pub mod disco;
pub mod publish;
pub mod redact;
pub mod registry;
pub mod service;
pub mod session;
pub mod stanza;
pub mod xml;

use pushbridge_api::{Adapter, AdapterError, ConfigError, Context, Environment};
use serde::Deserialize;

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
    /// Deepest element nesting in a stanza (the stanza itself is 1); a
    /// deeper one ends the stream with a policy-violation error (default 64).
    #[serde(default = "default_max_depth")]
    pub max_stanza_depth: usize,
    /// App (APNS topic) of devices registered here; default: the first app.
    pub topic: Option<String>,
    /// Environment of devices registered here when the client does not say
    /// (`sandbox` field in the command); default: the app's.
    pub environment: Option<Environment>,
    /// Alert title when the server does not say who sent the message;
    /// `None` (the default): the domain of the account the push is for
    /// (`example.org`), so the title differs from the generic body.
    #[serde(default)]
    pub anonymous_title: Option<String>,
    /// Domains of group chat (XEP-0045 MUC) services: a
    /// `last-message-sender` there is `room@domain/nick`, shown as title
    /// `nick` and subtitle `room@domain`. An entry ending in `.` matches
    /// every domain that starts with it (default: `conference.`, `muc.`,
    /// `rooms.`, `groupchat.`).
    #[serde(default = "default_muc_domains")]
    pub muc_domains: Vec<String>,
    /// Publishes being handed to the core at once; more are answered
    /// `wait`/`resource-constraint` so the server retries later.
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
    /// Devices (push nodes) one bare JID may register; one more is refused
    /// with `cancel`/`not-allowed` until one is unregistered (default 10).
    #[serde(default = "default_max_devices")]
    pub max_devices_per_jid: usize,
}

impl XmppConfig {
    /// The stream reader's limits: `max_stanza_size`, `max_stanza_depth`.
    pub fn limits(&self) -> xml::Limits {
        xml::Limits {
            max_stanza: self.max_stanza_size,
            max_depth: self.max_stanza_depth,
        }
    }
}

impl std::fmt::Debug for XmppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmppConfig")
            .field("server", &self.server)
            .field("domain", &self.domain)
            .field("secret", &"<redacted>")
            .field("name", &self.name)
            .field("max_stanza_size", &self.max_stanza_size)
            .field("max_stanza_depth", &self.max_stanza_depth)
            .field("topic", &self.topic)
            .field("environment", &self.environment)
            .field("anonymous_title", &self.anonymous_title)
            .field("muc_domains", &self.muc_domains)
            .field("max_inflight", &self.max_inflight)
            .field("max_devices_per_jid", &self.max_devices_per_jid)
            .finish()
    }
}

/// The smallest `max_stanza_depth` accepted: the deepest stanza the
/// component reads (a XEP-0357 publish, iq → … → value) is 8 levels deep,
/// and servers may wrap extensions around it.
const MIN_STANZA_DEPTH: usize = 16;

fn default_name() -> String {
    "xmpp".to_owned()
}
fn default_max_stanza() -> usize {
    65_536
}
fn default_max_depth() -> usize {
    64
}
fn default_muc_domains() -> Vec<String> {
    ["conference.", "muc.", "rooms.", "groupchat."]
        .map(String::from)
        .to_vec()
}
fn default_inflight() -> usize {
    1024
}
fn default_max_devices() -> usize {
    10
}

/// The XMPP adapter.
pub struct XmppAdapter;

impl Adapter for XmppAdapter {
    type Config = XmppConfig;
    const KIND: &'static str = "xmpp";
    const OUTBOUND: bool = true;

    fn instance_name(config: &XmppConfig) -> String {
        config.name.clone()
    }

    /// Always: the server accepts one component connection per domain
    /// (Prosody refuses a second one), and the push nodes are the domain's.
    fn singleton(_c: &XmppConfig) -> bool {
        true
    }

    fn check(c: &XmppConfig) -> Result<(), ConfigError> {
        pushbridge_kit::check_host_port(&c.server).map_err(|e| ConfigError::new("server", e.to_string()))?;
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
        if c.max_stanza_depth < MIN_STANZA_DEPTH {
            return Err(ConfigError::new(
                "max_stanza_depth",
                format!("must be at least {MIN_STANZA_DEPTH}"),
            ));
        }
        if c.max_inflight == 0 {
            return Err(ConfigError::new("max_inflight", "must be at least 1"));
        }
        if let Some(d) = c.muc_domains.iter().find(|d| d.is_empty() || d.contains(['@', '/'])) {
            return Err(ConfigError::new("muc_domains", format!("{d:?} is not a domain")));
        }
        if c.max_devices_per_jid == 0 {
            return Err(ConfigError::new("max_devices_per_jid", "must be at least 1"));
        }
        Ok(())
    }

    async fn run(ctx: Context<XmppConfig>) -> Result<(), AdapterError> {
        let Some(link) = component::connect(&ctx).await? else {
            return Ok(()); // shutdown before the connection
        };
        let cfg = ctx.config();
        ctx.status().set_connected();
        tracing::info!(adapter = ctx.name(), host = %cfg.server, domain = %cfg.domain, "XMPP component connected");
        session::run(&ctx, link).await
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        let ok: XmppConfig = serde_json::from_value(serde_json::json!({
            "server": "127.0.0.1:5347", "domain": "push.localhost", "secret": "s"
        }))
        .unwrap();
        assert!(XmppAdapter::check(&ok).is_ok());
        assert_eq!(ok.max_devices_per_jid, 10);
        assert_eq!(ok.max_stanza_depth, 64);
        let mut bad = ok.clone();
        bad.max_stanza_depth = 15;
        assert!(XmppAdapter::check(&bad)
            .unwrap_err()
            .to_string()
            .contains("max_stanza_depth: must be at least 16"));
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
