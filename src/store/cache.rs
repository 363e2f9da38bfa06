//! A read-through cache of records for the per-request auth path (keys, sessions, users,
//! tenants), kept coherent with the trees by explicit invalidation.
//!
//! Each worker thread keeps its own map, so a hit touches no lock and no shared reference
//! count: with one map behind a lock, two workers serving the same key kept bouncing the lock
//! word and the record's `Arc` count between their cores. What the threads share is a table of
//! epochs, one per slot of the key space, which only writes change.
//!
//! Coherence rule: every store method that changes a cached record calls `invalidate` after its
//! write commits and before it returns (so before any response confirms the write).
//! `invalidate` advances the epoch of the record's slot; every entry is stamped with the epoch
//! its slot had *before* its record was read, and is served only while that is still the
//! slot's epoch. A read that raced a write is therefore stamped with an epoch the write has
//! already moved past, and no thread serves it again: the cache can never serve a record older
//! than the last confirmed write.
use foldhash::fast::RandomState;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use thread_local::ThreadLocal;

/// Slots of the key space with their own epoch: an invalidation makes every thread reload
/// about 1/1024 of what it holds.
const SLOTS: usize = 1024;

struct Entry<V> {
    epoch: u64,
    value: Arc<V>,
}

/// One thread's copy, and the size at which it next drops its dead entries.
struct Local<K, V> {
    map: HashMap<K, Entry<V>, RandomState>,
    prune_at: usize,
}

/// A thread's map is not pruned below this many entries.
const MIN_PRUNE: usize = 1024;

/// One thread's hits and misses: written by that thread only, summed when metrics are read.
#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Until when a process may serve its caches. A sled store always may; a node of a cluster
/// may only while its lease holds and its listener works (`cluster.rs`): otherwise every
/// lookup reads the store and nothing read is kept.
#[derive(Debug)]
pub struct Trust {
    /// Nanoseconds since [`base`]; 0: not trusted; `u64::MAX`: always.
    until: AtomicU64,
}

/// The instant trust deadlines are counted from.
fn base() -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
}

fn since_base(at: std::time::Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX - 1)
}

impl Trust {
    pub fn always() -> Trust {
        Trust {
            until: AtomicU64::new(u64::MAX),
        }
    }

    pub fn never() -> Trust {
        base();
        Trust {
            until: AtomicU64::new(0),
        }
    }

    pub fn holds(&self) -> bool {
        match self.until.load(Ordering::SeqCst) {
            0 => false,
            u64::MAX => true,
            until => since_base(std::time::Instant::now()) < until,
        }
    }

    pub fn end(&self) {
        self.until.store(0, Ordering::SeqCst);
    }

    pub fn extend(&self, until: std::time::Instant) {
        self.until
            .store(since_base(until).max(1), Ordering::Release);
    }
}

pub struct RecordCache<K: Send, V: Send + Sync> {
    trust: Arc<Trust>,
    epochs: Box<[AtomicU64]>,
    local: ThreadLocal<RefCell<Local<K, V>>>,
    counts: ThreadLocal<Counts>,
    hasher: RandomState,
    per_thread: usize,
    /// Whether an entry is still worth its memory (besides being current).
    useful: fn(&V) -> bool,
}

impl<K: Hash + Eq + Copy + Send, V: Send + Sync> RecordCache<K, V> {
    /// `capacity` is shared out among the worker threads (one per core unless configured):
    /// each thread's map holds at most its share, so the copies together stay near
    /// `capacity` records.
    pub fn new(capacity: usize, trust: Arc<Trust>) -> Self {
        Self::keeping(capacity, trust, |_| true)
    }

    /// [`new`](Self::new), also dropping entries `useful` says are spent (an expired token)
    /// when the thread's map prunes.
    pub fn keeping(capacity: usize, trust: Arc<Trust>, useful: fn(&V) -> bool) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        RecordCache {
            trust,
            epochs: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            local: ThreadLocal::new(),
            counts: ThreadLocal::new(),
            hasher: RandomState::default(),
            per_thread: (capacity / threads).max(16),
            useful,
        }
    }

    fn epoch(&self, key: &K) -> &AtomicU64 {
        &self.epochs[(self.hasher.hash_one(key) as usize) % SLOTS]
    }

    /// The cached record, or `load()`'s, which is cached stamped with the epoch read before it.
    pub fn get_or_load<E>(
        &self,
        key: K,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<Arc<V>>, E> {
        if !self.trust.holds() {
            // Checked before the epoch is read: an entry kept before trust ended is forgotten
            // (every epoch moves) before trust begins again.
            self.counts
                .get_or_default()
                .misses
                .fetch_add(1, Ordering::Relaxed);
            return Ok(load()?.map(Arc::new));
        }
        // Acquire pairs with the invalidation's release: seeing its epoch means seeing its write.
        let epoch = self.epoch(&key).load(Ordering::Acquire);
        let local = self.local.get_or(|| {
            RefCell::new(Local {
                map: HashMap::with_hasher(RandomState::default()),
                prune_at: MIN_PRUNE,
            })
        });
        let counts = self.counts.get_or_default();
        if let Some(e) = local.borrow().map.get(&key)
            && e.epoch == epoch
        {
            counts.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(e.value.clone()));
        }
        counts.misses.fetch_add(1, Ordering::Relaxed);
        // No borrow is held while loading: `load` may use other caches.
        let Some(value) = load()? else {
            return Ok(None);
        };
        let value = Arc::new(value);
        let mut local = local.borrow_mut();
        if local.map.len() >= local.prune_at.min(self.per_thread) && !local.map.contains_key(&key) {
            self.prune(&mut local);
        }
        local.map.insert(
            key,
            Entry {
                epoch,
                value: value.clone(),
            },
        );
        Ok(Some(value))
    }

    /// Drops the entries no request can be served from any more (their slot moved on, or
    /// `useful` says they are spent), then lets the map grow to twice what is left before the
    /// next pass: the work is proportional to the inserts, and a map of records that keep
    /// being replaced (ended sessions, rotated keys, expired tokens) stays near its live size
    /// instead of filling up to the cap. Crude but bounded: a map still full starts over.
    fn prune(&self, local: &mut Local<K, V>) {
        let useful = self.useful;
        local
            .map
            .retain(|k, e| e.epoch == self.epoch(k).load(Ordering::Acquire) && useful(&e.value));
        if local.map.len() >= self.per_thread {
            local.map.clear();
        }
        local.prune_at = (2 * local.map.len()).max(MIN_PRUNE);
    }

    /// How many entries this thread's map holds.
    #[cfg(test)]
    fn local_len(&self) -> usize {
        self.local.get().map_or(0, |l| l.borrow().map.len())
    }

    /// Lookups served from a thread's map, and lookups that read the store, since start.
    pub fn counts(&self) -> crate::metrics::CacheCounts {
        let mut total = crate::metrics::CacheCounts::default();
        for c in self.counts.iter() {
            total.hits += c.hits.load(Ordering::Relaxed);
            total.misses += c.misses.load(Ordering::Relaxed);
        }
        total
    }

    /// Makes every thread's copy of `key` stale; called after every committed write of that
    /// record.
    pub fn invalidate(&self, key: &K) {
        self.epoch(key).fetch_add(1, Ordering::AcqRel);
    }

    /// Makes every thread's copy of every record stale.
    pub fn invalidate_all(&self) {
        for e in self.epochs.iter() {
            e.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_served_or_kept_while_trust_is_gone() {
        let trust = Arc::new(Trust::always());
        let cache: RecordCache<u32, u32> = RecordCache::new(64, trust.clone());
        cache.get_or_load(1, || Ok::<_, ()>(Some(10))).unwrap();
        trust.end();
        let read = cache.get_or_load(1, || Ok::<_, ()>(Some(11))).unwrap();
        assert_eq!(
            read.as_deref(),
            Some(&11),
            "an untrusted cache reads through"
        );
        cache.get_or_load(2, || Ok::<_, ()>(Some(20))).unwrap();
        trust.extend(std::time::Instant::now() + std::time::Duration::from_secs(60));
        assert_eq!(
            cache
                .get_or_load(2, || Ok::<_, ()>(Some(21)))
                .unwrap()
                .as_deref(),
            Some(&21),
            "what was read while untrusted was never kept"
        );
        assert_eq!(
            cache
                .get_or_load(1, || Ok::<_, ()>(Some(12)))
                .unwrap()
                .as_deref(),
            Some(&10),
            "what was kept before trust ended stays until forgotten"
        );
        cache.invalidate_all();
        assert_eq!(
            cache
                .get_or_load(1, || Ok::<_, ()>(Some(12)))
                .unwrap()
                .as_deref(),
            Some(&12),
            "and is read again once forgotten"
        );
        trust.extend(std::time::Instant::now());
        assert!(!trust.holds(), "a deadline passed ends the trust");
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_not_kept() {
        let cache: RecordCache<u32, &str> = RecordCache::new(64, Arc::new(Trust::always()));
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
    fn dead_entries_are_dropped_long_before_the_cap() {
        // Every key but one in eight is written again after its use (like ended sessions and
        // rotated keys), and one in sixteen of the others is spent (like expired tokens): the
        // map stays near the 23 438 live ones, far below the cap of 500 000 per thread.
        let cache: RecordCache<u32, u32> =
            RecordCache::keeping(1_000_000, Arc::new(Trust::always()), |v| v % 16 != 9);
        let mut seen_max = 0;
        for i in 0..200_000u32 {
            cache.get_or_load(i, || Ok::<_, ()>(Some(i))).unwrap();
            if i % 8 != 1 {
                cache.invalidate(&i);
            }
            seen_max = seen_max.max(cache.local_len());
        }
        assert!(seen_max < 60_000, "the map held {seen_max} entries");
        // What is live and useful is still served from the map. A key whose epoch slot a later
        // write shared is reloaded (a safe false invalidation; the hasher's seed decides which
        // keys share), so the check is on the recent live keys no later write shares a slot with.
        let written_after = |i: u32| (i + 1..200_000).filter(|j| j % 8 != 1);
        let clean: Vec<u32> = (199_000..200_000)
            .filter(|i| i % 8 == 1 && i % 16 != 9)
            .filter(|&i| written_after(i).all(|j| !std::ptr::eq(cache.epoch(&i), cache.epoch(&j))))
            .collect();
        assert!(
            !clean.is_empty(),
            "some recent live key has a slot of its own"
        );
        for i in clean {
            let kept = cache.get_or_load(i, || Ok::<_, ()>(Some(0))).unwrap();
            assert_eq!(kept.as_deref(), Some(&i), "kept, not reloaded");
        }
    }

    #[test]
    fn invalidation_drops_a_cached_record() {
        let cache: RecordCache<u32, u32> = RecordCache::new(64, Arc::new(Trust::always()));
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

    #[test]
    fn an_invalidation_on_one_thread_reaches_every_other_threads_copy() {
        let cache: Arc<RecordCache<u32, u32>> =
            Arc::new(RecordCache::new(64, Arc::new(Trust::always())));
        let (to_reader, reader_rx) = std::sync::mpsc::channel::<()>();
        let (to_main, main_rx) = std::sync::mpsc::channel::<u32>();
        let reader = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let read = |fresh: u32| {
                    *cache
                        .get_or_load(9, || Ok::<_, ()>(Some(fresh)))
                        .unwrap()
                        .unwrap()
                };
                to_main.send(read(1)).unwrap();
                reader_rx.recv().unwrap();
                to_main.send(read(2)).unwrap(); // cached: still 1
                reader_rx.recv().unwrap();
                to_main.send(read(3)).unwrap(); // after the invalidation: reloaded
            })
        };
        assert_eq!(main_rx.recv().unwrap(), 1);
        to_reader.send(()).unwrap();
        assert_eq!(
            main_rx.recv().unwrap(),
            1,
            "the reader's thread cached its copy"
        );
        cache.invalidate(&9);
        to_reader.send(()).unwrap();
        assert_eq!(
            main_rx.recv().unwrap(),
            3,
            "the invalidation reached the other thread"
        );
        reader.join().unwrap();
    }
}
