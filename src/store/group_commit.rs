//! Group commit: at most one `sled::Db::flush` at a time, run on the blocking pool and shared
//! by every writer that is waiting for durability.
//!
//! Why not sled's `flush_async`: sled 0.34 runs each one on its own IO thread pool, and a flush
//! holds sled's concurrency read lock while it waits for the log to become stable. With enough
//! concurrent flushes, every thread of that pool waits inside a flush while the log write they
//! wait for sits queued behind them (the pool only grows once more than 7 jobs are queued). A
//! transaction waiting for sled's write lock then blocks every other reader, and the process
//! hangs. The race tests found this: 16 concurrent refreshes hung the server. One flush in
//! flight, on our own blocking pool, leaves sled's pool free for its log writes, and a burst of
//! writers shares one fsync.
use super::{StoreError, StoreResult};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use tokio::sync::watch;

/// A flush that takes longer than this is logged (a healthy one takes well under 5 ms).
const SLOW_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Clone, Default)]
struct Round {
    /// Every ticket up to this one has been through a flush.
    covered: u64,
    /// The latest flush failed (a later success makes all earlier writes durable too).
    error: Option<Arc<str>>,
}

pub(crate) struct GroupCommit {
    requested: AtomicU64,
    running: AtomicBool,
    done: watch::Sender<Round>,
}

impl GroupCommit {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(GroupCommit {
            requested: AtomicU64::new(0),
            running: AtomicBool::new(false),
            done: watch::Sender::new(Round::default()),
        })
    }

    /// Returns once every write made before the call is durable.
    pub(crate) async fn flush(self: &Arc<Self>, db: &sled::Db) -> StoreResult<()> {
        // Subscribe before taking the ticket, so no round that covers it can go unseen.
        let mut rx = self.done.subscribe();
        let ticket = self.requested.fetch_add(1, SeqCst) + 1;
        loop {
            {
                let round = rx.borrow_and_update();
                if round.covered >= ticket {
                    return match &round.error {
                        None => Ok(()),
                        Some(e) => Err(StoreError::Flush(e.to_string())),
                    };
                }
            }
            if !self.running.swap(true, SeqCst) {
                // The round runs to its end even if this caller goes away meanwhile.
                let (gc, db) = (self.clone(), db.clone());
                tokio::task::spawn_blocking(move || gc.run_round(&db));
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Flush("the store was closed".into()));
            }
        }
    }

    fn run_round(&self, db: &sled::Db) {
        let target = self.requested.load(SeqCst);
        let error = flush_now(db).err();
        // Let the next round start before waking anyone, so a woken waiter whose ticket this
        // round did not cover can start it.
        self.running.store(false, SeqCst);
        self.done.send_modify(|round| {
            if target > round.covered {
                round.covered = target;
                round.error = error;
            }
        });
    }
}

/// One flush of the whole store with the flush gate held (`kv.rs`): what a group-commit round
/// and each batch of the store's writer thread (`writer.rs`) run. A slow one is logged.
pub(super) fn flush_now(db: &sled::Db) -> Result<(), Arc<str>> {
    let started = std::time::Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _gate = super::kv::flush_gate_exclusive();
        db.flush()
    }));
    let took = started.elapsed();
    if took >= SLOW_FLUSH {
        // Every writer waiting for it waited this long: the first thing to look at in a tail.
        tracing::warn!(ms = took.as_millis() as u64, "slow store flush");
    }
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string().into()),
        Err(_) => Err("the flush panicked".into()),
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;
    use crate::store::kv::Transactional;
    use std::time::Duration;

    /// 96 tasks committing transactions and awaiting durability at once, on two runtime threads
    /// like the server's workers. With sled's `flush_async` this hung within seconds.
    #[test]
    fn concurrent_transactions_and_flushes_never_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut threads = Vec::new();
        for t in 0..2u8 {
            let store = store.clone();
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let mut tasks = Vec::new();
                    for i in 0..48u8 {
                        let store = store.clone();
                        tasks.push(tokio::task::spawn_local(async move {
                            for round in 0..40u8 {
                                let key = [t, i, round];
                                (&store.sessions, &store.refresh_tokens)
                                    .transaction(|(a, b)| {
                                        a.set(&key[..], &key[..])?;
                                        b.set(&key[..], &key[..])?;
                                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                                    })
                                    .unwrap();
                                store.flush().await.unwrap();
                            }
                        }));
                    }
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
            }));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for th in threads {
            while !th.is_finished() {
                assert!(std::time::Instant::now() < deadline, "writers deadlocked");
                std::thread::sleep(Duration::from_millis(20));
            }
            th.join().unwrap();
        }
        assert_eq!(store.sessions.len(), 2 * 48 * 40);
    }
}
