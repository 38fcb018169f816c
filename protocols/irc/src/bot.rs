//! The bot's state and decisions: capability negotiation and SASL,
//! presence of registered accounts, highlights, and the commands users
//! send it privately.

use std::collections::{HashMap, HashSet};

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

/// What the bot wants written.
#[derive(Debug)]
pub enum Output {
    /// Protocol lines that must go at once (registration, PONG, WHOIS).
    Now(String),
    /// Messages to people: paced by the token bucket.
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
    /// Lower-cased nicks known to be on the network.
    online: HashSet<String>,
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
            online: HashSet::new(),
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

    /// Start watching presence (MONITOR), or poll it (ISON).
    pub fn poll_presence(&mut self, out: &mut Vec<Output>) {
        if self.monitor || self.accounts.is_empty() {
            return;
        }
        let nicks: Vec<String> = self.accounts.values().cloned().collect();
        for chunk in nicks.chunks(20) {
            out.push(Output::Now(format!("ISON {}", chunk.join(" "))));
        }
    }

    fn monitor_add(&self, nicks: &[String], out: &mut Vec<Output>) {
        for chunk in nicks.chunks(20) {
            out.push(Output::Now(format!("MONITOR + {}", chunk.join(","))));
        }
    }

    /// Recompute and report the presence of every account that uses `nick`
    /// (or of all accounts).
    async fn refresh(&mut self) {
        let accounts: Vec<String> = self.accounts.keys().cloned().collect();
        for a in accounts {
            let nicks: Vec<&String> = self
                .nick_account
                .iter()
                .filter(|(n, acct)| *acct == &a && self.online.contains(*n))
                .map(|(n, _)| n)
                .collect();
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
                for tok in &m.params[1..m.params.len().saturating_sub(1)] {
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
                if self.monitor {
                    self.monitor_add(&nicks, out);
                } else {
                    self.poll_presence(out);
                }
                self.refresh().await;
            }
            "433" if !self.registered => {
                self.nick.push('_');
                out.push(Output::Now(line("NICK", &[&self.nick], None)));
            }
            "730" => {
                for target in m.param(1).split(',').filter(|t| !t.is_empty()) {
                    let nick = target.split('!').next().unwrap_or(target);
                    self.online.insert(self.lower(nick));
                    out.push(Output::Now(line("WHOIS", &[nick], None)));
                }
            }
            "731" => {
                for target in m.param(1).split(',').filter(|t| !t.is_empty()) {
                    let n = self.lower(target.split('!').next().unwrap_or(target));
                    self.forget_nick(&n);
                }
                self.refresh().await;
            }
            "303" => {
                let on: HashSet<String> = m.param(1).split_whitespace().map(|n| self.lower(n)).collect();
                let watched: Vec<String> = self.accounts.values().map(|n| self.lower(n)).collect();
                for n in watched {
                    if on.contains(&n) {
                        if !self.online.contains(&n) {
                            self.online.insert(n.clone());
                            out.push(Output::Now(line("WHOIS", &[&n], None)));
                        }
                    } else {
                        self.forget_nick(&n);
                    }
                }
                self.refresh().await;
            }
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
                    if n != self.lower(&self.nick) {
                        self.online.insert(n.clone());
                        if self.caps.contains("extended-join") && m.params.len() >= 2 {
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
        self.away.remove(n);
        self.nick_account.remove(n);
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
        if self.away.remove(&o) {
            self.away.insert(n.clone());
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
                let account = m
                    .account()
                    .map(str::to_owned)
                    .or_else(|| self.nick_account.get(&n).cloned());
                let Some(account) = account else {
                    if may_wait && !self.caps.contains("account-tag") {
                        // No account tags here: ask the server who this is.
                        self.pending.entry(n).or_default().push(m.clone());
                        out.push(Output::Now(line("WHOIS", &[&sender], None)));
                        return;
                    }
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

    async fn tell(&mut self, sender: &str, args: &[&str], text: &str, out: &mut Vec<Output>) {
        let Some(target) = args.first() else {
            return self.notice(sender, "Usage: TELL <nick> <text>", out);
        };
        let body = text.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
        if body.is_empty() {
            return self.notice(sender, "Usage: TELL <nick> <text>", out);
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
