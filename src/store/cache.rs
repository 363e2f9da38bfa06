//! A read-through cache of records for the per-request auth path (keys, sessions, users,
//! tenants), kept coherent with the trees by explicit invalidation.
//!
//! Coherence rule: every store method that changes a cached record calls `invalidate` after its
//! write commits and before it returns (so before any response confirms the write). A reader
//! that misses notes the shard's epoch, reads sled, and only fills the cache if no invalidation
//! happened in between; a fill that raced a write is therefore either never stored or removed
//! by that write's invalidation. The cache can never serve a record older than the last
//! confirmed write.
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, RwLock};

const SHARDS: usize = 16;

struct Shard<K, V> {
    map: HashMap<K, Arc<V>>,
    epoch: u64,
}

pub struct RecordCache<K, V> {
    shards: Vec<RwLock<Shard<K, V>>>,
    hasher: RandomState,
    per_shard: usize,
}

impl<K: Hash + Eq + Copy, V> RecordCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        RecordCache {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        map: HashMap::new(),
                        epoch: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            per_shard: (capacity / SHARDS).max(16),
        }
    }

    fn shard(&self, key: &K) -> &RwLock<Shard<K, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The cached record, or `load()`'s, which is cached unless a write raced it.
    pub fn get_or_load<E>(
        &self,
        key: K,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<Arc<V>>, E> {
        let shard = self.shard(&key);
        let epoch = {
            let s = shard.read().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = s.map.get(&key) {
                return Ok(Some(v.clone()));
            }
            s.epoch
        };
        let Some(value) = load()? else {
            return Ok(None);
        };
        let value = Arc::new(value);
        let mut s = shard.write().unwrap_or_else(|p| p.into_inner());
        if s.epoch == epoch {
            if s.map.len() >= self.per_shard {
                // Crude but bounded: a full shard starts over.
                s.map.clear();
            }
            s.map.insert(key, value.clone());
        }
        Ok(Some(value))
    }

    /// Forgets `key`; called after every committed write of that record.
    pub fn invalidate(&self, key: &K) {
        let mut s = self.shard(key).write().unwrap_or_else(|p| p.into_inner());
        s.epoch = s.epoch.wrapping_add(1);
        s.map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_raced_an_invalidation_is_not_kept() {
        let cache: RecordCache<u32, &str> = RecordCache::new(64);
        let got = cache
            .get_or_load(1, || {
                // A write commits and invalidates while this (old) value is being read.
                cache.invalidate(&1);
                Ok::<_, ()>(Some("old"))
            })
            .unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&"old"),
            "the reader still gets what it read"
        );
        let next = cache.get_or_load(1, || Ok::<_, ()>(Some("new"))).unwrap();
        assert_eq!(
            next.as_deref(),
            Some(&"new"),
            "but the stale value was not cached"
        );
    }

    #[test]
    fn invalidation_drops_a_cached_record() {
        let cache: RecordCache<u32, u32> = RecordCache::new(64);
        cache.get_or_load(7, || Ok::<_, ()>(Some(1))).unwrap();
        assert_eq!(
            *cache
                .get_or_load(7, || Ok::<_, ()>(Some(2)))
                .unwrap()
                .unwrap(),
            1,
            "cached"
        );
        cache.invalidate(&7);
        assert_eq!(
            *cache
                .get_or_load(7, || Ok::<_, ()>(Some(2)))
                .unwrap()
                .unwrap(),
            2
        );
    }
}
