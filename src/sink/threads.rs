//! The sinks' own threads (`[gateway] sink_threads`, default 1): each a
//! single-threaded tokio runtime that runs the sinks handed to it, apart
//! from the runtime of the adapters, the router and the admin listener.
//!
//! Why: a sink is one tight loop of small steps (take a notification,
//! write a request, read an answer, report the outcome) spread over a few
//! tasks that wake each other all the time. On tokio's multi-thread
//! runtime those wake-ups cross threads (another worker steals the task;
//! a futex wakes a parked worker); on one thread they are plain queue
//! pushes. Measured with `bench/peers/run` on the 2-core machine: the
//! `h2` crate alone answers 136,000 requests/s at 4.3 µs of CPU each on
//! one thread, and 112,000/s at 9 µs on two tokio workers; the gateway's
//! drain of 200,000 queued notifications went from 86,000/s at 2.70 s of
//! CPU (sinks on the shared runtime) to 102,000/s at 2.25 s (one sink
//! thread), end to end from 68,000/s to 73,000/s.
//!
//! Apps are spread over the threads round robin in config order; one
//! thread carried 87,000–105,000 notifications/s into nghttpd on those two
//! cores, so more threads are for many busy apps on many cores. An app's
//! connections share its thread (with `connections = 2` the drain was as
//! fast as on the shared runtime, not faster). `sink_threads = 0` runs the
//! sinks on the shared runtime instead.
//!
//! Stopping: dropping [`SinkThreads`] ends the threads; what a sink still
//! runs then (the shutdown grace ran out) is dropped with its runtime, and
//! its notifications stay in the outbox, as with a crash.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The threads running the sinks (see the module docs). Dropping it stops
/// them.
pub struct SinkThreads {
    /// One runtime per thread; empty: sinks run on the caller's runtime.
    handles: Vec<Handle>,
    /// The thread the next sink goes to.
    next: usize,
    /// Cancelled on drop: every thread then drops its runtime and ends.
    stop: CancellationToken,
}

impl SinkThreads {
    /// Start `n` threads named `pushbridge-sink-<i>`, each running a
    /// current-thread runtime with its timer and I/O driver. `n = 0`
    /// starts none: [`SinkThreads::spawn`] then spawns on the caller's
    /// runtime.
    ///
    /// Errors: the OS refused a thread, or a runtime's I/O driver could not
    /// be made (out of file descriptors); the threads already started end.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut threads = Self {
            handles: Vec::with_capacity(n),
            next: 0,
            stop: CancellationToken::new(),
        };
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let stop = threads.stop.clone();
            std::thread::Builder::new()
                .name(format!("pushbridge-sink-{i}"))
                // Tasks run only while the thread blocks on the runtime;
                // dropping it afterwards drops what still runs there.
                .spawn(move || runtime.block_on(stop.cancelled()))?;
            threads.handles.push(handle);
        }
        Ok(threads)
    }

    /// How many threads run sinks (0: the sinks share the caller's runtime).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether the sinks share the caller's runtime.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Run `sink` on the next thread in turn, or on the caller's runtime
    /// when there are none (must then be called within one). The handle
    /// can be awaited from any runtime; it reports a cancelled task if the
    /// threads stopped first.
    pub fn spawn<F>(&mut self, sink: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            return tokio::spawn(sink);
        }
        let handle = &self.handles[self.next % self.handles.len()];
        self.next += 1;
        handle.spawn(sink)
    }
}

impl Drop for SinkThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    /// The name of the thread a spawned sink ran on.
    async fn thread_of(threads: &mut SinkThreads) -> String {
        let seen = Arc::new(Mutex::new(String::new()));
        let s = seen.clone();
        threads
            .spawn(async move {
                // A timer and a yield: the thread's runtime drives both.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                tokio::task::yield_now().await;
                *s.lock().unwrap() = std::thread::current().name().unwrap_or("").to_string();
            })
            .await
            .expect("the sink ran to its end");
        let name = seen.lock().unwrap().clone();
        name
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sinks_run_on_their_threads_round_robin() {
        let mut threads = SinkThreads::start(2).unwrap();
        assert_eq!(threads.len(), 2);
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(thread_of(&mut threads).await);
        }
        assert_eq!(
            names,
            [
                "pushbridge-sink-0",
                "pushbridge-sink-1",
                "pushbridge-sink-0",
                "pushbridge-sink-1"
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_threads_sinks_run_on_the_callers_runtime() {
        let mut threads = SinkThreads::start(0).unwrap();
        assert!(threads.is_empty());
        let names: BTreeSet<String> = [thread_of(&mut threads).await].into();
        assert!(names.iter().all(|n| !n.starts_with("pushbridge-sink")), "{names:?}");
    }

    #[tokio::test]
    async fn dropping_the_threads_drops_the_sinks_still_running() {
        let mut threads = SinkThreads::start(1).unwrap();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let sink = threads.spawn(async move {
            // Held until the task is dropped: its sender then closes.
            let _guard = dropped_tx;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        started_rx.await.expect("the sink started");
        drop(threads);
        assert!(
            dropped_rx.await.is_err(),
            "the sink's task was dropped with its runtime"
        );
        assert!(sink.await.expect_err("cancelled").is_cancelled());
    }
}
