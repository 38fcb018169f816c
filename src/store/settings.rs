//! Users' notification settings in the store: muted conversations (table
//! `mutes`) and quiet hours (table `quiet_hours`), and the store thread's
//! in-memory copy of both, which every message consults (no query on the
//! message path; the store thread is the only writer, and it reloads the
//! copy when a transaction fails).

use std::collections::HashMap;
use std::time::Duration;

use pushbridge_api::settings::{Muted, QuietHours, Settings};
use pushbridge_api::UserId;
use rusqlite::params;

use super::db::{SqliteDb, StoreError};

impl SqliteDb {
    /// Mute `conversation` for `user` until `until_ms` (Unix ms; `None`:
    /// until unmuted), replacing an earlier mute of it.
    pub fn set_mute(&self, user: &UserId, conversation: &str, until_ms: Option<i64>) -> Result<(), StoreError> {
        self.conn_beside_outbox()
            .prepare_cached(
                "INSERT INTO mutes (user, conversation, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, conversation) DO UPDATE SET until_ms = excluded.until_ms",
            )?
            .execute(params![user.as_str(), conversation, until_ms])?;
        Ok(())
    }

    /// Unmute; whether it was muted.
    pub fn unmute(&self, user: &UserId, conversation: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn_beside_outbox()
            .prepare_cached("DELETE FROM mutes WHERE user = ?1 AND conversation = ?2")?
            .execute(params![user.as_str(), conversation])?
            > 0)
    }

    /// Forget mutes that ended before `now_ms`.
    pub fn expire_mutes(&self, now_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn_beside_outbox()
            .prepare_cached("DELETE FROM mutes WHERE until_ms IS NOT NULL AND until_ms <= ?1")?
            .execute([now_ms])?)
    }

    /// Set (`Some`) or clear the user's quiet hours.
    pub fn set_quiet(&self, user: &UserId, hours: Option<&QuietHours>) -> Result<(), StoreError> {
        match hours {
            Some(q) => self
                .conn_beside_outbox()
                .prepare_cached(
                    "INSERT INTO quiet_hours (user, start_min, end_min, zone) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (user) DO UPDATE SET start_min = excluded.start_min,
                        end_min = excluded.end_min, zone = excluded.zone",
                )?
                .execute(params![user.as_str(), q.start(), q.end(), q.zone()])?,
            None => self
                .conn_beside_outbox()
                .prepare_cached("DELETE FROM quiet_hours WHERE user = ?1")?
                .execute([user.as_str()])?,
        };
        Ok(())
    }

    /// Every user's settings (the store thread's copy is loaded with it).
    pub(crate) fn load_settings(&self) -> Result<SettingsCache, StoreError> {
        let mut cache = SettingsCache::default();
        let mut stmt = self
            .conn_beside_outbox()
            .prepare("SELECT user, conversation, until_ms FROM mutes")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        for row in rows {
            let (user, conversation, until) = row?;
            cache.mutes.entry(user).or_default().insert(conversation, until);
        }
        let mut stmt = self
            .conn_beside_outbox()
            .prepare("SELECT user, start_min, end_min, zone FROM quiet_hours")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u16>(1)?,
                r.get::<_, u16>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (user, start, end, zone) = row?;
            match QuietHours::new(start, end, &zone) {
                Ok(q) => {
                    cache.quiet.insert(user, q);
                }
                // A zone the time zone database no longer knows: the hours
                // cannot be applied; they stay stored until changed.
                Err(e) => tracing::warn!(user, error = %e, "quiet hours cannot be applied"),
            }
        }
        Ok(cache)
    }
}

/// The store thread's copy of every user's settings, keyed by user id.
#[derive(Debug, Default)]
pub(crate) struct SettingsCache {
    /// User → conversation → end of the mute (Unix ms; `None`: for good).
    mutes: HashMap<String, HashMap<String, Option<i64>>>,
    /// User → quiet hours.
    quiet: HashMap<String, QuietHours>,
}

impl SettingsCache {
    /// Whether `user` muted `conversation` at `now_ms`.
    pub(crate) fn muted(&self, user: &UserId, conversation: &str, now_ms: i64) -> bool {
        self.mutes
            .get(user.as_str())
            .and_then(|m| m.get(conversation))
            .is_some_and(|until| until.is_none_or(|u| now_ms < u))
    }

    /// Whether `user` is in quiet hours at `now_ms`.
    pub(crate) fn quiet(&self, user: &UserId, now_ms: i64) -> bool {
        self.quiet.get(user.as_str()).is_some_and(|q| q.is_quiet(now_ms))
    }

    pub(crate) fn set_mute(&mut self, user: &UserId, conversation: &str, until_ms: Option<i64>) {
        self.mutes
            .entry(user.as_str().to_owned())
            .or_default()
            .insert(conversation.to_owned(), until_ms);
    }

    pub(crate) fn unmute(&mut self, user: &UserId, conversation: &str) {
        if let Some(m) = self.mutes.get_mut(user.as_str()) {
            m.remove(conversation);
            if m.is_empty() {
                self.mutes.remove(user.as_str());
            }
        }
    }

    /// Forget mutes that ended before `now_ms` (as [`super::Db::expire_mutes`]).
    pub(crate) fn expire_mutes(&mut self, now_ms: i64) {
        for m in self.mutes.values_mut() {
            m.retain(|_, until| until.is_none_or(|u| now_ms < u));
        }
        self.mutes.retain(|_, m| !m.is_empty());
    }

    pub(crate) fn set_quiet(&mut self, user: &UserId, hours: Option<QuietHours>) {
        match hours {
            Some(q) => self.quiet.insert(user.as_str().to_owned(), q),
            None => self.quiet.remove(user.as_str()),
        };
    }

    /// What `user` has set, at `now_ms` (mutes sorted by conversation).
    pub(crate) fn show(&self, user: &UserId, now_ms: i64) -> Settings {
        let mut muted: Vec<Muted> = self
            .mutes
            .get(user.as_str())
            .into_iter()
            .flatten()
            .filter(|(_, until)| until.is_none_or(|u| now_ms < u))
            .map(|(c, until)| Muted {
                conversation: c.clone(),
                remaining: until.map(|u| Duration::from_millis((u - now_ms).max(0) as u64)),
            })
            .collect();
        muted.sort_by(|a, b| a.conversation.cmp(&b.conversation));
        Settings {
            quiet: self.quiet.get(user.as_str()).cloned(),
            muted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::store::Db;

    #[test]
    fn settings_persist_and_mutes_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let alice = UserId::parse("line:alice").unwrap();
        let q = QuietHours::parse("22:00-07:00", "Europe/Berlin").unwrap();
        {
            let db = Db::open(&path, Synchronous::Full).unwrap();
            db.set_mute(&alice, "bob", None).unwrap();
            db.set_mute(&alice, "carol", Some(2_000)).unwrap();
            db.set_quiet(&alice, Some(&q)).unwrap();
        }
        let db = Db::open(&path, Synchronous::Full).unwrap();
        let mut cache = db.load_settings().unwrap();
        assert!(cache.muted(&alice, "bob", 10_000));
        assert!(cache.muted(&alice, "carol", 1_999));
        assert!(!cache.muted(&alice, "carol", 2_000));
        assert!(!cache.muted(&alice, "dave", 0));
        let shown = cache.show(&alice, 1_500);
        assert_eq!(shown.quiet.as_ref(), Some(&q));
        assert_eq!(
            shown.muted,
            vec![
                Muted {
                    conversation: "bob".into(),
                    remaining: None
                },
                Muted {
                    conversation: "carol".into(),
                    remaining: Some(Duration::from_millis(500))
                },
            ]
        );
        assert_eq!(db.expire_mutes(2_000).unwrap(), 1);
        cache.expire_mutes(2_000);
        assert_eq!(cache.show(&alice, 0).muted.len(), 1);
        assert!(db.unmute(&alice, "bob").unwrap());
        db.set_quiet(&alice, None).unwrap();
        let cache = db.load_settings().unwrap();
        assert_eq!(cache.show(&alice, 0), Settings::default());
    }
}
