//! The sinks' own threads (`[gateway] sink_threads`, default 1): each a
//! single-threaded tokio runtime that runs the sinks handed to it, apart
//! from the runtime of the adapters, the router and the admin listener.
//!
//! Why: a sink is one tight loop of small steps (take a notification,
//! write a request, read an answer, report the outcome) spread over a few
//! tasks that wake each other all the time. On tokio's multi-thread
//! runtime those wake-ups cross threads (another worker steals the task;
//! a futex wakes a parked worker); on one thread they are plain queue
//! pushes. Measured with `bench/peers/run` on the 2-core machine
//! (2026-12-01): the `h2` crate alone answered 119,983 requests/s at 5.0 µs
//! of CPU each on one thread, 101,743/s at 10.0 µs on two tokio workers;
//! the gateway's drain of 200,000 queued notifications (1 connection) went
//! from 81,805–85,166/s at 2.69–2.83 s of CPU (sinks on the shared
//! runtime) to 102,058–105,160/s at 2.21–2.25 s (one sink thread), end to
//! end from 66,159–67,937/s to 72,832–77,321/s.
//!
//! Apps are spread over the threads round robin in config order; one
//! thread carried 83,000–110,000 notifications/s into nghttpd on those two
//! cores, so more threads are for many busy apps on many cores. An app's
//! connections share its thread; their workers take from one
//! multi-consumer queue ([`super::pool::PoolQueue`]): with `connections =
//! 2` the drain went from 75,884–81,285/s at 3.07–3.27 CPU s (a mutex
//! around one receiver, a wake-up per notification) to 109,704–110,805/s
//! at 2.21–2.22 s. `sink_threads = 0` runs the sinks on the shared runtime.
//! What a sink does that blocks (reading its credential files on a reload,
//! a TLS handshake's signature) holds up the other sinks of its thread
//! meanwhile.
//!
//! Stopping: [`SinkThreads::stop`] (or dropping it) ends the threads; what
//! a sink still runs then (the shutdown grace ran out) is dropped with its
//! runtime, and its notifications stay in the outbox, as with a crash.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The threads running the sinks (see the module docs). Dropping it stops
/// them without waiting; [`SinkThreads::stop`] waits.
pub struct SinkThreads {
    /// One runtime per thread; empty: sinks run on the caller's runtime.
    handles: Vec<Handle>,
    /// The threads, joined by [`SinkThreads::stop`].
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The thread the next sink goes to.
    next: usize,
    /// Cancelled on stop or drop: every thread then drops its runtime and
    /// ends.
    stop: CancellationToken,
}

impl SinkThreads {
    /// Start `n` threads named `pb-sink-<i>`, each running a current-thread
    /// runtime with its timer and I/O driver (its blocking pool's threads:
    /// `pb-sink-<i>-blk`). `n = 0` starts none: [`SinkThreads::spawn`]
    /// then spawns on the caller's runtime. Blocks until each runtime is
    /// built, on its own thread (a runtime dropped inside another panics,
    /// so none is ever made on the caller's).
    ///
    /// Errors: the OS refused a thread, or a runtime's I/O driver could not
    /// be made (out of file descriptors); the threads already started end.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut threads = Self {
            handles: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            next: 0,
            stop: CancellationToken::new(),
        };
        for i in 0..n {
            let (built_tx, built) = std::sync::mpsc::sync_channel(1);
            let stop = threads.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("pb-sink-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name(format!("pb-sink-{i}-blk"))
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = built_tx.send(Ok(runtime.handle().clone()));
                            // Tasks run only while the thread blocks on the
                            // runtime; dropping it afterwards drops what still
                            // runs there.
                            runtime.block_on(stop.cancelled());
                        }
                        Err(e) => {
                            let _ = built_tx.send(Err(e));
                        }
                    }
                })?;
            threads.threads.push(thread);
            let handle = built
                .recv()
                .map_err(|_| std::io::Error::other("a sink thread ended before its runtime was built"))??;
            threads.handles.push(handle);
        }
        Ok(threads)
    }

    /// How many threads run sinks (0: the sinks share the caller's runtime).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether the sinks share the caller's runtime.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Run `sink` on the next thread in turn, or on the caller's runtime
    /// when there are none. The handle can be awaited from any runtime; it
    /// reports a cancelled task if the threads stopped first.
    ///
    /// # Panics
    /// With no threads, outside a tokio runtime (as `tokio::spawn`).
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

    /// End the threads, dropping what their sinks still run, and wait up
    /// to `within` for them to finish; whether they did. The gateway calls
    /// it before handing its outbox entries to other gateways, so no sink
    /// of its own sends them meanwhile.
    pub async fn stop(mut self, within: Duration) -> bool {
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        if threads.is_empty() {
            return true;
        }
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        matches!(tokio::time::timeout(within, joined).await, Ok(Ok(())))
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
        assert_eq!(names, ["pb-sink-0", "pb-sink-1", "pb-sink-0", "pb-sink-1"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_threads_sinks_run_on_the_callers_runtime() {
        let mut threads = SinkThreads::start(0).unwrap();
        assert!(threads.is_empty());
        let names: BTreeSet<String> = [thread_of(&mut threads).await].into();
        assert!(names.iter().all(|n| !n.starts_with("pb-sink")), "{names:?}");
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
        let dropped = tokio::time::timeout(Duration::from_secs(10), dropped_rx).await;
        assert!(
            matches!(dropped, Ok(Err(_))),
            "the sink's task was dropped with its runtime"
        );
        let ended = tokio::time::timeout(Duration::from_secs(10), sink)
            .await
            .expect("the handle ends");
        assert!(ended.expect_err("cancelled").is_cancelled());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_waits_for_the_threads_and_drops_their_sinks() {
        let mut threads = SinkThreads::start(2).unwrap();
        let (dropped_tx, mut dropped_rx) = tokio::sync::mpsc::channel::<()>(1);
        for _ in 0..2 {
            let guard = dropped_tx.clone();
            threads.spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            });
        }
        drop(dropped_tx);
        assert!(threads.stop(Duration::from_secs(10)).await, "both threads ended");
        // Every sender was dropped with its task: the channel is closed.
        let closed = tokio::time::timeout(Duration::from_secs(1), dropped_rx.recv()).await;
        assert_eq!(closed, Ok(None));
    }

    #[tokio::test]
    async fn stop_without_threads_returns_at_once() {
        assert!(SinkThreads::start(0).unwrap().stop(Duration::ZERO).await);
    }
}
