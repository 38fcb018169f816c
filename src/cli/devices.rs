//! `pushbridge devices list|add|remove`: the registry, straight from the
//! store file (safe while the gateway runs: SQLite WAL serializes writers).

use std::path::Path;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use pushbridge::store::Db;
use pushbridge::Config;
use pushbridge_api::{DeviceToken, Environment, UserId};

#[derive(Subcommand)]
pub enum Action {
    /// List devices (all, or one user's). Tokens are shown in full.
    List {
        /// Full user id, e.g. `line:alice`.
        #[arg(long)]
        user: Option<String>,
    },
    /// Register a device for a user.
    Add {
        /// Full user id, e.g. `line:alice` or `irc:libera:alice`.
        user: String,
        /// Device token (hex).
        token: String,
        /// App topic (default: the first configured app).
        #[arg(long)]
        topic: Option<String>,
        /// `production` or `sandbox` (default: the app's environment).
        #[arg(long)]
        environment: Option<String>,
    },
    /// Remove a user's device.
    Remove {
        /// Full user id.
        user: String,
        /// Device token (hex).
        token: String,
    },
}

pub fn run(config_path: &Path, action: Action) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let db = Db::open_config(&config.store).with_context(|| format!("opening store {}", config.store.describe()))?;
    match action {
        Action::List { user } => {
            let rows = db.all_devices(user.as_deref())?;
            for r in &rows {
                println!("{}\t{}\t{}\t{}", r.user, r.token, r.topic, r.environment);
            }
            eprintln!("{} device(s)", rows.len());
        }
        Action::Add {
            user,
            token,
            topic,
            environment,
        } => {
            let user = UserId::parse(&user).map_err(|e| anyhow::anyhow!("user: {e}"))?;
            let token = DeviceToken::parse(&token).map_err(|e| anyhow::anyhow!("token: {e}"))?;
            let app = match &topic {
                None => config.default_app(),
                Some(t) => match config.apps.iter().find(|a| &a.topic == t) {
                    Some(a) => a,
                    None => bail!("unknown topic {t:?}: not in [[apps]]"),
                },
            };
            let env = match environment {
                None => app.environment,
                Some(e) => e.parse::<Environment>().map_err(|e| anyhow::anyhow!(e))?,
            };
            db.register(&user, &token, &app.topic, env, pushbridge::store::db::now_ms())?;
            println!("added {} for {user} ({}, {env})", token.short(), app.topic);
        }
        Action::Remove { user, token } => {
            let user = UserId::parse(&user).map_err(|e| anyhow::anyhow!("user: {e}"))?;
            let token = DeviceToken::parse(&token).map_err(|e| anyhow::anyhow!("token: {e}"))?;
            match db.unregister(&user, &token)? {
                0 => bail!("{user} has no device {}", token.short()),
                n => println!("removed {n} registration(s) of {} for {user}", token.short()),
            }
        }
    }
    Ok(())
}
