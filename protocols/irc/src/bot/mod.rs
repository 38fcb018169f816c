//! The watcher bot's state and decisions, without I/O: the connection hands
//! it each parsed [`Msg`] and writes the [`Output`] lines it asks for.
//!
//! - `session`: the bot's own registration with the server: CAP 302
//!   negotiation, SASL PLAIN, nick retries, ISUPPORT, joining the channels.
//! - `presence`: who is online, away, and logged in to which account
//!   (MONITOR or ISON, WHOIS, WHO, away-notify, account-notify,
//!   extended-join), which channels the bot sees each nick in, and the
//!   presence it reports to the core.
//! - `commands`: what users send the bot privately (HELP, REGISTER,
//!   UNREGISTER, STATUS, TELL).
//! - `settings`: the settings commands (MUTE, UNMUTE, QUIET) and what
//!   STATUS says about them.
//! - `highlights`: channel messages that highlight registered users.
//! - `recent`: the cap on per-nick state (least recently seen forgotten).
//!
//! Each module adds the methods of its concern to the one [`Bot`]: a
//! message often touches several concerns (a WHOIS answer updates presence
//! and releases the commands waiting for it).

mod commands;
mod highlights;
mod presence;
mod recent;
mod session;
mod settings;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use hashlink::LinkedHashSet;

use pushbridge_api::{AdapterError, Context, Presence, UserId};

use crate::msg::{line, split_text, CaseMapping, Msg};
use crate::IrcConfig;

pub use self::session::WANTED_CAPS;

/// Text per NOTICE, leaving room for the prefix the server adds.
const NOTICE_TEXT: usize = 350;

/// What the bot wants written.
#[derive(Debug)]
pub enum Output {
    /// Protocol lines that must go at once (registration, PONG, CAP).
    Now(String),
    /// Everything else (messages to people, WHOIS, WHO, ISON, MONITOR,
    /// JOIN after a kick): paced by the token bucket.
    Paced(String),
    /// Give up on this connection.
    Fail(AdapterError),
}

/// The bot of one connection. Nicks and channels used as keys are
/// lower-cased with the server's casemapping.
pub struct Bot {
    ctx: Context<IrcConfig>,

    // The session (`session`).
    /// The nick the server knows the bot by.
    nick: String,
    /// The server's `CASEMAPPING` (ISUPPORT).
    cm: CaseMapping,
    /// The server has MONITOR (ISUPPORT); without it presence is polled
    /// with ISON.
    monitor: bool,
    /// Capabilities the server offers (`CAP LS`), without their values.
    offered: HashSet<String>,
    /// Capabilities the server acknowledged (`CAP ACK`).
    caps: HashSet<String>,
    /// Nicks tried after the configured one was refused.
    nick_tries: u32,
    /// The server welcomed the bot (001).
    registered: bool,

    // Presence (`presence`).
    /// Registered accounts → the nick they were last seen with.
    accounts: HashMap<String, String>,
    /// Lower-cased nick → the account it is logged in to.
    nick_account: HashMap<String, String>,
    /// Lower-cased nicks whose account (or its absence) is known.
    verified: HashSet<String>,
    /// The nicks each ISON in flight asked about, oldest first.
    ison_asked: VecDeque<Vec<String>>,
    /// Round-robin position of the away re-check.
    recheck_at: usize,
    /// Lower-cased nicks known to be on the network.
    online: HashSet<String>,
    /// Lower-cased nick → the (lower-cased) channels the bot sees it in:
    /// a nick leaving one of them may still be in sight in another.
    seen_in: HashMap<String, HashSet<String>>,
    /// Lower-cased nicks known to be away.
    away: HashSet<String>,
    /// WHOIS answers being collected, by lower-cased nick.
    whois: HashMap<String, presence::Whois>,
    /// The presence last reported to the core, by account.
    reported: HashMap<String, Presence>,
    /// Lower-cased nicks with state above, least recently seen first:
    /// at most `max_nicks` (`recent`).
    recent: LinkedHashSet<String>,

    // Commands (`commands`).
    /// Lower-cased sender → (window start, TELLs in it).
    tells: HashMap<String, (Instant, u32)>,
    /// Commands waiting for a WHOIS to say who sent them, by lower-cased
    /// sender.
    pending: HashMap<String, Vec<Msg>>,
}

impl Bot {
    /// A bot for a new connection: watches the configured
    /// `watch_accounts` and the accounts registered through it earlier
    /// (adapter state `acct:<account>` → last nick). Fails when the
    /// adapter state cannot be read.
    pub async fn new(ctx: Context<IrcConfig>) -> Result<Bot, AdapterError> {
        let mut accounts = HashMap::new();
        for a in &ctx.config().watch_accounts {
            accounts.insert(a.clone(), a.clone());
        }
        let stored = ctx
            .state_list("acct:")
            .await
            .map_err(|e| AdapterError::Other(format!("adapter state: {e}")))?;
        for (k, nick) in stored {
            if let Some(a) = k.strip_prefix("acct:") {
                accounts.insert(a.to_owned(), nick);
            }
        }
        Ok(Bot {
            nick: ctx.config().nick.clone(),
            ctx,
            cm: CaseMapping::Rfc1459,
            monitor: false,
            offered: HashSet::new(),
            caps: HashSet::new(),
            nick_tries: 0,
            registered: false,
            accounts,
            nick_account: HashMap::new(),
            verified: HashSet::new(),
            ison_asked: VecDeque::new(),
            recheck_at: 0,
            online: HashSet::new(),
            seen_in: HashMap::new(),
            away: HashSet::new(),
            whois: HashMap::new(),
            reported: HashMap::new(),
            recent: LinkedHashSet::new(),
            tells: HashMap::new(),
            pending: HashMap::new(),
        })
    }

    /// Handle one message from the server.
    ///
    /// One `match` over the IRC command, kept whole on purpose: every arm
    /// only hands the message to the module of its concern, so the list
    /// of commands and numerics the bot reacts to reads in one place.
    pub async fn handle(&mut self, m: &Msg, out: &mut Vec<Output>) {
        self.note_account_tag(m);
        match m.command.as_str() {
            "PING" => out.push(Output::Now(line("PONG", &[], Some(m.param(0))))),
            // Session: CAP, SASL, registration, ISUPPORT, nick retries.
            "CAP" => self.cap(m, out),
            "AUTHENTICATE" if m.param(0) == "+" => self.authenticate(out),
            "900" => self.logged_in(m),
            "902" | "903" | "904" | "905" | "906" | "907" => self.sasl_done(m, out),
            "001" => self.welcome(m, out),
            "005" => self.isupport(m),
            "376" | "422" => self.start_watching(out),
            "432" | "433" | "436" | "437" if !self.registered => self.nick_refused(m, out),
            // Presence: MONITOR, ISON, WHO, WHOIS and what others do.
            "730" => self.monitor_online(m, out).await,
            "731" => self.monitor_offline(m).await,
            "303" => self.ison_reply(m, out).await,
            "352" => self.who_reply(m),
            "315" => self.refresh().await,
            "311" | "330" | "301" => self.whois_reply(m),
            "318" => {
                let n = self.whois_end(m).await;
                self.resume_pending(&n, out).await;
            }
            "ACCOUNT" => self.account_change(m).await,
            "JOIN" => self.joined(m, out).await,
            "AWAY" => self.away_change(m).await,
            "NICK" => self.nick_change(m, out).await,
            "QUIT" => self.quit(m).await,
            "PART" | "KICK" => self.left(m, out).await,
            // Highlights and commands.
            "PRIVMSG" => {
                let target = m.param(0);
                if target.starts_with(['#', '&']) {
                    self.highlights(m).await;
                } else if self.lower(target) == self.lower(&self.nick) {
                    self.command(m, true, out).await;
                }
            }
            _ => {}
        }
    }

    /// `s` lower-cased with the server's casemapping.
    fn lower(&self, s: &str) -> String {
        self.cm.lower(s)
    }

    /// The user id of a services account (`irc:<network>:<account>`).
    fn user(&self, account: &str) -> Option<UserId> {
        UserId::scoped(self.ctx.name(), account).ok()
    }

    /// `text` to `to` as NOTICEs short enough for one line each.
    fn notice(&self, to: &str, text: &str, out: &mut Vec<Output>) {
        for part in split_text(text, NOTICE_TEXT) {
            out.push(Output::Paced(line("NOTICE", &[to], Some(&part))));
        }
    }
}

#[cfg(test)]
mod testing;
