//! Channel messages: a message (or `/me` action) in a watched channel that
//! mentions a registered user's nick, or one of the configured keywords,
//! is pushed to that user (matched with the server's casemapping, IRC
//! formatting stripped; never to the sender's own account). The core holds
//! it back while the user is online.

use pushbridge_api::{Event, Message};

use super::Bot;
use crate::msg::{strip_formatting, Lowered, Msg};

impl Bot {
    /// A channel message: push it to every registered user it highlights.
    pub(super) async fn highlights(&mut self, m: &Msg) {
        let Some(sender) = m.nick() else { return };
        let text = m.param(1);
        if text.starts_with('\x01') && !text.starts_with("\x01ACTION") {
            return; // CTCP
        }
        let clean = strip_formatting(text.trim_start_matches("\x01ACTION").trim_end_matches('\x01'));
        let clean = clean.trim();
        let channel = m.param(0);
        for acct in self.highlighted(sender, clean) {
            let Some(to) = self.user(&acct) else { continue };
            tracing::debug!(adapter = self.ctx.name(), user = %to, %channel, "highlight");
            let msg = Message {
                to,
                from: format!("{sender} in {channel}"),
                text: Some(clean.to_owned()),
                thread: Some(channel.to_owned()),
                device: None,
                respect_presence: true,
                badge: None,
            };
            let _ = self.ctx.notify(Event::Message(msg)).await;
        }
    }

    /// The watched accounts `text` from `sender` highlights: by their nick,
    /// or all of them by a keyword; never the sender's own.
    fn highlighted(&self, sender: &str, text: &str) -> Vec<String> {
        let sender_lower = self.lower(sender);
        let sender_account = self.nick_account.get(&sender_lower);
        let keywords = &self.ctx.config().keywords;
        let text = Lowered::new(text, self.cm);
        let hit_all = keywords.iter().any(|k| text.mentions(k));
        let mut targets = Vec::new();
        for (acct, nick) in &self.accounts {
            if sender_account == Some(acct) || self.lower(nick) == sender_lower {
                continue;
            }
            if hit_all || text.mentions(nick) {
                targets.push(acct.clone());
            }
        }
        targets
    }
}
