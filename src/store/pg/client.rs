//! A blocking face on `tokio-postgres` for the store thread, which can
//! send several statements before reading any answer (pipelining).
//!
//! The `postgres` crate's blocking client sends one statement and waits
//! for its answer; a batch of nine statements then costs nine round trips
//! to the server, each a wake-up of the store thread and of the server's
//! backend. `tokio-postgres` pipelines the requests of futures polled
//! together (their order is the order of first polls); [`Blocking`] runs
//! them on a current-thread runtime of its own, so the store thread stays
//! a plain thread. A pipeline of [`Step`]s costs one round trip.
//!
//! Inside a transaction, a statement that fails aborts it: the statements
//! after it in the pipeline fail too (SQLSTATE 25P02), and a pipelined
//! `COMMIT` then answers `ROLLBACK` without an error. [`Blocking::pipeline`]
//! therefore returns the first error of the pipeline, never a partial
//! success.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use futures::future::{maybe_done, MaybeDone};
use futures::StreamExt;
use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row, Statement};

/// A parameter of a statement.
pub(super) type Param<'a> = &'a (dyn ToSql + Sync);

/// A statement of a pipeline: run for its rows or for the number of rows
/// it changed.
pub(super) struct Step<'a> {
    pub statement: Statement,
    pub params: &'a [Param<'a>],
    pub rows: bool,
}

/// What a step answered: its rows (when asked for) and the number of rows
/// it changed or returned.
#[derive(Debug, Default)]
pub(super) struct Answer {
    pub rows: Vec<Row>,
    pub changed: u64,
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<Answer, Error>> + 'a>>;

/// A connection with the runtime that drives it (see the module doc).
pub(super) struct Blocking {
    rt: Runtime,
    client: Client,
}

impl Blocking {
    /// Connect with `config` over `tls`. Errors: the runtime cannot be
    /// built (as an I/O error), or the client's connect error.
    pub fn connect(
        config: &tokio_postgres::Config,
        tls: tokio_postgres_rustls::MakeRustlsConnect,
    ) -> Result<Self, ConnectError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ConnectError::Runtime)?;
        let (client, connection) = rt.block_on(config.connect(tls)).map_err(ConnectError::Postgres)?;
        // Driven whenever the runtime runs, that is while a call waits.
        rt.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(Self { rt, client })
    }

    /// Whether the connection is gone (the server closed it, or an I/O
    /// error ended it).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Run `sql` (one or more statements, no parameters) by the simple
    /// query protocol.
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.rt.block_on(self.client.batch_execute(sql))
    }

    /// Prepare `sql` (one round trip).
    pub fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        self.rt.block_on(self.client.prepare(sql))
    }

    /// Prepare and run `sql`; its one row. Errors: the server's, or none
    /// or several rows.
    pub fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, Error> {
        self.rt.block_on(self.client.query_one(sql, params))
    }

    /// Prepare and run `sql`; how many rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, Error> {
        self.rt.block_on(self.client.execute(sql, params))
    }

    /// Run `statements` in one transaction of their own (simple protocol,
    /// then `COMMIT`; `ROLLBACK` when one fails).
    pub fn transaction(&mut self, statements: &[(&str, &[Param<'_>])]) -> Result<(), Error> {
        self.rt.block_on(async {
            let tx = self.client.transaction().await?;
            for (sql, params) in statements {
                if params.is_empty() {
                    tx.batch_execute(sql).await?;
                } else {
                    tx.execute(*sql, params).await?;
                }
            }
            tx.commit().await
        })
    }

    /// Run `sql` and hand each row to `f` as it arrives (rows are not
    /// all held in memory); stops at the first error of either.
    pub fn for_each_row<E: From<Error>>(
        &mut self,
        sql: &str,
        mut f: impl FnMut(Row) -> Result<(), E>,
    ) -> Result<(), E> {
        let stream = self
            .rt
            .block_on(self.client.query_raw(sql, std::iter::empty::<Param<'_>>()))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(row) = self.rt.block_on(stream.next()) {
            f(row?)?;
        }
        Ok(())
    }

    /// Send every step before reading any answer (one round trip), then
    /// wait for all of them. The answers in step order, or the first error
    /// (in step order) when any step failed.
    pub fn pipeline(&mut self, steps: &[Step<'_>]) -> Result<Vec<Answer>, Error> {
        let client = &self.client;
        let futures: Vec<StepFuture<'_>> = steps
            .iter()
            .map(|step| -> StepFuture<'_> {
                if step.rows {
                    Box::pin(async move {
                        let rows = client.query(&step.statement, step.params).await?;
                        Ok(Answer {
                            changed: rows.len() as u64,
                            rows,
                        })
                    })
                } else {
                    Box::pin(async move {
                        let changed = client.execute(&step.statement, step.params).await?;
                        Ok(Answer {
                            rows: Vec::new(),
                            changed,
                        })
                    })
                }
            })
            .collect();
        // Polled in step order every time (not `join_all`, which does not
        // promise an order): `BEGIN` must go first and `COMMIT` last.
        let mut slots: Vec<MaybeDone<StepFuture<'_>>> = futures.into_iter().map(maybe_done).collect();
        self.rt.block_on(poll_fn(|cx| {
            let mut done = true;
            for slot in &mut slots {
                done &= Pin::new(slot).poll(cx).is_ready();
            }
            if done {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        slots
            .iter_mut()
            .map(|slot| Pin::new(slot).take_output().unwrap_or_else(|| Ok(Answer::default())))
            .collect()
    }
}

/// Why [`Blocking::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("cannot start the client's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Postgres(Error),
}
