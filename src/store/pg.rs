//! The PostgreSQL engine behind `kv.rs` (`serve --database-url`, SPEC §12).
//!
//! Layout: one table, `kv (tree, k, v)`, with the primary key `(tree, k)`: a tree is its rows,
//! in `bytea` order, which is sled's byte order. The store's records, indexes and their
//! encoding are the same on both engines, so `check`, `backup`'s walk and `migrate` are one
//! code path; the schema is applied by sqlx's embedded migrations under their advisory lock.
//!
//! Transactions run at `REPEATABLE READ` (one snapshot) and lock every row they read
//! (`FOR UPDATE`) until they end; their writes go as one upsert and one removal just before
//! the commit. A row changed since the snapshot (SQLSTATE 40001), a deadlock (40P01) or a
//! duplicate key runs the closure again from the start, which is sled's own rule: its closures
//! already run again on a conflict. So every row a transaction read or wrote is unchanged by
//! others from its snapshot to its commit, and a key it found absent and then writes cannot be
//! written first by another transaction (its upsert conflicts): every read-check-write of the
//! store (an EAN, a refresh token, a lockout counter, a reference count) is exact. What this
//! level allows and `SERIALIZABLE` would not is write skew on absent keys: two transactions,
//! each finding absent a key only the other writes. The store's transactions were read for it
//! (webhooks, categories, sessions and refresh tokens, lockout, keys, jobs, tombstones,
//! supplier and category counts): where one relies on an absence without writing that key,
//! it either writes nothing (an unknown supplier, category, webhook or token is refused) or
//! both sides write a record they share (a category tree's version, a namespace's tombstone
//! cursor, a reference count), so the two conflict there.
//! `SERIALIZABLE` gave the same answers, but its predicate locks on index pages made
//! concurrent creates in one namespace fail each other nine times in ten
//! (docs/PERFORMANCE.md, "PostgreSQL"). A committed transaction is durable (PostgreSQL's
//! `synchronous_commit`), so `Store::flush` has nothing left to wait for.
//!
//! The store's callers are synchronous (sled is), so this engine owns a small tokio runtime for
//! sqlx and each call waits for its future there: the caller's thread blocks for the round trip,
//! as it blocks for sled's IO. Every sqlx object lives and dies on that runtime.
use super::kv::{IVec, TxTree};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, UnabortableTransactionError,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgPool, Postgres, Row};
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Bound;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The advisory lock a node holds while it serves the database (its caches are coherent only
/// while no other process writes it: see docs/ARCHITECTURE.md).
const NODE_LOCK: i64 = 0x5049_5845_4550_494d; // "PIXEEPIM"

/// How long a call waits for a connection before the store answers "unavailable".
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// An error of this engine, carried in sled's error type through the store's rules. A lost or
/// refused connection is `NotConnected`, which the store reports as unavailable (503).
fn failure(e: sqlx::Error) -> sled::Error {
    let kind = if unavailable(&e) {
        std::io::ErrorKind::NotConnected
    } else {
        std::io::ErrorKind::Other
    };
    sled::Error::Io(std::io::Error::new(kind, format!("postgresql: {e}")))
}

fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08: connection exception; 57P0x: the server shutting down or starting up; 57014:
            // a statement ended by `statement_timeout`.
            c.starts_with("08") || c.starts_with("57P") || c == "57014"
        }),
        _ => false,
    }
}

/// A failure that running the transaction again can cure.
fn conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| matches!(&*c, "40001" | "40P01" | "23505")),
        _ => false,
    }
}

struct Inner {
    runtime: Option<tokio::runtime::Runtime>,
    pool: PgPool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // The node lock's connection belongs to its watch, which ends with the runtime.
            let pool = self.pool.clone();
            let close = async move {
                pool.close().await;
            };
            if tokio::runtime::Handle::try_current().is_err() {
                // A plain thread (the end of `serve`, a CLI command): close the connections
                // properly, for at most a second.
                rt.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                });
            } else {
                // An async worker may not block: the sockets close as the runtime drops them,
                // which ends their sessions (and the node lock) all the same.
                drop(close);
            }
            rt.shutdown_background();
        }
    }
}

/// A PostgreSQL database holding the store's trees.
#[derive(Clone)]
pub struct PgDb {
    inner: Arc<Inner>,
}

impl PgDb {
    /// Takes the node lock, applies the migrations and opens the pool: a second process on the
    /// same database is refused before it changes anything (`Err` names why). The lock is
    /// watched from then on (see [`watch_lock`]).
    pub fn connect(url: &str, connections: u32) -> Result<PgDb, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pixee-pg")
            .enable_all()
            .build()
            .map_err(|e| format!("could not start the PostgreSQL runtime: {e}"))?;
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| format!("--database-url: {e}"))?
            .application_name("pixee-pim")
            // A statement that runs this long, or a transaction left idle this long, is ended
            // by the database: no worker waits without bound, and no row stays locked.
            .options([
                ("statement_timeout", "30s"),
                ("idle_in_transaction_session_timeout", "60s"),
            ]);
        let connections = connections.max(2);
        let lock_options = options.clone();
        let watch_options = options.clone();
        let setup = async move {
            let lock = take_node_lock(&lock_options).await?;
            let pool = PgPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .idle_timeout(Duration::from_secs(60))
                .connect_with(options)
                .await
                .map_err(|e| format!("could not connect to PostgreSQL: {e}"))?;
            MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| format!("could not apply the schema migrations: {e}"))?;
            Ok((pool, lock))
        };
        let (pool, lock) = match block(&runtime, setup).and_then(|r| r) {
            Ok(opened) => opened,
            Err(e) => {
                // Dropping a runtime may block, which an async caller (the CLI) must not.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        runtime.spawn(watch_lock(lock, watch_options));
        Ok(PgDb {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                pool,
            }),
        })
    }

    pub fn tree(&self, name: &str) -> PgTree {
        PgTree {
            db: self.clone(),
            name: Arc::from(name),
        }
    }

    fn pool(&self) -> PgPool {
        self.inner.pool.clone()
    }

    /// Runs `fut` on this engine's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    ) -> sled::Result<T> {
        self.run_raw(fut)?.map_err(failure)
    }

    /// [`PgDb::run`], leaving sqlx's error as it is (a commit tells conflicts from failures).
    fn run_raw<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    ) -> sled::Result<Result<T, sqlx::Error>> {
        match &self.inner.runtime {
            Some(rt) => block(rt, fut).map_err(|e| sled::Error::Io(std::io::Error::other(e))),
            None => Err(sled::Error::Unsupported("the store is closed".into())),
        }
    }

    pub fn size_on_disk(&self) -> sled::Result<u64> {
        let pool = self.pool();
        let bytes: i64 = self.run(async move {
            sqlx::query_scalar("SELECT pg_total_relation_size('kv')")
                .fetch_one(&pool)
                .await
        })?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }
}

/// A connection holding [`NODE_LOCK`], or why there is none.
async fn take_node_lock(options: &PgConnectOptions) -> Result<sqlx::PgConnection, String> {
    let mut lock = sqlx::PgConnection::connect_with(options)
        .await
        .map_err(|e| format!("could not connect to PostgreSQL: {e}"))?;
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(NODE_LOCK)
        .fetch_one(&mut lock)
        .await
        .map_err(|e| format!("could not take the node lock: {e}"))?;
    if !held {
        let _ = lock.close().await;
        return Err(
            "another pixee-pim process is using this database (one process per \
                    database: see docs/ARCHITECTURE.md)"
                .to_string(),
        );
    }
    Ok(lock)
}

/// Keeps the node lock, on the connection that took it: once a second it checks that the
/// session is alive, and when it is not (a database restart ends it, and with it the lock) it
/// connects again and takes the lock again. If another process took the lock meanwhile, this
/// one's caches may be stale (a key revoked there could still pass here), so it stops at once;
/// its service manager may start it again, and that start is refused while the other runs.
async fn watch_lock(mut lock: sqlx::PgConnection, options: PgConnectOptions) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut alive = true;
    loop {
        interval.tick().await;
        if alive {
            alive = sqlx::query("SELECT 1").execute(&mut lock).await.is_ok();
            if alive {
                continue;
            }
            tracing::warn!("the connection holding the node lock was lost; taking the lock again");
        }
        match take_node_lock(&options).await {
            Ok(conn) => {
                tracing::info!("node lock taken again");
                lock = conn;
                alive = true;
            }
            Err(e) if e.starts_with("another pixee-pim process") => {
                tracing::error!(
                    "another pixee-pim process took this database while the node lock was lost; \
                     stopping so that no cached credential outlives a change made there"
                );
                std::process::exit(3);
            }
            // The database is still away: try again at the next tick.
            Err(_) => {}
        }
    }
}

/// Waits on the calling thread for `fut`, run on `rt` (never inside `rt` itself).
fn block<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| "the PostgreSQL runtime stopped".to_string())
}

/// One tree: the rows of `kv` whose `tree` is its name.
#[derive(Clone)]
pub struct PgTree {
    db: PgDb,
    name: Arc<str>,
}

const GET: &str = "SELECT v FROM kv WHERE tree = $1 AND k = $2";
/// A transaction's read: the row is locked against other transactions until the commit, and
/// one written since the transaction's snapshot fails it (a conflict, run again).
const GET_LOCKED: &str = "SELECT v FROM kv WHERE tree = $1 AND k = $2 FOR UPDATE";
const REMOVE: &str = "DELETE FROM kv WHERE tree = $1 AND k = $2 RETURNING v";

impl PgTree {
    pub fn get(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        self.value_of(GET, key)
    }

    /// Runs `sql` (parameters: the tree, then `key`) and returns the value it answers, if any.
    fn value_of(&self, sql: &'static str, key: &[u8]) -> sled::Result<Option<IVec>> {
        let (pool, tree, key) = (self.db.pool(), self.name.to_string(), key.to_vec());
        let v: Option<Vec<u8>> = self.db.run(async move {
            sqlx::query_scalar(sql)
                .bind(tree)
                .bind(key)
                .fetch_optional(&pool)
                .await
        })?;
        Ok(v.map(IVec::from))
    }

    pub fn set(&self, key: &[u8], value: &[u8]) -> sled::Result<()> {
        let (pool, tree) = (self.db.pool(), self.name.to_string());
        let (key, value) = (key.to_vec(), value.to_vec());
        self.db.run(async move {
            sqlx::query(
                "INSERT INTO kv (tree, k, v) VALUES ($1, $2, $3) \
                 ON CONFLICT (tree, k) DO UPDATE SET v = EXCLUDED.v",
            )
            .bind(tree)
            .bind(key)
            .bind(value)
            .execute(&pool)
            .await
            .map(|_| ())
        })
    }

    pub fn remove(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        self.value_of(REMOVE, key)
    }

    pub fn len(&self) -> usize {
        let (pool, tree) = (self.db.pool(), self.name.to_string());
        let n: sled::Result<i64> = self.db.run(async move {
            sqlx::query_scalar("SELECT count(*) FROM kv WHERE tree = $1")
                .bind(tree)
                .fetch_one(&pool)
                .await
        });
        match n {
            Ok(n) => usize::try_from(n).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, tree = %self.name, "could not count a tree");
                0
            }
        }
    }

    pub fn clear(&self) -> sled::Result<()> {
        let (pool, tree) = (self.db.pool(), self.name.to_string());
        self.db.run(async move {
            sqlx::query("DELETE FROM kv WHERE tree = $1")
                .bind(tree)
                .execute(&pool)
                .await
                .map(|_| ())
        })
    }

    /// Applies the writes in one transaction, two statements (a later write to a key wins).
    pub fn apply_batch(&self, writes: Vec<(IVec, Option<IVec>)>) -> sled::Result<()> {
        let writes: Buffered = writes
            .into_iter()
            .map(|(k, v)| ((self.name.clone(), k.to_vec()), v.map(|v| v.to_vec())))
            .collect();
        let pool = self.db.pool();
        self.db.run(async move {
            let mut tx = pool.begin().await?;
            write_all(&mut tx, writes).await?;
            tx.commit().await
        })
    }

    pub fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<IVec>,
    ) -> sled::Result<Result<(), sled::CompareAndSwapError>> {
        let result = transaction(&[self], |t| {
            let current = t[0].get(key)?;
            if current.as_deref() != old {
                return Ok(Err(sled::CompareAndSwapError {
                    current,
                    proposed: new.clone(),
                }));
            }
            match &new {
                Some(v) => t[0].set(key, v.clone())?,
                None => t[0].unset(key)?,
            };
            Ok(Ok(()))
        });
        flatten(result)
    }

    pub fn fetch_and_update(
        &self,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>) -> Option<IVec>,
    ) -> sled::Result<Option<IVec>> {
        let f = std::cell::RefCell::new(f);
        let result = transaction(&[self], |t| {
            let current = t[0].get(key)?;
            let next = (f.borrow_mut())(current.as_deref());
            match next {
                Some(v) => t[0].set(key, v)?,
                None => t[0].unset(key)?,
            };
            Ok(current)
        });
        flatten(result)
    }

    pub fn range(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> PgIter {
        PgIter {
            tree: self.clone(),
            lo,
            hi,
            front: VecDeque::new(),
            back: VecDeque::new(),
            front_done: false,
            back_done: false,
            page: FIRST_PAGE,
        }
    }

    /// Up to `limit` records strictly inside (lo, hi) bounds, ascending or descending.
    fn page(
        &self,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        descending: bool,
        limit: usize,
    ) -> sled::Result<Vec<(IVec, IVec)>> {
        let mut sql = String::from("SELECT k, v FROM kv WHERE tree = $1");
        let mut params = Vec::new();
        for (bound, incl, excl) in [(lo, ">=", ">"), (hi, "<=", "<")] {
            let (op, key) = match bound {
                Bound::Included(k) => (incl, k),
                Bound::Excluded(k) => (excl, k),
                Bound::Unbounded => continue,
            };
            params.push(key.clone());
            sql.push_str(&format!(" AND k {op} ${}", params.len() + 1));
        }
        sql.push_str(if descending {
            " ORDER BY k DESC"
        } else {
            " ORDER BY k"
        });
        sql.push_str(&format!(" LIMIT {limit}"));
        let (pool, tree) = (self.db.pool(), self.name.to_string());
        let rows = self.db.run(async move {
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(tree);
            for p in params {
                q = q.bind(p);
            }
            q.fetch_all(&pool).await
        })?;
        rows.into_iter()
            .map(|row| {
                let k: Vec<u8> = row.try_get(0).map_err(failure)?;
                let v: Vec<u8> = row.try_get(1).map_err(failure)?;
                Ok((IVec::from(k), IVec::from(v)))
            })
            .collect()
    }
}

fn flatten<T>(r: Result<T, TransactionError<std::convert::Infallible>>) -> sled::Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Storage(e)) => Err(e),
        Err(TransactionError::Abort(never)) => match never {},
    }
}

/// The first page a scan reads: many scans want one record (the first, the last, "any left?"),
/// later pages double up to [`MAX_PAGE`].
const FIRST_PAGE: usize = 16;
const MAX_PAGE: usize = 1024;

/// A scan of a tree, read a page at a time from either end. Like sled's iterators it reads the
/// tree as it is when each page is read, not one snapshot.
pub struct PgIter {
    tree: PgTree,
    /// What is left to read: everything strictly between what either end has returned.
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    front: VecDeque<(IVec, IVec)>,
    back: VecDeque<(IVec, IVec)>,
    front_done: bool,
    back_done: bool,
    page: usize,
}

fn below(key: &[u8], hi: &Bound<Vec<u8>>) -> bool {
    match hi {
        Bound::Included(h) => key <= h.as_slice(),
        Bound::Excluded(h) => key < h.as_slice(),
        Bound::Unbounded => true,
    }
}

fn above(key: &[u8], lo: &Bound<Vec<u8>>) -> bool {
    match lo {
        Bound::Included(l) => key >= l.as_slice(),
        Bound::Excluded(l) => key > l.as_slice(),
        Bound::Unbounded => true,
    }
}

impl PgIter {
    fn next_page(&mut self) -> usize {
        let n = self.page;
        self.page = (self.page * 2).min(MAX_PAGE);
        n
    }
}

impl PgIter {
    /// The next record from the front, or from the back when `back`: from the end's page, else
    /// a new page read between what both ends have returned.
    fn step(&mut self, back: bool) -> Option<sled::Result<(IVec, IVec)>> {
        loop {
            let (buffer, done) = if back {
                (&mut self.back, self.back_done)
            } else {
                (&mut self.front, self.front_done)
            };
            if let Some((k, v)) = buffer.pop_front() {
                // The other end has already returned this key (the ends met).
                let met = if back {
                    !above(&k, &self.lo)
                } else {
                    !below(&k, &self.hi)
                };
                if met {
                    buffer.clear();
                    *(if back {
                        &mut self.back_done
                    } else {
                        &mut self.front_done
                    }) = true;
                    return None;
                }
                let seen = Bound::Excluded(k.to_vec());
                *(if back { &mut self.hi } else { &mut self.lo }) = seen;
                return Some(Ok((k, v)));
            }
            if done {
                return None;
            }
            let limit = self.next_page();
            let page = self.tree.page(&self.lo, &self.hi, back, limit);
            let (buffer, done) = if back {
                (&mut self.back, &mut self.back_done)
            } else {
                (&mut self.front, &mut self.front_done)
            };
            match page {
                Ok(rows) => {
                    *done = rows.len() < limit;
                    if rows.is_empty() {
                        return None;
                    }
                    buffer.extend(rows);
                }
                Err(e) => {
                    *done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Iterator for PgIter {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

impl DoubleEndedIterator for PgIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

type PgTx = sqlx::Transaction<'static, Postgres>;

/// A transaction's writes not yet sent, by tree and key (`None`: removed).
type Buffered = std::collections::BTreeMap<(Arc<str>, Vec<u8>), Option<Vec<u8>>>;

/// The open transaction the trees of one attempt share, and its writes not yet sent: they go
/// in one statement each for upserts and removals just before the commit, and the
/// transaction's own reads see them first.
struct TxState {
    db: PgDb,
    tx: Mutex<Option<PgTx>>,
    writes: Mutex<Buffered>,
}

impl TxState {
    /// Runs `op` on the transaction; a serialization failure or deadlock is a conflict.
    fn run<T: Send + 'static, F, Fut>(&self, op: F) -> Result<T, UnabortableTransactionError>
    where
        F: FnOnce(PgTx) -> Fut + Send + 'static,
        Fut: Future<Output = (PgTx, Result<T, sqlx::Error>)> + Send + 'static,
    {
        let tx = self
            .tx
            .lock()
            .map_err(|_| storage("a transaction's lock was poisoned"))?
            .take()
            .ok_or_else(|| storage("the transaction is gone"))?;
        let Some(rt) = &self.db.inner.runtime else {
            return Err(storage("the store is closed"));
        };
        let (tx, result) = block(rt, op(tx)).map_err(|e| storage(&e))?;
        if let Ok(mut slot) = self.tx.lock() {
            *slot = Some(tx);
        }
        result.map_err(|e| {
            if conflict(&e) {
                UnabortableTransactionError::Conflict
            } else {
                UnabortableTransactionError::Storage(failure(e))
            }
        })
    }

    fn take(&self) -> Option<PgTx> {
        self.tx.lock().ok().and_then(|mut t| t.take())
    }

    /// What this transaction wrote under `key` and has not sent yet (`Some(None)`: removed).
    fn buffered(&self, tree: &Arc<str>, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.writes
            .lock()
            .ok()?
            .get(&(tree.clone(), key.to_vec()))
            .cloned()
    }

    fn buffer(
        &self,
        tree: &Arc<str>,
        key: &[u8],
        value: Option<Vec<u8>>,
    ) -> Result<(), UnabortableTransactionError> {
        self.writes
            .lock()
            .map_err(|_| storage("a transaction's lock was poisoned"))?
            .insert((tree.clone(), key.to_vec()), value);
        Ok(())
    }

    /// Sends the buffered writes: one upsert of every new value, one removal of every key
    /// removed.
    fn send_writes(&self) -> Result<(), UnabortableTransactionError> {
        let writes = std::mem::take(
            &mut *self
                .writes
                .lock()
                .map_err(|_| storage("a transaction's lock was poisoned"))?,
        );
        if writes.is_empty() {
            return Ok(());
        }
        self.run(move |mut tx| async move {
            let result = write_all(&mut tx, writes).await;
            (tx, result)
        })
    }
}

/// Writes `writes` on `conn` (inside its transaction): one removal of every key removed, then
/// one upsert of every new value, each a single statement over arrays.
async fn write_all(conn: &mut sqlx::PgConnection, writes: Buffered) -> Result<(), sqlx::Error> {
    let (mut up_trees, mut up_keys, mut up_values) = (Vec::new(), Vec::new(), Vec::new());
    let (mut del_trees, mut del_keys) = (Vec::new(), Vec::new());
    for ((tree, key), value) in writes {
        match value {
            Some(v) => {
                up_trees.push(tree.to_string());
                up_keys.push(key);
                up_values.push(v);
            }
            None => {
                del_trees.push(tree.to_string());
                del_keys.push(key);
            }
        }
    }
    if !del_keys.is_empty() {
        sqlx::query(
            "DELETE FROM kv USING UNNEST($1::text[], $2::bytea[]) AS d(tree, k) \
             WHERE kv.tree = d.tree AND kv.k = d.k",
        )
        .bind(del_trees)
        .bind(del_keys)
        .execute(&mut *conn)
        .await?;
    }
    if !up_keys.is_empty() {
        sqlx::query(
            "INSERT INTO kv (tree, k, v) \
             SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bytea[]) \
             ON CONFLICT (tree, k) DO UPDATE SET v = EXCLUDED.v",
        )
        .bind(up_trees)
        .bind(up_keys)
        .bind(up_values)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Drop for TxState {
    fn drop(&mut self) {
        // A transaction not committed is rolled back on the runtime that owns its connection.
        if let (Some(tx), Some(rt)) = (self.take(), &self.db.inner.runtime) {
            rt.spawn(async move {
                let _ = tx.rollback().await;
            });
        }
    }
}

fn storage(why: &str) -> UnabortableTransactionError {
    UnabortableTransactionError::Storage(sled::Error::Io(std::io::Error::other(why.to_string())))
}

/// One tree inside a transaction.
#[derive(Clone)]
pub struct PgTxTree {
    state: Arc<TxState>,
    name: Arc<str>,
}

impl PgTxTree {
    pub fn get(&self, key: &[u8]) -> Result<Option<IVec>, UnabortableTransactionError> {
        if let Some(v) = self.state.buffered(&self.name, key) {
            return Ok(v.map(IVec::from));
        }
        let (tree, key) = (self.name.to_string(), key.to_vec());
        let v: Option<Vec<u8>> = self.state.run(move |mut tx| async move {
            let r = sqlx::query_scalar(GET_LOCKED)
                .bind(tree)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await;
            (tx, r)
        })?;
        Ok(v.map(IVec::from))
    }

    /// Writes `value` under `key` at the commit, without reading what it held.
    pub fn set(&self, key: &[u8], value: IVec) -> Result<(), UnabortableTransactionError> {
        self.state.buffer(&self.name, key, Some(value.to_vec()))
    }

    pub fn remove(&self, key: &[u8]) -> Result<Option<IVec>, UnabortableTransactionError> {
        let old = self.get(key)?;
        self.state.buffer(&self.name, key, None)?;
        Ok(old)
    }

    /// Removes `key` at the commit, without reading what it held.
    pub fn unset(&self, key: &[u8]) -> Result<(), UnabortableTransactionError> {
        self.state.buffer(&self.name, key, None)
    }
}

/// Runs `f` as one transaction over `trees` (see the module's notes), again from the start
/// after a conflict (with a short, growing, jittered pause), as sled does.
pub(crate) fn transaction<T, E, F>(trees: &[&PgTree], f: F) -> Result<T, TransactionError<E>>
where
    F: Fn(&[TxTree]) -> Result<T, ConflictableTransactionError<E>>,
{
    let Some(first) = trees.first() else {
        return Err(TransactionError::Storage(sled::Error::Unsupported(
            "a transaction over no tree".into(),
        )));
    };
    let db = first.db.clone();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        if attempt > MAX_ATTEMPTS {
            return Err(TransactionError::Storage(sled::Error::Io(
                std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!("postgresql: a transaction conflicted {MAX_ATTEMPTS} times in a row"),
                ),
            )));
        }
        let pool = db.pool();
        let tx = db
            .run(async move {
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .await
            })
            .map_err(TransactionError::Storage)?;
        let state = Arc::new(TxState {
            db: db.clone(),
            tx: Mutex::new(Some(tx)),
            writes: Mutex::new(Default::default()),
        });
        let views: Vec<TxTree> = trees
            .iter()
            .map(|t| {
                TxTree::Pg(PgTxTree {
                    state: state.clone(),
                    name: t.name.clone(),
                })
            })
            .collect();
        let result = f(&views).and_then(|v| {
            state.send_writes()?;
            Ok(v)
        });
        drop(views);
        match result {
            Ok(value) => {
                let Some(tx) = state.take() else {
                    return Err(TransactionError::Storage(sled::Error::Unsupported(
                        "the transaction is gone".into(),
                    )));
                };
                let committed = db
                    .run_raw(async move { tx.commit().await })
                    .map_err(TransactionError::Storage)?;
                match committed {
                    Ok(()) => return Ok(value),
                    Err(e) if conflict(&e) => {}
                    Err(e) => return Err(TransactionError::Storage(failure(e))),
                }
            }
            Err(ConflictableTransactionError::Abort(e)) => return Err(TransactionError::Abort(e)),
            Err(ConflictableTransactionError::Storage(e)) => {
                return Err(TransactionError::Storage(e));
            }
            Err(ConflictableTransactionError::Conflict) => {}
            // The enum is non-exhaustive in sled; anything else is treated as a conflict.
            #[allow(unreachable_patterns)]
            Err(_) => {}
        }
        drop(state);
        pause(attempt);
    }
}

/// How many times a transaction runs before the store gives up and answers "unavailable"
/// (sled retries without end; a database that conflicts this often is in trouble).
const MAX_ATTEMPTS: u32 = 200;

fn pause(attempt: u32) {
    let ceiling = 50u64 * u64::from(attempt.min(40));
    let micros = rand::random_range(0..=ceiling);
    std::thread::sleep(Duration::from_micros(micros));
}
