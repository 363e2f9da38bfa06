//! The PostgreSQL engine behind `kv.rs` (`serve --database-url`, SPEC §12).
//!
//! Layout: one table, `kv (tree, k, v)`, with the primary key `(tree, k)`: a tree is its rows,
//! in `bytea` order, which is sled's byte order. The store's records, indexes and their
//! encoding are the same on both engines, so `check`, `backup`'s walk and `migrate` are one
//! code path; the schema is applied by sqlx's embedded migrations under their advisory lock.
//!
//! Transactions run at `REPEATABLE READ` (one snapshot) and lock every row they read
//! (`FOR UPDATE`) until they end; their writes go as one statement (removals and upserts) just before
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
use super::cluster::{self, Changes, Node};
use super::kv::{IVec, TxTree};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, UnabortableTransactionError,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgPool, Postgres, Row};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::ops::Bound;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The advisory lock of the processes using the database: every `serve` node holds it shared,
/// and a command that needs the database to itself (restore, migrate, an offline backup, the
/// admin commands) holds it alone, so neither starts while the other runs.
const NODE_LOCK: i64 = 0x5049_5845_4550_494d; // "PIXEEPIM"

/// The advisory lock of the node that runs the cluster's background work (webhook deliveries):
/// one node at a time, another taking over within a second or two when it goes.
const RUNNER_LOCK: i64 = 0x5049_5845_4552_554e; // "PIXEERUN"

/// How a process uses the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A `serve` node: any number share the database (`cluster.rs`).
    Node,
    /// A command that must be the only process on the database.
    Alone,
}

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
    /// This process as a node of the cluster (a `serve` process only), with its own few
    /// connections: its listener, its lease and its acknowledgements never wait behind
    /// requests.
    node: Option<(Arc<Node>, PgPool)>,
    /// The trees whose writes are announced to the other nodes.
    watched: HashSet<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // The node lock's connection belongs to its watch, which ends with the runtime.
            let pool = self.pool.clone();
            let node = self.node.clone();
            let close = async move {
                if let Some((node, node_pool)) = node {
                    // Leaving: the others stop waiting for this node at once.
                    let _ = sqlx::query("DELETE FROM nodes WHERE id = $1")
                        .bind(node.id)
                        .execute(&node_pool)
                        .await;
                    node_pool.close().await;
                }
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
    /// Takes the node lock (shared for a node, alone for a command), applies the migrations and
    /// opens the pool: a command is refused while nodes serve the database and the other way
    /// round, before anything changes (`Err` names why). The lock is watched from then on (see
    /// [`watch_lock`]). A node registers its lease before this returns, and announces the
    /// writes of the `watched` trees.
    pub fn connect(
        url: &str,
        connections: u32,
        role: Role,
        watched: &[&str],
    ) -> Result<PgDb, String> {
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
        let node_options = options.clone();
        let setup = async move {
            let lock = take_node_lock(&lock_options, role).await?;
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
            let node = match role {
                Role::Alone => None,
                Role::Node => {
                    let node_pool = PgPoolOptions::new()
                        // The listener's, and one for the lease and the acknowledgements.
                        .max_connections(2)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_with(node_options)
                        .await
                        .map_err(|e| format!("could not connect to PostgreSQL: {e}"))?;
                    let node = Node::new();
                    node.start(node_pool.clone())
                        .await
                        .map_err(|e| format!("could not register this node: {e}"))?;
                    Some((node, node_pool))
                }
            };
            Ok((pool, lock, node))
        };
        let (pool, lock, node) = match block(&runtime, setup).and_then(|r| r) {
            Ok(opened) => opened,
            Err(e) => {
                // Dropping a runtime may block, which an async caller (the CLI) must not.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        runtime.spawn(watch_lock(
            lock,
            watch_options,
            role,
            node.as_ref().map(|(n, _)| n.clone()),
        ));
        Ok(PgDb {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                pool,
                node,
                watched: watched.iter().map(|t| t.to_string()).collect(),
            }),
        })
    }

    /// Commits `writes` as one transaction (announced to the other nodes when watched).
    fn commit_writes(&self, writes: Buffered) -> sled::Result<()> {
        let mut notice = self.announce(&writes);
        let wire = notice.as_ref().map(Notice::wire);
        let pool = self.pool();
        let told = self.run(async move {
            let mut tx = pool.begin().await?;
            let told = write_and_announce(&mut tx, writes, wire).await?;
            tx.commit().await?;
            Ok(told)
        })?;
        if let Some(notice) = notice.as_mut() {
            notice.told = told;
            self.await_acks(notice);
        }
        Ok(())
    }

    /// Whether writes to `tree` are announced to other nodes.
    fn watches(&self, tree: &str) -> bool {
        self.inner.node.is_some() && self.inner.watched.contains(tree)
    }

    /// Leaves the cluster: see `Store::leave_cluster`.
    pub fn leave(&self) {
        let Some((node, node_pool)) = &self.inner.node else {
            return;
        };
        node.leave();
        let (pool, id) = (node_pool.clone(), node.id);
        if let Err(e) = self.run(async move {
            sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(id)
                .execute(&pool)
                .await
        }) {
            tracing::warn!(error = %e, "could not remove this node's lease; it runs out by itself");
        }
    }

    /// This process as a node of the cluster, if it is one.
    pub fn node(&self) -> Option<&Arc<Node>> {
        self.inner.node.as_ref().map(|(n, _)| n)
    }

    /// The writes of `writes` another node must hear of, as a new notice of this node.
    fn announce(&self, writes: &Buffered) -> Option<Notice> {
        let node = self.node()?;
        let written: Vec<(String, Vec<u8>)> = writes
            .keys()
            .filter(|(tree, _)| self.inner.watched.contains(&**tree))
            .map(|(tree, key)| (tree.to_string(), key.clone()))
            .collect();
        if written.is_empty() {
            return None;
        }
        let changes = Changes {
            everything: false,
            since: None,
            writes: written,
        };
        Some(Notice {
            seq: node.begin_notice(),
            node: node.clone(),
            body: changes.encode(),
            told: false,
        })
    }

    /// A notice telling every other node to forget everything.
    fn notice_everything(&self) -> Option<Notice> {
        let node = self.node()?;
        Some(Notice {
            seq: node.begin_notice(),
            node: node.clone(),
            body: Changes::everything().encode(),
            told: false,
        })
    }

    /// After `notice` committed: waits for the other nodes whose lease is live now (see
    /// `cluster.rs`), read afresh (the transaction's snapshot may hold an older expiry). A node
    /// whose lease is not in the snapshot was neither told nor is waited for: it waits for this
    /// transaction before it trusts its caches. When the nodes cannot be read, every lease is
    /// waited out.
    fn await_acks(&self, notice: &Notice) {
        if !notice.told {
            return;
        }
        let (pool, me) = (self.pool(), notice.node.id);
        let live = self
            .run(async move { cluster::live_nodes(&pool, me).await })
            .unwrap_or_else(|_| vec![(uuid::Uuid::nil(), cluster::LEASE)]);
        notice.node.wait_for_acks(notice.seq, live);
    }

    /// The lowest change-feed floor among the other nodes' leases, live or not yet swept (a
    /// dead node's is counted until every transaction begun before its lease was marked gone
    /// has ended: `cluster::sweep`), after publishing `local` (this node's horizon, about to
    /// be answered) as its own: a node joining later keeps its stamps above it. `None`: no
    /// other node, or not a node.
    pub fn cluster_floor(&self, local: i64) -> sled::Result<Option<i64>> {
        let Some((node, _)) = &self.inner.node else {
            return Ok(None);
        };
        let (pool, me) = (self.pool(), node.id);
        self.run(async move {
            sqlx::query("UPDATE nodes SET floor = GREATEST(floor, $2) WHERE id = $1")
                .bind(me)
                .bind(local)
                .execute(&pool)
                .await?;
            sqlx::query_scalar("SELECT min(floor) FROM nodes WHERE id <> $1")
                .bind(me)
                .fetch_one(&pool)
                .await
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

/// A connection holding [`NODE_LOCK`] as `role` needs it, or why there is none.
async fn take_node_lock(
    options: &PgConnectOptions,
    role: Role,
) -> Result<sqlx::PgConnection, String> {
    let mut lock = sqlx::PgConnection::connect_with(options)
        .await
        .map_err(|e| format!("could not connect to PostgreSQL: {e}"))?;
    let sql = match role {
        Role::Node => "SELECT pg_try_advisory_lock_shared($1)",
        Role::Alone => "SELECT pg_try_advisory_lock($1)",
    };
    let held: bool = sqlx::query_scalar(sql)
        .bind(NODE_LOCK)
        .fetch_one(&mut lock)
        .await
        .map_err(|e| format!("could not take the node lock: {e}"))?;
    if !held {
        let _ = lock.close().await;
        return Err(match role {
            Role::Node => format!(
                "{REFUSED}: a command that needs the database to itself (restore, migrate, \
                 an offline backup, an admin command) is running"
            ),
            Role::Alone => format!(
                "{REFUSED}: pixee-pim servers are using it; stop them first (this command \
                 needs the database to itself)"
            ),
        });
    }
    Ok(lock)
}

/// How a refusal of [`take_node_lock`] begins.
const REFUSED: &str = "another pixee-pim process is using this database";

/// Keeps the node lock, on the connection that took it: once a second it checks that the
/// session is alive, and when it is not (a database restart ends it, and with it the lock) it
/// connects again and takes the lock again. If a process that excludes this one took the lock
/// meanwhile (a restore under a node, or nodes under a restore), this one stops at once rather
/// than go on beside it; its service manager may start it again, and that start is refused
/// while the other runs.
///
/// A node also tries, on the same session, to take [`RUNNER_LOCK`] while no other node holds
/// it: the holder runs the cluster's background work, and stops being the runner the moment
/// its session is found gone (another node takes over at its next try).
async fn watch_lock(
    mut lock: sqlx::PgConnection,
    options: PgConnectOptions,
    role: Role,
    node: Option<Arc<Node>>,
) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut alive = true;
    loop {
        interval.tick().await;
        if alive {
            alive = match &node {
                Some(node) if !node.is_runner() => {
                    match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                        .bind(RUNNER_LOCK)
                        .fetch_one(&mut lock)
                        .await
                    {
                        Ok(took) => {
                            if took {
                                tracing::info!("this node runs the cluster's background work");
                                node.set_runner(true);
                            }
                            true
                        }
                        Err(_) => false,
                    }
                }
                // A probe that does not answer within a second counts as a lost session: a
                // runner cut off from the database stops delivering before another takes over.
                _ => tokio::time::timeout(
                    Duration::from_secs(1),
                    sqlx::query("SELECT 1").execute(&mut lock),
                )
                .await
                .is_ok_and(|r| r.is_ok()),
            };
            if alive {
                continue;
            }
            if let Some(node) = &node {
                node.set_runner(false);
            }
            tracing::warn!("the connection holding the node lock was lost; taking the lock again");
        }
        match take_node_lock(&options, role).await {
            Ok(conn) => {
                tracing::info!("node lock taken again");
                lock = conn;
                alive = true;
            }
            Err(e) if e.starts_with(REFUSED) => {
                tracing::error!(
                    "another pixee-pim process took this database while the node lock was lost; \
                     stopping so that the two never run side by side"
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
        if self.db.watches(&self.name) {
            let mut writes = Buffered::new();
            writes.insert((self.name.clone(), key.to_vec()), Some(value.to_vec()));
            return self.db.commit_writes(writes);
        }
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
        if self.db.watches(&self.name) {
            return flatten(transaction(&[self], |t| Ok(t[0].remove(key)?)));
        }
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
        // Every other node forgets all it holds: no notice lists a whole tree.
        let mut notice = self
            .db
            .watches(&self.name)
            .then(|| self.db.notice_everything())
            .flatten();
        let wire = notice.as_ref().map(Notice::wire);
        let told = self.db.run(async move {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM kv WHERE tree = $1")
                .bind(tree)
                .execute(&mut *tx)
                .await?;
            let told = write_and_announce(&mut tx, Buffered::new(), wire).await?;
            tx.commit().await?;
            Ok(told)
        })?;
        if let Some(notice) = notice.as_mut() {
            notice.told = told;
            self.db.await_acks(notice);
        }
        Ok(())
    }

    /// Applies the writes in one transaction, one statement (a later write to a key wins).
    pub fn apply_batch(&self, writes: Vec<(IVec, Option<IVec>)>) -> sled::Result<()> {
        let writes: Buffered = writes
            .into_iter()
            .map(|(k, v)| ((self.name.clone(), k.to_vec()), v.map(|v| v.to_vec())))
            .collect();
        self.db.commit_writes(writes)
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
        self.range_from_page(lo, hi, FIRST_PAGE)
    }

    /// A scan that will be read to its end (a few hundred records at most, such as a count's
    /// shards): its first page is already [`MAX_PAGE`], one round trip where doubling pages from
    /// [`FIRST_PAGE`] would take five.
    pub fn range_whole(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> PgIter {
        self.range_from_page(lo, hi, MAX_PAGE)
    }

    fn range_from_page(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>, page: usize) -> PgIter {
        PgIter {
            tree: self.clone(),
            lo,
            hi,
            front: VecDeque::new(),
            back: VecDeque::new(),
            front_done: false,
            back_done: false,
            page,
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

/// A notice of this node, sent in the transaction that made its changes.
struct Notice {
    seq: u64,
    node: Arc<Node>,
    body: Vec<u8>,
    /// Another node held a lease in the transaction's snapshot (so the notice was sent).
    told: bool,
}

impl Drop for Notice {
    /// Unless [`PgDb::await_acks`] took it, the notice was never committed.
    fn drop(&mut self) {
        self.node.drop_notice(self.seq);
    }
}

/// What [`write_and_announce`] sends, owned by the engine's runtime.
struct NoticeWire {
    node: uuid::Uuid,
    seq: u64,
    body: Vec<u8>,
}

impl Notice {
    fn wire(&self) -> NoticeWire {
        NoticeWire {
            node: self.node.id,
            seq: self.seq,
            body: self.body.clone(),
        }
    }
}

/// A transaction's writes not yet sent, by tree and key (`None`: removed).
type Buffered = std::collections::BTreeMap<(Arc<str>, Vec<u8>), Option<Vec<u8>>>;

/// The open transaction the trees of one attempt share, and its writes not yet sent: they go
/// in one statement each for upserts and removals just before the commit, and the
/// transaction's own reads see them first.
struct TxState {
    db: PgDb,
    tx: Mutex<Option<PgTx>>,
    writes: Mutex<Buffered>,
    /// The notice sent with the writes, waited on after the commit.
    notice: Mutex<Option<Notice>>,
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
        let mut notice = self.db.announce(&writes);
        let wire = notice.as_ref().map(Notice::wire);
        let told = self.run(move |mut tx| async move {
            let result = write_and_announce(&mut tx, writes, wire).await;
            (tx, result)
        })?;
        if let Some(n) = notice.as_mut() {
            n.told = told;
        }
        if let Ok(mut slot) = self.notice.lock() {
            *slot = notice;
        }
        Ok(())
    }
}

/// The data-modifying parts of the statement that sends a transaction's writes, only those
/// that have rows: the removals (two arrays: trees, keys), then the upserts (three: trees,
/// keys, values), numbered from `$1`; with the number of the first parameter left free. The
/// keys are distinct (a write replaces an earlier one of its key), so their order does not
/// matter.
///
/// Sending only the parts with rows matters for the statement's cost: a product create has no
/// removal, and with the empty `DELETE … USING UNNEST` gone the database plans and runs a plain
/// upsert (docs/PERFORMANCE.md, "PostgreSQL").
fn writes_sql(removals: bool, upserts: bool) -> (Vec<String>, usize) {
    let mut parts = Vec::new();
    let mut next = 1;
    if removals {
        parts.push(format!(
            "del AS (DELETE FROM kv USING UNNEST(${}::text[], ${}::bytea[]) AS d(tree, k) \
             WHERE kv.tree = d.tree AND kv.k = d.k)",
            next,
            next + 1
        ));
        next += 2;
    }
    if upserts {
        parts.push(format!(
            "up AS (INSERT INTO kv (tree, k, v) \
             SELECT * FROM UNNEST(${}::text[], ${}::bytea[], ${}::bytea[]) \
             ON CONFLICT (tree, k) DO UPDATE SET v = EXCLUDED.v)",
            next,
            next + 1,
            next + 2
        ));
        next += 3;
    }
    (parts, next)
}

/// Writes `writes` on `conn` inside its transaction, with the notice of what they changed if
/// there is one, all in one statement; answers the other nodes whose lease is live.
///
/// With a notice, the statement also reads the leases (as of the transaction's snapshot) and
/// issues the notice (delivered at the commit, dropped by a rollback) when another node has
/// one; it answers whether it did. The node's own lease, not marked gone, is the
/// transaction's fence: a node whose lease a sweep marked gone writes nothing watched (a feed
/// elsewhere may already have passed its stamps). A node whose lease is not in the snapshot
/// is neither told nor waited for: before it trusts its caches it waits for every transaction
/// begun before its lease was live ([`cluster::wait_for_older_transactions`]). A body too
/// long for a payload is written to `notices` first.
async fn write_and_announce(
    conn: &mut sqlx::PgConnection,
    writes: Buffered,
    notice: Option<NoticeWire>,
) -> Result<bool, sqlx::Error> {
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
    let (removals, upserts) = (!del_keys.is_empty(), !up_keys.is_empty());
    if !removals && !upserts && notice.is_none() {
        // A transaction that only read: nothing to send, and nothing for the others to hear.
        return Ok(false);
    }
    let (mut parts, first_free) = writes_sql(removals, upserts);
    let row = match &notice {
        Some(n) if !cluster::inline(&n.body) => {
            let id: i64 = sqlx::query_scalar("INSERT INTO notices (body) VALUES ($1) RETURNING id")
                .bind(&n.body)
                .fetch_one(&mut *conn)
                .await?;
            Some(id)
        }
        _ => None,
    };
    let sql = match &notice {
        None => format!("WITH {} SELECT true, false", parts.join(", ")),
        Some(_) => {
            // The leases as of the snapshot; the notice when another node has one; whether
            // this node's own lease stands (not marked gone by a sweep) as the fence.
            parts.push("leases AS MATERIALIZED (SELECT id, gone FROM nodes)".into());
            parts.push(format!(
                "sent AS MATERIALIZED (SELECT pg_notify(${}, ${}) FROM leases WHERE id <> ${} LIMIT 1)",
                first_free,
                first_free + 1,
                first_free + 2
            ));
            format!(
                "WITH {} SELECT EXISTS (SELECT 1 FROM leases WHERE id = ${} AND NOT gone), \
                 (SELECT count(*) FROM sent) > 0",
                parts.join(", "),
                first_free + 2
            )
        }
    };
    let mut query = sqlx::query_as::<_, (bool, bool)>(AssertSqlSafe(sql));
    if removals {
        query = query.bind(del_trees).bind(del_keys);
    }
    if upserts {
        query = query.bind(up_trees).bind(up_keys).bind(up_values);
    }
    if let Some(n) = &notice {
        query = query
            .bind(cluster::CHANNEL)
            .bind(cluster::payload(n.node, n.seq, &n.body, row))
            .bind(n.node);
    }
    let (mine, told) = query.fetch_one(&mut *conn).await?;
    if !mine {
        return Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "this node's lease has run out",
        )));
    }
    Ok(told)
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
            notice: Mutex::new(None),
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
                    Ok(()) => {
                        let notice = state.notice.lock().ok().and_then(|mut n| n.take());
                        if let Some(notice) = notice {
                            db.await_acks(&notice);
                        }
                        return Ok(value);
                    }
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

#[cfg(test)]
mod tests {
    use super::writes_sql;

    /// Each part numbers its parameters from where the previous one stopped, and a part with
    /// no rows is not sent at all (the statement's binds follow the same order).
    #[test]
    fn the_write_statement_holds_only_the_parts_with_rows_numbered_in_order() {
        let (both, free) = writes_sql(true, true);
        let both = both.join(", ");
        assert!(both.starts_with("del AS (DELETE"), "{both}");
        assert!(
            both.contains("UNNEST($1::text[], $2::bytea[]) AS d(tree, k)"),
            "{both}"
        );
        assert!(
            both.contains("UNNEST($3::text[], $4::bytea[], $5::bytea[])"),
            "{both}"
        );
        assert_eq!(free, 6);
        let (upserts, free) = writes_sql(false, true);
        assert_eq!((upserts.len(), free), (1, 4));
        assert!(
            upserts[0].starts_with("up AS (INSERT")
                && upserts[0].contains("UNNEST($1::text[], $2::bytea[], $3::bytea[])"),
            "{upserts:?}"
        );
        let (removals, free) = writes_sql(true, false);
        assert_eq!((removals.len(), free), (1, 3));
        assert!(
            removals[0].starts_with("del AS (DELETE") && !removals[0].contains("$3"),
            "{removals:?}"
        );
        assert_eq!(writes_sql(false, false), (Vec::new(), 1));
    }
}
