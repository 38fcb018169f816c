//! Provider authentication tokens (ES256 JWTs) for token-based APNS auth.
//!
//! Apple wants one token reused: refreshed before it is an hour old
//! (`ExpiredProviderToken` otherwise) and not more than once per 20 minutes
//! (`TooManyProviderTokenUpdates` otherwise). We mint on first use, reuse
//! for 50 minutes, and mint early only when Apple says the token we sent
//! has expired (clock skew, a suspended host).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A token is replaced when it is this old.
pub const REFRESH_AFTER: Duration = Duration::from_secs(50 * 60);
/// Least time between two tokens minted because APNS called the current
/// one expired: with a wrong clock every token is "expired", and minting
/// one per retry would earn `429 TooManyProviderTokenUpdates`.
pub const FORCED_MINT_EVERY: Duration = Duration::from_secs(60);

/// Why a signing key cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("key_file {path}: {message}")]
    Key { path: String, message: String },
    #[error("{0}")]
    Config(String),
}

/// Mints and caches the provider token.
pub struct JwtSigner {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    current: Mutex<Option<Current>>,
    minted: std::sync::atomic::AtomicU64,
    last_forced: Mutex<Option<Instant>>,
    /// Where mints are recorded (the sink attaches its app's outcomes).
    outcomes: std::sync::OnceLock<crate::outcome::Outcomes>,
}

struct Current {
    token: Arc<str>,
    at: Instant,
    /// Minted because APNS called the previous token expired.
    forced: bool,
}

/// Apple's key ids and team ids: 10 ASCII letters and digits.
fn check_id(name: &str, value: &str) -> Result<(), JwtError> {
    if value.len() != 10 || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(JwtError::Config(format!(
            "{name} {value:?} must be the 10-character identifier from Apple's developer account \
             (letters and digits; this has {} characters)",
            value.chars().count()
        )));
    }
    Ok(())
}

/// Why `pem` is not the P-256 PKCS#8 key a `.p8` from Apple is, saying
/// what it is instead when it can tell; `None` when it is one.
pub fn describe_p8(pem: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    const WANT: &str = "a .p8 from Apple is a PKCS#8 P-256 key (\"BEGIN PRIVATE KEY\")";
    let key = match PrivateKeyDer::from_pem_slice(pem) {
        Ok(k) => k,
        Err(e) => return Some(format!("not a PEM private key ({e}); {WANT}")),
    };
    let what = match &key {
        PrivateKeyDer::Pkcs1(_) => return Some(format!("an RSA key (PKCS#1, \"BEGIN RSA PRIVATE KEY\"); {WANT}")),
        PrivateKeyDer::Sec1(_) => {
            return Some(format!(
                "an EC key in SEC1 form (\"BEGIN EC PRIVATE KEY\"); {WANT}: convert it with `openssl pkcs8 -topk8 -nocrypt`"
            ))
        }
        _ => key.clone_key(),
    };
    let signing = match crate::tls::provider().key_provider.load_private_key(what) {
        Ok(k) => k,
        Err(e) => return Some(format!("a PKCS#8 key this build cannot use ({e}); {WANT}")),
    };
    match signing.algorithm() {
        rustls::SignatureAlgorithm::ECDSA => {}
        rustls::SignatureAlgorithm::RSA => return Some(format!("an RSA key; {WANT}")),
        rustls::SignatureAlgorithm::ED25519 => return Some(format!("an Ed25519 key; {WANT}")),
        other => return Some(format!("a {other:?} key; {WANT}")),
    }
    let spki = signing.public_key()?;
    use x509_parser::prelude::FromDer;
    let curve = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki.as_ref())
        .ok()
        .and_then(|(_, s)| {
            s.algorithm
                .parameters()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
        });
    match curve.as_deref() {
        Some("1.2.840.10045.3.1.7") => None,
        Some("1.3.132.0.34") => Some(format!("a P-384 key; {WANT}")),
        Some(other) => Some(format!("an EC key on curve {other}; {WANT}")),
        None => Some(format!("an EC key without a named curve; {WANT}")),
    }
}

impl JwtSigner {
    /// Load a `.p8` key (PEM, unencrypted PKCS#8, P-256) and check that it
    /// signs.
    pub fn from_p8_file(path: &Path, key_id: &str, team_id: &str) -> Result<Self, JwtError> {
        let pem = std::fs::read(path).map_err(|e| JwtError::Key {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_p8_pem(&pem, key_id, team_id).map_err(|e| match e {
            JwtError::Key { message, .. } => JwtError::Key {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn from_p8_pem(pem: &[u8], key_id: &str, team_id: &str) -> Result<Self, JwtError> {
        check_id("key_id", key_id)?;
        check_id("team_id", team_id)?;
        let bad = |message: String| JwtError::Key {
            path: String::new(),
            message,
        };
        if let Some(what) = describe_p8(pem) {
            return Err(bad(what));
        }
        let key = EncodingKey::from_ec_pem(pem).map_err(|e| {
            bad(format!(
                "not a PEM \"PRIVATE KEY\" (.p8 from Apple: PKCS#8, P-256): {e}"
            ))
        })?;
        let signer = Self {
            key,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            current: Mutex::new(None),
            minted: std::sync::atomic::AtomicU64::new(0),
            last_forced: Mutex::new(None),
            outcomes: std::sync::OnceLock::new(),
        };
        // The PEM parser does not look inside the key; signing does.
        signer
            .sign(unix_now())
            .map_err(|e| bad(format!("cannot sign ES256 with it (a .p8 holds a P-256 key): {e}")))?;
        Ok(signer)
    }

    fn sign(&self, iat: u64) -> Result<String, jsonwebtoken::errors::Error> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            iat: u64,
        }
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(
            &header,
            &Claims {
                iss: &self.team_id,
                iat,
            },
            &self.key,
        )
    }

    /// The token to send now.
    pub fn token(&self) -> Arc<str> {
        self.token_at(Instant::now())
    }

    pub fn token_at(&self, now: Instant) -> Arc<str> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cur.as_ref() {
            if now.saturating_duration_since(c.at) < REFRESH_AFTER {
                return c.token.clone();
            }
        }
        self.mint(&mut cur, now, false)
    }

    /// Record every mint from now on in `outcomes` (count and `iat`); the
    /// first call wins.
    pub fn attach(&self, outcomes: crate::outcome::Outcomes) {
        let _ = self.outcomes.set(outcomes);
    }

    /// Whether `used` is a token minted because APNS called the one before
    /// it expired: if APNS calls that one expired too, minting again does
    /// not help (the host's clock is wrong, or the key was revoked).
    pub fn is_reminted(&self, used: &str) -> bool {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().is_some_and(|c| c.forced && &*c.token == used)
    }

    /// Apple answered `ExpiredProviderToken` to a request that carried
    /// `used`. Mint a new token unless another request already did.
    pub fn expired(&self, used: &str) -> Arc<str> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cur.as_ref() {
            if &*c.token != used {
                return c.token.clone();
            }
        }
        let now = Instant::now();
        let mut last = self.last_forced.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(at), Some(c)) = (*last, cur.as_ref()) {
            if now.saturating_duration_since(at) < FORCED_MINT_EVERY {
                tracing::error!(
                    "APNS calls a provider token minted {} s ago expired; is this host's clock right? Not minting another within {} s",
                    now.saturating_duration_since(c.at).as_secs(),
                    FORCED_MINT_EVERY.as_secs()
                );
                return c.token.clone();
            }
        }
        *last = Some(now);
        tracing::warn!("APNS says the provider token expired; minting a new one");
        self.mint(&mut cur, now, true)
    }

    fn mint(&self, cur: &mut Option<Current>, now: Instant, forced: bool) -> Arc<str> {
        // Signing cannot fail for a key that signed at load time; keep the
        // old token if it somehow does (Apple's answer will say why).
        let iat = unix_now();
        match self.sign(iat) {
            Ok(t) => {
                self.minted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match self.outcomes.get() {
                    Some(o) => o.provider_token_minted(iat),
                    None => tracing::debug!(key_id = %self.key_id, "minted provider token"),
                }
                let token: Arc<str> = t.into();
                *cur = Some(Current {
                    token: token.clone(),
                    at: now,
                    forced,
                });
                token
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign provider token");
                cur.as_ref().map(|c| c.token.clone()).unwrap_or_else(|| Arc::from(""))
            }
        }
    }

    /// How many tokens were minted (after the load-time check).
    pub fn minted(&self) -> u64 {
        self.minted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn keypair() -> (String, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (kp.serialize_pem(), kp.public_key_pem())
    }

    #[test]
    fn token_is_es256_with_kid_iss_iat_and_verifies() {
        let (private, public) = keypair();
        let s = JwtSigner::from_p8_pem(private.as_bytes(), "ABC123DEFG", "TEAM123456").unwrap();
        let t = s.token();
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("ABC123DEFG"));
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&t, &DecodingKey::from_ec_pem(public.as_bytes()).unwrap(), &v)
                .unwrap();
        assert_eq!(data.claims["iss"], "TEAM123456");
        let iat = data.claims["iat"].as_u64().unwrap();
        assert!(iat.abs_diff(unix_now()) < 5);
        // Signature is the 64-byte R||S form (86 base64url characters).
        assert_eq!(t.rsplit('.').next().unwrap().len(), 86);
    }

    #[test]
    fn reused_for_fifty_minutes_then_refreshed() {
        let (private, _) = keypair();
        let s = JwtSigner::from_p8_pem(private.as_bytes(), "ABC123DEFG", "TEAM123456").unwrap();
        let t0 = Instant::now();
        let a = s.token_at(t0);
        assert!(Arc::ptr_eq(&a, &s.token_at(t0 + Duration::from_secs(20 * 60))));
        assert!(Arc::ptr_eq(
            &a,
            &s.token_at(t0 + REFRESH_AFTER - Duration::from_secs(1))
        ));
        assert_eq!(s.minted(), 1);
        let _b = s.token_at(t0 + REFRESH_AFTER);
        assert_eq!(s.minted(), 2);
    }

    #[test]
    fn expired_mints_once_for_many_failed_requests() {
        let (private, _) = keypair();
        let s = JwtSigner::from_p8_pem(private.as_bytes(), "ABC123DEFG", "TEAM123456").unwrap();
        let a = s.token();
        let b = s.expired(&a);
        let c = s.expired(&a);
        assert!(Arc::ptr_eq(&b, &c));
        assert_eq!(s.minted(), 2);
    }

    #[test]
    fn bad_keys_and_ids_are_explained() {
        let e = JwtSigner::from_p8_pem(b"not a key", "ABC123DEFG", "TEAM123456")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("PKCS#8"), "{e}");
        // An RSA key is PEM PKCS#8 but not P-256.
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let e = JwtSigner::from_p8_pem(rsa.serialize_pem().as_bytes(), "ABC123DEFG", "TEAM123456")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("P-256"), "{e}");
        let (private, _) = keypair();
        let e = JwtSigner::from_p8_pem(private.as_bytes(), "", "TEAM123456")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("key_id"), "{e}");
        let e = JwtSigner::from_p8_file(Path::new("/nonexistent/AuthKey.p8"), "ABC123DEFG", "TEAM123456")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/AuthKey.p8"), "{e}");
    }

    #[test]
    fn a_p8_that_is_not_p256_pkcs8_says_what_it_is() {
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let e = JwtSigner::from_p8_pem(p384.serialize_pem().as_bytes(), "ABC123DEFG", "TEAM123456")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("a P-384 key") && e.contains("PKCS#8 P-256"), "{e}");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(describe_p8(ed.serialize_pem().as_bytes())
            .unwrap()
            .starts_with("an Ed25519 key"));
        // A certificate is not a key.
        let pki = crate::tls::TestPki::generate().unwrap();
        assert!(describe_p8(pki.ca_pem.as_bytes())
            .unwrap()
            .starts_with("not a PEM private key"));
        let (private, _) = keypair();
        assert_eq!(describe_p8(private.as_bytes()), None);
    }

    #[test]
    fn key_and_team_ids_are_ten_letters_or_digits() {
        let (private, _) = keypair();
        for (kid, team, bad) in [
            ("ABC123DEF", "TEAM123456", "key_id"),
            ("ABC123DEFGH", "TEAM123456", "key_id"),
            ("ABC123DEF-", "TEAM123456", "key_id"),
            ("ABC123DEFG", "TEAM12345", "team_id"),
        ] {
            let e = JwtSigner::from_p8_pem(private.as_bytes(), kid, team)
                .err()
                .unwrap()
                .to_string();
            assert!(e.starts_with(bad) && e.contains("10-character"), "{kid} {team}: {e}");
        }
        let e = JwtSigner::from_p8_pem(private.as_bytes(), "ABC123DEF", "TEAM123456")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("this has 9 characters"), "{e}");
    }

    #[test]
    fn a_token_minted_after_expired_is_known_as_reminted() {
        let (private, _) = keypair();
        let s = JwtSigner::from_p8_pem(private.as_bytes(), "ABC123DEFG", "TEAM123456").unwrap();
        let (outcomes, _rx, counters) = crate::outcome::Outcomes::detached("com.example.chat");
        s.attach(outcomes);
        let a = s.token();
        assert!(!s.is_reminted(&a));
        let b = s.expired(&a);
        assert!(s.is_reminted(&b) && !s.is_reminted(&a));
        let c = counters.app("com.example.chat");
        assert_eq!(c.provider_tokens_minted.load(std::sync::atomic::Ordering::Relaxed), 2);
        let iat = c
            .provider_token_issued_at_seconds
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(iat.abs_diff(unix_now()) < 5, "{iat}");
    }
}
