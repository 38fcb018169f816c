//! `pushbridge bench-http2`: notifications through the HTTP/2 sink into the
//! APNS simulator on loopback, over real TLS, with token auth (the
//! simulator verifies the JWT).
//!
//! The simulator and the sink run on separate single-threaded runtimes in
//! this process (one core each on a 2-core machine). Latency is measured
//! from handing a notification to the sink to its `delivered` report, so
//! it includes the sink's queue; with `--rate` the load is paced.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args as ClapArgs;
use hdrhistogram::Histogram;
use pushbridge::outcome::Completion;
use pushbridge::simulator::http2::{Options, Simulator};
use pushbridge::simulator::Recorder;
use pushbridge::sink::AppConfig;
use tokio::runtime::Runtime;

use super::bench_sink::{self, Feeding, Pki, Tally, Workload};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Notifications to send.
    #[arg(long, default_value_t = 200_000)]
    notifications: u64,
    /// Connections in the sink's pool.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Target rate in notifications/s (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// SETTINGS_MAX_CONCURRENT_STREAMS of the simulator.
    #[arg(long, default_value_t = 1000)]
    streams: u32,
    /// Serve the sink's metrics on an admin listener and scrape them every
    /// second while the load runs (what being watched costs).
    #[arg(long)]
    metrics: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.notifications == 0 || args.connections == 0 {
        bail!("--notifications and --connections must be at least 1");
    }
    let pki = Pki::new("pushbridge-bench-http2")?;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let p8 = pki.dir.path().join("AuthKey.p8");
    std::fs::write(&p8, kp.serialize_pem())?;

    let sim_rt = super::bench_runtime("simulator")?;
    let sink_rt = super::bench_runtime("sink")?;
    let sim = start_simulator(&sim_rt, &pki, &kp, args.streams)?;
    let app = app_config(&sim, &pki.ca, &p8, args.connections)?;
    let workload = Workload::new()?;
    let result = sink_rt.block_on(drive(&app, workload, &args))?;
    let accepted = sim.state().recorder.count();
    let conns = sim.state().connections.load(Ordering::Relaxed);
    sim_rt.block_on(sim.stop());
    print_summary(&args, &result, accepted, conns);
    result.tally.all_delivered(args.notifications)
}

/// The simulator on a free loopback port, on `rt`, verifying JWTs signed
/// with `kp` and allowing `streams` concurrent streams per connection.
fn start_simulator(rt: &Runtime, pki: &Pki, kp: &rcgen::KeyPair, streams: u32) -> anyhow::Result<Simulator> {
    let options = Options {
        jwt_key: Some(Arc::new(jsonwebtoken::DecodingKey::from_ec_pem(
            kp.public_key_pem().as_bytes(),
        )?)),
        team_id: Some("TEAM123456".into()),
        max_concurrent_streams: streams,
        ..Options::default()
    };
    let server = pushbridge::tls::server_config(pki.pki.server_identity()?, None, &[b"h2"])?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        anyhow::Ok(Simulator::start(listener, server, options, Recorder::new(false, None))?)
    })
}

/// The http2 app: token auth with the provider key in `p8` against `sim`,
/// trusting `ca`, with a pool of `connections`.
fn app_config(sim: &Simulator, ca: &Path, p8: &Path, connections: usize) -> anyhow::Result<AppConfig> {
    bench_sink::app(&format!(
        "[[apps]]\ntopic = \"{}\"\nprotocol = \"http2\"\nendpoint = \"{}\"\nca_file = {:?}\nkey_file = {:?}\nkey_id = \"KEYID12345\"\nteam_id = \"TEAM123456\"\nconnections = {}\n",
        bench_sink::TOPIC,
        sim.addr(),
        ca.display().to_string(),
        p8.display().to_string(),
        connections
    ))
}

/// What a run measured.
struct Measured {
    /// Hand-over to delivered report, in microseconds.
    hist: Histogram<u64>,
    tally: Tally,
    /// From the first hand-over to the last report.
    elapsed: Duration,
    /// `/metrics` scrapes answered during the run (`--metrics`).
    scrapes: Option<u64>,
}

/// Feed `n` notifications of `workload` to `app`'s sink at `rate` per second
/// (0: unpaced) and collect their reports into the latency histogram.
async fn drive(app: &AppConfig, workload: Workload, args: &Args) -> anyhow::Result<Measured> {
    let (n, rate) = (args.notifications, args.rate);
    // When each notification was handed over, in ns since `t0`.
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let t0 = Instant::now();
    let mut feeding = Feeding::start(app, workload, n, rate, {
        let sent_at = sent_at.clone();
        move |i| sent_at[i as usize].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed)
    })?;
    let stop_admin = tokio_util::sync::CancellationToken::new();
    let scraper = if args.metrics {
        let base = super::scrape::serve_sink_metrics(feeding.counters.clone(), stop_admin.clone()).await?;
        Some(super::scrape::Scraper::start(base))
    } else {
        None
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut tally = Tally::default();
    while tally.reported() < n {
        match tokio::time::timeout(Duration::from_secs(30), feeding.completions.recv()).await {
            Ok(Some(Completion::Settled { id, outcome, .. })) => {
                let now = t0.elapsed().as_nanos() as u64;
                let sent = sent_at[id as usize].load(Ordering::Relaxed);
                let _ = hist.record(((now.saturating_sub(sent)) / 1000).max(1));
                tally.count(&outcome);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => bail!("no report for 30 s ({} of {n} done)", tally.reported()),
        }
    }
    let elapsed = feeding.started.elapsed();
    let scrapes = match scraper {
        Some(s) => Some(s.stop().await?),
        None => None,
    };
    stop_admin.cancel();
    feeding.finish().await;
    Ok(Measured {
        hist,
        tally,
        elapsed,
        scrapes,
    })
}

/// The report: settings, outcomes, throughput, latency percentiles.
fn print_summary(args: &Args, m: &Measured, accepted: u64, conns: u64) {
    let ms = |q: f64| m.hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "bench-http2: {} notifications, {} connection(s), {} rate, token auth, TLS on loopback",
        args.notifications,
        args.connections,
        if args.rate == 0 {
            "unpaced".to_owned()
        } else {
            format!("{}/s", args.rate)
        }
    );
    println!(
        "delivered {}, other outcomes {}, simulator accepted {accepted} over {conns} connection(s)",
        m.tally.delivered, m.tally.other
    );
    if let Some(s) = m.scrapes {
        println!("metrics: admin listener on, /metrics scraped {s} time(s), every second");
    }
    println!(
        "throughput: {:.0} notifications/s ({:.2} s)",
        m.tally.delivered as f64 / m.elapsed.as_secs_f64(),
        m.elapsed.as_secs_f64()
    );
    println!(
        "latency (hand-over to delivered report): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        m.hist.max() as f64 / 1000.0
    );
}
