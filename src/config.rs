//! The TOML configuration: one file, unknown keys are errors naming the key
//! and the line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pushbridge_api::Environment;
use serde::Deserialize;

/// A configuration problem, with enough context for an operator to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub adapters: crate::adapters::AdaptersConfig,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file, created if missing. Relative paths are relative to the
    /// working directory.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// `full` (default): every commit is fsynced (group commit amortizes
    /// it); `normal`: survives a process crash but not a power cut.
    #[serde(default)]
    pub synchronous: Synchronous,
}

fn default_store_path() -> PathBuf {
    PathBuf::from("pushbridge.db")
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            synchronous: Synchronous::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

/// The wire protocol an app's notifications leave by.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkProtocol {
    /// APNS HTTP/2 provider API.
    #[default]
    Http2,
    /// Legacy APNS binary provider protocol.
    Binary,
    /// Print one JSON line per notification; send nothing.
    Log,
}

impl SinkProtocol {
    /// Largest payload this protocol takes, in bytes.
    pub fn payload_limit(self) -> usize {
        match self {
            SinkProtocol::Http2 | SinkProtocol::Log => 4096,
            SinkProtocol::Binary => 2048,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SinkProtocol::Http2 => "http2",
            SinkProtocol::Binary => "binary",
            SinkProtocol::Log => "log",
        }
    }
}

/// `[[apps]]`: one iOS app = one APNS topic (bundle id).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub topic: String,
    #[serde(default = "default_environment")]
    pub environment: Environment,
    #[serde(default)]
    pub protocol: SinkProtocol,
    /// `log` protocol: file to append JSON lines to instead of stdout.
    pub output: Option<PathBuf>,
    /// `host:port` override (simulator, tests).
    pub endpoint: Option<String>,
    /// Extra trusted root CA (PEM) for `endpoint`.
    pub ca_file: Option<PathBuf>,
    /// Token auth (http2): `.p8` key, its key id and the team id.
    pub key_file: Option<PathBuf>,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    /// Certificate auth: PEM certificate and key (or one combined PEM).
    pub cert_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    /// Certificate auth: PKCS#12 file and its password.
    pub pkcs12_file: Option<PathBuf>,
    pub pkcs12_password: Option<String>,
    /// Connections to APNS for this app (a small pool).
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Retries of a notification after transient failures (429, 5xx, lost
    /// connection) before it is given up and logged.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// HTTP/2: seconds between keep-alive PINGs (default 60); a PING not
    /// answered within 20 s (or this interval, if shorter) ends the
    /// connection.
    pub ping_interval: Option<u64>,
    /// Binary protocol: notification format, 2 (frames, default) or 1 (enhanced).
    pub binary_command: Option<u8>,
    /// Binary protocol: milliseconds a written notification must go without
    /// an error response before it counts as delivered (default 500).
    pub binary_confirm_ms: Option<u64>,
    /// Binary protocol: feedback service `host:port` override.
    pub feedback_endpoint: Option<String>,
    /// Binary protocol: seconds between feedback polls (default 3600).
    pub feedback_interval: Option<u64>,
    /// Notifications queued in memory for this app's sink; more wait in the
    /// store and are loaded as the sink catches up.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_environment() -> Environment {
    Environment::Production
}
fn default_connections() -> usize {
    1
}
fn default_max_retries() -> u32 {
    10
}
fn default_queue() -> usize {
    16384
}

impl AppConfig {
    /// A `log` app, for tests and the CLI.
    pub fn log(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            environment: Environment::Production,
            protocol: SinkProtocol::Log,
            output: None,
            endpoint: None,
            ca_file: None,
            key_file: None,
            key_id: None,
            team_id: None,
            cert_file: None,
            private_key_file: None,
            pkcs12_file: None,
            pkcs12_password: None,
            connections: 1,
            max_retries: default_max_retries(),
            ping_interval: None,
            binary_command: None,
            binary_confirm_ms: None,
            feedback_endpoint: None,
            feedback_interval: None,
            queue: default_queue(),
        }
    }
}

/// `[policy]`: what a push says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Never put message text in a push.
    #[serde(default)]
    pub privacy: bool,
    /// The `sound` of every alert; `""` for silent alerts.
    #[serde(default = "default_sound")]
    pub sound: String,
    /// The body used in privacy mode and when the IM side sent no text.
    #[serde(default = "default_generic_body")]
    pub generic_body: String,
    /// Seconds APNS keeps trying a notification for an unreachable device
    /// (`apns-expiration`); also how long the gateway retries.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
    /// Collapse notifications of one conversation into one on the device
    /// (`apns-collapse-id` = thread id).
    #[serde(default)]
    pub collapse: bool,
}

fn default_sound() -> String {
    "default".to_owned()
}
fn default_generic_body() -> String {
    "New message".to_owned()
}
fn default_ttl() -> u64 {
    86_400
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            privacy: false,
            sound: default_sound(),
            generic_body: default_generic_body(),
            ttl: default_ttl(),
            collapse: false,
        }
    }
}

/// `[gateway]`: process-wide knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Seconds shutdown may take before the gateway exits anyway
    /// (anything undelivered stays in the outbox for the next start).
    #[serde(default = "default_grace")]
    pub shutdown_grace: u64,
}

fn default_grace() -> u64 {
    10
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: default_grace(),
        }
    }
}

impl GatewayConfig {
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }
}

impl Config {
    /// Read, parse and check a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and check config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks serde cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.apps.is_empty() {
            return Err(ConfigError::Invalid(
                "no [[apps]] configured: add at least one (protocol = \"log\" needs no credentials)".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let at = format!("apps[{i}] (topic {:?})", app.topic);
            if app.topic.is_empty() || app.topic.chars().any(|c| c.is_whitespace()) {
                return Err(ConfigError::Invalid(format!(
                    "{at}: topic must be a non-empty bundle id without spaces"
                )));
            }
            if !seen.insert(app.topic.as_str()) {
                return Err(ConfigError::Invalid(format!("{at}: topic configured twice")));
            }
            if app.connections == 0 || app.connections > 64 {
                return Err(ConfigError::Invalid(format!("{at}: connections must be 1 to 64")));
            }
            if app.queue == 0 {
                return Err(ConfigError::Invalid(format!("{at}: queue must be at least 1")));
            }
            if let Some(ep) = &app.endpoint {
                check_host_port(ep).map_err(|m| ConfigError::Invalid(format!("{at}: endpoint: {m}")))?;
            }
            crate::sink::check_app(app).map_err(|m| ConfigError::Invalid(format!("{at}: {m}")))?;
        }
        if self.policy.ttl == 0 {
            return Err(ConfigError::Invalid("policy.ttl must be at least 1 second".into()));
        }
        self.adapters.check().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The app a device goes to when none is named: the first configured.
    pub fn default_app(&self) -> &AppConfig {
        &self.apps[0]
    }
}

/// `host:port` with a non-empty host and a numeric port.
pub fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{s:?} is not host:port")),
    }
}

/// toml's messages already name the key and show the line; add the line
/// number in words so `check` output reads well in logs without the snippet.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}: {msg} (at `{snippet}`)")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    const MINIMAL: &str = "[[apps]]\ntopic = \"com.example.chat\"\nprotocol = \"log\"\n";

    #[test]
    fn minimal_config_has_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.store.path, PathBuf::from("pushbridge.db"));
        assert_eq!(c.apps[0].environment, Environment::Production);
        assert_eq!(c.policy.sound, "default");
        assert_eq!(c.gateway.shutdown_grace, 10);
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config.toml.example");
        let c = parse(text).unwrap();
        assert_eq!(c.apps[0].protocol, SinkProtocol::Log);
        assert!(!c.adapters.line.is_empty());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse(&format!("{MINIMAL}colour = \"blue\"\n")).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("line 4"), "{err}");

        let err = parse(&format!("{MINIMAL}\n[store]\npath = \"x.db\"\nsize = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("size") && err.contains("line 7"), "{err}");

        let err = parse(&format!(
            "{MINIMAL}\n[[adapters.line]]\nlisten = \"127.0.0.1:1\"\nport = 3\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = parse("[[apps]]\ntopic = \"a\"\nenvironment = \"prod\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("environment") || err.contains("prod"), "{err}");
        assert!(err.contains("line 3"), "{err}");

        let err = parse("[[apps]]\ntopic = \"a\"\nprotocol = \"smtp\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("smtp"), "{err}");

        let err = parse("").unwrap_err().to_string();
        assert!(err.contains("no [[apps]]"), "{err}");

        let err = parse(&format!(
            "{MINIMAL}[[apps]]\ntopic = \"com.example.chat\"\nprotocol = \"log\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("twice"), "{err}");

        let err = parse(&format!("{MINIMAL}\n[[adapters.line]]\nlisten = \"localhost\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
    }
}
