//! A connection's replay window: what was written and not yet confirmed,
//! and what an error response does to it. APNS answers nothing on success;
//! an error response names one notification: everything written before it
//! was accepted, it failed, and everything after it was discarded and is
//! sent again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::codec::{self, status};
use super::MAX_WINDOW;
use crate::outcome::{Notification, Outcome};
use crate::sink::pool::Shared;

/// Most confirmed notifications remembered per connection for late error
/// responses.
const RECENT: usize = 16_384;
/// How long a confirmed notification is remembered for a late error.
const RECENT_FOR: Duration = Duration::from_secs(30);

/// A notification written on the current connection.
pub struct Sent {
    /// Its binary identifier.
    pub id: u32,
    /// When its bytes were flushed.
    pub at: Instant,
    pub n: Notification,
}

/// One connection's replay window.
pub struct ConnState {
    pub window: VecDeque<Sent>,
    /// Most unconfirmed notifications allowed now.
    pub limit: usize,
    /// Notifications confirmed on this connection.
    pub confirmed: u64,
    pub confirm_after: Duration,
    /// Notifications confirmed by time on this connection, newest last
    /// (at most [`RECENT`], none older than [`RECENT_FOR`]): an error
    /// response later than `binary_confirm_ms` that names one of them still
    /// fails it, and what followed it (APNS discarded that) is taken back
    /// and sent again.
    recent: VecDeque<(u32, Instant, Notification)>,
}

impl ConnState {
    /// An empty window allowing `limit` unconfirmed notifications.
    pub fn new(limit: usize, confirm_after: Duration) -> Self {
        Self {
            window: VecDeque::new(),
            limit,
            confirmed: 0,
            confirm_after,
            recent: VecDeque::new(),
        }
    }

    /// Settle as delivered what stayed in the window `confirm_after`
    /// without an error response; doubles the limit when any was.
    pub fn confirm_due(&mut self, shared: &Shared) {
        let now = Instant::now();
        let before = self.confirmed;
        while self
            .window
            .front()
            .is_some_and(|s| now.duration_since(s.at) >= self.confirm_after)
        {
            if let Some(s) = self.window.pop_front() {
                if self.recent.len() == RECENT {
                    self.recent.pop_front();
                }
                let n = shared.finish_keep(s.n, Outcome::Delivered);
                self.recent.push_back((s.id, now, n));
                self.confirmed += 1;
            }
        }
        while self
            .recent
            .front()
            .is_some_and(|(_, at, _)| now.duration_since(*at) > RECENT_FOR)
        {
            self.recent.pop_front();
        }
        if self.confirmed > before {
            self.limit = (self.limit * 2).min(MAX_WINDOW);
        }
    }
}

/// Put `ns` (in order) before what `replay` already holds.
pub fn requeue_front(replay: &mut VecDeque<Notification>, ns: impl DoubleEndedIterator<Item = Notification>) {
    for n in ns.rev() {
        replay.push_front(n);
    }
}

/// Apply an error response to the window.
pub fn settle_error(
    err: codec::ErrorResponse,
    conn: &mut ConnState,
    replay: &mut VecDeque<Notification>,
    shared: &Shared,
) {
    let Some(pos) = conn.window.iter().position(|s| s.id == err.id) else {
        // Everything still in the window followed the named notification.
        requeue_front(replay, conn.window.drain(..).map(|s| s.n));
        if let Some(i) = conn.recent.iter().position(|(id, ..)| *id == err.id) {
            settle_late_error(err, i, conn, replay, shared);
        } else {
            shared
                .outcomes
                .lost(1, "error response for an identifier no longer remembered");
            tracing::error!(
                status = err.status,
                apns_id = err.id,
                "error response for a notification neither in the window nor remembered; \
                 what followed it may be lost (raise binary_confirm_ms); re-sending the window"
            );
        }
        return;
    };
    let mut before: Vec<Sent> = conn.window.drain(..=pos).collect();
    let Some(named) = before.pop() else { return };
    for s in before {
        shared.finish(s.n, Outcome::Delivered);
    }
    let reason = format!("binary status {} ({})", err.status, status::describe(err.status));
    match err.status {
        status::SHUTDOWN => shared.finish(named.n, Outcome::Delivered),
        status::INVALID_TOKEN => shared.finish(
            named.n,
            Outcome::Rejected {
                reason,
                remove_device: true,
                since_ms: None,
            },
        ),
        status::PROCESSING_ERROR | status::UNKNOWN => shared.retry(named.n, &reason),
        _ => shared.finish(named.n, Outcome::dropped(reason)),
    }
    if !conn.window.is_empty() {
        tracing::info!(
            count = conn.window.len(),
            "re-sending what followed the failed notification"
        );
    }
    requeue_front(replay, conn.window.drain(..).map(|s| s.n));
}

/// An error response for the `i`-th remembered notification, one already
/// confirmed by time and settled as delivered: APNS failed it and discarded
/// everything written after it, so those are taken back and put first in
/// `replay`; the named one is acted on as if the answer had come in time.
fn settle_late_error(
    err: codec::ErrorResponse,
    i: usize,
    conn: &mut ConnState,
    replay: &mut VecDeque<Notification>,
    shared: &Shared,
) {
    let mut tail = conn.recent.split_off(i);
    conn.recent.clear();
    let Some((_, _, named)) = tail.pop_front() else { return };
    let reason = format!("binary status {} ({})", err.status, status::describe(err.status));
    tracing::warn!(
        status = err.status,
        apns_id = err.id,
        resent = tail.len(),
        confirm_ms = conn.confirm_after.as_millis() as u64,
        "error response later than binary_confirm_ms; re-sending what followed the failed notification"
    );
    let mut back: Vec<Notification> = Vec::with_capacity(tail.len() + 1);
    match err.status {
        status::SHUTDOWN => {}
        status::INVALID_TOKEN => shared.outcomes.device_gone(named.token.clone(), None, &reason),
        status::PROCESSING_ERROR | status::UNKNOWN => back.push(shared.take_back(named)),
        _ => shared.outcomes.late_rejection(&named, &reason),
    }
    back.extend(tail.into_iter().map(|(_, _, n)| shared.take_back(n)));
    requeue_front(replay, back.into_iter());
}
