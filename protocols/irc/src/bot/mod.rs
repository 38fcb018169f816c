//! The bot's state and decisions: capability negotiation and SASL,
//! presence of registered accounts, highlights, and the commands users
//! send it privately.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use pushbridge_api::{AdapterError, Context, Device, DeviceToken, Event, EventError, Message, Presence, Reply, UserId};

use crate::msg::{line, mentions, sasl_plain, split_text, strip_formatting, CaseMapping, Msg};
use crate::{parse_environment, IrcConfig};

/// Capabilities the bot asks for when offered.
pub const WANTED_CAPS: [&str; 7] = [
    "sasl",
    "message-tags",
    "server-time",
    "away-notify",
    "account-notify",
    "extended-join",
    "account-tag",
];

/// Text per NOTICE, leaving room for the prefix the server adds.
const NOTICE_TEXT: usize = 350;
/// Bytes of nicks per ISON or MONITOR line (the whole line stays far below
/// the 512-byte limit).
const NICKS_PER_LINE: usize = 400;
/// Senders whose commands may wait for a WHOIS at once, and commands per
/// sender: a flood of private messages cannot grow memory.
const MAX_PENDING_SENDERS: usize = 64;
const MAX_PENDING_PER_SENDER: usize = 4;
/// TELLs one sender may send per [`TELL_WINDOW`].
const TELLS_PER_WINDOW: u32 = 5;
const TELL_WINDOW: Duration = Duration::from_secs(60);
/// Senders remembered for TELL limits.
const MAX_TELL_SENDERS: usize = 1024;
/// Watched nicks re-checked with WHOIS (away status) per presence tick.
const RECHECK_PER_TICK: usize = 3;
/// Nick attempts before the bot gives up registering.
const MAX_NICK_TRIES: u32 = 50;

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

#[derive(Default)]
struct Whois {
    account: Option<String>,
    away: bool,
    exists: bool,
}

pub struct Bot {
    ctx: Context<IrcConfig>,
    nick: String,
    cm: CaseMapping,
    monitor: bool,
    offered: HashSet<String>,
    caps: HashSet<String>,
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
    nick_tries: u32,
    /// Lower-cased sender → (window start, TELLs in it).
    tells: HashMap<String, (Instant, u32)>,
    /// Lower-cased nicks known to be on the network.
    online: HashSet<String>,
    /// Lower-cased nick → the (lower-cased) channels the bot sees it in:
    /// a nick leaving one of them may still be in sight in another.
    seen_in: HashMap<String, HashSet<String>>,
    away: HashSet<String>,
    whois: HashMap<String, Whois>,
    /// Commands waiting for a WHOIS to say who sent them.
    pending: HashMap<String, Vec<Msg>>,
    reported: HashMap<String, Presence>,
    registered: bool,
}

impl Bot {
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
            accounts,
            nick_account: HashMap::new(),
            verified: HashSet::new(),
            ison_asked: VecDeque::new(),
            recheck_at: 0,
            nick_tries: 0,
            tells: HashMap::new(),
            online: HashSet::new(),
            seen_in: HashMap::new(),
            away: HashSet::new(),
            whois: HashMap::new(),
            pending: HashMap::new(),
            reported: HashMap::new(),
            registered: false,
        })
    }

    /// The opening lines.
    pub fn start(&self) -> Vec<Output> {
        let c = self.ctx.config();
        let user = c.username.clone().unwrap_or_else(|| c.nick.clone());
        let real = c.realname.clone().unwrap_or_else(|| "pushbridge push gateway".into());
        vec![
            Output::Now("CAP LS 302".into()),
            Output::Now(line("NICK", &[&self.nick], None)),
            Output::Now(line("USER", &[&user, "0", "*"], Some(&real))),
        ]
    }

    fn lower(&self, s: &str) -> String {
        self.cm.lower(s)
    }

    fn user(&self, account: &str) -> Option<UserId> {
        UserId::scoped(self.ctx.name(), account).ok()
    }

    fn notice(&self, to: &str, text: &str, out: &mut Vec<Output>) {
        for part in split_text(text, NOTICE_TEXT) {
            out.push(Output::Paced(line("NOTICE", &[to], Some(&part))));
        }
    }

    /// The periodic presence tick: poll with ISON when the server has no
    /// MONITOR, and re-check a few watched nicks with WHOIS (away status of
    /// users who share no channel with the bot).
    pub fn poll_presence(&mut self, out: &mut Vec<Output>) {
        if !self.registered || self.accounts.is_empty() {
            return;
        }
        if !self.monitor {
            if self.ison_asked.len() > 16 {
                // The server stopped answering ISON: start over.
                self.ison_asked.clear();
            }
            let nicks: Vec<String> = self.accounts.values().cloned().collect();
            for batch in batches(&nicks) {
                out.push(Output::Paced(format!("ISON {}", batch.join(" "))));
                self.ison_asked.push_back(batch.iter().map(|n| self.lower(n)).collect());
            }
        }
        let mut watched: Vec<String> = self
            .accounts
            .values()
            .map(|n| self.lower(n))
            .filter(|n| self.online.contains(n))
            .collect();
        watched.sort();
        watched.dedup();
        if !watched.is_empty() {
            for i in 0..RECHECK_PER_TICK.min(watched.len()) {
                let n = &watched[(self.recheck_at + i) % watched.len()];
                out.push(Output::Paced(line("WHOIS", &[n], None)));
            }
            self.recheck_at = (self.recheck_at + RECHECK_PER_TICK) % watched.len();
        }
    }

    fn monitor_add(&self, nicks: &[String], out: &mut Vec<Output>) {
        for batch in batches(nicks) {
            out.push(Output::Paced(format!("MONITOR + {}", batch.join(","))));
        }
    }

    /// Whether the lower-cased nick `n` is the nick of a watched account.
    fn is_watched(&self, n: &str) -> bool {
        self.accounts.values().any(|k| self.lower(k) == n)
    }

    /// The next nick to try after the server refused the current one.
    fn next_nick(&mut self, out: &mut Vec<Output>) {
        self.nick_tries += 1;
        if self.nick_tries > MAX_NICK_TRIES {
            out.push(Output::Fail(AdapterError::Config(format!(
                "the server refused {} nicks derived from {:?}",
                MAX_NICK_TRIES,
                self.ctx.config().nick
            ))));
            return;
        }
        let base = &self.ctx.config().nick;
        self.nick = if self.nick_tries == 1 {
            format!("{base}_")
        } else {
            // Stay within the 9 characters every server allows.
            let n = self.nick_tries.to_string();
            let keep: String = base.chars().take(9 - n.len() - 1).collect();
            format!("{keep}_{n}")
        };
        out.push(Output::Now(line("NICK", &[&self.nick], None)));
    }

    /// Recompute and report the presence of every account that uses `nick`
    /// (or of all accounts).
    async fn refresh(&mut self) {
        let accounts: Vec<String> = self.accounts.keys().cloned().collect();
        for a in accounts {
            let mut nicks: Vec<&String> = self
                .nick_account
                .iter()
                .filter(|(n, acct)| *acct == &a && self.online.contains(*n))
                .map(|(n, _)| n)
                .collect();
            // The account's nick, online but not looked up yet: take it to
            // be the account's owner until WHOIS says otherwise (at worst a
            // push is held back a moment, never sent to someone else).
            let own = self.accounts.get(&a).map(|n| self.lower(n));
            if let Some(own) = own
                .as_ref()
                .filter(|n| self.online.contains(*n) && !self.verified.contains(*n))
            {
                nicks.push(own);
            }
            let presence = if nicks.is_empty() {
                Presence::Offline
            } else if nicks.iter().all(|n| self.away.contains(*n)) {
                Presence::Away
            } else {
                Presence::Online
            };
            if self.reported.get(&a) == Some(&presence) {
                continue;
            }
            if let Some(user) = self.user(&a) {
                tracing::info!(adapter = self.ctx.name(), account = %a, ?presence, "presence");
                if self.ctx.notify(Event::Presence { user, presence }).await.is_ok() {
                    self.reported.insert(a, presence);
                }
            }
        }
    }

    pub async fn handle(&mut self, m: &Msg, out: &mut Vec<Output>) {
        // Whatever a message says about its sender's account.
        if let (Some(nick), Some(acct)) = (m.nick(), m.account()) {
            let n = self.lower(nick);
            self.online.insert(n.clone());
            self.verified.insert(n.clone());
            self.nick_account.insert(n, acct.to_owned());
        }
        match m.command.as_str() {
            "PING" => out.push(Output::Now(line("PONG", &[], Some(m.param(0))))),
            "CAP" => self.cap(m, out),
            "AUTHENTICATE" if m.param(0) == "+" => {
                if let (Some(a), Some(p)) = (&self.ctx.config().sasl_account, &self.ctx.config().sasl_password) {
                    for chunk in sasl_plain(a, p) {
                        out.push(Output::Now(format!("AUTHENTICATE {chunk}")));
                    }
                }
            }
            "900" => {
                tracing::info!(adapter = self.ctx.name(), account = %m.param(2), "logged in to services");
            }
            "903" => out.push(Output::Now("CAP END".into())),
            "902" | "904" | "905" => out.push(Output::Fail(AdapterError::Config(format!(
                "SASL login as {:?} refused: {}",
                self.ctx.config().sasl_account.as_deref().unwrap_or(""),
                m.params.last().map(String::as_str).unwrap_or("")
            )))),
            "906" | "907" => out.push(Output::Now("CAP END".into())),
            "001" => {
                self.nick = m.param(0).to_owned();
                self.registered = true;
                tracing::info!(adapter = self.ctx.name(), nick = %self.nick, "registered on the IRC network");
                let chans = &self.ctx.config().channels;
                if !chans.is_empty() {
                    out.push(Output::Now(line("JOIN", &[&chans.join(",")], None)));
                }
            }
            "005" => {
                let end = m.params.len().saturating_sub(1);
                for tok in m.params.get(1..end).unwrap_or_default() {
                    let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
                    match k {
                        "CASEMAPPING" => self.cm = CaseMapping::parse(v),
                        "MONITOR" => self.monitor = true,
                        _ => {}
                    }
                }
            }
            "376" | "422" => {
                // Registration done: watch every registered account.
                let nicks: Vec<String> = self.accounts.values().cloned().collect();
                // Presence is reported once the server answered (730/731
                // or 303), not guessed now: a reconnect does not flap it.
                if self.monitor {
                    self.monitor_add(&nicks, out);
                } else {
                    self.poll_presence(out);
                }
            }
            "433" | "436" | "437" if !self.registered => self.next_nick(out),
            "432" if !self.registered => {
                if self.nick_tries == 0 {
                    out.push(Output::Fail(AdapterError::Config(format!(
                        "the server refuses the nick {:?}: {}",
                        self.nick,
                        m.params.last().map(String::as_str).unwrap_or("")
                    ))));
                } else {
                    self.next_nick(out);
                }
            }
            "730" => {
                for target in m.param(1).split(',').filter(|t| !t.is_empty()) {
                    let nick = target.split('!').next().unwrap_or(target);
                    let n = self.lower(nick);
                    self.online.insert(n.clone());
                    self.verified.remove(&n);
                    out.push(Output::Paced(line("WHOIS", &[nick], None)));
                }
                self.refresh().await;
            }
            "731" => {
                for target in m.param(1).split(',').filter(|t| !t.is_empty()) {
                    let n = self.lower(target.split('!').next().unwrap_or(target));
                    self.forget_nick(&n);
                }
                self.refresh().await;
            }
            "303" => {
                // The answer covers exactly the nicks its ISON asked about.
                let Some(asked) = self.ison_asked.pop_front() else {
                    return;
                };
                let on: HashSet<String> = m.param(1).split_whitespace().map(|n| self.lower(n)).collect();
                for n in asked {
                    if on.contains(&n) {
                        if !self.online.contains(&n) {
                            self.online.insert(n.clone());
                            self.verified.remove(&n);
                            out.push(Output::Paced(line("WHOIS", &[&n], None)));
                        }
                    } else {
                        self.forget_nick(&n);
                    }
                }
                self.refresh().await;
            }
            "352" => {
                // WHO reply: <me> <channel> <user> <host> <server> <nick> <flags> :<hops> <realname>
                let n = self.lower(m.param(5));
                if !n.is_empty() && n != self.lower(&self.nick) {
                    self.online.insert(n.clone());
                    let channel = self.lower(m.param(1));
                    if channel.starts_with(['#', '&']) {
                        self.seen_in.entry(n.clone()).or_default().insert(channel);
                    }
                    if m.param(6).starts_with('G') {
                        self.away.insert(n);
                    } else {
                        self.away.remove(&n);
                    }
                }
            }
            "315" => self.refresh().await,
            "311" => {
                let n = self.lower(m.param(1));
                self.whois.entry(n).or_default().exists = true;
            }
            "330" => {
                let n = self.lower(m.param(1));
                self.whois.entry(n).or_default().account = Some(m.param(2).to_owned());
            }
            "301" => {
                let n = self.lower(m.param(1));
                if let Some(w) = self.whois.get_mut(&n) {
                    w.away = true;
                }
            }
            "318" => {
                let n = self.lower(m.param(1));
                let w = self.whois.remove(&n).unwrap_or_default();
                if w.exists {
                    self.online.insert(n.clone());
                    self.verified.insert(n.clone());
                    match w.account {
                        Some(a) => {
                            self.nick_account.insert(n.clone(), a);
                        }
                        None => {
                            self.nick_account.remove(&n);
                        }
                    }
                    if w.away {
                        self.away.insert(n.clone());
                    } else {
                        self.away.remove(&n);
                    }
                } else {
                    self.forget_nick(&n);
                }
                self.refresh().await;
                for cmd in self.pending.remove(&n).unwrap_or_default() {
                    Box::pin(self.command(&cmd, false, out)).await;
                }
            }
            "ACCOUNT" => {
                if let Some(nick) = m.nick() {
                    let n = self.lower(nick);
                    self.verified.insert(n.clone());
                    match m.param(0) {
                        "*" | "" => {
                            self.nick_account.remove(&n);
                        }
                        a => {
                            self.nick_account.insert(n, a.to_owned());
                        }
                    }
                    self.refresh().await;
                }
            }
            "JOIN" => {
                if let Some(nick) = m.nick() {
                    let n = self.lower(nick);
                    if n == self.lower(&self.nick) {
                        // Learn who is here and who is away.
                        out.push(Output::Paced(line("WHO", &[m.param(0)], None)));
                    } else {
                        self.online.insert(n.clone());
                        let channel = self.lower(m.param(0));
                        self.seen_in.entry(n.clone()).or_default().insert(channel);
                        if self.caps.contains("extended-join") && m.params.len() >= 2 {
                            self.verified.insert(n.clone());
                            match m.param(1) {
                                "*" => {
                                    self.nick_account.remove(&n);
                                }
                                a => {
                                    self.nick_account.insert(n, a.to_owned());
                                }
                            }
                        }
                        self.refresh().await;
                    }
                }
            }
            "AWAY" => {
                if let Some(nick) = m.nick() {
                    let n = self.lower(nick);
                    if m.param(0).is_empty() {
                        self.away.remove(&n);
                    } else {
                        self.away.insert(n);
                    }
                    self.refresh().await;
                }
            }
            "NICK" => self.nick_change(m, out).await,
            "QUIT" => {
                if let Some(nick) = m.nick() {
                    let n = self.lower(nick);
                    self.forget_nick(&n);
                    self.refresh().await;
                }
            }
            "PART" | "KICK" => {
                let (channel, gone) = if m.command == "KICK" {
                    (m.param(0), Some(m.param(1)))
                } else {
                    (m.param(0), m.nick())
                };
                let Some(gone) = gone else { return };
                let n = self.lower(gone);
                let channel_l = self.lower(channel);
                if n == self.lower(&self.nick) {
                    // Whoever the bot saw only there is out of sight now.
                    let mut stale = Vec::new();
                    for (nick, chans) in self.seen_in.iter_mut() {
                        if chans.remove(&channel_l) && chans.is_empty() {
                            stale.push(nick.clone());
                        }
                    }
                    for nick in stale {
                        self.seen_in.remove(&nick);
                        if !self.is_watched(&nick) {
                            self.forget_nick(&nick);
                        }
                    }
                    self.refresh().await;
                    if m.command == "KICK"
                        && self
                            .ctx
                            .config()
                            .channels
                            .iter()
                            .any(|c| self.lower(c) == self.lower(channel))
                    {
                        tracing::warn!(adapter = self.ctx.name(), %channel, by = m.nick().unwrap_or(""), "kicked; rejoining");
                        out.push(Output::Paced(line("JOIN", &[channel], None)));
                    }
                } else {
                    let still_seen = match self.seen_in.get_mut(&n) {
                        Some(chans) => {
                            chans.remove(&channel_l);
                            !chans.is_empty()
                        }
                        None => false,
                    };
                    if !still_seen {
                        self.seen_in.remove(&n);
                        if !self.is_watched(&n) {
                            // Out of sight: what we knew about this nick
                            // goes stale (watched nicks stay tracked by
                            // MONITOR or ISON).
                            self.forget_nick(&n);
                            self.refresh().await;
                        }
                    }
                }
            }
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

    fn forget_nick(&mut self, n: &str) {
        self.online.remove(n);
        self.seen_in.remove(n);
        self.away.remove(n);
        self.nick_account.remove(n);
        self.verified.remove(n);
    }

    fn cap(&mut self, m: &Msg, out: &mut Vec<Output>) {
        match m.param(1) {
            "LS" => {
                let more = m.params.len() >= 4 && m.param(2) == "*";
                let list = m.params.last().map(String::as_str).unwrap_or("");
                for cap in list.split_whitespace() {
                    self.offered.insert(cap.split('=').next().unwrap_or(cap).to_owned());
                }
                if more {
                    return;
                }
                let want: Vec<&str> = WANTED_CAPS
                    .iter()
                    .copied()
                    .filter(|c| self.offered.contains(*c))
                    .filter(|c| *c != "sasl" || self.ctx.config().sasl_account.is_some())
                    .collect();
                if want.is_empty() {
                    self.end_cap(out);
                } else {
                    out.push(Output::Now(format!("CAP REQ :{}", want.join(" "))));
                }
            }
            "ACK" => {
                for c in m.params.last().map(String::as_str).unwrap_or("").split_whitespace() {
                    self.caps.insert(c.trim_start_matches('-').to_owned());
                }
                if self.caps.contains("sasl") && self.ctx.config().sasl_account.is_some() {
                    out.push(Output::Now("AUTHENTICATE PLAIN".into()));
                } else {
                    self.end_cap(out);
                }
            }
            "NAK" => self.end_cap(out),
            _ => {}
        }
    }

    fn end_cap(&self, out: &mut Vec<Output>) {
        if self.ctx.config().sasl_account.is_some() && !self.caps.contains("sasl") {
            tracing::warn!(
                adapter = self.ctx.name(),
                "the server offers no SASL; the bot stays logged out"
            );
        }
        out.push(Output::Now("CAP END".into()));
    }

    async fn nick_change(&mut self, m: &Msg, out: &mut Vec<Output>) {
        let (Some(old), new) = (m.nick(), m.param(0)) else {
            return;
        };
        if self.lower(old) == self.lower(&self.nick) {
            self.nick = new.to_owned();
            return;
        }
        let (o, n) = (self.lower(old), self.lower(new));
        let was_online = self.online.remove(&o);
        if was_online {
            self.online.insert(n.clone());
        }
        if let Some(chans) = self.seen_in.remove(&o) {
            self.seen_in.insert(n.clone(), chans);
        }
        if self.away.remove(&o) {
            self.away.insert(n.clone());
        }
        if self.verified.remove(&o) {
            self.verified.insert(n.clone());
        }
        if let Some(acct) = self.nick_account.remove(&o) {
            self.nick_account.insert(n, acct.clone());
            // A registered user changed nick: follow them.
            if self.accounts.get(&acct).is_some_and(|k| self.lower(k) == o) {
                self.accounts.insert(acct.clone(), new.to_owned());
                let _ = self.ctx.state_put(&format!("acct:{acct}"), new).await;
                if self.monitor {
                    out.push(Output::Now(format!("MONITOR - {old}")));
                    self.monitor_add(&[new.to_owned()], out);
                }
            }
        }
        self.refresh().await;
    }

    /// A channel message: push it to every registered user it highlights.
    async fn highlights(&mut self, m: &Msg) {
        let Some(sender) = m.nick() else { return };
        let text = m.param(1);
        if text.starts_with('\x01') && !text.starts_with("\x01ACTION") {
            return; // CTCP
        }
        let clean = strip_formatting(text.trim_start_matches("\x01ACTION").trim_end_matches('\x01'));
        let clean = clean.trim();
        let sender_lower = self.lower(sender);
        let sender_account = self.nick_account.get(&sender_lower).cloned();
        let channel = m.param(0);
        let keywords = &self.ctx.config().keywords;
        let hit_all = keywords.iter().any(|k| mentions(clean, k, self.cm));
        let mut targets = Vec::new();
        for (acct, nick) in &self.accounts {
            if sender_account.as_deref() == Some(acct.as_str()) || self.lower(nick) == sender_lower {
                continue;
            }
            if hit_all || mentions(clean, nick, self.cm) {
                targets.push(acct.clone());
            }
        }
        for acct in targets {
            let Some(to) = self.user(&acct) else { continue };
            let msg = Message {
                to,
                from: format!("{sender} in {channel}"),
                text: Some(clean.to_owned()),
                thread: Some(channel.to_owned()),
                device: None,
                respect_presence: true,
                badge: None,
            };
            tracing::debug!(adapter = self.ctx.name(), account = %acct, %channel, "highlight");
            let _ = self.ctx.notify(Event::Message(msg)).await;
        }
    }

    /// A private message to the bot. `may_wait`: the sender's account may
    /// be looked up with WHOIS first.
    async fn command(&mut self, m: &Msg, may_wait: bool, out: &mut Vec<Output>) {
        let Some(sender) = m.nick().map(str::to_owned) else {
            return;
        };
        let text = strip_formatting(m.param(1));
        let mut words = text.split_whitespace();
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        match verb.as_str() {
            "HELP" | "" => {
                for l in [
                    "I push IRC highlights and TELLs to your iPhone while you are away or offline.",
                    "REGISTER <token> [topic] [sandbox] - add this device to your services account (log in first)",
                    "UNREGISTER <token> - remove a device",
                    "STATUS - your devices and what I think your presence is",
                    "TELL <nick> <text> - push a message to a registered user",
                ] {
                    self.notice(&sender, l, out);
                }
            }
            "TELL" => self.tell(&sender, &args, &text, out).await,
            "REGISTER" | "UNREGISTER" | "STATUS" => {
                let n = self.lower(&sender);
                // Who sent this, as the server vouches for it now: the
                // account tag where the server sends them, else a fresh
                // WHOIS (never a remembered nick: it may have changed
                // hands since).
                let account = if self.caps.contains("account-tag") {
                    m.account().map(str::to_owned)
                } else if may_wait {
                    let queued = self.pending.get(&n).map_or(0, Vec::len);
                    if queued >= MAX_PENDING_PER_SENDER || (queued == 0 && self.pending.len() >= MAX_PENDING_SENDERS) {
                        self.notice(&sender, "Too many commands waiting; try again in a moment.", out);
                        return;
                    }
                    self.pending.entry(n).or_default().push(m.clone());
                    if queued == 0 {
                        out.push(Output::Paced(line("WHOIS", &[&sender], None)));
                    }
                    return;
                } else {
                    self.nick_account.get(&n).cloned()
                };
                let Some(account) = account else {
                    tracing::info!(adapter = self.ctx.name(), nick = %sender, command = %verb, "refused: sender not logged in");
                    self.notice(
                        &sender,
                        "You are not logged in to a services account. Log in (SASL, or /msg NickServ IDENTIFY) and try again: devices belong to accounts, not nicks.",
                        out,
                    );
                    return;
                };
                match verb.as_str() {
                    "REGISTER" => self.register(&sender, &account, &args, out).await,
                    "UNREGISTER" => self.unregister(&sender, &account, &args, out).await,
                    _ => self.status(&sender, &account, out).await,
                }
            }
            _ => self.notice(&sender, &format!("Unknown command {verb}; try HELP."), out),
        }
    }

    async fn register(&mut self, sender: &str, account: &str, args: &[&str], out: &mut Vec<Output>) {
        let Some(token) = args.first() else {
            return self.notice(sender, "Usage: REGISTER <token> [topic] [sandbox]", out);
        };
        let token = match DeviceToken::parse(token) {
            Ok(t) => t,
            Err(e) => return self.notice(sender, &format!("That token is not usable: {e}"), out),
        };
        let mut topic = self.ctx.config().topic.clone();
        let mut environment = None;
        for a in &args[1..] {
            match parse_environment(a) {
                Some(env) => environment = Some(env),
                None => topic = Some((*a).to_owned()),
            }
        }
        let Some(user) = self.user(account) else {
            return self.notice(sender, "Your account name cannot be used as a user id.", out);
        };
        let reply = self
            .ctx
            .submit(Event::Register {
                user,
                device: Device {
                    token: token.clone(),
                    topic,
                    environment,
                },
            })
            .await;
        match reply {
            Ok(_) => {
                let first = !self.accounts.contains_key(account);
                self.accounts.insert(account.to_owned(), sender.to_owned());
                let _ = self.ctx.state_put(&format!("acct:{account}"), sender).await;
                self.nick_account.insert(self.lower(sender), account.to_owned());
                self.online.insert(self.lower(sender));
                self.verified.insert(self.lower(sender));
                if first && self.monitor {
                    self.monitor_add(&[sender.to_owned()], out);
                }
                tracing::info!(adapter = self.ctx.name(), %account, device = token.short(), "IRC device registered");
                self.notice(
                    sender,
                    &format!("Device {}… registered for account {account}.", token.short()),
                    out,
                );
                self.refresh().await;
            }
            Err(EventError::UnknownTopic(t)) => self.notice(sender, &format!("Unknown app topic {t:?}."), out),
            Err(e) => self.notice(sender, &format!("Could not register now: {e}"), out),
        }
    }

    async fn unregister(&mut self, sender: &str, account: &str, args: &[&str], out: &mut Vec<Output>) {
        let Some(token) = args.first().and_then(|t| DeviceToken::parse(t).ok()) else {
            return self.notice(sender, "Usage: UNREGISTER <token>", out);
        };
        let Some(user) = self.user(account) else { return };
        match self
            .ctx
            .submit(Event::Unregister {
                user,
                token: token.clone(),
            })
            .await
        {
            Ok(_) => self.notice(
                sender,
                &format!("Device {}… removed from account {account}.", token.short()),
                out,
            ),
            Err(e) => self.notice(sender, &format!("Could not unregister now: {e}"), out),
        }
    }

    async fn status(&mut self, sender: &str, account: &str, out: &mut Vec<Output>) {
        let Some(user) = self.user(account) else { return };
        let devices = match self.ctx.submit(Event::ListDevices { user }).await {
            Ok(Reply::Devices(d)) => d.len(),
            _ => 0,
        };
        let presence = self.reported.get(account).copied().unwrap_or(Presence::Offline);
        self.notice(
            sender,
            &format!("Account {account}: {devices} device(s); I see you as {presence:?}."),
            out,
        );
    }

    /// Count a TELL against its sender's budget.
    fn tell_allowed(&mut self, sender: &str) -> bool {
        let now = Instant::now();
        if self.tells.len() >= MAX_TELL_SENDERS {
            self.tells
                .retain(|_, (start, _)| now.duration_since(*start) < TELL_WINDOW);
        }
        let key = self.lower(sender);
        if !self.tells.contains_key(&key) && self.tells.len() >= MAX_TELL_SENDERS {
            return false;
        }
        let (start, count) = self.tells.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= TELL_WINDOW {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        *count <= TELLS_PER_WINDOW
    }

    async fn tell(&mut self, sender: &str, args: &[&str], text: &str, out: &mut Vec<Output>) {
        let Some(target) = args.first() else {
            return self.notice(sender, "Usage: TELL <nick> <text>", out);
        };
        let body = text.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
        if body.is_empty() {
            return self.notice(sender, "Usage: TELL <nick> <text>", out);
        }
        if !self.tell_allowed(sender) {
            return self.notice(
                sender,
                &format!("At most {TELLS_PER_WINDOW} TELLs a minute; try again later."),
                out,
            );
        }
        let t = self.lower(target);
        let account = self
            .nick_account
            .get(&t)
            .filter(|a| self.accounts.contains_key(*a))
            .cloned()
            .or_else(|| {
                self.accounts
                    .iter()
                    .find(|(_, n)| self.lower(n) == t)
                    .map(|(a, _)| a.clone())
            });
        let Some(account) = account else {
            return self.notice(sender, &format!("{target} has no device registered with me."), out);
        };
        let Some(to) = self.user(&account) else { return };
        let msg = Message {
            to,
            from: sender.to_owned(),
            text: Some(body),
            thread: Some(sender.to_owned()),
            device: None,
            respect_presence: true,
            badge: None,
        };
        let reply = match self.ctx.submit(Event::Message(msg)).await {
            Ok(Reply::Queued(0)) => format!("{target} is here (or has no device); no push sent."),
            Ok(Reply::Queued(n)) => format!("Pushed to {target} ({n} device(s))."),
            Ok(_) => "Done.".to_owned(),
            Err(e) => format!("Could not push now: {e}"),
        };
        self.notice(sender, &reply, out);
    }
}

/// Split `nicks` into groups whose joined length stays within
/// [`NICKS_PER_LINE`] bytes.
fn batches(nicks: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut len = 0;
    for n in nicks {
        match out.last_mut() {
            Some(b) if len + 1 + n.len() <= NICKS_PER_LINE => {
                b.push(n.clone());
                len += 1 + n.len();
            }
            _ => {
                out.push(vec![n.clone()]);
                len = n.len();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushbridge_api::Envelope;
    use std::sync::{Arc, Mutex};

    const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    /// A bot on a test context, and the events it sent the core.
    async fn bot(extra: serde_json::Value) -> (Bot, Arc<Mutex<Vec<Event>>>) {
        let mut cfg = serde_json::json!({"network": "test", "server": "127.0.0.1:6667", "channels": ["#chat"]});
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let config: IrcConfig = serde_json::from_value(cfg).unwrap();
        let (ctx, mut core) = Context::for_test("irc:test", config);
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        tokio::spawn(async move {
            while let Some(Envelope { event, reply, .. }) = core.recv().await {
                let answer = match &event {
                    Event::Message(_) => Ok(Reply::Queued(1)),
                    Event::ListDevices { .. } => Ok(Reply::Devices(Vec::new())),
                    _ => Ok(Reply::Done),
                };
                seen.lock().unwrap().push(event);
                if let Some(r) = reply {
                    let _ = r.send(answer);
                }
            }
        });
        (Bot::new(ctx).await.unwrap(), events)
    }

    async fn feed(bot: &mut Bot, lines: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for l in lines {
            bot.handle(&Msg::parse(l).unwrap(), &mut out).await;
        }
        out.into_iter()
            .map(|o| match o {
                Output::Now(l) | Output::Paced(l) => l,
                Output::Fail(e) => format!("FAIL {e}"),
            })
            .collect()
    }

    fn registers(events: &Mutex<Vec<Event>>) -> Vec<String> {
        events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Register { user, .. } => Some(user.to_string()),
                _ => None,
            })
            .collect()
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// The presence the bot reported last.
    fn presence(events: &Mutex<Vec<Event>>) -> Option<Presence> {
        events.lock().unwrap().iter().rev().find_map(|e| match e {
            Event::Presence { presence, .. } => Some(*presence),
            _ => None,
        })
    }

    #[tokio::test]
    async fn multi_line_cap_ls_then_sasl_plain() {
        let (mut b, _) = bot(serde_json::json!({"sasl_account": "bot", "sasl_password": "pw"})).await;
        let out = feed(
            &mut b,
            &[
                ":srv CAP * LS * :multi-prefix sasl=PLAIN,EXTERNAL",
                ":srv CAP * LS :account-tag away-notify",
            ],
        )
        .await;
        assert_eq!(out, vec!["CAP REQ :sasl away-notify account-tag"]);
        let out = feed(&mut b, &[":srv CAP * ACK :sasl away-notify account-tag"]).await;
        assert_eq!(out, vec!["AUTHENTICATE PLAIN"]);
        let out = feed(&mut b, &["AUTHENTICATE +"]).await;
        assert_eq!(out, vec![format!("AUTHENTICATE {}", sasl_plain("bot", "pw")[0])]);
        assert_eq!(
            feed(&mut b, &[":srv 903 * :SASL authentication successful"]).await,
            vec!["CAP END"]
        );
        let out = feed(&mut b, &[":srv 904 * :SASL authentication failed"]).await;
        assert!(out[0].starts_with("FAIL") && out[0].contains("\"bot\""), "{out:?}");
    }

    #[tokio::test]
    async fn without_sasl_configured_sasl_is_not_requested() {
        let (mut b, _) = bot(serde_json::json!({})).await;
        let out = feed(&mut b, &[":srv CAP * LS :sasl message-tags"]).await;
        assert_eq!(out, vec!["CAP REQ :message-tags"]);
        assert_eq!(feed(&mut b, &[":srv CAP * NAK :message-tags"]).await, vec!["CAP END"]);
    }

    #[tokio::test]
    async fn nick_collisions_stay_short_and_an_erroneous_nick_is_a_config_error() {
        let (mut b, _) = bot(serde_json::json!({"nick": "pushbridge"})).await;
        let out = feed(&mut b, &[":srv 433 * pushbridge :Nickname is already in use"]).await;
        assert_eq!(out, vec!["NICK pushbridge_"]);
        let out = feed(
            &mut b,
            &[":srv 433 * pushbridge_ :in use", ":srv 437 * pushbri_2 :unavailable"],
        )
        .await;
        assert_eq!(out, vec!["NICK pushbri_2", "NICK pushbri_3"]);
        let out = feed(&mut b, &[":srv 432 * pushbri_3 :Erroneous"]).await;
        assert_eq!(
            out,
            vec!["NICK pushbri_4"],
            "a derived nick the server dislikes: try the next"
        );
        let (mut b, _) = bot(serde_json::json!({"nick": "bad"})).await;
        let out = feed(&mut b, &[":srv 432 * bad :Erroneous Nickname"]).await;
        assert!(out[0].starts_with("FAIL") && out[0].contains("bad"), "{out:?}");
    }

    #[tokio::test]
    async fn short_isupport_lines_do_not_panic() {
        let (mut b, _) = bot(serde_json::json!({})).await;
        assert!(feed(&mut b, &[":srv 005", ":srv 005 me", ":srv 005 me :are supported"])
            .await
            .is_empty());
        feed(&mut b, &[":srv 005 me CASEMAPPING=ascii MONITOR=100 :are supported"]).await;
        assert!(b.monitor && b.cm == CaseMapping::Ascii);
    }

    #[tokio::test]
    async fn with_account_tags_only_the_tag_counts() {
        let (mut b, events) = bot(serde_json::json!({})).await;
        feed(
            &mut b,
            &[
                ":srv CAP * LS :account-tag",
                ":srv CAP * ACK :account-tag",
                ":srv 001 pushbridge :hi",
            ],
        )
        .await;
        // alice was seen logged in once...
        feed(&mut b, &["@account=alice :alice!a@h PRIVMSG #chat :hello"]).await;
        // ...but this message carries no account: refused, whatever we remember.
        let out = feed(&mut b, &[&format!(":alice!a@h PRIVMSG pushbridge :REGISTER {TOKEN}")]).await;
        assert!(out.iter().any(|l| l.contains("not logged in")), "{out:?}");
        settle().await;
        assert!(registers(&events).is_empty());
        let out = feed(
            &mut b,
            &[&format!(
                "@account=alice :alice!a@h PRIVMSG pushbridge :REGISTER {TOKEN} sandbox"
            )],
        )
        .await;
        assert!(
            out.iter().any(|l| l.contains("registered for account alice")),
            "{out:?}"
        );
        assert_eq!(registers(&events), vec!["irc:test:alice"]);
    }

    #[tokio::test]
    async fn without_account_tags_a_fresh_whois_decides() {
        let (mut b, events) = bot(serde_json::json!({})).await;
        feed(
            &mut b,
            &[
                ":srv CAP * LS :extended-join",
                ":srv CAP * ACK :extended-join",
                ":srv 001 pushbridge :hi",
            ],
        )
        .await;
        // alice joins logged in, leaves, quits out of sight; a guest takes her nick.
        feed(&mut b, &[":alice!a@h JOIN #chat alice :Alice", ":alice!a@h PART #chat"]).await;
        let out = feed(&mut b, &[&format!(":alice!g@h PRIVMSG pushbridge :REGISTER {TOKEN}")]).await;
        assert_eq!(out, vec!["WHOIS alice"]);
        let out = feed(
            &mut b,
            &[
                ":srv 311 pushbridge alice g h * :guest",
                ":srv 318 pushbridge alice :End of /WHOIS",
            ],
        )
        .await;
        assert!(out.iter().any(|l| l.contains("not logged in")), "{out:?}");
        settle().await;
        assert!(
            registers(&events).is_empty(),
            "the guest got no device on alice's account"
        );
        // The real alice, logged in.
        feed(&mut b, &[&format!(":alice!a@h PRIVMSG pushbridge :REGISTER {TOKEN}")]).await;
        let out = feed(
            &mut b,
            &[
                ":srv 311 pushbridge alice a h * :Alice",
                ":srv 330 pushbridge alice alice :is logged in as",
                ":srv 318 pushbridge alice :End",
            ],
        )
        .await;
        assert!(
            out.iter().any(|l| l.contains("registered for account alice")),
            "{out:?}"
        );
        assert_eq!(registers(&events), vec!["irc:test:alice"]);
    }

    #[tokio::test]
    async fn commands_waiting_for_whois_are_bounded() {
        let (mut b, _) = bot(serde_json::json!({})).await;
        feed(&mut b, &[":srv 001 pushbridge :hi"]).await;
        let mut whois = 0;
        for i in 0..(MAX_PENDING_SENDERS + 10) {
            for _ in 0..(MAX_PENDING_PER_SENDER + 2) {
                let out = feed(&mut b, &[&format!(":n{i}!u@h PRIVMSG pushbridge :STATUS")]).await;
                whois += out.iter().filter(|l| l.starts_with("WHOIS")).count();
            }
        }
        assert_eq!(whois, MAX_PENDING_SENDERS, "one WHOIS per waiting sender");
        assert_eq!(b.pending.len(), MAX_PENDING_SENDERS);
        assert!(b.pending.values().all(|v| v.len() == MAX_PENDING_PER_SENDER));
    }

    #[tokio::test]
    async fn ison_answers_cover_only_their_own_batch() {
        let (mut b, _) = bot(serde_json::json!({})).await;
        let nicks: Vec<String> = (0..40).map(|i| format!("user{i:02}_with_a_long_nick_xx")).collect();
        for n in &nicks {
            b.accounts.insert(n.clone(), n.clone());
        }
        feed(&mut b, &[":srv 001 pushbridge :hi"]).await;
        let out = feed(&mut b, &[":srv 376 pushbridge :End of MOTD"]).await;
        let isons: Vec<&String> = out.iter().filter(|l| l.starts_with("ISON ")).collect();
        assert!(isons.len() >= 2, "{isons:?}");
        assert!(isons.iter().all(|l| l.len() + 2 <= 512), "ISON lines fit the limit");
        let batches: Vec<Vec<&str>> = isons.iter().map(|l| l["ISON ".len()..].split(' ').collect()).collect();
        // Everyone is online: each ISON is answered with its own nicks.
        for batch in &batches {
            feed(&mut b, &[&format!(":srv 303 pushbridge :{}", batch.join(" "))]).await;
        }
        for n in &nicks {
            assert!(b.online.contains(&b.lower(n)), "{n} online");
        }
        // A new poll; the answer to its first ISON lists nobody.
        let mut out = Vec::new();
        b.poll_presence(&mut out);
        feed(&mut b, &[":srv 303 pushbridge :"]).await;
        let Some(Output::Paced(first)) = out.first() else {
            panic!("{out:?}")
        };
        let first: Vec<&str> = first["ISON ".len()..].split(' ').collect();
        for n in &nicks {
            let online = b.online.contains(&b.lower(n));
            assert_eq!(
                online,
                !first.contains(&n.as_str()),
                "{n}: only the first batch went offline"
            );
        }
    }

    #[tokio::test]
    async fn who_flags_and_away_notify_set_away() {
        let (mut b, events) = bot(serde_json::json!({"watch_accounts": ["alice"]})).await;
        feed(&mut b, &[":srv 001 pushbridge :hi"]).await;
        let out = feed(&mut b, &[":pushbridge!b@h JOIN #chat"]).await;
        assert_eq!(out, vec!["WHO #chat"]);
        feed(
            &mut b,
            &[
                ":srv 352 pushbridge #chat a h srv alice G :0 Alice",
                ":srv 315 pushbridge #chat :End of /WHO list.",
            ],
        )
        .await;
        settle().await;
        assert_eq!(presence(&events), Some(Presence::Away));
        feed(&mut b, &[":alice!a@h AWAY"]).await;
        settle().await;
        assert_eq!(presence(&events), Some(Presence::Online));
    }

    /// alice is on IRC with a second nick (logged in to her account) in
    /// two channels the bot watches: leaving one keeps her online; leaving
    /// the last takes her out of sight, and so does the bot leaving.
    #[tokio::test]
    async fn a_nick_leaving_one_channel_of_two_stays_online() {
        let (mut b, events) =
            bot(serde_json::json!({"watch_accounts": ["alice"], "channels": ["#chat", "#dev"]})).await;
        feed(
            &mut b,
            &[
                ":srv CAP * LS :extended-join",
                ":srv CAP * ACK :extended-join",
                ":srv 001 pushbridge :hi",
                ":pushbridge!b@h JOIN #chat * :bot",
                ":pushbridge!b@h JOIN #dev * :bot",
                ":alice_m!a@h JOIN #chat alice :Alice",
                ":alice_m!a@h JOIN #dev alice :Alice",
            ],
        )
        .await;
        settle().await;
        assert_eq!(presence(&events), Some(Presence::Online));
        feed(&mut b, &[":alice_m!a@h PART #dev :bye"]).await;
        settle().await;
        assert_eq!(presence(&events), Some(Presence::Online), "still in #chat");
        feed(&mut b, &[":alice_m!a@h PART #chat :bye"]).await;
        settle().await;
        assert_eq!(presence(&events), Some(Presence::Offline), "out of sight");
        // Seen again by WHO in #chat; then the bot leaves #chat.
        feed(
            &mut b,
            &[
                ":srv 352 pushbridge #chat a h srv alice_m H :0 Alice",
                ":srv 354 pushbridge #chat",
                ":srv 315 pushbridge #chat :End of /WHO list.",
            ],
        )
        .await;
        feed(&mut b, &[":alice_m!a@h ACCOUNT alice"]).await;
        settle().await;
        assert_eq!(presence(&events), Some(Presence::Online));
        feed(&mut b, &[":op!o@h KICK #chat pushbridge :out"]).await;
        settle().await;
        assert_eq!(
            presence(&events),
            Some(Presence::Offline),
            "the bot no longer sees #chat"
        );
    }

    #[tokio::test]
    async fn tells_are_rate_limited_per_sender() {
        let (mut b, events) = bot(serde_json::json!({"watch_accounts": ["alice"]})).await;
        feed(&mut b, &[":srv 001 pushbridge :hi"]).await;
        let mut pushed = 0;
        for _ in 0..(TELLS_PER_WINDOW + 3) {
            let out = feed(&mut b, &[":bob!b@h PRIVMSG pushbridge :TELL alice lunch?"]).await;
            pushed += out.iter().filter(|l| l.contains("Pushed to alice")).count();
        }
        assert_eq!(pushed, TELLS_PER_WINDOW as usize);
        let out = feed(&mut b, &[":carol!c@h PRIVMSG pushbridge :TELL alice hi"]).await;
        assert!(
            out.iter().any(|l| l.contains("Pushed to alice")),
            "another sender has its own budget"
        );
        settle().await;
        let messages = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::Message(_)))
            .count();
        assert_eq!(messages, TELLS_PER_WINDOW as usize + 1);
    }

    #[tokio::test]
    async fn the_bot_rejoins_after_a_kick() {
        let (mut b, _) = bot(serde_json::json!({})).await;
        feed(&mut b, &[":srv 001 pushbridge :hi"]).await;
        let out = feed(&mut b, &[":op!o@h KICK #chat pushbridge :out"]).await;
        assert_eq!(out, vec!["JOIN #chat"]);
        assert!(feed(&mut b, &[":op!o@h KICK #other pushbridge :out"]).await.is_empty());
    }
}
