//! `--metrics` of the benchmarks: the admin listener on, and a scraper
//! reading `/metrics` every second over HTTP while the load runs, so a
//! run shows what being watched by Prometheus costs.

use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the scraper reads `/metrics` (Prometheus' usual interval is
/// 15 s or more; every second is a harsh case).
pub const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// A running scraper.
pub struct Scraper {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<u64>>,
}

impl Scraper {
    /// Scrape `base`/metrics every [`SCRAPE_EVERY`] (the first at once).
    pub fn start(base: String) -> Scraper {
        let stop = CancellationToken::new();
        let task = tokio::spawn(scrape(base, stop.clone()));
        Scraper { stop, task }
    }

    /// Stop; the number of scrapes answered.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.cancel();
        self.task.await.context("scraper task")?
    }
}

async fn scrape(base: String, stop: CancellationToken) -> anyhow::Result<u64> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = format!("{base}/metrics").parse()?;
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    let mut scrapes = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return Ok(scrapes),
        }
        let resp = client.get(uri.clone()).await.with_context(|| format!("GET {uri}"))?;
        anyhow::ensure!(resp.status().is_success(), "GET {uri}: {}", resp.status());
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(body.starts_with(b"# HELP"), "GET {uri}: not an exposition");
        scrapes += 1;
    }
}

/// Serve `/metrics` of a sink benchmark's counters (no store, no adapters)
/// on a free loopback port; returns its base URL.
pub async fn serve_sink_metrics(
    counters: std::sync::Arc<pushbridge::outcome::Counters>,
    stop: CancellationToken,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = pushbridge::admin::AdminState {
        sources: pushbridge::metrics::Sources {
            counters,
            store: Default::default(),
            adapters: Default::default(),
        },
        store: None,
        history: Default::default(),
        outbox_cache: Default::default(),
    };
    tokio::spawn(pushbridge::admin::serve(listener, state, stop));
    Ok(base)
}
