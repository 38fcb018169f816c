//! One notification, one outcome, recorded in one place.
//!
//! A [`Notification`] keeps its name from the outbox row to Apple's answer
//! (its `id` is the outbox row id; logs call it `notification`). A sink
//! ends each one it took with exactly one [`Outcome`], handed to
//! [`Outcomes::settle`], which
//! 1. emits the outcome's event ([`events`]): one log line and one count in
//!    [`Counters`] (labels `app`, `outcome`, `reason`), together;
//! 2. hands a [`Completion`] to the store, which takes the row out of the
//!    outbox and, when the outcome says so, removes the device.
//!
//! 3. resolves the delivery receipts an adapter may be waiting on
//!    ([`tracker`]), on the way to the store.
//!
//! Until its completion is committed a notification stays in the outbox,
//! so a crash or a shutdown re-sends it on the next start (at least once).
//! Field names follow `pushbridge_api::fields`.

pub mod counters;
pub mod events;
pub mod link;
pub mod tracker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pushbridge_api::{DeviceToken, Environment};
use tokio::sync::mpsc;

pub use counters::{AppCounters, Counters, Snapshot};
pub use tracker::Tracker;

/// One push to one device, as stored in the outbox, with what happened to
/// it on its way so far.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Outbox row id: unique, increasing; the log field `notification`.
    pub id: i64,
    /// The app's APNS topic (log field `app`).
    pub app: Arc<str>,
    /// The device it goes to.
    pub token: DeviceToken,
    /// The APNS environment of that device (which host it goes to).
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
    /// Transient failures so far (429, 5xx, lost streams); 0 when loaded
    /// from the outbox.
    pub attempts: u32,
    /// Already settled as delivered once (its outbox row is gone) and
    /// taken back because APNS said otherwise later (the binary protocol's
    /// late error responses): a second "delivered" is not recorded again.
    pub redelivery: bool,
}

impl Notification {
    /// A fresh notification (not from the outbox: benchmarks, tests and
    /// `pushbridge push`): priority 10, no expiration, no collapse id.
    /// `app` and `payload` may be shared (`Arc<str>`) or copied (`&str`).
    pub fn new(
        id: i64,
        app: impl Into<Arc<str>>,
        token: DeviceToken,
        environment: Environment,
        payload: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            id,
            app: app.into(),
            token,
            environment,
            payload: payload.into(),
            expiration: 0,
            priority: 10,
            collapse_id: None,
            created_ms: 0,
            attempts: 0,
            redelivery: false,
        }
    }

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
    /// APNS (or the gateway) refused it for good. `reason`: Apple's reason
    /// with its status (`410 Unregistered`), a binary status name, or the
    /// gateway's own. `remove_device`: the token is invalid or unregistered
    /// and the device is taken out of the registry (`since_ms`: only if it
    /// was registered before then, when APNS said).
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

/// What the store does after an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// A notification reached its outcome: delete outbox row `id`; with
    /// `Rejected { remove_device: true, .. }`, also remove the device.
    Settled {
        id: i64,
        app: Arc<str>,
        token: DeviceToken,
        outcome: Outcome,
    },
    /// APNS says a device is gone outside any notification (the binary
    /// feedback service): remove it if it was registered before `since_ms`.
    DeviceGone {
        app: Arc<str>,
        token: DeviceToken,
        since_ms: Option<i64>,
        /// Why (its label is the `reason` of `pushbridge_devices_removed_total`).
        reason: String,
    },
}

impl Completion {
    /// The outcome, for [`Completion::Settled`].
    pub fn outcome(&self) -> Option<&Outcome> {
        match self {
            Completion::Settled { outcome, .. } => Some(outcome),
            Completion::DeviceGone { .. } => None,
        }
    }
}

/// Where completions go: the store thread (woken through `wake`), or a
/// channel a benchmark or test reads.
#[derive(Clone)]
pub struct CompletionSender {
    tx: mpsc::UnboundedSender<Completion>,
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Set when a wake-up is on its way; the store clears it before it
    /// drains, so one wake-up covers many completions.
    woken: Arc<AtomicBool>,
    /// Adapters' delivery receipts, resolved as outcomes pass.
    tracker: Arc<Tracker>,
}

impl CompletionSender {
    /// A sender and the receiver the store (or a test) drains. `wake` is
    /// called when a completion arrives while no wake-up is pending.
    pub fn new(wake: Option<Arc<dyn Fn() + Send + Sync>>) -> (Self, CompletionReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let woken = Arc::new(AtomicBool::new(false));
        let tracker = Tracker::new();
        let rx = CompletionReceiver {
            rx,
            woken: woken.clone(),
            tracker: tracker.clone(),
        };
        (
            Self {
                tx,
                wake,
                woken,
                tracker,
            },
            rx,
        )
    }

    fn send(&self, c: Completion) {
        if let Completion::Settled { id, outcome, .. } = &c {
            self.tracker.resolve(*id, outcome);
        }
        // Bounded in practice: a sink holds a bounded number of notifications.
        let _ = self.tx.send(c);
        if let Some(wake) = &self.wake {
            if !self.woken.swap(true, Ordering::AcqRel) {
                wake();
            }
        }
    }
}

/// The receiving end of a [`CompletionSender`].
pub struct CompletionReceiver {
    pub(crate) rx: mpsc::UnboundedReceiver<Completion>,
    woken: Arc<AtomicBool>,
    /// The tracker the senders resolve receipts in (the store registers them).
    tracker: Arc<Tracker>,
}

impl CompletionReceiver {
    /// Where receipts are registered so the completions of their
    /// notifications resolve them.
    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// Everything that arrived so far, without waiting (the store thread).
    pub fn drain(&mut self, into: &mut Vec<Completion>) {
        // A read-modify-write, so it is ordered with the senders' `swap`:
        // a completion sent after this is either seen below or wakes the
        // store again. (The gateway's refill tick is a backstop.)
        self.woken.swap(false, Ordering::AcqRel);
        while let Ok(c) = self.rx.try_recv() {
            into.push(c);
        }
    }

    /// The next completion; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Completion> {
        self.rx.recv().await
    }

    /// [`CompletionReceiver::recv`] from a thread outside the runtime.
    pub fn blocking_recv(&mut self) -> Option<Completion> {
        self.rx.blocking_recv()
    }
}

/// A sink's handle on the outcome layer for one app: records outcomes and
/// the sink's own events (retries, lost streams, connections). Cheap to
/// clone.
#[derive(Clone)]
pub struct Outcomes {
    counters: Arc<AppCounters>,
    completions: CompletionSender,
}

impl Outcomes {
    /// The outcome layer of app `app` (its counters are made on first use).
    pub fn new(counters: &Counters, app: &str, completions: CompletionSender) -> Self {
        Self {
            counters: counters.app(app),
            completions,
        }
    }

    /// A detached layer for benchmarks and tests: fresh counters, and the
    /// completions on a channel the caller reads.
    pub fn detached(app: &str) -> (Self, CompletionReceiver, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = CompletionSender::new(None);
        (Self::new(&counters, app, tx), rx, counters)
    }

    /// This app's counters.
    pub fn counters(&self) -> &Arc<AppCounters> {
        &self.counters
    }

    /// Record the final outcome of `n`: log and count it, and tell the store.
    pub fn settle(&self, n: &Notification, outcome: Outcome) {
        if n.redelivery && outcome == Outcome::Delivered {
            return; // recorded the first time
        }
        events::NotificationSettled { n, outcome: &outcome }.emit(&self.counters);
        self.completions.send(Completion::Settled {
            id: n.id,
            app: n.app.clone(),
            token: n.token.clone(),
            outcome,
        });
    }

    /// `n` will be sent again in `retry_in` after a transient failure.
    pub fn retried(&self, n: &Notification, reason: &str, retry_in: std::time::Duration) {
        events::NotificationRetried { n, reason, retry_in }.emit(&self.counters);
    }

    /// `count` notifications were written to a connection that ended before
    /// APNS answered them.
    pub fn lost(&self, count: u64, reason: &str) {
        events::NotificationsLost {
            app: self.counters.app(),
            count,
            reason,
        }
        .emit(&self.counters);
    }

    /// Connection number `connection` to `host` is up.
    pub fn connected(&self, host: &str, connection: usize) {
        events::ApnsConnected {
            app: self.counters.app(),
            host,
            connection,
        }
        .emit(&self.counters);
    }

    /// Connection number `connection` to `host` ended because of `cause`
    /// (a short label first: `closed`, `goaway`, `error: …`).
    pub fn disconnected(&self, host: &str, connection: usize, cause: &str) {
        events::ApnsDisconnected {
            app: self.counters.app(),
            host,
            connection,
            cause,
        }
        .emit(&self.counters);
    }

    /// APNS answered a request `took` after it was written (the
    /// `pushbridge_apns_request_duration_seconds` histogram).
    pub fn answered(&self, took: std::time::Duration) {
        self.counters.request_duration.observe(took.as_secs_f64());
    }

    /// Connection number `connection` could not reach `host`.
    pub fn unreachable(&self, host: &str, connection: usize, error: &dyn std::fmt::Display) {
        events::ApnsUnreachable {
            app: self.counters.app(),
            host,
            connection,
            error,
        }
        .emit(&self.counters);
    }

    /// APNS at `host` refuses this app's credential for `reason` (plain
    /// words, e.g. `client certificate expired on 2024-02-01`): logged at
    /// ERROR when the state changes, and kept in
    /// [`AppCounters::credential`] until [`Outcomes::credential_accepted`].
    pub fn credential_refused(&self, host: &str, reason: &str) {
        events::CredentialRefused {
            app: self.counters.app(),
            host,
            reason,
        }
        .emit(&self.counters);
    }

    /// APNS at `host` accepted this app's credential (cheap while nothing
    /// was refused: called on every answer).
    pub fn credential_accepted(&self, host: &str) {
        events::CredentialAccepted {
            app: self.counters.app(),
            host,
        }
        .emit(&self.counters);
    }

    /// A reload replaced the app's credentials: refusals of the old ones no
    /// longer apply (the app is ready again until APNS refuses the new ones).
    pub fn credential_replaced(&self) {
        if self.counters.credential.clear() {
            tracing::info!(
                app = self.counters.app(),
                "credentials replaced; APNS's refusal of the old ones no longer applies"
            );
        }
    }

    /// The sink loaded its credentials: the client certificate's expiry
    /// (Unix seconds, `None` without one) and warnings to log.
    pub fn credential_loaded(&self, certificate_expiry: Option<u64>, warnings: &[String]) {
        events::CredentialLoaded {
            app: self.counters.app(),
            certificate_expiry,
            warnings,
        }
        .emit(&self.counters);
    }

    /// A provider token was minted with `iat` (Unix seconds).
    pub fn provider_token_minted(&self, iat: u64) {
        events::ProviderTokenMinted {
            app: self.counters.app(),
            iat,
        }
        .emit(&self.counters);
    }

    /// The sink of this app stopped (logs its counters).
    pub fn stopped(&self, protocol: &str) {
        events::SinkStopped { protocol }.emit(&self.counters);
    }

    /// A sink holds `held` notifications now (keeps the high-water mark).
    pub fn holding(&self, held: usize) {
        self.counters.peak_outstanding.fetch_max(held as u64, Ordering::Relaxed);
    }

    /// APNS rejected `n` after it was settled as delivered (counted as a
    /// rejection; its outbox row is already gone).
    pub fn late_rejection(&self, n: &Notification, reason: &str) {
        events::LateRejection { n, reason }.emit(&self.counters);
    }

    /// A device APNS reported gone outside any notification (feedback, or
    /// a late binary status 8).
    pub fn device_gone(&self, token: DeviceToken, since_ms: Option<i64>, reason: &str) {
        events::DeviceGoneReported {
            app: self.counters.app(),
            token: &token,
            reason,
        }
        .emit(&self.counters);
        self.completions.send(Completion::DeviceGone {
            app: self.counters.app().into(),
            token,
            since_ms,
            reason: reason.to_owned(),
        });
    }
}
