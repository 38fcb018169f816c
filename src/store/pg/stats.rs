//! The outbox statistics of a PostgreSQL store, read over a session of
//! their own (`application_name` `pushbridge stats`) instead of the store
//! thread's: counting the outbox is O(rows), and every transaction of the
//! store thread would wait behind it (see [`crate::store::stats::StatsReader`],
//! which caches and serialises the counts).
//!
//! The session is made on the first count and made again after an error;
//! a count that takes longer than [`COUNT_TIMEOUT`] drops it, and the
//! server cancels it (`statement_timeout`). With several
//! gateways on one database the figures are the shared outbox's.

use std::time::Duration;

use tokio_postgres::Client;

use super::Endpoint;
use crate::store::db::{postgres_reason, StoreError};
use crate::store::stats::AppOutbox;

/// Every app's outbox depth and oldest entry. It reads the whole table, so
/// this session has no penalty on sequential scans (`super::SESSION`).
const OUTBOX_STATS: &str = "SELECT topic, count(*), min(created_ms) FROM outbox GROUP BY topic ORDER BY topic";

/// Longest a count may take before the session is dropped (a server that
/// stopped answering must not hold the statistics forever).
const COUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// The statistics' session (see the module doc).
pub(crate) struct StatsSession {
    endpoint: Endpoint,
    client: Option<Client>,
}

impl StatsSession {
    /// A session on `config.url`'s database, not connected yet. Errors: as
    /// [`Endpoint::of`].
    pub(crate) fn new(config: &crate::config::StoreConfig) -> Result<Self, StoreError> {
        Ok(Self {
            endpoint: Endpoint::of(config, "pushbridge stats")?,
            client: None,
        })
    }

    /// Count the outbox (connecting first when needed). Errors
    /// ([`StoreError::Unavailable`], naming this session): the server
    /// cannot be reached, or the count failed or timed out (the server
    /// cancels it too: `statement_timeout`); the session is then made again
    /// on the next count.
    pub(crate) async fn outbox_stats(&mut self) -> Result<Vec<AppOutbox>, StoreError> {
        // The client is taken out while it counts and put back only after
        // a count that succeeded: a failed or timed-out count drops it.
        tokio::time::timeout(COUNT_TIMEOUT, self.count())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "counting the outbox: no answer within {} s",
                    COUNT_TIMEOUT.as_secs()
                )))
            })
    }

    async fn count(&mut self) -> Result<Vec<AppOutbox>, StoreError> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => self.connect().await?,
        };
        let rows = client
            .query(OUTBOX_STATS, &[])
            .await
            .map_err(|e| StoreError::Unavailable(format!("counting the outbox: {}", postgres_reason(&e))))?;
        self.client = Some(client);
        rows.iter()
            .map(|r| {
                Ok(AppOutbox {
                    app: r.try_get(0)?,
                    depth: r.try_get::<_, i64>(1)?.max(0) as u64,
                    oldest_ms: r.try_get(2)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| StoreError::Corrupt(format!("outbox statistics: {e}")))
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let ep = &self.endpoint;
        let (client, connection) = ep.config.connect(ep.tls.clone()).await.map_err(|e| {
            StoreError::Unavailable(format!(
                "the outbox statistics' session cannot reach PostgreSQL at {}:{}: {}",
                ep.host,
                ep.port,
                postgres_reason(&e)
            ))
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "the outbox statistics' PostgreSQL session ended");
            }
        });
        // JIT compiling the count of a deep outbox costs more than it saves
        // (as for the store's session, `super::SESSION`); and a count given
        // up on here must not go on in the server.
        client
            .batch_execute(&format!(
                "SET jit = off; SET statement_timeout = '{}s'",
                COUNT_TIMEOUT.as_secs()
            ))
            .await
            .map_err(|e| StoreError::Unavailable(format!("counting the outbox: {}", postgres_reason(&e))))?;
        Ok(client)
    }
}
