//! `pushbridge store copy`: every row of one store into another, between
//! any two backends (SQLite → PostgreSQL to move to it, and back): devices,
//! unread counters, the outbox (pending and waiting entries, ids kept),
//! adapter state, mutes and quiet hours. The target must be empty unless
//! forced (then its rows are deleted first); it is written in one
//! transaction, so a failed copy leaves it as it was. Stop the gateways on
//! the source first: rows they write meanwhile may be missed.

use super::backend::Db;
use super::db::{SqliteDb, StoreError};

/// A column's type: every column is a 64-bit integer or text, either
/// possibly NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Text,
}

/// One value read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
}

/// A table as copied: its columns (SQLite names; PostgreSQL says `user_id`
/// for `user`) and its ordering key.
#[derive(Debug)]
pub(crate) struct Table {
    pub name: &'static str,
    pub cols: &'static [(&'static str, Kind)],
    pub order: &'static str,
}

use Kind::{Int, Text};

/// Every table of the store, in copy order.
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "devices",
        cols: &[
            ("token", Text),
            ("topic", Text),
            ("user", Text),
            ("environment", Text),
            ("added_ms", Int),
        ],
        order: "token, topic",
    },
    Table {
        name: "unread",
        cols: &[("user", Text), ("count", Int)],
        order: "user",
    },
    Table {
        name: "outbox",
        cols: &[
            ("id", Int),
            ("topic", Text),
            ("token", Text),
            ("environment", Text),
            ("payload", Text),
            ("expiration", Int),
            ("priority", Int),
            ("collapse_id", Text),
            ("created_ms", Int),
            ("user", Text),
            ("conversation", Text),
            ("parts", Text),
            ("not_before_ms", Int),
        ],
        order: "id",
    },
    Table {
        name: "adapter_state",
        cols: &[("namespace", Text), ("key", Text), ("value", Text)],
        order: "namespace, key",
    },
    Table {
        name: "mutes",
        cols: &[("user", Text), ("conversation", Text), ("until_ms", Int)],
        order: "user, conversation",
    },
    Table {
        name: "quiet_hours",
        cols: &[("user", Text), ("start_min", Int), ("end_min", Int), ("zone", Text)],
        order: "user",
    },
];

/// Rows written to the target per statement.
pub(crate) const CHUNK: usize = 5000;

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the target store is not empty ({0}); --force replaces its rows")]
    NotEmpty(String),
}

/// Rows copied per table, in [`TABLES`] order.
pub type Counts = Vec<(&'static str, u64)>;

/// Copy every row of `from` into `to` (one transaction on `to`).
/// `progress(table, done, total)` is called after each chunk.
pub fn copy(from: &Db, to: &Db, force: bool, progress: &mut dyn FnMut(&str, u64, u64)) -> Result<Counts, CopyError> {
    let mut present = Vec::new();
    for t in TABLES {
        let n = to.count_rows(t)?;
        if n > 0 {
            present.push(format!("{}: {n}", t.name));
        }
    }
    if !present.is_empty() && !force {
        return Err(CopyError::NotEmpty(present.join(", ")));
    }
    to.begin()?;
    let result = copy_tables(from, to, progress);
    match result {
        Ok(counts) => {
            to.commit()?;
            Ok(counts)
        }
        Err(e) => {
            to.rollback();
            Err(e.into())
        }
    }
}

fn copy_tables(from: &Db, to: &Db, progress: &mut dyn FnMut(&str, u64, u64)) -> Result<Counts, StoreError> {
    let mut counts = Vec::new();
    for t in TABLES {
        to.clear_rows(t)?;
        let total = from.count_rows(t)?.max(0) as u64;
        let mut done = 0u64;
        let mut chunk = Vec::with_capacity(CHUNK);
        from.read_rows(t, &mut |row| {
            chunk.push(row);
            if chunk.len() == CHUNK {
                to.write_rows(t, &chunk)?;
                done += chunk.len() as u64;
                chunk.clear();
                progress(t.name, done, total);
            }
            Ok(())
        })?;
        if !chunk.is_empty() {
            to.write_rows(t, &chunk)?;
            done += chunk.len() as u64;
            progress(t.name, done, total);
        }
        counts.push((t.name, done));
    }
    to.copied()?;
    Ok(counts)
}

impl Db {
    fn count_rows(&self, t: &Table) -> Result<i64, StoreError> {
        match self {
            Db::Sqlite(d) => d.count_rows(t),
            Db::Postgres(d) => d.count_rows(t),
        }
    }

    fn clear_rows(&self, t: &Table) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(d) => d.clear_rows(t),
            Db::Postgres(d) => d.clear_rows(t),
        }
    }

    fn read_rows(&self, t: &Table, f: &mut dyn FnMut(Vec<Cell>) -> Result<(), StoreError>) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(d) => d.read_rows(t, f),
            Db::Postgres(d) => d.read_rows(t, f),
        }
    }

    fn write_rows(&self, t: &Table, rows: &[Vec<Cell>]) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(d) => d.write_rows(t, rows),
            Db::Postgres(d) => d.write_rows(t, rows),
        }
    }

    /// After the rows: new outbox ids continue above the copied ones
    /// (SQLite's AUTOINCREMENT does this by itself).
    fn copied(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(d) => d.copied(),
        }
    }
}

fn sqlite_cols(t: &Table) -> String {
    t.cols
        .iter()
        .map(|(c, _)| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SqliteDb {
    fn count_rows(&self, t: &Table) -> Result<i64, StoreError> {
        Ok(self
            .conn()?
            .query_row(&format!("SELECT count(*) FROM {}", t.name), [], |r| r.get(0))?)
    }

    fn clear_rows(&self, t: &Table) -> Result<(), StoreError> {
        self.conn()?.execute(&format!("DELETE FROM {}", t.name), [])?;
        Ok(())
    }

    fn read_rows(&self, t: &Table, f: &mut dyn FnMut(Vec<Cell>) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let sql = format!("SELECT {} FROM {} ORDER BY {}", sqlite_cols(t), t.name, t.order);
        let mut stmt = self.conn()?.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(t.cols.len());
            for (i, (_, kind)) in t.cols.iter().enumerate() {
                row.push(match kind {
                    Kind::Int => Cell::Int(r.get(i)?),
                    Kind::Text => Cell::Text(r.get(i)?),
                });
            }
            f(row)?;
        }
        Ok(())
    }

    fn write_rows(&self, t: &Table, rows: &[Vec<Cell>]) -> Result<(), StoreError> {
        let marks: Vec<String> = (1..=t.cols.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            t.name,
            sqlite_cols(t),
            marks.join(", ")
        );
        let mut stmt = self.conn()?.prepare(&sql)?;
        for row in rows {
            let values: Vec<rusqlite::types::Value> = row
                .iter()
                .map(|c| match c {
                    Cell::Int(Some(n)) => rusqlite::types::Value::Integer(*n),
                    Cell::Text(Some(s)) => rusqlite::types::Value::Text(s.clone()),
                    Cell::Int(None) | Cell::Text(None) => rusqlite::types::Value::Null,
                })
                .collect();
            stmt.execute(rusqlite::params_from_iter(values))?;
        }
        Ok(())
    }
}
