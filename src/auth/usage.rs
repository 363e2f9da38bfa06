//! `last_used_at` / `last_used_ip` of API keys, buffered in memory and written to the store at
//! most once a minute per key, so the read path never waits on a write.
use crate::domain::KeyId;
use crate::store::{KeyUsage, Store};
use std::collections::HashMap;
use std::sync::Mutex;
use time::{Duration, OffsetDateTime};

const PERSIST_EVERY: Duration = Duration::minutes(1);

struct Entry {
    usage: KeyUsage,
    persisted_at: Option<OffsetDateTime>,
    dirty: bool,
}

pub struct UsageBuffer {
    store: Store,
    entries: Mutex<HashMap<KeyId, Entry>>,
}

impl UsageBuffer {
    pub fn new(store: Store) -> Self {
        UsageBuffer {
            store,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, key: KeyId, ip: Option<String>, now: OffsetDateTime) {
        let to_write = {
            let mut map = self.lock();
            let entry = map.entry(key).or_insert_with(|| Entry {
                usage: KeyUsage { at: now, ip: None },
                persisted_at: None,
                dirty: true,
            });
            entry.usage = KeyUsage { at: now, ip };
            entry.dirty = true;
            let due = entry
                .persisted_at
                .is_none_or(|at| now - at >= PERSIST_EVERY);
            if due {
                entry.persisted_at = Some(now);
                entry.dirty = false;
                Some(entry.usage.clone())
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
        if let Some(e) = self.lock().get(&key) {
            return Some(e.usage.clone());
        }
        self.store.key_usage(key).ok().flatten()
    }

    /// Writes every buffered value (at shutdown).
    pub fn persist_all(&self) {
        let pending: Vec<(KeyId, KeyUsage)> = self
            .lock()
            .iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(k, e)| {
                e.dirty = false;
                (*k, e.usage.clone())
            })
            .collect();
        for (key, usage) in pending {
            if let Err(e) = self.store.set_key_usage(key, &usage) {
                tracing::warn!(error = %e, "could not record key usage");
            }
        }
    }
}
