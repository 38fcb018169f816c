//! `pushbridge bench-binary`: notifications through the legacy binary sink
//! into the binary simulator on loopback, over TLS with a client
//! certificate.
//!
//! The simulator and the sink run on separate single-threaded runtimes in
//! this process. Throughput is counted from the first notification handed
//! to the sink until the simulator has decoded and recorded the last one;
//! the sink's own `delivered` reports follow `binary_confirm_ms` later (the
//! protocol has no positive acknowledgement). Memory is the process's peak
//! resident set.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args as ClapArgs;
use pushbridge::config::Config;
use pushbridge::outcome::{Completion, Notification, Outcome};
use pushbridge::simulator::binary::{Options, Simulator};
use pushbridge::simulator::Recorder;
use pushbridge::tls::TestPki;
use pushbridge_api::{DeviceToken, Environment};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Notifications to send.
    #[arg(long, default_value_t = 1_000_000)]
    notifications: u64,
    /// Connections in the sink's pool.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Notification format: 2 (frames) or 1 (enhanced).
    #[arg(long, default_value_t = 2)]
    command: u8,
}

/// Peak resident set size in MiB (Linux), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.notifications == 0 || args.connections == 0 {
        bail!("--notifications and --connections must be at least 1");
    }
    let dir = tempfile::Builder::new().prefix("pushbridge-bench-binary").tempdir()?;
    let pki = TestPki::generate()?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem)?;
    let (cert, key) = pki.issue_client("com.example.bench")?;
    let client = dir.path().join("client.pem");
    std::fs::write(&client, format!("{cert}{key}"))?;

    let sim_rt = super::bench_runtime("simulator")?;
    let sink_rt = super::bench_runtime("sink")?;
    let server = pushbridge::tls::server_config(pki.server_identity()?, Some(&[pki.ca_der()]), &[])?;
    let sim = sim_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        anyhow::Ok(Simulator::start(
            listener,
            None,
            server,
            Options::default(),
            Recorder::new(false, None),
        )?)
    })?;
    let text = format!(
        "[[apps]]\ntopic = \"com.example.bench\"\nprotocol = \"binary\"\nendpoint = \"{}\"\nca_file = {:?}\ncert_file = {:?}\nconnections = {}\nbinary_command = {}\n",
        sim.addr(),
        ca.display().to_string(),
        client.display().to_string(),
        args.connections,
        args.command,
    );
    let config = Config::parse(&text, std::path::Path::new("<bench>")).context("bench config")?;

    let n = args.notifications;
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
    let state = sim.state().clone();
    let (recorded_in, delivered, other) = sink_rt.block_on(async {
        let pushbridge::sink::Detached {
            input: tx,
            completions: mut rrx,
            task: sink_task,
            ..
        } = config.apps[0].spawn_detached()?;
        let started = Instant::now();
        let feeder = tokio::spawn(async move {
            for i in 0..n {
                let mut note = Notification::new(
                    i as i64,
                    "com.example.bench",
                    tokens[(i % 1000) as usize].clone(),
                    Environment::Production,
                    &payload,
                );
                note.expiration = expiration;
                if tx.send(note).await.is_err() {
                    break;
                }
            }
        });
        // Drain reports while waiting for the simulator to see everything.
        let (mut delivered, mut other) = (0u64, 0u64);
        let mut recorded_in = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        while delivered + other < n {
            if recorded_in.is_none() && state.recorder.count() >= n {
                recorded_in = Some(started.elapsed());
            }
            match tokio::time::timeout(Duration::from_millis(5), rrx.recv()).await {
                Ok(Some(Completion::Settled { outcome, .. })) => {
                    if outcome == Outcome::Delivered {
                        delivered += 1;
                    } else {
                        other += 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    if Instant::now() > deadline {
                        bail!("gave up after 600 s with {} of {n} reported", delivered + other);
                    }
                }
            }
        }
        let recorded_in = recorded_in.unwrap_or_else(|| started.elapsed());
        let _ = feeder.await;
        let _ = tokio::time::timeout(Duration::from_secs(10), sink_task).await;
        anyhow::Ok((recorded_in, delivered, other))
    })?;
    let accepted = state.recorder.count();
    let conns = state.connections.load(Ordering::Relaxed);
    sim_rt.block_on(sim.stop());
    println!(
        "bench-binary: {n} notifications, command {}, {} connection(s), client-certificate TLS on loopback",
        args.command, args.connections
    );
    println!(
        "simulator accepted {accepted} over {conns} connection(s); sink reported {delivered} delivered, {other} other"
    );
    println!(
        "throughput: {:.0} notifications/s ({:.2} s until the simulator had them all)",
        n as f64 / recorded_in.as_secs_f64(),
        recorded_in.as_secs_f64()
    );
    if let Some(mib) = peak_rss_mib() {
        println!("memory: peak resident set {mib:.0} MiB (simulator and sink together)");
    }
    if delivered != n {
        bail!("{} notifications were not delivered", n - delivered);
    }
    Ok(())
}
