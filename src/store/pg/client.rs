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
//! success of a transaction; and a step that fails before it is sent (its
//! parameters cannot be encoded) stops the steps after it from being sent
//! at all. Outside `BEGIN` … `COMMIT` each statement applies on its own.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use futures::future::{maybe_done, MaybeDone};
use futures::{poll, StreamExt};
use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row, Statement};

/// How long [`Blocking::close`] waits for the goodbye to go out.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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
/// Dropped, it ends without a goodbye to the server, and must not be
/// dropped on an async runtime's thread (its runtime would panic there):
/// [`Blocking::close`] says goodbye, [`Blocking::abandon`] works anywhere.
pub(super) struct Blocking {
    client: Client,
    /// The connection's task (it sends `Terminate` once `client` is gone).
    connection: tokio::task::JoinHandle<()>,
    rt: Runtime,
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
        let connection = rt.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(Self { client, connection, rt })
    }

    /// End the session: the server gets `Terminate` (waiting at most
    /// [`CLOSE_WAIT`]). Not on an async runtime's thread (use
    /// [`Blocking::abandon`] there).
    pub fn close(self) {
        let Blocking { client, connection, rt } = self;
        drop(client);
        // The timer is made inside the runtime (its timer is that runtime's).
        let _ = rt.block_on(async move { tokio::time::timeout(CLOSE_WAIT, connection).await });
    }

    /// Drop the connection from an async runtime's thread, where waiting
    /// (and dropping a runtime) is not allowed: the socket just closes.
    pub fn abandon(self) {
        let Blocking { client, rt, .. } = self;
        drop(client);
        rt.shutdown_background();
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

    /// Run `statements` in one transaction of their own, then `COMMIT`
    /// (`ROLLBACK` when one fails): each by the simple query protocol when
    /// it has no parameters, else prepared.
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
    /// wait for all of them. The answers in step order (one per step), or
    /// the first error (in step order) when any step failed.
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
        let mut slots: Vec<MaybeDone<StepFuture<'_>>> = futures.into_iter().map(maybe_done).collect();
        self.rt.block_on(async {
            // The first poll of a step sends it; one that is done at once
            // failed before being sent: the steps after it are not sent.
            let mut sent = 0;
            for slot in &mut slots {
                let _ = poll!(Pin::new(&mut *slot));
                sent += 1;
                if matches!(slot, MaybeDone::Done(Err(_))) {
                    break;
                }
            }
            slots.truncate(sent);
            // Then all, in step order every time (not `join_all`, which
            // does not promise an order).
            poll_fn(|cx| {
                let mut done = true;
                for slot in &mut slots {
                    done &= Pin::new(slot).poll(cx).is_ready();
                }
                if done {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await
        });
        // Every slot is done: each gives its output once.
        slots
            .iter_mut()
            .filter_map(|slot| Pin::new(slot).take_output())
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
