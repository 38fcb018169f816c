//! The IRC adapter: a watcher bot. On IRC nobody keeps messages for you;
//! the bot sits on the network, knows which registered users are online
//! or away (MONITOR or ISON, away-notify, account tracking), and pushes
//! what they would miss: highlights in the channels it watches, and
//! `TELL <nick> <text>` sent to it privately.
//!
//! Devices are bound to services *accounts*, never to nicks: `REGISTER`
//! is accepted only from a sender logged in to an account (the IRCv3
//! `account` tag, or what extended-join, account-notify and WHOIS said),
//! so nobody can register a device for someone else's nick.
//!
//! Layout: [`msg`] parses and formats lines (pure); [`bot`] keeps the
//! state and decides; this file holds the config and the connection.
#![forbid(unsafe_code)]

pub mod bot;
pub mod msg;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pushbridge_api::{Adapter, AdapterError, ConfigError, Context, Environment};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use self::bot::{Bot, Output};
use self::msg::{Msg, MAX_LINE};

/// `[[adapters.irc]]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrcConfig {
    /// Network name: user ids are `irc:<network>:<account>`.
    pub network: String,
    /// `host:port` of the IRC server.
    pub server: String,
    /// Connect with TLS (certificates verified against the public roots and
    /// `ca_file`).
    #[serde(default)]
    pub tls: bool,
    /// Extra trusted CA certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// The bot's nick (`pushbridge_`, then `pushbri_2`, … while it is taken).
    #[serde(default = "default_nick")]
    pub nick: String,
    pub username: Option<String>,
    pub realname: Option<String>,
    /// Log the bot in to its own services account with SASL PLAIN.
    pub sasl_account: Option<String>,
    pub sasl_password: Option<String>,
    /// Channels to join and watch for highlights.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Extra words that highlight every registered user (e.g. `@here`).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Accounts to watch even without a device registered through the bot
    /// (devices added with the line protocol or the CLI as
    /// `irc:<network>:<account>`); their nick is taken to be the account.
    #[serde(default)]
    pub watch_accounts: Vec<String>,
    /// App (APNS topic) of devices registered through the bot; default:
    /// the first app.
    pub topic: Option<String>,
    /// Outgoing messages per second after the burst (flood protection).
    #[serde(default = "default_rate")]
    pub messages_per_second: f64,
    /// Outgoing messages sent at once before pacing starts.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Seconds between ISON polls when the server has no MONITOR.
    #[serde(default = "default_ison")]
    pub ison_interval: u64,
}

impl std::fmt::Debug for IrcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrcConfig")
            .field("network", &self.network)
            .field("server", &self.server)
            .field("tls", &self.tls)
            .field("nick", &self.nick)
            .field("sasl_account", &self.sasl_account)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "<redacted>"))
            .field("channels", &self.channels)
            .finish()
    }
}

fn default_nick() -> String {
    "pushbridge".to_owned()
}
fn default_rate() -> f64 {
    2.0
}
fn default_burst() -> u32 {
    5
}
fn default_ison() -> u64 {
    30
}

/// Lines waiting for the token bucket at most (a flood of commands to the
/// bot cannot grow memory; past it new lines are dropped and counted).
const MAX_PACED: usize = 1000;
/// Silence after which the bot PINGs the server.
const PING_AFTER: Duration = Duration::from_secs(90);
/// Silence after which the connection is given up.
const DEAD_AFTER: Duration = Duration::from_secs(240);

/// The IRC adapter.
pub struct IrcAdapter;

impl Adapter for IrcAdapter {
    type Config = IrcConfig;
    const KIND: &'static str = "irc";

    fn instance_name(c: &IrcConfig) -> String {
        format!("irc:{}", c.network)
    }

    fn check(c: &IrcConfig) -> Result<(), ConfigError> {
        if c.network.is_empty() || c.network.contains(|ch: char| ch.is_whitespace() || ch == ':') {
            return Err(ConfigError::new(
                "network",
                format!("{:?} must be a name without spaces or colons", c.network),
            ));
        }
        pushbridge_kit::check_host_port(&c.server).map_err(|e| ConfigError::new("server", e))?;
        if c.nick.is_empty() || c.nick.contains(|ch: char| ch.is_whitespace() || ",*?!@:#".contains(ch)) {
            return Err(ConfigError::new("nick", format!("{:?} is not a valid nick", c.nick)));
        }
        if c.sasl_account.is_some() != c.sasl_password.is_some() {
            return Err(ConfigError::new("sasl_account and sasl_password", "go together"));
        }
        if let Some(ch) = c
            .channels
            .iter()
            .find(|ch| !ch.starts_with(['#', '&']) || ch.contains([' ', ',']))
        {
            return Err(ConfigError::new(
                "channels",
                format!("{ch:?} must start with # or & and have no spaces or commas"),
            ));
        }
        if c.messages_per_second.is_nan() || c.messages_per_second < 0.1 {
            return Err(ConfigError::new("messages_per_second", "must be at least 0.1"));
        }
        if c.burst == 0 {
            return Err(ConfigError::new("burst", "must be at least 1"));
        }
        if c.ison_interval == 0 {
            return Err(ConfigError::new("ison_interval", "must be at least 1 second"));
        }
        if let Some(ca) = &c.ca_file {
            if !ca.exists() {
                return Err(ConfigError::new("ca_file", format!("{}: no such file", ca.display())));
            }
        }
        Ok(())
    }

    async fn run(ctx: Context<IrcConfig>) -> Result<(), AdapterError> {
        let cfg = ctx.config().clone();
        let tcp = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(15), TcpStream::connect(&cfg.server)) => r
                .map_err(|_| AdapterError::Io(std::io::Error::other(format!("connect to {}: timed out", cfg.server))))?
                .map_err(|e| AdapterError::Io(std::io::Error::new(e.kind(), format!("connect to {}: {e}", cfg.server))))?,
            _ = ctx.shutdown().cancelled() => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        if cfg.tls {
            let tls = tls_connect(&cfg, tcp).await?;
            serve(ctx, tls).await
        } else {
            serve(ctx, tcp).await
        }
    }
}

async fn tls_connect(
    cfg: &IrcConfig,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, AdapterError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &cfg.ca_file {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| AdapterError::Config(format!("ca_file {}: {e}", ca.display())))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| AdapterError::Config(format!("ca_file {}: {e}", ca.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AdapterError::Other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = cfg.server.rsplit_once(':').map(|(h, _)| h).unwrap_or(&cfg.server);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| AdapterError::Config(format!("server {host:?}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| AdapterError::Io(std::io::Error::new(e.kind(), format!("TLS with {}: {e}", cfg.server))))
}

/// Outgoing pacing: a token bucket.
struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(burst: u32, rate: f64) -> Self {
        Self {
            tokens: burst as f64,
            burst: burst as f64,
            rate,
            at: tokio::time::Instant::now(),
        }
    }

    /// Take a token, or say how long until one is there.
    fn take(&mut self) -> Result<(), Duration> {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Split `buf` into lines; lines longer than [`MAX_LINE`] are dropped.
fn next_line(buf: &mut BytesMut, discarding: &mut bool) -> Option<String> {
    loop {
        let Some(i) = buf.iter().position(|b| *b == b'\n') else {
            if buf.len() > MAX_LINE {
                buf.clear();
                *discarding = true;
            }
            return None;
        };
        let line = buf.split_to(i + 1);
        if std::mem::take(discarding) {
            tracing::warn!("dropped an IRC line over {MAX_LINE} bytes");
            continue;
        }
        if line.len() > MAX_LINE {
            tracing::warn!("dropped an IRC line over {MAX_LINE} bytes");
            continue;
        }
        return Some(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned());
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(ctx: Context<IrcConfig>, stream: S) -> Result<(), AdapterError> {
    let cfg = ctx.config().clone();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut bot = Bot::new(ctx.clone()).await?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut discarding = false;
    let mut bucket = Bucket::new(cfg.burst, cfg.messages_per_second);
    let mut paced: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut next_paced = tokio::time::Instant::now();
    let mut dropped_paced: u64 = 0;
    let mut last_heard = tokio::time::Instant::now();
    let mut pinged = false;
    let mut ison = tokio::time::interval(Duration::from_secs(cfg.ison_interval));
    ison.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut out = bot.start();
    loop {
        // Write what the bot said: urgent lines now, the rest paced.
        for o in out.drain(..) {
            match o {
                Output::Now(l) => {
                    tracing::trace!(line = %l, "irc >");
                    wr.write_all(format!("{l}\r\n").as_bytes()).await?;
                }
                Output::Paced(l) if paced.len() < MAX_PACED => paced.push_back(l),
                Output::Paced(l) => {
                    dropped_paced += 1;
                    if dropped_paced.is_power_of_two() {
                        tracing::warn!(adapter = ctx.name(), dropped = dropped_paced, line = %l, "outgoing queue full; dropping lines");
                    }
                }
                Output::Fail(e) => {
                    let _ = wr.write_all(b"QUIT :bye\r\n").await;
                    return Err(e);
                }
            }
        }
        while let Some(l) = paced.front() {
            match bucket.take() {
                Ok(()) => {
                    tracing::trace!(line = %l, "irc >");
                    wr.write_all(format!("{l}\r\n").as_bytes()).await?;
                    paced.pop_front();
                }
                Err(wait) => {
                    next_paced = tokio::time::Instant::now() + wait;
                    break;
                }
            }
        }
        wr.flush().await?;
        let silent_until = last_heard + if pinged { DEAD_AFTER } else { PING_AFTER };
        tokio::select! {
            r = rd.read_buf(&mut buf) => {
                let n = r?;
                if n == 0 {
                    return Err(AdapterError::Io(std::io::Error::other("the IRC server closed the connection")));
                }
                last_heard = tokio::time::Instant::now();
                pinged = false;
                while let Some(l) = next_line(&mut buf, &mut discarding) {
                    tracing::trace!(line = %l, "irc <");
                    if let Some(m) = Msg::parse(&l) {
                        bot.handle(&m, &mut out).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_paced), if !paced.is_empty() => {}
            _ = tokio::time::sleep_until(silent_until) => {
                if pinged {
                    return Err(AdapterError::Io(std::io::Error::other("the IRC server stopped answering")));
                }
                pinged = true;
                out.push(Output::Now("PING :pushbridge".into()));
            }
            _ = ison.tick() => bot.poll_presence(&mut out),
            _ = ctx.shutdown().cancelled() => {
                let _ = wr.write_all(b"QUIT :pushbridge shutting down\r\n").await;
                let _ = wr.flush().await;
                return Ok(());
            }
        }
    }
}

/// Which environment a `REGISTER … sandbox` means.
pub fn parse_environment(s: &str) -> Option<Environment> {
    match s.to_ascii_lowercase().as_str() {
        "sandbox" => Some(Environment::Sandbox),
        "production" => Some(Environment::Production),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_framed_and_long_ones_dropped() {
        let mut buf = BytesMut::from(&b"PING a\r\nPRIVMSG #c :hi\npartial"[..]);
        let mut d = false;
        assert_eq!(next_line(&mut buf, &mut d).as_deref(), Some("PING a"));
        assert_eq!(next_line(&mut buf, &mut d).as_deref(), Some("PRIVMSG #c :hi"));
        assert_eq!(next_line(&mut buf, &mut d), None);
        buf.extend_from_slice(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(next_line(&mut buf, &mut d), None);
        assert!(d && buf.is_empty());
        buf.extend_from_slice(b"tail of the long one\r\nPING b\r\n");
        assert_eq!(next_line(&mut buf, &mut d).as_deref(), Some("PING b"));
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_after_the_burst() {
        let mut b = Bucket::new(3, 2.0);
        for _ in 0..3 {
            assert!(b.take().is_ok());
        }
        let wait = b.take().unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::from_millis(400),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.take().is_ok());
    }

    #[test]
    fn config_checks() {
        let ok: IrcConfig = serde_json::from_value(serde_json::json!({
            "network": "test", "server": "127.0.0.1:6667", "sasl_account": "bot", "sasl_password": "pw",
            "channels": ["#chat"]
        }))
        .unwrap();
        assert!(IrcAdapter::check(&ok).is_ok());
        assert_eq!(IrcAdapter::instance_name(&ok), "irc:test");
        assert!(!format!("{ok:?}").contains("pw"));
        let mut bad = ok.clone();
        bad.channels = vec!["chat".into()];
        assert!(IrcAdapter::check(&bad).is_err());
        let mut bad = ok.clone();
        bad.sasl_password = None;
        assert!(IrcAdapter::check(&bad).is_err());
        let mut bad = ok;
        bad.network = "a:b".into();
        assert!(IrcAdapter::check(&bad).is_err());
    }
}
