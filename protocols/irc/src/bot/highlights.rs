//! Channel messages: a message (or `/me` action) in a watched channel that
//! mentions a registered user's nick, or one of the configured keywords,
//! is pushed to that user (matched with the server's casemapping, IRC
//! formatting stripped; never to the sender's own account). The core holds
//! it back while the user is online.
//!
//! The alert: title `<nick> in <channel>`, body the text; an action's body
//! names the actor as IRC clients show it, `* carol waves at alice`.

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
        let action = text.strip_prefix("\x01ACTION");
        let clean = strip_formatting(action.unwrap_or(text).trim_end_matches('\x01'));
        let clean = clean.trim();
        let channel = m.param(0);
        let shown = alert_text(sender, clean, action.is_some());
        for acct in self.highlighted(sender, clean) {
            let Some(to) = self.user(&acct) else { continue };
            tracing::debug!(adapter = self.ctx.name(), user = %to, %channel, "highlight");
            let msg = Message {
                to,
                from: format!("{sender} in {channel}"),
                subtitle: None,
                text: Some(shown.clone()),
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

/// The body of a channel alert: the text, or for a `/me` action the text
/// after `* <nick> `, as IRC clients show actions.
fn alert_text(sender: &str, text: &str, action: bool) -> String {
    if action {
        format!("* {sender} {text}")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{account_tag_bot, feed, settle, TOKEN};
    use pushbridge_api::Event;

    #[tokio::test]
    async fn an_action_names_its_actor() {
        let (mut b, events) = account_tag_bot().await;
        feed(
            &mut b,
            &[
                &format!("@account=alice :alice!a@h PRIVMSG pushbridge :REGISTER {TOKEN}"),
                ":carol!c@h PRIVMSG #chat :\x01ACTION waves at \x02alice\x02\x01",
                ":carol!c@h PRIVMSG #chat :alice: hi",
                ":carol!c@h PRIVMSG #chat :\x01VERSION alice\x01",
            ],
        )
        .await;
        settle().await;
        let msgs: Vec<(String, Option<String>, Option<String>)> = events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some((m.from.clone(), m.text.clone(), m.thread.clone())),
                _ => None,
            })
            .collect();
        let chat = Some("#chat".to_owned());
        assert_eq!(
            msgs,
            [
                (
                    "carol in #chat".to_owned(),
                    Some("* carol waves at alice".to_owned()),
                    chat.clone()
                ),
                ("carol in #chat".to_owned(), Some("alice: hi".to_owned()), chat),
            ]
        );
    }
}
