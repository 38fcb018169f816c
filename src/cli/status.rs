//! `pushbridge status`: a human summary of a running gateway, read from
//! its admin listener's `GET /status` (see `pushbridge::admin::status`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Args as ClapArgs;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pushbridge::admin::status::Status;
use pushbridge::admin::AdminConfig;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Admin listener to ask, e.g. `http://127.0.0.1:9464`; default: the
    /// `[admin] listen` address of the config file.
    #[arg(long)]
    admin: Option<String>,
    /// Configuration file (for `[admin] listen` when --admin is not given).
    #[arg(short, long, default_value = "config.toml")]
    config: PathBuf,
}

/// How long to wait for the gateway's answer.
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: Args) -> anyhow::Result<()> {
    let base = match args.admin {
        Some(a) => a.trim_end_matches('/').to_owned(),
        None => {
            let admin = AdminConfig::peek(&args.config)?.ok_or_else(|| {
                anyhow!(
                    "{} has no [admin] section; give --admin http://HOST:PORT or add [admin] listen",
                    args.config.display()
                )
            })?;
            format!("http://{}", admin.listen)
        }
    };
    let status = super::runtime()?.block_on(fetch(&base))?;
    print!("{}", render(&status));
    if !status.readiness.ready {
        bail!("not ready");
    }
    Ok(())
}

async fn fetch(base: &str) -> anyhow::Result<Status> {
    let uri: hyper::Uri = format!("{base}/status")
        .parse()
        .with_context(|| format!("--admin {base}: not an http:// URL"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(TIMEOUT, client.get(uri.clone()))
        .await
        .map_err(|_| anyhow!("{uri}: no answer within {} s", TIMEOUT.as_secs()))?
        .with_context(|| format!("{uri}: is the gateway running with [admin] listen?"))?;
    let code = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    if !code.is_success() {
        bail!("{uri}: HTTP {code}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{uri}: not a pushbridge status"))
}

/// The summary as printed.
fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let state = if s.readiness.ready { "ready" } else { "NOT READY" };
    let _ = writeln!(out, "pushbridge {}: {state}", s.version);
    let _ = writeln!(out, "apps (last {} s):", s.recent_seconds);
    for a in &s.apps {
        let link = match &a.problem {
            None if a.connections > 0 => format!("connected ({})", a.connections),
            None => "idle".to_owned(),
            Some(p) => format!("NOT READY: {p}"),
        };
        let outbox = match (a.outbox, a.oldest_seconds) {
            (Some(0), _) => "outbox empty".to_owned(),
            (Some(n), Some(age)) => format!("outbox {n}, oldest {age:.0} s"),
            (Some(n), None) => format!("outbox {n}"),
            (None, _) => "outbox unknown".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} [{}]: {link}; {outbox}; delivered {}, rejected {}",
            a.app, a.protocol, a.delivered_recent, a.rejected_recent
        );
    }
    if !s.adapters.is_empty() {
        let _ = writeln!(out, "adapters:");
    }
    for ad in &s.adapters {
        let state = match (&ad.problem, ad.outbound) {
            _ if ad.standby.is_some() => ad.standby.clone().unwrap_or_default(),
            (Some(p), _) => format!("NOT CONNECTED: {p}"),
            (None, true) if ad.singleton => "connected (singleton: runs on this gateway)".to_owned(),
            (None, true) => "connected".to_owned(),
            (None, false) => format!("{} connection(s)", ad.connections),
        };
        let _ = writeln!(
            out,
            "  {} ({}): {state}; {} events",
            ad.adapter, ad.kind, ad.events_total
        );
    }
    for p in s.readiness.problems.iter().filter(|p| p.store.is_some()) {
        let _ = writeln!(out, "store: NOT READY: {}", p.error);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_ready_and_not_ready_parts() {
        let json = serde_json::json!({
            "version": "0.1.0",
            "readiness": {"ready": false, "problems": [
                {"app": "com.example.chat", "error": "cannot reach APNS at 127.0.0.1:1: connection refused"}
            ]},
            "recent_seconds": 60,
            "apps": [{"app": "com.example.chat", "protocol": "http2",
                      "problem": "cannot reach APNS at 127.0.0.1:1: connection refused",
                      "connections": 0, "outbox": 5, "oldest_seconds": 12.4,
                      "delivered_recent": 0, "rejected_recent": 1, "delivered_total": 3, "rejected_total": 1}],
            "adapters": [{"adapter": "line", "kind": "line", "outbound": false, "problem": null,
                          "connections": 2, "events_total": 9}]
        });
        let s: Status = serde_json::from_value(json).expect("status");
        let text = render(&s);
        assert!(text.starts_with("pushbridge 0.1.0: NOT READY\n"), "{text}");
        assert!(text.contains("  com.example.chat [http2]: NOT READY: cannot reach APNS at 127.0.0.1:1: connection refused; outbox 5, oldest 12 s; delivered 0, rejected 1\n"), "{text}");
        assert!(text.contains("  line (line): 2 connection(s); 9 events\n"), "{text}");
    }

    #[test]
    fn renders_singletons_running_here_and_standing_by() {
        let json = serde_json::json!({
            "version": "0.1.0",
            "readiness": {"ready": true, "problems": []},
            "recent_seconds": 60,
            "apps": [],
            "adapters": [
                {"adapter": "irc:libera", "kind": "irc", "outbound": true, "problem": null,
                 "singleton": true, "standby": null, "connections": 0, "events_total": 4},
                {"adapter": "xmpp", "kind": "xmpp", "outbound": true, "problem": null, "singleton": true,
                 "standby": "standing by: held by pushbridge singleton gw2:41 (session 7 from 10.0.0.2)",
                 "connections": 0, "events_total": 0}
            ]
        });
        let s: Status = serde_json::from_value(json).expect("status");
        let text = render(&s);
        assert!(text.starts_with("pushbridge 0.1.0: ready\n"), "{text}");
        assert!(
            text.contains("  irc:libera (irc): connected (singleton: runs on this gateway); 4 events\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  xmpp (xmpp): standing by: held by pushbridge singleton gw2:41 (session 7 from 10.0.0.2); 0 events\n"
            ),
            "{text}"
        );
    }
}
