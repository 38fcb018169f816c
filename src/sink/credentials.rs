//! Client certificates for the APNS sinks: a PEM certificate with its key
//! (one combined file, or two), or a PKCS#12 file as Keychain Access
//! exports it. Shared by the HTTP/2 sink (certificate auth) and the binary
//! sink (its only auth).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SinkError;
use crate::tls::Identity;

/// The certificate keys of an app's config.
#[derive(Debug, Clone, Copy)]
pub struct CertificateKeys<'a> {
    pub cert_file: Option<&'a PathBuf>,
    pub private_key_file: Option<&'a PathBuf>,
    pub pkcs12_file: Option<&'a PathBuf>,
    pub pkcs12_password: Option<&'a str>,
}

impl CertificateKeys<'_> {
    /// Whether any certificate key is set.
    pub fn any(&self) -> bool {
        self.cert_file.is_some()
            || self.private_key_file.is_some()
            || self.pkcs12_file.is_some()
            || self.pkcs12_password.is_some()
    }

    /// Load the identity they name and inspect it ([`inspect_identity`], as
    /// of now); `Ok(None)` when none is set. Errors name the key or the file.
    pub fn load(&self) -> Result<Option<(Identity, CredentialReport)>, SinkError> {
        let Some(identity) = self.load_unchecked()? else {
            return Ok(None);
        };
        let (key, path) = match (self.cert_file, self.pkcs12_file) {
            (Some(p), _) => ("cert_file", p),
            (None, Some(p)) => ("pkcs12_file", p),
            (None, None) => return Ok(None), // load_unchecked found none
        };
        let report = inspect_identity(&identity, key, path, super::pool::unix_now())?;
        Ok(Some((identity, report)))
    }

    fn load_unchecked(&self) -> Result<Option<Identity>, SinkError> {
        let tls = |source| SinkError::Tls {
            what: "client certificate",
            source,
        };
        match (self.cert_file, self.pkcs12_file) {
            (Some(_), Some(_)) => Err(SinkError::config(
                "cert_file and pkcs12_file",
                "choose one way to give the client certificate, not both",
            )),
            (Some(cert), None) => {
                if self.pkcs12_password.is_some() {
                    return Err(SinkError::config(
                        "pkcs12_password",
                        "goes with pkcs12_file, not cert_file",
                    ));
                }
                crate::tls::load_identity(cert, self.private_key_file.map(|p| p.as_path()))
                    .map(Some)
                    .map_err(|e| tls(e.into()))
            }
            (None, Some(p12)) => {
                if self.private_key_file.is_some() {
                    return Err(SinkError::config(
                        "private_key_file",
                        "goes with cert_file; a PKCS#12 file holds its key",
                    ));
                }
                crate::tls::load_pkcs12(p12, self.pkcs12_password.unwrap_or(""))
                    .map(Some)
                    .map_err(tls)
            }
            (None, None) if self.private_key_file.is_some() => Err(SinkError::config(
                "private_key_file",
                "needs cert_file (the certificate it belongs to)",
            )),
            (None, None) if self.pkcs12_password.is_some() => {
                Err(SinkError::config("pkcs12_password", "needs pkcs12_file"))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Checks `connections` (1 to 64) and that each `(key, endpoint)` given is
/// a usable `host:port`.
pub fn check_common(connections: usize, endpoints: &[(&'static str, Option<&String>)]) -> Result<(), SinkError> {
    if connections == 0 || connections > 64 {
        return Err(SinkError::config("connections", "must be 1 to 64"));
    }
    for (key, ep) in endpoints {
        if let Some(ep) = ep {
            pushbridge_kit::check_host_port(ep).map_err(|e| SinkError::config(key, e.to_string()))?;
            super::net::Target::parse(ep).map_err(|e| SinkError::config(key, e.to_string()))?;
        }
    }
    Ok(())
}

/// A client certificate expiring sooner than this is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// OIDs of the curves APNS certificates may use.
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";

/// What loading an app's credentials found: facts for metrics and
/// warnings for the operator (the errors refuse the config instead).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialReport {
    /// Unix seconds of the client certificate's `notAfter`; `None` when the
    /// app uses no certificate.
    pub certificate_expiry: Option<u64>,
    /// The same as `YYYY-MM-DD` (UTC), for messages.
    pub certificate_expiry_date: Option<String>,
    /// Plain sentences, e.g. `client certificate expires on 2024-02-01 (in
    /// 12 days)`: logged at WARN at start, printed by `check`.
    pub warnings: Vec<String>,
}

/// `YYYY-MM-DD` (UTC) of Unix seconds `secs`.
pub fn date_of_unix(secs: u64) -> String {
    match x509_parser::time::ASN1Time::from_timestamp(secs.min(i64::MAX as u64) as i64) {
        Ok(t) => date(&t),
        Err(_) => format!("@{secs}"),
    }
}

/// `YYYY-MM-DD` (UTC) of an X.509 time.
fn date(t: &x509_parser::time::ASN1Time) -> String {
    let d = t.to_datetime();
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

/// A credential problem of `key`'s file.
fn refused(key: &'static str, path: &Path, reason: impl Into<String>) -> SinkError {
    SinkError::Credential {
        key,
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// What kind of key a certificate holds, when APNS cannot use it; `None`
/// for RSA of 2048 bits or more and ECDSA on P-256 or P-384.
pub fn unusable_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<String> {
    use x509_parser::public_key::PublicKey;
    let curve = || {
        spki.algorithm
            .parameters()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
    };
    match spki.parsed() {
        Ok(PublicKey::RSA(k)) if k.key_size() >= 2048 => None,
        Ok(PublicKey::RSA(k)) => Some(format!(
            "an RSA key of {} bits (APNS wants at least 2048)",
            k.key_size()
        )),
        Ok(PublicKey::EC(_)) => match curve().as_deref() {
            Some(P256 | P384) => None,
            Some(other) => Some(format!("an EC key on curve {other} (APNS takes P-256 or P-384)")),
            None => Some("an EC key without a named curve".to_owned()),
        },
        Ok(PublicKey::DSA(_)) => Some("a DSA key".to_owned()),
        _ => Some(match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.3.101.112" => "an Ed25519 key".to_owned(),
            "1.3.101.113" => "an Ed448 key".to_owned(),
            other => format!("a key of algorithm {other}"),
        }),
    }
}

/// Inspect a loaded client identity (`key` names the config key of its
/// file, `path` the file) as of `now` (Unix seconds): the leaf certificate
/// parses, holds a key type APNS accepts, matches the private key, and is
/// valid now. Expiring within [`EXPIRY_WARNING`] is a warning.
pub fn inspect_identity(
    identity: &Identity,
    key: &'static str,
    path: &Path,
    now: u64,
) -> Result<CredentialReport, SinkError> {
    let leaf = identity
        .chain
        .first()
        .ok_or_else(|| refused(key, path, "holds no certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| refused(key, path, format!("the client certificate does not parse: {e}")))?;
    if let Some(what) = unusable_key_type(cert.public_key()) {
        return Err(refused(
            key,
            path,
            format!("the client certificate holds {what}; APNS takes RSA (2048 bits or more) or ECDSA P-256/P-384"),
        ));
    }
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(identity.key.clone_key())
        .map_err(|e| refused(key, path, format!("the private key cannot be used: {e}")))?;
    rustls::sign::CertifiedKey::new(identity.chain.clone(), signing)
        .keys_match()
        .map_err(|_| refused(key, path, "the private key does not belong to the client certificate"))?;
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    if now_i < not_before {
        return Err(refused(
            key,
            path,
            format!("client certificate is not valid before {}", date(&validity.not_before)),
        ));
    }
    if now_i > not_after {
        return Err(refused(
            key,
            path,
            format!("client certificate expired on {}", date(&validity.not_after)),
        ));
    }
    let left = u64::try_from(not_after - now_i).unwrap_or(0);
    let mut warnings = Vec::new();
    if left < EXPIRY_WARNING.as_secs() {
        warnings.push(format!(
            "{key} {}: client certificate expires on {} (in {} days)",
            path.display(),
            date(&validity.not_after),
            left / 86_400
        ));
    }
    Ok(CredentialReport {
        certificate_expiry: u64::try_from(not_after).ok(),
        certificate_expiry_date: Some(date(&validity.not_after)),
        warnings,
    })
}

/// Check that every certificate of a CA file (`ca_file`) parses as X.509;
/// the file must hold at least one.
pub fn inspect_ca_file(path: &Path) -> Result<(), SinkError> {
    let certs = crate::tls::load_certs(path).map_err(|e| SinkError::Tls {
        what: "ca_file",
        source: e.into(),
    })?;
    for (i, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| refused("ca_file", path, format!("certificate {} does not parse: {e}", i + 1)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use x509_parser::time::ASN1Time;

    const DAY: u64 = 86_400;
    const P256: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

    /// A self-signed client certificate (its params changed by `edit`)
    /// with a fresh key of `alg`.
    fn identity(edit: impl FnOnce(&mut rcgen::CertificateParams), alg: &'static rcgen::SignatureAlgorithm) -> Identity {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        edit(&mut params);
        let cert = params.self_signed(&key).unwrap();
        Identity {
            chain: vec![CertificateDer::from(cert.der().to_vec())],
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }

    fn inspect(id: &Identity) -> Result<CredentialReport, String> {
        inspect_identity(
            id,
            "cert_file",
            Path::new("/etc/apns/client.pem"),
            crate::sink::pool::unix_now(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_valid_certificate_reports_its_expiry() {
        let id = identity(|p| p.not_after = rcgen::date_time_ymd(2090, 3, 4), P256);
        let r = inspect(&id).unwrap();
        assert_eq!(r.certificate_expiry_date.as_deref(), Some("2090-03-04"));
        assert_eq!(r.certificate_expiry, Some(3_792_268_800));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_are_refused_with_the_date() {
        let expired = identity(|p| p.not_after = rcgen::date_time_ymd(2024, 2, 1), P256);
        assert_eq!(
            inspect(&expired).unwrap_err(),
            "cert_file /etc/apns/client.pem: client certificate expired on 2024-02-01"
        );
        let early = identity(|p| p.not_before = rcgen::date_time_ymd(2099, 1, 2), P256);
        assert_eq!(
            inspect(&early).unwrap_err(),
            "cert_file /etc/apns/client.pem: client certificate is not valid before 2099-01-02"
        );
    }

    #[test]
    fn a_certificate_expiring_within_30_days_is_a_warning() {
        let soon = ASN1Time::now().to_datetime() + Duration::from_secs(10 * DAY + 3600);
        let id = identity(|p| p.not_after = soon, P256);
        let r = inspect(&id).unwrap();
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        let w = &r.warnings[0];
        assert!(
            w.contains("client certificate expires on") && w.contains("(in 10 days)"),
            "{w}"
        );
        assert!(w.starts_with("cert_file /etc/apns/client.pem"), "{w}");
        let later = ASN1Time::now().to_datetime() + Duration::from_secs(31 * DAY);
        assert!(inspect(&identity(|p| p.not_after = later, P256))
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch() {
        let mut id = identity(|_| {}, P256);
        id.key = identity(|_| {}, P256).key;
        let e = inspect(&id).unwrap_err();
        assert!(e.contains("does not belong to the client certificate"), "{e}");
        // Another key type altogether.
        id.key = identity(|_| {}, &rcgen::PKCS_ECDSA_P384_SHA384).key;
        assert!(inspect(&id).unwrap_err().contains("does not belong"));
    }

    #[test]
    fn key_types_apns_cannot_use_are_named() {
        let e = inspect(&identity(|_| {}, &rcgen::PKCS_ED25519)).unwrap_err();
        assert!(e.contains("an Ed25519 key") && e.contains("APNS takes RSA"), "{e}");
        // P-384 is fine.
        inspect(&identity(|_| {}, &rcgen::PKCS_ECDSA_P384_SHA384)).unwrap();
    }

    #[test]
    fn ca_files_must_hold_parsable_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = inspect_ca_file(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no CERTIFICATE"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = inspect_ca_file(&junk).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("certificate 1 does not parse"),
            "{e}"
        );
        let pki = crate::tls::TestPki::generate().unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, &pki.ca_pem).unwrap();
        inspect_ca_file(&good).unwrap();
    }
}
