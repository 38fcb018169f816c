//! Sinks: where an app's notifications leave the gateway.
//!
//! Each configured app has one sink, shared by every adapter. The core hands
//! it [`Notification`]s (already durable in the outbox) on a bounded channel
//! and the sink reports one final [`Report`] per notification: delivered,
//! rejected (maybe removing the device) or expired. Only a report takes a
//! notification out of the outbox, so a sink that dies or is shut down never
//! loses anything: the next start re-sends what was not reported.
//!
//! A sink runs until its input channel closes, then drains what it holds
//! (bounded by the gateway's shutdown grace) and returns.

pub mod binary;
pub mod http2;
pub mod log;
pub mod net;
pub mod pool;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pushbridge_api::{DeviceToken, Environment};
use tokio::sync::mpsc;

use crate::config::{AppConfig, SinkProtocol};

/// One push to one device, as stored in the outbox.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Outbox row id: unique, increasing; what a report refers to.
    pub id: i64,
    pub topic: Arc<str>,
    pub token: DeviceToken,
    pub environment: Environment,
    /// The JSON payload (`{"aps":…}`), within the protocol's limit.
    pub payload: Arc<str>,
    /// Unix seconds after which it is not worth delivering (`apns-expiration`).
    pub expiration: u64,
    /// 10 (immediate) for alerts, 5 (power-conserving).
    pub priority: u8,
    /// `apns-collapse-id`, when the policy sets one.
    pub collapse_id: Option<String>,
    /// Unix milliseconds when it was accepted.
    pub created_ms: i64,
}

impl Notification {
    /// Whether its expiration has passed at `now` (unix seconds).
    pub fn expired_at(&self, now: u64) -> bool {
        self.expiration != 0 && now > self.expiration
    }
}

/// The final fate of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// APNS accepted it.
    Delivered,
    /// APNS refused it for good. `remove_device`: the token is invalid or
    /// unregistered and the device is taken out of the registry
    /// (`since_ms`: only if it was registered before then, when APNS said).
    Rejected {
        reason: String,
        remove_device: bool,
        since_ms: Option<i64>,
    },
    /// Its expiration passed before APNS took it (or retries ran out).
    Expired { reason: String },
}

impl Outcome {
    /// Refused for good without touching the device (a bad notification, an
    /// unusable app, a 4xx that does not name the token).
    pub fn dropped(reason: String) -> Self {
        Outcome::Rejected {
            reason,
            remove_device: false,
            since_ms: None,
        }
    }
}

/// A sink's report about one notification.
#[derive(Debug, Clone)]
pub struct Report {
    pub id: i64,
    pub topic: Arc<str>,
    pub token: DeviceToken,
    pub outcome: Outcome,
}

impl Report {
    pub fn new(n: &Notification, outcome: Outcome) -> Self {
        Self {
            id: n.id,
            topic: n.topic.clone(),
            token: n.token.clone(),
            outcome,
        }
    }
}

/// What a sink tells the core.
#[derive(Debug, Clone)]
pub enum SinkReport {
    /// The final outcome of one notification.
    Done(Report),
    /// A device APNS says is gone, outside any notification (the binary
    /// protocol's feedback service): removed when it was registered before
    /// `since_ms`.
    DeviceGone {
        topic: Arc<str>,
        token: DeviceToken,
        since_ms: Option<i64>,
        reason: String,
    },
}

/// Where sinks send reports. Unbounded, but bounded in practice by the
/// sink's queue and in-flight window.
pub type ReportSender = mpsc::UnboundedSender<SinkReport>;

/// The future a sink runs as.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A running sink for one app.
pub trait Sink: Send + 'static {
    /// Consume `input` until it closes, reporting every notification taken.
    fn run(self: Box<Self>, input: mpsc::Receiver<Notification>, reports: ReportSender) -> BoxFuture;
}

/// Checks of an app's sink settings for `pushbridge check` and start-up
/// (files exist and parse, keys that belong together are together).
pub fn check_app(app: &AppConfig) -> Result<(), String> {
    match app.protocol {
        SinkProtocol::Log => Ok(()),
        SinkProtocol::Http2 => http2::check(app),
        SinkProtocol::Binary => binary::check(app),
    }
}

/// Build the sink for an app.
pub fn build(app: &AppConfig) -> Result<Box<dyn Sink>, String> {
    match app.protocol {
        SinkProtocol::Log => Ok(Box::new(log::LogSink::new(app.output.clone()))),
        SinkProtocol::Http2 => Ok(Box::new(http2::Http2Sink::from_app(app)?)),
        SinkProtocol::Binary => Ok(Box::new(binary::BinarySink::from_app(app)?)),
    }
}
