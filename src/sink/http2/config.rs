//! `protocol = "http2"` (the default): the keys of an HTTP/2 app.

use std::path::PathBuf;

use serde::Deserialize;

/// The HTTP/2 sink's keys of an `[[apps]]` section (besides `topic`,
/// `environment`, `protocol` and `queue`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Config {
    /// `host:port` override for both environments (simulator, tests).
    pub endpoint: Option<String>,
    /// Extra trusted root CA (PEM) for `endpoint`.
    pub ca_file: Option<PathBuf>,
    /// Token auth: the `.p8` key from Apple, its key id and the team id.
    pub key_file: Option<PathBuf>,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    /// Certificate auth: PEM certificate and key (or one combined PEM).
    pub cert_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    /// Certificate auth: PKCS#12 file and its password.
    pub pkcs12_file: Option<PathBuf>,
    pub pkcs12_password: Option<String>,
    /// Connections to APNS per environment (1 to 64).
    #[serde(default = "one")]
    pub connections: usize,
    /// Retries of a notification after transient failures (429, 5xx, lost
    /// connection) before it is given up and logged; unset (the default):
    /// retried until its `apns-expiration`.
    pub max_retries: Option<u32>,
    /// Longest delay in seconds between two tries of a notification after
    /// transient failures (1 to 3600, default 60): the backoff doubles from
    /// 0.2 s up to it.
    pub max_retry_delay: Option<u64>,
    /// Seconds between keep-alive PINGs (1 to 3600, default 60); a PING not
    /// answered within 20 s (or this interval, if shorter) ends the
    /// connection.
    pub ping_interval: Option<u64>,
}

fn one() -> usize {
    1
}
