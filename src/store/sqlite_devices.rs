//! The SQLite registry of devices, and the store thread's copy of the
//! devices it read last ([`DeviceCache`]).
//!
//! Every message reads its user's devices; on a busy gateway the same
//! users come back again and again, and reading them from SQLite (a
//! statement, three strings a row, the token's hex decoded) cost about a
//! sixth of the store thread's time in the end-to-end benchmark. The copy
//! holds the devices of up to [`MAX_CACHED_USERS`] users and
//! [`MAX_CACHED_DEVICES`] devices (emptied when full). What may have
//! changed under it is forgotten: the users a change through this
//! connection concerns (a registration: the user and the device's previous
//! owner; an unregistration; a removal after an APNS refusal: the owner);
//! everything after a failed commit or a rollback (it may have read what
//! it changed), and after a change committed by another connection (the
//! CLI's `devices add` while the gateway runs), which SQLite's `PRAGMA
//! data_version` reveals at the start of each transaction. Only a
//! transaction of [`SqliteDb::begin`] uses the copy.

use std::collections::HashMap;

use pushbridge_api::{DeviceToken, Environment, UserId};
use rusqlite::{params, OptionalExtension};

use super::db::{parse_env, parse_token, DeviceRow, SqliteDb, StoreError};

/// Users whose devices [`DeviceCache`] holds at most (it is emptied when
/// full).
pub(super) const MAX_CACHED_USERS: usize = 16_384;
/// Devices it holds at most, over all users (about 100 bytes each: under
/// 2 MB).
pub(super) const MAX_CACHED_DEVICES: usize = 16_384;

/// One user's devices, for the CLI (through the `devices_of_user` index).
pub(super) const ONE_USERS_DEVICES: &str = "SELECT user, token, topic, environment, added_ms FROM devices
     WHERE user = ?1 ORDER BY added_ms, token";
/// One user's devices for a message: (token, topic, environment) in
/// registration order, from the `devices_of_user` index alone.
pub(super) const DEVICES_OF: &str =
    "SELECT token, topic, environment FROM devices WHERE user = ?1 ORDER BY added_ms, token";
/// Every device, for the CLI (`?1` is NULL).
pub(super) const EVERY_DEVICE: &str = "SELECT user, token, topic, environment, added_ms FROM devices
     WHERE ?1 IS NULL ORDER BY user, added_ms, token";

/// A user's devices as read: (token, topic, environment), in
/// registration order.
type Devices = Vec<(DeviceToken, String, Environment)>;

/// The devices of the users read last (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct DeviceCache {
    users: HashMap<String, Devices>,
    /// Devices in `users`, over all users.
    devices: usize,
}

impl DeviceCache {
    fn get(&self, user: &str) -> Option<&Devices> {
        self.users.get(user)
    }

    fn keep(&mut self, user: &str, devices: &Devices) {
        if self.users.len() >= MAX_CACHED_USERS || self.devices + devices.len() > MAX_CACHED_DEVICES {
            self.clear();
        }
        self.devices += devices.len();
        if let Some(old) = self.users.insert(user.to_owned(), devices.clone()) {
            self.devices -= old.len();
        }
    }

    fn forget(&mut self, user: &str) {
        if let Some(old) = self.users.remove(user) {
            self.devices -= old.len();
        }
    }

    /// Forget every user's devices.
    pub(super) fn clear(&mut self) {
        self.users.clear();
        self.devices = 0;
    }

    /// How many users' devices it holds (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.users.len()
    }
}

impl SqliteDb {
    /// Forget the cached devices and unread counters if another
    /// connection committed since this one last looked (`PRAGMA
    /// data_version`, which only other connections' commits change).
    /// Called right after `BEGIN IMMEDIATE`: no other connection commits
    /// until this transaction ends.
    pub(super) fn forget_if_changed_elsewhere(&self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn_beside_outbox()
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if self.data_version.replace(Some(version)) != Some(version) {
            self.forget_cached();
        }
        Ok(())
    }

    /// Forget the cached devices of the user who owns `token` for `topic`
    /// (one indexed read; token + topic are unique).
    fn forget_owner(&self, token: &DeviceToken, topic: &str) -> Result<(), StoreError> {
        let owner: Option<String> = self
            .conn_beside_outbox()
            .prepare_cached("SELECT user FROM devices WHERE token = ?1 AND topic = ?2")?
            .query_row(params![token.as_str(), topic], |r| r.get(0))
            .optional()?;
        if let Some(owner) = owner {
            self.devices.borrow_mut().forget(&owner);
        }
        Ok(())
    }

    /// Add a device, or move it (token + topic are unique) to `user`.
    pub fn register(
        &self,
        user: &UserId,
        token: &DeviceToken,
        topic: &str,
        env: Environment,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // It may move the device from another user: both forget it.
        self.forget_owner(token, topic)?;
        self.devices.borrow_mut().forget(user.as_str());
        self.conn_beside_outbox()
            .prepare_cached(
                "INSERT INTO devices (token, topic, user, environment, added_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (token, topic) DO UPDATE SET
                   user = excluded.user, environment = excluded.environment,
                   added_ms = excluded.added_ms",
            )?
            .execute(params![token.as_str(), topic, user.as_str(), env.as_str(), now_ms])?;
        Ok(())
    }

    /// Remove a user's device (every topic). Returns how many rows went.
    pub fn unregister(&self, user: &UserId, token: &DeviceToken) -> Result<usize, StoreError> {
        self.devices.borrow_mut().forget(user.as_str());
        Ok(self
            .conn_beside_outbox()
            .prepare_cached("DELETE FROM devices WHERE user = ?1 AND token = ?2")?
            .execute(params![user.as_str(), token.as_str()])?)
    }

    /// Remove a device APNS reported invalid; with `since_ms`, only when it
    /// was (re)registered before then.
    pub fn remove_device(&self, token: &DeviceToken, topic: &str, since_ms: Option<i64>) -> Result<bool, StoreError> {
        self.forget_owner(token, topic)?;
        let n = self
            .conn_beside_outbox()
            .prepare_cached(
                "DELETE FROM devices WHERE token = ?1 AND topic = ?2
                 AND (?3 IS NULL OR added_ms < ?3)",
            )?
            .execute(params![token.as_str(), topic, since_ms])?;
        Ok(n > 0)
    }

    /// A user's devices: (token, topic, environment).
    pub fn devices_of(&self, user: &UserId) -> Result<Vec<(DeviceToken, String, Environment)>, StoreError> {
        let cached = self.in_tx.get();
        if let Some(devices) = self.devices.borrow().get(user.as_str()).filter(|_| cached) {
            return Ok(devices.to_vec());
        }
        let mut stmt = self.conn_beside_outbox().prepare_cached(DEVICES_OF)?;
        let rows = stmt.query_map([user.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (token, topic, env) = row?;
            out.push((parse_token(&token)?, topic, parse_env(&env)?));
        }
        if cached {
            self.devices.borrow_mut().keep(user.as_str(), &out);
        }
        Ok(out)
    }

    /// Every device, optionally of one user (the CLI). One user's are
    /// read through the `devices_of_user` index (a query that also served
    /// "every user" would scan the whole registry).
    pub fn all_devices(&self, user: Option<&str>) -> Result<Vec<DeviceRow>, StoreError> {
        let mut stmt = self.conn_beside_outbox().prepare(match user {
            Some(_) => ONE_USERS_DEVICES,
            None => EVERY_DEVICE,
        })?;
        let rows = stmt.query_map([user], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (user, token, topic, env, added_ms) = row?;
            out.push(DeviceRow {
                user,
                token: parse_token(&token)?,
                topic,
                environment: parse_env(&env)?,
                added_ms,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;

    fn token(c: char) -> DeviceToken {
        DeviceToken::parse(&c.to_string().repeat(64)).unwrap()
    }

    fn user(name: &str) -> UserId {
        UserId::parse(&format!("line:{name}")).unwrap()
    }

    fn tokens(db: &SqliteDb, u: &UserId) -> Vec<DeviceToken> {
        db.devices_of(u).unwrap().into_iter().map(|(t, _, _)| t).collect()
    }

    fn open(path: &std::path::Path) -> SqliteDb {
        SqliteDb::open(path, Synchronous::Normal).unwrap()
    }

    #[test]
    fn a_read_is_kept_and_forgotten_when_this_connection_changes_devices() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("t.db"));
        let (alice, bob) = (user("alice"), user("bob"));
        db.register(&alice, &token('a'), "t", Environment::Production, 1)
            .unwrap();
        assert_eq!(tokens(&db, &alice), [token('a')]);
        assert_eq!(db.devices.borrow().len(), 0, "outside a transaction: read, not kept");
        db.begin().unwrap();
        assert_eq!(tokens(&db, &alice), [token('a')]);
        assert_eq!(tokens(&db, &bob), []);
        assert_eq!(db.devices.borrow().len(), 2, "both reads kept, also an empty one");
        // The device moves to bob: alice's copy must go too.
        db.register(&bob, &token('a'), "t", Environment::Production, 2).unwrap();
        assert_eq!(tokens(&db, &alice), []);
        assert_eq!(tokens(&db, &bob), [token('a')]);
        db.register(&bob, &token('b'), "t", Environment::Sandbox, 3).unwrap();
        assert_eq!(tokens(&db, &bob), [token('a'), token('b')]);
        assert_eq!(db.unregister(&bob, &token('a')).unwrap(), 1);
        assert_eq!(tokens(&db, &bob), [token('b')]);
        assert!(db.remove_device(&token('b'), "t", None).unwrap());
        assert_eq!(tokens(&db, &bob), []);
        db.commit().unwrap();
    }

    #[test]
    fn a_rolled_back_registration_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("t.db"));
        let alice = user("alice");
        db.begin().unwrap();
        db.register(&alice, &token('a'), "t", Environment::Production, 1)
            .unwrap();
        assert_eq!(tokens(&db, &alice), [token('a')], "seen inside its transaction");
        db.rollback();
        assert_eq!(tokens(&db, &alice), []);
    }

    #[test]
    fn a_change_committed_by_another_connection_is_seen_at_the_next_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (gateway, cli) = (open(&path), open(&path));
        let alice = user("alice");
        gateway
            .register(&alice, &token('a'), "t", Environment::Production, 1)
            .unwrap();
        assert_eq!(tokens(&gateway, &alice), [token('a')]);
        // `devices add` from the CLI while the gateway runs.
        cli.register(&alice, &token('b'), "t", Environment::Production, 2)
            .unwrap();
        gateway.begin().unwrap();
        assert_eq!(tokens(&gateway, &alice), [token('a'), token('b')]);
        gateway.commit().unwrap();
        // Nothing changed elsewhere since: the copy is used again.
        gateway.begin().unwrap();
        assert_eq!(gateway.devices.borrow().len(), 1);
        gateway.commit().unwrap();
    }

    #[test]
    fn the_copy_holds_a_bounded_number_of_users_and_devices() {
        let mut cache = DeviceCache::default();
        for i in 0..MAX_CACHED_USERS + 10 {
            cache.keep(&format!("line:u{i}"), &Vec::new());
            assert!(cache.len() <= MAX_CACHED_USERS);
        }
        assert!(cache.get(&format!("line:u{}", MAX_CACHED_USERS + 9)).is_some());
        let ten: Devices = (0..10)
            .map(|i| (token(char::from(b'0' + i)), "t".to_owned(), Environment::Production))
            .collect();
        cache.clear();
        for i in 0..MAX_CACHED_DEVICES {
            cache.keep(&format!("line:d{i}"), &ten);
            assert!(cache.devices <= MAX_CACHED_DEVICES, "{}", cache.devices);
            assert_eq!(cache.devices, cache.users.values().map(Vec::len).sum::<usize>());
        }
        cache.forget("line:nobody");
        let some = cache.users.keys().next().cloned().unwrap();
        cache.forget(&some);
        assert_eq!(cache.devices, cache.users.values().map(Vec::len).sum::<usize>());
    }
}
