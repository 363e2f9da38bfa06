//! The change-feed horizon: the time before which every product change is committed.
//!
//! A product write takes its `updated_at` (or a deletion its `deleted_at`) from the clock
//! before its transaction commits. A feed that pages by time (`/windev/products/since`) could
//! otherwise read past a change stamped earlier but committed later, and the client would
//! never see it. Each write holds a [`WriteStamp`] from taking its time until its commit; a
//! feed answers only changes stamped before the oldest stamp still held (or before now when
//! none is): a later page can then never find something older than what an earlier page
//! already passed.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

#[derive(Debug, Default)]
pub struct Horizon {
    /// Stamps held, with how many writes hold each.
    held: Mutex<BTreeMap<i128, u32>>,
}

/// A write's time; the horizon stays before it until this is dropped (after the commit).
#[derive(Debug)]
pub struct WriteStamp {
    pub at: OffsetDateTime,
    horizon: Arc<Horizon>,
}

impl Horizon {
    /// Takes the time for a write from `now` (called under the lock, so a feed reading the
    /// horizon at the same moment sees either the stamp or a time before it).
    pub fn stamp(self: &Arc<Self>, now: impl FnOnce() -> OffsetDateTime) -> WriteStamp {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let at = now();
        *held.entry(at.unix_timestamp_nanos()).or_default() += 1;
        WriteStamp {
            at,
            horizon: self.clone(),
        }
    }

    /// Every change stamped before the returned time is committed.
    pub fn horizon(&self, now: impl FnOnce() -> OffsetDateTime) -> OffsetDateTime {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = now();
        held.keys()
            .next()
            .and_then(|&n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
            .map_or(now, |oldest| oldest.min(now))
    }
}

impl Drop for WriteStamp {
    fn drop(&mut self) {
        let mut held = self.horizon.held.lock().unwrap_or_else(|e| e.into_inner());
        let key = self.at.unix_timestamp_nanos();
        if let Some(n) = held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_stays_before_the_oldest_write_still_running() {
        let h = Arc::new(Horizon::default());
        let t = |s| OffsetDateTime::from_unix_timestamp(s).unwrap();
        assert_eq!(h.horizon(|| t(100)), t(100));
        let a = h.stamp(|| t(10));
        let b = h.stamp(|| t(20));
        let b2 = h.stamp(|| t(20));
        assert_eq!(h.horizon(|| t(100)), t(10));
        drop(a);
        assert_eq!(h.horizon(|| t(100)), t(20));
        drop(b);
        assert_eq!(h.horizon(|| t(100)), t(20));
        drop(b2);
        assert_eq!(h.horizon(|| t(100)), t(100));
    }
}
