//! From a notify device to a [`Push`]: the payload mapping, following
//! Sygnal's APNS behaviour (README "Matrix push gateway" has the table).
//! Pure; the server calls [`to_push`] once per device.
//!
//! - badge update (no `event_id`, `type` null): `aps.badge` only, silent;
//! - `event_id_only` (the pusher's `data.format`, or an `event_id` without
//!   a `type`): no content, only ids, the generic body and
//!   `mutable-content: 1` for a notification service extension;
//! - otherwise an alert: the title names the sender (and the room when it
//!   has a name), the body the message text (`m.room.message`), an
//!   invitation, a call, or the generic body.

use pushbridge_api::{DeviceToken, Priority, Push, PushAlert, PushBody};
use serde_json::{json, Value};

use crate::config::MatrixApp;
use crate::notify::{Device, Notification};

/// The push for `device` of `n`, to `token` of `app`; `None` when there is
/// nothing to show (no alert and no badge). `track`: wait for Apple's
/// answer ([`Push::track`]).
pub fn to_push(n: &Notification, device: &Device, app: &MatrixApp, token: DeviceToken, track: bool) -> Option<Push> {
    let mut push = Push::new(token, app.topic.clone());
    push.environment = app.environment;
    push.track = track;
    push.priority = match n.prio.as_deref() {
        Some("low") => Priority::Low,
        _ => Priority::High,
    };
    push.badge = n.counts.and_then(|c| c.unread);
    let event_id = n.event_id.as_deref().filter(|e| !e.is_empty());
    if event_id.is_none() && n.kind.is_none() {
        // A badge update after a read receipt: nothing but the badge.
        return push.badge.is_some().then_some(push);
    }
    push.sound = device.sound().map(str::to_owned);
    push.thread = n.room_id.clone();
    if let Some(room) = &n.room_id {
        push.custom.insert("room_id".into(), json!(room));
    }
    if let Some(id) = event_id {
        push.custom.insert("event_id".into(), json!(id));
    }
    if device.event_id_only() || n.kind.is_none() {
        if let Some(unread) = push.badge {
            push.custom.insert("unread_count".into(), json!(unread));
        }
        push.alert = Some(PushAlert {
            title: None,
            body: PushBody::Generic,
        });
        push.mutable_content = true;
        return Some(push);
    }
    push.alert = alert(n);
    if push.alert.is_none() {
        // Nothing to say (e.g. someone else's membership change): at most
        // the badge, silently, without the ids.
        push.custom.clear();
        push.sound = None;
        return push.badge.is_some().then_some(push);
    }
    Some(push)
}

/// Who sent it, as people read it: the display name, else the user id.
fn sender(n: &Notification) -> &str {
    [&n.sender_display_name, &n.sender]
        .into_iter()
        .filter_map(|s| s.as_deref())
        .find(|s| !s.is_empty())
        .unwrap_or("Someone")
}

/// The room's name as people read it, when it has one.
fn room(n: &Notification) -> Option<&str> {
    [&n.room_name, &n.room_alias]
        .into_iter()
        .filter_map(|s| s.as_deref())
        .find(|s| !s.is_empty())
}

/// The alert for an event, or `None` when the event type shows nothing.
fn alert(n: &Notification) -> Option<PushAlert> {
    let from = sender(n);
    let title = match room(n) {
        Some(r) if r != from => format!("{from} in {r}"),
        _ => from.to_owned(),
    };
    let body = match n.kind.as_deref()? {
        "m.room.message" => message_body(n, from),
        "m.room.encrypted" => PushBody::Generic,
        "m.room.member" => {
            let invited = n.user_is_target == Some(true) && n.membership.as_deref() == Some("invite");
            if !invited {
                return None;
            }
            let words = match room(n) {
                Some(r) => format!("{from} invited you to {r}"),
                None => format!("{from} invited you to a chat"),
            };
            return Some(PushAlert {
                title: Some(room(n).unwrap_or(from).to_owned()),
                body: PushBody::Fixed(words),
            });
        }
        "m.call.invite" => PushBody::Fixed(call(n, from)),
        _ => PushBody::Generic,
    };
    Some(PushAlert {
        title: Some(title),
        body,
    })
}

/// The body of an `m.room.message`: its text (an emote as `* Bob waves`),
/// or words for an image; the generic body without text.
fn message_body(n: &Notification, from: &str) -> PushBody {
    let content = n.content.as_ref();
    let field = |k: &str| content.and_then(|c| c.get(k)).and_then(Value::as_str);
    match (field("msgtype"), field("body")) {
        (Some("m.image"), _) => PushBody::Fixed(format!("{from} sent an image")),
        (Some("m.emote"), Some(body)) => PushBody::Text(format!("* {from} {body}")),
        (_, Some(body)) if !body.is_empty() => PushBody::Text(body.to_owned()),
        _ => PushBody::Generic,
    }
}

/// `Video call from Bob` when the offer's SDP has video, else a voice call.
fn call(n: &Notification, from: &str) -> String {
    let sdp = n
        .content
        .as_ref()
        .and_then(|c| c.get("offer"))
        .and_then(|o| o.get("sdp"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if sdp.contains("m=video") {
        format!("Video call from {from}")
    } else {
        format!("Voice call from {from}")
    }
}

#[cfg(test)]
mod tests {
    //! The bodies Synapse sends, as recorded in PEERS.md (ids shortened).
    use super::*;
    use crate::notify::parse_notify;

    const ALICE: &str = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=";

    fn device(data: &str, tweaks: &str) -> String {
        format!(
            r#"{{"app_id":"com.example.chat.ios","data":{data},"pushkey":"{ALICE}","pushkey_ts":1795986541{tweaks}}}"#
        )
    }

    /// Parse `body` and map its first device.
    fn map(body: &str) -> Option<Push> {
        let n = parse_notify(body.as_bytes())
            .expect("a recorded body parses")
            .notification;
        let app = MatrixApp {
            topic: "com.example.chat".into(),
            environment: None,
        };
        let token = crate::notify::decode_pushkey(&n.devices[0].pushkey).expect("pushkey");
        to_push(&n, &n.devices[0], &app, token, true)
    }

    fn text(p: &Push) -> (Option<&str>, &PushBody) {
        let a = p.alert.as_ref().expect("an alert");
        (a.title.as_deref(), &a.body)
    }

    #[test]
    fn default_format_in_a_named_room() {
        let body = format!(
            r#"{{"notification":{{"content":{{"body":"hello alice","msgtype":"m.text"}},"counts":{{"unread":1}},"devices":[{}],"event_id":"$bppk","id":"$bppk","prio":"high","room_id":"!KkPR:localhost","room_name":"Probe room","sender":"@bob:localhost","sender_display_name":"Bob","type":"m.room.message"}}}}"#,
            device("{}", r#","tweaks":{"highlight":true,"sound":"default"}"#)
        );
        let p = map(&body).unwrap();
        assert_eq!(p.token.as_str(), "ab".repeat(32));
        assert_eq!(p.topic, "com.example.chat");
        assert_eq!(
            text(&p),
            (Some("Bob in Probe room"), &PushBody::Text("hello alice".into()))
        );
        assert_eq!(p.badge, Some(1));
        assert_eq!(p.sound.as_deref(), Some("default"));
        assert_eq!(p.priority, Priority::High);
        assert_eq!(p.thread.as_deref(), Some("!KkPR:localhost"));
        assert_eq!(p.custom["room_id"], "!KkPR:localhost");
        assert_eq!(p.custom["event_id"], "$bppk");
        assert!(!p.mutable_content);
        assert!(p.track);
    }

    #[test]
    fn event_id_only_carries_no_content() {
        let body = r#"{"notification":{"counts":{"unread":1},"devices":[{"app_id":"com.example.chat.ios","data":{"format":"event_id_only"},"pushkey":"zc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc0=","pushkey_ts":1795986619}],"event_id":"$qeD7","prio":"high","room_id":"!kQQR:localhost"}}"#;
        let p = map(body).unwrap();
        assert_eq!(p.token.as_str(), "cd".repeat(32));
        assert_eq!(text(&p), (None, &PushBody::Generic));
        assert!(p.mutable_content);
        assert_eq!(p.badge, Some(1));
        assert_eq!(p.sound, None);
        assert_eq!(p.custom["room_id"], "!kQQR:localhost");
        assert_eq!(p.custom["event_id"], "$qeD7");
        assert_eq!(p.custom["unread_count"], 1);
        assert_eq!(p.custom.len(), 3);
    }

    #[test]
    fn event_id_only_pusher_ignores_content_even_when_sent() {
        let body = format!(
            r#"{{"notification":{{"content":{{"body":"secret","msgtype":"m.text"}},"devices":[{}],"event_id":"$e","room_id":"!r","sender":"@bob:localhost","type":"m.room.message"}}}}"#,
            device(r#"{"format":"event_id_only"}"#, "")
        );
        let p = map(&body).unwrap();
        assert_eq!(text(&p), (None, &PushBody::Generic));
        assert!(!format!("{p:?}").contains("secret"));
    }

    #[test]
    fn direct_chat_without_room_name() {
        let body = format!(
            r#"{{"notification":{{"content":{{"body":"hi","msgtype":"m.text"}},"counts":{{"unread":2}},"devices":[{}],"event_id":"$e","prio":"high","room_id":"!dm:localhost","sender":"@bob:localhost","sender_display_name":"Bob","type":"m.room.message"}}}}"#,
            device("{}", r#","tweaks":{"highlight":true,"sound":"default"}"#)
        );
        let p = map(&body).unwrap();
        assert_eq!(text(&p), (Some("Bob"), &PushBody::Text("hi".into())));
        assert_eq!(p.badge, Some(2));
    }

    #[test]
    fn group_room_with_low_priority_and_no_sound() {
        let body = format!(
            r#"{{"notification":{{"content":{{"body":"lunch?","msgtype":"m.text"}},"counts":{{"unread":1}},"devices":[{}],"event_id":"$e","prio":"low","room_id":"!grp:localhost","room_name":"Team room","sender":"@bob:localhost","sender_display_name":"Bob","type":"m.room.message"}}}}"#,
            device("{}", r#","tweaks":{"highlight":false}"#)
        );
        let p = map(&body).unwrap();
        assert_eq!(p.priority, Priority::Low);
        assert_eq!(p.priority.apns(), 5);
        assert_eq!(p.sound, None);
        assert_eq!(text(&p), (Some("Bob in Team room"), &PushBody::Text("lunch?".into())));
    }

    #[test]
    fn invite_reads_as_an_invitation() {
        let body = format!(
            r#"{{"notification":{{"content":{{"displayname":"Alice","is_direct":true,"membership":"invite"}},"counts":{{"unread":1}},"devices":[{}],"event_id":"$inv","membership":"invite","prio":"high","room_id":"!new:localhost","sender":"@bob:localhost","sender_display_name":"Bob","type":"m.room.member","user_is_target":true}}}}"#,
            device("{}", r#","tweaks":{"sound":"default"}"#)
        );
        let p = map(&body).unwrap();
        assert_eq!(
            text(&p),
            (Some("Bob"), &PushBody::Fixed("Bob invited you to a chat".into()))
        );
        assert_eq!(p.custom["room_id"], "!new:localhost");
        // Someone else's membership change shows nothing but the badge.
        let other = body.replace(r#""user_is_target":true"#, r#""user_is_target":false"#);
        let p = map(&other).unwrap();
        assert!(p.alert.is_none() && p.custom.is_empty() && p.sound.is_none());
        assert_eq!(p.badge, Some(1));
    }

    #[test]
    fn badge_only_update_is_silent() {
        let body = format!(
            r#"{{"notification":{{"counts":{{"unread":0}},"devices":[{}],"id":"","sender":"","type":null}}}}"#,
            device("{}", r#","tweaks":{"sound":"default"}"#)
        );
        let p = map(&body).unwrap();
        assert_eq!(p.alert, None);
        assert_eq!(p.badge, Some(0));
        assert_eq!(p.sound, None);
        assert!(p.custom.is_empty() && p.thread.is_none() && !p.mutable_content);
        // Without a count there is nothing to do.
        let nothing = body.replace(r#""counts":{"unread":0},"#, "");
        assert_eq!(map(&nothing), None);
    }

    #[test]
    fn other_message_kinds() {
        let msg = |content: &str, kind: &str| {
            format!(
                r#"{{"notification":{{"content":{content},"devices":[{}],"event_id":"$e","room_id":"!r","sender":"@bob:localhost","type":"{kind}"}}}}"#,
                device("{}", "")
            )
        };
        let p = map(&msg(r#"{"body":"waves","msgtype":"m.emote"}"#, "m.room.message")).unwrap();
        assert_eq!(
            text(&p),
            (Some("@bob:localhost"), &PushBody::Text("* @bob:localhost waves".into()))
        );
        let p = map(&msg(r#"{"body":"cat.jpg","msgtype":"m.image"}"#, "m.room.message")).unwrap();
        assert_eq!(text(&p).1, &PushBody::Fixed("@bob:localhost sent an image".into()));
        let p = map(&msg(r#"{"algorithm":"m.megolm.v1"}"#, "m.room.encrypted")).unwrap();
        assert_eq!(text(&p).1, &PushBody::Generic);
        let p = map(&msg(r#"{"offer":{"sdp":"v=0\nm=video 9"}}"#, "m.call.invite")).unwrap();
        assert_eq!(text(&p).1, &PushBody::Fixed("Video call from @bob:localhost".into()));
        let p = map(&msg(r#"{"offer":{"sdp":"v=0\nm=audio 9"}}"#, "m.call.invite")).unwrap();
        assert_eq!(text(&p).1, &PushBody::Fixed("Voice call from @bob:localhost".into()));
        let p = map(&msg("{}", "org.example.custom")).unwrap();
        assert_eq!(text(&p).1, &PushBody::Generic);
    }

    #[test]
    fn the_app_environment_is_carried() {
        let n = parse_notify(
            format!(
                r#"{{"notification":{{"counts":{{"unread":3}},"devices":[{}]}}}}"#,
                device("{}", "")
            )
            .as_bytes(),
        )
        .unwrap()
        .notification;
        let app = MatrixApp {
            topic: "com.example.chat".into(),
            environment: Some(pushbridge_api::Environment::Sandbox),
        };
        let token = crate::notify::decode_pushkey(ALICE).unwrap();
        let p = to_push(&n, &n.devices[0], &app, token, false).unwrap();
        assert_eq!(p.environment, Some(pushbridge_api::Environment::Sandbox));
        assert!(!p.track);
    }
}
