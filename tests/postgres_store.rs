//! The PostgreSQL store against a real PostgreSQL cluster and the real
//! binary: migrations (two gateways starting together, a second start that
//! does nothing, `check`), the config's choice of store, an unreachable
//! server at start, and a server that goes away while running.

mod harness;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::postgres::{Backend, PgCluster};
use harness::{config_text, pushbridge, token, Gateway};
use serde_json::Value;

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A fresh PostgreSQL cluster, one gateway on it (in a temporary
/// directory, kept while the test runs) and a line client of it; `None`
/// when PostgreSQL is not installed (outside CI). Dropped in reverse order:
/// the client, the gateway, its directory, then the cluster.
async fn gateway_on_postgres() -> Option<(PgCluster, tempfile::TempDir, Gateway, harness::Client)> {
    let b = Backend::postgres()?;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &b.config(dir.path(), "", ""));
    let Backend::Postgres(pg) = b else {
        unreachable!("Backend::postgres is PostgreSQL")
    };
    let c = gw.client().await;
    Some((pg, dir, gw, c))
}

#[test]
fn migrations_run_once_under_the_lock_and_check_reports_them() {
    let Some(b) = Backend::postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &b.config(dir.path(), "", ""));
    // Before any start: nothing applied, every migration pending.
    let (ok, out, err) = pushbridge(&["check", "--config", &config]);
    assert!(ok, "{err}");
    assert!(out.contains("schema: version 0, 3 migration(s) pending"), "{out}");
    assert!(out.contains("(PostgreSQL"), "{out}");

    // Four CLI processes open (and migrate) the store at the same time:
    // the advisory lock serializes them, exactly one migrates (all three
    // migrations), none fails.
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_pushbridge"))
                .args(["devices", "--config", &config, "list"])
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut migrated, mut migrators) = (0, 0);
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let n = err.matches("PostgreSQL schema migrated").count();
        migrated += n;
        migrators += usize::from(n > 0);
    }
    assert_eq!((migrated, migrators), (3, 1), "one process applies every migration");
    let (ok, out, _) = pushbridge(&["check", "--config", &config]);
    assert!(ok);
    assert!(out.contains("schema: version 3 (up to date)"), "{out}");
    // A gateway starting on the migrated database does nothing to it.
    let gw = Gateway::start(dir.path(), &std::fs::read_to_string(&config).unwrap());
    let (status, logs) = gw.stop_with_logs();
    assert!(status.success(), "{logs}");
    assert!(!logs.contains("schema migrated"), "{logs}");
}

/// The key columns migration 3 gives byte order (`COLLATE "C"`), as
/// `table.column`, sorted.
const KEY_COLUMNS: &str = "adapter_state.key,adapter_state.namespace,devices.token,devices.topic,\
devices.user_id,mutes.conversation,mutes.user_id,outbox.conversation,outbox.token,outbox.topic,\
outbox.user_id,presence.user_id,quiet_hours.user_id,unread.user_id";

/// The columns of our tables with collation "C", as [`KEY_COLUMNS`].
fn byte_order_columns(pg: &PgCluster) -> String {
    pg.psql(
        "SELECT coalesce(string_agg(table_name || '.' || column_name, ',' ORDER BY table_name, column_name), '') \
         FROM information_schema.columns WHERE table_schema = 'public' AND collation_name = 'C'",
    )
}

#[test]
fn migration_3_gives_a_populated_database_byte_order_keys_and_keeps_its_rows() {
    let Some(b) = Backend::postgres() else { return };
    let Backend::Postgres(pg) = &b else {
        unreachable!("Backend::postgres is PostgreSQL")
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &b.config(dir.path(), "", ""));
    let devices = |args: &[&str]| pushbridge(&[&["devices", "--config", config.as_str()], args].concat());
    assert!(devices(&["add", "line:adam", &token(1)]).0);
    assert!(devices(&["add", "line:Zoe", &token(2)]).0);
    assert_eq!(byte_order_columns(pg), KEY_COLUMNS);

    // Back to a version-2 database whose key columns have a language's
    // collation (ICU's English, where "adam" sorts before "Zoe"), the rows
    // kept.
    let undo: String = KEY_COLUMNS
        .split(',')
        .map(|c| {
            let (table, column) = c.split_once('.').unwrap();
            format!("ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT COLLATE \"en-x-icu\"; ")
        })
        .collect();
    pg.psql(&format!("{undo} DELETE FROM pushbridge_schema WHERE version = 3"));
    assert_eq!(byte_order_columns(pg), "");
    let (ok, out, err) = pushbridge(&["check", "--config", &config]);
    assert!(ok, "{err}");
    assert!(out.contains("schema: version 2, 1 migration(s) pending"), "{out}");

    // A gateway of the old version is running (heartbeating): migrating
    // under it would break its prepared statements, so nothing is done.
    let live = pg.psql(
        "WITH g AS (INSERT INTO gateways (started, heartbeat) VALUES (now(), clock_timestamp()) RETURNING id) \
         SELECT id FROM g",
    );
    let (ok, _, err) = devices(&["list"]);
    assert!(!ok, "migrated under a live gateway");
    assert!(
        err.contains(&format!("gateway(s) {live} heartbeat")) && err.contains("stop every gateway first"),
        "{err}"
    );
    assert_eq!(byte_order_columns(pg), "", "migrated under a live gateway");
    // Once it stopped (its heartbeat a lease old), the next start applies
    // migration 3 to the populated tables.
    pg.psql(&format!(
        "UPDATE gateways SET heartbeat = clock_timestamp() - interval '1 hour' WHERE id = {live}"
    ));
    let (ok, out, err) = devices(&["list"]);
    assert!(ok, "{err}");
    assert_eq!(byte_order_columns(pg), KEY_COLUMNS);
    // Both devices kept, in byte order ('Z' before 'a'), as with SQLite.
    let users: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(users, ["line:Zoe", "line:adam"], "{out}");
}

#[test]
fn a_store_with_both_path_and_url_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", "").replace(
        "[store]\n",
        "[store]\nurl = \"postgres://pushbridge@127.0.0.1:5432/pushbridge\"\n",
    );
    let config = write_config(dir.path(), &text);
    let (ok, _, err) = pushbridge(&["check", "--config", &config]);
    assert!(!ok);
    assert!(err.contains("`path`") && err.contains("`url`"), "{err}");
    let text = config_text(dir.path(), "", "").replace("[store]\n", "[store]\npassword_file = \"pw\"\n");
    let (ok, _, err) = pushbridge(&["check", "--config", &write_config(dir.path(), &text)]);
    assert!(!ok && err.contains("password_file"), "{err}");
}

#[test]
fn an_unreachable_database_at_start_names_host_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let text = config_text(dir.path(), "", "").replace(
        &format!("path = {:?}\n", dir.path().join("pushbridge.db").display().to_string()),
        &format!("url = \"postgres://pushbridge:hunter2@127.0.0.1:{port}/pushbridge\"\n"),
    );
    let config = write_config(dir.path(), &text);
    let (ok, _, err) = pushbridge(&["run", "--config", &config]);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "password in the output: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_answers_unavailable_and_recovers() {
    let Some((pg, _dir, gw, mut c)) = gateway_on_postgres().await else {
        return;
    };
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    for i in 0..5 {
        assert_eq!(c.cmd(&format!("MSG bob alice before {i}")).await, "OK 1");
    }
    gw.wait_pushes(5);

    pg.stop_now();
    let reply = c.cmd("MSG bob alice during").await;
    assert!(reply.starts_with("ERR unavailable"), "{reply}");

    pg.restart();
    // Reconnects within the backoff (at most 5 s between attempts).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        let reply = c.cmd(&format!("MSG bob alice after {n}")).await;
        if reply == "OK 1" {
            break;
        }
        assert!(reply.starts_with("ERR unavailable"), "{reply}");
        assert!(Instant::now() < deadline, "no recovery:\n{}", gw.logs());
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p = gw.wait_pushes(6);
    let bodies: Vec<&str> = p
        .iter()
        .map(|p| p["payload"]["aps"]["alert"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        &bodies[..5],
        ["before 0", "before 1", "before 2", "before 3", "before 4"]
    );
    assert_eq!(bodies[5], format!("after {n}"));
    // The badge went on from the committed counter: 5 before, the refused
    // one not counted.
    assert_eq!(p[5]["payload"]["aps"]["badge"], 6);
    gw.assert_pushes_stay(6);
    pg.wait_for("SELECT count(*) FROM outbox", "0");
    let logs = gw.logs();
    assert!(logs.contains("reconnected to PostgreSQL"), "{logs}");
    // Every refused batch and every refill met the same error, but the
    // outage is one ERROR per place (each logs again only after a minute),
    // and its end one line.
    let errors = |what: &str| logs.lines().filter(|l| l.contains("ERROR") && l.contains(what)).count();
    // The refused "during" message makes at least one failed transaction.
    assert_eq!(errors("store transaction failed"), 1, "{logs}");
    assert!(errors("cannot load the outbox") <= 1, "{logs}");
    assert_eq!(logs.matches("store transactions commit again").count(), 1, "{logs}");
}

/// The store's connection ends in the middle of a batch (the server
/// terminates it while the batch's outbox insert runs): that batch's
/// message is refused and nothing of it stays (no row, no counter); the
/// store reconnects and the next message is accepted; what was accepted
/// before is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_in_the_middle_of_a_batch_refuses_it_and_reconnects() {
    let Some((pg, _dir, gw, mut c)) = gateway_on_postgres().await else {
        return;
    };
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    assert_eq!(c.cmd(&format!("REGISTER slow {}", token(2))).await, "OK");
    assert_eq!(c.cmd("MSG bob alice before").await, "OK 1");
    gw.wait_pushes(1);
    // The outbox insert for slow's device waits in the server, inside the
    // batch's transaction, until the test ends the connection.
    pg.psql(&format!(
        "CREATE FUNCTION linger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$;
         CREATE TRIGGER linger BEFORE INSERT ON outbox FOR EACH ROW
            WHEN (NEW.token = '{}') EXECUTE FUNCTION linger()",
        token(2)
    ));
    let mut stuck = gw.client().await;
    let reply = tokio::spawn(async move { stuck.cmd("MSG bob slow cut off").await });
    pg.wait_for(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
        "1",
    );
    assert_eq!(
        pg.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"),
        "1"
    );
    let reply = reply.await.unwrap();
    assert!(reply.starts_with("ERR unavailable"), "{reply}");
    pg.psql("DROP TRIGGER linger ON outbox");
    assert_eq!(
        pg.psql("SELECT count(*) FROM unread WHERE count > 0 AND user_id LIKE '%slow'"),
        "0"
    );

    // Reconnects (0.1 s doubling to 5 s between attempts).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = c.cmd("MSG bob slow after").await;
        if reply == "OK 1" {
            break;
        }
        assert!(reply.starts_with("ERR unavailable"), "{reply}");
        assert!(Instant::now() < deadline, "no recovery:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p = gw.wait_pushes(2);
    let got: Vec<(&str, &Value)> = p
        .iter()
        .map(|p| {
            let aps = &p["payload"]["aps"];
            (aps["alert"]["body"].as_str().unwrap(), &aps["badge"])
        })
        .collect();
    // The cut-off message was not counted: "after" is slow's first.
    assert_eq!(got, [("before", &Value::from(1)), ("after", &Value::from(1))]);
    gw.assert_pushes_stay(2);
    pg.wait_for("SELECT count(*) FROM outbox", "0");
    assert!(gw.logs().contains("reconnected to PostgreSQL"), "{}", gw.logs());
}

/// A column changed under a running gateway (by hand: migrations refuse
/// to run under one) makes PostgreSQL refuse the statements the store
/// prepared before ("cached plan must not change result type"): the store
/// prepares them again, so at most the batch that met the change is
/// refused, not every batch until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_before_a_column_changed_are_prepared_again() {
    let Some((pg, _dir, gw, mut c)) = gateway_on_postgres().await else {
        return;
    };
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    assert_eq!(c.cmd("MSG bob alice before").await, "OK 1");
    // The devices' user column, which the prepared device lookup returns,
    // gets another collation.
    pg.psql("ALTER TABLE devices ALTER COLUMN user_id TYPE TEXT COLLATE \"en-x-icu\"");
    let mut replies = Vec::new();
    for i in 0..3 {
        let reply = c.cmd(&format!("MSG bob alice after {i}")).await;
        let ok = reply == "OK 1";
        replies.push(reply);
        if ok {
            break;
        }
    }
    assert_eq!(
        replies.last().map(String::as_str),
        Some("OK 1"),
        "{replies:?}\n{}",
        gw.logs()
    );
    assert!(replies.len() <= 2, "more than the first batch refused: {replies:?}");
    gw.wait_pushes(2);
}

/// The statements a batch writes at COMMIT go out in one pipeline; when
/// one of them fails, the pipelined COMMIT only rolls back (it answers
/// `ROLLBACK`, not an error). The message must then be refused, not
/// answered `OK` for a notification that was never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_failing_in_the_commit_pipeline_refuses_the_batch() {
    let Some((pg, _dir, gw, mut c)) = gateway_on_postgres().await else {
        return;
    };
    assert_eq!(c.cmd(&format!("REGISTER doomed {}", token(1))).await, "OK");
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(2))).await, "OK");
    // Fails the outbox insert of COMMIT's pipeline for one device (the
    // counter was already incremented by the prefetch's pipeline).
    pg.psql(&format!(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW
            WHEN (NEW.token = '{}') EXECUTE FUNCTION refuse()",
        token(1)
    ));
    let reply = c.cmd("MSG bob doomed lost").await;
    assert!(reply.starts_with("ERR"), "{reply}");
    assert_eq!(pg.outbox_len(), 0, "a refused message left a row");
    assert_eq!(pg.psql("SELECT count(*) FROM unread WHERE count > 0"), "0");
    // Another user's message in a later batch commits.
    assert_eq!(c.cmd("MSG bob alice fine").await, "OK 1");

    pg.psql("DROP TRIGGER refuse ON outbox");
    assert_eq!(c.cmd("MSG bob doomed again").await, "OK 1");
    let p = gw.wait_pushes(2);
    let mut got: Vec<(&str, &Value)> = p
        .iter()
        .map(|p| {
            let aps = &p["payload"]["aps"];
            (aps["alert"]["body"].as_str().unwrap(), &aps["badge"])
        })
        .collect();
    // Two devices: their pushes may arrive in either order.
    got.sort_by_key(|(body, _)| *body);
    // The refused message did not count: "again" is doomed's first.
    assert_eq!(got, [("again", &Value::from(1)), ("fine", &Value::from(1))]);
    gw.assert_pushes_stay(2);
}

/// A gateway whose sink stopped (here: its log output cannot be opened)
/// sends nothing more for that app until it restarts, while it stays alive
/// and keeps accepting messages: it hands those notifications to the other
/// gateways sharing the store, which send them (a live gateway's claims
/// are otherwise never taken over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_sink_stopped_hands_its_notifications_to_another() {
    let Some(b) = Backend::postgres() else { return };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A long lease: A stays alive (heartbeating) throughout.
    let long = |text: String| text.replace("lease = 2\n", "lease = 300\n");
    let gw_b = Gateway::start(dir_b.path(), &long(b.config(dir_b.path(), "", "")));
    let output = dir_a.path().join("pushes.jsonl").display().to_string();
    let text_a = long(b.config(dir_a.path(), "", "")).replace(&output, "/nonexistent/pushbridge/pushes.jsonl");
    assert!(
        text_a.contains("lease = 300") && text_a.contains("/nonexistent/"),
        "{text_a}"
    );
    let gw_a = Gateway::start(dir_a.path(), &text_a);
    let mut ca = gw_a.client().await;
    assert_eq!(ca.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    for i in 0..10 {
        assert_eq!(ca.cmd(&format!("MSG bob alice held{i}")).await, "OK 1");
    }
    let pushes = gw_b.wait_pushes(10);
    let mut bodies: Vec<&str> = pushes
        .iter()
        .map(|p| p["payload"]["aps"]["alert"]["body"].as_str().unwrap())
        .collect();
    bodies.sort();
    let want: Vec<String> = (0..10).map(|i| format!("held{i}")).collect();
    assert_eq!(bodies, want);
    gw_b.assert_pushes_stay(10);
    let Backend::Postgres(pg) = &b else { unreachable!() };
    pg.wait_for("SELECT count(*) FROM outbox", "0");
    let (status, logs) = gw_a.stop_with_logs();
    assert!(status.success(), "{logs}");
    assert!(
        logs.contains("sink stopped") && logs.contains("released to the other gateways"),
        "{logs}"
    );
}

/// The outbox is a queue: nearly empty, yet full of dead rows until a
/// vacuum. The store's statements reach its rows by index; a sequential
/// scan per batch (the plan PostgreSQL caches for a small table) reads
/// every dead row and slows each batch down as the table grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_reach_outbox_rows_by_index_not_by_scanning_the_table() {
    let Some(b) = Backend::postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}\n[admin]\nlisten = \"127.0.0.1:0\"\n", b.config(dir.path(), "", ""));
    let gw = Gateway::start(dir.path(), &text);
    let Backend::Postgres(pg) = &b else { unreachable!() };
    let mut c = gw.client().await;
    assert_eq!(c.cmd(&format!("REGISTER alice {}", token(1))).await, "OK");
    // Bursts: each batch's outbox delete carries many ids (the shape of a
    // busy gateway, where PostgreSQL's cached plan was a table scan).
    const BURSTS: usize = 40;
    const BURST: usize = 50;
    const N: usize = BURSTS * BURST;
    for b in 0..BURSTS {
        let lines: Vec<String> = (0..BURST).map(|i| format!("MSG bob alice m{b}.{i}")).collect();
        c.pipeline(&lines, "OK 1").await;
        gw.wait_pushes((b + 1) * BURST);
    }
    // Table statistics reach the view within a second or so.
    pg.wait_for(
        &format!("SELECT n_tup_del >= {N} FROM pg_stat_user_tables WHERE relname = 'outbox'"),
        "t",
    );
    let scans: usize = pg
        .psql("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'outbox'")
        .parse()
        .unwrap();
    assert!(scans < 20, "{scans} sequential scans of the outbox for {BURSTS} bursts");
    // The outbox's depth per app, read whole (with sequential scans
    // allowed for that statement), as `status` shows it.
    let (ok, out, err) = pushbridge(&["status", "--admin", &gw.admin_url()]);
    assert!(ok, "{err}");
    assert!(out.contains("outbox empty"), "{out}");
}

/// Counting the outbox for `/metrics`, `/readyz` and `status` is O(rows).
/// It runs in a session of its own (`application_name` `pushbridge stats`),
/// never in the store's, whose transactions would all wait behind it; that
/// session is made again after the server restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_counted_in_a_session_of_its_own() {
    let Some(b) = Backend::postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}\n[admin]\nlisten = \"127.0.0.1:0\"\n", b.config(dir.path(), "", ""));
    let gw = Gateway::start(dir.path(), &text);
    let Backend::Postgres(pg) = &b else { unreachable!() };
    // Rows of an app this gateway has no sink for stay in the outbox.
    pg.psql(
        "INSERT INTO outbox (topic, token, environment, payload, expiration, priority, created_ms) \
         SELECT 'com.example.other', lpad(to_hex(i), 64, '0'), 'production', '{}', 0, 10, 1000 * i \
         FROM generate_series(1, 3) i",
    );
    let depth = "pushbridge_outbox_notifications{app=\"com.example.other\"}";
    let counted_by = || {
        pg.psql(
            "SELECT string_agg(application_name, ',') FROM pg_stat_activity \
             WHERE query LIKE 'SELECT topic, count(*), min(created_ms) FROM outbox%' AND pid <> pg_backend_pid()",
        )
    };
    wait_sample(&gw, depth, 3.0).await;
    assert_eq!(counted_by(), "pushbridge stats");

    pg.stop_now();
    pg.restart();
    // A fourth row: a depth of 4 is a count made after the restart (3 may
    // be the count kept from before), by a session made again.
    pg.psql(
        "INSERT INTO outbox (topic, token, environment, payload, expiration, priority, created_ms) \
         VALUES ('com.example.other', lpad('4', 64, '0'), 'production', '{}', 0, 10, 4000)",
    );
    wait_sample(&gw, depth, 4.0).await;
    assert_eq!(counted_by(), "pushbridge stats");
}

/// Scrape `/metrics` until `name_and_labels` reads `want` (within 30 s).
async fn wait_sample(gw: &Gateway, name_and_labels: &str, want: f64) {
    let metrics = format!("{}/metrics", gw.admin_url());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, scrape) = harness::admin::get(&metrics).await;
        if code == 200 && harness::admin::sample(&scrape, name_and_labels) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {name_and_labels} {want} in\n{scrape}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
