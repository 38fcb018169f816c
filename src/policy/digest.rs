//! Conversation keys made safe for places with tight rules: an APNS
//! header (`apns-collapse-id`: at most 64 bytes, and like every HTTP header
//! value visible ASCII only) and the payload's `thread-id` (a grouping key
//! we keep to [`MAX_THREAD_ID`] bytes).
//!
//! A conversation key is chat data (a sender, a channel, a room JID) in
//! any script and of any length, so it is never put in a header as is: the
//! header carries its digest, SHA-256 in unpadded base64url (RFC 4648 §5),
//! 43 characters of `[A-Za-z0-9_-]`. The same key always gives the same
//! id; different keys give different ids (a collision would need a SHA-256
//! collision).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use pushbridge_kit::text::clip;

/// Length of a [`collapse_id`] in bytes (within Apple's 64).
pub const DIGEST_LEN: usize = 43;

/// Longest `thread-id`, in bytes: a grouping key, not text anyone reads.
pub const MAX_THREAD_ID: usize = 128;

/// The `apns-collapse-id` for the conversation `key`: its SHA-256 in
/// unpadded base64url, [`DIGEST_LEN`] visible-ASCII bytes whatever `key`
/// is. Adapters and sinks that set a collapse id from chat data use this.
pub fn collapse_id(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(key.as_bytes()))
}

/// The payload `thread-id` for the conversation `key`: the key itself when
/// it has at most [`MAX_THREAD_ID`] bytes; else its first bytes (cut at a
/// grapheme cluster boundary), `#`, and its [`collapse_id`], so long keys
/// sharing a prefix still group apart.
pub fn thread_id(key: &str) -> String {
    if key.len() <= MAX_THREAD_ID {
        return key.to_owned();
    }
    let head = clip(key, MAX_THREAD_ID - DIGEST_LEN - 1);
    format!("{head}#{}", collapse_id(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_ids_are_short_ascii_and_stable() {
        for key in [
            "bob",
            "jürgen",
            "#café",
            "",
            "room@conference.example.org",
            &"x".repeat(5000),
        ] {
            let id = collapse_id(key);
            assert_eq!(id.len(), DIGEST_LEN, "{key:?}");
            assert!(
                id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{id}"
            );
            assert_eq!(id, collapse_id(key));
        }
        // SHA-256("abc"), RFC 6234's test vector, in base64url.
        assert_eq!(collapse_id("abc"), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
        assert_ne!(collapse_id("jürgen"), collapse_id("jurgen"));
        assert_ne!(collapse_id(&"a".repeat(65)), collapse_id(&"a".repeat(64)));
    }

    #[test]
    fn thread_ids_stay_short_and_distinct() {
        assert_eq!(thread_id("bob"), "bob");
        let exact = "é".repeat(MAX_THREAD_ID / 2);
        assert_eq!(thread_id(&exact), exact);
        let (a, b) = ("🇩🇪".repeat(100), format!("{}x", "🇩🇪".repeat(100)));
        let (ta, tb) = (thread_id(&a), thread_id(&b));
        assert!(ta.len() <= MAX_THREAD_ID && tb.len() <= MAX_THREAD_ID);
        assert_ne!(ta, tb);
        let head = ta.split('#').next().unwrap_or_default();
        assert!(a.starts_with(head) && head.len() % 8 == 0, "{head}");
    }
}
