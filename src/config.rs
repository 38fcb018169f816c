//! The TOML configuration: one file, unknown keys are errors naming the key
//! and the line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sink::AppConfig;

/// A configuration problem, with enough context for an operator to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    /// An app's sink cannot be set up.
    #[error("apps[{index}] (topic {topic:?}): {source}")]
    App {
        index: usize,
        topic: String,
        source: crate::sink::SinkError,
    },
    /// An adapter instance's own check failed.
    #[error("{section}: {source}")]
    Adapter {
        section: String,
        source: pushbridge_api::ConfigError,
    },
    #[error("{section}: instance name {name:?} is used twice")]
    DuplicateInstance { section: String, name: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub apps: Vec<crate::sink::AppConfig>,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub adapters: crate::adapters::AdaptersConfig,
    /// `[admin]`: the admin HTTP listener; absent means off.
    #[serde(default)]
    pub admin: Option<crate::admin::AdminConfig>,
    #[serde(default)]
    pub log: LogConfig,
}

/// `[log]`: how `pushbridge` logs (to stderr). `--log-level` and
/// `RUST_LOG` override `level`, `--log-format` overrides `format`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`error`, `warn`, `info`, `debug`,
    /// `trace`) or directives such as `info,pushbridge::sink=debug`.
    /// Applied again on `SIGHUP`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` (one human-readable line per event) or `json` (one JSON
    /// object per line). Read at start only.
    #[serde(default)]
    pub format: LogFormat,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `spans`).
    Json,
}

fn default_log_level() -> String {
    "info".to_owned()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

impl LogConfig {
    /// `level` is a level, or comma-separated directives each ending in
    /// one (`info,pushbridge::sink=debug`); the full filter syntax is
    /// parsed where logging is set up.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("log.level {:?}: {why}", self.level));
        if self.level.trim().is_empty() {
            return Err(bad("empty; use error, warn, info, debug or trace".into()));
        }
        for directive in self.level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let level = match directive.rsplit_once('=') {
                Some((_, level)) => level,
                None if directive.contains(['[', ':']) => continue,
                None => directive,
            };
            level.parse::<tracing::level_filters::LevelFilter>().map_err(|_| {
                bad(format!(
                    "{level:?} is not a level (error, warn, info, debug, trace, off)"
                ))
            })?;
        }
        Ok(())
    }

    /// The `[log]` section of a config file, read before the rest is
    /// checked (logging starts first, so the checks can log). `None` when
    /// the file cannot be read or its `[log]` section is not valid; the
    /// full load then reports why.
    pub fn peek(path: &Path) -> Option<LogConfig> {
        let text = std::fs::read_to_string(path).ok()?;
        let table: toml::Table = text.parse().ok()?;
        match table.get("log") {
            None => Some(LogConfig::default()),
            Some(v) => v.clone().try_into().ok(),
        }
    }
}

/// `[store]`: SQLite (`path`, the default) or PostgreSQL (`url`), exactly
/// one of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawStoreConfig")]
pub struct StoreConfig {
    /// SQLite file, created if missing. Relative paths are relative to the
    /// working directory. Unused when `url` is set.
    pub path: PathBuf,
    /// `full` (default): nothing is answered before it is fsynced (group
    /// commit amortizes it; the fsync runs off the store thread, see
    /// `store::wal_sync`); `normal`: survives a process crash but not a
    /// power cut.
    /// (SQLite only: PostgreSQL's durability is the server's.)
    pub synchronous: Synchronous,
    /// `postgres://user[:password]@host[:port]/dbname[?sslmode=…]`: the
    /// PostgreSQL store instead of SQLite (see [`crate::store::pg`]).
    pub url: Option<String>,
    /// File holding the PostgreSQL password (first line), instead of one in
    /// the URL.
    pub password_file: Option<PathBuf>,
    /// A gateway whose heartbeat is older than this is dead (PostgreSQL;
    /// default 30 s).
    pub lease: Duration,
}

/// `[store]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStoreConfig {
    path: Option<PathBuf>,
    #[serde(default)]
    synchronous: Synchronous,
    url: Option<String>,
    password_file: Option<PathBuf>,
    /// Seconds.
    #[serde(default = "default_lease")]
    lease: u64,
}

/// The longest `[store] lease`, seconds: a day (a dead gateway's
/// notifications would wait that long; beyond, the server's interval
/// arithmetic on it could overflow).
const MAX_LEASE: u64 = 86_400;

fn default_lease() -> u64 {
    30
}

impl TryFrom<RawStoreConfig> for StoreConfig {
    type Error = String;
    fn try_from(raw: RawStoreConfig) -> Result<Self, String> {
        if raw.path.is_some() && raw.url.is_some() {
            return Err("set exactly one of `path` (SQLite) and `url` (PostgreSQL), not both".into());
        }
        if let Some(url) = &raw.url {
            crate::store::pg::parse_url(url).map_err(|e| format!("url: {e}"))?;
        } else if raw.password_file.is_some() {
            return Err("`password_file` needs `url` (it is PostgreSQL's password)".into());
        }
        if !(1..=MAX_LEASE).contains(&raw.lease) {
            return Err(format!(
                "`lease` must be 1 to {MAX_LEASE} seconds (a day), not {}",
                raw.lease
            ));
        }
        Ok(Self {
            path: raw.path.unwrap_or_else(default_store_path),
            synchronous: raw.synchronous,
            url: raw.url,
            password_file: raw.password_file,
            lease: Duration::from_secs(raw.lease),
        })
    }
}

impl StoreConfig {
    /// Where the store is, for logs and messages: the SQLite path, or the
    /// PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match &self.url {
            Some(url) => crate::store::pg::redact_url(url),
            None => self.path.display().to_string(),
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("pushbridge.db")
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            synchronous: Synchronous::default(),
            url: None,
            password_file: None,
            lease: Duration::from_secs(default_lease()),
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

/// `[policy]`: what a push says.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
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
    /// Seconds (0 to 3600): messages for one user and conversation within
    /// this window of the first become one push when it ends; 0: off.
    #[serde(default)]
    pub coalesce: u64,
}

/// Longest `[policy] coalesce` window, in seconds.
pub const MAX_COALESCE: u64 = 3600;

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
            coalesce: 0,
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
    /// Threads that run the apps' sinks, each a single-threaded runtime
    /// (apps spread over them round robin; never more threads than apps);
    /// 0 runs the sinks on the runtime the adapters share. See
    /// [`crate::sink::threads`].
    #[serde(default = "default_sink_threads")]
    pub sink_threads: usize,
}

fn default_sink_threads() -> usize {
    1
}

fn default_grace() -> u64 {
    10
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: default_grace(),
            sink_threads: default_sink_threads(),
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
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning the file's text (a reload compares
    /// it with the next one).
    pub fn load_with_text(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path).map(|config| (config, text))
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
            if app.queue == 0 {
                return Err(ConfigError::Invalid(format!("{at}: queue must be at least 1")));
            }
            app.sink.check().map_err(|source| ConfigError::App {
                index: i,
                topic: app.topic.clone(),
                source,
            })?;
        }
        self.log.check()?;
        if self.policy.ttl == 0 {
            return Err(ConfigError::Invalid("policy.ttl must be at least 1 second".into()));
        }
        if self.policy.coalesce > MAX_COALESCE {
            return Err(ConfigError::Invalid(format!(
                "policy.coalesce must be at most {MAX_COALESCE} seconds"
            )));
        }
        self.adapters.check()?;
        Ok(())
    }

    /// Warnings about the apps' credentials (a client certificate expiring
    /// within 30 days), each prefixed with the app, as `check` prints them.
    /// Loads the credentials again; errors were reported by [`Config::check`].
    pub fn credential_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, app) in self.apps.iter().enumerate() {
            for w in app.sink.check().unwrap_or_default() {
                out.push(format!("apps[{i}] (topic {:?}): {w}", app.topic));
            }
        }
        out
    }

    /// The app a device goes to when none is named: the first configured.
    pub fn default_app(&self) -> &AppConfig {
        &self.apps[0]
    }
}

/// toml's messages already name the key and show the line; add the line
/// number in words so `check` output reads well in logs without the snippet.
///
/// An app's sink keys are read after its common keys, and toml then
/// reports the whole `[[apps]]` table as the place; the key serde names
/// ("unknown field `binary_command`") is then looked up inside that table,
/// so the message points at its own line.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else { return msg };
    let start = span.start.min(text.len());
    let end = span.end.clamp(start, text.len());
    let at = named_key(&msg)
        .and_then(|key| key_offset(&text[start..end], key))
        .map_or(start, |off| start + off);
    let line = text[..at].matches('\n').count() + 1;
    let snippet = clip(text.lines().nth(line - 1).unwrap_or("").trim(), 120);
    format!("line {line}: {} (at `{snippet}`)", clip(&msg, 400))
}

/// `s` cut to at most `max` user-perceived characters (grapheme
/// clusters), `…` marking a cut: a long line or value (toml and serde
/// quote them) must not become a huge log line.
fn clip(s: &str, max: usize) -> String {
    match pushbridge_kit::text::cut_points(s).get(max) {
        Some(&at) => pushbridge_kit::text::shortened(s, at),
        None => s.to_owned(),
    }
}

/// The key a nested error names: serde's "unknown field `key`", or the
/// "in `key`" toml adds to a bad value.
fn named_key(msg: &str) -> Option<&str> {
    let rest = match msg.split_once("field `") {
        Some((_, rest)) => rest,
        None => msg.rsplit_once("in `")?.1,
    };
    Some(rest.split_once('`')?.0)
}

/// Offset of the line that assigns `key` in `table` (a TOML table's text).
fn key_offset(table: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    for line in table.split_inclusive('\n') {
        let t = line.trim_start();
        if t.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('=')) {
            return Some(offset + (line.len() - t.len()));
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    const MINIMAL: &str = "[[apps]]\ntopic = \"com.example.chat\"\nprotocol = \"log\"\n";

    #[test]
    fn store_is_sqlite_or_postgres_never_both() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!((c.store.url.as_deref(), c.store.lease), (None, Duration::from_secs(30)));
        let url = "postgres://push:pw@db.example:5433/pb?sslmode=require";
        let c = parse(&format!("{MINIMAL}\n[store]\nurl = \"{url}\"\nlease = 10\n")).unwrap();
        assert_eq!(c.store.url.as_deref(), Some(url));
        assert_eq!(c.store.lease, Duration::from_secs(10));
        assert_eq!(
            c.store.describe(),
            "postgres://push:***@db.example:5433/pb?sslmode=require"
        );
        for (store, keys) in [
            ("path = \"x.db\"\nurl = \"postgres://db/pb\"", &["`path`", "`url`"][..]),
            ("url = \"postgres://db/pb?sslmode=sometimes\"", &["url", "sslmode"][..]),
            ("password_file = \"pw\"", &["password_file", "url"][..]),
            ("url = \"postgres://db/pb\"\nlease = 0", &["lease"][..]),
            ("url = \"postgres://db/pb\"\nlease = 86401", &["lease", "86400"][..]),
        ] {
            let err = parse(&format!("{MINIMAL}\n[store]\n{store}\n"))
                .unwrap_err()
                .to_string();
            assert!(keys.iter().all(|k| err.contains(k)), "{store}: {err}");
        }
    }

    #[test]
    fn minimal_config_has_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.store.path, PathBuf::from("pushbridge.db"));
        assert_eq!(c.apps[0].environment, pushbridge_api::Environment::Production);
        assert_eq!(c.policy.sound, "default");
        assert_eq!(c.gateway.shutdown_grace, 10);
        assert_eq!(c.gateway.sink_threads, 1);
        let shared = parse(&format!("{MINIMAL}\n[gateway]\nsink_threads = 0\n")).unwrap();
        assert_eq!(shared.gateway.sink_threads, 0);
        let err = parse(&format!("{MINIMAL}\n[gateway]\nsink_threads = -1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sink_threads"), "{err}");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config.toml.example");
        let c = parse(text).unwrap();
        assert!(matches!(c.apps[0].sink, crate::sink::SinkConfig::Log(_)));
        assert!(!c.adapters.line.is_empty());
    }

    #[test]
    fn long_lines_and_values_are_clipped_in_errors() {
        let long = "é".repeat(100_000);
        let err = parse(&format!("{MINIMAL}x = [{}]\n", "[".repeat(200_000)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4") && err.len() < 1000, "{} bytes", err.len());
        let err = parse(&format!("{MINIMAL}\n[store]\nsynchronous = \"{long}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("synchronous") && err.contains("…`)"), "{err}");
        assert!(err.len() < 2000, "{} bytes", err.len());
    }

    #[test]
    fn clipped_errors_keep_whole_characters() {
        let flags = "🇩🇪".repeat(200);
        assert_eq!(clip(&flags, 120), format!("{}…", "🇩🇪".repeat(120)));
        assert_eq!(clip("e\u{301}".repeat(3).as_str(), 2), "e\u{301}e\u{301}…");
        assert_eq!(clip("short", 120), "short");
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
    fn keys_of_another_sink_protocol_are_refused_with_their_line() {
        let cases = [
            ("http2", "binary_command = 1", "binary_command"),
            ("http2", "feedback_interval = 60", "feedback_interval"),
            ("log", "key_file = \"AuthKey.p8\"", "key_file"),
            ("log", "connections = 2", "connections"),
            ("binary", "key_id = \"ABC123DEFG\"", "key_id"),
            ("binary", "ping_interval = 30", "ping_interval"),
        ];
        for (protocol, line, key) in cases {
            let text = format!(
                "[store]\npath = \"x.db\"\n\n[[apps]]\ntopic = \"com.example.chat\"\nprotocol = \"{protocol}\"\n{line}\n"
            );
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{protocol}/{key}: {err}");
            assert!(err.contains("line 7"), "{protocol}/{key}: {err}");
            assert!(err.contains(&format!("protocol = \"{protocol}\"")), "{err}");
        }
        // The default protocol is http2: its keys are not errors there.
        let err = parse("[[apps]]\ntopic = \"a\"\noutput = \"x.jsonl\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("output") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn log_section_is_read_and_checked() {
        let c = parse(&format!(
            "{MINIMAL}[log]\nlevel = \"debug,pushbridge::sink=trace\"\nformat = \"json\"\n"
        ))
        .unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "debug,pushbridge::sink=trace");
        assert_eq!(parse(MINIMAL).unwrap().log, LogConfig::default());
        for bad in ["verbose", "info,pushbridge=loud", ""] {
            let err = parse(&format!("{MINIMAL}[log]\nlevel = {bad:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("log.level"), "{bad}: {err}");
        }
        let err = parse(&format!("{MINIMAL}[log]\nformat = \"xml\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("xml") && err.contains("line 5"), "{err}");
    }

    #[test]
    fn log_section_is_peeked_before_the_full_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[log]\nformat = \"json\"\n[[apps]]\nbroken = 1\n").unwrap();
        assert_eq!(LogConfig::peek(&path).unwrap().format, LogFormat::Json);
        std::fs::write(&path, MINIMAL).unwrap();
        assert_eq!(LogConfig::peek(&path), Some(LogConfig::default()));
        assert_eq!(LogConfig::peek(&dir.path().join("missing.toml")), None);
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
