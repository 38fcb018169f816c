//! The store thread's side of several gateways on one PostgreSQL database
//! (see [`crate::store::pg::claims`]): between batches it heartbeats and
//! takes over the rows of dead gateways (and unclaimed ones) for its own
//! sinks; at a clean end it releases what it still holds. Nothing happens
//! on SQLite.

use std::time::Instant;

use super::Writer;
use crate::store::pg::claims::TAKEOVER_BATCH;

impl Writer {
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
        if let Err(e) = self.db.heartbeat() {
            if !std::mem::replace(&mut self.heartbeat_failed, true) {
                tracing::error!(error = %e, "cannot heartbeat; taking over nothing until it works again");
            }
            return;
        }
        if std::mem::replace(&mut self.heartbeat_failed, false) {
            tracing::info!("heartbeat works again");
        }
        if holding {
            return;
        }
        let taken = match self.db.take_over(&self.feed.topics(), TAKEOVER_BATCH) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot take over the outbox entries of dead gateways");
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

    /// Clean end of the store thread: release this gateway's claims so
    /// the others (or its restart) send them at once.
    pub(super) fn release(&mut self) {
        if let Err(e) = self.db.release_claims() {
            tracing::warn!(error = %e, "cannot release this gateway's outbox entries; others take them over once its lease ran out");
        }
    }
}
