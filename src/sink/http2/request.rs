//! Building provider API requests: pure functions, no sockets.

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request};

use crate::sink::Notification;

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
#[derive(Debug, thiserror::Error)]
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
    let uri = format!("https://{authority}/3/device/{}", n.token.as_str());
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(&APNS_TOPIC, value(&n.topic, "topic")?)
        .header(&APNS_PUSH_TYPE, HeaderValue::from_static("alert"))
        .header(&APNS_PRIORITY, HeaderValue::from(n.priority as u32))
        .header(&APNS_EXPIRATION, HeaderValue::from(n.expiration))
        .header(&APNS_ID, value(apns_id, "apns-id")?)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(CONTENT_LENGTH, HeaderValue::from(n.payload.len()));
    if let Some(c) = &n.collapse_id {
        if c.len() > MAX_COLLAPSE_ID {
            return Err(BuildError(format!("collapse id longer than {MAX_COLLAPSE_ID} bytes")));
        }
        b = b.header(&APNS_COLLAPSE_ID, value(c, "collapse id")?);
    }
    if let Some(t) = bearer {
        let mut v = value(&format!("bearer {t}"), "authorization")?;
        v.set_sensitive(true);
        b = b.header(AUTHORIZATION, v);
    }
    b.body(()).map_err(|e| BuildError(format!("bad request: {e}")))
}

fn value(s: &str, what: &str) -> Result<HeaderValue, BuildError> {
    HeaderValue::from_str(s).map_err(|_| BuildError(format!("{what} {s:?} cannot be an HTTP header value")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushbridge_api::{DeviceToken, Environment};
    use std::sync::Arc;

    fn note(collapse: Option<&str>) -> Notification {
        Notification {
            id: 42,
            topic: Arc::from("org.example.chat"),
            token: DeviceToken::parse(&"ab".repeat(32)).unwrap(),
            environment: Environment::Production,
            payload: Arc::from(r#"{"aps":{"alert":{"title":"bob","body":"hi"}}}"#),
            expiration: 1_900_000_000,
            priority: 10,
            collapse_id: collapse.map(str::to_owned),
            created_ms: 0,
        }
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
        assert_eq!(h["authorization"], "bearer jwt.token.sig");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["content-length"], n.payload.len().to_string().as_str());
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
