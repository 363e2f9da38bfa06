//! Tombstones: what a deleted product leaves behind so change feeds can report the deletion.
//! Written in the delete's own transaction; swept after `--tombstone-retention`.
//!
//! **Chunks, not one record per deletion.** Tombstones are kept for 90 days by default, so
//! under steady deletes they are most of the store's records. sled splits a leaf at 16 entries
//! whatever their size and keeps its page state in memory for every page, paged out or not: one
//! record per tombstone cost about 234 bytes of RSS for as long as it was kept
//! (docs/PERFORMANCE.md, "What a kept tombstone costs"). A namespace's tombstones are therefore
//! packed [`CHUNK`] to a value:
//!
//! - a chunk's key is the key its first tombstone had in the one-per-record layout (namespace +
//!   deleted_at nanos + product id), set when the chunk is created and never changed;
//! - the namespace's **open** chunk takes each new tombstone, appended in place in the delete's
//!   transaction; a full one is left as it is and the next tombstone opens a new chunk under
//!   its own key;
//! - the namespace's **cursor** (key: namespace + 32 bytes of `0xFF`, after every chunk of the
//!   namespace) names the open chunk and the last deletion time, so a transaction, which
//!   cannot scan, finds both.
//!
//! Nothing already committed moves to a key before another: a reader walking the tree (sled's
//! iterators read each page once, as it was when they reached it) never passes a tombstone
//! that was moved behind it. A tombstone appended to a chunk the reader already passed was
//! stamped after the feed's horizon (`horizon.rs`), which the feed does not answer yet anyway.
//!
//! Within a namespace, tombstones are strictly increasing in `deleted_at` in the order the
//! deletes commit: one stamped no later than the namespace's last is stamped a nanosecond after
//! it (only forward, which the feed horizon allows: a position is never before its stamp). So
//! chunks cover disjoint, ordered ranges and a feed reads them in key order. Stores written
//! with one record per tombstone (the `tombstones` tree) are moved into chunks when the store
//! opens; their tombstones may share a time (one bulk delete), which the order by (time, id)
//! keeps apart.
use super::kv::TxTree;
use super::{Namespace, Store, StoreError, StoreResult, codec, keys};
use crate::domain::ProductId;
use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use time::OffsetDateTime;

/// Tombstones per chunk: a page of 16 chunks holds 512 of them, and a delete rewrites at most
/// this many (about 2 KiB).
pub const CHUNK: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: ProductId,
    pub ean: String,
    pub reference: Option<String>,
    pub deleted_at: OffsetDateTime,
}

impl Tombstone {
    /// Its place in a change feed: deletion time, then product id.
    pub fn position(&self) -> (i128, ProductId) {
        (self.deleted_at.unix_timestamp_nanos(), self.id)
    }

    /// Its key in the one-per-record layout; a chunk's key is its first tombstone's.
    pub(super) fn key(&self, ns: &[u8]) -> [u8; 49] {
        keys::updated_key(
            ns,
            self.deleted_at.unix_timestamp_nanos(),
            self.id.as_bytes(),
        )
    }
}

/// The namespace's cursor key: after every chunk key of the namespace.
pub(super) fn cursor_key(ns: &[u8]) -> [u8; 49] {
    let mut out = [0xFF; 49];
    out[..17].copy_from_slice(ns);
    out
}

/// Whether a key is a namespace's cursor.
pub(super) fn is_cursor(key: &[u8]) -> bool {
    key.len() == 49 && key[17..].iter().all(|&b| b == 0xFF)
}

/// The cursor's value: the open chunk's key and the namespace's last deletion time.
pub(super) struct Cursor {
    pub(super) open: [u8; 49],
    pub(super) last_nanos: i128,
}

impl Cursor {
    fn encode(&self) -> Vec<u8> {
        let mut raw = [0u8; 65];
        raw[..49].copy_from_slice(&self.open);
        raw[49..].copy_from_slice(&self.last_nanos.to_be_bytes());
        codec::raw(&raw)
    }

    pub(super) fn decode(bytes: &[u8]) -> StoreResult<Cursor> {
        let raw = codec::unraw(bytes)
            .filter(|r| r.len() == 65)
            .ok_or_else(|| StoreError::Corrupt("tombstones: bad cursor".into()))?;
        let mut open = [0u8; 49];
        open.copy_from_slice(&raw[..49]);
        let mut last = [0u8; 16];
        last.copy_from_slice(&raw[49..]);
        Ok(Cursor {
            open,
            last_nanos: i128::from_be_bytes(last),
        })
    }
}

pub(super) fn decode_chunk(bytes: &[u8]) -> StoreResult<Vec<Tombstone>> {
    codec::decode(bytes)
}

/// Adds a tombstone to its namespace's open chunk inside a delete's transaction (a new chunk
/// under its own key when the open one is full or gone); returns the tombstone as stored (its
/// `deleted_at` moved a nanosecond past the namespace's last one when it was not after it).
pub(super) fn bury(
    tree: &TxTree,
    ns: Namespace,
    mut stone: Tombstone,
) -> Result<Tombstone, ConflictableTransactionError<StoreError>> {
    let corrupt = ConflictableTransactionError::Abort;
    let prefix = keys::namespace(ns);
    let cursor_at = cursor_key(&prefix);
    let cursor = match tree.get(cursor_at)? {
        Some(bytes) => Some(Cursor::decode(&bytes).map_err(corrupt)?),
        None => None,
    };
    if let Some(c) = &cursor {
        let stamp = stone.deleted_at.unix_timestamp_nanos();
        if stamp <= c.last_nanos {
            if c.last_nanos - stamp > 1_000_000_000 {
                tracing::warn!(
                    ahead_ms = (c.last_nanos - stamp) / 1_000_000,
                    "a deletion is stamped after the namespace's last one, which is ahead of \
                     the clock (did the clock step back?)"
                );
            }
            stone.deleted_at = OffsetDateTime::from_unix_timestamp_nanos(c.last_nanos + 1)
                .map_err(|_| {
                    corrupt(StoreError::Corrupt("tombstones: time out of range".into()))
                })?;
        }
    }
    let open = match &cursor {
        Some(c) => match tree.get(c.open)? {
            Some(bytes) => Some((c.open, decode_chunk(&bytes).map_err(corrupt)?)),
            None => None,
        },
        None => None,
    };
    let (key, chunk) = match open {
        Some((key, mut chunk)) if chunk.len() < CHUNK => {
            chunk.push(stone.clone());
            (key, chunk)
        }
        _ => (stone.key(&prefix), vec![stone.clone()]),
    };
    tree.set(&key[..], codec::encode(&chunk))?;
    let cursor = Cursor {
        open: key,
        last_nanos: stone.deleted_at.unix_timestamp_nanos(),
    };
    tree.set(&cursor_at[..], cursor.encode())?;
    Ok(stone)
}

impl Store {
    /// The namespace's tombstones from `since` on (inclusive), oldest first.
    pub fn tombstones_since(
        &self,
        ns: Namespace,
        since: OffsetDateTime,
    ) -> Box<dyn Iterator<Item = StoreResult<Tombstone>> + '_> {
        let prefix = keys::namespace(ns);
        let since_key = keys::updated_key(&prefix, since.unix_timestamp_nanos(), &[0u8; 16]);
        // The chunk that holds `since` starts at or before it: begin with the last one that
        // does, in this namespace.
        let start = match self
            .tombstones
            .range(&prefix[..]..=&since_key[..])
            .next_back()
        {
            Some(Ok((k, _))) => k.to_vec(),
            Some(Err(e)) => return Box::new(std::iter::once(Err(e.into()))),
            None => since_key.to_vec(),
        };
        // Every chunk of the namespace; the cursor, after them, is not one.
        let chunks = self.tombstones.range(start..cursor_key(&prefix).to_vec());
        // A chunk rewritten by the sweep while this reads may be met again: what was already
        // passed is not given twice.
        let mut last: Option<(i128, ProductId)> = None;
        Box::new(
            chunks
                .values()
                .flat_map(
                    |v| match v.map_err(StoreError::from).and_then(|v| decode_chunk(&v)) {
                        Ok(chunk) => chunk.into_iter().map(Ok).collect::<Vec<_>>(),
                        Err(e) => vec![Err(e)],
                    },
                )
                .filter(move |t| match t {
                    Ok(t) if t.deleted_at < since => false,
                    Ok(t) if last.is_some_and(|l| t.position() <= l) => false,
                    Ok(t) => {
                        last = Some(t.position());
                        true
                    }
                    Err(_) => true,
                }),
        )
    }

    /// Removes every tombstone deleted before `cutoff`, in every namespace; returns how many.
    /// Chunks sort by namespace, then time, so the walk reads only the chunks that hold
    /// something expired plus one per namespace, then seeks to the next namespace. A chunk
    /// partly expired keeps the rest under its key. Each chunk is rewritten in a transaction of
    /// its own: a delete may be appending to it.
    pub fn sweep_tombstones(&self, cutoff: OffsetDateTime) -> StoreResult<usize> {
        let mut removed = 0;
        for ns in super::namespaces_in(&self.tombstones) {
            // The namespace's chunks in time order, then its cursor: stop at the first chunk
            // that keeps something, since every later one is newer.
            for item in self.tombstones.scan_prefix(keys::namespace(ns?)) {
                let (k, v) = item?;
                if is_cursor(&k) || !decode_chunk(&v)?.iter().any(|t| t.deleted_at < cutoff) {
                    break;
                }
                let (gone, left) = self.sweep_chunk(&k, cutoff)?;
                removed += gone;
                if left > 0 {
                    break;
                }
            }
        }
        if removed > 0 {
            // Change feeds list tombstones.
            self.catalog_changed();
        }
        Ok(removed)
    }

    /// Drops a chunk's tombstones older than `cutoff`, the chunk itself when none is left;
    /// returns how many went and how many are left. The cursor may go on naming a chunk that
    /// went: the next deletion then opens a new one.
    fn sweep_chunk(&self, key: &[u8], cutoff: OffsetDateTime) -> StoreResult<(usize, usize)> {
        self.tombstones
            .transaction(|t| {
                let Some(bytes) = t.get(key)? else {
                    return Ok((0, 0));
                };
                let chunk = decode_chunk(&bytes).map_err(ConflictableTransactionError::Abort)?;
                let keep: Vec<&Tombstone> =
                    chunk.iter().filter(|s| s.deleted_at >= cutoff).collect();
                let gone = chunk.len() - keep.len();
                if keep.is_empty() {
                    t.unset(key)?;
                } else if gone > 0 {
                    t.set(key, codec::encode(&keep))?;
                }
                Ok((gone, keep.len()))
            })
            .map_err(super::from_tx)
    }

    /// Moves the tombstones of stores written with one record per tombstone (the `tombstones`
    /// tree) into chunks, one namespace at a time. Each namespace's chunks are rewritten from
    /// both layouts (sorted, duplicates dropped) before its old records are removed, so a crash
    /// in between is finished by the next open.
    pub(super) fn migrate_tombstone_chunks(&self, legacy: &super::kv::Tree) -> StoreResult<()> {
        while let Some(first) = legacy.iter().keys().next() {
            let first = first?;
            let prefix: [u8; 17] = first
                .get(..17)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("tombstones: short key".into()))?;
            let scan = |tree: &super::kv::Tree| -> StoreResult<Vec<(sled::IVec, sled::IVec)>> {
                Ok(tree.scan_prefix(prefix).collect::<Result<Vec<_>, _>>()?)
            };
            let old_records = scan(legacy)?;
            let old_chunks = scan(&self.tombstones)?;
            let mut all = std::collections::BTreeMap::new();
            for (_, v) in &old_records {
                let t: Tombstone = codec::decode(v)?;
                all.insert(t.position(), t);
            }
            for (k, v) in &old_chunks {
                if is_cursor(k) {
                    continue;
                }
                for t in decode_chunk(v)? {
                    all.insert(t.position(), t);
                }
            }
            let all: Vec<Tombstone> = all.into_values().collect();
            let mut batch = super::kv::Batch::default();
            for (k, _) in &old_chunks {
                batch.remove(k);
            }
            for piece in all.chunks(CHUNK) {
                batch.insert(&piece[0].key(&prefix)[..], codec::encode(&piece));
            }
            if let (Some(piece), Some(last)) = (all.chunks(CHUNK).next_back(), all.last()) {
                let cursor = Cursor {
                    open: piece[0].key(&prefix),
                    last_nanos: last.deleted_at.unix_timestamp_nanos(),
                };
                batch.insert(&cursor_key(&prefix)[..], cursor.encode());
            }
            self.tombstones.apply_batch(batch)?;
            let mut batch = super::kv::Batch::default();
            for (k, _) in &old_records {
                batch.remove(k);
            }
            legacy.apply_batch(batch)?;
        }
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Environment, TenantId};

    fn namespaces(tenants: usize) -> Vec<Namespace> {
        (0..tenants)
            .flat_map(|_| {
                let tenant = TenantId::generate();
                [Environment::Live, Environment::Test].map(|environment| Namespace {
                    tenant,
                    environment,
                })
            })
            .collect()
    }

    /// A store in a temporary dir (kept while the dir lives).
    fn opened() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        (dir, store)
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn stone(i: usize, at: OffsetDateTime) -> Tombstone {
        Tombstone {
            id: ProductId::generate(),
            ean: format!("{i}"),
            reference: None,
            deleted_at: at,
        }
    }

    /// Buries as a delete does, in a transaction; returns the tombstone as stored.
    fn bury_one(store: &Store, ns: Namespace, t: Tombstone) -> Tombstone {
        store
            .tombstones
            .transaction(|tx| bury(tx, ns, t.clone()))
            .map_err(super::super::from_tx)
            .unwrap()
    }

    fn all(store: &Store, ns: Namespace) -> Vec<Tombstone> {
        store
            .tombstones_since(ns, OffsetDateTime::UNIX_EPOCH)
            .collect::<StoreResult<_>>()
            .unwrap()
    }

    #[test]
    fn the_sweep_removes_what_expired_in_every_namespace_and_keeps_the_rest() {
        let (_dir, store) = opened();
        let t0 = t0();
        let cutoff = t0 + time::Duration::hours(1);
        let namespaces = namespaces(3);
        // In each namespace, a second apart: 75 before the cutoff (two full chunks and part of
        // a third), one exactly at it, 24 after; the open chunk holds the last 4.
        for ns in &namespaces {
            for i in 0..100i64 {
                let at = cutoff + time::Duration::seconds(i - 75);
                bury_one(&store, *ns, stone(i as usize, at));
            }
        }
        assert_eq!(
            store
                .check_integrity::<crate::auth::lockout::LockoutState>()
                .unwrap()
                .count("tombstone_chunks"),
            600
        );
        assert_eq!(
            store.sweep_tombstones(cutoff).unwrap(),
            75 * namespaces.len()
        );
        for ns in &namespaces {
            let left: Vec<i64> = all(&store, *ns)
                .iter()
                .map(|t| (t.deleted_at - cutoff).whole_seconds())
                .collect();
            assert_eq!(left, (0..25).collect::<Vec<_>>());
        }
        assert_eq!(store.sweep_tombstones(cutoff).unwrap(), 0);
        // The check finds the moved chunk under its first kept tombstone's key.
        assert_eq!(
            store
                .check_integrity::<crate::auth::lockout::LockoutState>()
                .unwrap()
                .count("tombstone_chunks"),
            150
        );
        // Everything expired, the open chunks included: only the cursors are left, and the
        // next deletion opens a new chunk after them.
        let later = cutoff + time::Duration::days(1);
        assert_eq!(store.sweep_tombstones(later).unwrap(), 150);
        assert!(
            store
                .tombstones
                .iter()
                .keys()
                .all(|k| is_cursor(&k.unwrap()))
        );
        let next = bury_one(&store, namespaces[0], stone(7, later));
        assert_eq!(all(&store, namespaces[0]), vec![next]);
        assert_eq!(
            store
                .check_integrity::<crate::auth::lockout::LockoutState>()
                .unwrap()
                .count("tombstone_chunks"),
            1
        );
    }

    #[test]
    fn a_feed_reads_from_the_middle_of_a_chunk_across_chunk_boundaries() {
        let (_dir, store) = opened();
        let t0 = t0();
        let ns = namespaces(1)[0];
        let stored: Vec<Tombstone> = (0..3 * CHUNK + 5)
            .map(|i| bury_one(&store, ns, stone(i, t0 + time::Duration::seconds(i as i64))))
            .collect();
        assert!(
            store.tombstones.len() <= 5,
            "{} chunks",
            store.tombstones.len()
        );
        for from in [0, 1, CHUNK - 1, CHUNK, CHUNK + 7, 3 * CHUNK, 3 * CHUNK + 4] {
            let since = t0 + time::Duration::seconds(from as i64);
            let got: Vec<Tombstone> = store
                .tombstones_since(ns, since)
                .collect::<StoreResult<_>>()
                .unwrap();
            assert_eq!(got, stored[from..], "from {from}");
        }
        // Another namespace sees none of them.
        assert!(all(&store, namespaces(1)[0]).is_empty());
        // The check finds a chunk under a key after its first tombstone's.
        let check = || store.check_integrity::<crate::auth::lockout::LockoutState>();
        assert_eq!(check().unwrap().count("tombstone_chunks"), stored.len());
        let (k, v) = store.tombstones.iter().next().unwrap().unwrap();
        let first = &decode_chunk(&v).unwrap()[0];
        let later = first.deleted_at + time::Duration::seconds(1);
        let moved = keys::updated_key(&k[..17], later.unix_timestamp_nanos(), first.id.as_bytes());
        store.tombstones.remove(&k).unwrap();
        store.tombstones.set(moved, v).unwrap();
        assert!(check().is_err());
    }

    #[test]
    fn a_deletion_stamped_no_later_than_the_last_is_stamped_just_after_it() {
        let (_dir, store) = opened();
        let t0 = t0();
        let ns = namespaces(1)[0];
        let first = bury_one(&store, ns, stone(0, t0));
        assert_eq!(first.deleted_at, t0);
        // The same stamp (one delete of several products), then an earlier one (a delete that
        // took its stamp first and committed later).
        let same = bury_one(&store, ns, stone(1, t0));
        let earlier = bury_one(&store, ns, stone(2, t0 - time::Duration::milliseconds(3)));
        assert_eq!(same.deleted_at, t0 + time::Duration::nanoseconds(1));
        assert_eq!(earlier.deleted_at, t0 + time::Duration::nanoseconds(2));
        assert_eq!(all(&store, ns), vec![first, same, earlier]);
    }

    #[test]
    fn stores_with_one_record_per_tombstone_move_into_chunks_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = t0();
        let namespaces = namespaces(2);
        let mut expected = Vec::new();
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let legacy = store.db.open_tree("tombstones").unwrap();
            for ns in &namespaces {
                // Several with one stamp, as one delete of many products wrote them.
                let stones: Vec<Tombstone> = (0..2 * CHUNK + 3)
                    .map(|i| stone(i, t0 + time::Duration::seconds(i as i64 / 4)))
                    .collect();
                for t in &stones {
                    legacy
                        .set(t.key(&keys::namespace(*ns)), codec::encode(t))
                        .unwrap();
                }
                let mut sorted = stones;
                sorted.sort_by_key(Tombstone::position);
                expected.push(sorted);
            }
            // A migration interrupted after the first namespace's chunks were written: its
            // records are still in the old tree as well.
            store.migrate_tombstone_chunks(&legacy).unwrap();
            let first = &expected[0];
            for t in first {
                legacy
                    .set(t.key(&keys::namespace(namespaces[0])), codec::encode(t))
                    .unwrap();
            }
            store.db.flush().unwrap();
        }
        let store = super::super::reopen(dir.path());
        assert!(store.db.open_tree("tombstones").unwrap().is_empty());
        for (ns, stones) in namespaces.iter().zip(&expected) {
            assert_eq!(&all(&store, *ns), stones);
        }
        assert_eq!(
            store
                .check_integrity::<crate::auth::lockout::LockoutState>()
                .unwrap()
                .count("tombstone_chunks"),
            namespaces.len() * (2 * CHUNK + 3)
        );
        // New deletions continue after the moved ones, in the last chunk.
        let next = bury_one(&store, namespaces[0], stone(99, t0));
        assert!(next.deleted_at > expected[0].last().unwrap().deleted_at);
        assert_eq!(all(&store, namespaces[0]).last(), Some(&next));
    }

    #[test]
    fn a_reader_meets_every_tombstone_committed_before_it_while_chunks_fill_and_open() {
        let (_dir, store) = opened();
        let t0 = t0();
        let ns = namespaces(1)[0];
        let at = |i: usize| t0 + time::Duration::seconds(i as i64);
        // Twenty full chunks (more than one sled leaf) and an open one of 8.
        let before: Vec<Tombstone> = (0..20 * CHUNK + 8)
            .map(|i| bury_one(&store, ns, stone(i, at(i))))
            .collect();
        let from = 18 * CHUNK;
        let mut reader = store.tombstones_since(ns, at(from));
        let first = reader.next().unwrap().unwrap();
        // Meanwhile the open chunk fills and two more open.
        for i in 0..2 * CHUNK + 30 {
            bury_one(&store, ns, stone(i, at(10_000 + i)));
        }
        let mut seen = vec![first];
        seen.extend(reader.map(Result::unwrap));
        let seen: Vec<ProductId> = seen.iter().map(|t| t.id).collect();
        for t in &before[from..] {
            assert!(seen.contains(&t.id), "{} missing", t.ean);
        }
    }
}
