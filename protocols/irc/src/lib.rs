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
//! Layout:
//! - [`config`]: `[[adapters.irc]]` and its checks.
//! - [`msg`]: parsing and formatting lines, casemapping, highlight
//!   matching, SASL PLAIN (pure).
//! - [`bot`]: the bot's state and decisions (pure apart from the core):
//!   `session` (CAP, SASL, nick), `presence` (who is online, away, logged
//!   in where), `commands` (private-message commands), `highlights`.
//! - `conn`: connecting (TCP or TLS through `pushbridge_kit`) and the
//!   connection loop: lines in through the kit's `LineCodec`, keepalive,
//!   presence ticks.
//! - `pacing`: the writing side: urgent lines at once, the rest through a
//!   token bucket from a bounded queue.
//! - [`redact`]: what the raw-line traces show of a line (no SASL
//!   response, password, message text or full device token).
//! - this file: the [`Adapter`] implementation.
#![forbid(unsafe_code)]

pub mod bot;
pub mod config;
mod conn;
pub mod msg;
mod pacing;
pub mod redact;

use pushbridge_api::{Adapter, AdapterError, ConfigError, Context, Environment};

pub use self::config::IrcConfig;

/// The IRC adapter.
pub struct IrcAdapter;

impl Adapter for IrcAdapter {
    type Config = IrcConfig;
    const KIND: &'static str = "irc";
    const OUTBOUND: bool = true;

    fn instance_name(c: &IrcConfig) -> String {
        format!("irc:{}", c.network)
    }

    /// Always: two bots on one network would each see every highlight and
    /// push it twice (and fight over the nick).
    fn singleton(_c: &IrcConfig) -> bool {
        true
    }

    fn check(c: &IrcConfig) -> Result<(), ConfigError> {
        c.check()
    }

    async fn run(ctx: Context<IrcConfig>) -> Result<(), AdapterError> {
        conn::run(ctx).await
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
