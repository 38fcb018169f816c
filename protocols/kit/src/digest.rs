//! Header-safe digests of chat data. A conversation key (a sender, a
//! channel, a room JID) comes in any script and of any length, so it never
//! goes into an HTTP header as it is (`apns-collapse-id`: at most 64 bytes,
//! and like every header value visible ASCII only): the header carries its
//! digest, SHA-256 in unpadded base64url (RFC 4648 §5), 43 characters of
//! `[A-Za-z0-9_-]`. The same key always gives the same id; different keys
//! give different ids (a collision would need a SHA-256 collision).
//!
//! The core's payload policy uses it (`pushbridge::policy::collapse_id` is
//! this function), and so can an adapter that sets headers itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Length of a [`collapse_id`] in bytes (within Apple's 64).
pub const DIGEST_LEN: usize = 43;

/// The `apns-collapse-id` for the conversation `key`: its SHA-256 in
/// unpadded base64url, [`DIGEST_LEN`] visible-ASCII bytes whatever `key`
/// is.
pub fn collapse_id(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(key.as_bytes()))
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
}
