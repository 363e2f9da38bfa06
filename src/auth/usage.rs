//! `last_used_at` / `last_used_ip` of API keys, buffered in memory and written to the store at
//! most once a minute per key, so the read path never waits on a write. The buffer keeps the
//! address as an `IpAddr` (no allocation per request) and shards its lock.
use crate::domain::KeyId;
use crate::store::{KeyUsage, Store};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use time::{Duration, OffsetDateTime};

const PERSIST_EVERY: Duration = Duration::minutes(1);
const SHARDS: usize = 16;

#[derive(Clone, Copy)]
struct Entry {
    at: OffsetDateTime,
    ip: Option<IpAddr>,
    persisted_at: Option<OffsetDateTime>,
    dirty: bool,
}

impl Entry {
    fn usage(&self) -> KeyUsage {
        KeyUsage {
            at: self.at,
            ip: self.ip.map(|ip| ip.to_string()),
        }
    }
}

pub struct UsageBuffer {
    store: Store,
    shards: Vec<Mutex<HashMap<KeyId, Entry>>>,
    hasher: RandomState,
}

impl UsageBuffer {
    pub fn new(store: Store) -> Self {
        UsageBuffer {
            store,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &KeyId) -> MutexGuard<'_, HashMap<KeyId, Entry>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, key: KeyId, ip: Option<IpAddr>, now: OffsetDateTime) {
        let to_write = {
            let mut map = self.shard(&key);
            let entry = map.entry(key).or_insert(Entry {
                at: now,
                ip,
                persisted_at: None,
                dirty: true,
            });
            entry.at = now;
            entry.ip = ip;
            entry.dirty = true;
            let due = entry
                .persisted_at
                .is_none_or(|at| now - at >= PERSIST_EVERY);
            if due {
                entry.persisted_at = Some(now);
                entry.dirty = false;
                Some(entry.usage())
            } else {
                None
            }
        };
        if let Some(usage) = to_write
            && let Err(e) = self.store.set_key_usage(key, &usage)
        {
            tracing::warn!(error = %e, "could not record key usage");
        }
    }

    /// The freshest usage known for a key: memory first, then the store.
    pub fn get(&self, key: KeyId) -> Option<KeyUsage> {
        if let Some(e) = self.shard(&key).get(&key) {
            return Some(e.usage());
        }
        self.store.key_usage(key).ok().flatten()
    }

    /// Writes every buffered value (at shutdown).
    pub fn persist_all(&self) {
        let mut pending = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (k, e) in map.iter_mut().filter(|(_, e)| e.dirty) {
                e.dirty = false;
                pending.push((*k, e.usage()));
            }
        }
        for (key, usage) in pending {
            if let Err(e) = self.store.set_key_usage(key, &usage) {
                tracing::warn!(error = %e, "could not record key usage");
            }
        }
    }
}
