//! [`PgDb::prefetch`]: what a batch's messages need from the database,
//! read before they are applied, in one pipeline with the transaction's
//! `BEGIN` and any buffered writes (one round trip):
//! - the presence of the users of its messages that respect presence and
//!   of its presence reports ([`super::presence`]);
//! - the devices of the users its messages go to;
//! - the unread counters of the users whose counter it changes, created
//!   when missing and locked for the transaction by one `INSERT … ON
//!   CONFLICT DO UPDATE … RETURNING` (so counters stay exact with several
//!   gateways), in one order (sorted), so two gateways never wait on each
//!   other in a cycle. That statement already adds what the batch's
//!   messages will add if each of them is pushed (one per message without
//!   a badge of its own); COMMIT writes a counter again only where the
//!   batch ended elsewhere (a message not pushed, a reset), so the common
//!   batch writes each counter once.

use std::collections::HashMap;

use pushbridge_api::Presence;
use tokio_postgres::Row;

use super::batch::CachedDevice;
use super::client::Param;
use super::ops::{parse_env, parse_token};
use super::unread::{counters, sum_by_user, LOCK_UNREAD};
use super::{Call, PgDb};
use crate::store::command::Command;
use crate::store::db::StoreError;

/// The devices of `$1`'s users. A join, not `user_id = ANY($1)`: a scan
/// comparing every row with the whole array cost ~20 ms a batch at 1,000
/// users.
const DEVICES_OF: &str = "SELECT d.user_id, d.token, d.topic, d.environment
     FROM unnest($1::TEXT[]) AS u(id) JOIN devices d ON d.user_id = u.id
     ORDER BY d.added_ms, d.token";

/// The users whose devices the batch reads (sorted, distinct), and those
/// whose counters it changes with the number of their messages that
/// count (sorted by user, distinct).
fn message_users(batch: &[Command]) -> (Vec<String>, Vec<(String, i64)>) {
    let mut users = Vec::new();
    let mut counted = Vec::new();
    for cmd in batch {
        match cmd {
            Command::Enqueue { job, .. } => {
                users.push(job.to.as_str().to_owned());
                if job.badge.is_none() {
                    counted.push((job.to.as_str().to_owned(), 1));
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
            | Command::ResetUnread { user, .. } => counted.push((user.as_str().to_owned(), 0)),
            _ => {}
        }
    }
    users.sort_unstable();
    users.dedup();
    (users, sum_by_user(counted))
}

impl PgDb {
    /// Load the presence, devices and (locked) unread counters the batch
    /// needs into the transaction's caches: at most three statements, in
    /// one pipeline.
    pub(crate) fn prefetch(&self, batch: &[Command]) -> Result<(), StoreError> {
        let present = super::presence::reported_users(batch);
        let (users, counted) = message_users(batch);
        if present.is_empty() && users.is_empty() && counted.is_empty() {
            return Ok(());
        }
        let mut c = self.conn();
        let lease_ms = c.lease_ms();
        let (counted, adds): (Vec<String>, Vec<i64>) = counted.into_iter().unzip();
        let presence_params: [Param<'_>; 2] = [&present, &lease_ms];
        let devices_params: [Param<'_>; 1] = [&users];
        let unread_params: [Param<'_>; 2] = [&counted, &adds];
        let mut calls = Vec::with_capacity(3);
        for (list, call) in [
            (&present, Call::rows(super::presence::LIVE_PRESENCE, &presence_params)),
            (&users, Call::rows(DEVICES_OF, &devices_params)),
            (&counted, Call::rows(LOCK_UNREAD, &unread_params)),
        ] {
            if !list.is_empty() {
                calls.push(call);
            }
        }
        let mut answers = c.run_after_writes(&calls)?.into_iter().map(|a| a.rows);
        if !present.is_empty() {
            c.cache_presence(present, answers.next().unwrap_or_default())?;
        }
        if !users.is_empty() {
            c.tx.devices = devices(users, answers.next().unwrap_or_default())?;
        }
        if !counted.is_empty() {
            let rows = answers.next().unwrap_or_default();
            c.tx.unread = counters(&counted, &adds, &rows);
        }
        Ok(())
    }
}

/// The devices of `users` from the rows of [`DEVICES_OF`] (users without
/// any get an empty list, so they are not looked up again).
fn devices(users: Vec<String>, rows: Vec<Row>) -> Result<HashMap<String, Vec<CachedDevice>>, StoreError> {
    let mut devices: HashMap<String, Vec<CachedDevice>> = users.into_iter().map(|u| (u, Vec::new())).collect();
    for row in rows {
        let user: String = row.get(0);
        let d = CachedDevice {
            token: parse_token(row.get(1))?,
            topic: row.get(2),
            environment: parse_env(row.get(3))?,
        };
        devices.entry(user).or_default().push(d);
    }
    Ok(devices)
}
