//! The body of `POST /_matrix/push/v1/notify` (Matrix Push Gateway API
//! v1) and its parsing: a pure function of the bytes, [`parse_notify`],
//! so it can be fuzzed and tested without a server. Also the pushkey
//! decoding, [`decode_pushkey`].
//!
//! Fields the gateway does not use are ignored (the specification lets
//! homeservers add some); fields it uses must have their specified types.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use pushbridge_api::DeviceToken;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a body was refused; both are answered 400 with the Matrix error
/// JSON (`errcode` [`NotifyError::errcode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// Not JSON at all (or not UTF-8).
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a notify request (missing `notification` or
    /// `devices`, a field of the wrong type).
    #[error("request body is not a notify request: {0}")]
    BadJson(String),
}

impl NotifyError {
    /// The Matrix `errcode`: `M_NOT_JSON` or `M_BAD_JSON`.
    pub fn errcode(&self) -> &'static str {
        match self {
            NotifyError::NotJson(_) => "M_NOT_JSON",
            NotifyError::BadJson(_) => "M_BAD_JSON",
        }
    }
}

/// A notify request: `{"notification": …}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Notify {
    pub notification: Notification,
}

/// What the homeserver tells the gateway about one event (or a badge
/// update: no `event_id`, `type` null).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Notification {
    pub event_id: Option<String>,
    pub room_id: Option<String>,
    /// The event type (`m.room.message`, `m.room.member`, …); `None` for a
    /// badge update and in the `event_id_only` format.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The sender's user id.
    pub sender: Option<String>,
    pub sender_display_name: Option<String>,
    pub room_name: Option<String>,
    pub room_alias: Option<String>,
    /// Whether the user the push is for is the target of a membership event.
    pub user_is_target: Option<bool>,
    /// `high` (default) or `low`.
    pub prio: Option<String>,
    /// The event's content (left out in the `event_id_only` format).
    pub content: Option<Map<String, Value>>,
    /// For `m.room.member` events: the new membership (`invite`, …).
    pub membership: Option<String>,
    pub counts: Option<Counts>,
    /// The devices (pushers) to notify; required.
    pub devices: Vec<Device>,
}

/// The user's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Counts {
    /// Rooms with unread notifications plus invites: the badge.
    pub unread: Option<u32>,
    pub missed_calls: Option<u32>,
}

/// One pusher.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Device {
    /// The client app (`com.example.chat.ios`): chooses the APNS app.
    pub app_id: String,
    /// The APNS device token, base64 (or hex).
    pub pushkey: String,
    pub pushkey_ts: Option<u64>,
    /// The pusher's `data` (`format`, …).
    pub data: Option<Map<String, Value>>,
    /// What the push rules asked for (`sound`, `highlight`).
    pub tweaks: Option<Map<String, Value>>,
}

impl Device {
    /// Whether the pusher asked for the `event_id_only` format.
    pub fn event_id_only(&self) -> bool {
        self.data.as_ref().and_then(|d| d.get("format")).and_then(Value::as_str) == Some("event_id_only")
    }

    /// The `sound` tweak, when set to a non-empty string.
    pub fn sound(&self) -> Option<&str> {
        self.tweaks
            .as_ref()
            .and_then(|t| t.get("sound"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// Parse a notify body. Pure: no I/O, no allocation beyond the result.
/// `M_NOT_JSON` exactly when the bytes are not JSON at all: a body that
/// is wrong for a notify request (a duplicate key, a wrong type) before a
/// syntax error or a byte that is not UTF-8 further on is still not JSON
/// (both found by fuzzing).
pub fn parse_notify(bytes: &[u8]) -> Result<Notify, NotifyError> {
    // JSON is UTF-8 (RFC 8259 §8.1); serde_json would not look at the bytes
    // of a string it skips, so check them all first.
    let text = std::str::from_utf8(bytes).map_err(|e| NotifyError::NotJson(format!("not UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => NotifyError::BadJson(e.to_string()),
                Err(syntax) => NotifyError::NotJson(syntax.to_string()),
            },
            Category::Syntax | Category::Eof | Category::Io => NotifyError::NotJson(e.to_string()),
        }
    })
}

/// Why a pushkey is not an APNS token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushkeyError {
    #[error("pushkey is neither base64 nor hex")]
    NotBase64,
    #[error("pushkey is not a device token: {0}")]
    BadToken(#[from] pushbridge_api::TokenError),
}

/// Standard base64, padding optional (but correct when present).
const PUSHKEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode a pushkey: the APNS token's bytes in standard base64, with or
/// without padding (what Sygnal expects); a string of an even number of
/// hex digits is taken as hex instead (base64 of a token never is: a
/// 32-byte token is 43 characters, or 44 with `=`).
pub fn decode_pushkey(pushkey: &str) -> Result<DeviceToken, PushkeyError> {
    if !pushkey.is_empty() && pushkey.len().is_multiple_of(2) && pushkey.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(DeviceToken::parse(pushkey)?);
    }
    let bytes = PUSHKEY_BASE64.decode(pushkey).map_err(|_| PushkeyError::NotBase64)?;
    Ok(DeviceToken::from_bytes(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_error_before_a_syntax_error_is_not_json() {
        // Found by fuzzing: a duplicate key, then broken JSON.
        let body = br#"{"notification":{"devices":[],"room_id":"a","room_id":"b","room_name":"x"y"}}"#;
        assert_eq!(parse_notify(body).unwrap_err().errcode(), "M_NOT_JSON");
        let body = br#"{"notification":{"devices":[],"room_id":"a","room_id":"b"}}"#;
        assert_eq!(parse_notify(body).unwrap_err().errcode(), "M_BAD_JSON");
        // A missing field, then a byte that is not UTF-8 in a skipped key.
        let body = b"{\"notification\":{\"devices\":[{\"app_2d\":\"x\"}],\"ro\xf0m\":1}}";
        assert_eq!(parse_notify(body).unwrap_err().errcode(), "M_NOT_JSON");
    }

    #[test]
    fn pushkeys_in_base64_with_and_without_padding_and_hex() {
        let token = DeviceToken::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(
            decode_pushkey("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=").unwrap(),
            token
        );
        assert_eq!(
            decode_pushkey("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s").unwrap(),
            token
        );
        assert_eq!(decode_pushkey(&"AB".repeat(32)).unwrap(), token);
        assert_eq!(decode_pushkey("not base64!"), Err(PushkeyError::NotBase64));
        assert_eq!(
            decode_pushkey(""),
            Err(PushkeyError::BadToken(pushbridge_api::TokenError::BadLength(0)))
        );
        // Base64 of 8 bytes: a valid encoding but no APNS token.
        assert!(matches!(decode_pushkey("AAAAAAAAAAA="), Err(PushkeyError::BadToken(_))));
        // Padding in the middle, or too much of it, is not base64.
        assert_eq!(decode_pushkey("q6ur=q6ur"), Err(PushkeyError::NotBase64));
        assert_eq!(
            decode_pushkey("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=="),
            Err(PushkeyError::NotBase64)
        );
    }

    #[test]
    fn not_json_and_bad_json_are_told_apart() {
        assert!(matches!(
            parse_notify(b"{\"notification\":"),
            Err(NotifyError::NotJson(_))
        ));
        assert!(matches!(parse_notify(b"hello"), Err(NotifyError::NotJson(_))));
        assert!(matches!(parse_notify(b"\xff\xfe"), Err(NotifyError::NotJson(_))));
        assert!(matches!(parse_notify(b"{}"), Err(NotifyError::BadJson(_))));
        assert!(matches!(parse_notify(b"[1,2]"), Err(NotifyError::BadJson(_))));
        assert!(matches!(
            parse_notify(br#"{"notification":{}}"#),
            Err(NotifyError::BadJson(_))
        ));
        let e = parse_notify(br#"{"notification":{"devices":[{"app_id":"a"}]}}"#).unwrap_err();
        assert_eq!(e.errcode(), "M_BAD_JSON");
        assert!(e.to_string().contains("pushkey"), "{e}");
        assert_eq!(parse_notify(b"nope").unwrap_err().errcode(), "M_NOT_JSON");
    }

    #[test]
    fn wrong_types_are_bad_json() {
        for body in [
            r#"{"notification":{"devices":{}}}"#,
            r#"{"notification":{"devices":[{"app_id":1,"pushkey":"x"}]}}"#,
            r#"{"notification":{"devices":[],"counts":{"unread":"3"}}}"#,
            r#"{"notification":{"devices":[],"counts":{"unread":-1}}}"#,
            r#"{"notification":{"devices":[],"content":"hello"}}"#,
            r#"{"notification":{"devices":[],"room_id":7}}"#,
            r#"{"notification":{"devices":[],"user_is_target":"yes"}}"#,
        ] {
            assert!(
                matches!(parse_notify(body.as_bytes()), Err(NotifyError::BadJson(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn unknown_fields_and_nulls_are_accepted() {
        let n =
            parse_notify(br#"{"notification":{"devices":[],"id":"","sender":"","type":null,"x-extension":{"a":1}}}"#)
                .unwrap()
                .notification;
        assert_eq!(n.kind, None);
        assert_eq!(n.sender.as_deref(), Some(""));
    }
}
