//! Feeding the sinks: committed notifications go to their app's sink
//! queue in outbox order; what does not fit waits in the outbox and is
//! loaded as the sink drains, so memory stays bounded however long Apple
//! is unreachable. Runs on the store thread, which calls [`Feed::dispatch`]
//! after each commit and [`Feed::refill`] after each batch.

use std::collections::HashMap;
use std::sync::Arc;

use pushbridge_api::Environment;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::outcome::counters::AppCounters;
use crate::outcome::{events, Counters, Notification};
use crate::store::streak::{log_failure, Streak};

/// One configured app as the feed sees it.
pub struct AppSlot {
    pub app: Arc<str>,
    /// Default environment of devices registered without one.
    pub environment: Environment,
    /// Payload limit of the app's sink protocol, in bytes.
    pub limit: usize,
    /// The sink's queue; `None` once shutting down.
    sender: Option<mpsc::Sender<Notification>>,
    /// Lowest outbox id of this app not yet handed to the sink; `None` when
    /// everything is in the sink's hands.
    pending_from: Option<i64>,
    counters: Arc<AppCounters>,
    /// Loading this app's outbox entries fails (the database is away).
    load_errors: Streak,
    /// The sink ended on its own (not at shutdown).
    stopped: bool,
}

impl AppSlot {
    /// The sink ended on its own (a failed log file, a panic): feed it no
    /// more; its notifications wait in the outbox for the next start, or
    /// are handed to the other gateways sharing a PostgreSQL store
    /// ([`Feed::stopped_topics`]).
    fn sink_stopped(&mut self, from: i64) {
        tracing::error!(
            app = %self.app,
            "sink stopped; its notifications wait in the outbox for the next start (or for another gateway sharing the store)"
        );
        self.sender = None;
        self.stopped = true;
        self.pending_from = Some(self.pending_from.map_or(from, |p| p.min(from)));
    }
}

/// Reads up to `limit` outbox entries of `app` with id ≥ `from`, in id
/// order (the store's `load_outbox`).
pub trait OutboxReader {
    /// Why the outbox could not be read (logged).
    type Error: std::fmt::Display;
    /// The entries, oldest first.
    fn load(&mut self, app: &Arc<str>, from: i64, limit: usize) -> Result<Vec<Notification>, Self::Error>;
}

/// Every app's sink queue.
pub struct Feed {
    apps: Vec<AppSlot>,
    by_app: HashMap<Arc<str>, usize>,
}

impl Feed {
    /// A feed with no apps yet.
    pub fn new() -> Self {
        Self {
            apps: Vec::new(),
            by_app: HashMap::new(),
        }
    }

    /// Add an app whose sink reads `sender`. On start everything in the
    /// outbox for it is loaded again (it was not settled).
    pub fn add(
        &mut self,
        app: &str,
        environment: Environment,
        limit: usize,
        sender: mpsc::Sender<Notification>,
        counters: &Counters,
    ) {
        let slot = AppSlot {
            app: app.into(),
            environment,
            limit,
            sender: Some(sender),
            pending_from: Some(0),
            counters: counters.app(app),
            load_errors: Streak::default(),
            stopped: false,
        };
        self.by_app.insert(slot.app.clone(), self.apps.len());
        self.apps.push(slot);
    }

    /// The index of `app`, if configured.
    pub fn index(&self, app: &str) -> Option<usize> {
        self.by_app.get(app).copied()
    }

    /// App number `i` (an index from [`Feed::index`]; 0 is the default app).
    pub fn slot(&self, i: usize) -> Option<&AppSlot> {
        self.apps.get(i)
    }

    /// Hand freshly committed notifications (in id order) to their sinks;
    /// what does not fit waits in the outbox.
    pub fn dispatch(&mut self, committed: Vec<(usize, Notification)>) {
        self.hand(committed, true);
    }

    /// [`Feed::dispatch`]; `accepted`: count them as accepted.
    fn hand(&mut self, committed: Vec<(usize, Notification)>, accepted: bool) {
        for (i, n) in committed {
            let Some(app) = self.apps.get_mut(i) else { continue };
            if accepted {
                events::NotificationsAccepted { count: 1 }.emit(&app.counters);
            }
            if app.pending_from.is_some() {
                continue; // older ones are waiting; refill takes this one in order
            }
            let Some(sender) = &app.sender else { continue };
            if sender.is_closed() {
                app.sink_stopped(n.id);
                continue;
            }
            match sender.try_send(n) {
                Ok(()) => {}
                Err(TrySendError::Full(n)) | Err(TrySendError::Closed(n)) => app.pending_from = Some(n.id),
            }
        }
    }

    /// Hand outbox entries this gateway took over from a dead one (see
    /// `store::pg::claims`; renumbered after everything it holds, so in id
    /// order) to their sinks like [`Feed::dispatch`], without counting
    /// them as accepted again: their gateway counted them.
    pub fn take_over(&mut self, taken: Vec<(usize, Notification)>) {
        self.hand(taken, false);
    }

    /// Every app's topic that still has a sink to feed.
    pub fn topics(&self) -> Vec<String> {
        self.apps
            .iter()
            .filter(|a| a.sender.is_some())
            .map(|a| a.app.to_string())
            .collect()
    }

    /// Every app's topic whose sink ended on its own: this gateway sends
    /// its notifications no more until it restarts.
    pub fn stopped_topics(&self) -> Vec<String> {
        self.apps
            .iter()
            .filter(|a| a.stopped)
            .map(|a| a.app.to_string())
            .collect()
    }

    /// Like [`Feed::dispatch`], but hand nothing to the sinks: the
    /// notifications wait in the outbox (counted as accepted) until a
    /// refill after the hold (the store does this while it cannot record
    /// outcomes, so they do not pile up in memory).
    pub fn hold(&mut self, committed: Vec<(usize, Notification)>) {
        for (i, n) in committed {
            let Some(app) = self.apps.get_mut(i) else { continue };
            events::NotificationsAccepted { count: 1 }.emit(&app.counters);
            app.pending_from = Some(app.pending_from.map_or(n.id, |p| p.min(n.id)));
        }
    }

    /// Load waiting outbox entries into sinks that have room, in id order.
    pub fn refill<R: OutboxReader>(&mut self, outbox: &mut R) {
        for app in &mut self.apps {
            let (Some(from), Some(sender)) = (app.pending_from, &app.sender) else {
                continue;
            };
            if sender.is_closed() {
                app.sink_stopped(from);
                continue;
            }
            let room = sender.capacity();
            if room == 0 {
                continue;
            }
            let rows = match outbox.load(&app.app, from, room) {
                Ok(rows) => {
                    let failures = app.load_errors.succeeded();
                    if failures > 0 {
                        tracing::info!(app = %app.app, failures, "outbox entries load again");
                    }
                    rows
                }
                Err(e) => {
                    // Tried after every batch: while the database is away
                    // only the first failure (and one a minute) is an error.
                    log_failure!(app.load_errors, error = %e, app = %app.app, "cannot load the outbox");
                    continue;
                }
            };
            let complete = rows.len() < room;
            let mut stuck = None;
            let mut last = from - 1;
            for n in rows {
                let id = n.id;
                if sender.try_send(n).is_err() {
                    stuck = Some(id);
                    break;
                }
                last = id;
            }
            app.pending_from = match stuck {
                Some(id) => Some(id),
                None if complete => None,
                None => Some(last + 1),
            };
        }
    }

    /// Shutdown: hand sinks nothing more; their queues close and they
    /// drain what they hold.
    pub fn close(&mut self) {
        for app in &mut self.apps {
            app.sender = None;
        }
    }
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use pushbridge_api::DeviceToken;

    use super::*;

    const APP: &str = "com.example.chat";

    fn n(id: i64) -> Notification {
        let token = DeviceToken::parse(&format!("{id:064x}")).unwrap();
        Notification::new(id, Arc::from(APP), token, Environment::Sandbox, "{}")
    }

    /// An outbox of `rows` (loads by id, as the store does).
    struct Rows(Vec<i64>);

    impl OutboxReader for Rows {
        type Error = String;
        fn load(&mut self, _: &Arc<str>, from: i64, limit: usize) -> Result<Vec<Notification>, String> {
            Ok(self
                .0
                .iter()
                .filter(|id| **id >= from)
                .take(limit)
                .map(|id| n(*id))
                .collect())
        }
    }

    #[test]
    fn taken_over_rows_go_to_the_sink_in_order_and_are_not_counted_again() {
        let counters = Counters::default();
        let (tx, mut rx) = mpsc::channel(2);
        let mut feed = Feed::new();
        feed.add(APP, Environment::Sandbox, 4096, tx, &counters);
        feed.refill(&mut Rows(Vec::new()));
        assert_eq!(feed.topics(), vec![APP.to_owned()]);
        feed.dispatch(vec![(0, n(1))]);
        feed.take_over(vec![(0, n(7)), (0, n(8))]);
        assert_eq!(counters.app(APP).accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(rx.try_recv().unwrap().id, 1);
        assert_eq!(rx.try_recv().unwrap().id, 7);
        // 8 did not fit: it waits in the outbox and is loaded after 7.
        assert!(rx.try_recv().is_err());
        feed.refill(&mut Rows(vec![8]));
        assert_eq!(rx.try_recv().unwrap().id, 8);
        feed.close();
        assert!(feed.topics().is_empty(), "no sink to feed after shutdown");
    }
}
