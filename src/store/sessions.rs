//! Sessions and their refresh tokens (one family per session).
//!
//! Spending a refresh token and issuing its successor happen in one transaction; sled runs
//! transactions one at a time, so two concurrent refreshes with one token see the token unspent
//! at most once.
use super::UserRecord;
use super::{Store, StoreError, StoreResult, abort, codec, from_tx, keys};
use crate::domain::{SessionId, UserId};
use serde::{Deserialize, Serialize};
use sled::Transactional;
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
    /// The token had been spent before: the caller must end the whole session.
    Reused(SessionId),
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
                sessions.insert(session.id.as_bytes(), codec::encode(session))?;
                by_user.insert(
                    &keys::pair(session.user.as_bytes(), session.id.as_bytes())[..],
                    codec::raw(&[]),
                )?;
                tokens.insert(&refresh_digest[..], codec::encode(refresh))?;
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
                if token.spent_at.is_some() {
                    return Ok(SpendOutcome::Reused(token.session));
                }
                let Some(sbytes) = sessions.get(token.session.as_bytes())? else {
                    return Ok(SpendOutcome::Invalid);
                };
                let mut session: SessionRecord = codec::decode(&sbytes).or_else(abort)?;
                if session.revoked_at.is_some() {
                    return Ok(SpendOutcome::Invalid);
                }
                token.spent_at = Some(now);
                tokens.insert(&digest[..], codec::encode(&token))?;
                let next = RefreshRecord {
                    session: session.id,
                    parent: Some(*digest),
                    issued_at: now,
                    spent_at: None,
                };
                tokens.insert(&next_digest[..], codec::encode(&next))?;
                session.last_seen_at = now;
                sessions.insert(session.id.as_bytes(), codec::encode(&session))?;
                Ok(SpendOutcome::Spent(session))
            })
            .map_err(from_tx);
        if let Ok(SpendOutcome::Spent(session)) = &result {
            self.caches.sessions.invalidate(&session.id);
        }
        result
    }

    /// Ends one session; its refresh tokens and access tokens die with it.
    pub fn revoke_session(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> StoreResult<Option<SessionRecord>> {
        let mut ended = None;
        let result = self.sessions.fetch_and_update(id.as_bytes(), |old| {
            let old = old?;
            match codec::decode::<SessionRecord>(old) {
                Ok(mut s) if s.revoked_at.is_none() => {
                    s.revoked_at = Some(now);
                    Some(codec::encode(&s))
                }
                _ => Some(old.to_vec()),
            }
        })?;
        if let Some(old) = result {
            let mut s: SessionRecord = codec::decode(&old)?;
            if s.revoked_at.is_none() {
                s.revoked_at = Some(now);
            }
            ended = Some(s);
        }
        self.caches.sessions.invalidate(&id);
        Ok(ended)
    }

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
