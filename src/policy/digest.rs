//! Conversation keys made safe for places with tight rules: an APNS
//! header (`apns-collapse-id`, [`collapse_id`]: the key's SHA-256 in
//! unpadded base64url, from `pushbridge_kit::digest` so adapters can use it
//! too) and the payload's `thread-id` (a grouping key we keep to
//! [`MAX_THREAD_ID`] bytes, [`thread_id`]).

use pushbridge_kit::text::clip;

pub use pushbridge_kit::digest::{collapse_id, DIGEST_LEN};

/// Longest `thread-id`, in bytes: a grouping key, not text anyone reads.
pub const MAX_THREAD_ID: usize = 128;

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
