//! Building provider API requests: pure functions, no sockets.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Uri};

use crate::outcome::Notification;

pub static APNS_ID: HeaderName = HeaderName::from_static("apns-id");
pub static APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
pub static APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
pub static APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
pub static APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
pub static APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");

/// Apple's limit on `apns-collapse-id`.
pub const MAX_COLLAPSE_ID: usize = 64;

/// Our `apns-id` for an outbox entry: a UUID (lower-case, 8-4-4-4-12, the
/// version-4 layout) whose first half is random per gateway process and
/// whose last 16 hex digits are the outbox id. Retries of one entry carry the
/// same id, and an operator can find the outbox entry from Apple's answer.
pub fn apns_id(process_prefix: u64, outbox_id: i64) -> String {
    let hi = (process_prefix & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000; // version 4
    let lo = (outbox_id as u64 & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// The outbox id inside an [`apns_id`].
pub fn outbox_id_of(apns_id: &str) -> Option<i64> {
    let hex: String = apns_id.split('-').skip(3).collect();
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(&hex, 16)
        .ok()
        .map(|v| (v & 0x3fff_ffff_ffff_ffff) as i64)
}

/// Whether `s` is a canonical lower-case UUID.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// A request error: the notification cannot be expressed as a request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// `POST /3/device/<token>` with Apple's headers for an alert.
/// `authority` is `host:port`; `bearer` is the provider token (token auth).
pub fn build(
    n: &Notification,
    authority: &str,
    apns_id: &str,
    bearer: Option<&str>,
) -> Result<Request<()>, BuildError> {
    RequestBuilder::new(authority).build(n, apns_id, bearer.map(Arc::from).as_ref())
}

/// Builds the requests of one connection ([`build`]'s result), keeping the
/// header values that repeat from one notification to the next (provider
/// token, topic, expiration) instead of checking and copying them anew.
pub struct RequestBuilder {
    /// The authority, or why it cannot be one (then every request fails).
    authority: Result<Authority, BuildError>,
    bearer: Option<(Arc<str>, HeaderValue)>,
    topic: Option<(Arc<str>, HeaderValue)>,
    expiration: Option<(u64, HeaderValue)>,
}

impl RequestBuilder {
    /// For requests to `authority` (`host:port`).
    pub fn new(authority: &str) -> Self {
        Self {
            authority: Authority::try_from(authority).map_err(|e| BuildError(format!("bad request: {e}"))),
            bearer: None,
            topic: None,
            expiration: None,
        }
    }

    /// The request for `n`; `bearer` is the provider token (token auth).
    pub fn build(
        &mut self,
        n: &Notification,
        apns_id: &str,
        bearer: Option<&Arc<str>>,
    ) -> Result<Request<()>, BuildError> {
        let mut h = HeaderMap::with_capacity(12);
        h.insert(&APNS_TOPIC, cached(&mut self.topic, &n.app, |t| value(t, "topic"))?);
        h.insert(&APNS_PUSH_TYPE, HeaderValue::from_static("alert"));
        h.insert(
            &APNS_PRIORITY,
            match n.priority {
                10 => HeaderValue::from_static("10"),
                5 => HeaderValue::from_static("5"),
                p => HeaderValue::from(p as u32),
            },
        );
        let expiration = match &self.expiration {
            Some((e, v)) if *e == n.expiration => v.clone(),
            _ => {
                let v = HeaderValue::from(n.expiration);
                self.expiration = Some((n.expiration, v.clone()));
                v
            }
        };
        h.insert(&APNS_EXPIRATION, expiration);
        // Unique per notification, so never worth an HPACK table entry:
        // indexed (h2's default), each one would evict the repeating values
        // (topic, expiration, priority) from both ends' tables, and they
        // would go out as literals again. "Sensitive" is how h2 is told to
        // send a value without indexing it (RFC 7541 §6.2.3).
        let mut id = value(apns_id, "apns-id")?;
        id.set_sensitive(true);
        h.insert(&APNS_ID, id);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(n.payload.len()));
        if let Some(c) = &n.collapse_id {
            if c.len() > MAX_COLLAPSE_ID {
                return Err(BuildError(format!("collapse id longer than {MAX_COLLAPSE_ID} bytes")));
            }
            h.insert(&APNS_COLLAPSE_ID, value(c, "collapse id")?);
        }
        if let Some(t) = bearer {
            let v = cached(&mut self.bearer, t, |t| {
                let mut v = value(&format!("bearer {t}"), "authorization")?;
                v.set_sensitive(true);
                Ok(v)
            })?;
            h.insert(AUTHORIZATION, v);
        }
        let mut path = String::with_capacity(10 + n.token.as_str().len());
        path.push_str("/3/device/");
        path.push_str(n.token.as_str());
        let uri = Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(self.authority.clone()?)
            .path_and_query(path)
            .build()
            .map_err(|e| BuildError(format!("bad request: {e}")))?;
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        *req.headers_mut() = h;
        Ok(req)
    }
}

/// The header value for `s`: the one made last time when `s` is the same.
fn cached(
    slot: &mut Option<(Arc<str>, HeaderValue)>,
    s: &Arc<str>,
    make: impl FnOnce(&str) -> Result<HeaderValue, BuildError>,
) -> Result<HeaderValue, BuildError> {
    if let Some((k, v)) = slot {
        if Arc::ptr_eq(k, s) || **k == **s {
            return Ok(v.clone());
        }
    }
    let v = make(s)?;
    *slot = Some((s.clone(), v.clone()));
    Ok(v)
}

fn value(s: &str, what: &str) -> Result<HeaderValue, BuildError> {
    HeaderValue::from_str(s).map_err(|_| BuildError(format!("{what} {s:?} cannot be an HTTP header value")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushbridge_api::{DeviceToken, Environment};

    fn note(collapse: Option<&str>) -> Notification {
        let mut n = Notification::new(
            42,
            "org.example.chat",
            DeviceToken::parse(&"ab".repeat(32)).unwrap(),
            Environment::Production,
            r#"{"aps":{"alert":{"title":"bob","body":"hi"}}}"#,
        );
        n.expiration = 1_900_000_000;
        n.collapse_id = collapse.map(str::to_owned);
        n
    }

    #[test]
    fn request_carries_apples_headers() {
        let n = note(Some("bob"));
        let id = apns_id(0x1234_5678_9abc_def0, 42);
        let r = build(&n, "api.push.apple.com:443", &id, Some("jwt.token.sig")).unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().path(), format!("/3/device/{}", "ab".repeat(32)));
        assert_eq!(r.uri().authority().unwrap().as_str(), "api.push.apple.com:443");
        assert_eq!(r.uri().scheme_str(), Some("https"));
        let h = r.headers();
        assert_eq!(h["apns-topic"], "org.example.chat");
        assert_eq!(h["apns-push-type"], "alert");
        assert_eq!(h["apns-priority"], "10");
        assert_eq!(h["apns-expiration"], "1900000000");
        assert_eq!(h["apns-collapse-id"], "bob");
        assert_eq!(h["apns-id"], id.as_str());
        assert!(h["apns-id"].is_sensitive(), "unique: kept out of the HPACK table");
        assert_eq!(h["authorization"], "bearer jwt.token.sig");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["content-length"], n.payload.len().to_string().as_str());
    }

    #[test]
    fn a_reused_builder_follows_what_changes() {
        let mut b = RequestBuilder::new("h:1");
        let (t1, t2): (Arc<str>, Arc<str>) = (Arc::from("jwt.one.sig"), Arc::from("jwt.two.sig"));
        let mut n = note(None);
        let r = b.build(&n, &apns_id(1, 1), Some(&t1)).unwrap();
        assert_eq!(r.headers()["authorization"], "bearer jwt.one.sig");
        n.app = Arc::from("org.example.other");
        n.priority = 1;
        n.expiration = 7;
        let r = b.build(&n, &apns_id(1, 2), Some(&t2)).unwrap();
        let h = r.headers();
        assert_eq!(h["authorization"], "bearer jwt.two.sig");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["apns-topic"], "org.example.other");
        assert_eq!(h["apns-priority"], "1");
        assert_eq!(h["apns-expiration"], "7");
        assert_eq!(h["apns-id"], apns_id(1, 2).as_str());
        assert_eq!(r.uri().to_string(), format!("https://h:1/3/device/{}", "ab".repeat(32)));
        let r = b.build(&n, &apns_id(1, 3), None).unwrap();
        assert!(r.headers().get("authorization").is_none());
        n.app = Arc::from("bad\ntopic");
        assert!(b.build(&n, &apns_id(1, 4), None).is_err());
    }

    #[test]
    fn optional_headers_are_absent_when_unset() {
        let r = build(&note(None), "h:1", &apns_id(1, 1), None).unwrap();
        assert!(r.headers().get("apns-collapse-id").is_none());
        assert!(r.headers().get("authorization").is_none());
    }

    #[test]
    fn long_collapse_id_is_refused() {
        let long = "x".repeat(65);
        assert!(build(&note(Some(&long)), "h:1", &apns_id(1, 1), None).is_err());
        assert!(build(&note(Some(&"x".repeat(64))), "h:1", &apns_id(1, 1), None).is_ok());
    }

    mod chat_data {
        //! Property: chat data never makes a request Apple would refuse.
        use super::*;
        use crate::config::PolicyConfig;
        use crate::policy::{collapse_id, Policy};
        use crate::simulator::http2::{check_headers, MAX_PAYLOAD};
        use proptest::prelude::*;

        /// The request for a message from `from` in conversation `thread`,
        /// rendered with `collapse = true`.
        fn request_for(from: &str, thread: Option<&str>, text: &str) -> Request<()> {
            let policy = Policy::new(PolicyConfig {
                collapse: true,
                ..PolicyConfig::default()
            });
            let mut r = policy
                .message(from, Some(text), thread, 7, 1_900_000_000)
                .with_subtitle(Some(text));
            let mut n = note(None);
            n.payload = r.payload(&policy, MAX_PAYLOAD);
            n.collapse_id = r.collapse_id.clone();
            let mut b = RequestBuilder::new("api.push.apple.com:443");
            b.build(&n, &apns_id(3, 9), Some(&Arc::from("jwt.token.sig")))
                .unwrap_or_else(|e| panic!("{from:?}/{thread:?}: {e}"))
        }

        proptest! {
            #[test]
            fn every_request_passes_the_simulators_header_checks(
                from in any::<String>(),
                thread in proptest::option::of(any::<String>()),
                text in any::<String>(),
            ) {
                let r = request_for(&from, thread.as_deref(), &text);
                prop_assert_eq!(check_headers(r.headers()), Ok(()));
                let key = thread.as_deref().unwrap_or(&from);
                let want = collapse_id(key);
                prop_assert_eq!(&r.headers()["apns-collapse-id"], want.as_str());
                prop_assert!(collapse_id(key).len() <= MAX_COLLAPSE_ID);
            }

            #[test]
            fn distinct_conversations_get_distinct_collapse_ids(a in any::<String>(), b in any::<String>()) {
                prop_assume!(a != b);
                prop_assert_ne!(collapse_id(&a), collapse_id(&b));
                let (ra, rb) = (request_for("x", Some(&a), "t"), request_for("x", Some(&b), "t"));
                prop_assert_ne!(&ra.headers()["apns-collapse-id"], &rb.headers()["apns-collapse-id"]);
            }

            #[test]
            fn long_keys_sharing_a_prefix_stay_distinct(base in "\\PC{64,300}", more in "\\PC{1,4}") {
                let longer = format!("{base}{more}");
                prop_assert_ne!(collapse_id(&base), collapse_id(&longer));
            }
        }

        #[test]
        fn the_issues_senders_and_channels() {
            for (from, thread) in [
                ("jürgen", None),
                ("bob", Some("#café")),
                ("bob", Some("jürgen@example.org")),
            ] {
                assert_eq!(check_headers(request_for(from, thread, "hallo").headers()), Ok(()));
            }
        }
    }

    #[test]
    fn apns_id_is_a_uuid_carrying_the_outbox_id() {
        for (prefix, id) in [
            (0u64, 0i64),
            (u64::MAX, 1),
            (0xdead_beef, 123_456_789),
            (7, i64::MAX >> 2),
        ] {
            let s = apns_id(prefix, id);
            assert!(is_uuid(&s), "{s}");
            assert_eq!(&s[14..15], "4", "{s}");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
            assert_eq!(outbox_id_of(&s), Some(id));
        }
        assert_ne!(apns_id(1, 5), apns_id(2, 5));
        assert!(!is_uuid("0123456789abcdef0123456789abcdef0123"));
        assert!(!is_uuid("ABCDEF01-2345-4789-8abc-def012345678"));
    }
}
