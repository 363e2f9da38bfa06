//! The retention sweep: what no request needs any more is dropped, so a store under steady
//! login, refresh and logout churn stays the same size. It runs off the request workers
//! (`startup.rs`) every `--sweep-interval`.
//!
//! What it drops, each after its own setting: audit events; sessions that ended (logged out,
//! revoked, locked out, out of time) together with all their refresh tokens; spent refresh
//! tokens of live sessions; lockout records that no longer change any answer.
use super::Auth;
use super::lockout::LockoutState;
use crate::error::Error;
use time::OffsetDateTime;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub lockouts: usize,
    pub audit_events: usize,
    pub sessions: usize,
    pub refresh_tokens: usize,
}

impl SweepReport {
    pub fn total(&self) -> usize {
        self.lockouts + self.audit_events + self.sessions + self.refresh_tokens
    }
}

impl Auth {
    /// One full sweep at the current time.
    pub fn sweep(&self) -> Result<SweepReport, Error> {
        let now = self.now();
        let keep = self.policy.retention;
        let before = |kept: Option<time::Duration>| kept.map(|k| now - k);
        let lockouts = self.sweep_lockouts()?;
        let sessions = self.store.sweep_sessions(
            |s| self.session_ended_at(s, now),
            before(keep.ended_sessions),
            before(keep.spent_refresh_tokens),
        )?;
        let audit_events = match before(keep.audit) {
            Some(cutoff) => self.store.sweep_audit(cutoff)?,
            None => 0,
        };
        Ok(SweepReport {
            lockouts,
            audit_events,
            sessions: sessions.sessions,
            refresh_tokens: sessions.refresh_tokens,
        })
    }

    /// Drops the lockout records that no longer matter: no lock in force and every failure
    /// outside the window. Failures for emails that do not exist would otherwise stay forever.
    pub fn sweep_lockouts(&self) -> Result<usize, Error> {
        let now = self.now();
        let policy = self.policy.lockout;
        Ok(self
            .store
            .sweep_lockouts(|s: &LockoutState| s.is_spent(now, &policy))?)
    }

    /// Audit events are ordered by their id; it carries the time from the application clock
    /// (so retention and ordering follow the same clock as every other rule).
    pub(super) fn event_id(&self, at: OffsetDateTime) -> uuid::Uuid {
        use std::sync::Mutex;
        static CONTEXT: Mutex<uuid::ContextV7> = Mutex::new(uuid::ContextV7::new());
        let context = CONTEXT.lock().unwrap_or_else(|p| p.into_inner());
        let secs = u64::try_from(at.unix_timestamp()).unwrap_or(0);
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix(&*context, secs, at.nanosecond()))
    }
}
