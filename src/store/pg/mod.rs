//! The PostgreSQL backend ([`PgDb`]): `[store] url = "postgres://…"`.
//!
//! Same promises as SQLite: the writer loop drives it (one transaction per
//! batch, answers only after COMMIT), but a round trip to a server costs
//! what an in-process call does not, so a batch never pays one per message,
//! and its statements are pipelined ([`client`]): it waits for the server
//! twice.
//! - `BEGIN` is not sent on its own: it goes with the transaction's first
//!   statements.
//! - [`PgDb::prefetch`] loads the devices, unread counters and presence
//!   of every user the batch's messages go to in three set-based
//!   statements, one pipeline ([`prefetch`]: the counters by one `INSERT …
//!   ON CONFLICT DO UPDATE … RETURNING`, which also adds what the batch's
//!   messages will add and locks them for the transaction, so counters
//!   stay exact with several gateways); messages then read and increment
//!   them in memory;
//! - outbox ids come from the table's sequence in blocks ([`ID_BLOCK`]),
//!   so an insert needs no answer; outbox inserts and deletes are buffered
//!   and written at COMMIT with one `unnest` statement each, with the
//!   counters that ended other than the prefetch wrote and the presence
//!   reports, in COMMIT's pipeline;
//! - every other statement (registration, settings, state, coalescing)
//!   goes in one pipeline after the buffer's writes, so it sees the
//!   transaction's effects in order.
//!
//! Statements are prepared once per connection; the session penalises
//! sequential scans and turns JIT off ([`SESSION`]). When the server goes
//! away, the transaction fails (its commands get `ERR unavailable`; nothing
//! accepted is lost: answers come after COMMIT; a transaction never goes on
//! on a new connection), and the next transaction reconnects, with doubling
//! backoff ([`MIN_BACKOFF`]…[`MAX_BACKOFF`]). Schema: [`schema`];
//! statements: [`ops`]; the transaction's buffer: [`batch`]; several
//! gateways on one database (registration, heartbeat, claims, takeover):
//! [`claims`]; presence shared by them: [`presence`]; `store copy`'s side:
//! [`copy`].

mod batch;
pub mod claims;
mod client;
mod copy;
mod ops;
mod prefetch;
mod presence;
pub mod schema;
pub(crate) mod stats;
mod unread;

use std::cell::{RefCell, RefMut};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;
use tokio_postgres::{Row, Statement};

use self::client::{Answer, Blocking, Param, Step};
use super::db::{postgres_reason, StoreError};
use crate::config::StoreConfig;

/// Outbox ids taken from the sequence at a time.
const ID_BLOCK: i32 = 4096;
/// First wait before reconnecting after the server went away.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The store session's settings, sent after connecting (not as startup
/// `options`, which connection poolers may refuse). Every statement of the
/// store reads rows by key. The outbox is a queue: mostly near empty, yet
/// full of dead rows between two vacuums, and the plan a prepared statement
/// caches while it is small stays a sequential scan as it grows (seen:
/// every batch's `DELETE … WHERE id = ANY($1)` read the whole table, slower
/// by the minute). Penalised, sequential scans remain only where no index
/// serves ([`Conn::whole_table`] allows them for its statement). The
/// penalty makes such a plan look costly enough for JIT compilation, which
/// costs far more than these statements (seen: 240 ms for the
/// heartbeat's): off.
const SESSION: &str = "SET enable_seqscan = off; SET jit = off";

/// Parse a `postgres://` URL (or key=value string) as the client does;
/// the error says what is wrong. At least one host is required.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| postgres_reason(&e))?;
    if config.get_hosts().is_empty() {
        return Err("no host (postgres://user@host:port/dbname)".into());
    }
    Ok(config)
}

/// `url` with any password replaced by `***` (for logs and messages).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

/// Where a connection goes, for errors: the first host and port.
fn target(config: &tokio_postgres::Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// The connection and the current transaction's state.
pub(super) struct Conn {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    host: String,
    port: u16,
    client: Option<Blocking>,
    /// How many connections were made: a transaction begun on one must
    /// not go on on the next.
    generation: u64,
    /// Prepared statements of `client`, by their SQL.
    stmts: HashMap<&'static str, Statement>,
    /// Earliest next reconnection attempt, and the wait after that one.
    next_try: Instant,
    backoff: Duration,
    /// Outbox ids taken from the sequence, not used yet.
    ids: VecDeque<i64>,
    /// The open transaction's buffer and caches.
    tx: batch::Tx,
    /// The gateway this connection works for (its row in `gateways`, see
    /// [`claims`]); `None` for the CLI, whose outbox rows are unclaimed.
    gateway: Option<i64>,
    /// `[store] lease`: a gateway whose heartbeat is older is dead.
    lease: Duration,
}

/// An open PostgreSQL store (one connection, used by the writer thread or
/// the CLI).
pub struct PgDb {
    conn: RefCell<Conn>,
}

impl PgDb {
    /// Connect to `config.url` (password from the URL or
    /// `password_file`) and apply pending migrations under an advisory
    /// lock. An unreachable server is [`StoreError::Connect`], naming the
    /// host and port.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let mut conn = Conn::new(config)?;
        let client = conn.connect()?;
        conn.client = Some(client);
        schema::migrate(&mut conn)?;
        Ok(Self {
            conn: RefCell::new(conn),
        })
    }

    /// The schema version of the database `config` names, without
    /// migrating it (`pushbridge check`): 0 before the first start.
    pub fn schema_version_of(config: &StoreConfig) -> Result<i64, StoreError> {
        let mut conn = Conn::new(config)?;
        let client = conn.connect()?;
        conn.client = Some(client);
        let r = conn
            .client()?
            .query_one("SELECT to_regclass('pushbridge_schema') IS NOT NULL", &[]);
        if !conn.check(r)?.get::<_, bool>(0) {
            return Ok(0);
        }
        schema::current(&mut conn)
    }
}

impl Conn {
    /// A connection to `config.url`, not made yet (password from the URL
    /// or `password_file`).
    fn new(config: &StoreConfig) -> Result<Self, StoreError> {
        let lease = config.lease;
        let Endpoint {
            config,
            tls,
            host,
            port,
        } = Endpoint::of(config, "pushbridge")?;
        Ok(Conn {
            config,
            tls,
            host,
            port,
            client: None,
            generation: 0,
            stmts: HashMap::new(),
            next_try: Instant::now(),
            backoff: MIN_BACKOFF,
            ids: VecDeque::new(),
            tx: batch::Tx::default(),
            gateway: None,
            lease,
        })
    }
}

/// What connecting to the `[store] url` database takes, for the store's
/// connection and for other sessions on the same database (the singleton
/// locks, `crate::singleton`).
pub struct Endpoint {
    /// The client config: the URL's, with the password from
    /// `password_file` when set, a connect timeout of 5 s and the
    /// `application_name` given.
    pub config: tokio_postgres::Config,
    /// TLS per the URL's `sslmode`, against the Mozilla roots.
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// The server's first host (a Unix socket directory as a path).
    pub host: String,
    /// Its port (5432 unless the URL says).
    pub port: u16,
}

impl Endpoint {
    /// The endpoint of `config.url`; `application_name` is what
    /// `pg_stat_activity` shows for the session. Errors: the URL does not
    /// parse or names no host, `password_file` cannot be read, TLS cannot
    /// be set up ([`StoreError::Open`], naming the redacted URL or the file).
    pub fn of(config: &StoreConfig, application_name: &str) -> Result<Self, StoreError> {
        let url = config.url.as_deref().unwrap_or_default();
        let mut pg = parse_url(url).map_err(|message| StoreError::Open {
            path: redact_url(url),
            message,
        })?;
        if let Some(file) = &config.password_file {
            let text = std::fs::read_to_string(file).map_err(|e| StoreError::Open {
                path: file.display().to_string(),
                message: format!("cannot read the password file: {e}"),
            })?;
            pg.password(text.lines().next().unwrap_or_default());
        }
        pg.connect_timeout(CONNECT_TIMEOUT);
        pg.application_name(application_name);
        let tls = pushbridge_kit::tls::client_config(None, None, &[]).map_err(|e| StoreError::Open {
            path: redact_url(url),
            message: format!("TLS: {e}"),
        })?;
        let (host, port) = target(&pg);
        Ok(Endpoint {
            config: pg,
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            host,
            port,
        })
    }
}

impl PgDb {
    pub(super) fn conn(&self) -> RefMut<'_, Conn> {
        self.conn.borrow_mut()
    }

    /// Run raw SQL (tests).
    #[cfg(test)]
    pub(crate) fn execute_for_test(&self, sql: &str) -> Result<(), StoreError> {
        let mut c = self.conn();
        let r = c.client()?.batch_execute(sql);
        c.check(r)
    }
}

impl Conn {
    /// `host:port` (the `host` log field).
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn connect(&self) -> Result<Blocking, StoreError> {
        let fail = |message: String| StoreError::Connect {
            host: self.host.clone(),
            port: self.port,
            message,
        };
        let mut client = Blocking::connect(&self.config, self.tls.clone()).map_err(|e| {
            fail(match e {
                client::ConnectError::Postgres(e) => postgres_reason(&e),
                e => e.to_string(),
            })
        })?;
        client.batch_execute(SESSION).map_err(|e| fail(postgres_reason(&e)))?;
        Ok(client)
    }

    /// The connection; reconnects when it was lost and the backoff allows.
    fn client(&mut self) -> Result<&mut Blocking, StoreError> {
        if self.client.as_ref().is_some_and(Blocking::is_closed) {
            self.lost();
        }
        if self.client.is_none() {
            let now = Instant::now();
            if now < self.next_try {
                return Err(StoreError::Unavailable(format!(
                    "PostgreSQL at {}:{} went away; reconnecting",
                    self.host, self.port
                )));
            }
            match self.connect() {
                Ok(c) => {
                    tracing::info!(host = %self.addr(), "reconnected to PostgreSQL");
                    self.client = Some(c);
                    self.generation += 1;
                    self.backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    self.next_try = now + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return Err(e);
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no PostgreSQL connection".into()))
    }

    /// The connection is gone: forget it and its statements.
    fn lost(&mut self) {
        if let Some(client) = self.client.take() {
            client.abandon();
            tracing::warn!(host = %self.addr(), "PostgreSQL connection lost; reconnecting");
        }
        self.stmts.clear();
        self.next_try = Instant::now();
    }

    /// Turn a client error into a [`StoreError`]; an error that is not the
    /// server's answer (a closed socket, a timeout) drops the connection.
    pub(super) fn check<T>(&mut self, r: Result<T, tokio_postgres::Error>) -> Result<T, StoreError> {
        r.map_err(|e| {
            match e.as_db_error() {
                None => self.lost(),
                Some(db) if is_stale_plan(db) => {
                    // A column changed under this connection: its prepared
                    // statements are refused until prepared again.
                    tracing::warn!(error = %db.message(), "the schema changed under the store; preparing its statements again");
                    self.stmts.clear();
                }
                Some(_) => {}
            }
            StoreError::Postgres(e)
        })
    }

    /// `sql` prepared on this connection (once).
    pub(super) fn prep(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let r = self.client()?.prepare(sql);
        let stmt = self.check(r)?;
        self.stmts.insert(sql, stmt.clone());
        Ok(stmt)
    }

    /// Run `calls` as one pipeline (one round trip), preceded by the
    /// transaction's `BEGIN` when it has not been sent yet; their answers
    /// in order, or the first error (see [`client`]).
    fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Answer>, StoreError> {
        // Connected (or reconnected) before anything is prepared; nothing
        // of a transaction begun on a lost connection goes to a new one.
        self.client()?;
        let generation = self.generation;
        self.same_transaction()?;
        let begin = self.tx.unsent_begin;
        let mut steps = Vec::with_capacity(calls.len() + 1);
        if begin {
            steps.push(Step {
                statement: self.prep("BEGIN")?,
                params: &[],
                rows: false,
            });
        }
        for call in calls {
            steps.push(Step {
                statement: self.prep(call.sql)?,
                params: call.params,
                rows: call.rows,
            });
        }
        let client = match self.client.as_mut() {
            Some(c) if self.generation == generation && !c.is_closed() => c,
            _ => return Err(self.lost_midway()),
        };
        let r = client.pipeline(&steps);
        if begin {
            self.tx.unsent_begin = false;
            self.tx.began_on = Some(generation);
        }
        let mut answers = self.check(r)?;
        if answers.len() != steps.len() {
            return Err(StoreError::Unavailable(format!(
                "PostgreSQL answered {} of {} statements",
                answers.len(),
                steps.len()
            )));
        }
        if begin {
            answers.remove(0);
        }
        Ok(answers)
    }

    /// An error unless the open transaction (if any) began on the current
    /// connection.
    fn same_transaction(&self) -> Result<(), StoreError> {
        match self.tx.began_on {
            Some(g) if g != self.generation => Err(self.lost_midway()),
            _ => Ok(()),
        }
    }

    fn lost_midway(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "the connection to PostgreSQL at {} was lost during the transaction",
            self.addr()
        ))
    }

    /// The connection, inside the open transaction, its pending `BEGIN`
    /// sent first: for statements that go to the client directly
    /// (`store copy`'s, whose SQL is built at run time).
    fn tx_client(&mut self) -> Result<&mut Blocking, StoreError> {
        if self.tx.unsent_begin {
            self.run(&[])?;
        }
        self.client()?;
        self.same_transaction()?;
        self.client()
    }

    /// Run a prepared statement; its rows.
    pub(super) fn query(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut answers = self.run(&[Call::rows(sql, params)])?;
        Ok(answers.pop().map(|a| a.rows).unwrap_or_default())
    }

    /// Run a prepared statement; how many rows it changed.
    pub(super) fn execute(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let mut answers = self.run(&[Call::exec(sql, params)])?;
        Ok(answers.pop().map_or(0, |a| a.changed))
    }

    /// A fresh outbox id (from the block taken from the sequence).
    pub(super) fn next_id(&mut self) -> Result<i64, StoreError> {
        if self.ids.is_empty() {
            let rows = self.query(
                "SELECT nextval('outbox_id_seq') FROM generate_series(1, $1)",
                &[&ID_BLOCK],
            )?;
            self.ids.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
        }
        self.ids
            .pop_front()
            .ok_or_else(|| StoreError::Corrupt("the outbox id sequence gave no id".into()))
    }
}

impl Drop for Conn {
    /// The session ends with a goodbye to the server, except on an async
    /// runtime's thread (a gateway that fails to start drops its store
    /// there), where waiting is not allowed: there the socket just closes.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                client.abandon();
            } else {
                client.close();
            }
        }
    }
}

/// A statement to run in a pipeline ([`Conn::run`]).
#[derive(Clone, Copy)]
pub(super) struct Call<'a> {
    sql: &'static str,
    params: &'a [Param<'a>],
    /// Whether its rows are wanted (else only how many it changed).
    rows: bool,
}

impl<'a> Call<'a> {
    /// `sql` run for its rows.
    pub(super) fn rows(sql: &'static str, params: &'a [Param<'a>]) -> Self {
        Self {
            sql,
            params,
            rows: true,
        }
    }

    /// `sql` run for the number of rows it changed.
    pub(super) fn exec(sql: &'static str, params: &'a [Param<'a>]) -> Self {
        Self {
            sql,
            params,
            rows: false,
        }
    }
}

/// Why connecting failed, in words (the client's error plus its cause).
/// PostgreSQL refuses a prepared statement whose result's columns changed
/// (type or collation) since it was prepared: SQLSTATE 0A000, "cached plan
/// must not change result type" (`RevalidateCachedQuery` in PostgreSQL's
/// `plancache.c`).
fn is_stale_plan(db: &tokio_postgres::error::DbError) -> bool {
    *db.code() == tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED
        && db.message().contains("cached plan must not change result type")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_urls_checked() {
        assert_eq!(
            redact_url("postgres://push:s3cret@db.example:5433/pb?sslmode=require"),
            "postgres://push:***@db.example:5433/pb?sslmode=require"
        );
        assert_eq!(redact_url("postgres://push@db/pb"), "postgres://push@db/pb");
        let c = parse_url("postgres://push@db.example:5433/pb?sslmode=require").unwrap();
        assert_eq!(target(&c), ("db.example".to_owned(), 5433));
        assert_eq!(target(&parse_url("postgres://db/pb").unwrap()).1, 5432);
        assert!(parse_url("postgres://db/pb?sslmode=sometimes").is_err());
    }
}
