//! Tombstones: what a deleted product leaves behind so change feeds can report the deletion.
//! Written in the delete's own transaction; swept after `--tombstone-retention`.
//!
//! **Chunks, not one record per deletion.** Tombstones are kept for 90 days by default, so
//! under steady deletes they are most of the store's records. sled splits a leaf at 16 entries
//! whatever their size and keeps a few hundred bytes of state in memory per page, paged out or
//! not: one record per tombstone cost about 40 bytes of RSS per deletion for as long as it was
//! kept (docs/PERFORMANCE.md, "Memory under months of writes"). A namespace's tombstones are
//! therefore packed [`CHUNK`] to a value:
//!
//! - the **head** (key: namespace + 32 bytes of `0xFF`, after every time key of its namespace)
//!   takes each new tombstone, in the delete's transaction;
//! - once full it is **sealed**: moved, in the same transaction, under the key its first
//!   tombstone had in the one-per-record layout (namespace + deleted_at nanos + product id),
//!   and never changed again but by the sweep.
//!
//! Within a namespace, tombstones are strictly increasing in `deleted_at` in the order the
//! deletes commit: one stamped no later than the namespace's last is stamped a nanosecond after
//! it. So chunks cover disjoint, ordered ranges, and a feed reads them in key order. The stamp
//! only moves forward, which the change-feed horizon allows (`horizon.rs`: a write's position is
//! never before its stamp). Stores written with one record per tombstone (the `tombstones` tree)
//! are moved into chunks when the store opens.
use super::{Namespace, Store, StoreError, StoreResult, codec, keys};
use crate::domain::ProductId;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
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

    /// Its key in the one-per-record layout; a sealed chunk's key is its first tombstone's.
    fn key(&self, ns: &[u8]) -> [u8; 49] {
        keys::updated_key(
            ns,
            self.deleted_at.unix_timestamp_nanos(),
            self.id.as_bytes(),
        )
    }
}

/// The head chunk's key: after every time key of the namespace.
pub(super) fn head_key(ns: &[u8]) -> [u8; 49] {
    let mut out = [0xFF; 49];
    out[..17].copy_from_slice(ns);
    out
}

/// Whether a chunk's key is the namespace's head.
pub(super) fn is_head(key: &[u8]) -> bool {
    key.len() == 49 && key[17..].iter().all(|&b| b == 0xFF)
}

fn decode_chunk(bytes: &[u8]) -> StoreResult<Vec<Tombstone>> {
    codec::decode(bytes)
}

/// Adds a tombstone to its namespace's head chunk inside a delete's transaction, sealing the
/// head first when it is full; returns the tombstone as stored (its `deleted_at` moved a
/// nanosecond past the namespace's last one when it was not after it).
pub(super) fn bury(
    tree: &TransactionalTree,
    ns: Namespace,
    mut stone: Tombstone,
) -> Result<Tombstone, ConflictableTransactionError<StoreError>> {
    let prefix = keys::namespace(ns);
    let head = head_key(&prefix);
    let mut chunk = match tree.get(head)? {
        Some(bytes) => decode_chunk(&bytes).map_err(ConflictableTransactionError::Abort)?,
        None => Vec::new(),
    };
    if let Some(last) = chunk.last()
        && stone.deleted_at <= last.deleted_at
    {
        stone.deleted_at = last.deleted_at + time::Duration::nanoseconds(1);
    }
    if chunk.len() >= CHUNK {
        tree.insert(&chunk[0].key(&prefix)[..], codec::encode(&chunk))?;
        chunk.clear();
    }
    chunk.push(stone.clone());
    tree.insert(&head[..], codec::encode(&chunk))?;
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
        let chunks = match keys::prefix_end(&prefix) {
            Some(end) => self.tombstones.range(start..end),
            None => self.tombstones.range(start..),
        };
        // The sweep may move a chunk forward while this reads (to the key of its first kept
        // tombstone): what was already passed is not given twice.
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
    /// partly expired keeps the rest: a sealed one moves to its first kept tombstone's key, the
    /// head is rewritten in a transaction (a delete may be adding to it).
    pub fn sweep_tombstones(&self, cutoff: OffsetDateTime) -> StoreResult<usize> {
        let mut removed = 0;
        let mut from = Vec::new();
        'namespaces: loop {
            for item in self.tombstones.range(from.as_slice()..) {
                let (k, v) = item?;
                let prefix: [u8; 17] = k
                    .get(..17)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| StoreError::Corrupt("tombstones: short key".into()))?;
                let (gone, done) = if is_head(&k) {
                    (self.sweep_head(&k, cutoff)?, true)
                } else {
                    let chunk = decode_chunk(&v)?;
                    let keep: Vec<Tombstone> = chunk
                        .iter()
                        .filter(|t| t.deleted_at >= cutoff)
                        .cloned()
                        .collect();
                    let gone = chunk.len() - keep.len();
                    if gone > 0 {
                        let mut batch = sled::Batch::default();
                        batch.remove(&k);
                        if let Some(first) = keep.first() {
                            batch.insert(&first.key(&prefix)[..], codec::encode(&keep));
                        }
                        self.tombstones.apply_batch(batch)?;
                    }
                    (gone, !keep.is_empty())
                };
                removed += gone;
                if done {
                    match keys::prefix_end(&prefix) {
                        Some(next) => {
                            from = next;
                            continue 'namespaces;
                        }
                        None => break 'namespaces,
                    }
                }
            }
            break;
        }
        if removed > 0 {
            // Change feeds list tombstones.
            self.catalog_changed();
        }
        Ok(removed)
    }

    /// Drops the head chunk's tombstones older than `cutoff`; returns how many.
    fn sweep_head(&self, key: &[u8], cutoff: OffsetDateTime) -> StoreResult<usize> {
        self.tombstones
            .transaction(|t| {
                let Some(bytes) = t.get(key)? else {
                    return Ok(0);
                };
                let chunk = decode_chunk(&bytes).map_err(ConflictableTransactionError::Abort)?;
                let keep: Vec<&Tombstone> =
                    chunk.iter().filter(|s| s.deleted_at >= cutoff).collect();
                let gone = chunk.len() - keep.len();
                if keep.is_empty() {
                    t.remove(key)?;
                } else if gone > 0 {
                    t.insert(key, codec::encode(&keep))?;
                }
                Ok(gone)
            })
            .map_err(super::from_tx)
    }

    /// Moves the tombstones of stores written with one record per tombstone (the `tombstones`
    /// tree) into chunks, one namespace at a time. Each namespace's chunks are rewritten from
    /// both layouts (sorted, duplicates dropped) before its old records are removed, so a crash
    /// in between is finished by the next open.
    pub(super) fn migrate_tombstone_chunks(&self, legacy: &sled::Tree) -> StoreResult<()> {
        while let Some(first) = legacy.iter().keys().next() {
            let first = first?;
            let prefix: [u8; 17] = first
                .get(..17)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("tombstones: short key".into()))?;
            let scan = |tree: &sled::Tree| -> StoreResult<Vec<(sled::IVec, sled::IVec)>> {
                Ok(tree.scan_prefix(prefix).collect::<Result<Vec<_>, _>>()?)
            };
            let old_records = scan(legacy)?;
            let old_chunks = scan(&self.tombstones)?;
            let mut all = std::collections::BTreeMap::new();
            for (_, v) in &old_records {
                let t: Tombstone = codec::decode(v)?;
                all.insert(t.position(), t);
            }
            for (_, v) in &old_chunks {
                for t in decode_chunk(v)? {
                    all.insert(t.position(), t);
                }
            }
            let all: Vec<Tombstone> = all.into_values().collect();
            let mut batch = sled::Batch::default();
            for (k, _) in &old_chunks {
                batch.remove(k);
            }
            let mut pieces = all.chunks(CHUNK).peekable();
            while let Some(piece) = pieces.next() {
                let key = if pieces.peek().is_some() {
                    piece[0].key(&prefix)
                } else {
                    head_key(&prefix)
                };
                batch.insert(&key[..], codec::encode(&piece));
            }
            self.tombstones.apply_batch(batch)?;
            let mut batch = sled::Batch::default();
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
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let cutoff = t0 + time::Duration::hours(1);
        let namespaces = namespaces(3);
        // In each namespace, a second apart: 75 before the cutoff (two sealed chunks and part of
        // a third), one exactly at it, 24 after; the head holds the last 4.
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
        // Everything expired, the head included.
        let later = cutoff + time::Duration::days(1);
        assert_eq!(store.sweep_tombstones(later).unwrap(), 150);
        assert!(store.tombstones.is_empty());
    }

    #[test]
    fn a_feed_reads_from_the_middle_of_a_chunk_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let ns = namespaces(1)[0];
        let stored: Vec<Tombstone> = (0..3 * CHUNK + 5)
            .map(|i| bury_one(&store, ns, stone(i, t0 + time::Duration::seconds(i as i64))))
            .collect();
        assert!(
            store.tombstones.len() < 5,
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
    }

    #[test]
    fn a_deletion_stamped_no_later_than_the_last_is_stamped_just_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
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
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
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
                        .insert(t.key(&keys::namespace(*ns)), codec::encode(t))
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
                    .insert(t.key(&keys::namespace(namespaces[0])), codec::encode(t))
                    .unwrap();
            }
            legacy.flush().unwrap();
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
        // New deletions continue after the moved ones, in the head.
        let next = bury_one(&store, namespaces[0], stone(99, t0));
        assert!(next.deleted_at > expected[0].last().unwrap().deleted_at);
        assert_eq!(all(&store, namespaces[0]).last(), Some(&next));
    }
}
