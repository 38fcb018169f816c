//! The cap on per-nick state: a hostile or huge network can show the bot
//! any number of nicks (WHO and WHOIS replies, account tags, joins), and
//! each one it keeps state about costs memory and time in every presence
//! refresh. The bot remembers the order in which it last saw each nick and
//! keeps at most `max_nicks` of them; past that it forgets the least
//! recently seen nick that is not the nick of a watched account (those are
//! tracked by MONITOR or ISON, and are as many as the accounts).

use super::Bot;

impl Bot {
    /// The bot keeps state about the lower-cased nick `n` from now on (or
    /// saw it again): mark it most recently seen, and forget the least
    /// recently seen unwatched nicks past `max_nicks`.
    pub(super) fn track(&mut self, n: &str) {
        if !self.recent.to_back(n) {
            self.recent.insert(n.to_owned());
        }
        let max = self.ctx.config().max_nicks;
        // Each turn forgets one nick or moves a watched one to the back:
        // bounded by the number of nicks.
        let mut turns = self.recent.len();
        while self.recent.len() > max && turns > 0 {
            turns -= 1;
            let Some(oldest) = self.recent.pop_front() else { break };
            if oldest == n || self.is_watched(&oldest) {
                self.recent.insert(oldest);
                continue;
            }
            self.forget_nick(&oldest);
            self.whois.remove(&oldest);
            tracing::trace!(adapter = self.ctx.name(), nick = %oldest, "per-nick state full; forgot the least recently seen nick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bot, feed};

    #[tokio::test]
    async fn per_nick_state_is_capped_least_recently_seen_first() {
        let (mut b, _) = bot(serde_json::json!({"watch_accounts": ["alice"], "max_nicks": 100})).await;
        feed(&mut b, &[":srv 001 pushbridge :hi"]).await;
        // alice (watched) is seen first, then a flood of WHO replies and account tags.
        feed(&mut b, &[":srv 352 pushbridge #chat a h s alice H :0 A"]).await;
        feed(&mut b, &[":srv 352 pushbridge #chat u h s early H :0 E"]).await;
        for i in 0..5000 {
            let who = format!(":srv 352 pushbridge #chat u h s n{i} G :0 N");
            let tagged = format!("@account=acct{i} :t{i}!u@h PRIVMSG #chat :hi");
            feed(&mut b, &[&who, &tagged]).await;
            if i == 10 {
                // Seen again: stays among the most recent for a while.
                feed(&mut b, &[":srv 352 pushbridge #chat u h s early H :0 E"]).await;
            }
        }
        for map_len in [
            b.online.len(),
            b.away.len(),
            b.seen_in.len(),
            b.nick_account.len(),
            b.verified.len(),
        ] {
            assert!(map_len <= 100, "per-nick state holds {map_len} nicks");
        }
        assert_eq!(b.recent.len(), 100);
        assert!(b.online.contains("alice"), "a watched nick is never forgotten");
        assert!(!b.online.contains("early"), "the least recently seen are forgotten");
        assert!(
            b.online.contains("n4999") && b.nick_account.contains_key("t4999"),
            "the newest are kept"
        );
        // A WHOIS whose end never comes does not pile up either.
        for i in 0..5000 {
            feed(&mut b, &[&format!(":srv 311 pushbridge w{i} u h * :r")]).await;
        }
        assert!(b.whois.len() <= 100, "{} WHOIS answers held", b.whois.len());
    }
}
