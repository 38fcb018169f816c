//! pushbridge: turns instant messages for offline users into Apple push
//! notifications.
//!
//! Layout (data flows top to bottom):
//! - `protocols/*` (separate crates): adapters turn IM traffic into
//!   [`pushbridge_api::Event`]s.
//! - [`supervisor`], [`adapters`]: run every configured adapter instance,
//!   restarting failed ones with [`backoff`].
//! - [`router`]: presence (in memory) and the decision who gets a push.
//! - [`store`]: SQLite registry, unread counters, the outbox, group commit.
//! - [`policy`]: the APNS payload, cut to the app's limit.
//! - [`sink`]: per-app delivery (`log`; APNS HTTP/2 and binary).
//! - [`reports`]: outcomes back from sinks (remove dead tokens, clear the
//!   outbox), counted in [`metrics`].
//! - [`apns`]: Apple's hosts, reasons and their handling, shared by the
//!   sinks and the [`simulator`] (a local stand-in for Apple).
//! - [`gateway`]: wiring and graceful shutdown; [`config`]: the TOML file.
#![forbid(unsafe_code)]

pub mod adapters;
pub mod apns;
pub mod config;
pub mod feed;
pub mod gateway;
pub mod outcome;
pub mod policy;
pub mod router;
pub mod simulator;
pub mod sink;
pub mod store;
pub mod supervisor;
pub mod tls;

pub use config::Config;
