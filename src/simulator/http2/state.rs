//! What a running HTTP/2 simulator shares between its connections and its
//! handle: the options, the refusals configured at run time, the provider
//! token cache, the records and the counters tests and the CLI read.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

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

impl State {
    pub(super) fn new(options: Options, recorder: Recorder) -> Self {
        Self {
            options,
            rejects: Mutex::default(),
            tokens: TokenCache::default(),
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

    /// Distinct provider tokens (JWTs) presented so far.
    pub fn jwts_seen(&self) -> usize {
        self.tokens.seen()
    }
}
