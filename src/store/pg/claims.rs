//! Several gateways on one PostgreSQL database.
//!
//! - **Registration.** A gateway process inserts a fresh row into
//!   `gateways` when it opens the store ([`PgDb::register_gateway`]): its
//!   id is new on every start. A restarted gateway therefore never mistakes
//!   the claims of its previous run (perhaps still sending, if that process
//!   hangs rather than died) for its own; they are taken over like any dead
//!   gateway's, once its lease ran out.
//! - **Heartbeat.** The store thread stamps its row with the server's clock
//!   ([`PgDb::heartbeat`], every [`PgDb::maintenance_every`]); one clock
//!   decides, so gateways on machines whose clocks differ agree on who is
//!   dead. A gateway whose heartbeat is older than `[store] lease` is dead.
//! - **Claims.** Every outbox row a gateway writes carries `claimed_by` =
//!   its id, in the transaction that queues it; its feed loads only its
//!   own claims.
//! - **Takeover.** [`PgDb::take_over`] moves rows that nobody holds
//!   (unclaimed: released by a clean shutdown, copied by `store copy`) or
//!   that a dead gateway held to this gateway, `FOR UPDATE SKIP LOCKED`
//!   so two live gateways never take the same row, and renumbers them with
//!   ids from this gateway's block: the feed hands out each gateway's rows
//!   in id order, and the taken rows then come after everything it already
//!   holds. A takeover runs only right after a successful heartbeat that
//!   saw rows to take: a gateway cut off from the database takes nothing.
//! - **Release.** A clean shutdown unclaims what is left
//!   ([`PgDb::release_claims`]) and marks itself dead (its heartbeat
//!   set a lease back; the row goes with the clean-up of long-dead
//!   gateways holding nothing): others take what it held, and anything it still
//!   commits after, at once; also when its grace ran out while its sinks still held
//!   notifications (then over a connection of its own, see
//!   [`crate::store::release_claims_of`]). A `kill -9`ed gateway's rows
//!   wait for its lease.
//!
//! At-least-once: a row is deleted only by an outcome. A gateway that lost
//! its claims (its heartbeat stalled past the lease) still sends what its
//! sinks hold, and the new holder sends it too: a repeat, never a loss.

use std::time::Duration;

use super::{Call, Conn, PgDb};
use crate::outcome::Notification;
use crate::store::db::StoreError;

/// Rows of dead gateways and unclaimed rows a gateway takes over at most
/// per round (it takes the next round at once while there are more).
pub const TAKEOVER_BATCH: i64 = 4096;
/// Rows of a gateway dead this many leases, that holds no claims any more,
/// are deleted (with the presence it reported).
const FORGET_AFTER_LEASES: i64 = 10;

/// An outbox row taken over from a dead gateway (or unclaimed).
#[derive(Debug)]
pub struct Taken {
    /// The row, renumbered for this gateway.
    pub notification: Notification,
    /// The end of its coalescing window (Unix ms), 0 when it is ready.
    pub not_before_ms: i64,
}

impl Conn {
    /// `[store] lease` in milliseconds.
    pub(super) fn lease_ms(&self) -> i64 {
        self.lease.as_millis().min(i64::MAX as u128) as i64
    }

    /// Run `f` in a transaction of its own (outside the writer's batches).
    fn in_tx<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        debug_assert!(!self.tx.open, "a transaction of its own inside the writer's");
        self.run(&[Call::exec("BEGIN", &[])])?;
        // Its statements fail rather than go on after a reconnection.
        self.tx.began_on = Some(self.generation);
        let result = f(self).and_then(|v| self.run(&[Call::exec("COMMIT", &[])]).map(|_| v));
        self.tx.began_on = None;
        if result.is_err() {
            self.rollback_own();
        }
        result
    }

    /// End a failed transaction of its own (best effort: a lost
    /// connection ended it already).
    fn rollback_own(&mut self) {
        if let Some(client) = self.client.as_mut().filter(|c| !c.is_closed()) {
            let _ = client.batch_execute("ROLLBACK");
        }
    }
}

impl PgDb {
    /// Register this process as a gateway (a fresh id): from now on the
    /// rows it writes are claimed by it. Returns the id.
    pub fn register_gateway(&self) -> Result<i64, StoreError> {
        let mut c = self.conn();
        let rows = c.query(
            "INSERT INTO gateways (started, heartbeat) VALUES (clock_timestamp(), clock_timestamp()) RETURNING id",
            &[],
        )?;
        let id: i64 = rows
            .first()
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::Corrupt("no gateway id returned".into()))?;
        c.gateway = Some(id);
        tracing::info!(gateway = id, lease = ?c.lease, "gateway registered");
        Ok(id)
    }

    /// Act for gateway `id` (registered by another connection): release
    /// its claims after a shutdown whose grace ran out.
    pub fn act_for(&self, id: i64) {
        self.conn().gateway = Some(id);
    }

    /// This gateway's id, once registered.
    pub fn gateway_id(&self) -> Option<i64> {
        self.conn().gateway
    }

    /// How often the store thread heartbeats and looks for rows to take
    /// over: a third of the lease, at most every second.
    pub fn maintenance_every(&self) -> Duration {
        (self.conn().lease / 3).min(Duration::from_secs(1))
    }

    /// Stamp this gateway's row with the server's clock (recreating it if
    /// it was deleted meanwhile), then forget gateways dead for long that
    /// hold nothing, with the presence they reported; and say whether rows
    /// of `topics` wait to be taken over ([`PgDb::take_over`]): unclaimed,
    /// or held by a dead gateway (a read without locks). One transaction
    /// in one pipeline: one round trip, which the store thread waits for.
    pub fn heartbeat(&self, topics: &[String]) -> Result<bool, StoreError> {
        let mut c = self.conn();
        let Some(me) = c.gateway else { return Ok(false) };
        let forget_ms = c.lease_ms().saturating_mul(FORGET_AFTER_LEASES);
        let lease_ms = c.lease_ms();
        let r = c.run(&[
            Call::exec("BEGIN", &[]),
            // Not worth a wait for the disk: a heartbeat lost with a crash
            // of the server only makes this gateway look older, and the
            // next one comes within a second. (One synced commit a second
            // showed in the p99 of messages at 10,000/s.)
            Call::exec("SET LOCAL synchronous_commit TO OFF", &[]),
            Call::exec(
                "INSERT INTO gateways (id, started, heartbeat) VALUES ($1, clock_timestamp(), clock_timestamp())
                 ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat",
                &[&me],
            ),
            // When gateways are forgotten, so is the presence of gateways
            // that no longer exist (theirs, and any left before).
            Call::exec(
                "WITH gone AS (
                    DELETE FROM gateways g
                    WHERE g.heartbeat < clock_timestamp() - $1::BIGINT * interval '1 millisecond'
                    AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.claimed_by = g.id)
                    RETURNING g.id)
                 DELETE FROM presence p WHERE EXISTS (SELECT 1 FROM gone)
                    AND (p.gateway IN (SELECT id FROM gone)
                         OR NOT EXISTS (SELECT 1 FROM gateways g WHERE g.id = p.gateway))",
                &[&forget_ms],
            ),
            // Read in the transaction: one outcome for the whole heartbeat.
            Call::rows(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE claimed_by IS NULL AND topic = ANY($2))
                    OR EXISTS (SELECT 1 FROM gateways g JOIN outbox o ON o.claimed_by = g.id
                               WHERE g.id <> $1 AND o.topic = ANY($2)
                               AND g.heartbeat < clock_timestamp() - $3::BIGINT * interval '1 millisecond')",
                &[&me, &topics, &lease_ms],
            ),
            Call::exec("COMMIT", &[]),
        ]);
        match r {
            Ok(answers) => Ok(answers
                .get(4)
                .and_then(|a| a.rows.first())
                .is_some_and(|row| row.get::<_, bool>(0))),
            Err(e) => {
                c.rollback_own();
                Err(e)
            }
        }
    }

    /// Take over up to `limit` rows of `topics` that are unclaimed or held
    /// by a dead gateway, oldest first, renumbered for this gateway (see
    /// the module's doc); called when [`PgDb::heartbeat`] saw some. Nothing
    /// for the CLI.
    pub fn take_over(&self, topics: &[String], limit: i64) -> Result<Vec<Taken>, StoreError> {
        let mut c = self.conn();
        let Some(me) = c.gateway else { return Ok(Vec::new()) };
        let lease_ms = c.lease_ms();
        let mut taken = c.in_tx(|c| {
            let dead: Vec<i64> = c
                .query(
                    "SELECT id FROM gateways WHERE id <> $1
                     AND heartbeat < clock_timestamp() - $2::BIGINT * interval '1 millisecond'",
                    &[&me, &lease_ms],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let old: Vec<i64> = c
                .query(
                    "SELECT id FROM outbox WHERE (claimed_by IS NULL OR claimed_by = ANY($1))
                     AND topic = ANY($2) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
                    &[&dead, &topics, &limit],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if old.is_empty() {
                return Ok(Vec::new());
            }
            let new = old.iter().map(|_| c.next_id()).collect::<Result<Vec<i64>, _>>()?;
            let rows = c.query(
                "UPDATE outbox o SET id = v.new, claimed_by = $3
                 FROM unnest($1::BIGINT[], $2::BIGINT[]) AS v(old, new) WHERE o.id = v.old
                 RETURNING o.id, o.topic, o.token, o.environment, o.payload, o.expiration, o.priority,
                    o.collapse_id, o.created_ms, o.not_before_ms",
                &[&old, &new, &me],
            )?;
            rows.iter().map(taken_row).collect::<Result<Vec<_>, _>>()
        })?;
        taken.sort_by_key(|t| t.notification.id);
        if !taken.is_empty() {
            tracing::info!(
                gateway = me,
                count = taken.len(),
                "took over outbox entries of dead gateways or unclaimed"
            );
        }
        Ok(taken)
    }

    /// Unclaim this gateway's outbox entries of `topics` (apps whose sink
    /// stopped: this gateway sends them no more, and a live gateway's
    /// claims are not taken over), so that the other gateways' next
    /// heartbeat finds them; how many. Open coalescing windows stay: this
    /// gateway merges later messages into them, and releases them as
    /// ordinary entries when they end (handed over at the next call).
    pub fn release_topics(&self, topics: &[String]) -> Result<u64, StoreError> {
        let mut c = self.conn();
        let Some(me) = c.gateway else { return Ok(0) };
        c.execute(
            "UPDATE outbox SET claimed_by = NULL
             WHERE claimed_by = $1 AND topic = ANY($2) AND not_before_ms = 0",
            &[&me, &topics],
        )
    }

    /// Clean shutdown: unclaim what this gateway still holds and mark it
    /// dead (its presence reports then count as offline), so other gateways
    /// take its rows at once.
    pub fn release_claims(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        let Some(me) = c.gateway else { return Ok(()) };
        let lease_ms = c.lease_ms();
        let released = c.in_tx(|c| {
            let n = c.execute("UPDATE outbox SET claimed_by = NULL WHERE claimed_by = $1", &[&me])?;
            // Dead at once (its heartbeat a lease old), not deleted: a row
            // this gateway's store thread still commits after this
            // transaction's snapshot (a shutdown whose grace ran out) stays
            // claimed by a gateway the others know is dead, and is taken
            // over; the row goes once it holds nothing, many leases later
            // (the heartbeats' clean-up), long after this process ended.
            c.execute(
                "UPDATE gateways SET heartbeat = clock_timestamp() - ($2::BIGINT + 1) * interval '1 millisecond'
                 WHERE id = $1",
                &[&me, &lease_ms],
            )?;
            Ok(n)
        })?;
        tracing::info!(
            gateway = me,
            count = released,
            "gateway unregistered; its outbox entries released"
        );
        Ok(())
    }
}

/// A row of [`PgDb::take_over`]'s `RETURNING`.
fn taken_row(r: &tokio_postgres::Row) -> Result<Taken, StoreError> {
    let topic: String = r.get(1);
    Ok(Taken {
        notification: super::ops::notification_from(r, 2, topic.into())?,
        not_before_ms: r.get(9),
    })
}
