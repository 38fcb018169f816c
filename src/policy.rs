//! The notification policy: what a push for a message says, and how it is
//! cut to fit an app's payload limit.
//!
//! Who gets a push (presence) is decided by the router; here we only build
//! the APNS payload:
//! `{"aps":{"alert":{"title":…,"body":…},"badge":n,"sound":…,"thread-id":…}}`.
//! A coalesced push's title carries the number of messages (`bob (3)`); a
//! push in quiet hours has no `sound` and `"interruption-level":"passive"`;
//! a muted conversation's push is badge-only: `{"aps":{"badge":n}}`.
//! A push the IM server decided on ([`pushbridge_api::Push`]) has its own
//! renderer, [`Policy::push`] (module `push`).

use serde_json::json;

use crate::config::PolicyConfig;

mod push;
pub use push::RenderedPush;

/// The ellipsis appended to a shortened body or title.
const ELLIPSIS: char = '…';

/// The parts of one alert, before truncation.
#[derive(Debug, Clone)]
pub struct Alert<'a> {
    pub title: &'a str,
    /// `None`: the generic body.
    pub body: Option<&'a str>,
    pub badge: u32,
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
    /// `apns-collapse-id`, with `collapse = true`.
    pub collapse_id: Option<String>,
    /// 10: alerts are sent immediately.
    pub priority: u8,
    title: String,
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
            collapse_id: self.config.collapse.then(|| clip(thread, 64).to_owned()),
            priority: 10,
            title: from.to_owned(),
            body: text.map(str::to_owned),
            thread: thread.to_owned(),
            badge,
            quiet: false,
            badge_only: false,
            payloads: Vec::new(),
        }
    }

    /// The JSON payload for `alert`, at most `limit` bytes. The body is
    /// shortened at a character boundary with an ellipsis; if even an empty
    /// body does not fit, the title is shortened too.
    pub fn payload(&self, alert: &Alert<'_>, limit: usize) -> String {
        let body = match alert.body {
            Some(text) if !self.config.privacy => text,
            _ => self.config.generic_body.as_str(),
        };
        let full = self.render(alert.title, body, alert);
        if full.len() <= limit {
            return full;
        }
        // Longest body prefix that fits: binary search over char boundaries.
        let boundaries: Vec<usize> = body.char_indices().map(|(i, _)| i).collect();
        let fits = |n: usize| {
            let s = self.render(alert.title, &shortened(body, boundaries[n]), alert);
            (s.len() <= limit).then_some(s)
        };
        if let Some(best) = largest_fitting(boundaries.len(), fits) {
            return best;
        }
        // Title too long on its own (a 4 KiB sender name): cut it as well.
        let tb: Vec<usize> = alert.title.char_indices().map(|(i, _)| i).collect();
        let fits = |n: usize| {
            let s = self.render(&shortened(alert.title, tb[n]), "", alert);
            (s.len() <= limit).then_some(s)
        };
        largest_fitting(tb.len(), fits).unwrap_or_else(|| {
            // Only a limit smaller than the skeleton gets here (not a real
            // APNS limit); send the skeleton rather than nothing.
            self.render("", "", alert)
        })
    }

    fn render(&self, title: &str, body: &str, alert: &Alert<'_>) -> String {
        let mut aps = json!({
            "alert": {"title": title, "body": body},
            "badge": alert.badge,
            "thread-id": clip(alert.thread, MAX_THREAD_ID),
        });
        if alert.quiet {
            aps["interruption-level"] = json!("passive");
        } else if !self.config.sound.is_empty() {
            aps["sound"] = json!(self.config.sound);
        }
        json!({ "aps": aps }).to_string()
    }
}

/// Longest `thread-id`, in bytes: a grouping key, not text anyone reads.
const MAX_THREAD_ID: usize = 128;

/// `s` cut to at most `max` bytes at a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut to `at` bytes (a char boundary) plus an ellipsis.
fn shortened(s: &str, at: usize) -> String {
    let mut out = String::with_capacity(at + 3);
    out.push_str(&s[..at]);
    out.push(ELLIPSIS);
    out
}

/// Binary search for the largest `n` in `0..count` whose render fits.
fn largest_fitting(count: usize, fits: impl Fn(usize) -> Option<String>) -> Option<String> {
    let mut best = None;
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match fits(mid) {
            Some(s) => {
                best = Some(s);
                lo = mid + 1;
            }
            None => hi = mid,
        }
    }
    best
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
}
