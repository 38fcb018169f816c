//! Validated value types shared by adapters and the core.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Shortest device token accepted, in bytes (Apple's tokens were 32 bytes for
/// years; Apple now says to make no assumption about their size).
pub const TOKEN_MIN_BYTES: usize = 32;
/// Longest device token accepted, in bytes (the binary API's item limit).
pub const TOKEN_MAX_BYTES: usize = 100;
/// Longest user id accepted, in bytes.
pub const USER_ID_MAX_BYTES: usize = 256;

/// Why a device token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("device token must be hexadecimal")]
    NotHex,
    #[error("device token must have an even number of hex digits")]
    OddLength,
    #[error("device token must be 32 to 100 bytes (64 to 200 hex digits), got {0} bytes")]
    BadLength(usize),
}

/// An APNS device token: 32 to 100 bytes, kept as lower-case hex.
///
/// `Display` prints the full token (it is needed on the wire and in the
/// store); use [`DeviceToken::short`] in logs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceToken(String);

impl DeviceToken {
    /// Parse a hex token (either case), validating its length.
    pub fn parse(hex: &str) -> Result<Self, TokenError> {
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::NotHex);
        }
        if !hex.len().is_multiple_of(2) {
            return Err(TokenError::OddLength);
        }
        let bytes = hex.len() / 2;
        if !(TOKEN_MIN_BYTES..=TOKEN_MAX_BYTES).contains(&bytes) {
            return Err(TokenError::BadLength(bytes));
        }
        Ok(Self(hex.to_ascii_lowercase()))
    }

    /// Build a token from raw bytes (the binary protocol, the feedback service).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if !(TOKEN_MIN_BYTES..=TOKEN_MAX_BYTES).contains(&bytes.len()) {
            return Err(TokenError::BadLength(bytes.len()));
        }
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        Ok(Self(s))
    }

    /// The lower-case hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The raw bytes of the token.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0
            .as_bytes()
            .chunks(2)
            .map(|pair| {
                let hi = (pair[0] as char).to_digit(16).unwrap_or(0);
                let lo = (pair[1] as char).to_digit(16).unwrap_or(0);
                (hi * 16 + lo) as u8
            })
            .collect()
    }

    /// The first 8 hex digits: what logs show instead of the token.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl fmt::Display for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Debug never prints the whole token, so a `?token` in a log is safe.
impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceToken({}…)", self.short())
    }
}

impl FromStr for DeviceToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for DeviceToken {
    type Error = TokenError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DeviceToken> for String {
    fn from(t: DeviceToken) -> String {
        t.0
    }
}

/// Why a user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("user id is empty")]
    Empty,
    #[error("user id is longer than {USER_ID_MAX_BYTES} bytes")]
    TooLong,
    #[error("user id contains a space or a control character")]
    BadCharacter,
}

/// A user, scoped by adapter instance: `line:alice`, `xmpp:alice@example.org`,
/// `irc:libera:alice`. Two protocols never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Validate a *local* name (what a peer sends, 1–256 bytes, no spaces or
    /// control characters) and scope it: `UserId::scoped("line", "alice")`
    /// is `line:alice`.
    pub fn scoped(scope: &str, local: &str) -> Result<Self, UserIdError> {
        validate_local(local)?;
        Self::parse(&format!("{scope}:{local}"))
    }

    /// Parse a full, already scoped id (the CLI, the store).
    pub fn parse(full: &str) -> Result<Self, UserIdError> {
        if full.is_empty() {
            return Err(UserIdError::Empty);
        }
        if full.len() > USER_ID_MAX_BYTES * 2 {
            return Err(UserIdError::TooLong);
        }
        if full.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UserIdError::BadCharacter);
        }
        Ok(Self(full.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Check a peer-supplied local user name: 1–256 bytes, no whitespace or
/// control characters.
pub fn validate_local(local: &str) -> Result<(), UserIdError> {
    if local.is_empty() {
        return Err(UserIdError::Empty);
    }
    if local.len() > USER_ID_MAX_BYTES {
        return Err(UserIdError::TooLong);
    }
    if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UserIdError::BadCharacter);
    }
    Ok(())
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for UserId {
    type Error = UserIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0
    }
}

/// A user's presence as the IM side sees it. A user never seen is `Offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Connected and active: gets no pushes; coming online resets the badge.
    Online,
    /// Connected but away: gets pushes.
    Away,
    /// Not connected: gets pushes.
    #[default]
    Offline,
}

impl Presence {
    /// Whether a message for a user in this state should become a push.
    pub fn wants_push(self) -> bool {
        !matches!(self, Presence::Online)
    }
}

impl FromStr for Presence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(Presence::Online),
            "away" => Ok(Presence::Away),
            "offline" => Ok(Presence::Offline),
            other => Err(format!("presence must be online, away or offline, got {other:?}")),
        }
    }
}

/// The APNS environment a device token belongs to (tokens differ between them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Sandbox,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "production" => Ok(Environment::Production),
            "sandbox" | "development" => Ok(Environment::Sandbox),
            other => Err(format!("environment must be production or sandbox, got {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_validation() {
        let ok = "a".repeat(64);
        assert_eq!(DeviceToken::parse(&ok).unwrap().as_str(), ok);
        assert_eq!(DeviceToken::parse(&"AB".repeat(32)).unwrap().as_str(), "ab".repeat(32));
        assert_eq!(DeviceToken::parse(&"a".repeat(200)).unwrap().to_bytes().len(), 100);
        assert_eq!(DeviceToken::parse(&"a".repeat(63)), Err(TokenError::OddLength));
        assert_eq!(DeviceToken::parse(&"a".repeat(62)), Err(TokenError::BadLength(31)));
        assert_eq!(DeviceToken::parse(&"a".repeat(202)), Err(TokenError::BadLength(101)));
        assert_eq!(DeviceToken::parse(&"g".repeat(64)), Err(TokenError::NotHex));
        assert_eq!(DeviceToken::parse(""), Err(TokenError::BadLength(0)));
        assert_eq!(DeviceToken::parse("+1"), Err(TokenError::NotHex));
    }

    #[test]
    fn token_bytes_round_trip() {
        let bytes: Vec<u8> = (0u8..32).collect();
        let t = DeviceToken::from_bytes(&bytes).unwrap();
        assert_eq!(t.to_bytes(), bytes);
        assert_eq!(t.short(), "00010203");
        assert!(!format!("{t:?}").contains(t.as_str()));
    }

    #[test]
    fn user_validation() {
        assert_eq!(UserId::scoped("line", "alice").unwrap().as_str(), "line:alice");
        assert_eq!(UserId::scoped("line", ""), Err(UserIdError::Empty));
        assert_eq!(UserId::scoped("line", "a b"), Err(UserIdError::BadCharacter));
        assert_eq!(UserId::scoped("line", "a\u{7}"), Err(UserIdError::BadCharacter));
        assert!(UserId::scoped("line", &"x".repeat(256)).is_ok());
        assert_eq!(UserId::scoped("line", &"x".repeat(257)), Err(UserIdError::TooLong));
        assert!(UserId::scoped("line", "ålice😀").is_ok());
    }

    #[test]
    fn presence_and_environment_parse() {
        assert_eq!("away".parse::<Presence>(), Ok(Presence::Away));
        assert!("busy".parse::<Presence>().is_err());
        assert!(Presence::Offline.wants_push() && !Presence::Online.wants_push());
        assert_eq!("sandbox".parse::<Environment>(), Ok(Environment::Sandbox));
        assert!("prod".parse::<Environment>().is_err());
    }
}
