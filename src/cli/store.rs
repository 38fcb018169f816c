//! `pushbridge store copy`: move a store between SQLite and PostgreSQL.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use pushbridge::config::StoreConfig;
use pushbridge::store::copy;
use pushbridge::store::Db;

/// Rows of a table from which a progress bar is drawn.
const PROGRESS_FROM: u64 = 20_000;

#[derive(Subcommand)]
pub enum Action {
    /// Copy every row (devices, unread counters, pending and waiting outbox
    /// entries, adapter state, mutes, quiet hours) from one store into
    /// another, SQLite or PostgreSQL either way, in one transaction on the
    /// target; prints the rows copied per table. Stop the gateways first.
    Copy {
        /// Source: a SQLite file (must exist) or a postgres:// URL.
        #[arg(long, value_name = "PATH_OR_URL")]
        from: String,
        /// Target: a SQLite file (created) or a postgres:// URL (migrated).
        #[arg(long, value_name = "PATH_OR_URL")]
        to: String,
        /// Replace the rows of a target that is not empty.
        #[arg(long)]
        force: bool,
    },
}

/// A `[store]` for `PATH_OR_URL`.
fn store_config(s: &str) -> anyhow::Result<StoreConfig> {
    let mut config = StoreConfig::default();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        pushbridge::store::pg::parse_url(s)
            .map_err(|e| anyhow::anyhow!("{}: {e}", pushbridge::store::pg::redact_url(s)))?;
        config.url = Some(s.to_owned());
    } else {
        config.path = PathBuf::from(s);
    }
    Ok(config)
}

pub fn run(action: Action) -> anyhow::Result<()> {
    let Action::Copy { from, to, force } = action;
    let (from, to) = (store_config(&from)?, store_config(&to)?);
    if from.url.is_none() && !from.path.exists() {
        bail!("source {}: no such file", from.path.display());
    }
    let source = Db::open_config(&from).with_context(|| format!("opening {}", from.describe()))?;
    let target = Db::open_config(&to).with_context(|| format!("opening {}", to.describe()))?;
    let mut progress = |table: &str, done: u64, total: u64| {
        if total >= PROGRESS_FROM {
            let width = 30;
            let filled = (done.min(total) * width / total.max(1)) as usize;
            eprint!(
                "\r{table:<13} [{}{}] {done}/{total}",
                "#".repeat(filled),
                " ".repeat(width as usize - filled)
            );
            if done >= total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
    };
    let counts = copy::copy(&source, &target, force, &mut progress)?;
    println!("copied {} to {}:", from.describe(), to.describe());
    for (table, n) in counts {
        println!("  {table}: {n}");
    }
    Ok(())
}
