//! `protocol = "binary"`: the legacy binary provider protocol (command 2
//! frames by default, command 1 when `binary_command = 1`) over TLS with a
//! client certificate, and the feedback service.
//!
//! APNS answers nothing on success and, on a bad notification, one error
//! response naming it, after which it discards everything sent after it
//! and closes the connection. So each connection keeps a *replay window*
//! of what it wrote:
//!
//! - an error response for identifier X: everything written before X was
//!   accepted (delivered); X failed (status 8 removes the device; 1 and
//!   255 are retried; 10, "shutdown", names the last one accepted); all
//!   after X is sent again on a new connection;
//! - a connection lost without an error response: the whole window is sent
//!   again on a new connection (at least once, never lost);
//! - a notification that stayed in the window `binary_confirm_ms` (500 ms
//!   by default) on a healthy connection is taken as delivered, and
//!   remembered a while longer (up to 16,384 per connection, 30 s): an
//!   error response that arrives later still fails the one it names, and
//!   what followed it is taken back and sent again.
//!
//! Identifiers are the outbox ids (low 32 bits), so a re-sent notification
//! keeps its identifier. Frames are coalesced: everything taken from the
//! queue at once goes out in one write (TLS records of up to 16 KiB).
//!
//! A reload with a new client certificate: each connection made with the
//! old one finishes (everything it wrote confirmed), closes, and its worker
//! connects with the new one; feedback polls use the current one.

pub mod codec;
pub mod config;
mod feedback;
mod window;
mod worker;

use std::sync::Arc;

use pushbridge_api::Environment;
use tokio_rustls::TlsConnector;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use self::config::{BinaryConfig, BinarySetup};
use super::live::{self, Live};
use super::pool::{dispatch, pool_queue, PoolSender, PoolStarter, Shared, POOL_QUEUE};
use super::{SinkConfig, SinkContext, SinkError};
use crate::outcome::Notification;

/// Default for `binary_confirm_ms`: a notification written this long ago
/// on a connection that reported no error is taken as accepted.
pub const CONFIRM_AFTER_MS: u64 = 500;
/// Most notifications in one connection's replay window; writing pauses
/// while it is full.
pub const MAX_WINDOW: usize = 262_144;
/// The smallest the adaptive window gets.
pub const MIN_WINDOW: usize = 16;
/// Default seconds between feedback polls (Apple suggested daily; hourly
/// is what the original providers did).
pub const FEEDBACK_INTERVAL: u64 = 3600;

/// The sink.
pub struct BinarySink {
    setup: BinarySetup,
    /// The app's default environment: its feedback service is polled from
    /// the start.
    environment: Environment,
    connections: usize,
}

impl BinarySink {
    /// A sink for `setup` with the pool size and retries of `config`.
    pub fn new(setup: BinarySetup, config: &BinaryConfig, ctx: &SinkContext) -> Self {
        Self {
            setup,
            environment: ctx.environment,
            connections: config.connections.max(1),
        }
    }

    /// Deliver `ctx.input` until it closes and everything taken is settled.
    pub async fn run(self, ctx: SinkContext) {
        let stop = CancellationToken::new();
        let (creds_tx, creds) = live::channel(TlsConnector::from(self.setup.tls.clone()));
        let reloaded = ctx.outcomes.clone();
        let follow = live::follow(ctx.reload, creds_tx, move |c| match c {
            SinkConfig::Binary(c) => BinarySetup::from_config(c).map(|s| {
                reloaded.credential_loaded(s.report.certificate_expiry, &s.report.warnings);
                reloaded.credential_replaced();
                TlsConnector::from(s.tls)
            }),
            other => Err(SinkError::config(
                "protocol",
                format!("{} (changing it needs a restart)", other.protocol().as_str()),
            )),
        });
        let pools = Pools {
            sink: &self,
            creds,
            feedback_started: Vec::new(),
            stop: stop.clone(),
            _guard: stop.drop_guard(),
        };
        // Room for every connection's full replay window plus a queue's
        // worth, in both environments.
        let limits = self
            .setup
            .retry
            .limits(2 * (self.connections * MAX_WINDOW + POOL_QUEUE));
        let outcomes = ctx.outcomes.clone();
        let report = &self.setup.report;
        outcomes.credential_loaded(report.certificate_expiry, &report.warnings);
        live::run_with(dispatch(pools, ctx.input, ctx.outcomes, limits), follow).await;
        outcomes.stopped("binary");
    }
}

struct Pools<'a> {
    sink: &'a BinarySink,
    /// The current client certificate (replaced on a reload).
    creds: Live<TlsConnector>,
    feedback_started: Vec<Environment>,
    stop: CancellationToken,
    /// Stops the feedback pollers when the dispatcher drops the starter.
    _guard: DropGuard,
}

impl Pools<'_> {
    fn start_feedback(&mut self, env: Environment, shared: &Arc<Shared>) {
        if self.feedback_started.contains(&env) {
            return;
        }
        self.feedback_started.push(env);
        match self.sink.setup.feedback_target(env) {
            Some(Ok(target)) => {
                shared.spawn(feedback::poll_loop(
                    target,
                    self.creds.clone(),
                    self.sink.setup.feedback_interval,
                    shared.clone(),
                    self.stop.clone(),
                ));
            }
            Some(Err(e)) => tracing::error!(error = %e, "feedback service address"),
            None => tracing::info!(
                app = shared.outcomes.counters().app(),
                "endpoint overridden without feedback_endpoint: not polling a feedback service"
            ),
        }
    }
}

impl PoolStarter for Pools<'_> {
    fn started(&mut self, shared: &Arc<Shared>) {
        self.start_feedback(self.sink.environment, shared);
    }

    fn start_pool(&mut self, env: Environment, shared: Arc<Shared>) -> Result<PoolSender, SinkError> {
        let target = self.sink.setup.target(env)?;
        self.start_feedback(env, &shared);
        let (tx, rx) = pool_queue();
        tracing::info!(host = %target.authority, connections = self.sink.connections, command = self.sink.setup.command, "binary APNS pool starting");
        let link = worker::Link {
            target,
            creds: self.creds.clone(),
            command: self.sink.setup.command,
            confirm_after: self.sink.setup.confirm_after,
            report: Arc::new(self.sink.setup.report.clone()),
        };
        for index in 0..self.sink.connections {
            shared.spawn(worker::worker(index, link.clone(), rx.clone(), shared.clone()));
        }
        Ok(tx)
    }
}

/// The identifier a notification is sent with: the low 32 bits of its
/// outbox id, so a re-sent notification keeps its identifier.
fn ident(n: &Notification) -> u32 {
    n.id as u32
}
