//! Presence of the registered accounts: which nicks are on the network
//! (IRCv3 MONITOR, else ISON polls), away (WHO flags, WHOIS 301,
//! away-notify), logged in to which account (account-tag, extended-join,
//! account-notify, WHOIS 330), and which channels the bot sees each nick
//! in. From that, the presence of every account, reported to the core
//! when it changes.

use std::collections::HashSet;

use pushbridge_api::{Event, Presence};

use super::{Bot, Output};
use crate::msg::{line, Msg};

/// Bytes of nicks per ISON or MONITOR line (the whole line stays far below
/// the 512-byte limit).
const NICKS_PER_LINE: usize = 400;
/// Watched nicks re-checked with WHOIS (away status) per presence tick.
const RECHECK_PER_TICK: usize = 3;

/// A WHOIS answer being collected (311, 330, 301 until 318).
#[derive(Default)]
pub(super) struct Whois {
    /// 330: the account the nick is logged in to.
    account: Option<String>,
    /// 301: the nick is away.
    away: bool,
    /// 311: the nick exists.
    exists: bool,
}

impl Bot {
    /// Whatever a message says about its sender's account (the IRCv3
    /// `account` tag).
    pub(super) fn note_account_tag(&mut self, m: &Msg) {
        if let (Some(nick), Some(acct)) = (m.nick(), m.account()) {
            let n = self.lower(nick);
            self.track(&n);
            self.online.insert(n.clone());
            self.verified.insert(n.clone());
            self.nick_account.insert(n, acct.to_owned());
        }
    }

    /// 376 / 422, the end of registration: watch every registered account.
    pub(super) fn start_watching(&mut self, out: &mut Vec<Output>) {
        let nicks: Vec<String> = self.accounts.values().cloned().collect();
        // Presence is reported once the server answered (730/731
        // or 303), not guessed now: a reconnect does not flap it.
        if self.monitor {
            self.monitor_add(&nicks, out);
        } else {
            self.poll_presence(out);
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

    /// `MONITOR +` for `nicks`, in lines of at most [`NICKS_PER_LINE`].
    pub(super) fn monitor_add(&self, nicks: &[String], out: &mut Vec<Output>) {
        for batch in batches(nicks) {
            out.push(Output::Paced(format!("MONITOR + {}", batch.join(","))));
        }
    }

    /// Whether the lower-cased nick `n` is the nick of a watched account.
    pub(super) fn is_watched(&self, n: &str) -> bool {
        self.accounts.values().any(|k| self.lower(k) == n)
    }

    /// Recompute the presence of every watched account and report those
    /// that changed.
    pub(super) async fn refresh(&mut self) {
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
                tracing::info!(adapter = self.ctx.name(), user = %user, ?presence, "presence");
                if self.ctx.notify(Event::Presence { user, presence }).await.is_ok() {
                    self.reported.insert(a, presence);
                }
            }
        }
    }

    /// Forget all we know about the lower-cased nick `n`.
    pub(super) fn forget_nick(&mut self, n: &str) {
        self.online.remove(n);
        self.seen_in.remove(n);
        self.away.remove(n);
        self.nick_account.remove(n);
        self.verified.remove(n);
        self.recent.remove(n);
    }

    /// 730 `RPL_MONONLINE`: online; WHOIS says who they are.
    pub(super) async fn monitor_online(&mut self, m: &Msg, out: &mut Vec<Output>) {
        for target in m.param(1).split(',').filter(|t| !t.is_empty()) {
            let nick = target.split('!').next().unwrap_or(target);
            let n = self.lower(nick);
            self.track(&n);
            self.online.insert(n.clone());
            self.verified.remove(&n);
            out.push(Output::Paced(line("WHOIS", &[nick], None)));
        }
        self.refresh().await;
    }

    /// 731 `RPL_MONOFFLINE`.
    pub(super) async fn monitor_offline(&mut self, m: &Msg) {
        for target in m.param(1).split(',').filter(|t| !t.is_empty()) {
            let n = self.lower(target.split('!').next().unwrap_or(target));
            self.forget_nick(&n);
        }
        self.refresh().await;
    }

    /// 303 `RPL_ISON`: the answer covers exactly the nicks its ISON asked
    /// about (the oldest in flight).
    pub(super) async fn ison_reply(&mut self, m: &Msg, out: &mut Vec<Output>) {
        let Some(asked) = self.ison_asked.pop_front() else {
            return;
        };
        let on: HashSet<String> = m.param(1).split_whitespace().map(|n| self.lower(n)).collect();
        for n in asked {
            if on.contains(&n) {
                if !self.online.contains(&n) {
                    self.track(&n);
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

    /// 352 `RPL_WHOREPLY`: `<me> <channel> <user> <host> <server> <nick>
    /// <flags> :<hops> <realname>`; flags `G` = away. Reported at 315.
    pub(super) fn who_reply(&mut self, m: &Msg) {
        let n = self.lower(m.param(5));
        if !n.is_empty() && n != self.lower(&self.nick) {
            self.track(&n);
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

    /// 311 `RPL_WHOISUSER`, 330 `RPL_WHOISACCOUNT`, 301 `RPL_AWAY`: parts
    /// of a WHOIS answer, used at its end (318).
    pub(super) fn whois_reply(&mut self, m: &Msg) {
        let n = self.lower(m.param(1));
        self.track(&n);
        match m.command.as_str() {
            "311" => self.whois.entry(n).or_default().exists = true,
            "330" => self.whois.entry(n).or_default().account = Some(m.param(2).to_owned()),
            _ => {
                if let Some(w) = self.whois.get_mut(&n) {
                    w.away = true;
                }
            }
        }
    }

    /// 318 `RPL_ENDOFWHOIS`: take in what the WHOIS said; the lower-cased
    /// nick it was about.
    pub(super) async fn whois_end(&mut self, m: &Msg) -> String {
        let n = self.lower(m.param(1));
        let w = self.whois.remove(&n).unwrap_or_default();
        if w.exists {
            self.track(&n);
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
        n
    }

    /// `ACCOUNT` (account-notify): the sender logged in (or out, `*`).
    pub(super) async fn account_change(&mut self, m: &Msg) {
        if let Some(nick) = m.nick() {
            let n = self.lower(nick);
            self.track(&n);
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

    /// `JOIN` (with extended-join: `<channel> <account> :<realname>`). The
    /// bot joining asks WHO to learn who is there and who is away.
    pub(super) async fn joined(&mut self, m: &Msg, out: &mut Vec<Output>) {
        let Some(nick) = m.nick() else { return };
        let n = self.lower(nick);
        if n == self.lower(&self.nick) {
            // Learn who is here and who is away.
            out.push(Output::Paced(line("WHO", &[m.param(0)], None)));
            return;
        }
        self.track(&n);
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

    /// `AWAY` (away-notify): with a text away, without back.
    pub(super) async fn away_change(&mut self, m: &Msg) {
        if let Some(nick) = m.nick() {
            let n = self.lower(nick);
            if m.param(0).is_empty() {
                self.away.remove(&n);
            } else {
                self.track(&n);
                self.away.insert(n);
            }
            self.refresh().await;
        }
    }

    /// `NICK`: the bot's own new nick, or someone's (what we know moves
    /// along; a registered account's nick is followed and re-monitored).
    pub(super) async fn nick_change(&mut self, m: &Msg, out: &mut Vec<Output>) {
        let (Some(old), new) = (m.nick(), m.param(0)) else {
            return;
        };
        if self.lower(old) == self.lower(&self.nick) {
            self.nick = new.to_owned();
            return;
        }
        let (o, n) = (self.lower(old), self.lower(new));
        if self.recent.remove(&o) {
            self.track(&n);
        }
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

    /// `QUIT`: the sender left the network.
    pub(super) async fn quit(&mut self, m: &Msg) {
        if let Some(nick) = m.nick() {
            let n = self.lower(nick);
            self.forget_nick(&n);
            self.refresh().await;
        }
    }

    /// `PART` (the sender leaves) or `KICK` (`<channel> <nick>`).
    pub(super) async fn left(&mut self, m: &Msg, out: &mut Vec<Output>) {
        let (channel, gone) = if m.command == "KICK" {
            (m.param(0), Some(m.param(1)))
        } else {
            (m.param(0), m.nick())
        };
        let Some(gone) = gone else { return };
        let n = self.lower(gone);
        if n == self.lower(&self.nick) {
            self.bot_left(m, channel, out).await;
        } else {
            let channel = self.lower(channel);
            self.nick_left(&n, &channel).await;
        }
    }

    /// The bot left (or was kicked from) `channel`: whoever it saw only
    /// there is out of sight now. A kick from a configured channel is
    /// answered by joining again.
    async fn bot_left(&mut self, m: &Msg, channel: &str, out: &mut Vec<Output>) {
        let channel_l = self.lower(channel);
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
    }

    /// The lower-cased nick `n` left the lower-cased `channel`.
    async fn nick_left(&mut self, n: &str, channel: &str) {
        let still_seen = match self.seen_in.get_mut(n) {
            Some(chans) => {
                chans.remove(channel);
                !chans.is_empty()
            }
            None => false,
        };
        if !still_seen {
            self.seen_in.remove(n);
            if !self.is_watched(n) {
                // Out of sight: what we knew about this nick goes stale
                // (watched nicks stay tracked by MONITOR or ISON).
                self.forget_nick(n);
                self.refresh().await;
            }
        }
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
    use super::super::testing::{bot, feed, presence, settle};
    use super::*;

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
    async fn the_bot_rejoins_after_a_kick() {
        let (mut b, _) = bot(serde_json::json!({})).await;
        feed(&mut b, &[":srv 001 pushbridge :hi"]).await;
        let out = feed(&mut b, &[":op!o@h KICK #chat pushbridge :out"]).await;
        assert_eq!(out, vec!["JOIN #chat"]);
        assert!(feed(&mut b, &[":op!o@h KICK #other pushbridge :out"]).await.is_empty());
    }
}
