//! pushbridge: turns instant messages for offline users into Apple push
//! notifications.
//!
//! Layout (data flows top to bottom):
//! - `protocols/*` (separate crates): adapters turn IM traffic into
//!   [`pushbridge_api::Event`]s; what they share for talking to peers
//!   (line codec, backoff, TLS client, connect with timeout) is the
//!   `pushbridge-kit` crate, which the core uses too.
//! - [`adapters`]: the one list of known adapters (a macro generates the
//!   config section, start, check and listing); [`supervisor`] runs each
//!   instance and restarts failed ones with backoff; [`singleton`]: on a
//!   shared PostgreSQL store, a singleton instance (IRC bot, XMPP
//!   component) runs only on the gateway holding its advisory lock.
//! - [`router`]: presence (in memory, or in the shared store on
//!   PostgreSQL) and the decision who gets a push.
//! - [`store`]: the SQLite (or PostgreSQL, shared by several gateways)
//!   registry, unread counters and outbox behind one thread with group
//!   commit; the rest talks to it through its handle.
//! - [`policy`]: what a push says (the APNS payload, cut to the limit at
//!   grapheme boundaries; header-safe conversation digests).
//! - [`feed`]: hands committed notifications to the sinks in outbox
//!   order, and refills them from the outbox as they drain.
//! - [`sink`]: one component per protocol (`log`, APNS HTTP/2, binary),
//!   each with its own typed config, built with a context, ending when
//!   its input ends.
//! - [`outcome`]: a [`outcome::Notification`]'s one [`outcome::Outcome`],
//!   counted and logged in one place and handed to the store as a
//!   completion (remove from the outbox, remove a gone device).
//! - [`apns`]: Apple's hosts, reasons and their handling, shared by the
//!   sinks and the [`simulator`] (a local stand-in for Apple).
//! - [`metrics`] and [`admin`]: the admin HTTP listener (`/metrics` in the
//!   Prometheus format, `/healthz`, `/readyz`, `/status`).
//! - [`gateway`]: wiring and graceful shutdown; [`reload`]: `SIGHUP`
//!   (credentials, policy, log level applied live); [`config`]: the TOML file;
//!   [`tls`]: PKCS#12, server configs and the test PKI; [`private_file`]:
//!   the files pushbridge writes, owner-only (mode 0600).
//!
//! Log fields and metric labels follow one vocabulary, written down in
//! `pushbridge_api::fields`.
#![forbid(unsafe_code)]

pub mod adapters;
pub mod admin;
pub mod apns;
pub mod config;
pub mod feed;
pub mod gateway;
pub mod metrics;
pub mod outcome;
pub mod policy;
pub mod private_file;
pub mod reload;
pub mod router;
pub mod simulator;
pub mod singleton;
pub mod sink;
pub mod store;
pub mod supervisor;
pub mod tls;

pub use config::Config;
