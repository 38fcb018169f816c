//! `pushbridge bench-http2`: notifications through the HTTP/2 sink into the
//! APNS simulator on loopback, over real TLS, with token auth (the
//! simulator verifies the JWT).
//!
//! The simulator and the sink run on separate single-threaded runtimes in
//! this process (one core each on a 2-core machine). Latency is measured
//! from handing a notification to the sink to its `delivered` report, so
//! it includes the sink's queue; with `--rate` the load is paced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args as ClapArgs;
use hdrhistogram::Histogram;
use pushbridge::config::Config;
use pushbridge::outcome::{Completion, Notification, Outcome};
use pushbridge::simulator::http2::{Options, Simulator};
use pushbridge::simulator::Recorder;
use pushbridge::tls::TestPki;
use pushbridge_api::{DeviceToken, Environment};

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
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.notifications == 0 || args.connections == 0 {
        bail!("--notifications and --connections must be at least 1");
    }
    let dir = tempfile::Builder::new().prefix("pushbridge-bench-http2").tempdir()?;
    let pki = TestPki::generate()?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem)?;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let p8 = dir.path().join("AuthKey.p8");
    std::fs::write(&p8, kp.serialize_pem())?;

    let sim_rt = super::bench_runtime("simulator")?;
    let sink_rt = super::bench_runtime("sink")?;
    let options = Options {
        jwt_key: Some(Arc::new(jsonwebtoken::DecodingKey::from_ec_pem(
            kp.public_key_pem().as_bytes(),
        )?)),
        team_id: Some("TEAM123456".into()),
        max_concurrent_streams: args.streams,
        ..Options::default()
    };
    let server = pushbridge::tls::server_config(pki.server_identity()?, None, &[b"h2"])?;
    let sim = sim_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        anyhow::Ok(Simulator::start(listener, server, options, Recorder::new(false, None))?)
    })?;
    let text = format!(
        "[[apps]]\ntopic = \"com.example.bench\"\nprotocol = \"http2\"\nendpoint = \"{}\"\nca_file = {:?}\nkey_file = {:?}\nkey_id = \"KEYID12345\"\nteam_id = \"TEAM123456\"\nconnections = {}\n",
        sim.addr(),
        ca.display().to_string(),
        p8.display().to_string(),
        args.connections
    );
    let config = Config::parse(&text, std::path::Path::new("<bench>")).context("bench config")?;

    let n = args.notifications;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let t0 = Instant::now();
    let expiration = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let payload: Arc<str> = Arc::from(
        r#"{"aps":{"alert":{"title":"bob","body":"are you coming to the meeting later today?"},"badge":3,"sound":"default","thread-id":"bob"}}"#,
    );
    let tokens: Vec<DeviceToken> = (0..1000u64)
        .map(|i| DeviceToken::parse(&format!("{:064x}", i + 1)))
        .collect::<Result<_, _>>()?;

    let result = sink_rt.block_on(async {
        let pushbridge::sink::Detached {
            input: tx,
            completions: mut rrx,
            task: sink_task,
            ..
        } = config.apps[0].spawn_detached()?;
        let feeder = tokio::spawn({
            let sent_at = sent_at.clone();
            let rate = args.rate;
            async move {
                let start = Instant::now();
                for i in 0..n {
                    if rate > 0 {
                        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let mut note = Notification::new(
                        i as i64,
                        "com.example.bench",
                        tokens[(i % 1000) as usize].clone(),
                        Environment::Production,
                        &payload,
                    );
                    note.expiration = expiration;
                    sent_at[i as usize].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    if tx.send(note).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let (mut delivered, mut other) = (0u64, 0u64);
        let started = Instant::now();
        while delivered + other < n {
            match tokio::time::timeout(Duration::from_secs(30), rrx.recv()).await {
                Ok(Some(Completion::Settled { id, outcome, .. })) => {
                    let now = t0.elapsed().as_nanos() as u64;
                    let sent = sent_at[id as usize].load(Ordering::Relaxed);
                    let _ = hist.record(((now.saturating_sub(sent)) / 1000).max(1));
                    if outcome == Outcome::Delivered {
                        delivered += 1;
                    } else {
                        other += 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => bail!("no report for 30 s ({} of {n} done)", delivered + other),
            }
        }
        let elapsed = started.elapsed();
        let _ = feeder.await;
        let _ = tokio::time::timeout(Duration::from_secs(10), sink_task).await;
        anyhow::Ok((hist, delivered, other, elapsed))
    })?;
    let (hist, delivered, other, elapsed) = result;
    let accepted = sim.state().recorder.count();
    let conns = sim.state().connections.load(Ordering::Relaxed);
    sim_rt.block_on(sim.stop());
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "bench-http2: {n} notifications, {} connection(s), {} rate, token auth, TLS on loopback",
        args.connections,
        if args.rate == 0 {
            "unpaced".to_owned()
        } else {
            format!("{}/s", args.rate)
        }
    );
    println!("delivered {delivered}, other outcomes {other}, simulator accepted {accepted} over {conns} connection(s)");
    println!(
        "throughput: {:.0} notifications/s ({:.2} s)",
        delivered as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "latency (hand-over to delivered report): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    );
    if delivered != n {
        bail!("{} notifications were not delivered", n - delivered);
    }
    Ok(())
}
