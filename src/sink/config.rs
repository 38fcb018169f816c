//! `[[apps]]`: one iOS app = one APNS topic (bundle id). The keys every app
//! has (`topic`, `environment`, `protocol`, `queue`) are read here;
//! `protocol` then selects the sink's own config struct (in that sink's
//! folder, `deny_unknown_fields`), so a key of another protocol is an
//! error naming the key, like every other unknown key.

use pushbridge_api::Environment;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{binary, http2, log};

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
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkProtocol::Http2 => "http2",
            SinkProtocol::Binary => "binary",
            SinkProtocol::Log => "log",
        }
    }
}

/// The sink of one app, with the keys of its protocol.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// `protocol = "http2"` (the default).
    Http2(http2::Http2Config),
    /// `protocol = "binary"`.
    Binary(binary::BinaryConfig),
    /// `protocol = "log"`.
    Log(log::LogConfig),
}

impl SinkConfig {
    /// The protocol this config is for.
    pub fn protocol(&self) -> SinkProtocol {
        match self {
            SinkConfig::Http2(_) => SinkProtocol::Http2,
            SinkConfig::Binary(_) => SinkProtocol::Binary,
            SinkConfig::Log(_) => SinkProtocol::Log,
        }
    }

    /// Largest payload the protocol takes, in bytes (Apple: 4096 for
    /// HTTP/2, 2048 for the binary protocol; `log` as HTTP/2).
    pub fn payload_limit(&self) -> usize {
        match self {
            SinkConfig::Http2(_) | SinkConfig::Log(_) => 4096,
            SinkConfig::Binary(_) => 2048,
        }
    }
}

/// `[[apps]]`
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The app's bundle id = APNS topic (`apns-topic`).
    pub topic: String,
    /// Default APNS environment of the app's devices.
    pub environment: Environment,
    /// Notifications queued in memory for this app's sink; more wait in the
    /// store and are loaded as the sink catches up.
    pub queue: usize,
    /// `protocol` and its keys.
    pub sink: SinkConfig,
}

/// Default for `queue`, in notifications. 4,096 holds tens of milliseconds
/// of the fastest sink's work, so the store's refills keep it fed; a
/// larger queue measured no faster and cost memory (draining 200,000
/// queued notifications into nghttpd: peak RSS 40.7–41.4 MiB with 16,384,
/// 35.1–36.6 MiB with 4,096, rates within the run's noise; README
/// "Side by side: h2load into nghttpd").
pub const DEFAULT_QUEUE: usize = 4096;

/// The keys every app has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    topic: String,
    #[serde(default = "production")]
    environment: Environment,
    #[serde(default)]
    protocol: SinkProtocol,
    #[serde(default = "default_queue")]
    queue: usize,
}

fn production() -> Environment {
    Environment::Production
}
fn default_queue() -> usize {
    DEFAULT_QUEUE
}

const COMMON_KEYS: [&str; 4] = ["topic", "environment", "protocol", "queue"];

impl<'de> Deserialize<'de> for AppConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut own = toml::Table::deserialize(d)?;
        let mut common = toml::Table::new();
        for key in COMMON_KEYS {
            if let Some(v) = own.remove(key) {
                common.insert(key.to_owned(), v);
            }
        }
        let common: Common = common.try_into().map_err(D::Error::custom)?;
        let protocol = common.protocol;
        let own = toml::Value::Table(own);
        // toml reports a nested error without its position; the message
        // keeps serde's "unknown field `key`" so the caller can find the line.
        let wrong = |e: toml::de::Error| {
            D::Error::custom(format!(
                "{} (for protocol = \"{}\")",
                e.message().trim(),
                protocol.as_str()
            ))
        };
        let sink = match protocol {
            SinkProtocol::Http2 => SinkConfig::Http2(own.try_into().map_err(wrong)?),
            SinkProtocol::Binary => SinkConfig::Binary(own.try_into().map_err(wrong)?),
            SinkProtocol::Log => SinkConfig::Log(own.try_into().map_err(wrong)?),
        };
        Ok(AppConfig {
            topic: common.topic,
            environment: common.environment,
            queue: common.queue,
            sink,
        })
    }
}

impl AppConfig {
    /// A `log` app, for tests and the CLI.
    pub fn log(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            environment: Environment::Production,
            queue: DEFAULT_QUEUE,
            sink: SinkConfig::Log(log::LogConfig::default()),
        }
    }
}
