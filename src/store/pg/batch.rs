//! A PostgreSQL transaction's buffer: the devices, unread counters and
//! presence the batch's messages need (loaded by [`PgDb::prefetch`] in
//! three statements),
//! and the outbox rows to insert and delete, written with one `unnest`
//! statement each in COMMIT's pipeline (or first in the pipeline of any
//! other statement, which must see them).
//!
//! Inserts and deletes never touch the same row in one transaction (a
//! delete settles a committed row, or a waiting row written directly), so
//! writing all inserts, then all deletes, keeps their effect.

use std::collections::HashMap;

use pushbridge_api::{DeviceToken, Environment, Presence, UserId};

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::client::{Answer, Param};
use super::{Call, Conn, PgDb};
use crate::store::db::{NewNotification, OutboxRow, StoreError};

/// A device as cached for the transaction.
#[derive(Debug, Clone)]
pub(super) struct CachedDevice {
    pub token: DeviceToken,
    pub topic: String,
    pub environment: Environment,
}

/// The open transaction's state.
#[derive(Debug, Default)]
pub(super) struct Tx {
    /// Inside BEGIN … COMMIT (outside, writes go at once).
    pub open: bool,
    /// `BEGIN` is still to be sent, with the transaction's first
    /// statements ([`Conn::run`]).
    pub unsent_begin: bool,
    /// The connection (its generation) the open transaction began on.
    pub began_on: Option<u64>,
    inserts: Vec<OutboxRow>,
    deletes: Vec<i64>,
    /// Prefetched users' devices, in `devices_of` order.
    pub devices: HashMap<String, Vec<CachedDevice>>,
    /// Prefetched (and locked) users' counters (written at COMMIT where
    /// they end other than stored).
    pub unread: HashMap<String, super::unread::Counter>,
    /// Prefetched users' presence as the transaction sees it (reports of
    /// dead gateways read as offline; see [`super::presence`]).
    pub presence: HashMap<String, Presence>,
    /// Presence reports to write at COMMIT, the last per user.
    pub presence_writes: HashMap<String, Presence>,
}

impl Tx {
    fn clear(&mut self) {
        self.open = false;
        self.unsent_begin = false;
        self.began_on = None;
        self.inserts.clear();
        self.deletes.clear();
        self.devices.clear();
        self.unread.clear();
        self.presence.clear();
        self.presence_writes.clear();
    }
}

/// The buffered outbox rows (`$1`…`$9` their columns), claimed by this
/// gateway (`$10`) in the transaction that queues them.
const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (id, topic, token, environment, payload, expiration, priority, collapse_id, created_ms,
                         claimed_by)
     SELECT *, $10::BIGINT FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                          $6::BIGINT[], $7::BIGINT[], $8::TEXT[], $9::BIGINT[])";
const DELETE_OUTBOX: &str = "DELETE FROM outbox WHERE id = ANY($1)";
/// A statement with parameters it owns (built from the transaction's
/// buffer, which it empties).
pub(super) struct OwnedStatement {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync>>,
}

impl OwnedStatement {
    pub(super) fn new(sql: &'static str, params: Vec<Box<dyn ToSql + Sync>>) -> Self {
        Self { sql, params }
    }
}

/// The statement writing `rows` (claimed by `gateway`), moving their
/// columns into arrays.
fn insert_rows(rows: Vec<OutboxRow>, gateway: Option<i64>) -> OwnedStatement {
    let n = rows.len();
    let (mut ids, mut topics, mut tokens, mut envs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut payloads, mut exps, mut prios) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut collapse, mut created) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for r in rows {
        ids.push(r.id);
        topics.push(r.topic);
        tokens.push(r.token);
        envs.push(r.environment);
        payloads.push(r.payload);
        exps.push(r.expiration);
        prios.push(r.priority);
        collapse.push(r.collapse_id);
        created.push(r.created_ms);
    }
    OwnedStatement::new(
        INSERT_OUTBOX,
        vec![
            Box::new(ids),
            Box::new(topics),
            Box::new(tokens),
            Box::new(envs),
            Box::new(payloads),
            Box::new(exps),
            Box::new(prios),
            Box::new(collapse),
            Box::new(created),
            Box::new(gateway),
        ],
    )
}

impl Conn {
    /// Run `calls` in one pipeline after the buffered outbox writes (so
    /// they see them); the answers of `calls`.
    pub(super) fn run_after_writes(&mut self, calls: &[Call<'_>]) -> Result<Vec<Answer>, StoreError> {
        let writes = self.take_writes();
        self.run_owned(&writes, calls)
    }

    /// Run `owned` then `calls` in one pipeline; the answers of `calls`.
    pub(super) fn run_owned(
        &mut self,
        owned: &[OwnedStatement],
        calls: &[Call<'_>],
    ) -> Result<Vec<Answer>, StoreError> {
        let params: Vec<Vec<Param<'_>>> = owned
            .iter()
            .map(|o| o.params.iter().map(|p| p.as_ref() as Param<'_>).collect())
            .collect();
        let mut all: Vec<Call<'_>> = owned.iter().zip(&params).map(|(o, p)| Call::exec(o.sql, p)).collect();
        all.extend_from_slice(calls);
        let mut answers = self.run(&all)?;
        Ok(answers.split_off(owned.len()))
    }

    /// Write the buffered outbox rows and deletes now.
    pub(super) fn flush(&mut self) -> Result<(), StoreError> {
        self.run_after_writes(&[]).map(drop)
    }

    /// The buffered outbox rows and deletes as statements (at most one
    /// each), taken from the buffer.
    fn take_writes(&mut self) -> Vec<OwnedStatement> {
        let mut writes = Vec::new();
        let inserts = std::mem::take(&mut self.tx.inserts);
        if !inserts.is_empty() {
            writes.push(insert_rows(inserts, self.gateway));
        }
        let deletes = std::mem::take(&mut self.tx.deletes);
        if !deletes.is_empty() {
            writes.push(OwnedStatement::new(DELETE_OUTBOX, vec![Box::new(deletes)]));
        }
        writes
    }

    /// Buffer an outbox row; its id.
    pub(super) fn buffer_insert(&mut self, n: &NewNotification<'_>) -> Result<i64, StoreError> {
        let id = self.next_id()?;
        self.tx.inserts.push(OutboxRow::new(id, n));
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
    /// transaction's effects so far): one pipeline. Its rows.
    pub(super) fn direct(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut answers = self.run_after_writes(&[Call::rows(sql, params)])?;
        Ok(answers.pop().map(|a| a.rows).unwrap_or_default())
    }

    /// Run `sql`, which reads a whole table, with sequential scans allowed
    /// (the session penalises them, see [`super::SESSION`]): a parallel
    /// scan reads 200,000 outbox rows in half the time of the plan chosen
    /// without. The setting is put back after it in the same pipeline;
    /// inside a transaction that fails, its rollback puts it back.
    pub(super) fn whole_table(&mut self, sql: &'static str) -> Result<Vec<Row>, StoreError> {
        let answers = self.run_after_writes(&[
            Call::exec("SET enable_seqscan TO on", &[]),
            Call::rows(sql, &[]),
            Call::exec("SET enable_seqscan TO off", &[]),
        ])?;
        Ok(answers.into_iter().nth(1).map(|a| a.rows).unwrap_or_default())
    }

    /// [`Conn::direct`], returning the rows changed.
    pub(super) fn direct_exec(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let mut answers = self.run_after_writes(&[Call::exec(sql, params)])?;
        Ok(answers.pop().map_or(0, |a| a.changed))
    }
}

impl PgDb {
    /// Start a transaction: its `BEGIN` goes out with the transaction's
    /// first statements, in their pipeline (reconnecting first if the
    /// connection was lost).
    pub fn begin(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        c.tx.clear();
        c.client()?;
        c.tx.open = true;
        c.tx.unsent_begin = true;
        Ok(())
    }

    /// Write the buffer, the counters and the presence reports, and
    /// COMMIT: one pipeline.
    pub fn commit(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        let mut writes = c.take_writes();
        writes.extend(c.unread_write());
        writes.extend(c.presence_writes()?);
        if c.tx.unsent_begin && writes.is_empty() {
            // Nothing was sent: there is nothing to commit.
            c.tx.clear();
            return Ok(());
        }
        let r = c.run_owned(&writes, &[Call::exec("COMMIT", &[])]);
        c.tx.clear();
        r.map(drop)
    }

    /// ROLLBACK; the buffer and caches are dropped.
    pub fn rollback(&self) {
        let mut c = self.conn();
        let sent = !c.tx.unsent_begin;
        c.tx.clear();
        if let Some(client) = c.client.as_mut().filter(|cl| sent && !cl.is_closed()) {
            let _ = client.batch_execute("ROLLBACK");
        }
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
