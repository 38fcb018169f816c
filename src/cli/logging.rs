//! Logging setup: `tracing-subscriber` writing to stderr (stdout carries
//! the `log` sink's JSON lines), as text or JSON lines, with a level filter
//! that `SIGHUP` can replace (a `reload` layer).
//!
//! Precedence, highest first: `--log-level` / `--log-format`, then
//! `RUST_LOG` (level only), then the config's `[log]`, then `info` / text.

use std::sync::Arc;

use clap::ValueEnum;
use pushbridge::config::{LogConfig, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// `--log-format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The log options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr [default: the config's `[log] format`, else text].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<FormatArg>,
    /// Log filter (a level such as `debug`, or `tracing` directives such as
    /// `info,pushbridge::sink=debug`) [default: `RUST_LOG`, else the
    /// config's `[log] level`, else info]. When given, or when `RUST_LOG` is
    /// set, `SIGHUP` leaves the level alone.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
}

/// Where the level came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LevelSource {
    Cli,
    Env,
    Config,
}

/// The running subscriber's level filter.
#[derive(Clone)]
pub struct LevelControl {
    handle: reload::Handle<EnvFilter, Registry>,
    source: LevelSource,
}

impl LevelControl {
    /// Apply the config's `[log] level` (on `SIGHUP`): `Ok(false)` when
    /// `--log-level` or `RUST_LOG` set the level (they win; nothing changes).
    pub fn apply(&self, level: &str) -> Result<bool, String> {
        if self.source != LevelSource::Config {
            return Ok(false);
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// What overrides the config's level, if anything.
    pub fn overridden_by(&self) -> Option<&'static str> {
        match self.source {
            LevelSource::Cli => Some("--log-level"),
            LevelSource::Env => Some("RUST_LOG"),
            LevelSource::Config => None,
        }
    }

    /// As a closure for the gateway's reload: `Ok(true)` when applied.
    pub fn setter(self) -> pushbridge::reload::LogLevelSetter {
        Arc::new(move |level: &str| self.apply(level))
    }
}

/// Pick the filter: CLI, then `RUST_LOG`, then the config, then `info`.
/// A filter that does not parse falls back to `info` with a warning.
fn choose_filter(args: &LogArgs, config: Option<&LogConfig>) -> (EnvFilter, LevelSource, Option<String>) {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let (text, source) = match (&args.log_level, env) {
        (Some(l), _) => (l.clone(), LevelSource::Cli),
        (None, Some(e)) => (e, LevelSource::Env),
        (None, None) => (
            config.map_or_else(|| "info".to_owned(), |c| c.level.clone()),
            LevelSource::Config,
        ),
    };
    match EnvFilter::try_new(&text) {
        Ok(f) => (f, source, None),
        Err(e) => (
            EnvFilter::new("info"),
            source,
            Some(format!("log filter {text:?}: {e}; logging at info")),
        ),
    }
}

/// Start logging; `config` is the config file's `[log]` when the command
/// has one. Returns the control `SIGHUP` uses to change the level.
pub fn init(args: &LogArgs, config: Option<&LogConfig>) -> LevelControl {
    let format = match (args.log_format, config.map(|c| c.format)) {
        (Some(FormatArg::Json), _) | (None, Some(LogFormat::Json)) => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let (filter, source, problem) = choose_filter(args, config);
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
    LevelControl { handle, source }
}
