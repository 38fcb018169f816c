//! `pushbridge push`: one notification through a configured app, and
//! Apple's answer printed — what to run first when pushes don't arrive.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::Args as ClapArgs;
use pushbridge::config::Config;
use pushbridge::outcome::Notification;
use pushbridge::sink::http2::{send_one, Http2Setup};
use pushbridge::sink::SinkConfig;
use pushbridge_api::{DeviceToken, Environment};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Configuration file (the app's endpoint and credentials).
    #[arg(short, long, default_value = "config.toml")]
    config: PathBuf,
    /// Device token (hex).
    #[arg(long)]
    token: String,
    /// App topic (bundle id); default: the first [[apps]] entry.
    #[arg(long)]
    topic: Option<String>,
    /// Alert text.
    #[arg(long)]
    alert: String,
    /// Badge number.
    #[arg(long)]
    badge: Option<u32>,
    /// Sound name ("default" for the system sound).
    #[arg(long)]
    sound: Option<String>,
    /// The token is a sandbox (development) token; default: the app's environment.
    #[arg(long)]
    sandbox: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let app = match &args.topic {
        Some(t) => config
            .apps
            .iter()
            .find(|a| &a.topic == t)
            .ok_or_else(|| anyhow!("no [[apps]] entry has topic {t:?}"))?,
        None => config.default_app(),
    };
    let SinkConfig::Http2(http2) = &app.sink else {
        bail!(
            "app {:?} uses protocol {:?}; push talks to APNS over http2",
            app.topic,
            app.sink.protocol().as_str()
        );
    };
    let token = DeviceToken::parse(&args.token).map_err(|e| anyhow!("--token: {e}"))?;
    let setup = Http2Setup::from_config(http2).map_err(|e| anyhow!("app {:?}: {e}", app.topic))?;
    let mut aps = serde_json::json!({ "alert": args.alert });
    if let Some(b) = args.badge {
        aps["badge"] = b.into();
    }
    if let Some(s) = &args.sound {
        aps["sound"] = s.as_str().into();
    }
    let payload = serde_json::json!({ "aps": aps }).to_string();
    if payload.len() > app.sink.payload_limit() {
        bail!(
            "payload is {} bytes; APNS takes at most {}",
            payload.len(),
            app.sink.payload_limit()
        );
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let environment = if args.sandbox {
        Environment::Sandbox
    } else {
        app.environment
    };
    let mut n = Notification::new(0, app.topic.as_str(), token, environment, payload.as_str());
    n.expiration = now.as_secs() + config.policy.ttl;
    n.created_ms = now.as_millis() as i64;
    let target = setup.target(n.environment).map_err(|e| anyhow!(e))?;
    let apns_id = uuid::Uuid::new_v4().to_string();
    println!(
        "sending to {} (topic {}, apns-id {apns_id})",
        target.authority, app.topic
    );
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(send_one(&setup, &n, &apns_id))
        .map_err(|e| anyhow!(e))?;
    let id = answer.apns_id.as_deref().unwrap_or("-");
    match &answer.error {
        None => {
            println!("status {}: accepted by APNS (apns-id {id})", answer.status);
            Ok(())
        }
        Some(e) => {
            let ts = e
                .timestamp_ms
                .map(|t| format!(", token invalid since {t} ms"))
                .unwrap_or_default();
            println!("status {}: {}{ts} (apns-id {id})", answer.status, e.reason);
            if let Some(plain) = pushbridge::sink::refusal::answer_reason(answer.status, &e.reason, false) {
                bail!("{plain}");
            }
            bail!("APNS refused the notification: {} {}", answer.status, e.reason)
        }
    }
}
