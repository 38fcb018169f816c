//! Command-line interface: `run`, `check`, `status`, `devices`, `push`, `simulate`,
//! `store`, `bench`, `bench-http2`, `bench-binary`.

mod bench;
mod bench_binary;
mod bench_fill;
mod bench_h2_reference;
mod bench_http2;
mod bench_sink;
mod devices;
mod logging;
mod push;
mod scrape;
mod simulate;
mod status;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pushbridge::gateway::GatewayError;
use pushbridge::Config;

#[derive(Parser)]
#[command(
    name = "pushbridge",
    version,
    about = "Turns instant messages for offline users into Apple push notifications",
    long_about = None,
    after_help = "Logs go to stderr. Level: --log-level, else RUST_LOG, else the config's [log] level, else info. \
                  Format: --log-format, else the config's [log] format, else text. \
                  The config's [log] is read by run, check and devices only. \
                  run and check exit 78 (EX_CONFIG) when the configuration is refused."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    log: logging::LogArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway until SIGINT or SIGTERM; SIGHUP reloads the config
    /// file (credentials, [policy] and [log] level are applied live; other
    /// changes are logged as needing a restart; an invalid file is refused
    /// with the message `check` gives, and the running config stays).
    /// Exits 78 (EX_CONFIG) when the configuration or an app's credentials
    /// are refused at start, 1 on any other error.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and every app's credentials (certificate
    /// validity, key match and type, .p8 key, key and team ids, CA files),
    /// print a WARNING for a certificate expiring within 30 days, and a summary.
    /// Exits 78 (EX_CONFIG) when the configuration is refused.
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Print a running gateway's state (per app: ready?, connections,
    /// outbox depth and oldest entry, delivered/rejected in the last
    /// minute; per adapter: connected?), read from its admin listener.
    /// Exits 1 when the gateway is not ready.
    Status(status::Args),
    /// List, add or remove registered devices in the store.
    Devices {
        /// Configuration file (for the store path and the apps).
        #[arg(short, long, default_value = "config.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: devices::Action,
    },
    /// Store maintenance: `store copy --from PATH_OR_URL --to PATH_OR_URL`
    /// moves every row between SQLite and PostgreSQL.
    Store {
        #[command(subcommand)]
        action: store::Action,
    },
    /// Load generator: pipelines MSG commands over line-protocol connections
    /// into a gateway it starts in-process (outbox on, log sink to a file),
    /// and prints accepted messages/s and latency percentiles.
    Bench(bench::Args),
    /// Send one notification through a configured http2 app and print
    /// APNS's answer (status, reason, apns-id).
    Push(push::Args),
    /// Run the APNS simulator: a local stand-in for Apple's HTTP/2 provider
    /// API (TLS, Apple's validation, status codes and reasons), printing
    /// each accepted notification as a JSON line.
    Simulate(Box<simulate::Args>),
    /// Benchmark the HTTP/2 sink: notifications through one (or --connections)
    /// TLS connection(s) into the simulator in this process; prints
    /// notifications/s and latency percentiles.
    #[command(name = "bench-http2")]
    BenchHttp2(bench_http2::Args),
    /// Benchmark the legacy binary sink: notifications through one (or
    /// --connections) TLS connection(s) into the binary simulator in this
    /// process; prints notifications/s and peak memory.
    #[command(name = "bench-binary")]
    BenchBinary(bench_binary::Args),
    /// Prepare a store for bench/peers/run: register devices and queue
    /// notifications straight through the store (no line protocol).
    #[command(name = "bench-fill", hide = true)]
    BenchFill(bench_fill::Args),
    /// For bench/peers/run: the h2 crate's own ceiling, a minimal HTTP/2
    /// client POSTing one body over one connection, as h2load does.
    #[command(name = "bench-h2-reference", hide = true)]
    BenchH2Reference(bench_h2_reference::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The config's [log] is read first, so that checking the rest logs in
    // the configured format.
    let config_log = match &cli.command {
        Cmd::Run { config } | Cmd::Check { config } | Cmd::Devices { config, .. } => {
            pushbridge::config::LogConfig::peek(config)
        }
        _ => None,
    };
    let level = logging::init(&cli.log, config_log.as_ref());
    let config_command = matches!(cli.command, Cmd::Run { .. } | Cmd::Check { .. });
    let result = match cli.command {
        Cmd::Run { config } => run(config, level),
        Cmd::Check { config } => check(config),
        Cmd::Devices { config, action } => devices::run(&config, action),
        Cmd::Store { action } => store::run(action),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Push(args) => push::run(args),
        Cmd::Status(args) => status::run(args),
        Cmd::Simulate(args) => simulate::run(*args),
        Cmd::BenchHttp2(args) => bench_http2::run(args),
        Cmd::BenchBinary(args) => bench_binary::run(args),
        Cmd::BenchFill(args) => bench_fill::run(args),
        Cmd::BenchH2Reference(args) => bench_h2_reference::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pushbridge: {e:#}");
            if config_command && config_refused(&e) {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Exit status of `run` and `check` when the configuration or its
/// credentials are refused: `EX_CONFIG` of sysexits.h. The systemd unit
/// does not restart on it (`RestartPreventExitStatus=78`): retrying cannot
/// fix a bad config or an expired certificate.
const EX_CONFIG: u8 = 78;

/// Whether `e` says the configuration or an app's credentials were refused
/// at start ([`pushbridge::config::ConfigError`], or a sink that could not
/// be set up: [`GatewayError::Sink`]), rather than a failure while running.
fn config_refused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<pushbridge::config::ConfigError>().is_some()
        || matches!(e.downcast_ref::<GatewayError>(), Some(GatewayError::Sink { .. }))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(path: PathBuf, level: logging::LevelControl) -> anyhow::Result<()> {
    let (config, text) = Config::load_with_text(&path)?;
    if let Some(by) = level.overridden_by() {
        tracing::info!("log level set by {by}; [log] level is not used");
    }
    runtime()?.block_on(async move {
        #[cfg(unix)]
        let reload = Some(pushbridge::reload::Reload::on_sighup(path, text, Some(level.setter()))?);
        #[cfg(not(unix))]
        let reload = {
            let _ = (path, text, level);
            None
        };
        pushbridge::gateway::run_with_reload(config, shutdown_signal(), reload).await?;
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `check`'s schema line: the store's schema version and how many
/// migrations a start would apply (the store is only read). `Err` holds
/// the line too when the store cannot be read (a PostgreSQL server that
/// cannot be reached, a SQLite file that cannot be opened): `run` would
/// fail on it as well, so `check` must not pass.
fn schema_line(store: &pushbridge::config::StoreConfig) -> Result<String, String> {
    match pushbridge::store::schema_status(store) {
        Ok(s) if s.pending() == 0 => Ok(format!("schema: version {} (up to date)", s.version)),
        Ok(s) => Ok(format!(
            "schema: version {}, {} migration(s) pending (applied at the next start)",
            s.version,
            s.pending()
        )),
        Err(e) => Err(format!("schema: unknown ({e})")),
    }
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    println!("{}: OK", path.display());
    for w in config.credential_warnings() {
        println!("WARNING: {w}");
    }
    match &config.store.url {
        None => println!(
            "store: {} (synchronous = {:?})",
            config.store.path.display(),
            config.store.synchronous
        ),
        Some(_) => println!(
            "store: {} (PostgreSQL, lease = {} s)",
            config.store.describe(),
            config.store.lease.as_secs()
        ),
    }
    let schema = schema_line(&config.store);
    println!("{}", schema.as_ref().unwrap_or_else(|line| line));
    for (i, app) in config.apps.iter().enumerate() {
        let default = if i == 0 { " (default)" } else { "" };
        use pushbridge::sink::SinkConfig;
        let endpoint = match &app.sink {
            SinkConfig::Log(_) => None,
            SinkConfig::Http2(c) => c.endpoint.clone(),
            SinkConfig::Binary(c) => c.endpoint.clone(),
        };
        let target = match &app.sink {
            SinkConfig::Log(c) => match &c.output {
                Some(p) => format!("JSON lines to {}", p.display()),
                None => "JSON lines to stdout".to_owned(),
            },
            _ => endpoint.unwrap_or_else(|| "Apple".to_owned()),
        };
        println!(
            "app: {}{default}: {} {}, {target}, payload limit {} bytes",
            app.topic,
            app.sink.protocol().as_str(),
            app.environment,
            app.sink.payload_limit()
        );
    }
    println!(
        "policy: privacy = {}, sound = {:?}, ttl = {} s, collapse = {}, coalesce = {} s",
        config.policy.privacy, config.policy.sound, config.policy.ttl, config.policy.collapse, config.policy.coalesce
    );
    for (kind, name) in config.adapters.instances() {
        println!("adapter: {kind} ({name})");
    }
    if config.adapters.instances().is_empty() {
        println!("adapter: none configured (nothing will feed the gateway)");
    }
    // The summary is printed whole first, so one run shows everything.
    if let Err(line) = schema {
        anyhow::bail!("the store cannot be read: {line}");
    }
    Ok(())
}

/// A one-worker runtime, so that a benchmark's simulator and sink each get a
/// core of their own instead of competing inside one scheduler.
fn bench_runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushbridge::config::ConfigError;
    use pushbridge::sink::SinkError;

    #[test]
    fn config_and_credential_refusals_are_ex_config_other_failures_not() {
        let config = anyhow::Error::from(ConfigError::Invalid("no [[apps]] configured".into()));
        assert!(config_refused(&config));
        assert!(config_refused(&config.context("loading config.toml")));
        let sink = GatewayError::Sink {
            app: "com.example.chat".into(),
            source: SinkError::config("cert_file", "client certificate expired on 2024-02-01"),
        };
        assert!(config_refused(&anyhow::Error::from(sink)));
        let thread = GatewayError::Thread(std::io::Error::other("no threads left"));
        assert!(!config_refused(&anyhow::Error::from(thread)));
        assert!(!config_refused(&anyhow::anyhow!("address in use")));
    }
}
