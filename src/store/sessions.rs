//! Sessions and their refresh tokens (one family per session).
//!
//! Spending a refresh token and issuing its successor happen in one transaction; sled runs
//! transactions one at a time, so two concurrent refreshes with one token see the token unspent
//! at most once.
use super::UserRecord;
use super::kv::Transactional;
use super::{Store, StoreError, StoreResult, abort, codec, from_tx, keys};
use crate::domain::{SessionId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use crate::domain::Digest;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub user: UserId,
    pub created_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The user's token version this session belongs to: a password change or lock bumps the
    /// user's version, and every session still on the old one is dead (the password changer's
    /// own session moves along in the same transaction).
    pub user_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub session: SessionId,
    pub parent: Option<Digest>,
    pub issued_at: OffsetDateTime,
    pub spent_at: Option<OffsetDateTime>,
}

#[derive(Debug)]
pub enum SpendOutcome {
    /// The token was live; it is now spent and its successor stored.
    Spent(SessionRecord),
    /// The token had been spent before (at `spent_at`): unless that was a moment ago, the
    /// caller must end the whole session.
    Reused {
        session: SessionId,
        spent_at: OffsetDateTime,
    },
    /// Unknown token, or its session is gone or revoked.
    Invalid,
}

impl Store {
    /// Creates a session, but only if the user's password hash is still `password_hash` and
    /// their token version still `session.user_version`: a login whose password check raced a
    /// password change or a lock gets `Conflict` instead of a session.
    pub fn create_session(
        &self,
        session: &SessionRecord,
        password_hash: &str,
        refresh_digest: &Digest,
        refresh: &RefreshRecord,
    ) -> StoreResult<()> {
        let result = (
            &self.users,
            &self.sessions,
            &self.sessions_by_user,
            &self.refresh_tokens,
        )
            .transaction(|(users, sessions, by_user, tokens)| {
                let current = match users.get(session.user.as_bytes())? {
                    Some(bytes) => codec::decode::<UserRecord>(&bytes).or_else(abort)?,
                    None => return abort(StoreError::NotFound),
                };
                if current.token_version != session.user_version
                    || current.password_hash != password_hash
                {
                    return abort(StoreError::Conflict("the credentials changed during login"));
                }
                sessions.set(session.id.as_bytes(), codec::encode(session))?;
                by_user.set(
                    &keys::pair(session.user.as_bytes(), session.id.as_bytes())[..],
                    codec::raw(&[]),
                )?;
                tokens.set(&refresh_digest[..], codec::encode(refresh))?;
                Ok(())
            })
            .map_err(from_tx);
        self.caches.sessions.invalidate(&session.id);
        result
    }

    pub fn session(&self, id: SessionId) -> StoreResult<Option<SessionRecord>> {
        self.sessions
            .get(id.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// `session`, through the coherent cache (the per-request path).
    pub fn session_cached(
        &self,
        id: SessionId,
    ) -> StoreResult<Option<std::sync::Arc<SessionRecord>>> {
        self.caches.sessions.get_or_load(id, || self.session(id))
    }

    pub fn refresh_record(&self, digest: &Digest) -> StoreResult<Option<RefreshRecord>> {
        self.refresh_tokens
            .get(digest)?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// Spends `digest` and stores `next` as its successor, atomically.
    pub fn spend_refresh(
        &self,
        digest: &Digest,
        next_digest: &Digest,
        now: OffsetDateTime,
    ) -> StoreResult<SpendOutcome> {
        let result = (&self.refresh_tokens, &self.sessions)
            .transaction(|(tokens, sessions)| {
                let Some(bytes) = tokens.get(&digest[..])? else {
                    return Ok(SpendOutcome::Invalid);
                };
                let mut token: RefreshRecord = codec::decode(&bytes).or_else(abort)?;
                if let Some(spent_at) = token.spent_at {
                    return Ok(SpendOutcome::Reused {
                        session: token.session,
                        spent_at,
                    });
                }
                let Some(sbytes) = sessions.get(token.session.as_bytes())? else {
                    return Ok(SpendOutcome::Invalid);
                };
                let mut session: SessionRecord = codec::decode(&sbytes).or_else(abort)?;
                if session.revoked_at.is_some() {
                    return Ok(SpendOutcome::Invalid);
                }
                token.spent_at = Some(now);
                tokens.set(&digest[..], codec::encode(&token))?;
                let next = RefreshRecord {
                    session: session.id,
                    parent: Some(*digest),
                    issued_at: now,
                    spent_at: None,
                };
                tokens.set(&next_digest[..], codec::encode(&next))?;
                session.last_seen_at = now;
                sessions.set(session.id.as_bytes(), codec::encode(&session))?;
                Ok(SpendOutcome::Spent(session))
            })
            .map_err(from_tx);
        if let Ok(SpendOutcome::Spent(session)) = &result {
            self.caches.sessions.invalidate(&session.id);
        }
        result
    }

    /// Ends one session; its refresh tokens and access tokens die with it, and it leaves its
    /// user's index of live sessions in the same transaction.
    pub fn revoke_session(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> StoreResult<Option<SessionRecord>> {
        let result = (&self.sessions, &self.sessions_by_user)
            .transaction(|(sessions, by_user)| {
                let Some(bytes) = sessions.get(id.as_bytes())? else {
                    return Ok(None);
                };
                let mut s: SessionRecord = codec::decode(&bytes).or_else(abort)?;
                if s.revoked_at.is_none() {
                    s.revoked_at = Some(now);
                    sessions.set(id.as_bytes(), codec::encode(&s))?;
                }
                by_user.unset(&keys::pair(s.user.as_bytes(), id.as_bytes())[..])?;
                Ok(Some(s))
            })
            .map_err(from_tx);
        self.caches.sessions.invalidate(&id);
        result
    }

    /// The user's sessions that have not been revoked (the index holds no others); some may
    /// have run out of time and not been swept yet.
    pub fn user_sessions(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        let mut out = Vec::new();
        for item in self.sessions_by_user.scan_prefix(user.as_bytes()) {
            let (k, _) = item?;
            let id = SessionId::from_slice(&k[16..])
                .ok_or(StoreError::Corrupt("session index".into()))?;
            if let Some(s) = self.session(id)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Ends every live session of `user` except `keep`; returns how many ended.
    pub fn revoke_user_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        now: OffsetDateTime,
    ) -> StoreResult<usize> {
        let mut count = 0;
        for s in self.user_sessions(user)? {
            if Some(s.id) != keep && s.revoked_at.is_none() {
                self.revoke_session(s.id, now)?;
                count += 1;
            }
        }
        Ok(count)
    }
}

/// What one retention sweep of sessions removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionSweep {
    pub sessions: usize,
    pub refresh_tokens: usize,
}

impl Store {
    /// Drops the sessions `ended_at` says ended before `ended_before`, with every refresh token
    /// of theirs, and the spent refresh tokens spent before `spent_before`. A session that ran
    /// out of time is first marked revoked (so it leaves its user's live index). Tokens go before
    /// their session, so a crash halfway never leaves a token without its session; every
    /// removal is a compare-and-swap against what was read, so nothing written meanwhile is lost.
    pub fn sweep_sessions(
        &self,
        ended_at: impl Fn(&SessionRecord) -> Option<OffsetDateTime>,
        ended_before: Option<OffsetDateTime>,
        spent_before: Option<OffsetDateTime>,
    ) -> StoreResult<SessionSweep> {
        let mut doomed = std::collections::HashMap::new();
        for item in self.sessions.iter() {
            let (key, value) = item?;
            let Ok(s) = codec::decode::<SessionRecord>(&value) else {
                continue;
            };
            let Some(ended) = ended_at(&s) else {
                continue;
            };
            let value = if s.revoked_at.is_none() {
                // Ran out of time: recorded as ended then, and out of the live index. What is
                // removed below is the record as that wrote it.
                self.revoke_session(s.id, ended)?;
                match self.sessions.get(&key)? {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                value
            };
            if ended_before.is_some_and(|before| ended < before) {
                doomed.insert(s.id, (key, value));
            }
        }
        let mut swept = SessionSweep::default();
        for item in self.refresh_tokens.iter() {
            let (key, value) = item?;
            let Ok(t) = codec::decode::<RefreshRecord>(&value) else {
                continue;
            };
            let old_spent = t
                .spent_at
                .zip(spent_before)
                .is_some_and(|(spent, before)| spent < before);
            if (old_spent || doomed.contains_key(&t.session))
                && self
                    .refresh_tokens
                    .compare_and_swap(&key, Some(&value), None as Option<&[u8]>)?
                    .is_ok()
            {
                swept.refresh_tokens += 1;
            }
        }
        for (id, (key, value)) in doomed {
            if self
                .sessions
                .compare_and_swap(&key, Some(&value), None as Option<&[u8]>)?
                .is_ok()
            {
                swept.sessions += 1;
            }
            self.caches.sessions.invalidate(&id);
        }
        Ok(swept)
    }
}

impl Store {
    /// Stores written before the per-user index held only live sessions kept every session
    /// there; drop the entries of revoked ones, once.
    pub(super) fn migrate_session_index(&self) -> StoreResult<()> {
        const DONE: &str = "sessions_by_user_live_only";
        // A new store has nothing to migrate, and stays empty (restore loads only into those).
        if self.meta.get(DONE)?.is_some() || self.sessions_by_user.is_empty() {
            return Ok(());
        }
        for item in self.sessions_by_user.iter() {
            let (k, _) = item?;
            let revoked = SessionId::from_slice(&k[16..])
                .map(|id| self.session(id))
                .transpose()?
                .flatten()
                .is_none_or(|s| s.revoked_at.is_some());
            if revoked {
                self.sessions_by_user.unset(&k)?;
            }
        }
        self.meta.set(DONE, codec::raw(b"1"))?;
        self.db.flush()?;
        Ok(())
    }
}
