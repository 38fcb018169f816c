//! A PostgreSQL transaction's buffer: the devices, unread counters and
//! presence the batch's messages need (loaded by [`PgDb::prefetch`] in
//! three statements),
//! and the outbox rows to insert and delete, written at COMMIT (or before
//! any other statement) with one `unnest` statement each.
//!
//! Inserts and deletes never touch the same row in one transaction (a
//! delete settles a committed row, or a waiting row written directly), so
//! writing all inserts, then all deletes, keeps their effect.

use std::collections::HashMap;

use pushbridge_api::{DeviceToken, Environment, Presence, UserId};

use super::{Conn, PgDb};
use crate::store::command::Command;
use crate::store::db::{NewNotification, StoreError};

/// A device as cached for the transaction.
#[derive(Debug, Clone)]
pub(super) struct CachedDevice {
    pub token: DeviceToken,
    pub topic: String,
    pub environment: Environment,
}

/// An outbox row waiting to be written.
#[derive(Debug)]
pub(super) struct OutboxRow {
    id: i64,
    topic: String,
    token: String,
    environment: &'static str,
    payload: String,
    expiration: i64,
    priority: i64,
    collapse_id: Option<String>,
    created_ms: i64,
}

/// The open transaction's state.
#[derive(Debug, Default)]
pub(super) struct Tx {
    /// Inside BEGIN … COMMIT (outside, writes go at once).
    pub open: bool,
    inserts: Vec<OutboxRow>,
    deletes: Vec<i64>,
    /// Prefetched users' devices, in `devices_of` order.
    pub devices: HashMap<String, Vec<CachedDevice>>,
    /// Prefetched (and locked) users' counters: value, changed.
    pub unread: HashMap<String, (i64, bool)>,
    /// Prefetched users' presence as the transaction sees it (reports of
    /// dead gateways read as offline; see [`super::presence`]).
    pub presence: HashMap<String, Presence>,
    /// Presence reports to write at COMMIT, the last per user.
    pub presence_writes: HashMap<String, Presence>,
}

impl Tx {
    fn clear(&mut self) {
        self.open = false;
        self.inserts.clear();
        self.deletes.clear();
        self.devices.clear();
        self.unread.clear();
        self.presence.clear();
        self.presence_writes.clear();
    }
}

impl Conn {
    /// Write the buffered outbox rows and deletes.
    pub(super) fn flush(&mut self) -> Result<(), StoreError> {
        let inserts = std::mem::take(&mut self.tx.inserts);
        if !inserts.is_empty() {
            let ids: Vec<i64> = inserts.iter().map(|r| r.id).collect();
            let topics: Vec<&str> = inserts.iter().map(|r| r.topic.as_str()).collect();
            let tokens: Vec<&str> = inserts.iter().map(|r| r.token.as_str()).collect();
            let envs: Vec<&str> = inserts.iter().map(|r| r.environment).collect();
            let payloads: Vec<&str> = inserts.iter().map(|r| r.payload.as_str()).collect();
            let exps: Vec<i64> = inserts.iter().map(|r| r.expiration).collect();
            let prios: Vec<i64> = inserts.iter().map(|r| r.priority).collect();
            let collapse: Vec<Option<&str>> = inserts.iter().map(|r| r.collapse_id.as_deref()).collect();
            let created: Vec<i64> = inserts.iter().map(|r| r.created_ms).collect();
            // Claimed by this gateway in the transaction that queues them.
            let claim = self.gateway;
            self.execute(
                "INSERT INTO outbox (id, topic, token, environment, payload, expiration, priority, collapse_id, created_ms,
                                     claimed_by)
                 SELECT *, $10::BIGINT FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                                      $6::BIGINT[], $7::BIGINT[], $8::TEXT[], $9::BIGINT[])",
                &[&ids, &topics, &tokens, &envs, &payloads, &exps, &prios, &collapse, &created, &claim],
            )?;
        }
        let deletes = std::mem::take(&mut self.tx.deletes);
        if !deletes.is_empty() {
            self.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&deletes])?;
        }
        Ok(())
    }

    /// Write the changed counters; drop the rows of prefetched users whose
    /// counter is zero (prefetching created them).
    fn flush_unread(&mut self) -> Result<(), StoreError> {
        if self.tx.unread.is_empty() {
            return Ok(());
        }
        let (mut users, mut counts, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for (user, (count, changed)) in &self.tx.unread {
            all.push(user.clone());
            if *changed {
                users.push(user.clone());
                counts.push(*count);
            }
        }
        if !users.is_empty() {
            self.execute(
                "UPDATE unread SET count = v.c FROM unnest($1::TEXT[], $2::BIGINT[]) AS v(u, c)
                 WHERE unread.user_id = v.u",
                &[&users, &counts],
            )?;
        }
        self.execute(
            "DELETE FROM unread USING unnest($1::TEXT[]) AS u(id) WHERE unread.user_id = u.id AND unread.count = 0",
            &[&all],
        )?;
        Ok(())
    }

    /// Buffer an outbox row; its id.
    pub(super) fn buffer_insert(&mut self, n: &NewNotification<'_>) -> Result<i64, StoreError> {
        let id = self.next_id()?;
        self.tx.inserts.push(OutboxRow {
            id,
            topic: n.topic.to_owned(),
            token: n.token.as_str().to_owned(),
            environment: n.environment.as_str(),
            payload: n.payload.to_owned(),
            expiration: n.expiration.min(i64::MAX as u64) as i64,
            priority: i64::from(n.priority),
            collapse_id: n.collapse_id.map(str::to_owned),
            created_ms: n.created_ms,
        });
        if !self.tx.open {
            self.flush()?;
        }
        Ok(id)
    }

    /// Buffer an outbox delete.
    pub(super) fn buffer_delete(&mut self, id: i64) -> Result<(), StoreError> {
        self.tx.deletes.push(id);
        if !self.tx.open {
            self.flush()?;
        }
        Ok(())
    }

    /// Write the buffer, then run `sql` (a statement that must see the
    /// transaction's effects so far).
    pub(super) fn direct(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        self.flush()?;
        self.query(sql, params)
    }

    /// [`Conn::direct`], returning the rows changed.
    pub(super) fn direct_exec(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.flush()?;
        self.execute(sql, params)
    }
}

impl Conn {
    /// Load the devices of `users` (sorted, distinct) into the
    /// transaction's cache: one statement.
    fn prefetch_devices(&mut self, users: Vec<String>) -> Result<(), StoreError> {
        let rows = self.query(
            // A join, not `user_id = ANY($1)`: a scan comparing every row
            // with the whole array cost ~20 ms a batch at 1,000 users.
            "SELECT d.user_id, d.token, d.topic, d.environment
             FROM unnest($1::TEXT[]) AS u(id) JOIN devices d ON d.user_id = u.id
             ORDER BY d.added_ms, d.token",
            &[&users],
        )?;
        let mut devices: HashMap<String, Vec<CachedDevice>> = users.into_iter().map(|u| (u, Vec::new())).collect();
        for row in rows {
            let user: String = row.get(0);
            let d = CachedDevice {
                token: super::ops::parse_token(row.get(1))?,
                topic: row.get(2),
                environment: super::ops::parse_env(row.get(3))?,
            };
            devices.entry(user).or_default().push(d);
        }
        self.tx.devices = devices;
        Ok(())
    }
}

impl PgDb {
    /// BEGIN (reconnecting first if the connection was lost).
    pub fn begin(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        c.tx.clear();
        let r = c.client()?.batch_execute("BEGIN");
        c.check(r)?;
        c.tx.open = true;
        Ok(())
    }

    /// Write the buffer and the counters, then COMMIT.
    pub fn commit(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        c.flush()?;
        c.flush_unread()?;
        c.flush_presence()?;
        let r = c.client()?.batch_execute("COMMIT");
        c.tx.clear();
        c.check(r)
    }

    /// ROLLBACK; the buffer and caches are dropped.
    pub fn rollback(&self) {
        let mut c = self.conn();
        c.tx.clear();
        if let Some(client) = c.client.as_mut().filter(|cl| !cl.is_closed()) {
            let _ = client.batch_execute("ROLLBACK");
        }
    }

    /// Load the presence, devices and (locked) unread counters of the
    /// users the batch's messages go to: three set-based statements for the
    /// whole batch (presence only on a shared store).
    pub(crate) fn prefetch(&self, batch: &[Command]) -> Result<(), StoreError> {
        let mut users = Vec::new();
        let mut counted = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Enqueue { job, .. } => {
                    users.push(job.to.as_str().to_owned());
                    if job.badge.is_none() {
                        counted.push(job.to.as_str().to_owned());
                    }
                }
                // Coming online resets the counter: locked here with the
                // others, in one order, not by a statement of its own later
                // (two gateways would then wait on each other in a cycle).
                Command::Presence {
                    user,
                    presence: Presence::Online,
                    ..
                }
                | Command::ResetUnread { user, .. } => counted.push(user.as_str().to_owned()),
                _ => {}
            }
        }
        self.prefetch_presence(batch)?;
        if users.is_empty() && counted.is_empty() {
            return Ok(());
        }
        users.sort_unstable();
        users.dedup();
        // Sorted: two gateways lock the counters in the same order.
        counted.sort_unstable();
        counted.dedup();
        let mut c = self.conn();
        c.flush()?;
        if !users.is_empty() {
            c.prefetch_devices(users)?;
        }
        if !counted.is_empty() {
            let rows = c.query(
                "INSERT INTO unread (user_id, count) SELECT u, 0 FROM unnest($1::TEXT[]) AS u
                 ON CONFLICT (user_id) DO UPDATE SET count = unread.count
                 RETURNING user_id, count",
                &[&counted],
            )?;
            c.tx.unread = rows
                .iter()
                .map(|r| (r.get::<_, String>(0), (r.get(1), false)))
                .collect();
        }
        Ok(())
    }

    /// The cached devices of `user`, if prefetched.
    pub(super) fn cached_devices(&self, user: &UserId) -> Option<Vec<(DeviceToken, String, Environment)>> {
        let c = self.conn();
        c.tx.devices.get(user.as_str()).map(|ds| {
            ds.iter()
                .map(|d| (d.token.clone(), d.topic.clone(), d.environment))
                .collect()
        })
    }
}
