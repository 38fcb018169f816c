//! Coalescing (`[policy] coalesce = N` seconds): the messages for one user,
//! conversation (the thread, else the sender: the key of `thread-id`) and
//! device within N seconds of the first become one push when the window
//! ends, saying the latest text, how many messages there were
//! (`bob (3)`) and the badge current then.
//!
//! The merge happens in the outbox, in the transaction that accepts the
//! message, so `OK 1` still means on disk and a crash inside the window
//! still delivers the merged push after a restart. A *waiting* row has
//! `not_before_ms > 0` (the end of its window), its user, conversation and
//! the parts it is rendered from (`parts`, JSON: [`Parts`]), and no payload
//! yet. The feed never loads waiting rows. When the window ends the store
//! thread *releases* the row: renders it (badge, quiet hours as of then),
//! inserts it as an ordinary row (a new, higher id, so the feed's in-order
//! cursor takes it like a fresh message) and deletes the waiting one, in
//! one transaction. The user coming online deletes their waiting rows.

use std::sync::Arc;

use pushbridge_api::{DeviceToken, Environment, UserId};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::db::{Db, NewNotification, SqliteDb, StoreError};
use super::settings::SettingsCache;
use crate::feed::Feed;
use crate::outcome::Notification;
use crate::policy::{Policy, Rendered};

/// Payload limit used to render a released row whose app is no longer
/// configured (it then waits in the outbox like any of that app's rows).
const UNCONFIGURED_LIMIT: usize = 4096;

/// What a waiting row is rendered from when its window ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Parts {
    /// The alert title's sender (`bob`, `carol in #chat`).
    pub from: String,
    /// APNS `alert.subtitle` (the group chat a speaker wrote in); absent
    /// in rows written before subtitles existed.
    #[serde(default)]
    pub subtitle: Option<String>,
    /// The latest message's text.
    pub text: Option<String>,
    /// The conversation id of `thread-id`, if not the sender.
    pub thread: Option<String>,
    /// The latest badge the IM server gave; `None`: the user's unread
    /// counter at send time.
    pub badge: Option<u32>,
    /// Messages merged so far (1 for the first).
    pub count: u32,
    /// The latest message's conversation was muted: a badge-only push.
    pub muted: bool,
}

impl Parts {
    /// Merge a later message of the same conversation: its text, sender
    /// and badge win; the count goes up.
    pub(crate) fn merge(&mut self, later: Parts) {
        let count = self.count.saturating_add(later.count);
        *self = Parts { count, ..later };
    }

    /// Render for sending at `now_ms` with `badge`, silently when `quiet`.
    pub(crate) fn render(&self, policy: &Policy, badge: u32, quiet: bool, now_ms: i64) -> Rendered {
        let now = (now_ms.max(0) / 1000) as u64;
        let mut msg = policy
            .message(&self.from, self.text.as_deref(), self.thread.as_deref(), badge, now)
            .with_subtitle(self.subtitle.as_deref())
            .coalesced(self.count);
        if self.muted {
            msg = msg.badge_only();
        }
        if quiet {
            msg = msg.quiet();
        }
        msg
    }
}

/// A waiting row whose window ended.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) id: i64,
    pub(crate) topic: String,
    pub(crate) token: DeviceToken,
    pub(crate) environment: Environment,
    pub(crate) user: UserId,
    pub(crate) created_ms: i64,
    pub(crate) parts: Parts,
}

/// A message's row for one device, to be merged or to start a window.
pub(crate) struct NewWaiting<'a> {
    pub user: &'a UserId,
    pub conversation: &'a str,
    pub topic: &'a str,
    pub token: &'a DeviceToken,
    pub environment: Environment,
    pub created_ms: i64,
    /// When the window ends (Unix ms).
    pub due_ms: i64,
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("waiting outbox row: {e}"))
}

impl SqliteDb {
    /// Merge `parts` into the waiting row of the same user, conversation,
    /// device and app, or start a window with a new waiting row. Returns
    /// the window's end when a new one started.
    pub(crate) fn coalesce(&self, w: &NewWaiting<'_>, parts: &Parts) -> Result<Option<i64>, StoreError> {
        let found: Option<(i64, String)> = self
            .conn()?
            .prepare_cached(
                "SELECT id, parts FROM outbox WHERE not_before_ms > 0
                 AND user = ?1 AND conversation = ?2 AND token = ?3 AND topic = ?4",
            )?
            .query_row(
                params![w.user.as_str(), w.conversation, w.token.as_str(), w.topic],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, json)) = found {
            let mut merged: Parts = serde_json::from_str(&json).map_err(corrupt)?;
            merged.merge(parts.clone());
            self.conn()?
                .prepare_cached("UPDATE outbox SET parts = ?2 WHERE id = ?1")?
                .execute(params![id, serde_json::to_string(&merged).map_err(corrupt)?])?;
            return Ok(None);
        }
        self.conn()?
            .prepare_cached(
                "INSERT INTO outbox (topic, token, environment, payload, expiration, priority, collapse_id,
                    created_ms, user, conversation, parts, not_before_ms)
                 VALUES (?1, ?2, ?3, '', 0, 10, NULL, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                w.topic,
                w.token.as_str(),
                w.environment.as_str(),
                w.created_ms,
                w.user.as_str(),
                w.conversation,
                serde_json::to_string(parts).map_err(corrupt)?,
                w.due_ms.max(1),
            ])?;
        Ok(Some(w.due_ms.max(1)))
    }

    /// The end of the earliest window still open (Unix ms).
    pub(crate) fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn()?
            .prepare_cached("SELECT min(not_before_ms) FROM outbox WHERE not_before_ms > 0")?
            .query_row([], |r| r.get(0))?)
    }

    /// Waiting rows whose window ended by `now_ms`, earliest first.
    pub(crate) fn due_waiting(&self, now_ms: i64) -> Result<Vec<Waiting>, StoreError> {
        let mut stmt = self.conn()?.prepare_cached(
            "SELECT id, topic, token, environment, user, created_ms, parts FROM outbox
             WHERE not_before_ms > 0 AND not_before_ms <= ?1 ORDER BY not_before_ms, id",
        )?;
        let rows = stmt.query_map([now_ms], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, topic, token, env, user, created_ms, parts) = row?;
            out.push(Waiting {
                id,
                topic,
                token: DeviceToken::parse(&token).map_err(corrupt)?,
                environment: env.parse().map_err(StoreError::Corrupt)?,
                user: UserId::parse(&user).map_err(corrupt)?,
                created_ms,
                parts: serde_json::from_str(&parts).map_err(corrupt)?,
            });
        }
        Ok(out)
    }

    /// Drop the user's waiting rows (they came online); how many.
    pub(crate) fn cancel_waiting(&self, user: &UserId) -> Result<usize, StoreError> {
        Ok(self
            .conn()?
            .prepare_cached("DELETE FROM outbox WHERE not_before_ms > 0 AND user = ?1")?
            .execute([user.as_str()])?)
    }
}

/// Release every waiting row whose window ended by `now_ms`: render it,
/// insert it as an ordinary row and delete the waiting one (inside the
/// caller's transaction); the new rows go to `out` for the feed. Returns
/// the next window's end.
pub(crate) fn release(
    db: &Db,
    policy: &Policy,
    feed: &Feed,
    settings: &SettingsCache,
    now_ms: i64,
    out: &mut Vec<(usize, Notification)>,
) -> Result<Option<i64>, StoreError> {
    let mut released = Vec::new();
    for w in db.due_waiting(now_ms)? {
        let badge = match w.parts.badge {
            Some(b) => b,
            None => db.unread(&w.user)?,
        };
        let quiet = settings.quiet(&w.user, now_ms);
        let mut msg = w.parts.render(policy, badge, quiet, now_ms);
        let index = feed.index(&w.topic);
        let limit = index.and_then(|i| feed.slot(i)).map_or(UNCONFIGURED_LIMIT, |s| s.limit);
        let payload = msg.payload(policy, limit);
        let id = db.insert_outbox(&NewNotification {
            topic: &w.topic,
            token: &w.token,
            environment: w.environment,
            payload: &payload,
            expiration: msg.expiration,
            priority: msg.priority,
            collapse_id: msg.collapse_id.as_deref(),
            created_ms: w.created_ms,
        })?;
        released.push(w.id);
        tracing::debug!(user = %w.user, device = w.token.short(), count = w.parts.count, notification = id, "coalesced push released");
        if let Some(i) = index {
            let app: Arc<str> = feed.slot(i).map_or_else(|| w.topic.as_str().into(), |s| s.app.clone());
            out.push((
                i,
                Notification {
                    id,
                    app,
                    token: w.token,
                    environment: w.environment,
                    payload,
                    expiration: msg.expiration,
                    priority: msg.priority,
                    collapse_id: msg.collapse_id.clone(),
                    created_ms: w.created_ms,
                    attempts: 0,
                    redelivery: false,
                },
            ));
        }
    }
    // The waiting rows go together (one statement, not one each).
    db.delete_outbox_ids(released)?;
    db.next_due()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str, count: u32) -> Parts {
        Parts {
            from: "bob".into(),
            subtitle: None,
            text: Some(text.into()),
            thread: None,
            badge: None,
            count,
            muted: false,
        }
    }

    #[test]
    fn merge_keeps_the_latest_and_counts() {
        let mut p = parts("one", 1);
        p.merge(parts("two", 1));
        p.merge(Parts {
            muted: true,
            badge: Some(7),
            ..parts("three", 1)
        });
        assert_eq!(
            p,
            Parts {
                muted: true,
                badge: Some(7),
                ..parts("three", 3)
            }
        );
    }
}
