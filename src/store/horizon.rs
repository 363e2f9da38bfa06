//! The change-feed horizon: the time before which every product change is committed.
//!
//! A product write takes its `updated_at` (or a deletion its `deleted_at`) from the clock
//! before its transaction commits. A feed that pages by time (`/windev/products/since`) could
//! otherwise read past a change stamped earlier but committed later, and the client would
//! never see it. Each write holds a [`WriteStamp`] from taking its time until its commit; a
//! feed answers only changes stamped before the oldest stamp still held (or before now when
//! none is): a later page can then never find something older than what an earlier page
//! already passed.
//!
//! The wall clock may step back (NTP). The horizon never moves back, and no stamp is taken
//! before a horizon already given out: a write after such a step is stamped at that horizon.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

#[derive(Debug, Default)]
pub struct Horizon {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Stamps held (Unix nanoseconds), with how many writes hold each.
    held: BTreeMap<i128, u32>,
    /// The latest horizon given out.
    given: i128,
}

/// A write's time; the horizon stays before it until this is dropped (after the commit).
#[derive(Debug)]
pub struct WriteStamp {
    pub at: OffsetDateTime,
    horizon: Arc<Horizon>,
}

fn nanos(t: OffsetDateTime) -> i128 {
    t.unix_timestamp_nanos()
}

fn time(n: i128) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(n).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Horizon {
    /// Takes the time for a write from `now` (under the lock, so a feed reading the horizon at
    /// the same moment sees either the stamp or a time before it), never before a horizon
    /// already given out.
    pub fn stamp(self: &Arc<Self>, now: impl FnOnce() -> OffsetDateTime) -> WriteStamp {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = now();
        let at = if nanos(now) < state.given {
            time(state.given)
        } else {
            now
        };
        *state.held.entry(nanos(at)).or_default() += 1;
        WriteStamp {
            at,
            horizon: self.clone(),
        }
    }

    /// No stamp is taken before `nanos` from now on (a node joining a cluster whose feeds have
    /// already answered up to there).
    pub fn raise(&self, nanos: i128) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.given = state.given.max(nanos);
    }

    /// Whether a write stamped before `nanos` has not committed yet.
    pub fn held_before(&self, nanos: i128) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .held
            .keys()
            .next()
            .is_some_and(|&oldest| oldest < nanos)
    }

    /// Every change stamped before the returned time is committed. Never earlier than a
    /// horizon returned before.
    pub fn horizon(&self, now: impl FnOnce() -> OffsetDateTime) -> OffsetDateTime {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = nanos(now());
        let oldest = state.held.keys().next().copied().unwrap_or(now);
        let horizon = oldest.min(now).max(state.given);
        state.given = horizon;
        time(horizon)
    }
}

impl Drop for WriteStamp {
    fn drop(&mut self) {
        let mut state = self.horizon.state.lock().unwrap_or_else(|e| e.into_inner());
        let key = nanos(self.at);
        if let Some(n) = state.held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                state.held.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(s).unwrap()
    }

    #[test]
    fn the_horizon_stays_before_the_oldest_write_still_running() {
        let h = Arc::new(Horizon::default());
        assert_eq!(h.horizon(|| t(100)), t(100));
        let a = h.stamp(|| t(110));
        let b = h.stamp(|| t(120));
        let b2 = h.stamp(|| t(120));
        assert_eq!(h.horizon(|| t(200)), t(110));
        drop(a);
        assert_eq!(h.horizon(|| t(200)), t(120));
        drop(b);
        assert_eq!(h.horizon(|| t(200)), t(120));
        drop(b2);
        assert_eq!(h.horizon(|| t(200)), t(200));
    }

    #[test]
    fn a_clock_that_steps_back_moves_neither_the_horizon_nor_new_stamps_back() {
        let h = Arc::new(Horizon::default());
        assert_eq!(h.horizon(|| t(500)), t(500));
        // The clock steps back 100 s: the horizon holds, and a write is stamped at it (so a
        // feed that already passed 500 still sees the write, at 500 or later).
        assert_eq!(h.horizon(|| t(400)), t(500));
        let w = h.stamp(|| t(410));
        assert_eq!(w.at, t(500));
        assert_eq!(h.horizon(|| t(420)), t(500));
        drop(w);
        assert_eq!(h.horizon(|| t(600)), t(600));
    }
}
