//! PostgreSQL schema: versioned migrations in `pushbridge_schema`, applied
//! at start under a session advisory lock ([`LOCK_KEY`]), so two gateways
//! starting together do not race: the second waits, then finds nothing to
//! do. Each migration runs in its own transaction with its version row.
//!
//! The tables mirror SQLite's (a `user` column is `user_id` here: `user`
//! is reserved); integers are `BIGINT`. Migration 2 adds what only a
//! shared database needs: `gateways`, `outbox.claimed_by`, `presence`.

use super::Conn;
use crate::store::db::{now_ms, StoreError};

/// The advisory lock migrations run under (`"pbmg"`).
pub const LOCK_KEY: i64 = 0x7062_6d67;

/// Schema migrations, applied in order. Append, never edit.
pub const MIGRATIONS: &[&str] = &[
    // 1: everything SQLite's migrations 1 and 2 hold.
    "CREATE TABLE devices (
        token       TEXT NOT NULL,
        topic       TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        environment TEXT NOT NULL,
        added_ms    BIGINT NOT NULL,
        PRIMARY KEY (token, topic)
     );
     CREATE INDEX devices_by_user ON devices(user_id);
     CREATE TABLE unread (
        user_id TEXT PRIMARY KEY,
        count   BIGINT NOT NULL
     );
     CREATE TABLE outbox (
        id            BIGSERIAL PRIMARY KEY,
        topic         TEXT NOT NULL,
        token         TEXT NOT NULL,
        environment   TEXT NOT NULL,
        payload       TEXT NOT NULL,
        expiration    BIGINT NOT NULL,
        priority      BIGINT NOT NULL,
        collapse_id   TEXT,
        created_ms    BIGINT NOT NULL,
        user_id       TEXT,
        conversation  TEXT,
        parts         TEXT,
        not_before_ms BIGINT NOT NULL DEFAULT 0
     );
     CREATE INDEX outbox_by_topic ON outbox(topic, id) WHERE not_before_ms = 0;
     CREATE INDEX outbox_waiting ON outbox(user_id, conversation, token, topic) WHERE not_before_ms > 0;
     CREATE INDEX outbox_due ON outbox(not_before_ms) WHERE not_before_ms > 0;
     CREATE TABLE adapter_state (
        namespace TEXT NOT NULL,
        key       TEXT NOT NULL,
        value     TEXT NOT NULL,
        PRIMARY KEY (namespace, key)
     );
     CREATE TABLE mutes (
        user_id      TEXT NOT NULL,
        conversation TEXT NOT NULL,
        until_ms     BIGINT,
        PRIMARY KEY (user_id, conversation)
     );
     CREATE TABLE quiet_hours (
        user_id   TEXT PRIMARY KEY,
        start_min BIGINT NOT NULL,
        end_min   BIGINT NOT NULL,
        zone      TEXT NOT NULL
     );",
    // 2: several gateways on one database (see `super::claims`): the
    // gateways and their heartbeats (the server's clock), the outbox
    // entries each one claimed, and presence tagged by the reporting
    // gateway. Loads go by claim (`outbox_claims` replaces
    // `outbox_by_topic`).
    "CREATE TABLE gateways (
        id        BIGSERIAL PRIMARY KEY,
        started   TIMESTAMPTZ NOT NULL,
        heartbeat TIMESTAMPTZ NOT NULL
     );
     ALTER TABLE outbox ADD COLUMN claimed_by BIGINT;
     CREATE INDEX outbox_claims ON outbox(claimed_by, topic, id);
     DROP INDEX outbox_by_topic;
     CREATE TABLE presence (
        user_id  TEXT PRIMARY KEY,
        presence TEXT NOT NULL,
        gateway  BIGINT NOT NULL
     );",
    // 3: the key columns compare bytes (COLLATE "C"), as SQLite's BINARY
    // does: a database created with a language's collation compared them
    // with strcoll, which was most of the server's CPU per message in
    // `_bt_compare`/`varstr_cmp`. Their indexes are rebuilt.
    "ALTER TABLE devices ALTER COLUMN token TYPE TEXT COLLATE \"C\",
        ALTER COLUMN topic TYPE TEXT COLLATE \"C\",
        ALTER COLUMN user_id TYPE TEXT COLLATE \"C\";
     ALTER TABLE unread ALTER COLUMN user_id TYPE TEXT COLLATE \"C\";
     ALTER TABLE outbox ALTER COLUMN topic TYPE TEXT COLLATE \"C\",
        ALTER COLUMN token TYPE TEXT COLLATE \"C\",
        ALTER COLUMN user_id TYPE TEXT COLLATE \"C\",
        ALTER COLUMN conversation TYPE TEXT COLLATE \"C\";
     ALTER TABLE adapter_state ALTER COLUMN namespace TYPE TEXT COLLATE \"C\",
        ALTER COLUMN key TYPE TEXT COLLATE \"C\";
     ALTER TABLE mutes ALTER COLUMN user_id TYPE TEXT COLLATE \"C\",
        ALTER COLUMN conversation TYPE TEXT COLLATE \"C\";
     ALTER TABLE quiet_hours ALTER COLUMN user_id TYPE TEXT COLLATE \"C\";
     ALTER TABLE presence ALTER COLUMN user_id TYPE TEXT COLLATE \"C\";",
];

const VERSIONS: &str = "CREATE TABLE IF NOT EXISTS pushbridge_schema (
    version    BIGINT PRIMARY KEY,
    applied_ms BIGINT NOT NULL
)";

/// Apply pending migrations under [`LOCK_KEY`]; a newer schema than this
/// pushbridge knows is refused.
pub(super) fn migrate(conn: &mut Conn) -> Result<(), StoreError> {
    let client = conn.client()?;
    let r = client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]);
    conn.check(r)?;
    let result = apply(conn);
    if let Ok(client) = conn.client() {
        let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]);
    }
    result
}

fn apply(conn: &mut Conn) -> Result<(), StoreError> {
    // Without "relation already exists, skipping" notices in the log.
    let r = conn
        .client()?
        .batch_execute(&format!("SET client_min_messages TO warning; {VERSIONS}"));
    conn.check(r)?;
    let version = current(conn)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "schema version {version} is newer than this pushbridge ({known})"
        )));
    }
    if version >= 2 && version < known {
        refuse_while_gateways_live(conn, version, known)?;
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let v = i as i64 + 1;
        let now = now_ms();
        let r = conn.client()?.transaction(&[
            (sql, &[]),
            (
                "INSERT INTO pushbridge_schema (version, applied_ms) VALUES ($1, $2)",
                &[&v, &now],
            ),
        ]);
        conn.check(r)?;
        tracing::info!(version = v, "PostgreSQL schema migrated");
    }
    Ok(())
}

/// Migrating a database that gateways are running on would break them:
/// a migration that changes a column's type or collation makes their
/// prepared statements fail ("cached plan must not change result type")
/// until they restart, and its table locks stall their transactions. So a
/// database at `version` (which has the `gateways` table, version 2 on) is
/// migrated only when no gateway's heartbeat is younger than the lease.
/// Errors: [`StoreError::Unavailable`] naming the live gateways and what
/// to do.
fn refuse_while_gateways_live(conn: &mut Conn, version: i64, known: i64) -> Result<(), StoreError> {
    let lease_ms = i64::try_from(conn.lease.as_millis()).unwrap_or(i64::MAX);
    let r = conn.client()?.query_one(
        "SELECT coalesce(string_agg(id::TEXT, ', ' ORDER BY id), '') FROM gateways
         WHERE heartbeat >= clock_timestamp() - $1::BIGINT * interval '1 millisecond'",
        &[&lease_ms],
    );
    let live: String = conn.check(r)?.get(0);
    if live.is_empty() {
        return Ok(());
    }
    Err(StoreError::Unavailable(format!(
        "the schema needs migrating from version {version} to {known}, but gateway(s) {} \
         heartbeat on this database within the lease ({} s): stop every gateway first \
         (one that crashed counts as stopped a lease after its last heartbeat), \
         start this version, then start the others with it",
        live,
        conn.lease.as_secs()
    )))
}

/// The number of migrations applied (0 before the first).
pub(super) fn current(conn: &mut Conn) -> Result<i64, StoreError> {
    let r = conn
        .client()?
        .query_one("SELECT coalesce(max(version), 0)::BIGINT FROM pushbridge_schema", &[]);
    Ok(conn.check(r)?.get(0))
}
