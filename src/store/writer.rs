//! The store's writer thread: on sled, the product writes of request handlers run here, in
//! batches, each batch made durable by one flush on the same thread.
//!
//! Why a thread of its own:
//! - A sled write may have to wait: while a flush is running it waits at the flush gate
//!   (`kv.rs`), for as long as the flush takes (a few milliseconds, over 100 ms when the disk is
//!   slow). A request worker waiting there holds every connection it serves, reads answered
//!   from memory included. Handed to this thread, the write waits here and the workers go on.
//! - One thread, not the blocking pool: sled runs one transaction at a time anyway (its write
//!   lock), so a second writer thread would only wait beside the first. The blocking pool grows
//!   a thread for every write waiting on a flush, and hundreds of threads (each with its own
//!   allocator heap) took the soak's RSS from 180 to 950 MiB and its tail up with them.
//! - The flush on the same thread: a batch's writes never wait for a flush they are not in
//!   (a write committed just after a flush started would otherwise wait for that flush and then
//!   its own), and making them durable costs no hop to another thread and back.
use super::group_commit::flush_now;
use super::{StoreError, StoreResult};
use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, Sender, channel};

/// Most writes one flush covers: a batch stops taking writes once it has this many, so the
/// first write of a long queue does not wait for all the others before its flush.
const MAX_BATCH: usize = 64;

/// Called with the batch's flush result once the batch is durable (or its flush failed).
type Answer = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// A write that has run, waiting for its batch's flush.
struct Written {
    db: sled::Db,
    answer: Answer,
}

type Job = Box<dyn FnOnce() -> Written + Send>;

/// What a write answers: its result, and whether its flush succeeded.
pub(crate) type Durable<T> = (T, StoreResult<()>);

/// The writer thread of one store, started on the first write handed to it. It ends when the
/// store does, and holds no handle on the database between batches (a store closed and opened
/// again at once finds its files free).
#[derive(Default)]
pub(crate) struct Writer {
    jobs: OnceLock<Option<Sender<Job>>>,
}

fn serve(jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first()];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job()),
                Err(_) => break,
            }
        }
        let flushed = flush_now(&batch[0].db);
        // The database handles go before anyone is answered: a caller that then closes the
        // store and opens it again must find nothing of it still held here.
        let answers: Vec<Answer> = batch.into_iter().map(|w| w.answer).collect();
        for answer in answers {
            answer(
                flushed
                    .clone()
                    .map_err(|e| StoreError::Flush(e.to_string())),
            );
        }
    }
}

impl Writer {
    fn sender(&self) -> Option<&Sender<Job>> {
        self.jobs
            .get_or_init(|| {
                let (tx, rx) = channel::<Job>();
                let started = std::thread::Builder::new()
                    .name("pixee-store-writer".into())
                    .spawn(move || serve(rx));
                match started {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::warn!(error = %e, "no store writer thread: writes run in place");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Runs `write` on the writer thread, then the flush of its batch, then `after` with what
    /// `write` returned (whether or not anyone still waits); answers the write's result and the
    /// flush's. A write or an `after` that panics answers an error and leaves the thread
    /// running.
    pub(crate) async fn run<T, F, A>(
        &self,
        db: &sled::Db,
        write: F,
        after: A,
    ) -> StoreResult<Durable<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
        A: FnOnce(&T) + Send + 'static,
    {
        let Some(jobs) = self.sender() else {
            let written = write();
            let flushed = flush_now(db).map_err(|e| StoreError::Flush(e.to_string()));
            after(&written);
            return Ok((written, flushed));
        };
        type Outcome<T> = Result<Durable<T>, Box<dyn Any + Send>>;
        let (answer, answered) = tokio::sync::oneshot::channel::<Outcome<T>>();
        let db = db.clone();
        let job: Job = Box::new(move || {
            let written = catch_unwind(AssertUnwindSafe(write));
            Written {
                db,
                answer: Box::new(move |flushed| {
                    let written = written
                        .and_then(|w| catch_unwind(AssertUnwindSafe(|| after(&w))).map(|()| w));
                    let _ = answer.send(written.map(|w| (w, flushed)));
                }),
            }
        });
        if jobs.send(job).is_err() {
            return Err(StoreError::Backend("the store writer has stopped".into()));
        }
        match answered.await {
            Ok(Ok(durable)) => Ok(durable),
            Ok(Err(_)) => Err(StoreError::Backend("a store write panicked".into())),
            Err(_) => Err(StoreError::Backend("the store writer has stopped".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    /// A write that panics answers an error; the thread goes on with the next write, which
    /// is committed and flushed.
    #[tokio::test]
    async fn a_panicking_write_answers_an_error_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let failed = store
            .write_durable(|_| -> u8 { panic!("a write that panics") }, |_| {})
            .await;
        assert!(failed.is_err());
        let (written, flushed) = store
            .write_durable(|s| s.meta_set("writer-test", b"v").map(|()| 7u8), |_| {})
            .await
            .unwrap();
        assert_eq!((written.unwrap(), flushed.is_ok()), (7, true));
        assert_eq!(
            store.meta_get("writer-test").unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }

    /// Writes handed over at once are all answered, each after a flush that covers it, and
    /// the store can be opened again as soon as the last answer came and the store closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_answered_and_leave_the_store_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("w{i}");
                let (written, flushed) = store
                    .write_durable(move |s| s.meta_set(&key, &i.to_be_bytes()), |_| {})
                    .await
                    .unwrap();
                written.unwrap();
                flushed.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(store);
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        for i in 0..200u32 {
            let v = store.meta_get(&format!("w{i}")).unwrap().unwrap();
            assert_eq!(v, i.to_be_bytes());
        }
    }
}
