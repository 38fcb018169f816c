//! The outbox a store thread starts with and, on PostgreSQL, shares with
//! other gateways (see [`crate::store::pg::claims`]): at start it says what
//! waits there; between batches it heartbeats and takes over the rows of
//! dead gateways (and unclaimed ones) for its own sinks; at a clean end it
//! releases what it still holds. SQLite's outbox is this gateway's alone.

use std::time::Instant;

use super::Writer;
use crate::outcome::Completion;
use crate::store::pg::claims::TAKEOVER_BATCH;
use crate::store::streak::log_failure;

impl Writer {
    /// At start: log what waits in the outbox per app (on SQLite all of it
    /// is this gateway's to send; on PostgreSQL it is shared, and this
    /// gateway takes what nobody holds), and warn of apps not configured.
    pub(super) fn warn_orphans(&self) {
        let shared = self.db.maintenance_every().is_some();
        match self.db.outbox_counts() {
            Ok(counts) => {
                for (app, n) in counts {
                    if self.feed.index(&app).is_none() {
                        tracing::warn!(
                            app,
                            pending = n,
                            "outbox holds notifications for an app that is not configured; they are kept until it is"
                        );
                    } else if shared {
                        tracing::info!(
                            app,
                            pending = n,
                            "notifications in the shared outbox (of every gateway)"
                        );
                    } else {
                        tracing::info!(app, pending = n, "re-queueing notifications from the outbox");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
    }

    /// Heartbeat and take over, when [`crate::store::Db::maintenance_every`]
    /// has passed. Nothing is taken while the heartbeat fails (this gateway
    /// may be the one others think dead) or while `holding` (outcomes wait
    /// to be recorded: new rows wait in the outbox).
    pub(super) fn maintain(&mut self, holding: bool) {
        let Some(every) = self.db.maintenance_every() else {
            return;
        };
        let now = Instant::now();
        if self.maintained_at.is_some_and(|t| now.duration_since(t) < every) {
            return;
        }
        self.maintained_at = Some(now);
        let topics = self.feed.topics();
        let takeable = match self.db.heartbeat(&topics) {
            Ok(takeable) => takeable,
            Err(e) => {
                log_failure!(
                    self.heartbeat_errors,
                    error = %e,
                    "cannot heartbeat; taking over nothing until it works again"
                );
                return;
            }
        };
        let failures = self.heartbeat_errors.succeeded();
        if failures > 0 {
            tracing::info!(failures, "heartbeats work again");
        }
        self.release_due = true;
        if holding || !takeable {
            return;
        }
        let taken = match self.db.take_over(&topics, TAKEOVER_BATCH) {
            Ok(t) => {
                self.takeover_errors.succeeded();
                t
            }
            Err(e) => {
                // Tried every second while it fails: one error a streak.
                log_failure!(
                    self.takeover_errors,
                    error = %e,
                    "cannot take over the outbox entries of dead gateways"
                );
                return;
            }
        };
        if taken.len() as i64 >= TAKEOVER_BATCH {
            self.maintained_at = None; // more to take: the next round at once
        }
        let mut ready = Vec::with_capacity(taken.len());
        for t in taken {
            if t.not_before_ms > 0 {
                // A coalescing window: released by this gateway when due.
                self.next_due = Some(self.next_due.map_or(t.not_before_ms, |d| d.min(t.not_before_ms)));
            } else if let Some(i) = self.feed.index(&t.notification.app) {
                ready.push((i, t.notification));
            }
        }
        self.feed.take_over(ready);
    }

    /// Hand the outbox entries of apps whose sink stopped to the other
    /// gateways sharing the store: a live gateway's claims are never taken
    /// over, and this one sends them no more. After each heartbeat, as this
    /// gateway still accepts messages for those apps, and only once every
    /// outcome its sinks reported is recorded (`done` empty, the channel
    /// drained once more): a row delivered but not yet deleted would
    /// otherwise be sent again by the gateway that takes it.
    pub(super) fn release_stopped(&mut self, done: &mut Vec<Completion>) {
        if !std::mem::take(&mut self.release_due) {
            return;
        }
        let stopped = self.feed.stopped_topics();
        if stopped.is_empty() {
            return;
        }
        self.completions.drain(done);
        if !done.is_empty() {
            return; // recorded with the next batch; released after the next heartbeat
        }
        match self.db.release_topics(&stopped) {
            Ok(0) => {}
            Ok(released) => {
                // The first release at warn, the later ones at debug (a
                // stopped sink does not come back, and every heartbeat
                // releases the messages accepted since for its app).
                if self.released_stopped == 0 {
                    tracing::warn!(
                        released,
                        apps = ?stopped,
                        "outbox entries of stopped sinks released to the other gateways sharing the store"
                    );
                } else {
                    tracing::debug!(released, apps = ?stopped, "outbox entries of stopped sinks released");
                }
                self.released_stopped += released;
            }
            Err(e) => tracing::warn!(error = %e, apps = ?stopped, "cannot release the outbox entries of stopped sinks"),
        }
    }

    /// Clean end of the store thread: release this gateway's claims so
    /// the others (or its restart) send them at once.
    pub(super) fn release(&mut self) {
        if let Err(e) = self.db.release_claims() {
            tracing::warn!(error = %e, "cannot release this gateway's outbox entries; others take them over once its lease ran out");
        }
    }
}
