//! Rendering a [`Push`] (a notification the IM server decided on, with
//! its own payload parts) into an APNS payload:
//! `{"aps":{"alert":{"title":…,"body":…},"badge":n,"sound":…,"thread-id":…,"mutable-content":1},<custom keys>}`.
//!
//! Only the parts the push has appear; `[policy] privacy` replaces message
//! text ([`PushBody::Text`]) with the generic body; `[policy] sound` does
//! not apply (the push says whether it makes a sound). Cut to the app's
//! limit like a message, between whole grapheme clusters: the body first,
//! then the title; a long `thread-id` is shortened with its digest.

use std::sync::Arc;

use pushbridge_api::{Push, PushBody};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{thread_id, truncate, Policy};

/// A push rendered for delivery: its headers, and its payload per payload
/// limit (built once per limit).
#[derive(Debug)]
pub struct RenderedPush {
    /// Unix seconds: now + `[policy] ttl` (`apns-expiration`).
    pub expiration: u64,
    /// `apns-priority`: 10 or 5, as the push says.
    pub priority: u8,
    /// `aps.badge`.
    badge: Option<u32>,
    /// `aps.sound` (never empty).
    sound: Option<String>,
    /// `aps.thread-id` ([`thread_id`] of the push's thread).
    thread_id: Option<String>,
    /// `aps.mutable-content: 1`.
    mutable_content: bool,
    /// Top-level keys beside `aps` (never `aps` itself).
    custom: Map<String, Value>,
    /// `None`: no alert (a silent badge update).
    alert: Option<(Option<String>, String)>,
    payloads: Vec<(usize, Arc<str>)>,
}

/// The payload as serialized: the push's custom keys with `aps` among
/// them, all in sorted order (as a `serde_json` map would hold them),
/// borrowed from the [`RenderedPush`] rather than built as a tree.
struct Payload<'a> {
    custom: &'a Map<String, Value>,
    aps: Aps<'a>,
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.custom.len() + 1))?;
        let mut aps = Some(&self.aps);
        for (key, value) in self.custom {
            if key.as_str() > "aps" {
                if let Some(aps) = aps.take() {
                    map.serialize_entry("aps", aps)?;
                }
            }
            map.serialize_entry(key, value)?;
        }
        if let Some(aps) = aps {
            map.serialize_entry("aps", aps)?;
        }
        map.end()
    }
}

/// `aps`, its keys in sorted order.
#[derive(Serialize)]
struct Aps<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<PushAlertView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u32>,
    #[serde(rename = "mutable-content", skip_serializing_if = "Option::is_none")]
    mutable_content: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
    #[serde(rename = "thread-id", skip_serializing_if = "Option::is_none")]
    thread_id: Option<&'a str>,
}

/// `aps.alert`, its keys in sorted order.
#[derive(Serialize)]
struct PushAlertView<'a> {
    body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
}

impl Policy {
    /// Render `push` at unix second `now`.
    pub fn push(&self, push: &Push, now: u64) -> RenderedPush {
        let mut custom = push.custom.clone();
        custom.remove("aps");
        let alert = push.alert.as_ref().map(|a| {
            let body = match &a.body {
                PushBody::Text(t) if !self.config.privacy => t.clone(),
                PushBody::Fixed(t) => t.clone(),
                PushBody::Text(_) | PushBody::Generic => self.config.generic_body.clone(),
            };
            (a.title.clone(), body)
        });
        RenderedPush {
            expiration: now + self.config.ttl,
            priority: push.priority.apns(),
            badge: push.badge,
            sound: push.sound.clone().filter(|s| !s.is_empty()),
            thread_id: push.thread.as_deref().map(thread_id),
            mutable_content: push.mutable_content,
            custom,
            alert,
            payloads: Vec::new(),
        }
    }
}

impl RenderedPush {
    /// The payload within `limit` bytes (the body is shortened first at an
    /// extended grapheme cluster boundary with an ellipsis, then the title).
    pub fn payload(&mut self, limit: usize) -> Arc<str> {
        if let Some((_, p)) = self.payloads.iter().find(|(l, _)| *l == limit) {
            return p.clone();
        }
        let p: Arc<str> = self.fit(limit).into();
        self.payloads.push((limit, p.clone()));
        p
    }

    fn fit(&self, limit: usize) -> String {
        let Some((title, body)) = &self.alert else {
            return self.render(None, "");
        };
        let title = title.as_deref();
        let fits = |t: Option<&str>, b: &str| {
            let s = self.render(t, b);
            (s.len() <= limit).then_some(s)
        };
        if let Some(full) = fits(title, body) {
            return full;
        }
        if let Some(best) = truncate::longest(body, |b| fits(title, b)) {
            return best;
        }
        // Only custom keys larger than the limit get past the title; send
        // the skeleton rather than nothing (APNS refuses it as too large).
        truncate::longest(title.unwrap_or(""), |t| fits(Some(t), "")).unwrap_or_else(|| self.render(None, ""))
    }

    /// The JSON for this title and body (no alert at all without one).
    fn render(&self, title: Option<&str>, body: &str) -> String {
        let payload = Payload {
            custom: &self.custom,
            aps: Aps {
                alert: self.alert.as_ref().map(|_| PushAlertView { body, title }),
                badge: self.badge,
                mutable_content: self.mutable_content.then_some(1),
                sound: self.sound.as_deref(),
                thread_id: self.thread_id.as_deref(),
            },
        };
        serde_json::to_string(&payload)
            .unwrap_or_else(|e| unreachable!("a payload of strings, numbers and JSON values serializes: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use pushbridge_api::{DeviceToken, Priority, PushAlert};
    use serde_json::json;

    use super::*;
    use crate::config::PolicyConfig;

    fn push(body: PushBody) -> Push {
        let mut p = Push::new(DeviceToken::parse(&"ab".repeat(32)).unwrap(), "com.example.chat");
        p.alert = Some(PushAlert {
            title: Some("Bob in Probe room".into()),
            body,
        });
        p.badge = Some(2);
        p.sound = Some("default".into());
        p.thread = Some("!room:localhost".into());
        p.custom.insert("room_id".into(), json!("!room:localhost"));
        p.custom.insert("event_id".into(), json!("$ev"));
        p.custom.insert("aps".into(), json!({"badge": 99}));
        p
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect("payload is JSON")
    }

    /// The payloads print keys in sorted order, as they did when built as
    /// `serde_json` trees: that holds only while `serde_json::Map` is
    /// sorted (no crate turns on its `preserve_order` feature).
    #[test]
    fn json_maps_are_sorted() {
        let m: Map<String, Value> = [("b", 1), ("aps", 2), ("a", 3)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        assert_eq!(Value::Object(m).to_string(), r#"{"a":3,"aps":2,"b":1}"#);
    }

    /// Serialized from borrowed parts, the payload is still what a JSON
    /// tree of it would print: `aps` among the custom keys in sorted order
    /// (keys before and after it, one equal to its prefix), escapes alike.
    #[test]
    fn payload_reads_as_its_json_tree_prints() {
        let policy = Policy::new(PolicyConfig::default());
        let keys: [&[&str]; 4] = [&[], &["a", "apr", "aps2", "b"], &["Z", "_x", "ap"], &["z\u{e9}", "\""]];
        for keys in keys {
            for alert in [true, false] {
                let mut p = push(PushBody::Text("hi \"there\"\n\u{1F600}".into()));
                p.custom.clear();
                for (i, k) in keys.iter().enumerate() {
                    p.custom.insert((*k).to_owned(), json!({"n": i, "s": "v\u{2028}"}));
                }
                if !alert {
                    p.alert = None;
                    p.sound = None;
                }
                p.mutable_content = alert;
                let payload = policy.push(&p, 0).payload(4096);
                let tree: Value = serde_json::from_str(&payload).unwrap();
                assert_eq!(*payload, tree.to_string(), "{keys:?}");
                assert_eq!(tree.as_object().unwrap().len(), keys.len() + 1);
            }
        }
    }

    #[test]
    fn full_push_shape() {
        let mut r = Policy::new(PolicyConfig::default()).push(&push(PushBody::Text("hello".into())), 1000);
        assert_eq!(r.priority, 10);
        assert_eq!(r.expiration, 1000 + PolicyConfig::default().ttl);
        let p = parse(&r.payload(4096));
        assert_eq!(
            p,
            json!({"aps": {"alert": {"title": "Bob in Probe room", "body": "hello"}, "badge": 2,
                "sound": "default", "thread-id": "!room:localhost"},
                "room_id": "!room:localhost", "event_id": "$ev"})
        );
    }

    #[test]
    fn privacy_hides_text_but_not_fixed_words() {
        let private = Policy::new(PolicyConfig {
            privacy: true,
            ..PolicyConfig::default()
        });
        let p = parse(&private.push(&push(PushBody::Text("secret".into())), 0).payload(4096));
        assert_eq!(p["aps"]["alert"]["body"], "New message");
        let p = parse(
            &private
                .push(&push(PushBody::Fixed("Bob invited you".into())), 0)
                .payload(4096),
        );
        assert_eq!(p["aps"]["alert"]["body"], "Bob invited you");
    }

    #[test]
    fn silent_badge_update_and_event_id_only() {
        let policy = Policy::new(PolicyConfig::default());
        let mut badge = Push::new(DeviceToken::parse(&"cd".repeat(32)).unwrap(), "t");
        badge.badge = Some(0);
        badge.priority = Priority::Low;
        let mut r = policy.push(&badge, 0);
        assert_eq!(r.priority, 5);
        assert_eq!(parse(&r.payload(4096)), json!({"aps": {"badge": 0}}));
        let mut ids = push(PushBody::Generic);
        ids.alert = Some(PushAlert {
            title: None,
            body: PushBody::Generic,
        });
        ids.sound = None;
        ids.mutable_content = true;
        let p = parse(&policy.push(&ids, 0).payload(4096));
        assert_eq!(p["aps"]["mutable-content"], 1);
        assert_eq!(p["aps"]["alert"], json!({"body": "New message"}));
        assert!(p["aps"].get("sound").is_none());
    }

    #[test]
    fn long_bodies_and_titles_are_cut_to_the_limit() {
        let policy = Policy::new(PolicyConfig::default());
        let mut long = push(PushBody::Text("日本語".repeat(2000)));
        let mut r = policy.push(&long, 0);
        for limit in [4096usize, 2048, 256] {
            let s = r.payload(limit);
            assert!(s.len() <= limit, "{} > {limit}", s.len());
            let body = parse(&s)["aps"]["alert"]["body"].as_str().unwrap().to_owned();
            assert!(body.ends_with('…'));
            assert_eq!(parse(&s)["room_id"], "!room:localhost");
        }
        long.alert = Some(PushAlert {
            title: Some("ü".repeat(5000)),
            body: PushBody::Text("hi".into()),
        });
        let s = policy.push(&long, 0).payload(4096);
        assert!(s.len() <= 4096);
        assert!(parse(&s)["aps"]["alert"]["title"].as_str().unwrap().ends_with('…'));
    }
}
