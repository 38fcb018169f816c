//! The adapter's configuration, `[[adapters.irc]]`, and its checks.

use std::path::PathBuf;

use pushbridge_api::ConfigError;
use serde::Deserialize;

/// `[[adapters.irc]]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrcConfig {
    /// Network name: user ids are `irc:<network>:<account>`.
    pub network: String,
    /// `host:port` of the IRC server.
    pub server: String,
    /// Connect with TLS (certificates verified against the public roots and
    /// `ca_file`).
    #[serde(default)]
    pub tls: bool,
    /// Extra trusted CA certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// The bot's nick (`pushbridge_`, then `pushbri_2`, … while it is taken).
    #[serde(default = "default_nick")]
    pub nick: String,
    pub username: Option<String>,
    pub realname: Option<String>,
    /// Log the bot in to its own services account with SASL PLAIN.
    pub sasl_account: Option<String>,
    pub sasl_password: Option<String>,
    /// Channels to join and watch for highlights.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Extra words that highlight every registered user (e.g. `@here`).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Accounts to watch even without a device registered through the bot
    /// (devices added with the line protocol or the CLI as
    /// `irc:<network>:<account>`); their nick is taken to be the account.
    #[serde(default)]
    pub watch_accounts: Vec<String>,
    /// App (APNS topic) of devices registered through the bot; default:
    /// the first app.
    pub topic: Option<String>,
    /// Outgoing messages per second after the burst (flood protection).
    #[serde(default = "default_rate")]
    pub messages_per_second: f64,
    /// Outgoing messages sent at once before pacing starts.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Seconds between ISON polls when the server has no MONITOR.
    #[serde(default = "default_ison")]
    pub ison_interval: u64,
    /// Most nicks the bot keeps state about (online, away, account,
    /// channels); past it the least recently seen nick that is not a
    /// watched account's is forgotten. At least 100.
    #[serde(default = "default_max_nicks")]
    pub max_nicks: usize,
}

impl std::fmt::Debug for IrcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrcConfig")
            .field("network", &self.network)
            .field("server", &self.server)
            .field("tls", &self.tls)
            .field("nick", &self.nick)
            .field("sasl_account", &self.sasl_account)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "<redacted>"))
            .field("channels", &self.channels)
            .finish()
    }
}

fn default_nick() -> String {
    "pushbridge".to_owned()
}
fn default_rate() -> f64 {
    2.0
}
fn default_burst() -> u32 {
    5
}
fn default_ison() -> u64 {
    30
}
fn default_max_nicks() -> usize {
    20_000
}

impl IrcConfig {
    /// Whether this config can work; the error names the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let c = self;
        if c.network.is_empty() || c.network.contains(|ch: char| ch.is_whitespace() || ch == ':') {
            return Err(ConfigError::new(
                "network",
                format!("{:?} must be a name without spaces or colons", c.network),
            ));
        }
        pushbridge_kit::check_host_port(&c.server).map_err(|e| ConfigError::new("server", e.to_string()))?;
        if c.nick.is_empty() || c.nick.contains(|ch: char| ch.is_whitespace() || ",*?!@:#".contains(ch)) {
            return Err(ConfigError::new("nick", format!("{:?} is not a valid nick", c.nick)));
        }
        if c.sasl_account.is_some() != c.sasl_password.is_some() {
            return Err(ConfigError::new("sasl_account and sasl_password", "go together"));
        }
        if let Some(ch) = c
            .channels
            .iter()
            .find(|ch| !ch.starts_with(['#', '&']) || ch.contains([' ', ',']))
        {
            return Err(ConfigError::new(
                "channels",
                format!("{ch:?} must start with # or & and have no spaces or commas"),
            ));
        }
        if c.messages_per_second.is_nan() || c.messages_per_second < 0.1 {
            return Err(ConfigError::new("messages_per_second", "must be at least 0.1"));
        }
        if c.burst == 0 {
            return Err(ConfigError::new("burst", "must be at least 1"));
        }
        if c.ison_interval == 0 {
            return Err(ConfigError::new("ison_interval", "must be at least 1 second"));
        }
        if c.max_nicks < 100 {
            return Err(ConfigError::new("max_nicks", "must be at least 100"));
        }
        if let Some(ca) = &c.ca_file {
            if !ca.exists() {
                return Err(ConfigError::new("ca_file", format!("{}: no such file", ca.display())));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IrcAdapter;
    use pushbridge_api::Adapter;

    #[test]
    fn config_checks() {
        let ok: IrcConfig = serde_json::from_value(serde_json::json!({
            "network": "test", "server": "127.0.0.1:6667", "sasl_account": "bot", "sasl_password": "pw",
            "channels": ["#chat"]
        }))
        .unwrap();
        assert!(IrcAdapter::check(&ok).is_ok());
        assert_eq!(IrcAdapter::instance_name(&ok), "irc:test");
        assert!(!format!("{ok:?}").contains("pw"));
        let mut bad = ok.clone();
        bad.channels = vec!["chat".into()];
        assert!(IrcAdapter::check(&bad).is_err());
        let mut bad = ok.clone();
        bad.sasl_password = None;
        assert!(IrcAdapter::check(&bad).is_err());
        let mut bad = ok;
        bad.network = "a:b".into();
        assert!(IrcAdapter::check(&bad).is_err());
    }
}
