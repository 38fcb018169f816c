//! Readiness (`GET /readyz`): the gateway is ready when
//! - the store thread answers, the outbox statistics are read, and the
//!   last transaction did not fail;
//! - every app's sink can deliver: it is connected, or idle, or its latest
//!   connection attempt succeeded; APNS does not refuse its credential; its
//!   client certificate has not expired
//!   ([`crate::outcome::AppCounters::readiness`]);
//! - every outbound adapter (XMPP, IRC) is connected to its server, unless
//!   it is a singleton standing by while another gateway runs it (that is
//!   how a shared store is meant to work, not a fault).
//!
//! Otherwise 503 with one [`Problem`] per part that is not ready.

use serde::{Deserialize, Serialize};

use super::AdminState;

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Readiness {
    /// Whether every part is ready (HTTP 200; else 503).
    pub ready: bool,
    /// What is not ready and why; empty when ready.
    pub problems: Vec<Problem>,
}

/// One part that is not ready: exactly one of `store`, `app`, `adapter`
/// names it; `error` says why in plain words.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Problem {
    /// The store part that is not ready (`outbox`: the store thread did
    /// not answer, the outbox statistics could not be read, or the last
    /// transaction failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The topic of an app whose sink cannot deliver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The instance name of an outbound adapter that is not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Why, in plain words (e.g. `client certificate expired on 2024-02-01`).
    pub error: String,
}

impl Problem {
    fn store(error: String) -> Self {
        Self {
            store: Some("outbox".to_owned()),
            app: None,
            adapter: None,
            error,
        }
    }

    fn app(app: &str, error: String) -> Self {
        Self {
            store: None,
            app: Some(app.to_owned()),
            adapter: None,
            error,
        }
    }

    fn adapter(adapter: &str, error: String) -> Self {
        Self {
            store: None,
            app: None,
            adapter: Some(adapter.to_owned()),
            error,
        }
    }
}

/// Check every part now.
pub async fn check(s: &AdminState) -> Readiness {
    let mut problems = Vec::new();
    if let Err(e) = s.outbox().await {
        problems.push(Problem::store(e));
    } else if let Err(e) = s.sources.store.writable() {
        problems.push(Problem::store(format!("the last store transaction failed: {e}")));
    }
    let now = (crate::store::db::now_ms() / 1000).max(0) as u64;
    for a in s.sources.counters.apps() {
        if a.protocol.get().is_none() {
            continue; // counters of an app that is not configured (an orphaned outbox)
        }
        if let Err(p) = a.readiness(now) {
            problems.push(Problem::app(a.app(), p));
        }
    }
    for ad in s.sources.adapters.all() {
        if ad.standby().is_some() {
            continue;
        }
        if let Err(e) = ad.connection() {
            problems.push(Problem::adapter(ad.name(), e));
        }
    }
    Readiness {
        ready: problems.is_empty(),
        problems,
    }
}
