//! `[[adapters.matrix]]`: where the push gateway listens, which Matrix
//! `app_id`s it serves (and as which APNS app), how long a `notify` waits
//! for Apple's answers, and the largest body it reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pushbridge_api::{ConfigError, Environment};
use serde::Deserialize;

/// Smallest `max_body_size`: room for a homeserver's largest ordinary
/// notification (Synapse's are well under 4 KiB).
pub const MIN_BODY_SIZE: usize = 1024;

/// `[[adapters.matrix]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// Address to serve `POST /_matrix/push/v1/notify` on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Instance name (logs, metrics; `matrix` by default).
    #[serde(default = "default_name")]
    pub name: String,
    /// Matrix `app_id` (as the client's pusher says) → the APNS app its
    /// pushkeys belong to. A device with an `app_id` not listed here is
    /// rejected.
    pub apps: BTreeMap<String, MatrixApp>,
    /// Seconds a `notify` waits for Apple's answers before it answers the
    /// homeserver (what is still pending then is delivered later as
    /// usual); 0 answers as soon as the pushes are durably queued.
    #[serde(default = "default_outcome_timeout")]
    pub outcome_timeout: u64,
    /// Largest request body read, in bytes; a larger one is answered 413.
    #[serde(default = "default_max_body_size")]
    pub max_body_size: usize,
}

/// The APNS app behind one Matrix `app_id`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixApp {
    /// The `[[apps]] topic` (bundle id) the pushes go to.
    pub topic: String,
    /// The environment of this app_id's tokens (`production` or
    /// `sandbox`); absent: the `[[apps]]` entry's own.
    pub environment: Option<Environment>,
}

impl MatrixConfig {
    /// `outcome_timeout` as a duration.
    pub fn outcome_timeout(&self) -> Duration {
        Duration::from_secs(self.outcome_timeout)
    }

    /// Checks beyond deserialization; the error names the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            return Err(ConfigError::new("name", "must be non-empty without spaces"));
        }
        if self.apps.is_empty() {
            return Err(ConfigError::new(
                "apps",
                "must map at least one Matrix app_id to an app",
            ));
        }
        for (app_id, app) in &self.apps {
            if app_id.is_empty() {
                return Err(ConfigError::new("apps", "an app_id must not be empty"));
            }
            if app.topic.is_empty() {
                return Err(ConfigError::new(format!("apps.{app_id}.topic"), "must not be empty"));
            }
        }
        if self.outcome_timeout > 600 {
            return Err(ConfigError::new("outcome_timeout", "must be at most 600 (seconds)"));
        }
        if self.max_body_size < MIN_BODY_SIZE {
            return Err(ConfigError::new(
                "max_body_size",
                format!("must be at least {MIN_BODY_SIZE} (bytes)"),
            ));
        }
        Ok(())
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}
fn default_name() -> String {
    "matrix".to_owned()
}
fn default_outcome_timeout() -> u64 {
    10
}
fn default_max_body_size() -> usize {
    64 << 10
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MatrixConfig, String> {
        serde_json::from_value::<MatrixConfig>(text.parse::<serde_json::Value>().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_apps() {
        let c = parse(
            r#"{"apps": {"com.example.chat.ios": {"topic": "com.example.chat"},
                "com.example.chat.ios.dev": {"topic": "com.example.chat", "environment": "sandbox"}}}"#,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.name, "matrix");
        assert_eq!(c.outcome_timeout(), Duration::from_secs(10));
        assert_eq!(c.max_body_size, 65536);
        assert_eq!(
            c.apps["com.example.chat.ios.dev"].environment,
            Some(Environment::Sandbox)
        );
        assert_eq!(c.apps["com.example.chat.ios"].environment, None);
        assert!(c.check().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(parse(r#"{"apps": {}, "bogus": 1}"#).unwrap_err().contains("bogus"));
        assert!(parse(r#"{"apps": {"a": {"topic": "t", "prio": 1}}}"#)
            .unwrap_err()
            .contains("prio"));
        let empty = parse(r#"{"apps": {}}"#).unwrap();
        assert_eq!(empty.check().unwrap_err().key, "apps");
        let small = parse(r#"{"apps": {"a": {"topic": "t"}}, "max_body_size": 10}"#).unwrap();
        assert_eq!(small.check().unwrap_err().key, "max_body_size");
        let no_topic = parse(r#"{"apps": {"a": {"topic": ""}}}"#).unwrap();
        assert_eq!(no_topic.check().unwrap_err().key, "apps.a.topic");
        let long = parse(r#"{"apps": {"a": {"topic": "t"}}, "outcome_timeout": 601}"#).unwrap();
        assert_eq!(long.check().unwrap_err().key, "outcome_timeout");
    }
}
