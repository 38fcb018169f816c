//! PostgreSQL's side of [`crate::store::copy`]: rows read as a stream,
//! written with one `unnest` insert per chunk.

use tokio_postgres::types::ToSql;

use super::PgDb;
use crate::store::copy::{Cell, Kind, Table};
use crate::store::db::StoreError;

/// A column's name here (`user` is reserved in PostgreSQL).
fn col(name: &str) -> &str {
    if name == "user" {
        "user_id"
    } else {
        name
    }
}

fn cols(t: &Table) -> String {
    t.cols.iter().map(|(c, _)| col(c)).collect::<Vec<_>>().join(", ")
}

impl PgDb {
    pub(crate) fn count_rows(&self, t: &Table) -> Result<i64, StoreError> {
        let mut c = self.conn();
        let r = c
            .tx_client()?
            .query_one(&format!("SELECT count(*) FROM {}", t.name), &[]);
        Ok(c.check(r)?.get(0))
    }

    pub(crate) fn clear_rows(&self, t: &Table) -> Result<(), StoreError> {
        let mut c = self.conn();
        let r = c.tx_client()?.batch_execute(&format!("DELETE FROM {}", t.name));
        c.check(r)
    }

    pub(crate) fn read_rows(
        &self,
        t: &Table,
        f: &mut dyn FnMut(Vec<Cell>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let order: Vec<&str> = t.order.split(", ").map(col).collect();
        let sql = format!("SELECT {} FROM {} ORDER BY {}", cols(t), t.name, order.join(", "));
        let mut c = self.conn();
        let result = c.tx_client().and_then(|client| {
            client.for_each_row(&sql, |row| {
                let cells = t
                    .cols
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| match kind {
                        Kind::Int => Cell::Int(row.get(i)),
                        Kind::Text => Cell::Text(row.get(i)),
                    })
                    .collect();
                f(cells)
            })
        });
        if let Err(StoreError::Postgres(e)) = &result {
            if e.as_db_error().is_none() {
                c.lost();
            }
        }
        result
    }

    pub(crate) fn write_rows(&self, t: &Table, rows: &[Vec<Cell>]) -> Result<(), StoreError> {
        let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::with_capacity(t.cols.len());
        let mut casts = Vec::with_capacity(t.cols.len());
        for (i, (_, kind)) in t.cols.iter().enumerate() {
            // Column i as one array (NULL where a cell is NULL or missing).
            let (array, cast): (Box<dyn ToSql + Sync>, _) = match kind {
                Kind::Int => (
                    Box::new(column(rows, i, |c| match c {
                        Cell::Int(n) => *n,
                        Cell::Text(_) => None,
                    })),
                    "BIGINT",
                ),
                Kind::Text => (
                    Box::new(column(rows, i, |c| match c {
                        Cell::Text(s) => s.clone(),
                        Cell::Int(_) => None,
                    })),
                    "TEXT",
                ),
            };
            params.push(array);
            casts.push(format!("${}::{cast}[]", i + 1));
        }
        let sql = format!(
            "INSERT INTO {} ({}) SELECT * FROM unnest({})",
            t.name,
            cols(t),
            casts.join(", ")
        );
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        let mut c = self.conn();
        let r = c.tx_client()?.execute(&sql, &refs);
        c.check(r).map(|_| ())
    }

    /// New outbox ids continue above the copied ones.
    pub(crate) fn copied(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        c.ids.clear();
        let r = c
            .tx_client()?
            .batch_execute("SELECT setval('outbox_id_seq', GREATEST((SELECT max(id) FROM outbox), 1))");
        c.check(r)
    }
}

/// Cell `i` of every row, through `pick` (`None` for a row without it).
fn column<T>(rows: &[Vec<Cell>], i: usize, pick: impl Fn(&Cell) -> Option<T>) -> Vec<Option<T>> {
    rows.iter().map(|r| r.get(i).and_then(&pick)).collect()
}
