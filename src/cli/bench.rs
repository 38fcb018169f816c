//! `pushbridge bench`: a load generator for the line protocol.
//!
//! Starts a gateway in this process (a fresh store in a temporary directory,
//! the outbox on, one `log` app writing to a file), registers one device for
//! each of `--users` offline users, then opens `--connections` connections
//! that pipeline `MSG` commands (at most `--pipeline` unanswered each) and
//! measures, per command, the time from writing it to reading its `OK 1`.
//! With `--rate` the load is paced (open loop) instead of as fast as possible.
//! With `--target` it loads a gateway running elsewhere instead (its users
//! registered as `line:u0`…, e.g. by `bench-fill`), or several sharing one
//! PostgreSQL store (`--target A,B`: connections spread over them).
//! With `--coalesce N` the gateway coalesces (`[policy] coalesce = N`): the
//! bench waits for the last windows to end and reports how many pushes the
//! messages became (their titles' counts must add up to the messages).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args as ClapArgs;
use hdrhistogram::Histogram;
use pushbridge::config::Config;
use pushbridge::outcome::Snapshot;
use pushbridge::store::Db;
use pushbridge_api::{DeviceToken, Environment, UserId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Concurrent line-protocol connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Messages to send in total.
    #[arg(long, default_value_t = 300_000)]
    messages: usize,
    /// Offline users with one registered device each (messages go round-robin).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Unanswered commands allowed per connection.
    #[arg(long, default_value_t = 64)]
    pipeline: usize,
    /// Target total rate in messages/s (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Store durability: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Directory for the store and the log sink's file (default: a temporary one).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Turn the admin listener on and scrape `/metrics` every second while
    /// the load runs (what being watched costs).
    #[arg(long)]
    metrics: bool,
    /// `[policy] coalesce` in seconds (0: off): messages per user and
    /// sender within this window become one push.
    #[arg(long, default_value_t = 0)]
    coalesce: u64,
    /// PostgreSQL store (`postgres://…`, `[store] url`) instead of a fresh
    /// SQLite file; the database must hold no devices and no outbox yet.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Load a gateway already running elsewhere (its line adapter's
    /// `host:port`, its users registered as `line:u0`… e.g. by
    /// `bench-fill`) instead of starting one in this process; several
    /// gateways sharing one PostgreSQL store as `HOST:PORT,HOST:PORT…`
    /// (connection i goes to gateway i mod their number).
    #[arg(long, value_name = "HOST:PORT[,…]", conflicts_with_all = ["dir", "metrics", "coalesce", "store"])]
    target: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(target) = &args.target {
        return run_external(&args, target);
    }
    let Setup {
        _tmp,
        out_path,
        port,
        admin,
        config,
    } = setup(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let gateway = tokio::spawn(pushbridge::gateway::run(config, async {
            let _ = stop_rx.await;
        }));
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr).await?;
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
        let scraper = admin.map(|a| super::scrape::Scraper::start(format!("http://127.0.0.1:{a}")));
        let (sent, elapsed) = load(&args, std::slice::from_ref(&addr), &hist).await?;
        if let Some(s) = scraper {
            println!(
                "metrics: admin listener on, /metrics scraped {} time(s), every second",
                s.stop().await?
            );
        }
        if args.coalesce > 0 {
            // The last windows end within `coalesce` seconds; then the
            // pushes are written.
            tokio::time::sleep(Duration::from_secs(args.coalesce) + Duration::from_secs(2)).await;
        }
        let _ = stop_tx.send(());
        let snapshot = gateway.await.context("gateway task")??;
        let lines = std::fs::read(&out_path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        let h = hist.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?;
        print_summary(&args, sent, elapsed, &h, lines, &snapshot);
        let merged = if args.coalesce > 0 {
            let merged = coalesced_messages(&out_path)?;
            println!(
                "coalesce={} s: {sent} messages became {lines} pushes (their titles count {merged} messages)",
                args.coalesce
            );
            merged
        } else {
            lines
        };
        if merged != sent {
            bail!("{sent} messages accepted but {merged} written as notifications");
        }
        Ok(())
    })
}

/// Load the gateway at `target` and print what `run` prints of the load.
fn run_external(args: &Args, target: &str) -> anyhow::Result<()> {
    if args.connections == 0 || args.messages == 0 || args.users == 0 || args.pipeline == 0 {
        bail!("--connections, --messages, --users and --pipeline must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let targets: Vec<String> = target.split(',').map(|t| t.trim().to_owned()).collect();
    rt.block_on(async move {
        for t in &targets {
            wait_listening(t).await?;
        }
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
        let (sent, elapsed) = load(args, &targets, &hist).await?;
        let h = hist.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?;
        print_load(args, sent, elapsed, &h);
        Ok(())
    })
}

/// A bench's gateway, ready to start.
struct Setup {
    /// The temporary directory (the store and the log sink's file unless
    /// `--dir`); removed when dropped, after the run.
    _tmp: tempfile::TempDir,
    /// The log sink's JSON lines, one a notification.
    out_path: PathBuf,
    /// The line adapter's loopback port.
    port: u16,
    /// The admin listener's port (`--metrics`).
    admin: Option<u16>,
    config: Config,
}

/// Check `args`, make a fresh store with `--users` registered devices and
/// the gateway's config around it.
fn setup(args: &Args) -> anyhow::Result<Setup> {
    if args.connections == 0 || args.messages == 0 || args.users == 0 || args.pipeline == 0 {
        bail!("--connections, --messages, --users and --pipeline must be at least 1");
    }
    if !matches!(args.synchronous.as_str(), "full" | "normal") {
        bail!("--synchronous must be full or normal, got {:?}", args.synchronous);
    }
    let tmp = tempfile::Builder::new().prefix("pushbridge-bench").tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let db_path = dir.join("bench.db");
    let out_path = dir.join("pushes.jsonl");
    let _ = std::fs::remove_file(&db_path);
    let _ = std::fs::remove_file(&out_path);

    // A free loopback port for the line adapter.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let text = format!(
        "[store]\npath = {db:?}\nsynchronous = {sync:?}\n\n[[apps]]\ntopic = \"com.example.bench\"\nprotocol = \"log\"\noutput = {out:?}\n\n[[adapters.line]]\nlisten = \"127.0.0.1:{port}\"\npipeline = {pl}\nmax_connections = {mc}\n",
        db = db_path.display().to_string(),
        sync = args.synchronous,
        out = out_path.display().to_string(),
        pl = args.pipeline,
        mc = args.connections + 16,
    );
    let admin = if args.metrics {
        Some(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    } else {
        None
    };
    let text = match admin {
        Some(a) => format!("{text}\n[admin]\nlisten = \"127.0.0.1:{a}\"\n"),
        None => text,
    };
    let text = match args.coalesce {
        0 => text,
        n => format!("{text}\n[policy]\ncoalesce = {n}\n"),
    };
    let text = match &args.store {
        None => text,
        Some(url) => text.replacen(
            &format!("path = {:?}\n", db_path.display().to_string()),
            &format!("url = {url:?}\n"),
            1,
        ),
    };
    let config = Config::parse(&text, std::path::Path::new("<bench>"))?;
    register_users(&config.store, args.users)?;
    Ok(Setup {
        _tmp: tmp,
        out_path,
        port,
        admin,
        config,
    })
}

/// The messages the log sink's pushes at `path` stand for: a coalesced
/// push's title ends in ` (n)` for n messages, any other is one.
fn coalesced_messages(path: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path).context("reading the pushes")?;
    let mut total = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("a push is not JSON")?;
        let title = v["payload"]["aps"]["alert"]["title"].as_str().unwrap_or("");
        let n = title
            .strip_suffix(')')
            .and_then(|t| t.rsplit_once(" ("))
            .and_then(|(_, n)| n.parse::<usize>().ok())
            .unwrap_or(1);
        total += n;
    }
    Ok(total)
}

/// Register one device for each of `users` users (`line:u0`…) in the
/// (empty) store, in one transaction.
fn register_users(store: &pushbridge::config::StoreConfig, users: usize) -> anyhow::Result<()> {
    let db = Db::open_config(store)?;
    if !db.all_devices(None)?.is_empty() || !db.outbox_counts()?.is_empty() {
        bail!(
            "the store {} is not empty (the bench needs a fresh one)",
            store.describe()
        );
    }
    db.begin()?;
    for u in 0..users {
        let user = UserId::parse(&format!("line:u{u}")).map_err(|e| anyhow::anyhow!(e))?;
        let token = DeviceToken::parse(&format!("{:064x}", u + 1)).map_err(|e| anyhow::anyhow!(e))?;
        db.register(&user, &token, "com.example.bench", Environment::Production, 0)?;
    }
    db.commit()?;
    Ok(())
}

/// Wait (up to about 2 s) until the gateway accepts connections on `addr`.
async fn wait_listening(addr: &str) -> anyhow::Result<()> {
    let mut tries = 0;
    while TcpStream::connect(addr).await.is_err() {
        tries += 1;
        if tries > 200 {
            bail!("gateway did not start listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Run the `--connections` connections to `addrs` (connection i to
/// `addrs[i % len]`), sharing `--messages` and `--rate` between them; the
/// messages accepted and how long it took.
async fn load(args: &Args, addrs: &[String], hist: &Arc<Mutex<Histogram<u64>>>) -> anyhow::Result<(usize, Duration)> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let n = args.messages / args.connections + usize::from(c < args.messages % args.connections);
        let per_conn_rate = if args.rate == 0 {
            0.0
        } else {
            args.rate as f64 / args.connections as f64
        };
        tasks.push(tokio::spawn(connection(
            addrs[c % addrs.len()].clone(),
            c,
            n,
            args.users,
            args.pipeline,
            per_conn_rate,
            hist.clone(),
        )));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.context("bench connection panicked")??;
    }
    Ok((sent, start.elapsed()))
}

/// The report: settings, accepted messages/s, write→OK latency percentiles,
/// what the log sink wrote and the gateway's counters.
fn print_summary(args: &Args, sent: usize, elapsed: Duration, h: &Histogram<u64>, lines: usize, snapshot: &Snapshot) {
    print_load(args, sent, elapsed, h);
    println!("log sink wrote {lines} notifications; gateway counters: {snapshot:?}");
}

/// Settings, accepted messages/s and write→OK latency percentiles.
fn print_load(args: &Args, sent: usize, elapsed: Duration, h: &Histogram<u64>) {
    println!(
        "connections={} pipeline={} users={} rate={} synchronous={}",
        args.connections,
        args.pipeline,
        args.users,
        if args.rate == 0 {
            "max".to_string()
        } else {
            args.rate.to_string()
        },
        args.synchronous
    );
    println!(
        "accepted {sent} messages in {:.3} s: {:.0} messages/s",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency write->OK: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

/// One connection: writes `n` MSG commands (paced when `rate` > 0) and reads
/// their replies, recording write→OK latency.
async fn connection(
    addr: String,
    index: usize,
    n: usize,
    users: usize,
    pipeline: usize,
    rate: f64,
    hist: Arc<Mutex<Histogram<u64>>>,
) -> anyhow::Result<usize> {
    let stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let window = Arc::new(Semaphore::new(pipeline));
    let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::new(Mutex::new(VecDeque::with_capacity(pipeline)));

    let reader = spawn_reader(read, n, window.clone(), sent_at.clone(), hist);

    let started = Instant::now();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut i = 0;
    while i < n {
        // Paced: send what is due by now; unpaced: as much as the window allows.
        let due = if rate > 0.0 {
            ((started.elapsed().as_secs_f64() * rate) as usize).min(n)
        } else {
            n
        };
        if due <= i {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let Ok(permit) = window.acquire().await else {
            break; // the reader failed: its error is returned below
        };
        permit.forget();
        let mut batch = 1;
        while batch < due - i && window.try_acquire().map(|p| p.forget()).is_ok() {
            batch += 1;
        }
        buf.clear();
        let now = Instant::now();
        {
            let mut q = sent_at.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            for k in 0..batch {
                let user = (index * 7919 + i + k) % users;
                buf.extend_from_slice(format!("MSG bench u{user} benchmark message number {}\n", i + k).as_bytes());
                q.push_back(now);
            }
        }
        write.write_all(&buf).await?;
        i += batch;
    }
    let got = reader.await.context("reader panicked")??;
    write.write_all(b"QUIT\n").await?;
    Ok(got)
}

/// The replies of one connection: `n` of them, each `OK n` (n ≥ 1),
/// their write→OK latencies recorded in `hist`. A failure closes `window`
/// (the writer stops waiting for replies) and is the task's result.
fn spawn_reader(
    read: tokio::net::tcp::OwnedReadHalf,
    n: usize,
    window: Arc<Semaphore>,
    sent_at: Arc<Mutex<VecDeque<Instant>>>,
    hist: Arc<Mutex<Histogram<u64>>>,
) -> tokio::task::JoinHandle<anyhow::Result<usize>> {
    let closer = window.clone();
    let read_all = async move {
        let mut lines = BufReader::new(read).lines();
        let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..n {
            let line = lines.next_line().await?.context("gateway closed the connection")?;
            let t0 = sent_at
                .lock()
                .map_err(|_| anyhow::anyhow!("lock"))?
                .pop_front()
                .context("reply without a command")?;
            // `OK n`: queued for the user's n devices (bench-fill may
            // register several per user).
            if line
                .strip_prefix("OK ")
                .and_then(|n| n.parse::<u32>().ok())
                .is_none_or(|n| n == 0)
            {
                bail!("unexpected reply {line:?}");
            }
            local.saturating_record(t0.elapsed().as_micros().max(1) as u64);
            window.add_permits(1);
        }
        hist.lock().map_err(|_| anyhow::anyhow!("lock"))?.add(&local)?;
        anyhow::Ok(n)
    };
    tokio::spawn(async move {
        let r = read_all.await;
        if r.is_err() {
            closer.close(); // the writer stops waiting for replies
        }
        r
    })
}
