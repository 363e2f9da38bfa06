//! `last_used_at` / `last_used_ip` of API keys, buffered in memory and written to the store at
//! most once a minute per key (SPEC §2.1), so the read path never waits on a write.
//!
//! Each worker thread records into its own map (a lock only it takes, so no lock word bounces
//! between cores on every request); reads take the freshest entry over all threads. When a
//! thread's entry falls due (once a minute), it asks one shared table when the key was last
//! written by any thread, and writes only if that was a minute ago: the shared lock is taken
//! once a minute per key and thread, never per request. The store keeps the later of two
//! writes, so threads persisting in any order never move a key's last use backwards.
use crate::domain::KeyId;
use crate::store::{KeyUsage, Store};
use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use thread_local::ThreadLocal;
use time::{Duration, OffsetDateTime};

const PERSIST_EVERY: Duration = Duration::minutes(1);

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

type Map = HashMap<KeyId, Entry, RandomState>;

fn lock(m: &Mutex<Map>) -> MutexGuard<'_, Map> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct UsageBuffer {
    store: Store,
    threads: ThreadLocal<Mutex<Map>>,
    /// When each key was last written to the store, by any thread.
    written: Mutex<HashMap<KeyId, OffsetDateTime, RandomState>>,
}

impl UsageBuffer {
    pub fn new(store: Store) -> Self {
        UsageBuffer {
            store,
            threads: ThreadLocal::new(),
            written: Mutex::default(),
        }
    }

    pub fn record(&self, key: KeyId, ip: Option<IpAddr>, now: OffsetDateTime) {
        let to_write = {
            let mut map = lock(self.threads.get_or_default());
            let entry = map.entry(key).or_insert(Entry {
                at: now,
                ip,
                persisted_at: None,
                dirty: true,
            });
            // A slower request finishing after a later one must not move the last use back.
            if now >= entry.at {
                entry.at = now;
                entry.ip = ip;
                entry.dirty = true;
            }
            let due = entry
                .persisted_at
                .is_none_or(|at| now - at >= PERSIST_EVERY);
            if !due {
                None
            } else if let Some(by_other) = self.written_within_a_minute(key, now) {
                // Another thread wrote it lately: wait for the next due time (shutdown writes
                // what is still dirty).
                entry.persisted_at = Some(by_other);
                None
            } else {
                entry.persisted_at = Some(now);
                entry.dirty = false;
                Some(entry.usage())
            }
        };
        if let Some(usage) = to_write
            && let Err(e) = self.store.set_key_usage(key, &usage)
        {
            tracing::warn!(error = %e, "could not record key usage");
        }
    }

    /// When another thread wrote `key` less than a minute before `now`; otherwise claims the
    /// write for `now` and answers `None`.
    fn written_within_a_minute(&self, key: KeyId, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = written.get(&key).copied()
            && now - at < PERSIST_EVERY
        {
            return Some(at);
        }
        if written.len() >= 100_000 {
            written.retain(|_, at| now - *at < PERSIST_EVERY);
        }
        written.insert(key, now);
        None
    }

    /// The freshest usage known for a key: memory first (over every thread), then the store.
    pub fn get(&self, key: KeyId) -> Option<KeyUsage> {
        let freshest = self
            .threads
            .iter()
            .filter_map(|m| lock(m).get(&key).copied())
            .max_by_key(|e| e.at);
        match freshest {
            Some(e) => Some(e.usage()),
            None => self.store.key_usage(key).ok().flatten(),
        }
    }

    /// Writes every buffered value (at shutdown).
    pub fn persist_all(&self) {
        let mut pending: HashMap<KeyId, Entry> = HashMap::new();
        for thread in self.threads.iter() {
            for (k, e) in lock(thread).iter_mut().filter(|(_, e)| e.dirty) {
                e.dirty = false;
                let slot = pending.entry(*k).or_insert(*e);
                if e.at > slot.at {
                    *slot = *e;
                }
            }
        }
        for (key, entry) in pending {
            if let Err(e) = self.store.set_key_usage(key, &entry.usage()) {
                tracing::warn!(error = %e, "could not record key usage");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn threads_recording_the_same_key_never_move_its_last_use_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let buffer = std::sync::Arc::new(UsageBuffer::new(store.clone()));
        let key = KeyId::generate();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        // A later use on this thread persists first ...
        buffer.record(key, Some(ip), at(100));
        // ... then another thread's first (so due) record of an earlier use arrives.
        let other = buffer.clone();
        std::thread::spawn(move || other.record(key, None, at(90)))
            .join()
            .unwrap();
        let stored = store.key_usage(key).unwrap().unwrap();
        assert_eq!(stored.at, at(100), "the store kept the later use");
        assert_eq!(stored.ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(
            buffer.get(key).unwrap().at,
            at(100),
            "memory answers the freshest"
        );

        // A third thread's first use, within the minute of the last write: no write either.
        let third = buffer.clone();
        std::thread::spawn(move || third.record(key, None, at(110)))
            .join()
            .unwrap();
        assert_eq!(
            store.key_usage(key).unwrap().unwrap().at,
            at(100),
            "at most one write a minute per key, whichever worker answers"
        );

        // Within the minute nothing is written; the buffer still knows, and shutdown persists it.
        buffer.record(key, None, at(130));
        assert_eq!(store.key_usage(key).unwrap().unwrap().at, at(100));
        assert_eq!(buffer.get(key).unwrap().at, at(130));
        // A slower request authenticated earlier finishes last: it does not move the use back.
        buffer.record(key, None, at(120));
        assert_eq!(buffer.get(key).unwrap().at, at(130));
        buffer.persist_all();
        assert_eq!(store.key_usage(key).unwrap().unwrap().at, at(130));
    }
}
