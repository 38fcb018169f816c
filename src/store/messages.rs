//! How the store thread applies a message (now, or into a coalescing
//! window), a user coming online, and a user's settings; all inside the
//! batch's transaction.
//!
//! A message's conversation is its thread, else its sender (the key of
//! `thread-id`). A muted conversation's message increments the badge as
//! usual but becomes a badge-only push; one in the user's quiet hours is
//! rendered silent (see [`crate::policy::Rendered`]). Mutes are checked
//! when the message arrives, quiet hours when its push is rendered, both
//! with the store's clock.

use pushbridge_api::{DeviceToken, Environment, EventError, Presence, Reply, UserId};

use super::coalesce::{self, NewWaiting, Parts};
use super::command::{MessageJob, SettingChange};
use super::db::{NewNotification, StoreError};
use super::writer::Writer;
use crate::outcome::Notification;

/// Longest coalescing window and mute honoured, in milliseconds (a year):
/// keeps `now + duration` far from overflowing.
const MAX_DURATION_MS: i64 = 366 * 86_400_000;

impl Writer {
    /// Turn a message into outbox entries: one per device of the user in a
    /// configured app, with the unread counter incremented once. With
    /// coalescing on they wait (merged per conversation and device) until
    /// the window ends.
    pub(super) fn enqueue(
        &mut self,
        job: MessageJob,
        out: &mut Vec<(usize, Notification)>,
    ) -> Result<Result<Reply, EventError>, StoreError> {
        if job.respect_presence && !self.db.presence_of(&job.to)?.unwrap_or_default().wants_push() {
            return Ok(Ok(Reply::Queued(0)));
        }
        let devices = self.db.devices_of(&job.to)?;
        let targets: Vec<(DeviceToken, usize, Environment)> = devices
            .into_iter()
            .filter(|(token, _, _)| job.device.as_ref().is_none_or(|d| d == token))
            .filter_map(|(token, app, env)| self.feed.index(&app).map(|i| (token, i, env)))
            .collect();
        if targets.is_empty() {
            return Ok(match job.device {
                Some(_) => Err(EventError::NoSuchDevice),
                None => Ok(Reply::Queued(0)),
            });
        }
        let badge = match job.badge {
            Some(b) => b,
            None => self.db.increment_unread(&job.to)?,
        };
        let now_ms = (self.clock)();
        let conversation = job.thread.as_deref().unwrap_or(&job.from);
        let muted = self.settings.muted(&job.to, conversation, now_ms);
        if self.policy.config().coalesce > 0 {
            self.enqueue_waiting(job, muted, &targets, now_ms)?;
            return Ok(Ok(Reply::Queued(targets.len())));
        }
        let quiet = self.settings.quiet(&job.to, now_ms);
        let mut msg = Parts {
            from: job.from,
            subtitle: job.subtitle,
            text: job.text,
            thread: job.thread,
            badge: None,
            count: 1,
            muted,
        }
        .render(&self.policy, badge, quiet, now_ms);
        for (token, i, environment) in &targets {
            let Some(slot) = self.feed.slot(*i) else { continue };
            let (app, payload) = (slot.app.clone(), msg.payload(&self.policy, slot.limit));
            let id = self.db.insert_outbox(&NewNotification {
                topic: &app,
                token,
                environment: *environment,
                payload: &payload,
                expiration: msg.expiration,
                priority: msg.priority,
                collapse_id: msg.collapse_id.as_deref(),
                created_ms: now_ms,
            })?;
            let n = Notification {
                id,
                app,
                token: token.clone(),
                environment: *environment,
                payload,
                expiration: msg.expiration,
                priority: msg.priority,
                collapse_id: msg.collapse_id.clone(),
                created_ms: now_ms,
                attempts: 0,
                redelivery: false,
            };
            out.push((*i, n));
        }
        Ok(Ok(Reply::Queued(targets.len())))
    }

    /// Merge the message into each device's waiting row of its
    /// conversation, or open a window of `[policy] coalesce` seconds.
    fn enqueue_waiting(
        &mut self,
        job: MessageJob,
        muted: bool,
        targets: &[(DeviceToken, usize, Environment)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let window = (self.policy.config().coalesce as i64)
            .saturating_mul(1000)
            .min(MAX_DURATION_MS);
        let conversation = job.thread.clone().unwrap_or_else(|| job.from.clone());
        let parts = Parts {
            from: job.from,
            subtitle: job.subtitle,
            text: job.text,
            thread: job.thread,
            badge: job.badge,
            count: 1,
            muted,
        };
        for (token, i, environment) in targets {
            let Some(slot) = self.feed.slot(*i) else { continue };
            let new = NewWaiting {
                user: &job.to,
                conversation: &conversation,
                topic: &slot.app,
                token,
                environment: *environment,
                created_ms: now_ms,
                due_ms: now_ms + window,
            };
            if let Some(due) = self.db.coalesce(&new, &parts)? {
                self.next_due = Some(self.next_due.map_or(due, |d| d.min(due)));
            }
        }
        Ok(())
    }

    /// Release the coalesced pushes whose window ended (inside the
    /// transaction; the new rows go to `out`).
    pub(super) fn release_due(&mut self, out: &mut Vec<(usize, Notification)>) -> Result<(), StoreError> {
        let now = (self.clock)();
        if self.next_due.is_none_or(|due| due > now) {
            return Ok(());
        }
        self.next_due = coalesce::release(&self.db, &self.policy, &self.feed, &self.settings, now, out)?;
        Ok(())
    }

    /// The user came online: the badge resets and pushes still waiting in
    /// a coalescing window are dropped.
    pub(super) fn came_online(&mut self, user: &UserId) -> Result<(), StoreError> {
        self.db.reset_unread(user)?;
        if self.next_due.is_some() {
            let n = self.db.cancel_waiting(user)?;
            if n > 0 {
                tracing::debug!(user = %user, count = n, "coalesced pushes cancelled: the user came online");
            }
        }
        Ok(())
    }

    /// A presence report kept in the shared store (PostgreSQL): recorded,
    /// and coming online resets the badge as on SQLite (where the router
    /// decides that from its memory).
    pub(super) fn record_presence(&mut self, user: &UserId, presence: Presence) -> Result<(), StoreError> {
        let previous = self.db.presence_of(user)?.unwrap_or_default();
        self.db.set_presence(user, presence)?;
        if presence == Presence::Online && previous != Presence::Online {
            self.came_online(user)?;
        }
        Ok(())
    }

    /// Apply a change of `user`'s settings (to the table and the copy).
    pub(super) fn change_setting(&mut self, user: &UserId, change: SettingChange) -> Result<(), StoreError> {
        let now = (self.clock)();
        match change {
            SettingChange::Mute { conversation, duration } => {
                let until = duration.map(|d| now + (d.as_millis().min(MAX_DURATION_MS as u128) as i64));
                self.db.expire_mutes(now)?;
                self.settings.expire_mutes(now);
                self.db.set_mute(user, &conversation, until)?;
                self.settings.set_mute(user, &conversation, until);
                tracing::info!(user = %user, "conversation muted");
            }
            SettingChange::Unmute { conversation } => {
                if self.db.unmute(user, &conversation)? {
                    self.settings.unmute(user, &conversation);
                    tracing::info!(user = %user, "conversation unmuted");
                }
            }
            SettingChange::Quiet(hours) => {
                self.db.set_quiet(user, hours.as_ref())?;
                tracing::info!(user = %user, quiet = hours.is_some(), "quiet hours set");
                self.settings.set_quiet(user, hours);
            }
        }
        Ok(())
    }

    /// `user`'s settings now.
    pub(super) fn show_settings(&self, user: &UserId) -> Result<Result<Reply, EventError>, StoreError> {
        Ok(Ok(Reply::Settings(self.settings.show(user, (self.clock)()))))
    }
}
