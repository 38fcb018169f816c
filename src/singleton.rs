//! Singleton adapter instances on a shared PostgreSQL store. An instance
//! whose adapter says it must run once ([`pushbridge_api::Adapter::singleton`]:
//! an IRC bot, an XMPP component) runs only on the gateway holding its
//! session-level advisory lock; the other gateways stand by and take over
//! when the holder dies or shuts down. With SQLite there is nothing to
//! share: [`SingletonLocks::new`] gives `None` and every instance runs at
//! once.
//!
//! - **Key** ([`lock_key`]): the first 8 bytes, big-endian, of
//!   SHA-256(`"pushbridge singleton" NUL kind NUL instance name`) as a
//!   signed bigint: the same on every gateway and every version, different
//!   for every instance. In `pg_locks` it shows as `locktype = 'advisory'`,
//!   `classid` = its high 32 bits, `objid` = its low 32 bits,
//!   `objsubid = 1`.
//! - **Session**: one dedicated connection per singleton instance, never
//!   the store writer's (that one reconnects on its own schedule and a
//!   session lock would go with it), named
//!   `application_name = "pushbridge singleton HOST:PID"`, so
//!   `pg_stat_activity` tells which gateway holds what.
//! - **Standby**: `pg_try_advisory_lock` every [`RETRY`]; until it
//!   succeeds, the instance's status says it stands by and who holds it.
//! - **Holding**: the session is checked every [`KEEPALIVE`] (`SELECT 1`,
//!   answered within [`KEEPALIVE_TIMEOUT`]); a failed check or the
//!   connection ending is a lost lock: [`Held::lost`] is cancelled and the
//!   supervisor stops the adapter at once (see `crate::supervisor`).
//! - **Never two at once**: the server frees a session's lock only once it
//!   notices the session is gone: at once when the holder's socket closes
//!   (process killed, gateway stopped: then the lock was already given up
//!   after the adapter stopped), else by the TCP keepalive this module sets
//!   on the session ([`SERVER_KEEPALIVE`]: silent for 5 s, then 3 probes
//!   1 s apart, about 8 s). The holder notices a silent server within
//!   `KEEPALIVE + KEEPALIVE_TIMEOUT` (3 s) and stops its adapter within a
//!   further second, before the lock can be given to another gateway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushbridge_api::AdapterStatus;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::StoreConfig;

/// How often a standing-by gateway tries the lock (and reconnects when its
/// session is gone).
pub const RETRY: Duration = Duration::from_secs(1);
/// How often the holder checks its lock session.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// How long a check (or a lock attempt) may take before the session counts
/// as lost.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting the lock session may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server-side TCP keepalive of a lock session: how soon the server
/// frees the lock of a holder that went silent (about 5 + 3 × 1 s). Must
/// stay well above `KEEPALIVE + KEEPALIVE_TIMEOUT` plus the supervisor's
/// stop grace, so the holder stops first. `tcp_user_timeout` (PostgreSQL
/// 12 or later) bounds the same when the link dies with data unacknowledged
/// (the kernel then retransmits instead of probing, for up to ~15 minutes).
/// (Ignored on Unix sockets, where a dead peer is noticed at once.)
pub const SERVER_KEEPALIVE: &str = "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 1; \
     SET tcp_keepalives_count = 3; SET tcp_user_timeout = 8000";

/// Who holds a lock: the holder's session, from `pg_locks` and
/// `pg_stat_activity` (the application name carries the gateway's
/// `HOST:PID`).
const HOLDER: &str = "SELECT a.application_name, a.pid, coalesce(host(a.client_addr), 'local socket') \
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND l.classid::int8 = (($1::int8 >> 32) & 4294967295) AND l.objid::int8 = ($1::int8 & 4294967295)";

/// Why the singleton locks cannot be set up: the `[store]` settings the
/// store's own connection uses ([`crate::store::pg::Endpoint::of`]; the
/// store's own checks normally catch these first).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SingletonError(#[from] crate::store::StoreError);

/// The advisory lock key of instance `name` of adapter kind `kind` (see
/// the module doc).
pub fn lock_key(kind: &str, name: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"pushbridge singleton\0")
        .chain_update(kind.as_bytes())
        .chain_update([0u8])
        .chain_update(name.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// This gateway as other gateways see it: `HOST:PID` (the host name from
/// the kernel, `localhost` when unknown).
pub fn gateway_label() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = match host.trim() {
        "" => "localhost",
        h => h,
    };
    format!("{host}:{}", std::process::id())
}

/// Where singleton lock sessions connect: the store's database.
pub struct SingletonLocks {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// `host:port` of the server (the `host` field, and in errors).
    host: String,
}

impl SingletonLocks {
    /// Lock sessions on the PostgreSQL store `store` names, labelled
    /// `gateway` (see [`gateway_label`]); `None` with SQLite.
    pub fn new(store: &StoreConfig, gateway: &str) -> Result<Option<Arc<Self>>, SingletonError> {
        if store.url.is_none() {
            return Ok(None);
        }
        let ep = crate::store::pg::Endpoint::of(store, &format!("pushbridge singleton {gateway}"))?;
        Ok(Some(Arc::new(Self {
            config: ep.config,
            tls: ep.tls,
            host: format!("{}:{}", ep.host, ep.port),
        })))
    }

    /// Stand by until this gateway holds lock `key` of instance `name`
    /// (trying every [`RETRY`]; `status` says why it waits), or until
    /// `shutdown` (then `None`).
    pub async fn acquire(
        &self,
        name: &str,
        key: i64,
        status: &AdapterStatus,
        shutdown: &CancellationToken,
    ) -> Option<Held> {
        let mut session: Option<Session> = None;
        let mut said = String::new();
        loop {
            let tried = tokio::select! {
                r = self.try_lock(&mut session, key) => r,
                _ = shutdown.cancelled() => return None,
            };
            let why = match tried {
                Ok(true) => {
                    if let Some(s) = session.take() {
                        return Some(Held::start(s, name, key));
                    }
                    continue;
                }
                Ok(false) => match &session {
                    Some(s) => format!("held by {}", holder(&s.client, key).await),
                    None => "held by another gateway".to_owned(),
                },
                Err(e) => {
                    session = None;
                    e
                }
            };
            if why != said {
                tracing::info!(adapter = %name, lock = key, reason = %why, retry_in = ?RETRY, "singleton standing by");
                status.set_standby(format!("standing by: {why}"));
                said = why;
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// One `pg_try_advisory_lock(key)`, connecting first when `session` is
    /// gone. `Err` says why the session is unusable.
    async fn try_lock(&self, session: &mut Option<Session>, key: i64) -> Result<bool, String> {
        if session.as_ref().is_none_or(|s| s.closed.is_cancelled()) {
            *session = Some(self.connect().await?);
        }
        let Some(s) = session.as_ref() else {
            return Err("no lock session".to_owned());
        };
        let sql = "SELECT pg_try_advisory_lock($1)";
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, s.client.query_one(sql, &[&key])).await {
            Ok(Ok(row)) => row.try_get(0).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("PostgreSQL at {}: {e}", self.host)),
            Err(_) => Err(format!(
                "PostgreSQL at {}: no answer within {KEEPALIVE_TIMEOUT:?}",
                self.host
            )),
        }
    }

    /// A new lock session, with [`SERVER_KEEPALIVE`] set.
    async fn connect(&self) -> Result<Session, String> {
        let unreachable = |e: &dyn std::fmt::Display| format!("cannot reach PostgreSQL at {}: {e}", self.host);
        // The whole connect (TCP, TLS, startup) is bounded: a server that
        // accepts and never answers must not keep us from trying again.
        let connecting = self.config.connect(self.tls.clone());
        let (client, connection) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(r) => r.map_err(|e| unreachable(&e))?,
            Err(_) => return Err(unreachable(&format!("no answer within {CONNECT_TIMEOUT:?}"))),
        };
        let closed = CancellationToken::new();
        let why = Arc::new(Mutex::new(None));
        let (on_close, slot) = (closed.clone(), why.clone());
        tokio::spawn(async move {
            let reason = match connection.await {
                Ok(()) => "the server closed the session".to_owned(),
                Err(e) => e.to_string(),
            };
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            on_close.cancel();
        });
        let setup = client.batch_execute(SERVER_KEEPALIVE);
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, setup).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&"no answer")),
        }
        Ok(Session {
            client: Arc::new(client),
            closed,
            why,
        })
    }
}

/// Who holds `key`, in words (`pushbridge singleton HOST:PID (session 123
/// from 10.0.0.2)`), or `another gateway` when that cannot be read.
async fn holder(client: &Client, key: i64) -> String {
    match tokio::time::timeout(KEEPALIVE_TIMEOUT, client.query_opt(HOLDER, &[&key])).await {
        Ok(Ok(Some(row))) => {
            let app: Option<String> = row.try_get(0).ok().flatten();
            let pid: i32 = row.try_get(1).unwrap_or_default();
            let from: String = row.try_get(2).unwrap_or_default();
            format!(
                "{} (session {pid} from {from})",
                app.as_deref().unwrap_or("another session")
            )
        }
        _ => "another gateway".to_owned(),
    }
}

/// One lock session: the client, and the end of its connection.
struct Session {
    client: Arc<Client>,
    /// Cancelled when the connection ends.
    closed: CancellationToken,
    /// Why it ended, once it has.
    why: Arc<Mutex<Option<String>>>,
}

/// A lock this gateway holds. Give it up with [`Held::release`] after the
/// adapter has stopped.
pub struct Held {
    session: Session,
    key: i64,
    /// Cancelled when the session is lost (see [`Held::lost`]).
    lost: CancellationToken,
    /// Checks the session every [`KEEPALIVE`].
    watch: JoinHandle<()>,
}

impl Held {
    fn start(session: Session, name: &str, key: i64) -> Self {
        let lost = CancellationToken::new();
        let watch = tokio::spawn(watch(
            session.client.clone(),
            session.closed.clone(),
            session.why.clone(),
            lost.clone(),
            name.to_owned(),
        ));
        tracing::info!(adapter = %name, lock = key, "singleton lock taken; the instance runs on this gateway");
        Self {
            session,
            key,
            lost,
            watch,
        }
    }

    /// Cancelled as soon as the lock session is lost (its connection ended
    /// or a check failed): the lock may go to another gateway, so the
    /// instance must stop now.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Give the lock up (`pg_advisory_unlock`) and close the session.
    pub async fn release(self) {
        if !self.lost.is_cancelled() {
            let sql = "SELECT pg_advisory_unlock($1)";
            let _ = tokio::time::timeout(KEEPALIVE_TIMEOUT, self.session.client.execute(sql, &[&self.key])).await;
        }
        // Dropping the client ends the session, and any lock with it.
    }
}

impl Drop for Held {
    /// Stop checking: the watch holds a client of the session, which would
    /// keep the lock for the life of the process. Dropping the session's
    /// last client then ends it, and the lock with it.
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Check the session every [`KEEPALIVE`] until it fails, then cancel `lost`.
async fn watch(
    client: Arc<Client>,
    closed: CancellationToken,
    why: Arc<Mutex<Option<String>>>,
    lost: CancellationToken,
    name: String,
) {
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            _ = closed.cancelled() => {
                let why = why.lock().unwrap_or_else(|p| p.into_inner()).clone();
                break why.unwrap_or_else(|| "the session ended".to_owned());
            }
            _ = tick.tick() => {
                match tokio::time::timeout(KEEPALIVE_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break e.to_string(),
                    Err(_) => break format!("no answer within {KEEPALIVE_TIMEOUT:?}"),
                }
            }
        }
    };
    tracing::warn!(adapter = %name, error = %reason, "singleton lock session lost; stopping the instance");
    lost.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_differ_per_instance() {
        // Fixed forever: gateways of different versions must agree.
        assert_eq!(lock_key("irc", "irc:libera"), lock_key("irc", "irc:libera"));
        assert_ne!(lock_key("irc", "irc:libera"), lock_key("irc", "irc:oftc"));
        assert_ne!(lock_key("irc", "xmpp"), lock_key("xmpp", "irc"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(lock_key("ab", "c"), lock_key("a", "bc"));
        // Pinned (computed apart, with Python's hashlib): a changed
        // derivation would let an old and a new gateway both run a bot.
        assert_eq!(lock_key("irc", "irc:libera"), 3_609_935_198_981_043_796);
        assert_eq!(lock_key("probe", "probe"), -2_148_818_783_512_167_703);
    }

    #[test]
    fn sqlite_has_no_singleton_locks_and_the_label_names_the_process() {
        let store = StoreConfig::default();
        assert!(SingletonLocks::new(&store, "h:1").expect("no error").is_none());
        assert!(gateway_label().ends_with(&format!(":{}", std::process::id())));
    }
}
