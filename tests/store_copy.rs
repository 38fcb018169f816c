//! `pushbridge store copy` against a real SQLite file and a real
//! PostgreSQL cluster: SQLite → PostgreSQL → SQLite keeps every row of
//! every table; a non-empty target is refused without `--force`; a copy
//! that fails midway leaves the target as it was.

mod harness;

use std::path::Path;

use harness::postgres::Backend;
use harness::{config_text, pushbridge, token};

/// Outbox rows in the populated store (more than one chunk, and enough for
/// the progress bar).
const OUTBOX_ROWS: i64 = 25_000;

/// A SQLite store at `dir/pushbridge.db` created (and migrated) by
/// pushbridge, then filled with rows of every table, NULLs and non-ASCII
/// text included.
fn populate(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text(dir, "", "")).unwrap();
    let (ok, _, err) = pushbridge(&["devices", "--config", config.to_str().unwrap(), "list"]);
    assert!(ok, "{err}");
    let path = dir.join("pushbridge.db");
    let mut db = rusqlite::Connection::open(&path).unwrap();
    let tx = db.transaction().unwrap();
    for u in 0..50 {
        tx.execute(
            "INSERT INTO devices (token, topic, user, environment, added_ms) VALUES (?1, 'com.example.chat', ?2, ?3, ?4)",
            rusqlite::params![token(u), format!("line:usér{u}"), if u % 2 == 0 { "production" } else { "sandbox" }, 1_700_000_000_000i64 + u as i64],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO unread (user, count) VALUES (?1, ?2)",
            rusqlite::params![format!("line:usér{u}"), u as i64 + 1],
        )
        .unwrap();
    }
    for i in 0..OUTBOX_ROWS {
        let waiting = i % 1000 == 0;
        tx.execute(
            "INSERT INTO outbox (id, topic, token, environment, payload, expiration, priority, collapse_id, created_ms,
                user, conversation, parts, not_before_ms)
             VALUES (?1, 'com.example.chat', ?2, 'production', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            rusqlite::params![
                100 + i * 3,
                token(i as u64 % 50),
                if waiting {
                    String::new()
                } else {
                    format!("{{\"aps\":{{\"alert\":\"n° {i} 😀\"}}}}")
                },
                1_800_000_000 + i,
                if i % 2 == 0 { 10 } else { 5 },
                (i % 3 == 0).then(|| format!("c{i}")),
                1_700_000_000_000i64 + i,
                waiting.then(|| "line:usér1".to_owned()),
                waiting.then(|| "bob".to_owned()),
                waiting.then(
                    || r#"{"from":"bob","text":"hi","thread":null,"badge":null,"count":2,"muted":false}"#.to_owned()
                ),
                if waiting { 1_900_000_000_000i64 } else { 0 },
            ],
        )
        .unwrap();
    }
    tx.execute_batch(
        "INSERT INTO adapter_state VALUES ('xmpp', 'node:1', '{\"jid\":\"a@b\"}'), ('irc', 'nick', 'pushbot');
         INSERT INTO mutes VALUES ('line:usér1', 'bob', NULL), ('line:usér2', '#chat', 1900000000000);
         INSERT INTO quiet_hours VALUES ('line:usér3', 1320, 420, 'Europe/Berlin');",
    )
    .unwrap();
    tx.commit().unwrap();
    path
}

/// Every row of every table, as text, in key order.
fn dump(path: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut out = Vec::new();
    for (table, order) in [
        ("devices", "token, topic"),
        ("unread", "user"),
        ("outbox", "id"),
        ("adapter_state", "namespace, key"),
        ("mutes", "user, conversation"),
        ("quiet_hours", "user"),
    ] {
        let mut stmt = db.prepare(&format!("SELECT * FROM {table} ORDER BY {order}")).unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect();
                Ok(format!("{table}: {}", cells.join(" | ")))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

#[test]
fn sqlite_to_postgres_and_back_keeps_every_row() {
    let Some(b) = Backend::postgres() else { return };
    let Backend::Postgres(pg) = &b else { unreachable!() };
    let dir = tempfile::tempdir().unwrap();
    let source = populate(dir.path());
    let before = dump(&source);
    assert_eq!(before.len() as i64, 50 + 50 + OUTBOX_ROWS + 2 + 2 + 1);
    let url = pg.url();

    let (ok, out, err) = pushbridge(&["store", "copy", "--from", source.to_str().unwrap(), "--to", &url]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("outbox: {OUTBOX_ROWS}")) && out.contains("devices: 50"),
        "{out}"
    );
    assert!(
        err.contains(&format!("{OUTBOX_ROWS}/{OUTBOX_ROWS}")),
        "a progress bar: {err}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM outbox"), OUTBOX_ROWS.to_string());
    assert_eq!(pg.psql("SELECT count(*) FROM outbox WHERE not_before_ms > 0"), "25");
    assert_eq!(pg.psql("SELECT count FROM unread WHERE user_id = 'line:usér9'"), "10");
    // New outbox ids continue above the copied ones.
    let max_id = 100 + (OUTBOX_ROWS - 1) * 3;
    let next: i64 = pg.psql("SELECT nextval('outbox_id_seq')").parse().unwrap();
    assert!(next > max_id, "{next} <= {max_id}");

    // A non-empty target is refused, and left alone.
    let (ok, _, err) = pushbridge(&["store", "copy", "--from", source.to_str().unwrap(), "--to", &url]);
    assert!(!ok && err.contains("not empty") && err.contains("--force"), "{err}");
    assert_eq!(pg.psql("SELECT count(*) FROM devices"), "50");

    let back = dir.path().join("back.db");
    let (ok, out, err) = pushbridge(&["store", "copy", "--from", &url, "--to", back.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("quiet_hours: 1"), "{out}");
    assert_eq!(dump(&back), before, "the round trip changed rows");

    // --force replaces what the target holds.
    let (ok, _, err) = pushbridge(&[
        "store",
        "copy",
        "--from",
        &url,
        "--to",
        back.to_str().unwrap(),
        "--force",
    ]);
    assert!(ok, "{err}");
    assert_eq!(dump(&back), before);
    let (ok, _, err) = pushbridge(&["store", "copy", "--from", "/nonexistent/x.db", "--to", &url]);
    assert!(!ok && err.contains("/nonexistent/x.db"), "{err}");
}

#[test]
fn a_copy_failing_midway_leaves_the_postgresql_target_as_it_was() {
    let Some(b) = Backend::postgres() else { return };
    let Backend::Postgres(pg) = &b else { unreachable!() };
    let dir = tempfile::tempdir().unwrap();
    let source = populate(dir.path());
    let url = pg.url();
    let copy = |force: bool| {
        let mut args = vec!["store", "copy", "--from", source.to_str().unwrap(), "--to", &url];
        if force {
            args.push("--force");
        }
        pushbridge(&args)
    };
    let (ok, _, err) = copy(false);
    assert!(ok, "{err}");
    // The target now holds the copy; a forced copy whose writes fail after
    // the devices (refused by a trigger on the outbox) must not leave it
    // cleared or half filled.
    pg.psql(
        "DELETE FROM devices WHERE user_id <> 'line:usér0';
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION refuse()",
    );
    let (ok, _, err) = copy(true);
    assert!(!ok, "the copy should fail: {err}");
    assert!(err.contains("refused by the test"), "{err}");
    assert_eq!(pg.psql("SELECT count(*) FROM devices"), "1", "devices were replaced");
    assert_eq!(pg.psql("SELECT count(*) FROM unread"), "50");
    assert_eq!(pg.psql("SELECT count(*) FROM outbox"), OUTBOX_ROWS.to_string());
}
