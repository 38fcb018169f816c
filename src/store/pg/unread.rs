//! Unread counters on PostgreSQL, exact with several gateways.
//!
//! A batch's prefetch locks the counters of the users whose counter it
//! changes with one `INSERT … ON CONFLICT DO UPDATE … RETURNING`
//! ([`LOCK_UNREAD`], users sorted so two gateways lock in one order), which
//! already adds what the batch's messages will add if each of them is
//! pushed (one per message without a badge of its own). Messages then read
//! and increment the [`Counter`]s in memory; COMMIT writes a counter again
//! only where the batch ended elsewhere (a message not pushed, a reset) and
//! removes the zero ones ([`WRITE_UNREAD`]): the common batch writes each
//! counter once. Outside a prefetched batch each call is a statement.

use std::collections::HashMap;

use pushbridge_api::UserId;
use tokio_postgres::Row;

use super::batch::OwnedStatement;
use super::{Conn, PgDb};
use crate::store::db::StoreError;

/// A prefetched unread counter.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counter {
    /// As the transaction's messages leave it so far.
    pub count: i64,
    /// As the database holds it in this transaction.
    pub stored: i64,
}

/// The counters of `$1`'s users (sorted), each plus `$2`'s number
/// (created when missing), locked until COMMIT.
pub(super) const LOCK_UNREAD: &str =
    "INSERT INTO unread (user_id, count) SELECT u, n FROM unnest($1::TEXT[], $2::BIGINT[]) AS v(u, n)
     ON CONFLICT (user_id) DO UPDATE SET count = unread.count + excluded.count
     RETURNING user_id, count";

/// Counters of prefetched users as the transaction leaves them (`$1`
/// users, `$2` counts): zero removes the row (prefetching may have created
/// it), another value is written. One statement: the two parts touch
/// different rows.
const WRITE_UNREAD: &str = "WITH v AS (SELECT * FROM unnest($1::TEXT[], $2::BIGINT[]) AS v(u, c)),
     gone AS (DELETE FROM unread USING v WHERE unread.user_id = v.u AND v.c = 0)
     UPDATE unread SET count = v.c FROM v WHERE unread.user_id = v.u AND v.c <> 0";

/// `counted` sorted by user, one entry per user with the sum of its
/// numbers.
pub(super) fn sum_by_user(mut counted: Vec<(String, i64)>) -> Vec<(String, i64)> {
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

/// The counters from the rows of [`LOCK_UNREAD`]: as stored, and as the
/// batch starts (before what `adds` added for the users `counted`).
pub(super) fn counters(counted: &[String], adds: &[i64], rows: &[Row]) -> HashMap<String, Counter> {
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

fn clamp_u32(n: i64) -> u32 {
    n.clamp(0, i64::from(u32::MAX)) as u32
}

impl Conn {
    /// The prefetched counters the transaction leaves other than stored,
    /// and the zero ones (removed).
    pub(super) fn unread_write(&mut self) -> Option<OwnedStatement> {
        let (users, counts): (Vec<String>, Vec<i64>) = self
            .tx
            .unread
            .drain()
            .filter(|(_, c)| c.count != c.stored || c.count == 0)
            .map(|(user, c)| (user, c.count))
            .unzip();
        if users.is_empty() {
            return None;
        }
        Some(OwnedStatement::new(
            WRITE_UNREAD,
            vec![Box::new(users), Box::new(counts)],
        ))
    }
}

impl PgDb {
    /// Add one to a user's unread counter and return the new value (in
    /// memory when prefetched: written at COMMIT).
    pub fn increment_unread(&self, user: &UserId) -> Result<u32, StoreError> {
        let mut c = self.conn();
        if let Some(counter) = c.tx.unread.get_mut(user.as_str()) {
            counter.count += 1;
            return Ok(clamp_u32(counter.count));
        }
        let rows = c.direct(
            "INSERT INTO unread (user_id, count) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE SET count = unread.count + 1 RETURNING count",
            &[&user.as_str()],
        )?;
        Ok(rows.first().map_or(0, |r| clamp_u32(r.get(0))))
    }

    /// A user's unread counter.
    pub fn unread(&self, user: &UserId) -> Result<u32, StoreError> {
        let mut c = self.conn();
        if let Some(counter) = c.tx.unread.get(user.as_str()) {
            return Ok(clamp_u32(counter.count));
        }
        let rows = c.direct("SELECT count FROM unread WHERE user_id = $1", &[&user.as_str()])?;
        Ok(rows.first().map_or(0, |r| clamp_u32(r.get(0))))
    }

    /// Reset a user's unread counter.
    pub fn reset_unread(&self, user: &UserId) -> Result<(), StoreError> {
        let mut c = self.conn();
        if let Some(counter) = c.tx.unread.get_mut(user.as_str()) {
            counter.count = 0;
            return Ok(());
        }
        c.direct_exec("DELETE FROM unread WHERE user_id = $1", &[&user.as_str()])?;
        Ok(())
    }
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
