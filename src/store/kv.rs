//! The seam under the store's rules: ordered trees of byte keys and values, with transactions
//! over several trees. Two engines sit behind it: sled, in the data directory (the default),
//! and PostgreSQL (`--database-url`, SPEC §12; `pg.rs`).
//!
//! Every rule of the store (indexes, counters, uniqueness, tombstones, change feeds, the
//! webhook outbox) is written once, against these types, so both engines keep the same
//! promises and `check`, `backup` and `migrate` walk the trees the same way on both. The method
//! names and result types are sled's: on sled a call is one match away from sled itself, which
//! keeps the default engine's path what it was.
use super::pg;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use std::ops::{Bound, RangeBounds};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use sled::IVec;

/// Where sled's writers wait while a flush is running, instead of in sled's own lock.
///
/// sled 0.34 guards its log with one process-wide reader-writer lock: `Db::flush` holds the
/// read side until the log is written and synced, and a transaction or batch takes the write
/// side. That lock is fair, so once a transaction waits for it, every new reader waits behind
/// the transaction: a flush of a few milliseconds stopped every `get` on every request worker.
/// Flushes take this gate's write side and sled's writers its read side first, so a write that
/// would wait for a flush waits here, where sled's readers never look. It excludes nothing
/// that sled's lock did not already exclude. Like sled's lock it is process-wide; nothing
/// holding it takes it again (a transaction's closure only reads and writes its trees).
static FLUSH_GATE: RwLock<()> = RwLock::new(());

/// Held by a sled transaction or batch while it runs (see [`FLUSH_GATE`]).
fn flush_gate_writer() -> RwLockReadGuard<'static, ()> {
    FLUSH_GATE.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a flush while it runs: no sled transaction or batch starts meanwhile.
pub(crate) fn flush_gate_exclusive() -> RwLockWriteGuard<'static, ()> {
    FLUSH_GATE.write().unwrap_or_else(PoisonError::into_inner)
}

/// What a transaction's operations return (sled's type: a conflict makes the transaction retry).
pub type TxResult<T> = Result<T, UnabortableTransactionError>;

/// The database: a sled one or a PostgreSQL one.
#[derive(Clone)]
pub enum Db {
    Sled(sled::Db),
    Pg(pg::PgDb),
}

impl Db {
    pub fn open_tree(&self, name: &str) -> sled::Result<Tree> {
        Ok(match self {
            Db::Sled(db) => Tree::Sled(db.open_tree(name)?),
            Db::Pg(db) => Tree::Pg(db.tree(name)),
        })
    }

    /// The sled database, for what only sled has (its file, online backup's barrier).
    pub fn sled(&self) -> Option<&sled::Db> {
        match self {
            Db::Sled(db) => Some(db),
            Db::Pg(_) => None,
        }
    }

    /// This process as a node of a PostgreSQL cluster, if it is one.
    pub fn node(&self) -> Option<&std::sync::Arc<super::cluster::Node>> {
        match self {
            Db::Sled(_) => None,
            Db::Pg(db) => db.node(),
        }
    }

    /// The lowest change-feed floor of the other nodes (see `PgDb::cluster_floor`).
    pub fn cluster_floor(&self, local: i64) -> sled::Result<Option<i64>> {
        match self {
            Db::Sled(_) => Ok(None),
            Db::Pg(db) => db.cluster_floor(local),
        }
    }

    /// Makes every write so far durable (a PostgreSQL commit already is).
    pub fn flush(&self) -> sled::Result<()> {
        match self {
            Db::Sled(db) => db.flush().map(|_| ()),
            Db::Pg(_) => Ok(()),
        }
    }

    /// Bytes the records take: sled's files, or the PostgreSQL table with its index.
    pub fn size_on_disk(&self) -> sled::Result<u64> {
        match self {
            Db::Sled(db) => db.size_on_disk(),
            Db::Pg(db) => db.size_on_disk(),
        }
    }
}

/// One ordered tree of byte keys.
#[derive(Clone)]
pub enum Tree {
    Sled(sled::Tree),
    Pg(pg::PgTree),
}

impl Tree {
    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        match self {
            Tree::Sled(t) => t.get(key),
            Tree::Pg(t) => t.get(key.as_ref()),
        }
    }

    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        match self {
            Tree::Sled(t) => t.remove(key),
            Tree::Pg(t) => t.remove(key.as_ref()),
        }
    }

    /// Writes `value` under `key` (on PostgreSQL one upsert).
    pub fn set<K: AsRef<[u8]>, V: Into<IVec>>(&self, key: K, value: V) -> sled::Result<()> {
        match self {
            Tree::Sled(t) => t.insert(key, value).map(|_| ()),
            Tree::Pg(t) => t.set(key.as_ref(), &value.into()),
        }
    }

    /// [`Tree::remove`] without the old value.
    pub fn unset<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<()> {
        match self {
            Tree::Sled(t) => t.remove(key).map(|_| ()),
            Tree::Pg(t) => t.remove(key.as_ref()).map(|_| ()),
        }
    }

    pub fn contains_key<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<bool> {
        match self {
            Tree::Sled(t) => t.contains_key(key),
            Tree::Pg(t) => Ok(t.get(key.as_ref())?.is_some()),
        }
    }

    pub fn iter(&self) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.iter()),
            Tree::Pg(t) => Iter::Pg(t.range(Bound::Unbounded, Bound::Unbounded)),
        }
    }

    pub fn scan_prefix<P: AsRef<[u8]>>(&self, prefix: P) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.scan_prefix(prefix)),
            Tree::Pg(t) => {
                let prefix = prefix.as_ref();
                let end = match super::keys::prefix_end(prefix) {
                    Some(end) => Bound::Excluded(end),
                    None => Bound::Unbounded,
                };
                Iter::Pg(t.range(Bound::Included(prefix.to_vec()), end))
            }
        }
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.range(range)),
            Tree::Pg(t) => Iter::Pg(t.range(owned(range.start_bound()), owned(range.end_bound()))),
        }
    }

    /// [`Tree::range`] for a scan that is read to its end and is known to be short (a count's
    /// shards): on PostgreSQL in one round trip instead of pages that start small.
    pub fn range_whole<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.range(range)),
            Tree::Pg(t) => {
                Iter::Pg(t.range_whole(owned(range.start_bound()), owned(range.end_bound())))
            }
        }
    }

    /// The number of records (on sled a walk of the tree, as sled counts).
    pub fn len(&self) -> usize {
        match self {
            Tree::Sled(t) => t.len(),
            Tree::Pg(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Tree::Sled(t) => t.is_empty(),
            Tree::Pg(_) => self.iter().next().is_none(),
        }
    }

    pub fn clear(&self) -> sled::Result<()> {
        match self {
            Tree::Sled(t) => t.clear(),
            Tree::Pg(t) => t.clear(),
        }
    }

    /// Applies every write of `batch` at once.
    pub fn apply_batch(&self, batch: Batch) -> sled::Result<()> {
        match self {
            Tree::Sled(t) => {
                let mut b = sled::Batch::default();
                for (k, v) in batch.writes {
                    match v {
                        Some(v) => b.insert(k, v),
                        None => b.remove(k),
                    }
                }
                let _gate = flush_gate_writer();
                t.apply_batch(b)
            }
            Tree::Pg(t) => t.apply_batch(batch.writes),
        }
    }

    /// Sets `key` to `new` if it holds `old` (`None`: absent); on a mismatch returns what it holds.
    pub fn compare_and_swap<K: AsRef<[u8]>, O: AsRef<[u8]>, V: Into<IVec>>(
        &self,
        key: K,
        old: Option<O>,
        new: Option<V>,
    ) -> sled::Result<Result<(), sled::CompareAndSwapError>> {
        match self {
            Tree::Sled(t) => t.compare_and_swap(key, old, new),
            Tree::Pg(t) => t.compare_and_swap(
                key.as_ref(),
                old.as_ref().map(|o| o.as_ref()),
                new.map(Into::into),
            ),
        }
    }

    /// Replaces the value under `key` with what `f` makes of it, atomically; returns the old one.
    pub fn fetch_and_update<K: AsRef<[u8]>, V: Into<IVec>, F>(
        &self,
        key: K,
        mut f: F,
    ) -> sled::Result<Option<IVec>>
    where
        F: FnMut(Option<&[u8]>) -> Option<V>,
    {
        match self {
            Tree::Sled(t) => t.fetch_and_update(key, f),
            Tree::Pg(t) => t.fetch_and_update(key.as_ref(), &mut |old| f(old).map(Into::into)),
        }
    }

    /// A transaction over this tree alone.
    pub fn transaction<T, E, F>(&self, f: F) -> Result<T, TransactionError<E>>
    where
        F: Fn(&TxTree) -> Result<T, ConflictableTransactionError<E>>,
    {
        transaction(&[self], |t| f(&t[0]))
    }

    /// The sled tree, for what only sled has (subscriptions for online backup).
    pub fn sled(&self) -> Option<&sled::Tree> {
        match self {
            Tree::Sled(t) => Some(t),
            Tree::Pg(_) => None,
        }
    }
}

/// Writes to one tree applied together.
#[derive(Default)]
pub struct Batch {
    writes: Vec<(IVec, Option<IVec>)>,
}

impl Batch {
    pub fn insert<K: AsRef<[u8]>, V: Into<IVec>>(&mut self, key: K, value: V) {
        self.writes
            .push((IVec::from(key.as_ref()), Some(value.into())));
    }

    pub fn remove<K: AsRef<[u8]>>(&mut self, key: K) {
        self.writes.push((IVec::from(key.as_ref()), None));
    }
}

fn owned<K: AsRef<[u8]>>(bound: Bound<&K>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Records of a tree in key order, from either end.
pub enum Iter {
    Sled(sled::Iter),
    Pg(pg::PgIter),
}

impl Iterator for Iter {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled(i) => i.next(),
            Iter::Pg(i) => i.next(),
        }
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled(i) => i.next_back(),
            Iter::Pg(i) => i.next_back(),
        }
    }
}

impl Iter {
    pub fn keys(self) -> impl DoubleEndedIterator<Item = sled::Result<IVec>> {
        self.map(|r| r.map(|(k, _)| k))
    }

    pub fn values(self) -> impl DoubleEndedIterator<Item = sled::Result<IVec>> {
        self.map(|r| r.map(|(_, v)| v))
    }
}

/// One tree inside a transaction.
#[derive(Clone)]
pub enum TxTree {
    Sled(TransactionalTree),
    Pg(pg::PgTxTree),
}

impl TxTree {
    /// Whether this tree is in a database other processes write too (PostgreSQL), where two
    /// transactions writing one record wait for each other instead of retrying in memory.
    pub fn shared(&self) -> bool {
        matches!(self, TxTree::Pg(_))
    }

    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> TxResult<Option<IVec>> {
        match self {
            TxTree::Sled(t) => t.get(key),
            TxTree::Pg(t) => t.get(key.as_ref()),
        }
    }

    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> TxResult<Option<IVec>> {
        match self {
            TxTree::Sled(t) => t.remove(key.as_ref()),
            TxTree::Pg(t) => t.remove(key.as_ref()),
        }
    }

    /// Writes `value` under `key`; on PostgreSQL it costs no round trip (the write goes with
    /// the commit).
    pub fn set<K: AsRef<[u8]>, V: Into<IVec>>(&self, key: K, value: V) -> TxResult<()> {
        match self {
            TxTree::Sled(t) => t.insert(key.as_ref(), value).map(|_| ()),
            TxTree::Pg(t) => t.set(key.as_ref(), value.into()),
        }
    }

    /// [`TxTree::remove`] for a caller that does not need the old value.
    pub fn unset<K: AsRef<[u8]>>(&self, key: K) -> TxResult<()> {
        match self {
            TxTree::Sled(t) => t.remove(key.as_ref()).map(|_| ()),
            TxTree::Pg(t) => t.unset(key.as_ref()),
        }
    }
}

/// Runs `f` over `trees` as one transaction, retrying it on a conflict (sled's rule: `f` may
/// run more than once and must only act through its trees). The trees are all of one engine.
pub fn transaction<T, E, F>(trees: &[&Tree], f: F) -> Result<T, TransactionError<E>>
where
    F: Fn(&[TxTree]) -> Result<T, ConflictableTransactionError<E>>,
{
    let mut sled_trees = Vec::with_capacity(trees.len());
    let mut pg_trees = Vec::new();
    for t in trees {
        match t {
            Tree::Sled(t) => sled_trees.push(t),
            Tree::Pg(t) => pg_trees.push(t),
        }
    }
    if !pg_trees.is_empty() {
        if !sled_trees.is_empty() {
            return Err(TransactionError::Storage(sled::Error::Unsupported(
                "a transaction over trees of two engines".into(),
            )));
        }
        return pg::transaction(&pg_trees, f);
    }
    let _gate = flush_gate_writer();
    sled::Transactional::<E>::transaction(&sled_trees[..], |view| {
        let trees: Vec<TxTree> = view.iter().cloned().map(TxTree::Sled).collect();
        f(&trees)
    })
}

/// `(&a, &b).transaction(|(a, b)| …)`, as with sled's own trait, for up to five trees.
pub trait Transactional<E> {
    type View;
    fn transaction<T, F>(&self, f: F) -> Result<T, TransactionError<E>>
    where
        F: Fn(&Self::View) -> Result<T, ConflictableTransactionError<E>>;
}

impl<E> Transactional<E> for &Tree {
    type View = TxTree;
    fn transaction<T, F>(&self, f: F) -> Result<T, TransactionError<E>>
    where
        F: Fn(&TxTree) -> Result<T, ConflictableTransactionError<E>>,
    {
        transaction(&[*self], |t| f(&t[0]))
    }
}

macro_rules! tuple_transactional {
    ($($name:ident $idx:tt),+) => {
        impl<E> Transactional<E> for ($(tuple_transactional!(@tree $name),)+) {
            type View = ($(tuple_transactional!(@tx $name),)+);
            fn transaction<T, F>(&self, f: F) -> Result<T, TransactionError<E>>
            where
                F: Fn(&Self::View) -> Result<T, ConflictableTransactionError<E>>,
            {
                transaction(&[$(self.$idx),+], |t| f(&($(t[$idx].clone(),)+)))
            }
        }
    };
    (@tx $name:ident) => { TxTree };
    (@tree $name:ident) => { &Tree };
}

tuple_transactional!(A 0, B 1);
tuple_transactional!(A 0, B 1, C 2);
tuple_transactional!(A 0, B 1, C 2, D 3);
tuple_transactional!(A 0, B 1, C 2, D 3, F 4);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// While a flush holds the gate, a sled transaction waits at the gate (so it never queues
    /// in sled's own lock, where every reader would queue behind it) and reads go on.
    #[test]
    fn a_transaction_waits_for_a_flush_at_the_gate_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = Db::Sled(db).open_tree("t").unwrap();
        transaction::<(), (), _>(&[&tree], |t| {
            t[0].set(b"k", &b"old"[..]).map_err(Into::into)
        })
        .unwrap();
        let gate = flush_gate_exclusive();
        let t = tree.clone();
        let writer = std::thread::spawn(move || {
            transaction::<(), (), _>(&[&t], |t| t[0].set(b"k", &b"new"[..]).map_err(Into::into))
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !writer.is_finished(),
            "the transaction ran while a flush held the gate"
        );
        assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"old"[..]));
        drop(gate);
        writer.join().unwrap().unwrap();
        assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
    }
}
