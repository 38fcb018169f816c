//! The notification policy: what a push for a message says, and how it is
//! cut to fit an app's payload limit.
//!
//! Who gets a push (presence) is decided by the router; here we only build
//! the APNS payload:
//! `{"aps":{"alert":{"title":…,"subtitle":…,"body":…},"badge":n,"sound":…,"thread-id":…}}`
//! (`subtitle` only when the message has one).
//! A coalesced push's title carries the number of messages (`bob (3)`); a
//! push in quiet hours has no `sound` and `"interruption-level":"passive"`;
//! a muted conversation's push is badge-only: `{"aps":{"badge":n}}`.
//! A push the IM server decided on ([`pushbridge_api::Push`]) has its own
//! renderer, [`Policy::push`] (module `push`).
//!
//! Layout: [`digest`] makes conversation keys safe for headers
//! (`apns-collapse-id`) and `thread-id`; `truncate` finds the longest
//! grapheme-whole prefix of a text that fits the limit.

use serde_json::json;

use crate::config::PolicyConfig;

pub mod digest;
mod push;
mod truncate;

pub use digest::{collapse_id, thread_id, MAX_THREAD_ID};
pub use push::RenderedPush;

/// The parts of one alert, before truncation.
#[derive(Debug, Clone)]
pub struct Alert<'a> {
    pub title: &'a str,
    /// The line under the title (APNS `alert.subtitle`); `None` or empty:
    /// no subtitle.
    pub subtitle: Option<&'a str>,
    /// `None`: the generic body.
    pub body: Option<&'a str>,
    pub badge: u32,
    /// The conversation key; the payload's `thread-id` is
    /// [`thread_id`] of it.
    pub thread: &'a str,
    /// Quiet hours: no sound, `"interruption-level":"passive"`.
    pub quiet: bool,
}

/// A message rendered for delivery: the parts every notification of it
/// shares, and its payload per payload limit (built once per limit).
#[derive(Debug)]
pub struct Rendered {
    /// Unix seconds: now + `ttl` (`apns-expiration`).
    pub expiration: u64,
    /// `apns-collapse-id`, with `collapse = true`: [`collapse_id`] of the
    /// conversation key (ASCII, 43 bytes, whatever the key is).
    pub collapse_id: Option<String>,
    /// 10: alerts are sent immediately.
    pub priority: u8,
    title: String,
    subtitle: Option<String>,
    body: Option<String>,
    thread: String,
    badge: u32,
    /// Quiet hours: rendered silent.
    quiet: bool,
    /// A muted conversation: badge only.
    badge_only: bool,
    payloads: Vec<(usize, std::sync::Arc<str>)>,
}

impl Rendered {
    /// `count` messages coalesced into this push: above 1 the title says
    /// how many (`bob (3)`).
    pub fn coalesced(mut self, count: u32) -> Self {
        if count > 1 {
            self.title = format!("{} ({count})", self.title);
        }
        self
    }

    /// Deliver silently (quiet hours): no `sound`,
    /// `"interruption-level":"passive"`.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// A muted conversation: only the badge, `{"aps":{"badge":n}}`, with
    /// `apns-priority` 5 (no alert to show at once).
    pub fn badge_only(mut self) -> Self {
        self.badge_only = true;
        self.priority = 5;
        self
    }

    /// The same message with `subtitle` (APNS `alert.subtitle`, e.g. the
    /// group chat a speaker wrote in); `None` leaves it without one.
    pub fn with_subtitle(mut self, subtitle: Option<&str>) -> Self {
        self.subtitle = subtitle.map(str::to_owned);
        self.payloads.clear();
        self
    }

    /// The payload within `limit` bytes.
    pub fn payload(&mut self, policy: &Policy, limit: usize) -> std::sync::Arc<str> {
        if let Some((_, p)) = self.payloads.iter().find(|(l, _)| *l == limit) {
            return p.clone();
        }
        if self.badge_only {
            let p: std::sync::Arc<str> = json!({"aps": {"badge": self.badge}}).to_string().into();
            self.payloads.push((limit, p.clone()));
            return p;
        }
        let alert = Alert {
            title: &self.title,
            subtitle: self.subtitle.as_deref(),
            body: self.body.as_deref(),
            badge: self.badge,
            thread: &self.thread,
            quiet: self.quiet,
        };
        let p: std::sync::Arc<str> = policy.payload(&alert, limit).into();
        self.payloads.push((limit, p.clone()));
        p
    }
}

/// Builds payloads according to `[policy]`.
#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
}

impl Policy {
    /// A policy following `[policy]`.
    pub fn new(config: PolicyConfig) -> Self {
        Self { config }
    }

    /// The `[policy]` it follows.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Render a message from `from` (its `thread`, or the sender, groups
    /// it) with `badge`, at unix second `now`.
    pub fn message(&self, from: &str, text: Option<&str>, thread: Option<&str>, badge: u32, now: u64) -> Rendered {
        let thread = thread.unwrap_or(from);
        Rendered {
            expiration: now + self.config.ttl,
            collapse_id: self.config.collapse.then(|| collapse_id(thread)),
            priority: 10,
            title: from.to_owned(),
            subtitle: None,
            body: text.map(str::to_owned),
            thread: thread.to_owned(),
            badge,
            quiet: false,
            badge_only: false,
            payloads: Vec::new(),
        }
    }

    /// The JSON payload for `alert`, at most `limit` bytes. Texts are
    /// shortened at a grapheme cluster boundary with an ellipsis: the body
    /// first; if even an empty body does not fit, the subtitle; then the
    /// title.
    pub fn payload(&self, alert: &Alert<'_>, limit: usize) -> String {
        let body = match alert.body {
            Some(text) if !self.config.privacy => text,
            _ => self.config.generic_body.as_str(),
        };
        let fits = |title: &str, body: &str, alert: &Alert<'_>| {
            let s = self.render(title, body, alert);
            (s.len() <= limit).then_some(s)
        };
        if let Some(full) = fits(alert.title, body, alert) {
            return full;
        }
        if let Some(best) = truncate::longest(body, |b| fits(alert.title, b, alert)) {
            return best;
        }
        if let Some(subtitle) = alert.subtitle {
            let cut = |s: &str| {
                let with = Alert {
                    subtitle: Some(s),
                    ..alert.clone()
                };
                fits(alert.title, "", &with)
            };
            if let Some(best) = truncate::longest(subtitle, cut) {
                return best;
            }
        }
        // Title too long on its own (a 4 KiB sender name): cut it as well.
        let bare = Alert {
            subtitle: None,
            ..alert.clone()
        };
        truncate::longest(alert.title, |t| fits(t, "", &bare)).unwrap_or_else(|| {
            // Only a limit smaller than the skeleton gets here (not a real
            // APNS limit); send the skeleton rather than nothing.
            self.render("", "", &bare)
        })
    }

    fn render(&self, title: &str, body: &str, alert: &Alert<'_>) -> String {
        let thread_id = thread_id(alert.thread);
        let payload = MessagePayload {
            aps: MessageAps {
                alert: MessageAlert {
                    body,
                    subtitle: alert.subtitle.filter(|s| !s.is_empty()),
                    title,
                },
                badge: alert.badge,
                interruption_level: alert.quiet.then_some("passive"),
                sound: Some(self.config.sound.as_str()).filter(|s| !alert.quiet && !s.is_empty()),
                thread_id: &thread_id,
            },
        };
        serde_json::to_string(&payload)
            .unwrap_or_else(|e| unreachable!("a payload of strings and numbers serializes: {e}"))
    }
}

/// A message's payload as serialized, borrowed from its parts (not built
/// as a tree); keys in sorted order, as a `serde_json` map holds them.
#[derive(serde::Serialize)]
struct MessagePayload<'a> {
    aps: MessageAps<'a>,
}

/// `aps` of a message (quiet hours: `interruption-level` instead of `sound`).
#[derive(serde::Serialize)]
struct MessageAps<'a> {
    alert: MessageAlert<'a>,
    badge: u32,
    #[serde(rename = "interruption-level", skip_serializing_if = "Option::is_none")]
    interruption_level: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
    #[serde(rename = "thread-id")]
    thread_id: &'a str,
}

/// `aps.alert` of a message.
#[derive(serde::Serialize)]
struct MessageAlert<'a> {
    body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subtitle: Option<&'a str>,
    title: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(PolicyConfig::default())
    }

    fn alert<'a>(title: &'a str, body: &'a str) -> Alert<'a> {
        Alert {
            title,
            subtitle: None,
            body: Some(body),
            badge: 3,
            thread: title,
            quiet: false,
        }
    }

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(s).expect("payload is valid JSON")
    }

    #[test]
    fn payload_shape() {
        let p = parse(&policy().payload(&alert("alice", "are you coming?"), 4096));
        assert_eq!(p["aps"]["alert"]["title"], "alice");
        assert_eq!(p["aps"]["alert"]["body"], "are you coming?");
        assert_eq!(p["aps"]["badge"], 3);
        assert_eq!(p["aps"]["sound"], "default");
        assert_eq!(p["aps"]["thread-id"], "alice");
    }

    /// Serialized from borrowed parts, the payload is still what a JSON
    /// tree of it would print: keys in sorted order, quoting and escapes
    /// alike, for every combination of subtitle, quiet hours and sound.
    #[test]
    fn payload_reads_as_its_json_tree_prints() {
        for (subtitle, quiet, sound) in [
            (None, false, "default"),
            (Some("in #chat"), false, "default"),
            (Some(""), true, "default"),
            (Some("in \"#chat\"\n"), true, ""),
            (None, false, ""),
        ] {
            let p = Policy::new(PolicyConfig {
                sound: sound.into(),
                ..PolicyConfig::default()
            });
            let mut a = alert("ali\u{e9}\"ce\\", "line\none \u{1F600} </tag> \u{1}");
            a.subtitle = subtitle;
            a.quiet = quiet;
            let payload = p.payload(&a, 4096);
            assert_eq!(payload, parse(&payload).to_string(), "{subtitle:?} {quiet} {sound:?}");
            let v = parse(&payload);
            assert_eq!(v["aps"]["interruption-level"].as_str(), quiet.then_some("passive"));
            let want_sound = (!quiet && !sound.is_empty()).then_some(sound);
            assert_eq!(v["aps"]["sound"].as_str(), want_sound);
            let want_subtitle = subtitle.filter(|s| !s.is_empty());
            assert_eq!(v["aps"]["alert"]["subtitle"].as_str(), want_subtitle);
        }
    }

    #[test]
    fn privacy_and_missing_text_use_generic_body() {
        let private = Policy::new(PolicyConfig {
            privacy: true,
            ..PolicyConfig::default()
        });
        let p = parse(&private.payload(&alert("alice", "secret plans"), 4096));
        assert_eq!(p["aps"]["alert"]["body"], "New message");
        let mut a = alert("alice", "");
        a.body = None;
        let p = parse(&policy().payload(&a, 4096));
        assert_eq!(p["aps"]["alert"]["body"], "New message");
    }

    #[test]
    fn silent_sound_is_omitted() {
        let silent = Policy::new(PolicyConfig {
            sound: String::new(),
            ..PolicyConfig::default()
        });
        let p = parse(&silent.payload(&alert("a", "b"), 4096));
        assert!(p["aps"].get("sound").is_none());
    }

    #[test]
    fn truncation_never_splits_characters_and_fits() {
        let bodies = [
            "a".repeat(10_000),
            "é".repeat(5_000),
            "😀".repeat(3_000),
            "日本語テキスト".repeat(700),
            "\"quotes\\and\u{1}controls".repeat(400),
            format!("{}😀", "x".repeat(4040)),
        ];
        for limit in [2048usize, 4096, 256] {
            for body in &bodies {
                let s = policy().payload(&alert("bob", body), limit);
                assert!(s.len() <= limit, "len {} > {limit}", s.len());
                let p = parse(&s);
                let got = p["aps"]["alert"]["body"].as_str().unwrap();
                assert!(got.ends_with('…'));
                let kept = got.trim_end_matches('…');
                assert!(body.starts_with(kept));
                // As long as possible: one more character would not fit.
                let next = body[kept.len()..].chars().next().unwrap();
                let longer = format!("{kept}{next}");
                let s2 = policy().render("bob", &format!("{longer}…"), &alert("bob", body));
                assert!(s2.len() > limit);
            }
        }
    }

    #[test]
    fn huge_title_is_cut_too() {
        let title = "ü".repeat(5000);
        let s = policy().payload(&alert(&title, "hi"), 4096);
        assert!(s.len() <= 4096);
        let p = parse(&s);
        assert!(p["aps"]["alert"]["title"].as_str().unwrap().ends_with('…'));
    }

    #[test]
    fn exact_fit_is_not_cut() {
        let base = policy().payload(&alert("bob", ""), 4096).len();
        let body = "x".repeat(4096 - base);
        let s = policy().payload(&alert("bob", &body), 4096);
        assert_eq!(s.len(), 4096);
        assert_eq!(parse(&s)["aps"]["alert"]["body"], body.as_str());
    }

    #[test]
    fn coalesced_quiet_and_badge_only_renders() {
        let p = policy();
        let mut m = p.message("bob", Some("last"), None, 7, 0).coalesced(3);
        let v = parse(&m.payload(&p, 4096));
        assert_eq!(v["aps"]["alert"]["title"], "bob (3)");
        assert_eq!(v["aps"]["alert"]["body"], "last");
        assert_eq!(v["aps"]["sound"], "default");
        assert!(v["aps"].get("interruption-level").is_none());
        assert_eq!(m.priority, 10);
        let mut one = p.message("bob", Some("hi"), None, 1, 0).coalesced(1);
        assert_eq!(parse(&one.payload(&p, 4096))["aps"]["alert"]["title"], "bob");

        let mut q = p.message("bob", Some("shh"), None, 2, 0).quiet();
        let v = parse(&q.payload(&p, 4096));
        assert!(v["aps"].get("sound").is_none());
        assert_eq!(v["aps"]["interruption-level"], "passive");
        assert_eq!(v["aps"]["alert"]["body"], "shh");
        assert_eq!(v["aps"]["badge"], 2);

        let mut muted = p.message("bob", Some("secret"), None, 4, 0).quiet().badge_only();
        assert_eq!(&*muted.payload(&p, 4096), r#"{"aps":{"badge":4}}"#);
        assert_eq!(muted.priority, 5);
    }

    /// `got` is `full` cut at a grapheme boundary plus `…`, and the next
    /// cluster would not have fitted `limit` (rendered by `render`).
    fn cut_whole_and_longest(full: &str, got: &str, limit: usize, render: impl Fn(&str) -> String) {
        let kept = got.strip_suffix('…').unwrap_or_else(|| panic!("no ellipsis: {got:?}"));
        assert!(full.starts_with(kept), "not a prefix");
        assert!(
            pushbridge_kit::text::cut_points(full).contains(&kept.len()),
            "cut inside a cluster at byte {}",
            kept.len()
        );
        let next = pushbridge_kit::text::cut_points(full)
            .into_iter()
            .find(|&i| i > kept.len())
            .unwrap_or(full.len());
        assert!(
            render(&format!("{}…", &full[..next])).len() > limit,
            "one more cluster fits"
        );
    }

    #[test]
    fn bodies_are_cut_between_grapheme_clusters() {
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
        let bodies = [
            "🇩🇪".repeat(950),
            "e\u{301}".repeat(2600),
            "1\u{fe0f}\u{20e3}#\u{fe0f}\u{20e3}".repeat(400),
            family.repeat(300),
            "مرحبا بالعالم שלום עולם ".repeat(200),
            "\"\\\u{1}\u{1f}\n\t".repeat(1000),
        ];
        for limit in [4096usize, 2048, 300] {
            for body in &bodies {
                let s = policy().payload(&alert("bob", body), limit);
                assert!(s.len() <= limit, "len {} > {limit}", s.len());
                let got = parse(&s)["aps"]["alert"]["body"].as_str().unwrap().to_owned();
                cut_whole_and_longest(body, &got, limit, |b| policy().render("bob", b, &alert("bob", body)));
            }
        }
        // The flag body: whole flags only (8 bytes each).
        let s = policy().payload(&alert("bob", &"🇩🇪".repeat(950)), 4096);
        let got = parse(&s)["aps"]["alert"]["body"].as_str().unwrap().to_owned();
        assert_eq!((got.len() - 3) % 8, 0, "{got}");
    }

    #[test]
    fn subtitle_is_rendered_and_cut_after_the_body() {
        let mut a = alert("Bob", "hi");
        a.subtitle = Some("room@conference.example.org");
        let p = parse(&policy().payload(&a, 4096));
        assert_eq!(p["aps"]["alert"]["subtitle"], "room@conference.example.org");
        assert_eq!(p["aps"]["alert"]["title"], "Bob");
        a.subtitle = Some("");
        assert!(parse(&policy().payload(&a, 4096))["aps"]["alert"]
            .get("subtitle")
            .is_none());
        // A huge subtitle: the body goes first, then the subtitle is cut.
        let sub = "e\u{301}".repeat(3000);
        a.subtitle = Some(&sub);
        let s = policy().payload(&a, 4096);
        assert!(s.len() <= 4096);
        let p = parse(&s);
        assert_eq!(p["aps"]["alert"]["body"], "");
        assert_eq!(p["aps"]["alert"]["title"], "Bob");
        let got = p["aps"]["alert"]["subtitle"].as_str().unwrap().to_owned();
        let b = a.clone();
        cut_whole_and_longest(&sub, &got, 4096, |x| {
            let with = Alert {
                subtitle: Some(x),
                ..b.clone()
            };
            policy().render("Bob", "", &with)
        });
    }

    #[test]
    fn huge_title_keeps_whole_clusters() {
        let title = "👨\u{200d}👩\u{200d}👧".repeat(400);
        let s = policy().payload(&alert(&title, "hi"), 2048);
        assert!(s.len() <= 2048);
        let got = parse(&s)["aps"]["alert"]["title"].as_str().unwrap().to_owned();
        cut_whole_and_longest(&title, &got, 2048, |t| policy().render(t, "", &alert(&title, "")));
    }

    #[test]
    fn collapse_id_is_a_digest_of_the_conversation() {
        let on = Policy::new(PolicyConfig {
            collapse: true,
            ..PolicyConfig::default()
        });
        let id = |from, thread| on.message(from, Some("x"), thread, 1, 0).collapse_id.unwrap();
        assert_eq!(id("jürgen", None), collapse_id("jürgen"));
        assert_eq!(id("bob", Some("#café")), id("carol", Some("#café")));
        assert_ne!(id("bob", Some("#café")), id("bob", Some("#cafe")));
        assert!(id(&"ü".repeat(100), None).is_ascii());
        assert!(policy().message("bob", None, None, 1, 0).collapse_id.is_none());
    }

    #[test]
    fn long_conversation_keys_make_short_distinct_thread_ids() {
        let (k1, k2) = ("ü".repeat(100), format!("{}x", "ü".repeat(100)));
        let t = |k: &str| parse(&policy().payload(&alert(k, "hi"), 4096))["aps"]["thread-id"].clone();
        assert!(t(&k1).as_str().unwrap().len() <= MAX_THREAD_ID);
        assert_ne!(t(&k1), t(&k2));
    }
}
