//! Credential refusals at run time, in plain words: a TLS alert about the
//! client certificate, or an APNS answer about the provider token or the
//! certificate. These are not a notification's fault: the sinks hold the
//! notifications (they stay in the outbox) and report the refusal through
//! [`crate::outcome::Outcomes::credential_refused`], once per change.

use rustls::AlertDescription;

use super::credentials::CredentialReport;
use crate::apns::Reason;

/// Why APNS refused the client certificate, from its TLS alert. With
/// `certificate_expired` the certificate's own date is given when it has
/// passed (`APNS refused the client certificate: certificate expired on
/// 2024-02-01`); otherwise the alert is named.
pub fn alert_reason(alert: AlertDescription, report: &CredentialReport, now: u64) -> String {
    use AlertDescription::*;
    let what = match alert {
        CertificateExpired => match (&report.certificate_expiry, &report.certificate_expiry_date) {
            (Some(at), Some(date)) if *at < now => {
                return format!("APNS refused the client certificate: certificate expired on {date}")
            }
            (Some(_), Some(date)) => {
                format!("certificate expired, says APNS, though it is valid until {date}: check this host's clock")
            }
            _ => "certificate expired".to_owned(),
        },
        CertificateRevoked => "certificate revoked".to_owned(),
        UnknownCA => "issued by a CA APNS does not trust".to_owned(),
        BadCertificate => "bad certificate".to_owned(),
        UnsupportedCertificate => "unsupported certificate".to_owned(),
        CertificateUnknown => "certificate unknown".to_owned(),
        AccessDenied => "access denied".to_owned(),
        DecryptError => "its signature does not verify (issued by another CA than the one APNS trusts?)".to_owned(),
        CertificateRequired => return format!("APNS wants a client certificate (TLS alert {alert:?})"),
        other => format!("{other:?}"),
    };
    format!("APNS refused the client certificate: {what} (TLS alert {alert:?})")
}

/// The plain reason when an APNS answer refuses the credential rather than
/// the notification; `None` for every other answer. `reminted`: the
/// request carried a token minted because APNS called the one before it
/// expired (an `ExpiredProviderToken` then does not clear by minting).
///
/// `400 TopicDisallowed` stays the notification's (Apple sends it for
/// single notifications too); `403 TopicDisallowed` is the credential's.
/// A lasting `ExpiredProviderToken` (even a re-minted token) is a
/// refusal like the others: its notification is held.
pub fn answer_reason(status: u16, reason: &Reason, reminted: bool) -> Option<String> {
    let plain = match (status, reason) {
        (403, Reason::InvalidProviderToken) => "check key_id, team_id and the .p8",
        (403, Reason::ExpiredProviderToken) if reminted => {
            "even a freshly minted token is called expired: check this host's clock"
        }
        (403, Reason::UnrelatedKeyIdInToken) => "key_id does not belong to team_id",
        (403, Reason::BadEnvironmentKeyIdInToken) => "the key is not for this environment",
        (403, Reason::BadCertificate) => {
            return Some("APNS refuses the client certificate (BadCertificate)".to_owned());
        }
        (403, Reason::BadCertificateEnvironment) => {
            return Some(
                "APNS refuses the client certificate for this environment (BadCertificateEnvironment): \
                 a sandbox certificate against production or the reverse; check environment"
                    .to_owned(),
            );
        }
        (403, Reason::TopicDisallowed) => {
            return Some(
                "APNS does not let this credential push to the topic (TopicDisallowed): \
                 check the topic and which app the key or certificate belongs to"
                    .to_owned(),
            );
        }
        _ => return None,
    };
    Some(format!("APNS refuses the provider token ({reason}): {plain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_answers_are_told_apart_from_notification_answers() {
        let r = |status, reason: &str, reminted| answer_reason(status, &Reason::parse(reason), reminted);
        assert_eq!(
            r(403, "InvalidProviderToken", false).as_deref(),
            Some("APNS refuses the provider token (InvalidProviderToken): check key_id, team_id and the .p8")
        );
        assert!(r(403, "BadCertificate", false).unwrap().contains("(BadCertificate)"));
        assert!(r(403, "BadCertificateEnvironment", false)
            .unwrap()
            .contains("environment"));
        assert!(r(403, "TopicDisallowed", false).unwrap().contains("TopicDisallowed"));
        assert!(r(403, "UnrelatedKeyIdInToken", false).unwrap().contains("team_id"));
        // ExpiredProviderToken is refused only when minting did not help.
        assert_eq!(r(403, "ExpiredProviderToken", false), None);
        assert!(r(403, "ExpiredProviderToken", true).unwrap().contains("clock"));
        // The notification's own faults are not the credential's.
        for (s, reason) in [
            (400, "TopicDisallowed"),
            (400, "BadDeviceToken"),
            (410, "Unregistered"),
            (403, "MissingProviderToken"),
            (429, "TooManyRequests"),
            (200, ""),
        ] {
            assert_eq!(r(s, reason, false), None, "{s} {reason}");
        }
    }

    #[test]
    fn alerts_are_named_and_expiry_dated() {
        let report = CredentialReport {
            certificate_expiry: Some(1_706_745_600), // 2024-02-01
            certificate_expiry_date: Some("2024-02-01".into()),
            warnings: vec![],
        };
        assert_eq!(
            alert_reason(AlertDescription::CertificateExpired, &report, 1_800_000_000),
            "APNS refused the client certificate: certificate expired on 2024-02-01"
        );
        let early = alert_reason(AlertDescription::CertificateExpired, &report, 1_700_000_000);
        assert!(
            early.contains("valid until 2024-02-01") && early.contains("clock"),
            "{early}"
        );
        let unknown = alert_reason(AlertDescription::UnknownCA, &CredentialReport::default(), 0);
        assert_eq!(
            unknown,
            "APNS refused the client certificate: issued by a CA APNS does not trust (TLS alert UnknownCA)"
        );
        assert!(alert_reason(AlertDescription::CertificateRevoked, &report, 0).contains("revoked"));
    }
}
