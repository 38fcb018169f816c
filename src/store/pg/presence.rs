//! Presence shared by the gateways of one database (table `presence`).
//!
//! Presence is reported to whichever gateway runs the adapter that saw it,
//! while messages can arrive at another; so on PostgreSQL the router keeps
//! no presence of its own: reports become rows tagged with the reporting
//! gateway (the last report of a user wins, as it does in one process),
//! and a message reads its user's presence in the transaction that queues
//! its notifications. A report of a gateway that is dead (heartbeat older
//! than the lease) or gone (shut down) reads as offline: pushes flow.
//!
//! Set-based like the rest of the batch: [`PgDb::prefetch`] reads the
//! presence of every user the batch's messages and reports concern in one
//! statement; reports are written at COMMIT with one statement per kind
//! (online/away rows upserted, offline rows deleted), in the COMMIT's
//! pipeline.

use pushbridge_api::{Presence, UserId};
use tokio_postgres::Row;

use super::batch::OwnedStatement;
use super::{Conn, PgDb};
use crate::store::command::Command;
use crate::store::db::StoreError;

/// Presence rows of `$1`'s users whose reporting gateway is alive (`$2`
/// the lease in milliseconds).
pub(super) const LIVE_PRESENCE: &str = "SELECT p.user_id, p.presence FROM unnest($1::TEXT[]) AS u(id)
     JOIN presence p ON p.user_id = u.id
     JOIN gateways g ON g.id = p.gateway
        AND g.heartbeat >= clock_timestamp() - $2::BIGINT * interval '1 millisecond'";

fn parse(s: &str) -> Result<Presence, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

fn as_str(p: Presence) -> &'static str {
    match p {
        Presence::Online => "online",
        Presence::Away => "away",
        Presence::Offline => "offline",
    }
}

const UPSERT_PRESENCE: &str = "INSERT INTO presence (user_id, presence, gateway)
     SELECT u, p, $3 FROM unnest($1::TEXT[], $2::TEXT[]) AS v(u, p)
     ON CONFLICT (user_id) DO UPDATE SET presence = excluded.presence, gateway = excluded.gateway";
const DELETE_PRESENCE: &str = "DELETE FROM presence USING unnest($1::TEXT[]) AS u(id) WHERE presence.user_id = u.id";

/// The users of the batch's presence reports and of its messages that
/// respect presence: sorted, distinct.
pub(super) fn reported_users(batch: &[Command]) -> Vec<String> {
    let mut users: Vec<String> = batch
        .iter()
        .filter_map(|cmd| match cmd {
            Command::Enqueue { job, .. } if job.respect_presence => Some(job.to.as_str().to_owned()),
            Command::Presence { user, .. } => Some(user.as_str().to_owned()),
            _ => None,
        })
        .collect();
    users.sort_unstable();
    users.dedup();
    users
}

impl Conn {
    /// Cache the presence of `users` from the rows of [`LIVE_PRESENCE`]
    /// (absent or dead: offline).
    pub(super) fn cache_presence(&mut self, users: Vec<String>, rows: Vec<Row>) -> Result<(), StoreError> {
        for u in users {
            self.tx.presence.entry(u).or_insert(Presence::Offline);
        }
        for r in rows {
            self.tx.presence.insert(r.get(0), parse(r.get(1))?);
        }
        Ok(())
    }

    /// Read the presence of `users` into the transaction's cache.
    fn load_presence(&mut self, users: Vec<String>) -> Result<(), StoreError> {
        let lease_ms = self.lease_ms();
        let rows = self.query(LIVE_PRESENCE, &[&users, &lease_ms])?;
        self.cache_presence(users, rows)
    }

    /// The transaction's presence reports as statements (taken from the
    /// buffer). Error: reports outside a gateway (the CLI has none).
    pub(super) fn presence_writes(&mut self) -> Result<Vec<OwnedStatement>, StoreError> {
        if self.tx.presence_writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut writes: Vec<(String, Presence)> = self.tx.presence_writes.drain().collect();
        // Sorted: two gateways lock the rows in the same order.
        writes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (mut users, mut states, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for (user, p) in writes {
            match p {
                Presence::Offline => gone.push(user),
                p => {
                    users.push(user);
                    states.push(as_str(p));
                }
            }
        }
        let gateway = self
            .gateway
            .ok_or_else(|| StoreError::Corrupt("presence reported outside a gateway".into()))?;
        let mut statements = Vec::new();
        if !users.is_empty() {
            statements.push(OwnedStatement::new(
                UPSERT_PRESENCE,
                vec![Box::new(users), Box::new(states), Box::new(gateway)],
            ));
        }
        if !gone.is_empty() {
            statements.push(OwnedStatement::new(DELETE_PRESENCE, vec![Box::new(gone)]));
        }
        Ok(statements)
    }
}

impl PgDb {
    /// `user`'s presence as this transaction sees it (a report of a dead
    /// gateway: offline).
    pub fn presence_of(&self, user: &UserId) -> Result<Presence, StoreError> {
        let mut c = self.conn();
        if let Some(p) = c.tx.presence.get(user.as_str()) {
            return Ok(*p);
        }
        c.load_presence(vec![user.as_str().to_owned()])?;
        let p = c.tx.presence.get(user.as_str()).copied().unwrap_or_default();
        if !c.tx.open {
            c.tx.presence.clear();
        }
        Ok(p)
    }

    /// Record `user`'s presence as reported to this gateway (written at
    /// COMMIT; at once outside a transaction).
    pub fn set_presence(&self, user: &UserId, presence: Presence) -> Result<(), StoreError> {
        let mut c = self.conn();
        c.tx.presence.insert(user.as_str().to_owned(), presence);
        c.tx.presence_writes.insert(user.as_str().to_owned(), presence);
        if !c.tx.open {
            let writes = c.presence_writes()?;
            c.run_owned(&writes, &[])?;
            c.tx.presence.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_round_trips_through_its_column() {
        for p in [Presence::Online, Presence::Away, Presence::Offline] {
            assert_eq!(parse(as_str(p)).unwrap(), p);
        }
        assert!(parse("busy").is_err());
    }
}
