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

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args as ClapArgs;
use pushbridge::outcome::Completion;
use pushbridge::simulator::binary::{Options, Simulator, State};
use pushbridge::simulator::Recorder;
use pushbridge::sink::AppConfig;
use tokio::runtime::Runtime;

use super::bench_sink::{self, Feeding, Pki, Tally, Workload};

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
    let pki = Pki::new("pushbridge-bench-binary")?;
    let (cert, key) = pki.pki.issue_client(bench_sink::TOPIC)?;
    let client = pki.dir.path().join("client.pem");
    std::fs::write(&client, format!("{cert}{key}"))?;

    let sim_rt = super::bench_runtime("simulator")?;
    let sink_rt = super::bench_runtime("sink")?;
    let sim = start_simulator(&sim_rt, &pki)?;
    let app = app_config(&sim, &pki.ca, &client, &args)?;
    let workload = Workload::new()?;
    let state = sim.state().clone();
    let n = args.notifications;
    let (recorded_in, tally) = sink_rt.block_on(async {
        let mut feeding = Feeding::start(&app, workload, n, 0, |_| {})?;
        let measured = collect(&mut feeding, &state, n).await?;
        feeding.finish().await;
        anyhow::Ok(measured)
    })?;
    let accepted = state.recorder.count();
    let conns = state.connections.load(Ordering::Relaxed);
    sim_rt.block_on(sim.stop());
    print_summary(&args, recorded_in, &tally, accepted, conns);
    tally.all_delivered(n)
}

/// The binary simulator on a free loopback port, on `rt`, requiring client
/// certificates of `pki`.
fn start_simulator(rt: &Runtime, pki: &Pki) -> anyhow::Result<Simulator> {
    let server = pushbridge::tls::server_config(pki.pki.server_identity()?, Some(&[pki.pki.ca_der()]), &[])?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        anyhow::Ok(Simulator::start(
            listener,
            None,
            server,
            Options::default(),
            Recorder::new(false, None),
        )?)
    })
}

/// The binary app: the client certificate in `client` against `sim`,
/// trusting `ca`, with `--connections` and `--command`.
fn app_config(sim: &Simulator, ca: &Path, client: &Path, args: &Args) -> anyhow::Result<AppConfig> {
    bench_sink::app(&format!(
        "[[apps]]\ntopic = \"{}\"\nprotocol = \"binary\"\nendpoint = \"{}\"\nca_file = {:?}\ncert_file = {:?}\nconnections = {}\nbinary_command = {}\n",
        bench_sink::TOPIC,
        sim.addr(),
        ca.display().to_string(),
        client.display().to_string(),
        args.connections,
        args.command,
    ))
}

/// Drain the sink's reports until all `n` are in, noting when the
/// simulator (`state`) had recorded all `n`: that time, and the tally.
async fn collect(feeding: &mut Feeding, state: &State, n: u64) -> anyhow::Result<(Duration, Tally)> {
    let mut tally = Tally::default();
    let mut recorded_in = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while tally.reported() < n {
        if recorded_in.is_none() && state.recorder.count() >= n {
            recorded_in = Some(feeding.started.elapsed());
        }
        match tokio::time::timeout(Duration::from_millis(5), feeding.completions.recv()).await {
            Ok(Some(Completion::Settled { outcome, .. })) => tally.count(&outcome),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                if Instant::now() > deadline {
                    bail!("gave up after 600 s with {} of {n} reported", tally.reported());
                }
            }
        }
    }
    Ok((recorded_in.unwrap_or_else(|| feeding.started.elapsed()), tally))
}

/// The report: settings, outcomes, throughput, peak memory.
fn print_summary(args: &Args, recorded_in: Duration, tally: &Tally, accepted: u64, conns: u64) {
    println!(
        "bench-binary: {} notifications, command {}, {} connection(s), client-certificate TLS on loopback",
        args.notifications, args.command, args.connections
    );
    println!(
        "simulator accepted {accepted} over {conns} connection(s); sink reported {} delivered, {} other",
        tally.delivered, tally.other
    );
    println!(
        "throughput: {:.0} notifications/s ({:.2} s until the simulator had them all)",
        args.notifications as f64 / recorded_in.as_secs_f64(),
        recorded_in.as_secs_f64()
    );
    if let Some(mib) = peak_rss_mib() {
        println!("memory: peak resident set {mib:.0} MiB (simulator and sink together)");
    }
}
