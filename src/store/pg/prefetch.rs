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

use super::batch::{CachedDevice, Counter};
use super::client::Param;
use super::ops::{parse_env, parse_token};
use super::{Call, PgDb};
use crate::store::command::Command;
use crate::store::db::StoreError;

/// The devices of `$1`'s users. A join, not `user_id = ANY($1)`: a scan
/// comparing every row with the whole array cost ~20 ms a batch at 1,000
/// users.
const DEVICES_OF: &str = "SELECT d.user_id, d.token, d.topic, d.environment
     FROM unnest($1::TEXT[]) AS u(id) JOIN devices d ON d.user_id = u.id
     ORDER BY d.added_ms, d.token";

/// The counters of `$1`'s users (sorted), each plus `$2`'s number
/// (created when missing), locked until COMMIT.
const LOCK_UNREAD: &str =
    "INSERT INTO unread (user_id, count) SELECT u, n FROM unnest($1::TEXT[], $2::BIGINT[]) AS v(u, n)
     ON CONFLICT (user_id) DO UPDATE SET count = unread.count + excluded.count
     RETURNING user_id, count";

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

/// `counted` sorted by user, one entry per user with the sum of its
/// numbers.
fn sum_by_user(mut counted: Vec<(String, i64)>) -> Vec<(String, i64)> {
    counted.sort_unstable();
    counted.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            kept.1 += next.1;
        }
        same
    });
    counted
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

/// The counters from the rows of [`LOCK_UNREAD`]: as stored, and as the
/// batch starts (before what `adds` added for the users `counted`).
fn counters(counted: &[String], adds: &[i64], rows: &[Row]) -> HashMap<String, Counter> {
    rows.iter()
        .map(|r| {
            let user: String = r.get(0);
            let stored: i64 = r.get(1);
            let added = counted
                .binary_search(&user)
                .ok()
                .and_then(|i| adds.get(i))
                .copied()
                .unwrap_or(0);
            (
                user,
                Counter {
                    count: stored - added,
                    stored,
                },
            )
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_users_are_sorted_with_their_messages_summed() {
        let counted = ["line:b", "line:a", "line:b", "line:c", "line:b"]
            .into_iter()
            .zip([1, 1, 0, 0, 1])
            .map(|(u, n)| (u.to_owned(), n))
            .collect();
        let want: Vec<(String, i64)> = [("line:a", 1), ("line:b", 2), ("line:c", 0)]
            .into_iter()
            .map(|(u, n)| (u.to_owned(), n))
            .collect();
        assert_eq!(sum_by_user(counted), want);
    }
}
