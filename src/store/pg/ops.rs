//! PostgreSQL statements of [`PgDb`]: the same methods as the SQLite
//! backend, each answering from the transaction's caches when the batch
//! prefetched what it needs (see [`super::batch`]), else by a statement
//! run after the buffer is written.

use std::sync::Arc;

use pushbridge_api::settings::QuietHours;
use pushbridge_api::{DeviceToken, Environment, UserId};

use super::PgDb;
use crate::outcome::Notification;
use crate::store::coalesce::{corrupt, NewWaiting, Parts, Waiting};
use crate::store::db::{DeviceRow, NewNotification, StoreError};
use crate::store::settings::SettingsCache;

pub(super) fn parse_token(s: &str) -> Result<DeviceToken, StoreError> {
    DeviceToken::parse(s).map_err(|e| StoreError::Corrupt(format!("device token: {e}")))
}

pub(super) fn parse_env(s: &str) -> Result<Environment, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

/// The notification of an outbox row of app `app`: `id` in column 0, and
/// `token, environment, payload, expiration, priority, collapse_id,
/// created_ms` in the columns from `first` on (as the outbox table has
/// them). Errors: a token or environment the table should not hold.
pub(super) fn notification_from(
    r: &tokio_postgres::Row,
    first: usize,
    app: Arc<str>,
) -> Result<Notification, StoreError> {
    Ok(Notification {
        id: r.get(0),
        app,
        token: parse_token(r.get(first))?,
        environment: parse_env(r.get(first + 1))?,
        payload: r.get::<_, String>(first + 2).into(),
        expiration: r.get::<_, i64>(first + 3).max(0) as u64,
        priority: r.get::<_, i64>(first + 4).clamp(0, 255) as u8,
        collapse_id: r.get(first + 5),
        created_ms: r.get(first + 6),
        attempts: 0,
        redelivery: false,
    })
}

impl PgDb {
    /// The number of migrations applied.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        super::schema::current(&mut self.conn())
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
        let mut c = self.conn();
        c.tx.devices.clear();
        c.direct_exec(
            "INSERT INTO devices (token, topic, user_id, environment, added_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (token, topic) DO UPDATE SET user_id = excluded.user_id,
                environment = excluded.environment, added_ms = excluded.added_ms",
            &[&token.as_str(), &topic, &user.as_str(), &env.as_str(), &now_ms],
        )?;
        Ok(())
    }

    /// Remove a user's device (every topic); how many rows went.
    pub fn unregister(&self, user: &UserId, token: &DeviceToken) -> Result<usize, StoreError> {
        let mut c = self.conn();
        c.tx.devices.clear();
        let n = c.direct_exec(
            "DELETE FROM devices WHERE user_id = $1 AND token = $2",
            &[&user.as_str(), &token.as_str()],
        )?;
        Ok(n as usize)
    }

    /// Remove a device APNS reported invalid (for every gateway sharing
    /// the database); with `since_ms`, only when registered before then.
    pub fn remove_device(&self, token: &DeviceToken, topic: &str, since_ms: Option<i64>) -> Result<bool, StoreError> {
        let mut c = self.conn();
        c.tx.devices.clear();
        let n = c.direct_exec(
            "DELETE FROM devices WHERE token = $1 AND topic = $2 AND ($3::BIGINT IS NULL OR added_ms < $3)",
            &[&token.as_str(), &topic, &since_ms],
        )?;
        Ok(n > 0)
    }

    /// A user's devices: (token, topic, environment).
    pub fn devices_of(&self, user: &UserId) -> Result<Vec<(DeviceToken, String, Environment)>, StoreError> {
        if let Some(d) = self.cached_devices(user) {
            return Ok(d);
        }
        let rows = self.conn().direct(
            "SELECT token, topic, environment FROM devices WHERE user_id = $1 ORDER BY added_ms, token",
            &[&user.as_str()],
        )?;
        rows.iter()
            .map(|r| Ok((parse_token(r.get(0))?, r.get(1), parse_env(r.get(2))?)))
            .collect()
    }

    /// Every device, optionally of one user (the CLI).
    pub fn all_devices(&self, user: Option<&str>) -> Result<Vec<DeviceRow>, StoreError> {
        // Two statements: a prepared `$1 IS NULL OR user_id = $1` gets a
        // generic plan that scans every device even for one user.
        let rows = match user {
            Some(user) => self.conn().direct(
                "SELECT user_id, token, topic, environment, added_ms FROM devices
                 WHERE user_id = $1 ORDER BY added_ms, token",
                &[&user],
            )?,
            None => self.conn().direct(
                "SELECT user_id, token, topic, environment, added_ms FROM devices
                 ORDER BY user_id, added_ms, token",
                &[],
            )?,
        };
        rows.iter()
            .map(|r| {
                Ok(DeviceRow {
                    user: r.get(0),
                    token: parse_token(r.get(1))?,
                    topic: r.get(2),
                    environment: parse_env(r.get(3))?,
                    added_ms: r.get(4),
                })
            })
            .collect()
    }

    /// Write a notification to the outbox (buffered until COMMIT); its id.
    pub fn insert_outbox(&self, n: &NewNotification<'_>) -> Result<i64, StoreError> {
        self.conn().buffer_insert(n)
    }

    /// Delete settled outbox entries (buffered until COMMIT, written with
    /// the other deletes in one statement).
    pub fn delete_outbox_ids(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        let mut c = self.conn();
        ids.into_iter().try_for_each(|id| c.buffer_delete(id))
    }

    /// Up to `limit` outbox entries of `topic` with id ≥ `from_id`, oldest
    /// first; never one waiting in a coalescing window.
    pub fn load_outbox(&self, topic: &Arc<str>, from_id: i64, limit: usize) -> Result<Vec<Notification>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let mut c = self.conn();
        // This gateway's claims only (the CLI's: the unclaimed rows); two
        // statements, as `IS NOT DISTINCT FROM` cannot use the index.
        let rows = match c.gateway {
            Some(me) => c.direct(
                "SELECT id, token, environment, payload, expiration, priority, collapse_id, created_ms
                 FROM outbox WHERE claimed_by = $4 AND topic = $1 AND id >= $2 AND not_before_ms = 0
                 ORDER BY id LIMIT $3",
                &[&&**topic, &from_id, &limit, &me],
            )?,
            None => c.direct(
                "SELECT id, token, environment, payload, expiration, priority, collapse_id, created_ms
                 FROM outbox WHERE claimed_by IS NULL AND topic = $1 AND id >= $2 AND not_before_ms = 0
                 ORDER BY id LIMIT $3",
                &[&&**topic, &from_id, &limit],
            )?,
        };
        drop(c);
        rows.iter().map(|r| notification_from(r, 1, topic.clone())).collect()
    }

    /// Pending outbox entries per topic.
    pub fn outbox_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .conn()
            .whole_table("SELECT topic, count(*) FROM outbox GROUP BY topic ORDER BY topic")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub fn state_get(&self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self.conn().direct(
            "SELECT value FROM adapter_state WHERE namespace = $1 AND key = $2",
            &[&ns, &key],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub fn state_put(&self, ns: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().direct_exec(
            "INSERT INTO adapter_state (namespace, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
            &[&ns, &key, &value],
        )?;
        Ok(())
    }

    pub fn state_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let n = self.conn().direct_exec(
            "DELETE FROM adapter_state WHERE namespace = $1 AND key = $2",
            &[&ns, &key],
        )?;
        Ok(n > 0)
    }

    pub fn state_list(&self, ns: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.conn().direct(
            "SELECT key, value FROM adapter_state WHERE namespace = $1 AND left(key, length($2)) = $2 ORDER BY key",
            &[&ns, &prefix],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub fn set_mute(&self, user: &UserId, conversation: &str, until_ms: Option<i64>) -> Result<(), StoreError> {
        self.conn().direct_exec(
            "INSERT INTO mutes (user_id, conversation, until_ms) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, conversation) DO UPDATE SET until_ms = excluded.until_ms",
            &[&user.as_str(), &conversation, &until_ms],
        )?;
        Ok(())
    }

    pub fn unmute(&self, user: &UserId, conversation: &str) -> Result<bool, StoreError> {
        let n = self.conn().direct_exec(
            "DELETE FROM mutes WHERE user_id = $1 AND conversation = $2",
            &[&user.as_str(), &conversation],
        )?;
        Ok(n > 0)
    }

    pub fn expire_mutes(&self, now_ms: i64) -> Result<usize, StoreError> {
        let n = self.conn().direct_exec(
            "DELETE FROM mutes WHERE until_ms IS NOT NULL AND until_ms <= $1",
            &[&now_ms],
        )?;
        Ok(n as usize)
    }

    pub fn set_quiet(&self, user: &UserId, hours: Option<&QuietHours>) -> Result<(), StoreError> {
        let mut c = self.conn();
        match hours {
            Some(q) => c.direct_exec(
                "INSERT INTO quiet_hours (user_id, start_min, end_min, zone) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id) DO UPDATE SET start_min = excluded.start_min,
                    end_min = excluded.end_min, zone = excluded.zone",
                &[&user.as_str(), &i64::from(q.start()), &i64::from(q.end()), &q.zone()],
            )?,
            None => c.direct_exec("DELETE FROM quiet_hours WHERE user_id = $1", &[&user.as_str()])?,
        };
        Ok(())
    }

    pub(crate) fn load_settings(&self) -> Result<SettingsCache, StoreError> {
        let mut c = self.conn();
        let mut cache = SettingsCache::default();
        for r in c.direct("SELECT user_id, conversation, until_ms FROM mutes", &[])? {
            if let Ok(user) = UserId::parse(r.get(0)) {
                cache.set_mute(&user, r.get(1), r.get(2));
            }
        }
        for r in c.direct("SELECT user_id, start_min, end_min, zone FROM quiet_hours", &[])? {
            let (start, end) = (r.get::<_, i64>(1), r.get::<_, i64>(2));
            let hours = QuietHours::new(start.clamp(0, 65535) as u16, end.clamp(0, 65535) as u16, r.get(3));
            match (UserId::parse(r.get(0)), hours) {
                (Ok(user), Ok(q)) => cache.set_quiet(&user, Some(q)),
                (_, Err(e)) => tracing::warn!(user = r.get::<_, &str>(0), error = %e, "quiet hours cannot be applied"),
                (Err(_), _) => {}
            }
        }
        Ok(cache)
    }

    pub(crate) fn coalesce(&self, w: &NewWaiting<'_>, parts: &Parts) -> Result<Option<i64>, StoreError> {
        let mut c = self.conn();
        // Into this gateway's own window only: another's may be released
        // (and deleted) by it while this transaction merges. Locked: a
        // gateway taking this one's rows over (it thinks this one dead)
        // skips a locked window; one it renumbered first is no longer this
        // gateway's, so the part goes into a new window.
        let claim = c.gateway;
        let found = c.direct(
            "SELECT id, parts FROM outbox WHERE not_before_ms > 0
             AND user_id = $1 AND conversation = $2 AND token = $3 AND topic = $4
             AND claimed_by IS NOT DISTINCT FROM $5 FOR UPDATE",
            &[&w.user.as_str(), &w.conversation, &w.token.as_str(), &w.topic, &claim],
        )?;
        if let Some(row) = found.first() {
            let mut merged: Parts = serde_json::from_str(row.get(1)).map_err(corrupt)?;
            merged.merge(parts.clone());
            let json = serde_json::to_string(&merged).map_err(corrupt)?;
            let updated = c.execute(
                "UPDATE outbox SET parts = $2 WHERE id = $1 AND claimed_by IS NOT DISTINCT FROM $3",
                &[&row.get::<_, i64>(0), &json, &claim],
            )?;
            if updated == 1 {
                return Ok(None);
            }
        }
        let due = w.due_ms.max(1);
        c.execute(
            "INSERT INTO outbox (topic, token, environment, payload, expiration, priority, collapse_id,
                created_ms, user_id, conversation, parts, not_before_ms, claimed_by)
             VALUES ($1, $2, $3, '', 0, 10, NULL, $4, $5, $6, $7, $8, $9)",
            &[
                &w.topic,
                &w.token.as_str(),
                &w.environment.as_str(),
                &w.created_ms,
                &w.user.as_str(),
                &w.conversation,
                &serde_json::to_string(parts).map_err(corrupt)?,
                &due,
                &claim,
            ],
        )?;
        Ok(Some(due))
    }

    pub(crate) fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let mut c = self.conn();
        let claim = c.gateway;
        let rows = c.direct(
            "SELECT min(not_before_ms) FROM outbox WHERE not_before_ms > 0 AND claimed_by IS NOT DISTINCT FROM $1",
            &[&claim],
        )?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    pub(crate) fn due_waiting(&self, now_ms: i64) -> Result<Vec<Waiting>, StoreError> {
        let mut c = self.conn();
        let claim = c.gateway;
        let rows = c.direct(
            "SELECT id, topic, token, environment, user_id, created_ms, parts FROM outbox
             WHERE not_before_ms > 0 AND not_before_ms <= $1 AND claimed_by IS NOT DISTINCT FROM $2
             ORDER BY not_before_ms, id",
            &[&now_ms, &claim],
        )?;
        drop(c);
        rows.iter()
            .map(|r| {
                Ok(Waiting {
                    id: r.get(0),
                    topic: r.get(1),
                    token: DeviceToken::parse(r.get(2)).map_err(corrupt)?,
                    environment: parse_env(r.get(3))?,
                    user: UserId::parse(r.get::<_, Option<&str>>(4).unwrap_or_default()).map_err(corrupt)?,
                    created_ms: r.get(5),
                    parts: serde_json::from_str(r.get::<_, Option<&str>>(6).unwrap_or_default()).map_err(corrupt)?,
                })
            })
            .collect()
    }

    pub(crate) fn cancel_waiting(&self, user: &UserId) -> Result<usize, StoreError> {
        let n = self.conn().direct_exec(
            "DELETE FROM outbox WHERE not_before_ms > 0 AND user_id = $1",
            &[&user.as_str()],
        )?;
        Ok(n as usize)
    }
}
