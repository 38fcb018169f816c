//! Unread counters on SQLite, counted in the store thread's memory inside
//! a transaction and written once per user at its COMMIT.
//!
//! Every message without a badge of its own adds one to its user's
//! counter; one `INSERT … ON CONFLICT … RETURNING` per message cost about
//! a fifth of the store thread's time in the end-to-end benchmark. Inside a
//! transaction the counters are now read once ([`UnreadCache`], kept
//! across transactions for up to [`MAX_CACHED_COUNTERS`] users), changed in
//! memory, and the changed ones written by one statement before `COMMIT`
//! (those back at zero are deleted, as a reset does). The copy is
//! forgotten when it may be wrong: a failed commit or a rollback (the
//! writes did not happen), and a change committed by another connection
//! (see [`super::sqlite_devices`], `PRAGMA data_version`). Outside a
//! transaction of [`SqliteDb::begin`] each call is its own statement, as
//! before.

use std::collections::{HashMap, HashSet};

use pushbridge_api::UserId;
use rusqlite::OptionalExtension;

use super::db::{SqliteDb, StoreError};

/// Users whose counters [`UnreadCache`] keeps between transactions at most
/// (emptied after a commit that leaves it over).
pub(super) const MAX_CACHED_COUNTERS: usize = 16_384;

/// The changed counters (`?1`: a JSON object of user → count) as they end
/// the transaction: zero removes the row, another value is written.
const WRITE_BACK: [&str; 2] = [
    "DELETE FROM unread WHERE user IN (SELECT key FROM json_each(?1) WHERE value = 0)",
    "INSERT INTO unread (user, count) SELECT key, value FROM json_each(?1) WHERE value <> 0
     ON CONFLICT (user) DO UPDATE SET count = excluded.count",
];

/// Unread counters as this connection last read or set them.
#[derive(Debug, Default)]
pub(crate) struct UnreadCache {
    counts: HashMap<String, i64>,
    /// Users whose counter changed in the open transaction.
    changed: HashSet<String>,
}

impl UnreadCache {
    /// Forget every counter (also changes not written: after a rollback).
    pub(super) fn clear(&mut self) {
        self.counts.clear();
        self.changed.clear();
    }
}

fn clamp_u32(n: i64) -> u32 {
    n.clamp(0, i64::from(u32::MAX)) as u32
}

impl SqliteDb {
    /// The counter of `user` inside the open transaction: the copy, or
    /// read (and kept).
    fn cached_unread(&self, user: &UserId) -> Result<i64, StoreError> {
        if let Some(n) = self.unread.borrow().counts.get(user.as_str()) {
            return Ok(*n);
        }
        let n = self.stored_unread(user)?;
        self.unread.borrow_mut().counts.insert(user.as_str().to_owned(), n);
        Ok(n)
    }

    fn stored_unread(&self, user: &UserId) -> Result<i64, StoreError> {
        let n: Option<i64> = self
            .conn_beside_outbox()
            .prepare_cached("SELECT count FROM unread WHERE user = ?1")?
            .query_row([user.as_str()], |r| r.get(0))
            .optional()?;
        Ok(n.unwrap_or(0))
    }

    fn set_unread(&self, user: &UserId, n: i64) {
        let mut cache = self.unread.borrow_mut();
        cache.counts.insert(user.as_str().to_owned(), n);
        cache.changed.insert(user.as_str().to_owned());
    }

    /// Add one to a user's unread counter and return the new value.
    pub fn increment_unread(&self, user: &UserId) -> Result<u32, StoreError> {
        if !self.in_tx.get() {
            let n: i64 = self
                .conn_beside_outbox()
                .prepare_cached(
                    "INSERT INTO unread (user, count) VALUES (?1, 1)
                     ON CONFLICT (user) DO UPDATE SET count = count + 1
                     RETURNING count",
                )?
                .query_row([user.as_str()], |r| r.get(0))?;
            self.unread.borrow_mut().counts.remove(user.as_str());
            return Ok(clamp_u32(n));
        }
        let n = self.cached_unread(user)?.saturating_add(1);
        self.set_unread(user, n);
        Ok(clamp_u32(n))
    }

    /// A user's unread counter.
    pub fn unread(&self, user: &UserId) -> Result<u32, StoreError> {
        if !self.in_tx.get() {
            return Ok(clamp_u32(self.stored_unread(user)?));
        }
        Ok(clamp_u32(self.cached_unread(user)?))
    }

    /// Reset a user's unread counter (its row goes).
    pub fn reset_unread(&self, user: &UserId) -> Result<(), StoreError> {
        if !self.in_tx.get() {
            self.conn_beside_outbox()
                .prepare_cached("DELETE FROM unread WHERE user = ?1")?
                .execute([user.as_str()])?;
            self.unread.borrow_mut().counts.remove(user.as_str());
            return Ok(());
        }
        self.set_unread(user, 0);
        Ok(())
    }

    /// Write the counters the open transaction changed (called before its
    /// COMMIT; they count as written once it succeeded, see
    /// [`SqliteDb::unread_committed`]).
    pub(super) fn write_unread(&self) -> Result<(), StoreError> {
        let cache = self.unread.borrow();
        if cache.changed.is_empty() {
            return Ok(());
        }
        let changed: serde_json::Map<String, serde_json::Value> = cache
            .changed
            .iter()
            .map(|u| (u.clone(), cache.counts.get(u).copied().unwrap_or(0).into()))
            .collect();
        let json = serde_json::Value::Object(changed).to_string();
        for sql in WRITE_BACK {
            self.conn_beside_outbox().prepare_cached(sql)?.execute([&json])?;
        }
        Ok(())
    }

    /// The transaction committed: its counters are the stored ones; over
    /// [`MAX_CACHED_COUNTERS`] the copy is forgotten.
    pub(super) fn unread_committed(&self) {
        let mut cache = self.unread.borrow_mut();
        cache.changed.clear();
        if cache.counts.len() > MAX_CACHED_COUNTERS {
            cache.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn open(path: &std::path::Path) -> SqliteDb {
        SqliteDb::open(path, Synchronous::Normal).unwrap()
    }

    /// The counter as stored (another connection's view).
    fn stored(path: &std::path::Path, u: &UserId) -> Option<i64> {
        let c = rusqlite::Connection::open(path).unwrap();
        c.query_row("SELECT count FROM unread WHERE user = ?1", [u.as_str()], |r| r.get(0))
            .optional()
            .unwrap()
    }

    #[test]
    fn a_transaction_counts_in_memory_and_writes_each_changed_counter_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = open(&path);
        let (alice, bob) = (user("xmpp:alice@example.com/ph\u{f4}ne\"1\\"), user("line:bob"));
        assert_eq!(db.increment_unread(&bob).unwrap(), 1, "outside a transaction: at once");
        assert_eq!(stored(&path, &bob), Some(1));
        db.begin().unwrap();
        assert_eq!(db.increment_unread(&alice).unwrap(), 1);
        assert_eq!(db.increment_unread(&alice).unwrap(), 2);
        assert_eq!(db.increment_unread(&bob).unwrap(), 2);
        db.reset_unread(&bob).unwrap();
        assert_eq!(db.unread(&bob).unwrap(), 0);
        assert_eq!(stored(&path, &alice), None, "not written before COMMIT");
        db.commit().unwrap();
        assert_eq!(stored(&path, &alice), Some(2));
        assert_eq!(stored(&path, &bob), None, "a counter back at zero goes");
        // The next transaction goes on from the copy.
        db.begin().unwrap();
        assert_eq!(db.increment_unread(&alice).unwrap(), 3);
        db.commit().unwrap();
        assert_eq!(stored(&path, &alice), Some(3));
    }

    #[test]
    fn a_rollback_forgets_what_the_transaction_counted() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("t.db"));
        let alice = user("line:alice");
        db.begin().unwrap();
        db.increment_unread(&alice).unwrap();
        db.commit().unwrap();
        db.begin().unwrap();
        assert_eq!(db.increment_unread(&alice).unwrap(), 2);
        db.rollback();
        db.begin().unwrap();
        assert_eq!(db.unread(&alice).unwrap(), 1);
        assert_eq!(db.increment_unread(&alice).unwrap(), 2);
        db.commit().unwrap();
    }

    #[test]
    fn a_counter_changed_by_another_connection_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (gateway, other) = (open(&path), open(&path));
        let alice = user("line:alice");
        gateway.begin().unwrap();
        assert_eq!(gateway.increment_unread(&alice).unwrap(), 1);
        gateway.commit().unwrap();
        other.increment_unread(&alice).unwrap();
        gateway.begin().unwrap();
        assert_eq!(gateway.increment_unread(&alice).unwrap(), 3);
        gateway.commit().unwrap();
        assert_eq!(stored(&path, &alice), Some(3));
    }
}
