//! What users send the bot privately: `HELP`, `REGISTER <token> [topic]
//! [sandbox]`, `UNREGISTER <token>`, `STATUS`, `TELL <nick> <text>` and the
//! settings commands `MUTE`, `UNMUTE`, `QUIET` (see `settings`), answered
//! with NOTICEs.
//!
//! Devices and settings belong to services accounts, never to nicks:
//! REGISTER, UNREGISTER, STATUS and the settings commands are taken only from a sender the server vouches
//! for now (the `account` tag, else a fresh WHOIS the command waits for).
//! Waiting commands and TELLs are bounded per sender.

use std::time::{Duration, Instant};

use pushbridge_api::{Device, DeviceToken, Event, EventError, Message, Presence, Reply};

use super::{Bot, Output};
use crate::msg::{line, strip_formatting, Msg};
use crate::parse_environment;

/// Senders whose commands may wait for a WHOIS at once, and commands per
/// sender: a flood of private messages cannot grow memory.
const MAX_PENDING_SENDERS: usize = 64;
const MAX_PENDING_PER_SENDER: usize = 4;
/// TELLs one sender may send per [`TELL_WINDOW`].
const TELLS_PER_WINDOW: u32 = 5;
const TELL_WINDOW: Duration = Duration::from_secs(60);
/// Senders remembered for TELL limits.
const MAX_TELL_SENDERS: usize = 1024;

impl Bot {
    /// A private message to the bot. `may_wait`: the sender's account may
    /// be looked up with WHOIS first.
    pub(super) async fn command(&mut self, m: &Msg, may_wait: bool, out: &mut Vec<Output>) {
        let Some(sender) = m.nick().map(str::to_owned) else {
            return;
        };
        let text = strip_formatting(m.param(1));
        let mut words = text.split_whitespace();
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        match verb.as_str() {
            "HELP" | "" => self.help(&sender, out),
            "TELL" => self.tell(&sender, &args, &text, out).await,
            "REGISTER" | "UNREGISTER" | "STATUS" | "MUTE" | "UNMUTE" | "QUIET" => {
                let Some(account) = self.vouched_account(m, &sender, &verb, may_wait, out) else {
                    return;
                };
                match verb.as_str() {
                    "REGISTER" => self.register(&sender, &account, &args, out).await,
                    "UNREGISTER" => self.unregister(&sender, &account, &args, out).await,
                    "STATUS" => self.status(&sender, &account, out).await,
                    _ => self.setting(&sender, &account, &verb, &args, out).await,
                }
            }
            _ => self.notice(&sender, &format!("Unknown command {verb}; try HELP."), out),
        }
    }

    /// Run the commands that waited for the WHOIS of the lower-cased nick
    /// `n`, now that it ended.
    pub(super) async fn resume_pending(&mut self, n: &str, out: &mut Vec<Output>) {
        for cmd in self.pending.remove(n).unwrap_or_default() {
            Box::pin(self.command(&cmd, false, out)).await;
        }
    }

    fn help(&self, sender: &str, out: &mut Vec<Output>) {
        for l in [
            "I push IRC highlights and TELLs to your iPhone while you are away or offline.",
            "REGISTER <token> [topic] [sandbox] - add this device to your services account (log in first)",
            "UNREGISTER <token> - remove a device",
            "STATUS - your devices, what I think your presence is, your quiet hours and mutes",
            "MUTE <#channel> [minutes] - no alerts from that channel (the badge still counts); UNMUTE <#channel> ends it",
            "QUIET <HH:MM>-<HH:MM> <zone> - silent pushes during those hours (QUIET 22:00-07:00 Europe/Berlin); QUIET off",
            "TELL <nick> <text> - push a message to a registered user",
        ] {
            self.notice(sender, l, out);
        }
    }

    /// Who sent `m`, as the server vouches for it now: the account tag
    /// where the server sends them, else a fresh WHOIS (never a remembered
    /// nick: it may have changed hands since). `None` when the command was
    /// queued to wait for that WHOIS, or refused (the sender is told).
    fn vouched_account(
        &mut self,
        m: &Msg,
        sender: &str,
        verb: &str,
        may_wait: bool,
        out: &mut Vec<Output>,
    ) -> Option<String> {
        let n = self.lower(sender);
        let account = if self.caps.contains("account-tag") {
            m.account().map(str::to_owned)
        } else if may_wait {
            self.wait_for_whois(n, m, sender, out);
            return None;
        } else {
            self.nick_account.get(&n).cloned()
        };
        if account.is_none() {
            tracing::info!(adapter = self.ctx.name(), nick = %sender, command = %verb, "refused: sender not logged in");
            self.notice(
                sender,
                "You are not logged in to a services account. Log in (SASL, or /msg NickServ IDENTIFY) and try again: devices belong to accounts, not nicks.",
                out,
            );
        }
        account
    }

    /// Queue `m` from the lower-cased nick `n` until its WHOIS ends (one
    /// WHOIS per sender), within the bounds.
    fn wait_for_whois(&mut self, n: String, m: &Msg, sender: &str, out: &mut Vec<Output>) {
        let queued = self.pending.get(&n).map_or(0, Vec::len);
        if queued >= MAX_PENDING_PER_SENDER || (queued == 0 && self.pending.len() >= MAX_PENDING_SENDERS) {
            self.notice(sender, "Too many commands waiting; try again in a moment.", out);
            return;
        }
        self.pending.entry(n).or_default().push(m.clone());
        if queued == 0 {
            out.push(Output::Paced(line("WHOIS", &[sender], None)));
        }
    }

    /// `REGISTER <token> [topic] [sandbox|production]` for `account`; the
    /// account is watched from now on, under the sender's nick.
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
        let device = Device {
            token: token.clone(),
            topic,
            environment,
        };
        let reply = self
            .ctx
            .submit(Event::Register {
                user: user.clone(),
                device,
            })
            .await;
        match reply {
            Ok(_) => {
                self.watch(sender, account, out).await;
                tracing::info!(adapter = self.ctx.name(), user = %user, device = token.short(), "IRC device registered");
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

    /// Watch `account` under `nick` (kept in the adapter state), known to
    /// be online and logged in.
    async fn watch(&mut self, nick: &str, account: &str, out: &mut Vec<Output>) {
        let first = !self.accounts.contains_key(account);
        self.accounts.insert(account.to_owned(), nick.to_owned());
        let _ = self.ctx.state_put(&format!("acct:{account}"), nick).await;
        self.nick_account.insert(self.lower(nick), account.to_owned());
        self.online.insert(self.lower(nick));
        self.verified.insert(self.lower(nick));
        if first && self.monitor {
            self.monitor_add(&[nick.to_owned()], out);
        }
    }

    /// `UNREGISTER <token>` for `account`.
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

    /// `STATUS`: the account's devices and the presence last reported.
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
        self.settings_status(sender, account, out).await;
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

    /// `TELL <nick> <text>`: push `text` to the account behind `nick` (as
    /// logged in now, else the nick it was registered with).
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
        let Some(account) = self.account_of(target) else {
            return self.notice(sender, &format!("{target} has no device registered with me."), out);
        };
        let Some(to) = self.user(&account) else { return };
        let msg = Message {
            to,
            from: sender.to_owned(),
            subtitle: None,
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

    /// The watched account behind `nick`: the one it is logged in to, else
    /// the one registered under that nick.
    fn account_of(&self, nick: &str) -> Option<String> {
        let t = self.lower(nick);
        self.nick_account
            .get(&t)
            .filter(|a| self.accounts.contains_key(*a))
            .cloned()
            .or_else(|| {
                self.accounts
                    .iter()
                    .find(|(_, n)| self.lower(n) == t)
                    .map(|(a, _)| a.clone())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{account_tag_bot, bot, feed, registers, settle, TOKEN};
    use super::*;

    #[tokio::test]
    async fn with_account_tags_only_the_tag_counts() {
        let (mut b, events) = account_tag_bot().await;
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
}
