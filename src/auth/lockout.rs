//! Failed-login lockout as a pure state machine: every method takes `now`, nothing sleeps.
//!
//! Failures are counted per normalized submitted email. `threshold` consecutive failures within
//! `window` of each other (a sliding window) lock the email for `lock_for`; the failure that reaches the threshold still answers
//! "invalid credentials" and sets the lock. Failures while locked neither count nor extend the
//! lock. A success resets everything.
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    pub threshold: u32,
    pub window: Duration,
    pub lock_for: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockoutState {
    /// Times of the consecutive failures still inside the window (at most `threshold`).
    pub recent: Vec<OffsetDateTime>,
    pub locked_until: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    /// This failure reached the threshold: the email is now locked.
    JustLocked,
    /// Already locked: nothing changed.
    WhileLocked,
}

impl LockoutState {
    /// Seconds left on the lock, if locked at `now`.
    pub fn locked_for(&self, now: OffsetDateTime) -> Option<u64> {
        let until = self.locked_until?;
        (now < until).then(|| {
            u64::try_from((until - now).whole_seconds())
                .unwrap_or(0)
                .max(1)
        })
    }

    /// Nothing left to remember at `now`: no lock in force and every failure outside the
    /// window. Such a record can be dropped without changing any future answer.
    pub fn is_spent(&self, now: OffsetDateTime, policy: &LockoutPolicy) -> bool {
        self.locked_for(now).is_none() && self.recent.iter().all(|t| now - *t >= policy.window)
    }

    /// A sliding window: the email locks when `threshold` consecutive failures fall within
    /// `window` of each other, however the earlier failures were spread.
    pub fn record_failure(
        &self,
        now: OffsetDateTime,
        policy: &LockoutPolicy,
    ) -> (LockoutState, FailureOutcome) {
        if self.locked_for(now).is_some() {
            return (self.clone(), FailureOutcome::WhileLocked);
        }
        let threshold = policy.threshold.max(1) as usize;
        let mut recent: Vec<OffsetDateTime> = self
            .recent
            .iter()
            .copied()
            .filter(|t| now - *t < policy.window)
            .collect();
        recent.push(now);
        if recent.len() > threshold {
            recent.drain(..recent.len() - threshold);
        }
        if recent.len() >= threshold {
            let locked = LockoutState {
                recent: Vec::new(),
                locked_until: Some(now + policy.lock_for),
            };
            (locked, FailureOutcome::JustLocked)
        } else {
            (
                LockoutState {
                    recent,
                    locked_until: None,
                },
                FailureOutcome::Counted,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            threshold: 5,
            window: Duration::minutes(15),
            lock_for: Duration::minutes(15),
        }
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn fail_n(
        n: u32,
        start: OffsetDateTime,
        step: Duration,
    ) -> (LockoutState, Vec<FailureOutcome>) {
        let mut s = LockoutState::default();
        let mut outcomes = Vec::new();
        for i in 0..n {
            let (next, o) = s.record_failure(start + step * i, &policy());
            s = next;
            outcomes.push(o);
        }
        (s, outcomes)
    }

    #[test]
    fn the_fifth_failure_locks_and_the_first_four_only_count() {
        let (s, outcomes) = fail_n(5, t0(), Duration::seconds(10));
        assert_eq!(outcomes[..4], [FailureOutcome::Counted; 4]);
        assert_eq!(outcomes[4], FailureOutcome::JustLocked);
        assert_eq!(
            s.locked_until,
            Some(t0() + Duration::seconds(40) + Duration::minutes(15))
        );
    }

    #[test]
    fn failures_spread_beyond_the_window_never_lock() {
        let (s, outcomes) = fail_n(10, t0(), Duration::minutes(4));
        assert!(
            outcomes.iter().all(|o| *o == FailureOutcome::Counted),
            "{outcomes:?}"
        );
        assert!(s.locked_for(t0() + Duration::minutes(40)).is_none());
    }

    #[test]
    fn failures_during_a_lock_do_not_extend_it_and_it_ends_on_time() {
        let (s, _) = fail_n(5, t0(), Duration::ZERO);
        let until = s.locked_until.unwrap();
        let (s2, o) = s.record_failure(t0() + Duration::minutes(14), &policy());
        assert_eq!(o, FailureOutcome::WhileLocked);
        assert_eq!(s2.locked_until, Some(until));
        assert_eq!(s2.locked_for(t0() + Duration::minutes(14)), Some(60));
        assert!(s2.locked_for(until).is_none());
        let (s3, o) = s2.record_failure(until, &policy());
        assert_eq!(
            (s3.recent.len(), o),
            (1, FailureOutcome::Counted),
            "a new count starts after the lock"
        );
    }

    #[test]
    fn the_window_slides_with_the_failures() {
        let at = |m: i64, sec: i64| t0() + Duration::minutes(m) + Duration::seconds(sec);
        let mut s = LockoutState::default();
        for t in [at(0, 0), at(14, 57), at(14, 58), at(14, 59), at(15, 0)] {
            let (next, o) = s.record_failure(t, &policy());
            assert_eq!(
                o,
                FailureOutcome::Counted,
                "the first failure has left the window by 15:00"
            );
            s = next;
        }
        let (_, o) = s.record_failure(at(15, 1), &policy());
        assert_eq!(
            o,
            FailureOutcome::JustLocked,
            "five failures within 15 minutes lock"
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let (s, _) = fail_n(5, t0(), Duration::ZERO);
        let almost = s.locked_until.unwrap() - Duration::milliseconds(1);
        assert_eq!(s.locked_for(almost), Some(1));
    }
}
