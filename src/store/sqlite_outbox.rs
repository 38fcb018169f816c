//! The SQLite outbox's writes. Inside a transaction ([`SqliteDb::begin`])
//! new rows are buffered and written [`CHUNK`] at a time by one multi-row
//! `INSERT`, and settled rows are deleted a run of consecutive ids at a
//! time: a statement per row spent about a third of its time on the
//! statement (the cache lookup, opening and closing the cursors, reading
//! and writing `sqlite_sequence`), not on the row.
//!
//! Buffered rows get their ids at once, counted up from the table's
//! `AUTOINCREMENT` high-water mark (`sqlite_sequence`, read when the
//! transaction first needs an id), so callers see no difference. Every
//! other statement goes through [`SqliteDb::conn`], which writes the
//! buffer first and forgets the count (a statement may insert rows of its
//! own): nothing ever reads the outbox without the rows inserted before
//! it. [`SqliteDb::commit`] writes what is left; a rollback drops it with
//! the rest of the transaction. Statements on other tables (devices,
//! counters, settings) use [`SqliteDb::conn_beside_outbox`] and leave the
//! buffer alone.
//!
//! Outside a transaction (the CLI) every row is written at once.

use std::sync::OnceLock;

use rusqlite::{params, Connection, Statement, ToSql};

use super::db::{NewNotification, OutboxRow, SqliteDb, StoreError};

/// Rows written by one multi-row `INSERT` (9 parameters a row, well
/// under SQLite's 32,766).
pub(super) const CHUNK: usize = 64;

const COLUMNS: &str = "id, topic, token, environment, payload, expiration, priority, collapse_id, created_ms";

impl OutboxRow {
    /// Bind the row's nine values from parameter `first` (1-based) on.
    fn bind(&self, stmt: &mut Statement<'_>, first: usize) -> Result<(), StoreError> {
        let values: [&dyn ToSql; 9] = [
            &self.id,
            &self.topic,
            &self.token,
            &self.environment,
            &self.payload,
            &self.expiration,
            &self.priority,
            &self.collapse_id,
            &self.created_ms,
        ];
        for (i, v) in values.into_iter().enumerate() {
            stmt.raw_bind_parameter(first + i, v)?;
        }
        Ok(())
    }
}

/// The transaction's buffered rows and the next id to give.
#[derive(Debug, Default)]
pub(super) struct OutboxBuffer {
    rows: Vec<OutboxRow>,
    /// `None`: read `sqlite_sequence` when an id is next needed.
    next_id: Option<i64>,
}

impl OutboxBuffer {
    /// Drop the rows and the count (a transaction begins or rolls back).
    pub(super) fn clear(&mut self) {
        self.rows.clear();
        self.next_id = None;
    }

    /// Rows buffered now (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.rows.len()
    }
}

/// `INSERT INTO outbox (…) VALUES (…), (…) …` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let one = "(?, ?, ?, ?, ?, ?, ?, ?, ?)";
    format!("INSERT INTO outbox ({COLUMNS}) VALUES {}", vec![one; rows].join(", "))
}

/// The largest outbox id ever given: `sqlite_sequence`'s, or the largest
/// row's should that be higher (a hand-edited file).
const HIGH_WATER: &str = "SELECT max(
        ifnull((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
        ifnull((SELECT max(id) FROM outbox), 0))";

fn exhausted(at: i64) -> StoreError {
    StoreError::Corrupt(format!("outbox ids are exhausted (at {at})"))
}

fn chunk_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| insert_sql(CHUNK))
}

impl SqliteDb {
    /// The connection, for any statement: the buffered outbox rows are
    /// written first, and the next id is read again afterwards (the
    /// statement may insert outbox rows itself).
    ///
    /// Errors: writing the buffered rows failed (they are gone from the
    /// buffer; the transaction must roll back).
    pub(super) fn conn(&self) -> Result<&Connection, StoreError> {
        self.flush_outbox()?;
        self.outbox.borrow_mut().next_id = None;
        Ok(&self.conn)
    }

    /// The connection, for statements that neither read nor write the
    /// outbox table (devices, counters, settings, adapter state, pragmas):
    /// the buffered rows may stay buffered.
    pub(super) fn conn_beside_outbox(&self) -> &Connection {
        &self.conn
    }

    /// Write a notification to the outbox; its id. Inside a transaction
    /// the row is buffered (see the module docs).
    ///
    /// Errors: the statement failed; inside a transaction also a write of
    /// the buffer (its rows are gone: the transaction must roll back), and
    /// [`StoreError::Corrupt`] when the ids are exhausted.
    pub fn insert_outbox(&self, n: &NewNotification<'_>) -> Result<i64, StoreError> {
        if !self.in_tx.get() {
            self.conn()?
                .prepare_cached(
                    "INSERT INTO outbox (topic, token, environment, payload, expiration, priority, collapse_id, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    n.topic,
                    n.token.as_str(),
                    n.environment.as_str(),
                    n.payload,
                    n.expiration.min(i64::MAX as u64) as i64,
                    n.priority,
                    n.collapse_id,
                    n.created_ms
                ])?;
            return Ok(self.conn.last_insert_rowid());
        }
        let id = self.next_outbox_id()?;
        let full = {
            let mut buffer = self.outbox.borrow_mut();
            buffer.rows.push(OutboxRow::new(id, n));
            buffer.rows.len() >= CHUNK
        };
        if full {
            self.flush_outbox()?;
        }
        Ok(id)
    }

    /// The next outbox id: one more than the larger of the
    /// `AUTOINCREMENT` high-water mark (never lowered: an id is never given
    /// twice, even after its row went) and the largest id, as SQLite itself
    /// picks; read once per transaction, counted up in memory after.
    fn next_outbox_id(&self) -> Result<i64, StoreError> {
        let known = self.outbox.borrow().next_id;
        let id = match known {
            Some(id) => id,
            None => {
                let high: i64 = self.conn.prepare_cached(HIGH_WATER)?.query_row([], |r| r.get(0))?;
                high.checked_add(1).ok_or_else(|| exhausted(high))?
            }
        };
        self.outbox.borrow_mut().next_id = Some(id.checked_add(1).ok_or_else(|| exhausted(id))?);
        Ok(id)
    }

    /// Write the buffered rows: [`CHUNK`] per statement, the rest one by
    /// one. On an error the transaction must roll back (the rows are gone
    /// from the buffer).
    pub(super) fn flush_outbox(&self) -> Result<(), StoreError> {
        let rows = std::mem::take(&mut self.outbox.borrow_mut().rows);
        if rows.is_empty() {
            return Ok(());
        }
        let mut chunks = rows.chunks_exact(CHUNK);
        if chunks.len() > 0 {
            let mut stmt = self.conn.prepare_cached(chunk_sql())?;
            for chunk in chunks.by_ref() {
                for (i, row) in chunk.iter().enumerate() {
                    row.bind(&mut stmt, i * 9 + 1)?;
                }
                stmt.raw_execute()?;
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut stmt = self.conn.prepare_cached(&insert_sql(1))?;
            for row in rest {
                row.bind(&mut stmt, 1)?;
                stmt.raw_execute()?;
            }
        }
        Ok(())
    }

    /// Delete settled outbox entries: sorted, each run of consecutive ids
    /// with one `DELETE … BETWEEN` (a batch's completions are mostly
    /// consecutive).
    pub fn delete_outbox_ids(&self, mut ids: Vec<i64>) -> Result<(), StoreError> {
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let mut stmt = self
            .conn()?
            .prepare_cached("DELETE FROM outbox WHERE id BETWEEN ?1 AND ?2")?;
        for run in ids.chunk_by(|a, b| a.checked_add(1) == Some(*b)) {
            if let (Some(first), Some(last)) = (run.first(), run.last()) {
                stmt.execute([first, last])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pushbridge_api::{DeviceToken, Environment};

    use super::*;
    use crate::config::Synchronous;

    fn open() -> (tempfile::TempDir, SqliteDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        (dir, db)
    }

    fn insert(db: &SqliteDb, token: &DeviceToken, n: usize) -> i64 {
        db.insert_outbox(&NewNotification {
            topic: "app",
            token,
            environment: Environment::Production,
            payload: &format!("{{\"n\":{n}}}"),
            expiration: u64::MAX,
            priority: 10,
            collapse_id: n.is_multiple_of(2).then_some("c"),
            created_ms: n as i64,
        })
        .unwrap()
    }

    fn stored(db: &SqliteDb) -> Vec<(i64, String)> {
        db.conn()
            .unwrap()
            .prepare("SELECT id, payload FROM outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn buffered_rows_get_ids_after_the_high_water_mark_and_are_seen_by_every_read() {
        let (_dir, db) = open();
        let token = DeviceToken::parse(&"a".repeat(64)).unwrap();
        // Outside a transaction: written at once. The highest row then goes,
        // so only sqlite_sequence remembers id 2.
        assert_eq!((insert(&db, &token, 0), insert(&db, &token, 1)), (1, 2));
        db.delete_outbox_ids(vec![2]).unwrap();

        db.begin().unwrap();
        let n = 2 * CHUNK + 5;
        let ids: Vec<i64> = (0..n)
            .map(|i| {
                let id = insert(&db, &token, 100 + i);
                assert!(db.outbox.borrow().len() < CHUNK, "written once CHUNK rows wait");
                id
            })
            .collect();
        assert_eq!(ids, (3..3 + n as i64).collect::<Vec<_>>(), "never id 2 again");
        // Two chunks are written, five rows still buffered; a read sees all.
        let app: Arc<str> = "app".into();
        let loaded = db.load_outbox(&app, 0, 1000).unwrap();
        assert_eq!(loaded.len(), n + 1);
        let last = format!("{{\"n\":{}}}", 100 + n - 1);
        assert_eq!(
            loaded.last().map(|r| (r.id, &*r.payload)),
            Some((ids[n - 1], last.as_str()))
        );
        assert_eq!(loaded[1].collapse_id.as_deref(), Some("c"), "row 100");
        assert_eq!(loaded[2].collapse_id, None);
        assert_eq!(loaded[1].expiration, i64::MAX as u64);
        assert_eq!(loaded[0].expiration, i64::MAX as u64, "outside a transaction too");
        insert(&db, &token, 999);
        db.commit().unwrap();
        let rows = stored(&db);
        assert_eq!(rows.len(), n + 2);
        assert_eq!(rows.last(), Some(&(3 + n as i64, "{\"n\":999}".to_owned())));
    }

    #[test]
    fn a_statement_inserting_rows_of_its_own_takes_ids_the_buffer_then_skips() {
        let (_dir, db) = open();
        let token = DeviceToken::parse(&"b".repeat(64)).unwrap();
        db.begin().unwrap();
        assert_eq!(insert(&db, &token, 1), 1);
        // Through `conn()`, as coalescing inserts its waiting rows.
        db.execute_for_test(
            "INSERT INTO outbox (topic, token, environment, payload, expiration, priority, created_ms)
             VALUES ('app', 'x', 'production', 'own', 0, 10, 0)",
        )
        .unwrap();
        assert_eq!(insert(&db, &token, 3), 3, "after the statement's row 2");
        db.commit().unwrap();
        let payloads: Vec<String> = stored(&db).into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, ["{\"n\":1}", "own", "{\"n\":3}"]);
    }

    #[test]
    fn a_rollback_drops_the_buffer_and_a_failed_write_fails_the_commit() {
        let (_dir, db) = open();
        let token = DeviceToken::parse(&"c".repeat(64)).unwrap();
        db.begin().unwrap();
        insert(&db, &token, 1);
        db.rollback();
        db.begin().unwrap();
        assert_eq!(
            insert(&db, &token, 2),
            1,
            "nothing of the rolled back transaction was given out"
        );
        db.commit().unwrap();
        assert_eq!(stored(&db), [(1, "{\"n\":2}".to_owned())]);

        db.execute_for_test(
            "CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.payload = '{\"n\":7}'
             BEGIN SELECT RAISE(ABORT, 'disk on fire'); END",
        )
        .unwrap();
        db.begin().unwrap();
        insert(&db, &token, 6);
        insert(&db, &token, 7);
        let err = db.commit().expect_err("the buffered row fails at COMMIT");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        db.rollback();
        assert_eq!(stored(&db).len(), 1, "neither row of the failed transaction");
    }

    #[test]
    fn rolled_back_rows_are_never_written_by_a_later_statement() {
        let (_dir, db) = open();
        let token = DeviceToken::parse(&"e".repeat(64)).unwrap();
        db.begin().unwrap();
        insert(&db, &token, 1);
        db.rollback();
        // Outside a transaction, as the writer reads the next window's end
        // after a failed batch.
        assert_eq!(db.outbox_counts().unwrap(), []);
    }

    #[test]
    fn each_transaction_counts_from_what_is_stored_then() {
        let (dir, db) = open();
        let other = SqliteDb::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let token = DeviceToken::parse(&"f".repeat(64)).unwrap();
        db.begin().unwrap();
        assert_eq!(insert(&db, &token, 1), 1);
        db.commit().unwrap();
        // Another connection (the CLI) between two transactions.
        assert_eq!(insert(&other, &token, 2), 2);
        db.begin().unwrap();
        assert_eq!(insert(&db, &token, 3), 3);
        db.commit().unwrap();
        // A lowered sqlite_sequence (a hand-edited file): the largest row
        // still counts.
        db.execute_for_test("UPDATE sqlite_sequence SET seq = 1 WHERE name = 'outbox'")
            .unwrap();
        db.begin().unwrap();
        assert_eq!(insert(&db, &token, 4), 4);
        db.commit().unwrap();
        assert_eq!(stored(&db).len(), 4);
    }

    #[test]
    fn a_chunk_that_fails_mid_transaction_fails_the_insert() {
        let (_dir, db) = open();
        let token = DeviceToken::parse(&"0".repeat(64)).unwrap();
        db.execute_for_test(
            "CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.payload = '{\"n\":10}'
             BEGIN SELECT RAISE(ABORT, 'disk on fire'); END",
        )
        .unwrap();
        db.begin().unwrap();
        let results: Vec<_> = (0..CHUNK)
            .map(|i| {
                db.insert_outbox(&NewNotification {
                    topic: "app",
                    token: &token,
                    environment: Environment::Production,
                    payload: &format!("{{\"n\":{i}}}"),
                    expiration: 0,
                    priority: 10,
                    collapse_id: None,
                    created_ms: 0,
                })
            })
            .collect();
        let err = results
            .last()
            .and_then(|r| r.as_ref().err())
            .expect("the 64th insert writes the chunk");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(results[..CHUNK - 1].iter().all(Result::is_ok));
        db.rollback();
        assert_eq!(stored(&db), []);
    }

    #[test]
    fn settled_ids_are_deleted_in_runs_and_only_they() {
        let (_dir, db) = open();
        let token = DeviceToken::parse(&"d".repeat(64)).unwrap();
        db.begin().unwrap();
        for i in 1..=10 {
            insert(&db, &token, i);
        }
        db.commit().unwrap();
        db.begin().unwrap();
        db.delete_outbox_ids(vec![9, 2, 3, 3, 4, 7, 42, 1]).unwrap();
        db.delete_outbox_ids(Vec::new()).unwrap();
        db.commit().unwrap();
        let left: Vec<i64> = stored(&db).into_iter().map(|(id, _)| id).collect();
        assert_eq!(left, [5, 6, 8, 10]);
    }
}
