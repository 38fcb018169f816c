//! `protocol = "binary"`: the keys of a legacy binary-protocol app, and
//! the checked setup built from them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pushbridge_api::Environment;
use serde::Deserialize;

use super::{CONFIRM_AFTER_MS, FEEDBACK_INTERVAL};
use crate::sink::credentials::{check_common, inspect_ca_file, CertificateKeys, CredentialReport};
use crate::sink::net::Target;
use crate::sink::SinkError;

/// The binary sink's keys of an `[[apps]]` section (besides `topic`,
/// `environment`, `protocol` and `queue`). The binary protocol
/// authenticates with a client certificate only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryConfig {
    /// `host:port` override of the gateway for both environments.
    pub endpoint: Option<String>,
    /// Extra trusted root CA (PEM) for `endpoint`.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate and key (or one combined PEM).
    pub cert_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    /// PKCS#12 file and its password.
    pub pkcs12_file: Option<PathBuf>,
    pub pkcs12_password: Option<String>,
    /// Connections to the gateway per environment (1 to 64).
    #[serde(default = "one")]
    pub connections: usize,
    /// Retries after transient failures (status 1 and 255, lost
    /// connections) before a notification is given up; unset (the
    /// default): retried until its expiration.
    pub max_retries: Option<u32>,
    /// Longest delay in seconds between two tries (1 to 3600, default 60).
    pub max_retry_delay: Option<u64>,
    /// Notification format: 2 (frames, default) or 1 (enhanced).
    pub binary_command: Option<u8>,
    /// Milliseconds a written notification must go without an error
    /// response before it counts as delivered (default 500).
    pub binary_confirm_ms: Option<u64>,
    /// Feedback service `host:port` override.
    pub feedback_endpoint: Option<String>,
    /// Seconds between feedback polls (default 3600).
    pub feedback_interval: Option<u64>,
}

fn one() -> usize {
    1
}

/// Everything needed to talk to the binary gateway for one app, checked.
#[derive(Clone)]
pub struct BinarySetup {
    /// TLS with the app's client certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// `endpoint`, or Apple's gateway per environment.
    pub endpoint: Option<String>,
    /// `feedback_endpoint`.
    pub feedback_endpoint: Option<String>,
    /// 2 (frames) or 1 (enhanced).
    pub command: u8,
    /// Time between feedback polls.
    pub feedback_interval: Duration,
    /// `binary_confirm_ms`.
    pub confirm_after: Duration,
    /// What inspecting the certificate found (its expiry, warnings).
    pub report: CredentialReport,
    /// `max_retries`, `max_retry_delay`.
    pub retry: crate::sink::pool::RetryPolicy,
}

impl BinarySetup {
    /// Load and check an app's certificate and settings; errors name the
    /// key or file.
    pub fn from_config(c: &BinaryConfig) -> Result<Self, SinkError> {
        let certificate = CertificateKeys {
            cert_file: c.cert_file.as_ref(),
            private_key_file: c.private_key_file.as_ref(),
            pkcs12_file: c.pkcs12_file.as_ref(),
            pkcs12_password: c.pkcs12_password.as_deref(),
        };
        let Some((identity, report)) = certificate.load()? else {
            return Err(SinkError::config(
                "cert_file or pkcs12_file",
                "binary needs a client certificate: cert_file [+ private_key_file] or pkcs12_file",
            ));
        };
        let command = match c.binary_command {
            None | Some(2) => 2,
            Some(1) => 1,
            Some(other) => {
                return Err(SinkError::config(
                    "binary_command",
                    format!("{other}: use 2 (frames, default) or 1 (enhanced); command 0 cannot report errors"),
                ))
            }
        };
        let interval = c.feedback_interval.unwrap_or(FEEDBACK_INTERVAL);
        if interval == 0 {
            return Err(SinkError::config("feedback_interval", "must be at least 1 second"));
        }
        if let Some(ca) = &c.ca_file {
            inspect_ca_file(ca)?;
        }
        let tls = crate::tls::client_config(c.ca_file.as_deref(), Some(identity), &[]).map_err(|e| SinkError::Tls {
            what: "TLS setup",
            source: e.into(),
        })?;
        check_common(
            c.connections,
            &[
                ("endpoint", c.endpoint.as_ref()),
                ("feedback_endpoint", c.feedback_endpoint.as_ref()),
            ],
        )?;
        let retry = crate::sink::pool::RetryPolicy::from_config(c.max_retries, c.max_retry_delay)?;
        Ok(Self {
            retry,
            tls: Arc::new(tls),
            endpoint: c.endpoint.clone(),
            feedback_endpoint: c.feedback_endpoint.clone(),
            command,
            feedback_interval: Duration::from_secs(interval),
            confirm_after: Duration::from_millis(c.binary_confirm_ms.unwrap_or(CONFIRM_AFTER_MS).max(1)),
            report,
        })
    }

    /// The gateway for devices of `env`.
    pub fn target(&self, env: Environment) -> Result<Target, pushbridge_kit::AddressError> {
        Target::parse(self.endpoint.as_deref().unwrap_or(crate::apns::binary_host(env)))
    }

    /// The feedback service: `feedback_endpoint`, or Apple's when the
    /// gateway is Apple's; none when only `endpoint` was overridden.
    pub fn feedback_target(&self, env: Environment) -> Option<Result<Target, pushbridge_kit::AddressError>> {
        match (&self.feedback_endpoint, &self.endpoint) {
            (Some(f), _) => Some(Target::parse(f)),
            (None, Some(_)) => None,
            (None, None) => Some(Target::parse(crate::apns::feedback_host(env))),
        }
    }
}
