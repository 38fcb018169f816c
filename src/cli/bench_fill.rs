//! `pushbridge bench-fill` (hidden): prepares a store for the side-by-side
//! benchmark (`bench/peers/run`) straight through [`Db`], without the line
//! protocol: registers `--users` × `--devices-per-user` devices, queues
//! `--outbox` notifications round-robin over them (what a gateway started
//! on a full outbox drains), and can write the empty files
//! `<docroot>/3/device/<token>` nghttpd answers 200 for.
//!
//! Users are `line:u0`, `line:u1`…, what `pushbridge bench` messages; the
//! token of device `d` of user `u` is [`token_of`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Args as ClapArgs;
use pushbridge::config::Synchronous;
use pushbridge::store::db::NewNotification;
use pushbridge::store::Db;
use pushbridge_api::{DeviceToken, Environment, UserId};

/// Rows written per transaction (keeps the WAL and the memory small).
const CHUNK: usize = 50_000;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The store file (created, or added to).
    #[arg(long)]
    store: PathBuf,
    /// The app's topic the devices are registered for.
    #[arg(long, default_value = "com.example.bench")]
    topic: String,
    /// Users to register (`line:u0`…).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Devices each user has.
    #[arg(long, default_value_t = 1)]
    devices_per_user: usize,
    /// Notifications to queue in the outbox, round-robin over the devices.
    #[arg(long, default_value_t = 0)]
    outbox: usize,
    /// Write an empty file `<DIR>/3/device/<token>` for every device.
    #[arg(long, value_name = "DIR")]
    docroot: Option<PathBuf>,
}

/// The token of device `device` of user `user`: 64 hex digits, distinct
/// for every pair.
pub fn token_of(user: usize, device: usize) -> String {
    format!("{:032x}{:032x}", device + 1, user + 1)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.users == 0 || args.devices_per_user == 0 {
        bail!("--users and --devices-per-user must be at least 1");
    }
    let started = Instant::now();
    let db = Db::open(&args.store, Synchronous::Normal)?;
    let devices = args.users * args.devices_per_user;
    let mut written = 0;
    while written < devices {
        let end = (written + CHUNK).min(devices);
        db.begin()?;
        for i in written..end {
            let (user, device) = (i / args.devices_per_user, i % args.devices_per_user);
            let user = UserId::parse(&format!("line:u{user}")).map_err(|e| anyhow::anyhow!(e))?;
            let token =
                DeviceToken::parse(&token_of(i / args.devices_per_user, device)).map_err(|e| anyhow::anyhow!(e))?;
            db.register(&user, &token, &args.topic, Environment::Production, 0)?;
        }
        db.commit()?;
        written = end;
    }
    fill_outbox(&db, &args)?;
    db.checkpoint();
    if let Some(dir) = &args.docroot {
        write_docroot(dir, args.users, args.devices_per_user)?;
    }
    println!(
        "registered {devices} device(s) of {} user(s), queued {} notification(s) in {:.1} s",
        args.users,
        args.outbox,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Queue `--outbox` notifications, round-robin over the devices.
fn fill_outbox(db: &Db, args: &Args) -> anyhow::Result<()> {
    let devices = args.users * args.devices_per_user;
    let now_ms = pushbridge::store::db::now_ms();
    let expiration = (now_ms / 1000 + 86_400) as u64;
    let mut written = 0;
    while written < args.outbox {
        let end = (written + CHUNK).min(args.outbox);
        db.begin()?;
        for i in written..end {
            let d = i % devices;
            let token = DeviceToken::parse(&token_of(d / args.devices_per_user, d % args.devices_per_user))
                .map_err(|e| anyhow::anyhow!(e))?;
            let payload = format!(
                r#"{{"aps":{{"alert":{{"title":"bench","body":"benchmark message number {i}"}},"badge":1,"sound":"default","thread-id":"bench"}}}}"#
            );
            db.insert_outbox(&NewNotification {
                topic: &args.topic,
                token: &token,
                environment: Environment::Production,
                payload: &payload,
                expiration,
                priority: 10,
                collapse_id: None,
                created_ms: now_ms,
            })?;
        }
        db.commit()?;
        written = end;
    }
    Ok(())
}

/// An empty file `<dir>/3/device/<token>` for every device.
fn write_docroot(dir: &Path, users: usize, per_user: usize) -> anyhow::Result<()> {
    let dir = dir.join("3").join("device");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for u in 0..users {
        for d in 0..per_user {
            let path = dir.join(token_of(u, d));
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for u in [0, 1, 99_999] {
            for d in 0..10 {
                let t = token_of(u, d);
                assert!(DeviceToken::parse(&t).is_ok(), "{t}");
                assert!(seen.insert(t));
            }
        }
    }

    #[test]
    fn fills_the_registry_outbox_and_docroot() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.db");
        let docroot = dir.path().join("root");
        run(Args {
            store: store.clone(),
            topic: "com.example.bench".into(),
            users: 3,
            devices_per_user: 2,
            outbox: 7,
            docroot: Some(docroot.clone()),
        })
        .unwrap();
        let db = Db::open(&store, Synchronous::Normal).unwrap();
        assert_eq!(db.all_devices(None).unwrap().len(), 6);
        assert_eq!(db.all_devices(Some("line:u2")).unwrap().len(), 2);
        assert_eq!(db.outbox_counts().unwrap(), vec![("com.example.bench".to_owned(), 7)]);
        let rows = db.load_outbox(&"com.example.bench".into(), 0, 100).unwrap();
        assert_eq!(
            rows[6].token.as_str(),
            token_of(0, 0),
            "round-robin: the 7th goes to the first device again"
        );
        assert!(serde_json::from_str::<serde_json::Value>(&rows[0].payload).is_ok());
        assert_eq!(std::fs::read_dir(docroot.join("3/device")).unwrap().count(), 6);
    }
}
