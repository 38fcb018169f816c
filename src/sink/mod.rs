//! Sinks: where an app's notifications leave the gateway. Each sink is a
//! component in its own folder (Vector's sinks are the model): a config
//! struct that refuses keys of other protocols, built with a
//! [`SinkContext`] into a future that runs until its input closes, drains
//! what it holds, and ends.
//!
//! Each configured app has one sink, shared by every adapter. The core
//! hands it [`Notification`]s (already durable in the outbox) on a bounded
//! channel, and the sink settles every one it took with exactly one
//! outcome through [`Outcomes`]. Only that takes a notification out of the
//! outbox, so a sink that dies or is shut down never loses anything: the
//! next start re-sends what was not settled.
//!
//! - [`config`]: `[[apps]]`: the keys every app has, and `protocol`
//!   selecting the sink's own typed config.
//! - [`http2`], [`binary`], [`log`]: the sinks.
//! - [`pool`]: the dispatcher and retries the APNS sinks share; [`refusal`]:
//!   credentials APNS refuses at run time, in plain words; [`net`]:
//!   connecting to APNS; [`live`]: credentials replaced on a reload.

pub mod binary;
pub mod config;
pub mod credentials;
pub mod http2;
pub mod live;
pub mod log;
pub mod net;
pub mod pool;
pub mod refusal;
pub mod threads;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

pub use self::config::{AppConfig, SinkConfig};
use crate::outcome::{Notification, Outcomes};

/// Why a sink cannot be set up: the key (of the app's section) at fault,
/// or the file or peer address, and why.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A key's value cannot work, or keys that belong together are apart.
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },
    /// Credentials or CA files.
    #[error("{what}: {source}")]
    Tls {
        what: &'static str,
        source: crate::tls::TlsError,
    },
    /// A credential file loads but cannot work: expired or not yet valid,
    /// a key that does not match, a key type APNS does not take. `key` is
    /// the config key naming the file.
    #[error("{key} {path}: {reason}")]
    Credential {
        key: &'static str,
        path: String,
        reason: String,
    },
    /// The provider-token key.
    #[error(transparent)]
    Jwt(#[from] http2::jwt::JwtError),
    /// An APNS host address that cannot be used.
    #[error("endpoint {0}")]
    Endpoint(#[from] pushbridge_kit::AddressError),
}

impl SinkError {
    /// A [`SinkError::Config`].
    pub fn config(key: &'static str, reason: impl Into<String>) -> Self {
        SinkError::Config {
            key,
            reason: reason.into(),
        }
    }
}

/// What a sink is built with.
pub struct SinkContext {
    /// The app's topic.
    pub app: Arc<str>,
    /// The app's default APNS environment (devices may name another).
    pub environment: pushbridge_api::Environment,
    /// Notifications to deliver; closed at shutdown.
    pub input: mpsc::Receiver<Notification>,
    /// Where every outcome is recorded.
    pub outcomes: Outcomes,
    /// This app's sink config as last (re)loaded: starts with the config
    /// the sink was built from; a new value after `SIGHUP` carries new
    /// credentials, which the sink applies to new provider tokens and
    /// connections (replacing old connections gracefully). A sink ignores
    /// keys it cannot apply live (the gateway logs those as needing a
    /// restart). The sender is dropped when no reload can come.
    pub reload: watch::Receiver<Arc<SinkConfig>>,
}

/// A sink running on its own, outside a gateway (benchmarks, tests, the
/// CLI): feed `input`, read every outcome from `completions`.
pub struct Detached {
    /// Notifications to deliver; drop it to let the sink drain and end.
    pub input: mpsc::Sender<Notification>,
    /// One [`crate::outcome::Completion`] per notification taken (and per
    /// device the feedback service reports gone).
    pub completions: crate::outcome::CompletionReceiver,
    /// The app's counters (retries, lost, connects, peak outstanding…).
    pub counters: Arc<crate::outcome::AppCounters>,
    /// The same counters as a set of every app's (what the metrics read).
    pub all_counters: Arc<crate::outcome::Counters>,
    /// Ends once `input` is dropped and everything taken is settled.
    pub task: tokio::task::JoinHandle<()>,
}

impl AppConfig {
    /// Build this app's sink and run it on its own (needs a runtime).
    pub fn spawn_detached(&self) -> Result<Detached, SinkError> {
        let (outcomes, completions, all_counters) = Outcomes::detached(&self.topic);
        let counters = outcomes.counters().clone();
        let _ = counters.protocol.set(self.sink.protocol().as_str());
        let (input, rx) = mpsc::channel(self.queue);
        let (_, reload) = watch::channel(Arc::new(self.sink.clone()));
        let ctx = SinkContext {
            app: self.topic.as_str().into(),
            environment: self.environment,
            input: rx,
            outcomes,
            reload,
        };
        let task = tokio::spawn(self.sink.build(ctx)?);
        Ok(Detached {
            input,
            completions,
            counters,
            all_counters,
            task,
        })
    }
}

/// A built sink: runs until its input closes and everything taken is
/// settled (or the gateway's shutdown grace runs out).
pub type SinkFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl SinkConfig {
    /// Load and check everything the sink needs (files exist and parse,
    /// keys that belong together are together, credentials are valid now:
    /// [`credentials::inspect_identity`]), for `pushbridge check` and
    /// start-up. Returns the warnings (a certificate expiring soon).
    pub fn check(&self) -> Result<Vec<String>, SinkError> {
        match self {
            SinkConfig::Log(_) => Ok(Vec::new()),
            SinkConfig::Http2(c) => http2::Http2Setup::from_config(c).map(|s| s.report.warnings),
            SinkConfig::Binary(c) => binary::BinarySetup::from_config(c).map(|s| s.report.warnings),
        }
    }

    /// Build the sink.
    pub fn build(&self, ctx: SinkContext) -> Result<SinkFuture, SinkError> {
        Ok(match self {
            SinkConfig::Log(c) => Box::pin(log::run(c.clone(), ctx)),
            SinkConfig::Http2(c) => Box::pin(http2::Http2Sink::new(http2::Http2Setup::from_config(c)?, c).run(ctx)),
            SinkConfig::Binary(c) => {
                Box::pin(binary::BinarySink::new(binary::BinarySetup::from_config(c)?, c, &ctx).run(ctx))
            }
        })
    }
}
