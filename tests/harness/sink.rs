//! The sink side of the sink tests: one app's sink run detached (no
//! gateway, no store) over notifications built here, its completions
//! collected as [`Settled`] outcomes, and a simulator that answers 503.

use std::sync::Arc;
use std::time::Duration;

use pushbridge::config::Config;
use pushbridge::outcome::{AppCounters, Completion, Notification, Outcome};
use pushbridge::simulator::http2::{Options, Simulator};
use pushbridge::sink::{AppConfig, Detached};
use pushbridge_api::{DeviceToken, Environment};

use super::apns::Creds;
use super::TOPIC;

/// Notification `id` for device `tok` (hex), collapse id "bob", expiring
/// at `expiration` (seconds since the epoch; 0 for none).
pub fn note(id: i64, tok: &str, expiration: u64) -> Notification {
    let payload = format!(r#"{{"aps":{{"alert":{{"title":"bob","body":"msg {id}"}},"badge":{id}}}}}"#);
    let mut n = Notification::new(
        id,
        TOPIC,
        DeviceToken::parse(tok).unwrap(),
        Environment::Production,
        payload.as_str(),
    );
    n.expiration = expiration;
    n.collapse_id = Some("bob".into());
    n
}

/// A notification's outcome as the sink settled it.
#[derive(Debug)]
pub struct Settled {
    pub id: i64,
    pub outcome: Outcome,
}

/// The outcome in `c`; panics on any other completion.
pub fn settled(c: Completion) -> Settled {
    match c {
        Completion::Settled { id, outcome, .. } => Settled { id, outcome },
        other => panic!("unexpected {other:?}"),
    }
}

/// An expiration an hour from now (seconds since the epoch).
pub fn later() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

/// The app of a whole config made of `app_keys` and `extra` app lines
/// (see [`super::apns::http2_config`]).
pub fn sink_for(dir: &std::path::Path, app_keys: &str, extra: &str) -> AppConfig {
    let text = super::apns::http2_config(dir, app_keys, extra);
    let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
    config.apps[0].clone()
}

/// Run `sink` over `notes`; collect `n` reports (or time out), sorted by id.
pub async fn run(sink: AppConfig, notes: Vec<Notification>, n: usize) -> Vec<Settled> {
    let (mut out, _) = run_counted(sink, notes, n).await;
    out.sort_by_key(|r| r.id);
    out
}

/// Run `sink` over `notes`; collect `n` reports (or time out, 20 s each) in
/// the order they came, with the app's counters.
pub async fn run_counted(sink: AppConfig, notes: Vec<Notification>, n: usize) -> (Vec<Settled>, Arc<AppCounters>) {
    let Detached {
        input: tx,
        completions: mut rrx,
        counters,
        task,
        ..
    } = sink.spawn_detached().unwrap();
    for x in notes {
        tx.send(x).await.unwrap();
    }
    drop(tx);
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), rrx.recv()).await {
            Ok(Some(c)) => out.push(settled(c)),
            Ok(None) => break,
            Err(_) => panic!("timed out with {} of {n} reports", out.len()),
        }
    }
    // The sink ends once everything it took is reported.
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    (out, counters)
}

/// A simulator answering every valid request 503 (`certs`: accepting our
/// client certificates as well as tokens).
pub async fn always_503(creds: &Creds, certs: bool) -> Simulator {
    let options = Options {
        fail_rate: 1.0,
        fail_status: 503,
        ..creds.options(certs)
    };
    creds.simulator("127.0.0.1:0", options).await
}
