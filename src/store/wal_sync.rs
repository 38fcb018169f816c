//! Waiting for the disk off the store thread (SQLite, `synchronous = "full"`).
//!
//! SQLite in WAL mode under `synchronous=FULL` appends a transaction's
//! frames to the `-wal` file and fsyncs it inside `COMMIT`, on the store
//! thread, so the next batch waits for the disk. At moderate rates batches
//! are small and the thread spends most of its time there (10,000 msg/s on
//! the 2-core test machine: 0.58 ms per transaction, about half of it the
//! fsync, the thread ~87 % busy, and every message queued behind it).
//!
//! Instead the store's connection commits with `synchronous=NORMAL` (the
//! frames are written, not synced) and hands the transaction's answers to
//! the thread here, which syncs the `-wal` file (`fdatasync`; SQLite's own
//! sync is an `fsync` of the same file, and on Linux either makes the
//! written data durable) and only then answers: `OK` still means on disk.
//! Answers handed over while a sync runs share the next one (group commit
//! across transactions), and the store thread applies the next batch
//! meanwhile.
//!
//! Why this is as durable as SQLite's own sync:
//! - the WAL is written in order, and a sync of the file makes every frame
//!   written before it durable, whatever transaction wrote it;
//! - a checkpoint (`db::Checkpointer`, whose connection syncs as `FULL`)
//!   syncs the WAL before copying it and the database before the WAL may
//!   start over, and the new WAL header is synced when it does;
//! - SQLite keeps its WAL descriptor, on the same file, for as long as its
//!   connection is open (the store's is, for as long as this thread runs),
//!   so the descriptor opened here at start always names that file;
//! - SQLite takes no lock on the `-wal` file (its locks are on the database
//!   and `-shm` files), so closing the descriptor here releases no lock of
//!   SQLite's ("How To Corrupt An SQLite Database File", §2.2).
//!
//! A failed sync poisons the store: written pages may be lost without a
//! trace (the kernel may drop them and report success later), so nothing is
//! answered `OK` after one. The waiting answers are errors, and the store
//! thread asks [`WalSync::poisoned`] before every transaction and fails it
//! whole (nothing more is written, pushed or counted) until pushbridge
//! restarts, as PostgreSQL does since "fsyncgate".
//!
//! Notifications go to the sinks at commit, before the sync: a machine
//! crash (not a process crash: the page cache survives that) in between
//! can send a push whose `OK` the client never got, and its retry sends it
//! again, which at-least-once delivery allows.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::command::Pending;
use super::stats::StoreMetrics;

/// Transactions' answers that may wait for a sync before the store thread
/// blocks (backpressure while the disk is slow).
const QUEUE: usize = 1024;

/// Makes the written WAL durable; `Err` when the disk could not.
pub(crate) type SyncFn = Box<dyn FnMut() -> io::Result<()> + Send>;

/// Why nothing may be answered `OK` any more; `None` while all is well.
type Poison = Arc<Mutex<Option<String>>>;

/// The sync thread: answers transactions once the WAL they wrote is on
/// disk. Dropping it answers what waits (after a last sync) and joins the
/// thread.
pub(crate) struct WalSync {
    tx: Option<SyncSender<Vec<Pending>>>,
    thread: Option<JoinHandle<()>>,
    poison: Poison,
}

impl WalSync {
    /// Sync `wal` (the `-wal` file beside a database in WAL mode, opened
    /// now and kept) on a thread of its own. Fails if the file cannot be
    /// opened or the thread cannot start (the store then syncs inside
    /// `COMMIT` as before).
    pub(crate) fn start(wal: PathBuf, metrics: Arc<StoreMetrics>) -> io::Result<Self> {
        let file = File::open(wal)?;
        Self::start_with(Box::new(move || file.sync_data()), metrics)
    }

    /// Run `sync` before each group of answers.
    pub(crate) fn start_with(mut sync: SyncFn, metrics: Arc<StoreMetrics>) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Vec<Pending>>(QUEUE);
        let poison = Poison::default();
        let poisoned = poison.clone();
        let thread = std::thread::Builder::new()
            .name("pushbridge-fsync".into())
            .spawn(move || run(&mut sync, &rx, &metrics, &poisoned))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            poison,
        })
    }

    /// Why nothing may be written any more: a sync failed, or the thread
    /// is gone (it panicked). The store thread fails every transaction
    /// then.
    pub(crate) fn poisoned(&self) -> Option<String> {
        if let Some(why) = lock(&self.poison).clone() {
            return Some(why);
        }
        self.thread
            .as_ref()
            .filter(|t| t.is_finished())
            .map(|_| GONE.to_owned())
    }

    /// Answer `pending` (a committed transaction's answers) once the WAL is
    /// synced. Blocks while [`QUEUE`] transactions wait already. Should the
    /// thread be gone (it panicked), the answers are errors.
    pub(crate) fn answer_when_synced(&self, pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let Some(tx) = &self.tx else { return fail(pending, GONE) };
        match tx.try_send(pending) {
            Ok(()) => {}
            Err(TrySendError::Full(pending)) => {
                if let Err(e) = tx.send(pending) {
                    fail(e.0, GONE);
                }
            }
            Err(TrySendError::Disconnected(pending)) => fail(pending, GONE),
        }
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the store's fsync thread panicked");
            }
        }
    }
}

const GONE: &str = "store: the fsync thread is gone; nothing is confirmed as written";

fn fail(pending: Vec<Pending>, msg: &str) {
    for p in pending {
        p.fail(msg);
    }
}

fn lock(poison: &Poison) -> std::sync::MutexGuard<'_, Option<String>> {
    poison.lock().unwrap_or_else(|p| p.into_inner())
}

/// The thread: one sync for everything waiting, then answers.
fn run(sync: &mut SyncFn, rx: &Receiver<Vec<Pending>>, metrics: &StoreMetrics, poison: &Poison) {
    let mut waiting: Vec<Vec<Pending>> = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        waiting.extend(rx.try_iter());
        let mut poisoned = lock(poison).clone();
        if poisoned.is_none() {
            let started = Instant::now();
            match sync() {
                Ok(()) => metrics.synced(started.elapsed()),
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "the disk did not confirm the store's writes (fsync failed); nothing more is accepted until pushbridge restarts"
                    );
                    let msg = format!("store: the disk did not confirm the write (fsync failed: {e}); restart pushbridge once the disk is sound");
                    metrics.sync_failed(&msg);
                    *lock(poison) = Some(msg.clone());
                    poisoned = Some(msg);
                }
            }
        }
        for pending in waiting.drain(..) {
            match &poisoned {
                None => pending.into_iter().for_each(Pending::send),
                Some(msg) => fail(pending, msg),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushbridge_api::{EventError, Reply};
    use tokio::sync::oneshot;

    fn answer() -> (Pending, oneshot::Receiver<Result<Reply, EventError>>) {
        let (tx, rx) = oneshot::channel();
        (Pending::Event(Some(tx), Ok(Reply::Done)), rx)
    }

    #[test]
    fn answers_wait_for_the_sync() {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let sync: SyncFn = Box::new(move || go_rx.recv().map_err(|_| io::Error::other("test over")));
        let s = WalSync::start_with(sync, Arc::default()).expect("thread");
        let (p, mut rx) = answer();
        s.answer_when_synced(vec![p]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "answered before the sync"
        );
        go_tx.send(()).expect("thread waits");
        assert!(matches!(rx.blocking_recv(), Ok(Ok(Reply::Done))));
    }

    #[test]
    fn a_failed_sync_fails_its_answers_and_every_later_one() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let sync: SyncFn = Box::new(move || {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(io::Error::other("EIO"))
        });
        let metrics = Arc::new(StoreMetrics::default());
        let s = WalSync::start_with(sync, metrics.clone()).expect("thread");
        let (p, rx) = answer();
        s.answer_when_synced(vec![p]);
        let err = rx.blocking_recv().expect("answered").expect_err("an error");
        assert!(err.to_string().contains("fsync failed: EIO"), "{err}");
        let (p, rx) = answer();
        s.answer_when_synced(vec![p]);
        assert!(rx.blocking_recv().expect("answered").is_err());
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "no sync after a failed one"
        );
        assert!(metrics.writable().is_err_and(|e| e.contains("fsync failed")));
        assert!(
            s.poisoned().is_some_and(|e| e.contains("fsync failed")),
            "the store thread is told"
        );
    }

    #[test]
    fn dropping_it_answers_what_waits() {
        let sync: SyncFn = Box::new(|| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(())
        });
        let s = WalSync::start_with(sync, Arc::default()).expect("thread");
        let rxs: Vec<_> = (0..5)
            .map(|_| {
                let (p, rx) = answer();
                s.answer_when_synced(vec![p]);
                rx
            })
            .collect();
        drop(s);
        for mut rx in rxs {
            assert!(matches!(rx.try_recv(), Ok(Ok(Reply::Done))));
        }
    }
}
