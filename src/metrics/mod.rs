//! `GET /metrics`: everything the gateway counts, in the Prometheus text
//! format (0.0.4), written by `prometheus-client`.
//!
//! The hot path never touches a metrics registry: notifications are
//! counted in plain atomics ([`crate::outcome::Counters`]), histograms
//! are `prometheus-client` histograms kept beside them, and this module
//! reads it all at scrape time. Names follow the Prometheus conventions:
//! the `pushbridge_` prefix, `_total` on counters, base units (seconds,
//! bytes). Every family and label is listed in README ("Metrics").
//!
//! Labels: `app` (the APNS topic), `protocol` (the app's sink: `http2`,
//! `binary`, `log`), `reason` (an outcome's reason up to its first `:`,
//! bounded per app), `host` (`host:port` of APNS), `cause` (why a
//! connection ended), `adapter` (instance name), `kind` (event kind).

pub mod family;
pub mod process;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::{Registry, Unit};

use crate::outcome::{AppCounters, Counters};
use crate::store::stats::{AppOutbox, StoreMetrics};
use crate::supervisor::AdapterStatuses;
use family::{counters, gauge, gauges, histograms, labels, Labels};
use process::ProcessStats;

/// `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Where the numbers live: shared with the parts of the gateway that
/// count them.
#[derive(Clone)]
pub struct Sources {
    /// Per-app notification, device and connection counts.
    pub counters: Arc<Counters>,
    /// The store thread's commit numbers.
    pub store: Arc<StoreMetrics>,
    /// Every adapter instance's self-report.
    pub adapters: AdapterStatuses,
}

/// What is read for one scrape besides the shared sources.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The outbox per app (`None`: the store did not answer in time; the
    /// outbox families are then left out of this scrape).
    pub outbox: Option<Vec<AppOutbox>>,
    /// Unix milliseconds now (ages are measured from it).
    pub now_ms: i64,
    /// The process's numbers (`None`: no `/proc`).
    pub process: Option<ProcessStats>,
}

/// Render the exposition text.
pub fn render(sources: &Sources, scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collect {
        sources: sources.clone(),
        scrape,
    }));
    let mut out = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

struct Collect {
    sources: Sources,
    scrape: Scrape,
}

impl std::fmt::Debug for Collect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Collect")
    }
}

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let apps = self.sources.counters.apps();
        encode_notifications(&mut enc, &apps)?;
        encode_apns(&mut enc, &apps, (self.scrape.now_ms / 1000).max(0) as u64)?;
        if let Some(outbox) = &self.scrape.outbox {
            encode_outbox(&mut enc, outbox, self.scrape.now_ms)?;
        }
        encode_adapters(&mut enc, &self.sources.adapters)?;
        encode_store(&mut enc, &self.sources.store)?;
        gauges(
            &mut enc,
            "pushbridge_build_info",
            "pushbridge's version; always 1.",
            None,
            [(labels([("version", env!("CARGO_PKG_VERSION"))]), 1.0)],
        )?;
        if let Some(p) = &self.scrape.process {
            p.encode(&mut enc)?;
        }
        Ok(())
    }
}

fn app_labels(a: &AppCounters) -> Labels {
    labels([("app", a.app()), ("protocol", a.protocol())])
}

fn by_reason(a: &AppCounters, counts: Vec<(String, u64)>) -> impl Iterator<Item = (Labels, u64)> + '_ {
    counts.into_iter().map(move |(reason, n)| {
        let mut l = app_labels(a);
        l.push(("reason", reason));
        (l, n)
    })
}

fn encode_notifications(enc: &mut DescriptorEncoder, apps: &[Arc<AppCounters>]) -> std::fmt::Result {
    let each = |f: fn(&AppCounters) -> u64| apps.iter().map(move |a| (app_labels(a), f(a)));
    counters(
        enc,
        "pushbridge_notifications_accepted",
        "Notifications committed to the outbox.",
        each(|a| a.accepted.load(Relaxed)),
    )?;
    counters(
        enc,
        "pushbridge_notifications_delivered",
        "Notifications APNS accepted.",
        each(|a| a.delivered.load(Relaxed)),
    )?;
    counters(
        enc,
        "pushbridge_notifications_rejected",
        "Notifications refused for good, by reason (APNS status and reason, binary status, or the gateway's own).",
        apps.iter().flat_map(|a| by_reason(a, a.rejected.get())),
    )?;
    counters(
        enc,
        "pushbridge_notifications_expired",
        "Notifications whose expiration passed (or whose retries ran out) before APNS took them, by reason.",
        apps.iter().flat_map(|a| by_reason(a, a.expired.get())),
    )?;
    counters(
        enc,
        "pushbridge_notifications_retried",
        "Sends scheduled again after a transient failure (429, 5xx, a lost stream).",
        each(|a| a.retried.load(Relaxed)),
    )?;
    counters(
        enc,
        "pushbridge_notifications_unanswered",
        "Notifications written to a connection that ended before APNS answered (sent again; may arrive twice).",
        each(|a| a.lost.load(Relaxed)),
    )?;
    counters(
        enc,
        "pushbridge_devices_removed",
        "Devices removed from the registry because APNS said they are gone, by reason.",
        apps.iter().flat_map(|a| {
            a.devices_removed_by
                .get()
                .into_iter()
                .map(|(reason, n)| (labels([("app", a.app()), ("reason", &reason)]), n))
        }),
    )
}

fn encode_apns(enc: &mut DescriptorEncoder, apps: &[Arc<AppCounters>], now: u64) -> std::fmt::Result {
    histograms(
        enc,
        "pushbridge_apns_request_duration",
        "Time from writing a request to APNS to reading its answer (HTTP/2).",
        Some(&Unit::Seconds),
        apps.iter().map(|a| (labels([("app", a.app())]), &a.request_duration)),
    )?;
    let hosts: Vec<_> = apps
        .iter()
        .flat_map(|a| a.link.hosts().into_iter().map(move |(h, l)| (a.app(), h, l)))
        .collect();
    gauges(
        enc,
        "pushbridge_apns_connections",
        "Connections to APNS open now.",
        None,
        hosts
            .iter()
            .map(|(app, host, l)| (labels([("app", app), ("host", host)]), l.open as f64)),
    )?;
    counters(
        enc,
        "pushbridge_apns_connects",
        "Connections to APNS established.",
        hosts
            .iter()
            .map(|(app, host, l)| (labels([("app", app), ("host", host)]), l.connects)),
    )?;
    counters(
        enc,
        "pushbridge_apns_disconnects",
        "Connections to APNS that ended, by cause.",
        hosts.iter().flat_map(|(app, host, l)| {
            l.disconnects
                .iter()
                .map(move |(cause, n)| (labels([("app", app), ("host", host), ("cause", cause)]), *n))
        }),
    )?;
    counters(
        enc,
        "pushbridge_apns_connect_failures",
        "Connection attempts to APNS that failed.",
        apps.iter()
            .map(|a| (labels([("app", a.app())]), a.connect_failures.load(Relaxed))),
    )?;
    gauges(
        enc,
        "pushbridge_sink_ready",
        "1 when the app's sink can deliver (see /readyz), else 0.",
        None,
        apps.iter()
            .map(|a| (app_labels(a), if a.readiness(now).is_ok() { 1.0 } else { 0.0 })),
    )?;
    encode_credentials(enc, apps, now)
}

fn encode_credentials(enc: &mut DescriptorEncoder, apps: &[Arc<AppCounters>], now: u64) -> std::fmt::Result {
    gauges(
        enc,
        "pushbridge_client_certificate_expiry_timestamp_seconds",
        "When the app's client certificate expires (notAfter), as a Unix timestamp; apps with certificate auth only.",
        None,
        apps.iter().filter_map(|a| {
            let t = a.certificate_expiry_seconds.load(Relaxed);
            (t != 0).then(|| (labels([("app", a.app())]), t as f64))
        }),
    )?;
    gauges(
        enc,
        "pushbridge_provider_token_age",
        "Age of the provider token (JWT) in use; apps with token auth, once one was minted.",
        Some(&Unit::Seconds),
        apps.iter().filter_map(|a| {
            let iat = a.provider_token_issued_at_seconds.load(Relaxed);
            (iat != 0).then(|| (labels([("app", a.app())]), now.saturating_sub(iat) as f64))
        }),
    )?;
    counters(
        enc,
        "pushbridge_provider_tokens_minted",
        "Provider tokens (JWTs) signed.",
        apps.iter()
            .map(|a| (labels([("app", a.app())]), a.provider_tokens_minted.load(Relaxed))),
    )?;
    counters(
        enc,
        "pushbridge_apns_credential_refusals",
        "Times APNS started refusing the app's credential (once per change of state).",
        apps.iter()
            .map(|a| (labels([("app", a.app())]), a.credential_refusals.load(Relaxed))),
    )
}

fn encode_outbox(enc: &mut DescriptorEncoder, outbox: &[AppOutbox], now_ms: i64) -> std::fmt::Result {
    gauges(
        enc,
        "pushbridge_outbox_notifications",
        "Notifications in the outbox (accepted, not yet settled).",
        None,
        outbox.iter().map(|o| (labels([("app", &o.app)]), o.depth as f64)),
    )?;
    gauges(
        enc,
        "pushbridge_outbox_oldest_age",
        "Age of the oldest notification in the outbox.",
        Some(&Unit::Seconds),
        outbox.iter().map(|o| {
            let age = o.oldest_ms.map_or(0, |t| (now_ms - t).max(0));
            (labels([("app", &o.app)]), age as f64 / 1000.0)
        }),
    )
}

fn encode_adapters(enc: &mut DescriptorEncoder, adapters: &AdapterStatuses) -> std::fmt::Result {
    let all = adapters.all();
    counters(
        enc,
        "pushbridge_adapter_events",
        "Events adapters submitted to the core, by kind.",
        all.iter().flat_map(|s| {
            s.events()
                .map(|(kind, n)| (labels([("adapter", s.name()), ("kind", kind)]), n))
        }),
    )?;
    gauges(
        enc,
        "pushbridge_adapter_connected",
        "1 when an outbound adapter (XMPP, IRC) is connected to its server, else 0.",
        None,
        all.iter().filter(|s| s.is_outbound()).map(|s| {
            let up = if s.is_connected() { 1.0 } else { 0.0 };
            (labels([("adapter", s.name()), ("kind", s.kind())]), up)
        }),
    )?;
    gauges(
        enc,
        "pushbridge_adapter_standby",
        "1 when a singleton adapter instance stands by on this gateway (another gateway holds its lock), 0 when it runs here.",
        None,
        all.iter().filter(|s| s.is_singleton()).map(|s| {
            let standby = if s.standby().is_some() { 1.0 } else { 0.0 };
            (labels([("adapter", s.name()), ("kind", s.kind())]), standby)
        }),
    )?;
    gauges(
        enc,
        "pushbridge_adapter_connections",
        "Client connections open now on an inbound adapter (the line protocol).",
        None,
        all.iter().filter(|s| !s.is_outbound()).map(|s| {
            (
                labels([("adapter", s.name()), ("kind", s.kind())]),
                s.connections() as f64,
            )
        }),
    )?;
    counters(
        enc,
        "pushbridge_adapter_slots_exhausted",
        "Times an inbound adapter had every connection slot (max_connections) in use, so new clients waited.",
        all.iter()
            .filter(|s| !s.is_outbound())
            .map(|s| (labels([("adapter", s.name()), ("kind", s.kind())]), s.slots_exhausted())),
    )
}

fn encode_store(enc: &mut DescriptorEncoder, store: &StoreMetrics) -> std::fmt::Result {
    histograms(
        enc,
        "pushbridge_store_commit_duration",
        "Time from BEGIN to the end of COMMIT per store transaction (SQLite synchronous = full: the fsync is pushbridge_store_sync_duration_seconds).",
        Some(&Unit::Seconds),
        [(Labels::new(), &store.commit_duration)],
    )?;
    histograms(
        enc,
        "pushbridge_store_sync_duration",
        "Time per fsync of the SQLite WAL, made off the store thread after one or more commits (synchronous = full); answers wait for it.",
        Some(&Unit::Seconds),
        [(Labels::new(), &store.sync_duration)],
    )?;
    histograms(
        enc,
        "pushbridge_store_commit_batch_size",
        "Commands and completions applied per store transaction.",
        None,
        [(Labels::new(), &store.batch_size)],
    )?;
    counters(
        enc,
        "pushbridge_store_transaction_failures",
        "Store transactions that failed (nothing in them was accepted).",
        [(Labels::new(), store.failures.load(Relaxed))],
    )?;
    gauge(
        enc,
        "pushbridge_store_writable",
        "1 unless the last store transaction failed (or, SQLite synchronous = full, any fsync of the WAL did: 0 until restart).",
        None,
        if store.writable().is_ok() { 1.0 } else { 0.0 },
    )
}
