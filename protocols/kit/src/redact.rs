//! Redaction for logs: what the adapters' protocol traces share so that no
//! secret, full device token or message text reaches a log line, while the
//! trace itself stays (what was said, in what order, how long).
//!
//! - [`REDACTED`]: what stands for a secret (a password, a SASL response, a
//!   handshake digest).
//! - [`text_len`]: what stands for message text: its length only.
//! - [`shorten_hex`]: every run of [`HEX_RUN`] or more hex digits (a device
//!   token, or part of one) cut to its first 8 digits and `…`, as
//!   `DeviceToken::short` shortens tokens everywhere else in the logs.
//!
//! Each protocol has one redaction function for its raw lines (IRC
//! `redact_line`, the line protocol's `redact_line`, XMPP `redact_xml`),
//! built from these.

use std::borrow::Cow;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Hex digits in a row from which [`shorten_hex`] cuts: device tokens are
/// 64 to 200 hex digits; 32 also catches half a token (a mistyped one)
/// while leaving short hex words (ids, colours, hashes of 8) alone.
pub const HEX_RUN: usize = 32;

/// Hex digits a shortened run keeps (as `DeviceToken::short`).
pub const SHORT_HEX: usize = 8;

/// Message text as it appears in a trace: its length in bytes only,
/// `<text: 17 bytes>`.
pub fn text_len(text: &str) -> String {
    format!("<text: {} bytes>", text.len())
}

/// `s` with every run of at least [`HEX_RUN`] ASCII hex digits cut to its
/// first [`SHORT_HEX`] digits followed by `…`. Borrowed when nothing was
/// cut. Linear in `s`.
pub fn shorten_hex(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let mut out: Option<String> = None;
    // Copied to `out` up to here.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_hexdigit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_hexdigit() {
            i += 1;
        }
        if i - start >= HEX_RUN {
            // Hex digits are ASCII: every index here is a char boundary.
            let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
            o.push_str(&s[copied..start + SHORT_HEX]);
            o.push('…');
            copied = i;
        }
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[copied..]);
            Cow::Owned(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_runs_are_cut_to_eight_digits() {
        let token = "a1b2c3d4".repeat(8);
        assert_eq!(shorten_hex(&format!("REGISTER {token}")), "REGISTER a1b2c3d4…");
        assert_eq!(
            shorten_hex(&format!("x={token};y={}", "F".repeat(200))),
            "x=a1b2c3d4…;y=FFFFFFFF…"
        );
        // A run of exactly HEX_RUN is cut, one shorter is not.
        assert_eq!(shorten_hex(&"e".repeat(HEX_RUN)), "eeeeeeee…");
        let below = "e".repeat(HEX_RUN - 1);
        assert!(matches!(shorten_hex(&below), Cow::Borrowed(b) if b == below));
        // Not hex, short hex words and other scripts pass unchanged.
        for s in ["", "PING :abc", "deadbeef cafe", "grüße 0123456789", "#chan"] {
            assert!(matches!(shorten_hex(s), Cow::Borrowed(b) if b == s), "{s}");
        }
        // Multi-byte characters around a run stay whole.
        assert_eq!(shorten_hex(&format!("é{token}é")), "éa1b2c3d4…é");
    }

    #[test]
    fn text_is_its_length() {
        assert_eq!(text_len("hello"), "<text: 5 bytes>");
        assert_eq!(text_len(""), "<text: 0 bytes>");
        assert_eq!(text_len("é"), "<text: 2 bytes>");
    }
}
