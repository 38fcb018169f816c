//! Reloading the configuration without a restart (`SIGHUP` in
//! `pushbridge run`).
//!
//! On each request the file the gateway started with is read and checked
//! exactly as `pushbridge check` does ([`Config::load`]); a file that fails
//! is refused with that message, logged at ERROR, and the running
//! configuration stays. A valid file is applied live where it can be:
//!
//! - every app's credentials (`key_file`, `key_id`, `team_id`, `cert_file`,
//!   `private_key_file`, `pkcs12_file`, `pkcs12_password`, `ca_file`):
//!   when their values or the files they name changed, the app's new sink
//!   config goes out on its reload channel ([`crate::sink::SinkContext::reload`]);
//!   the sink signs new requests with the new key and replaces its
//!   connections gracefully;
//! - `[policy]`: the store thread renders the messages queued after the
//!   reload with it;
//! - `[log] level`, through the setter the binary gives
//!   (`--log-level` and `RUST_LOG` win over it).
//!
//! Any other change (listen addresses, adapters, `[store]`, `[gateway]`,
//! `[log] format`, apps added or removed, a sink's protocol, endpoint,
//! connections, queue, ...) needs a restart: it is logged at WARN naming
//! the keys and otherwise ignored. One INFO line per reload says what was
//! applied.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::policy::Policy;
use crate::sink::SinkConfig;
use crate::store::StoreHandle;

/// Sets the log filter from `[log] level`: `Ok(true)` when applied,
/// `Ok(false)` when something else (`--log-level`, `RUST_LOG`) sets it,
/// `Err` with the reason the filter cannot be used.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<bool, String> + Send + Sync>;

/// How a running gateway is asked to reload, and what it started with.
pub struct Reload {
    /// The config file, read again on every request.
    pub path: PathBuf,
    /// The text the gateway started with (what a new file is compared
    /// with to find the keys that need a restart).
    pub text: String,
    /// One message per reload request; closed: no more reloads.
    pub requests: mpsc::Receiver<()>,
    /// Applies `[log] level`; `None`: the level is left alone.
    pub log_level: Option<LogLevelSetter>,
}

impl Reload {
    /// Reload requests from `SIGHUP`, for `path` started with `text`.
    /// Needs a runtime.
    #[cfg(unix)]
    pub fn on_sighup(path: PathBuf, text: String, log_level: Option<LogLevelSetter>) -> std::io::Result<Reload> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let (tx, requests) = mpsc::channel(1);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // A request already waiting covers this signal too.
                if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                    return;
                }
            }
        });
        Ok(Reload {
            path,
            text,
            requests,
            log_level,
        })
    }
}

/// The running gateway's parts a reload reaches.
pub(crate) struct Targets {
    /// Each app's topic and the sender of its sink's reload channel.
    pub apps: Vec<(String, watch::Sender<Arc<SinkConfig>>)>,
    /// Where a new policy goes.
    pub store: StoreHandle,
}

/// Keys of an `[[apps]]` section a reload applies live.
pub const CREDENTIAL_KEYS: [&str; 8] = [
    "key_file",
    "key_id",
    "team_id",
    "cert_file",
    "private_key_file",
    "pkcs12_file",
    "pkcs12_password",
    "ca_file",
];
/// Of [`CREDENTIAL_KEYS`], those naming files (their contents count).
const FILE_KEYS: [&str; 5] = ["key_file", "cert_file", "private_key_file", "pkcs12_file", "ca_file"];

/// Serve reload requests until their channel closes.
pub(crate) async fn follow(mut reload: Reload, config: Config, targets: Targets) {
    let mut state = match Running::new(&reload.text, config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "reloads are off: the running config text does not parse");
            return;
        }
    };
    while reload.requests.recv().await.is_some() {
        state.reload(&reload.path, &targets, reload.log_level.as_ref()).await;
    }
}

/// What runs now.
struct Running {
    /// The file as started: what needs a restart is found against it.
    started: toml::Table,
    config: Config,
    /// Per app topic: a hash of its credential keys and the files they name.
    credentials: HashMap<String, u64>,
}

impl Running {
    fn new(text: &str, config: Config) -> Result<Self, toml::de::Error> {
        let started: toml::Table = text.parse()?;
        let credentials = credential_hashes(&started, &config);
        Ok(Self {
            started,
            config,
            credentials,
        })
    }

    /// Read, check and apply the file once.
    async fn reload(&mut self, path: &std::path::Path, targets: &Targets, log_level: Option<&LogLevelSetter>) {
        tracing::info!(path = %path.display(), "reloading the configuration (SIGHUP)");
        // Reading and checking files (credentials parsed, keys tried) is
        // blocking work: off the runtime's threads.
        let file = path.to_owned();
        let loaded = tokio::task::spawn_blocking(move || {
            let (config, text) = Config::load_with_text(&file).map_err(|e| e.to_string())?;
            let table = text.parse::<toml::Table>().map_err(|e| e.to_string())?;
            let hashes = credential_hashes(&table, &config);
            Ok::<_, String>((config, table, hashes))
        })
        .await;
        let (new, table, hashes) = match loaded {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return tracing::error!(error = %e, "configuration not reloaded; the running one stays"),
            Err(e) => return tracing::error!(error = %e, "configuration not reloaded; the running one stays"),
        };
        let restart = needs_restart(&self.started, &table);
        if !restart.is_empty() {
            tracing::warn!(
                keys = %restart.join(", "),
                "changed in the configuration file but needs a restart; ignored until then"
            );
        }
        let mut applied = Vec::new();
        for app in &new.apps {
            let Some((_, tx)) = targets.apps.iter().find(|(t, _)| *t == app.topic) else {
                continue;
            };
            let same_protocol = tx.borrow().protocol() == app.sink.protocol();
            if same_protocol && hashes.get(&app.topic) != self.credentials.get(&app.topic) {
                tx.send_replace(Arc::new(app.sink.clone()));
                applied.push(format!("credentials of {}", app.topic));
            }
        }
        self.credentials = hashes;
        if new.policy != self.config.policy {
            match targets.store.set_policy(Policy::new(new.policy.clone())).await {
                Ok(()) => applied.push("policy".to_owned()),
                Err(e) => tracing::error!(error = %e, "new [policy] not applied"),
            }
        }
        if new.log.level != self.config.log.level {
            match log_level.map(|set| set(&new.log.level)) {
                Some(Ok(true)) => applied.push(format!("log level {}", new.log.level)),
                Some(Ok(false)) | None => {
                    tracing::info!("[log] level changed but --log-level or RUST_LOG sets the level; left alone")
                }
                Some(Err(e)) => tracing::error!(error = %e, "new [log] level not applied"),
            }
        }
        self.config = new;
        let applied = if applied.is_empty() {
            "nothing (no live setting changed)".to_owned()
        } else {
            applied.join(", ")
        };
        tracing::info!(applied = %applied, "configuration reloaded");
    }
}

/// Per app (by topic): a hash of its credential keys' values and of the
/// contents of the files they name (a key file replaced in place counts
/// as a change).
fn credential_hashes(table: &toml::Table, config: &Config) -> HashMap<String, u64> {
    let apps = table.get("apps").and_then(|a| a.as_array());
    let mut out = HashMap::new();
    for (i, app) in config.apps.iter().enumerate() {
        let Some(section) = apps.and_then(|a| a.get(i)).and_then(|v| v.as_table()) else {
            continue;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for key in CREDENTIAL_KEYS {
            let Some(v) = section.get(key) else { continue };
            key.hash(&mut h);
            v.to_string().hash(&mut h);
            if let (true, Some(file)) = (FILE_KEYS.contains(&key), v.as_str()) {
                match std::fs::read(file) {
                    Ok(bytes) => bytes.hash(&mut h),
                    Err(e) => e.kind().to_string().hash(&mut h),
                }
            }
        }
        out.insert(app.topic.clone(), h.finish());
    }
    out
}

/// The keys that differ between the running file and the new one and
/// cannot be applied live, as written (`store.path`, `apps[0].endpoint`,
/// `adapters.line[0].listen`; a whole array when entries were added or
/// removed: `apps`), sorted.
pub fn needs_restart(running: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut changed = BTreeSet::new();
    diff_tables(running, new, "", &mut changed);
    changed.into_iter().filter(|k| !is_live(k)).collect()
}

/// Whether a changed key is applied by a reload.
fn is_live(key: &str) -> bool {
    if key == "policy" || key.starts_with("policy.") || key == "log.level" {
        return true;
    }
    // `apps[i].<credential key>`
    key.strip_prefix("apps[")
        .and_then(|rest| rest.split_once("]."))
        .is_some_and(|(index, k)| index.bytes().all(|b| b.is_ascii_digit()) && CREDENTIAL_KEYS.contains(&k))
}

fn diff_tables(old: &toml::Table, new: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        diff_values(old.get(key), new.get(key), path, out);
    }
}

fn diff_values(old: Option<&toml::Value>, new: Option<&toml::Value>, path: String, out: &mut BTreeSet<String>) {
    use toml::Value;
    match (old, new) {
        (Some(Value::Table(a)), Some(Value::Table(b))) => diff_tables(a, b, &path, out),
        (Some(Value::Table(a)), None) => diff_tables(a, &toml::Table::new(), &path, out),
        (None, Some(Value::Table(b))) => diff_tables(&toml::Table::new(), b, &path, out),
        (Some(Value::Array(a)), Some(Value::Array(b)))
            if a.len() == b.len() && a.iter().chain(b).all(|v| v.is_table()) =>
        {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_values(Some(x), Some(y), format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a != b => {
            out.insert(path);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    const BASE: &str = r#"
[store]
path = "a.db"

[[apps]]
topic = "com.example.chat"
protocol = "http2"
endpoint = "127.0.0.1:2197"
key_file = "old.p8"
key_id = "OLDKEY1234"
team_id = "TEAM123456"

[policy]
sound = "default"

[log]
level = "info"

[[adapters.line]]
listen = "127.0.0.1:7070"
"#;

    #[test]
    fn credentials_policy_and_log_level_are_live() {
        let new = BASE
            .replace("old.p8", "new.p8")
            .replace("OLDKEY1234", "NEWKEY1234")
            .replace("sound = \"default\"", "sound = \"chime\"\nprivacy = true")
            .replace("level = \"info\"", "level = \"debug\"");
        assert_eq!(needs_restart(&table(BASE), &table(&new)), Vec::<String>::new());
    }

    #[test]
    fn everything_else_is_named_as_needing_a_restart() {
        let new = BASE
            .replace("a.db", "b.db")
            .replace("127.0.0.1:7070", "127.0.0.1:7071")
            .replace("127.0.0.1:2197", "127.0.0.1:2198")
            .replace("level = \"info\"", "level = \"info\"\nformat = \"json\"")
            .replace("protocol = \"http2\"", "protocol = \"http2\"\nconnections = 4");
        assert_eq!(
            needs_restart(&table(BASE), &table(&new)),
            [
                "adapters.line[0].listen",
                "apps[0].connections",
                "apps[0].endpoint",
                "log.format",
                "store.path",
            ]
        );
    }

    #[test]
    fn apps_or_adapters_added_or_removed_name_the_whole_list() {
        let more = format!("{BASE}\n[[apps]]\ntopic = \"com.example.other\"\nprotocol = \"log\"\n");
        assert_eq!(needs_restart(&table(BASE), &table(&more)), ["apps"]);
        let irc = format!("{BASE}\n[[adapters.irc]]\nnetwork = \"x\"\n");
        assert_eq!(needs_restart(&table(BASE), &table(&irc)), ["adapters.irc"]);
        let without_store = BASE.replace("[store]\npath = \"a.db\"\n", "");
        assert_eq!(needs_restart(&table(BASE), &table(&without_store)), ["store.path"]);
    }

    #[test]
    fn only_credential_keys_of_an_app_are_live() {
        assert!(is_live("apps[0].key_file"));
        assert!(is_live("apps[12].pkcs12_password"));
        assert!(is_live("policy.ttl"));
        assert!(!is_live("apps[0].topic"));
        assert!(!is_live("apps[0].queue"));
        assert!(!is_live("apps[x].key_file"));
        assert!(!is_live("adapters.irc[0].ca_file"));
        assert!(!is_live("log.format"));
    }

    #[test]
    fn a_key_file_replaced_in_place_changes_the_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let p8 = dir.path().join("AuthKey.p8");
        std::fs::write(&p8, "one").unwrap();
        let text = format!("[[apps]]\ntopic = \"t\"\nprotocol = \"log\"\nkey_file = {p8:?}\n");
        let config = Config::parse("[[apps]]\ntopic = \"t\"\nprotocol = \"log\"\n", "t.toml".as_ref()).unwrap();
        let before = credential_hashes(&table(&text), &config);
        assert_eq!(before, credential_hashes(&table(&text), &config));
        std::fs::write(&p8, "two").unwrap();
        assert_ne!(before, credential_hashes(&table(&text), &config));
    }
}
