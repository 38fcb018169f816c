//! APNS vocabulary shared by the HTTP/2 sink and the simulator: hosts,
//! Apple's reason strings, and what a provider does about each answer.
//!
//! Apple's table (PROTOCOLS.md §2.4) is the reference. Reasons Apple adds
//! later arrive as [`Reason::Other`] and are handled by their status.

use pushbridge_api::Environment;

/// HTTP/2 provider API host for an environment.
pub fn http2_host(env: Environment) -> &'static str {
    match env {
        Environment::Production => "api.push.apple.com:443",
        Environment::Sandbox => "api.sandbox.push.apple.com:443",
    }
}

/// Legacy binary gateway host for an environment.
pub fn binary_host(env: Environment) -> &'static str {
    match env {
        Environment::Production => "gateway.push.apple.com:2195",
        Environment::Sandbox => "gateway.sandbox.push.apple.com:2195",
    }
}

/// Legacy feedback service host for an environment.
pub fn feedback_host(env: Environment) -> &'static str {
    match env {
        Environment::Production => "feedback.push.apple.com:2196",
        Environment::Sandbox => "feedback.sandbox.push.apple.com:2196",
    }
}

/// Apple's `reason` strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    BadCollapseId,
    BadDeviceToken,
    BadExpirationDate,
    BadMessageId,
    BadPriority,
    BadTopic,
    DeviceTokenNotForTopic,
    DuplicateHeaders,
    IdleTimeout,
    InvalidPushType,
    MissingDeviceToken,
    MissingTopic,
    PayloadEmpty,
    TopicDisallowed,
    BadCertificate,
    BadCertificateEnvironment,
    ExpiredProviderToken,
    Forbidden,
    InvalidProviderToken,
    MissingProviderToken,
    UnrelatedKeyIdInToken,
    /// Apple documents `BadEnvironmentKeyIdInToken`; the wire has been seen
    /// saying `BadEnvironmentKeyInToken`. Both parse to this.
    BadEnvironmentKeyIdInToken,
    BadPath,
    MethodNotAllowed,
    ExpiredToken,
    Unregistered,
    PayloadTooLarge,
    TooManyProviderTokenUpdates,
    TooManyRequests,
    InternalServerError,
    ServiceUnavailable,
    Shutdown,
    /// A reason this build does not know.
    Other(String),
}

impl Reason {
    pub fn parse(s: &str) -> Reason {
        use Reason::*;
        match s {
            "BadCollapseId" => BadCollapseId,
            "BadDeviceToken" => BadDeviceToken,
            "BadExpirationDate" => BadExpirationDate,
            "BadMessageId" => BadMessageId,
            "BadPriority" => BadPriority,
            "BadTopic" => BadTopic,
            "DeviceTokenNotForTopic" => DeviceTokenNotForTopic,
            "DuplicateHeaders" => DuplicateHeaders,
            "IdleTimeout" => IdleTimeout,
            "InvalidPushType" => InvalidPushType,
            "MissingDeviceToken" => MissingDeviceToken,
            "MissingTopic" => MissingTopic,
            "PayloadEmpty" => PayloadEmpty,
            "TopicDisallowed" => TopicDisallowed,
            "BadCertificate" => BadCertificate,
            "BadCertificateEnvironment" => BadCertificateEnvironment,
            "ExpiredProviderToken" => ExpiredProviderToken,
            "Forbidden" => Forbidden,
            "InvalidProviderToken" => InvalidProviderToken,
            "MissingProviderToken" => MissingProviderToken,
            "UnrelatedKeyIdInToken" => UnrelatedKeyIdInToken,
            "BadEnvironmentKeyIdInToken" | "BadEnvironmentKeyInToken" => BadEnvironmentKeyIdInToken,
            "BadPath" => BadPath,
            "MethodNotAllowed" => MethodNotAllowed,
            "ExpiredToken" => ExpiredToken,
            "Unregistered" => Unregistered,
            "PayloadTooLarge" => PayloadTooLarge,
            "TooManyProviderTokenUpdates" => TooManyProviderTokenUpdates,
            "TooManyRequests" => TooManyRequests,
            "InternalServerError" => InternalServerError,
            "ServiceUnavailable" => ServiceUnavailable,
            "Shutdown" => Shutdown,
            other => Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        use Reason::*;
        match self {
            BadCollapseId => "BadCollapseId",
            BadDeviceToken => "BadDeviceToken",
            BadExpirationDate => "BadExpirationDate",
            BadMessageId => "BadMessageId",
            BadPriority => "BadPriority",
            BadTopic => "BadTopic",
            DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
            DuplicateHeaders => "DuplicateHeaders",
            IdleTimeout => "IdleTimeout",
            InvalidPushType => "InvalidPushType",
            MissingDeviceToken => "MissingDeviceToken",
            MissingTopic => "MissingTopic",
            PayloadEmpty => "PayloadEmpty",
            TopicDisallowed => "TopicDisallowed",
            BadCertificate => "BadCertificate",
            BadCertificateEnvironment => "BadCertificateEnvironment",
            ExpiredProviderToken => "ExpiredProviderToken",
            Forbidden => "Forbidden",
            InvalidProviderToken => "InvalidProviderToken",
            MissingProviderToken => "MissingProviderToken",
            UnrelatedKeyIdInToken => "UnrelatedKeyIdInToken",
            BadEnvironmentKeyIdInToken => "BadEnvironmentKeyIdInToken",
            BadPath => "BadPath",
            MethodNotAllowed => "MethodNotAllowed",
            ExpiredToken => "ExpiredToken",
            Unregistered => "Unregistered",
            PayloadTooLarge => "PayloadTooLarge",
            TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            TooManyRequests => "TooManyRequests",
            InternalServerError => "InternalServerError",
            ServiceUnavailable => "ServiceUnavailable",
            Shutdown => "Shutdown",
            Other(s) => s,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider does with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// 200: done.
    Delivered,
    /// The token is dead for this topic: drop the notification and the device.
    RemoveDevice,
    /// The JWT is too old: mint a new one and send again.
    RefreshToken,
    /// Transient: send again after a delay (counts against `max_retries`).
    Retry,
    /// Permanent for this notification: log the reason and drop it.
    Drop,
}

/// Apple's handling table (PROTOCOLS.md §2.4) as code.
pub fn classify(status: u16, reason: &Reason) -> Action {
    match (status, reason) {
        (200, _) => Action::Delivered,
        (410, _) => Action::RemoveDevice,
        (400, Reason::BadDeviceToken | Reason::DeviceTokenNotForTopic) => Action::RemoveDevice,
        (403, Reason::ExpiredProviderToken) => Action::RefreshToken,
        // The server closed an idle stream/connection: nothing wrong with
        // the notification.
        (400, Reason::IdleTimeout) => Action::Retry,
        (429, _) | (500, _) | (503, _) => Action::Retry,
        _ => Action::Drop,
    }
}

/// The JSON body of an error answer: `{"reason": …, "timestamp": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub reason: Reason,
    /// With 410: milliseconds since the epoch when the token became invalid.
    pub timestamp_ms: Option<i64>,
}

impl ErrorBody {
    /// Parse an error body; anything unreadable becomes a reason naming the
    /// status so it still shows up in logs.
    pub fn parse(status: u16, body: &[u8]) -> ErrorBody {
        #[derive(serde::Deserialize)]
        struct Raw {
            reason: Option<String>,
            timestamp: Option<serde_json::Number>,
        }
        match serde_json::from_slice::<Raw>(body) {
            Ok(raw) => ErrorBody {
                reason: Reason::parse(raw.reason.as_deref().unwrap_or("")),
                // Apple documents milliseconds; some gateways send seconds.
                timestamp_ms: raw
                    .timestamp
                    .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
                    .map(|t| if t < 100_000_000_000 { t * 1000 } else { t }),
            },
            Err(_) => ErrorBody {
                reason: Reason::Other(format!("HTTP {status} without a JSON reason")),
                timestamp_ms: None,
            },
        }
    }

    pub fn to_json(&self) -> String {
        match self.timestamp_ms {
            Some(ts) => serde_json::json!({"reason": self.reason.as_str(), "timestamp": ts}).to_string(),
            None => serde_json::json!({"reason": self.reason.as_str()}).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_of_bad_environment_key() {
        assert_eq!(
            Reason::parse("BadEnvironmentKeyInToken"),
            Reason::BadEnvironmentKeyIdInToken
        );
        assert_eq!(
            Reason::parse("BadEnvironmentKeyIdInToken"),
            Reason::BadEnvironmentKeyIdInToken
        );
        assert_eq!(Reason::parse("SomethingNew"), Reason::Other("SomethingNew".into()));
    }

    #[test]
    fn every_known_reason_round_trips() {
        for s in [
            "BadCollapseId",
            "BadDeviceToken",
            "BadExpirationDate",
            "BadMessageId",
            "BadPriority",
            "BadTopic",
            "DeviceTokenNotForTopic",
            "DuplicateHeaders",
            "IdleTimeout",
            "InvalidPushType",
            "MissingDeviceToken",
            "MissingTopic",
            "PayloadEmpty",
            "TopicDisallowed",
            "BadCertificate",
            "BadCertificateEnvironment",
            "ExpiredProviderToken",
            "Forbidden",
            "InvalidProviderToken",
            "MissingProviderToken",
            "UnrelatedKeyIdInToken",
            "BadEnvironmentKeyIdInToken",
            "BadPath",
            "MethodNotAllowed",
            "ExpiredToken",
            "Unregistered",
            "PayloadTooLarge",
            "TooManyProviderTokenUpdates",
            "TooManyRequests",
            "InternalServerError",
            "ServiceUnavailable",
            "Shutdown",
        ] {
            let r = Reason::parse(s);
            assert!(!matches!(r, Reason::Other(_)), "{s} unknown");
            assert_eq!(r.as_str(), s);
        }
    }

    #[test]
    fn handling_follows_apples_table() {
        use Action::*;
        let c = |status, reason: &str| classify(status, &Reason::parse(reason));
        assert_eq!(c(200, ""), Delivered);
        assert_eq!(c(410, "Unregistered"), RemoveDevice);
        assert_eq!(c(410, "ExpiredToken"), RemoveDevice);
        assert_eq!(c(400, "BadDeviceToken"), RemoveDevice);
        assert_eq!(c(400, "DeviceTokenNotForTopic"), RemoveDevice);
        assert_eq!(c(403, "ExpiredProviderToken"), RefreshToken);
        assert_eq!(c(429, "TooManyRequests"), Retry);
        assert_eq!(c(429, "TooManyProviderTokenUpdates"), Retry);
        assert_eq!(c(500, "InternalServerError"), Retry);
        assert_eq!(c(503, "ServiceUnavailable"), Retry);
        assert_eq!(c(503, "Shutdown"), Retry);
        assert_eq!(c(400, "IdleTimeout"), Retry);
        assert_eq!(c(400, "BadTopic"), Drop);
        assert_eq!(c(403, "InvalidProviderToken"), Drop);
        assert_eq!(c(413, "PayloadTooLarge"), Drop);
        assert_eq!(c(403, "Forbidden"), Drop);
    }

    #[test]
    fn error_bodies() {
        let b = ErrorBody::parse(410, br#"{"reason":"Unregistered","timestamp":1700000000123}"#);
        assert_eq!(b.reason, Reason::Unregistered);
        assert_eq!(b.timestamp_ms, Some(1_700_000_000_123));
        let secs = ErrorBody::parse(410, br#"{"reason":"Unregistered","timestamp":1700000000}"#);
        assert_eq!(
            secs.timestamp_ms,
            Some(1_700_000_000_000),
            "seconds are taken as seconds"
        );
        assert_eq!(ErrorBody::parse(410, &b.to_json().into_bytes()), b);
        let junk = ErrorBody::parse(500, b"<html>");
        assert!(matches!(junk.reason, Reason::Other(ref s) if s.contains("500")));
        let none = ErrorBody::parse(400, b"{}");
        assert_eq!(none.reason, Reason::Other(String::new()));
    }
}
