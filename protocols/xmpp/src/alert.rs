//! What a XEP-0357 publish shows on the lock screen, from its summary's
//! `last-message-sender` (the server decides whether to send it, and the
//! body):
//!
//! | sender | title | subtitle | `thread-id` |
//! | --- | --- | --- | --- |
//! | `bob@example.org/phone` (1:1) | `bob@example.org` | – | `bob@example.org` |
//! | `room@conference.example.org/Bob` (group chat) | `Bob` | `room@conference.example.org` | `room@conference.example.org` |
//! | none (anonymous) | `anonymous_title`, else the account's domain | – | the account's bare JID |
//!
//! The body is `last-message-body`, or the core's generic body when there
//! is none. A sender is a group chat room when its domain is one of
//! `muc_domains` (XEP-0045 services are separate domains, so the domain
//! tells a room from a user).

use crate::stanza::bare;
use crate::XmppConfig;

/// Title, subtitle and conversation key of one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The alert title.
    pub title: String,
    /// The alert subtitle (the room of a group chat message).
    pub subtitle: Option<String>,
    /// The conversation (`thread-id`): the peer's or room's bare JID, or
    /// the account's for anonymous pushes.
    pub thread: String,
}

/// The shape of a push for `account` (bare JID) whose summary named
/// `sender` (`None` or empty: anonymous).
pub fn shape(config: &XmppConfig, account: &str, sender: Option<&str>) -> Shape {
    let Some(sender) = sender.map(str::trim).filter(|s| !s.is_empty()) else {
        let title = match &config.anonymous_title {
            Some(t) => t.clone(),
            None => domain(account).to_owned(),
        };
        return Shape {
            title,
            subtitle: None,
            thread: account.to_owned(),
        };
    };
    let jid = bare(sender);
    let nick = sender.split_once('/').map(|(_, r)| r.trim()).filter(|n| !n.is_empty());
    match nick {
        Some(nick) if is_muc(config, domain(&jid)) => Shape {
            title: nick.to_owned(),
            subtitle: Some(jid.clone()),
            thread: jid,
        },
        _ => Shape {
            title: jid.clone(),
            subtitle: None,
            thread: jid,
        },
    }
}

/// The domain part of a bare JID (`example.org` of `bob@example.org`).
fn domain(jid: &str) -> &str {
    jid.rsplit_once('@').map_or(jid, |(_, d)| d)
}

/// Whether `domain` is a group chat service by `muc_domains`.
fn is_muc(config: &XmppConfig, domain: &str) -> bool {
    config.muc_domains.iter().any(|m| {
        let m = m.to_lowercase();
        if m.ends_with('.') {
            domain.starts_with(&m) && domain.len() > m.len()
        } else {
            domain == m
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> XmppConfig {
        let mut c = serde_json::json!({"server": "127.0.0.1:5347", "domain": "push.example.org", "secret": "s"});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        serde_json::from_value(c).unwrap()
    }

    fn shape_of(c: &XmppConfig, sender: Option<&str>) -> (String, Option<String>, String) {
        let s = shape(c, "alice@example.org", sender);
        (s.title, s.subtitle, s.thread)
    }

    #[test]
    fn one_to_one_group_chat_and_anonymous() {
        let c = config(serde_json::json!({}));
        let room = "room@conference.example.org";
        assert_eq!(
            shape_of(&c, Some("Jürgen@Example.org/phone")),
            ("jürgen@example.org".into(), None, "jürgen@example.org".into())
        );
        assert_eq!(
            shape_of(&c, Some("room@conference.example.org/Bob Smith")),
            ("Bob Smith".into(), Some(room.into()), room.into())
        );
        // A nick may contain a slash; a room without a nick is the room.
        assert_eq!(shape_of(&c, Some("room@muc.example.org/a/b")).0, "a/b");
        assert_eq!(shape_of(&c, Some(room)), (room.into(), None, room.into()));
        // Anonymous: the account's domain, grouped by account.
        for none in [None, Some(""), Some("  ")] {
            assert_eq!(
                shape_of(&c, none),
                ("example.org".into(), None, "alice@example.org".into())
            );
        }
        let named = config(serde_json::json!({"anonymous_title": "Chat"}));
        assert_eq!(shape_of(&named, None).0, "Chat");
    }

    #[test]
    fn muc_domains_decide_what_a_room_is() {
        let c = config(serde_json::json!({"muc_domains": ["chat.example.net", "groups."]}));
        assert_eq!(shape_of(&c, Some("r@chat.example.net/Bob")).0, "Bob");
        assert_eq!(shape_of(&c, Some("r@groups.example.net/Bob")).0, "Bob");
        assert_eq!(
            shape_of(&c, Some("r@conference.example.org/Bob")).0,
            "r@conference.example.org"
        );
        assert_eq!(shape_of(&c, Some("r@groups./Bob")).0, "r@groups.");
        assert_eq!(
            shape_of(&c, Some("bob@other.example.net/Bob")).0,
            "bob@other.example.net"
        );
    }
}
