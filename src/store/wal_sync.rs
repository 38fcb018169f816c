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
//! the thread here, which syncs the `-wal` file (`fdatasync`, as SQLite
//! does on Linux) and only then answers: `OK` still means on disk. Answers
//! handed over while a sync runs share the next one (group commit across
//! transactions), and the store thread applies the next batch meanwhile.
//!
//! Why this is as durable as SQLite's own sync:
//! - the WAL is written in order, and a sync of the file makes every frame
//!   written before it durable, whatever transaction wrote it;
//! - a checkpoint (`db::Checkpointer`) syncs the WAL before copying it into
//!   the database, and the WAL starts over only after a complete one;
//! - SQLite takes no lock on the `-wal` file (its locks are on the database
//!   and `-shm` files), and the descriptor here stays open until the
//!   store's connection is closed, so closing it releases no lock of
//!   SQLite's ("How To Corrupt An SQLite Database File", §2.2);
//! - if the `-wal` file is replaced (a new inode, after every connection
//!   closed), it is opened again before the sync.
//!
//! A failed sync poisons the store: written pages may be lost without a
//! trace (the kernel may drop them and report success later), so nothing is
//! answered `OK` after one; every waiting and later answer is an error
//! until pushbridge restarts (what PostgreSQL does since "fsyncgate").
//!
//! Notifications go to the sinks at commit, before the sync: a machine
//! crash (not a process crash: the page cache survives that) in between
//! can send a push whose `OK` the client never got, and its retry sends it
//! again, which at-least-once delivery allows.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::command::Pending;
use super::stats::StoreMetrics;

/// Transactions' answers that may wait for a sync before the store thread
/// blocks (backpressure while the disk is slow).
const QUEUE: usize = 1024;

/// Makes the written WAL durable; `Err` when the disk could not.
pub(crate) type SyncFn = Box<dyn FnMut() -> io::Result<()> + Send>;

/// The sync thread: answers transactions once the WAL they wrote is on
/// disk. Dropping it answers what waits (after a last sync) and joins the
/// thread.
pub(crate) struct WalSync {
    tx: Option<SyncSender<Vec<Pending>>>,
    thread: Option<JoinHandle<()>>,
}

impl WalSync {
    /// Sync `wal` (the `-wal` file beside a database in WAL mode) on a
    /// thread of its own. Fails if the file cannot be opened or the thread
    /// cannot start (the store then syncs inside `COMMIT` as before).
    pub(crate) fn start(wal: PathBuf, metrics: Arc<StoreMetrics>) -> io::Result<Self> {
        let mut file = WalFile::open(wal)?;
        Self::start_with(Box::new(move || file.sync()), metrics)
    }

    /// Run `sync` before each group of answers.
    pub(crate) fn start_with(mut sync: SyncFn, metrics: Arc<StoreMetrics>) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Vec<Pending>>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("pushbridge-fsync".into())
            .spawn(move || run(&mut sync, &rx, &metrics))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
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

/// The thread: one sync for everything waiting, then answers.
fn run(sync: &mut SyncFn, rx: &Receiver<Vec<Pending>>, metrics: &StoreMetrics) {
    let mut poisoned: Option<String> = None;
    let mut waiting: Vec<Vec<Pending>> = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        waiting.extend(rx.try_iter());
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

/// The `-wal` file, opened again when SQLite replaced it.
struct WalFile {
    path: PathBuf,
    file: File,
}

impl WalFile {
    fn open(path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        Ok(Self { path, file })
    }

    /// `fdatasync` the file now at `path`.
    fn sync(&mut self) -> io::Result<()> {
        if !same_file(&self.file, &self.path)? {
            self.file = File::open(&self.path)?;
        }
        self.file.sync_data()
    }
}

/// Whether `file` is the file now at `path`.
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (open, now) = (file.metadata()?, std::fs::metadata(path)?);
    Ok(open.dev() == now.dev() && open.ino() == now.ino())
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

    #[test]
    fn a_replaced_wal_file_is_opened_again() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("x.db-wal");
        std::fs::write(&path, b"one").expect("write");
        let mut f = WalFile::open(path.clone()).expect("open");
        let first = f.file.metadata().expect("meta").ino();
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, b"two").expect("write");
        f.sync().expect("sync");
        assert_ne!(f.file.metadata().expect("meta").ino(), first);
        assert!(same_file(&f.file, &path).expect("stat"));
    }
}
