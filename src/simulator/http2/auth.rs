//! Authentication of one request, as Apple does it: a connection that
//! presented a client certificate (when those are accepted) needs nothing
//! more; otherwise an ES256 provider token (JWT) in `authorization: bearer
//! <jwt>` is required and checked: header (`alg` ES256, a `kid`),
//! signature, `iss` (the team id), age (`iat` at most an hour old) and,
//! per connection, how often it is replaced ([`TOKEN_UPDATE_SECS`]).
//!
//! Keys: the one in the options verifies tokens of any `kid`; more can be
//! accepted and refused at run time by key id ([`State::accept_provider_key`],
//! as Apple accepts two keys of a team during a rotation); a token whose
//! `kid` names an accepted key is verified with that key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::check::{one_header, Refusal};
use super::{now_ms, State, TOKEN_UPDATE_SECS};
use crate::apns::Reason;

/// Verified provider tokens remembered (verification is the costly part).
const TOKEN_CACHE: usize = 10_000;
/// A provider token is refused as expired once its `iat` is older than
/// this (seconds).
const TOKEN_LIFETIME_SECS: u64 = 3600;

/// The provider token a connection uses now.
pub(super) struct ConnToken {
    jwt: String,
    /// Its `iat` claim (seconds since 1970).
    iat: u64,
    /// Its `kid`.
    kid: String,
    /// [`State::key_epoch`] when it was verified: keys accepted or refused
    /// since mean verifying it again.
    epoch: u64,
    /// Answered `ExpiredProviderToken`: replacing it is always allowed.
    expired: bool,
}

/// One connection's token, shared by its streams.
pub(super) type ConnAuth = Arc<Mutex<Option<ConnToken>>>;

/// Remember that the connection's current token was answered
/// `ExpiredProviderToken` (its replacement is then always allowed).
pub(super) fn mark_expired(conn_auth: &ConnAuth) {
    if let Some(t) = conn_auth.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        t.expired = true;
    }
}

/// How the request is authenticated, as [`crate::simulator::Record::auth`]
/// says it: `certificate`, `token` or `none`; or Apple's 403 (429 for a
/// token replaced too soon).
pub(super) fn authenticate(
    headers: &HeaderMap,
    state: &State,
    has_cert: bool,
    conn_auth: &ConnAuth,
) -> Result<&'static str, Refusal> {
    if has_cert && state.options.client_certs {
        Ok("certificate")
    } else if state.token_auth() {
        provider_token(headers, state, conn_auth)?;
        Ok("token")
    } else if state.options.client_certs {
        Err(Refusal(403, Reason::MissingProviderToken))
    } else {
        Ok("none")
    }
}

/// Check the request's provider token and make it the connection's own.
fn provider_token(headers: &HeaderMap, state: &State, conn_auth: &ConnAuth) -> Result<(), Refusal> {
    let jwt = bearer(one_header(headers, "authorization")?.unwrap_or(""));
    if jwt.is_empty() {
        return Err(Refusal(403, Reason::MissingProviderToken));
    }
    // The connection's current token was verified when it became
    // current (the verdict for a token never changes): only its age
    // is checked again.
    let epoch = state.key_epoch();
    let known = conn_auth
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|t| (t.jwt == jwt && t.epoch == epoch).then(|| (t.iat, t.kid.clone())));
    let (iat, kid) = match known {
        Some(k) => k,
        None => state.verify_token(jwt, epoch).map_err(|r| Refusal(403, r))?,
    };
    if (now_ms() / 1000) as u64 > iat + TOKEN_LIFETIME_SECS {
        return Err(Refusal(403, Reason::ExpiredProviderToken));
    }
    adopt(conn_auth, jwt, iat, (&kid, epoch))?;
    state.count_key_use(&kid);
    Ok(())
}

/// The token of an `authorization` value (`bearer <jwt>` or `Bearer
/// <jwt>`); empty if it has neither prefix.
fn bearer(header: &str) -> &str {
    header
        .strip_prefix("bearer ")
        .or_else(|| header.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Make `jwt` the connection's current token, unless it replaces a
/// current one that has not expired and is less than
/// [`TOKEN_UPDATE_SECS`] older (429 `TooManyProviderTokenUpdates`).
fn adopt(conn_auth: &ConnAuth, jwt: &str, iat: u64, (kid, epoch): (&str, u64)) -> Result<(), Refusal> {
    let mut current = conn_auth.lock().unwrap_or_else(|e| e.into_inner());
    match current.as_mut() {
        Some(t) if t.jwt == jwt => t.epoch = epoch,
        Some(t) if !t.expired && iat < t.iat + TOKEN_UPDATE_SECS => {
            return Err(Refusal(429, Reason::TooManyProviderTokenUpdates));
        }
        _ => {
            *current = Some(ConnToken {
                jwt: jwt.to_owned(),
                iat,
                kid: kid.to_owned(),
                epoch,
                expired: false,
            })
        }
    }
    Ok(())
}

/// A token's `iat` and `kid`, or why it is refused.
type Verdict = Result<(u64, String), Reason>;

/// Provider tokens presented to the simulator, and the verdicts on them.
#[derive(Default)]
pub(super) struct TokenCache {
    /// Token -> its `iat` and `kid`, or why it is refused (at most
    /// [`TOKEN_CACHE`]; emptied when keys change).
    /// Each verdict is tagged with the key epoch it was reached in.
    verdicts: Mutex<HashMap<String, (u64, Verdict)>>,
    /// Distinct tokens presented (at most ten times [`TOKEN_CACHE`]).
    seen: Mutex<HashSet<String>>,
}

impl TokenCache {
    /// Distinct provider tokens presented so far.
    pub(super) fn seen(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Forget every verdict (the keys changed).
    pub(super) fn forget(&self) {
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Check a provider token with the key `key_for` gives for its `kid`:
    /// the `iat` and `kid` it carries, or the reason to refuse it
    /// (`InvalidProviderToken`).
    pub(super) fn verify(
        &self,
        epoch: u64,
        key_for: impl Fn(&str) -> Option<Arc<DecodingKey>>,
        team_id: Option<&str>,
        jwt: &str,
    ) -> Result<(u64, String), Reason> {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() < TOKEN_CACHE * 10 {
                seen.insert(jwt.to_owned());
            }
        }
        if let Some((at, r)) = self.verdicts.lock().unwrap_or_else(|e| e.into_inner()).get(jwt) {
            if *at == epoch {
                return r.clone();
            }
        }
        let r = verify_uncached(key_for, team_id, jwt);
        let mut cache = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TOKEN_CACHE {
            cache.clear();
        }
        cache.insert(jwt.to_owned(), (epoch, r.clone()));
        r
    }
}

/// Verify header, signature and issuer of a provider token; its `iat`
/// and `kid`.
fn verify_uncached(
    key_for: impl Fn(&str) -> Option<Arc<DecodingKey>>,
    team_id: Option<&str>,
    jwt: &str,
) -> Result<(u64, String), Reason> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| Reason::InvalidProviderToken)?;
    let kid = header.kid.unwrap_or_default();
    if header.alg != Algorithm::ES256 || kid.is_empty() {
        return Err(Reason::InvalidProviderToken);
    }
    let key = key_for(&kid).ok_or(Reason::InvalidProviderToken)?;
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.required_spec_claims.clear();
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        iat: u64,
    }
    let data = jsonwebtoken::decode::<Claims>(jwt, &key, &v).map_err(|_| Reason::InvalidProviderToken)?;
    if let Some(team) = team_id {
        if data.claims.iss != team {
            return Err(Reason::InvalidProviderToken);
        }
    }
    Ok((data.claims.iat, kid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_with(jwt: &str, iat: u64, expired: bool) -> ConnAuth {
        Arc::new(Mutex::new(Some(ConnToken {
            jwt: jwt.into(),
            iat,
            kid: "K".into(),
            epoch: 0,
            expired,
        })))
    }

    const K: (&str, u64) = ("K", 0);

    #[test]
    fn bearer_takes_either_case_of_the_prefix() {
        assert_eq!(bearer("bearer abc"), "abc");
        assert_eq!(bearer("Bearer abc"), "abc");
        assert_eq!(bearer("BEARER abc"), "");
        assert_eq!(bearer("abc"), "");
    }

    #[test]
    fn a_token_replaced_too_soon_is_refused_unless_expired() {
        let conn = conn_with("a", 1000, false);
        assert!(adopt(&conn, "a", 1000, K).is_ok());
        assert!(matches!(
            adopt(&conn, "b", 1000 + TOKEN_UPDATE_SECS - 1, K),
            Err(Refusal(429, Reason::TooManyProviderTokenUpdates))
        ));
        assert!(adopt(&conn, "b", 1000 + TOKEN_UPDATE_SECS, K).is_ok());
        let conn = conn_with("a", 1000, false);
        mark_expired(&conn);
        assert!(adopt(&conn, "b", 1001, K).is_ok());
        let fresh = ConnAuth::default();
        assert!(adopt(&fresh, "a", 1, K).is_ok());
    }

    #[test]
    fn garbage_is_an_invalid_provider_token() {
        let key = Arc::new(DecodingKey::from_secret(b"x"));
        let key_for = |_: &str| Some(key.clone());
        let cache = TokenCache::default();
        assert_eq!(
            cache.verify(0, key_for, None, "not.a.jwt"),
            Err(Reason::InvalidProviderToken)
        );
        assert_eq!(
            cache.verify(0, key_for, None, "not.a.jwt"),
            Err(Reason::InvalidProviderToken)
        );
        assert_eq!(cache.seen(), 1);
    }
}
