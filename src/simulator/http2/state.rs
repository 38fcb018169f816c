//! What a running HTTP/2 simulator shares between its connections and its
//! handle: the options, the refusals configured at run time, the provider
//! token cache, the records and the counters tests and the CLI read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jsonwebtoken::DecodingKey;

use super::auth::TokenCache;
use super::faults::Coin;
use super::Options;
use crate::simulator::Recorder;

/// Counters and settings a running simulator shares with its handle.
pub struct State {
    pub(super) options: Options,
    /// Device token (lower-case hex) -> the status and reason to answer.
    pub(super) rejects: Mutex<HashMap<String, (u16, String)>>,
    /// Provider tokens seen and verified.
    pub(super) tokens: TokenCache,
    /// Provider keys by key id, accepted at run time (a rotation).
    keys: Mutex<Keys>,
    /// Bumped whenever keys are accepted or refused.
    key_epoch: AtomicU64,
    /// Draws for `Options::fail_rate`.
    pub(super) coin: Coin,
    pub recorder: Recorder,
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    pub goaways: AtomicU64,
    pub drops: AtomicU64,
    pub failures_injected: AtomicU64,
    /// Connections that went silent (`stall_connections`).
    pub stalls: AtomicU64,
    /// Requests being handled now, and the most ever at once (the client
    /// must stay within SETTINGS_MAX_CONCURRENT_STREAMS).
    pub active: AtomicU64,
    pub max_active: AtomicU64,
}

/// Provider keys accepted at run time, and their use.
#[derive(Default)]
struct Keys {
    /// Key id -> public key.
    by_id: HashMap<String, Arc<DecodingKey>>,
    /// Key ids refused (the options' key no longer stands in for them).
    refused: std::collections::HashSet<String>,
    /// Key id -> requests whose token it verified.
    uses: HashMap<String, u64>,
}

impl State {
    pub(super) fn new(options: Options, recorder: Recorder) -> Self {
        Self {
            options,
            rejects: Mutex::default(),
            tokens: TokenCache::default(),
            keys: Mutex::default(),
            key_epoch: AtomicU64::new(0),
            coin: Coin::seeded_from_clock(),
            recorder,
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            goaways: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            failures_injected: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            active: AtomicU64::new(0),
            max_active: AtomicU64::new(0),
        }
    }

    /// Answer `status`/`reason` for this token (hex, any case) from now
    /// on; `reason` is one of Apple's reason strings (an unknown one is
    /// sent as given).
    pub fn reject(&self, token: &str, status: u16, reason: &str) {
        self.rejects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_ascii_lowercase(), (status, reason.to_owned()));
    }

    /// Accept provider tokens with key id `kid` signed by `key` (public,
    /// ES256), besides those already accepted: Apple accepts two keys of a
    /// team during a rotation. Turns token auth on.
    pub fn accept_provider_key(&self, kid: &str, key: DecodingKey) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.by_id.insert(kid.to_owned(), Arc::new(key));
        keys.refused.remove(kid);
        self.keys_changed();
    }

    /// Refuse provider tokens with key id `kid` from now on
    /// (`403 InvalidProviderToken`), on open connections too.
    pub fn refuse_provider_key(&self, kid: &str) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.by_id.remove(kid);
        keys.refused.insert(kid.to_owned());
        self.keys_changed();
    }

    /// Requests whose provider token carried key id `kid` and verified.
    pub fn key_uses(&self, kid: &str) -> u64 {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.uses.get(kid).copied().unwrap_or(0)
    }

    fn keys_changed(&self) {
        self.tokens.forget();
        self.key_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether requests need a provider token (a key in the options, or
    /// one accepted since).
    pub(super) fn token_auth(&self) -> bool {
        self.options.jwt_key.is_some() || !self.keys.lock().unwrap_or_else(|e| e.into_inner()).by_id.is_empty()
    }

    /// Changes whenever keys are accepted or refused.
    pub(super) fn key_epoch(&self) -> u64 {
        self.key_epoch.load(Ordering::Acquire)
    }

    /// Verify a provider token with the key its `kid` names (or the
    /// options' key, unless that kid was refused): its `iat` and `kid`.
    /// `epoch`: [`State::key_epoch`] read before (a verdict reached with
    /// keys that changed meanwhile is not reused).
    pub(super) fn verify_token(&self, jwt: &str, epoch: u64) -> Result<(u64, String), crate::apns::Reason> {
        let key_for = |kid: &str| {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            match keys.by_id.get(kid) {
                Some(k) => Some(k.clone()),
                None if keys.refused.contains(kid) => None,
                None => self.options.jwt_key.clone(),
            }
        };
        self.tokens.verify(epoch, key_for, self.options.team_id.as_deref(), jwt)
    }

    /// Count a request authenticated with key id `kid`.
    pub(super) fn count_key_use(&self, kid: &str) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        *keys.uses.entry(kid.to_owned()).or_default() += 1;
    }

    /// Distinct provider tokens (JWTs) presented so far.
    pub fn jwts_seen(&self) -> usize {
        self.tokens.seen()
    }
}
