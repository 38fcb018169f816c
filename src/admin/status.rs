//! `GET /status`: the JSON summary `pushbridge status` prints. Per app:
//! ready or why not, connections open, outbox depth and oldest entry,
//! delivered and rejected in the last minute and in total; per adapter:
//! connected or why not (or standing by while another gateway runs a
//! singleton), connections, events. "Last minute" comes from a
//! [`History`] of totals sampled every [`SAMPLE_EVERY`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ready, AdminState};
use crate::outcome::Counters;

/// How often the totals are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window of "in the last minute".
pub const WINDOW: Duration = Duration::from_secs(60);

/// Per-app `(delivered, rejected)` totals.
type Totals = BTreeMap<String, (u64, u64)>;

/// Totals sampled over the last [`WINDOW`] (a few dozen entries).
#[derive(Debug, Default)]
pub struct History(Mutex<VecDeque<(Instant, Totals)>>);

impl History {
    /// Record the totals of `counters` now, dropping samples older than
    /// the window (one older sample is kept as the baseline).
    pub fn sample(&self, counters: &Counters) {
        let now = Instant::now();
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.push_back((now, totals(counters)));
        while h.len() > 2 && h.get(1).is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW) {
            h.pop_front();
        }
    }

    /// The totals at the oldest sample within (or just before) the window,
    /// and how long ago that was.
    fn baseline(&self) -> Option<(Duration, Totals)> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.front().map(|(t, v)| (t.elapsed(), v.clone()))
    }
}

fn totals(counters: &Counters) -> Totals {
    counters
        .apps()
        .iter()
        .map(|a| (a.app().to_owned(), (a.delivered.load(Relaxed), a.rejected.total())))
        .collect()
}

/// Sample `counters` into `history` every [`SAMPLE_EVERY`] until `stop`.
pub async fn sample_every(history: Arc<History>, counters: Arc<Counters>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => history.sample(&counters),
            _ = stop.cancelled() => return,
        }
    }
}

/// The `/status` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// pushbridge's version (`CARGO_PKG_VERSION`), e.g. `0.1.0`.
    pub version: String,
    /// Whether `/readyz` would answer 200, and the problems it would list.
    pub readiness: ready::Readiness,
    /// Seconds covered by the `*_recent` figures (up to 60; less just
    /// after start).
    pub recent_seconds: u64,
    /// Every configured app, sorted by topic.
    pub apps: Vec<AppStatus>,
    /// Every adapter instance.
    pub adapters: Vec<AdapterStatus>,
}

/// One app in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    /// The app's topic (bundle id).
    pub app: String,
    /// Its sink protocol: `http2`, `binary` or `log`.
    pub protocol: String,
    /// `None` when the sink can deliver; else why not.
    pub problem: Option<String>,
    /// Connections to APNS open now.
    pub connections: i64,
    /// Notifications in the outbox (`None`: the store did not answer).
    pub outbox: Option<u64>,
    /// Age of the oldest, in seconds.
    pub oldest_seconds: Option<f64>,
    /// Notifications delivered in the last `recent_seconds`.
    pub delivered_recent: u64,
    /// Notifications rejected in the last `recent_seconds`.
    pub rejected_recent: u64,
    /// Notifications delivered since start.
    pub delivered_total: u64,
    /// Notifications rejected since start (every reason).
    pub rejected_total: u64,
}

/// One adapter instance in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterStatus {
    /// The instance name, as the `adapter` label (`line`, `irc:libera`).
    pub adapter: String,
    /// The adapter kind: `line`, `xmpp` or `irc`.
    pub kind: String,
    /// Whether it connects out to a server (XMPP, IRC) rather than
    /// accepting connections (line protocol).
    pub outbound: bool,
    /// `None` when connected (or inbound, or standing by); else why not.
    pub problem: Option<String>,
    /// Whether it runs under a singleton lock (shared PostgreSQL store:
    /// one gateway at a time runs it).
    #[serde(default)]
    pub singleton: bool,
    /// `Some(why)` while a singleton stands by on this gateway (e.g.
    /// `standing by: held by pushbridge singleton HOST:PID (…)`); `None`
    /// when it runs here (or is no singleton).
    #[serde(default)]
    pub standby: Option<String>,
    /// Inbound connections open now.
    pub connections: i64,
    /// Events it submitted to the core since start, every kind.
    pub events_total: u64,
}

/// Gather the summary now.
pub async fn collect(s: &AdminState) -> Status {
    let readiness = ready::check(s).await;
    let outbox = s.outbox().await.ok();
    let now_ms = crate::store::db::now_ms();
    let (ago, base) = s.history.baseline().unwrap_or_default();
    let apps = s
        .sources
        .counters
        .apps()
        .iter()
        .filter(|a| a.protocol.get().is_some())
        .map(|a| {
            let (d0, r0) = base.get(a.app()).copied().unwrap_or((0, 0));
            let (delivered, rejected) = (a.delivered.load(Relaxed), a.rejected.total());
            let ob = outbox.as_ref().map(|o| o.iter().find(|x| x.app == a.app()));
            AppStatus {
                app: a.app().to_owned(),
                protocol: a.protocol().to_owned(),
                problem: a.readiness((now_ms / 1000).max(0) as u64).err(),
                connections: a.link.open(),
                outbox: ob.map(|x| x.map_or(0, |x| x.depth)),
                oldest_seconds: ob
                    .flatten()
                    .and_then(|x| x.oldest_ms)
                    .map(|t| (now_ms - t).max(0) as f64 / 1000.0),
                delivered_recent: delivered.saturating_sub(d0),
                rejected_recent: rejected.saturating_sub(r0),
                delivered_total: delivered,
                rejected_total: rejected,
            }
        })
        .collect();
    let adapters = s
        .sources
        .adapters
        .all()
        .iter()
        .map(|ad| AdapterStatus {
            adapter: ad.name().to_owned(),
            kind: ad.kind().to_owned(),
            outbound: ad.is_outbound(),
            problem: ad.standby().map_or_else(|| ad.connection().err(), |_| None),
            singleton: ad.is_singleton(),
            standby: ad.standby(),
            connections: ad.connections(),
            events_total: ad.events().map(|e| e.1).sum(),
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        readiness,
        recent_seconds: ago.as_secs().min(WINDOW.as_secs()),
        apps,
        adapters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn history_keeps_a_minute_and_a_baseline() {
        let c = Counters::default();
        let h = History::default();
        let a = c.app("com.example.chat");
        for i in 0..30u64 {
            a.delivered.store(i * 10, Relaxed);
            h.sample(&c);
            tokio::time::advance(SAMPLE_EVERY).await;
        }
        let (ago, base) = h.baseline().expect("samples");
        assert!(ago >= WINDOW && ago < WINDOW + 2 * SAMPLE_EVERY, "{ago:?}");
        // 29 * 10 now; the baseline is 12-13 samples back.
        let d0 = base["com.example.chat"].0;
        assert!((160..=180).contains(&d0), "{d0}");
        assert!(h.0.lock().expect("lock").len() <= 14);
    }
}
