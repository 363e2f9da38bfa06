//! Sessions: refresh with rotation and reuse detection, logout, password change, and the
//! per-request check of access tokens. Logging in is in `login.rs`.
use super::secret::{random_base62, sha256};
use super::{Auth, Principal, SessionUser, Subject};
use crate::domain::{Environment, Invalid, SessionId, TenantId};
use crate::error::{Error, ErrorKind};
use crate::store::{SessionRecord, SpendOutcome, UserRecord};
use time::OffsetDateTime;

pub(super) const REFRESH_LEN: usize = 43; // 43 base62 characters ≈ 256 bits

/// What a successful login or refresh hands back.
pub struct Tokens {
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: String,
    /// Seconds until the session's absolute end (the cookie's Max-Age).
    pub refresh_max_age: i64,
}

/// Where a request came from, for the audit log and the session list.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub addr: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The address as the audit log and the session list show it.
    pub fn ip(&self) -> Option<String> {
        self.addr.map(|a| a.to_string())
    }
}

fn invalid_token(detail: &str) -> Error {
    Error::new(ErrorKind::InvalidToken, detail)
}

pub(super) fn invalid_credentials() -> Error {
    Error::new(ErrorKind::InvalidCredentials, "invalid email or password")
}

pub(super) fn locked(seconds: u64) -> Error {
    Error::new(
        ErrorKind::AccountLocked,
        "too many failed logins: this account is locked for a while; retry later or ask an admin to unlock it",
    )
    .with_retry_after(seconds)
}

impl Auth {
    fn session_alive(&self, s: &SessionRecord, now: OffsetDateTime) -> bool {
        self.session_ended_at(s, now).is_none()
    }

    /// When the session ended (revoked, or out of absolute or idle time), if it has by `now`.
    pub(super) fn session_ended_at(
        &self,
        s: &SessionRecord,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        if s.revoked_at.is_some() {
            return s.revoked_at;
        }
        let end = s.expires_at.min(s.last_seen_at + self.policy.session_idle);
        (end <= now).then_some(end)
    }

    /// Changes the user's credentials (a new password hash, or none to only cut off) and ends
    /// every session but `keep`, whose tokens move to the new version.
    pub(crate) fn cut_off_user(
        &self,
        user: &UserRecord,
        new_hash: Option<&str>,
        keep: Option<SessionId>,
    ) -> Result<UserRecord, Error> {
        let now = self.now();
        let updated = self
            .store
            .change_credentials(user.id, new_hash, keep, now)?;
        self.store.revoke_user_sessions(user.id, keep, now)?;
        Ok(updated)
    }

    pub(super) fn tokens(
        &self,
        user: &UserRecord,
        tenant: TenantId,
        session: &SessionRecord,
        refresh: String,
        now: OffsetDateTime,
    ) -> Result<Tokens, Error> {
        Ok(Tokens {
            access_token: self
                .jwt
                .issue(user.id, tenant, session.id, user.token_version, now)?,
            expires_in: self.jwt.ttl_seconds,
            refresh_token: refresh,
            refresh_max_age: (session.expires_at - now).whole_seconds().max(0),
        })
    }

    /// Spends the refresh token and returns its successor. A spent token presented again ends
    /// the whole session: whoever holds the other copy loses it too.
    pub async fn refresh(&self, raw: &str, client: &ClientInfo) -> Result<Tokens, Error> {
        if raw.len() != REFRESH_LEN || !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid_token("the refresh token is missing or malformed"));
        }
        let now = self.now();
        let digest = sha256(raw.as_bytes());
        let record = self
            .store
            .refresh_record(&digest)?
            .ok_or_else(|| invalid_token("the refresh token is not valid"))?;
        let session = self
            .store
            .session(record.session)?
            .ok_or_else(|| invalid_token("the session has ended"))?;
        if record.spent_at.is_none() && !self.session_alive(&session, now) {
            return Err(invalid_token("the session has ended; log in again"));
        }
        self.check_refresh_rate(session.id)?;
        let next = random_base62(REFRESH_LEN)?;
        match self
            .store
            .spend_refresh(&digest, &sha256(next.as_bytes()), now)?
        {
            SpendOutcome::Spent(session) => {
                let user = self
                    .store
                    .user(session.user)?
                    .ok_or_else(|| invalid_token("the user no longer exists"))?;
                if session.user_version != user.token_version {
                    // The password changed or the account locked after this session began.
                    self.store.revoke_session(session.id, now)?;
                    self.store.flush().await?;
                    return Err(invalid_token("the session has ended; log in again"));
                }
                let tenant = user
                    .default_tenant()
                    .ok_or_else(|| Error::forbidden("this user is not a member of any tenant"))?;
                self.store.flush().await?;
                self.tokens(&user, tenant, &session, next, now)
            }
            SpendOutcome::Reused {
                session: sid,
                spent_at,
            } if now - spent_at < self.policy.refresh_reuse_grace
                && session.revoked_at.is_none() =>
            {
                // Two requests raced with one cookie (two tabs, or a retry after a lost
                // answer): the winner's successor stays good. Nothing is issued here.
                tracing::info!(session = %sid, "refresh token presented again within the grace period");
                Err(Error::new(
                    ErrorKind::Conflict,
                    "this refresh token was used a moment ago by another request; use the cookie that request received",
                ))
            }
            SpendOutcome::Reused { session: sid, .. } => {
                let ended = self.store.revoke_session(sid, now)?;
                let user = match ended {
                    Some(s) => self.store.user(s.user)?,
                    None => None,
                };
                let tenant = user.as_ref().and_then(UserRecord::default_tenant);
                let actor = user
                    .map(|u| format!("user:{}", u.email))
                    .unwrap_or_default();
                self.audit(
                    tenant,
                    "refresh_token.reused",
                    &actor,
                    client.ip().as_deref(),
                    format!("session {sid} ended"),
                );
                self.store.flush().await?;
                Err(invalid_token(
                    "this refresh token was already used; the session has been ended for safety",
                ))
            }
            SpendOutcome::Invalid => Err(invalid_token("the session has ended; log in again")),
        }
    }

    pub async fn logout(&self, user: SessionUser) -> Result<(), Error> {
        self.store.revoke_session(user.session, self.now())?;
        self.store.flush().await?;
        Ok(())
    }

    pub async fn logout_all(&self, user: SessionUser) -> Result<usize, Error> {
        let n = self.store.revoke_user_sessions(user.id, None, self.now())?;
        self.store.flush().await?;
        Ok(n)
    }

    pub fn live_sessions(&self, user: SessionUser) -> Result<Vec<SessionRecord>, Error> {
        let now = self.now();
        let version = self.store.user(user.id)?.map(|u| u.token_version);
        let mut sessions = self.store.user_sessions(user.id)?;
        sessions.retain(|s| self.session_alive(s, now) && Some(s.user_version) == version);
        Ok(sessions)
    }

    pub async fn end_session(&self, user: SessionUser, id: SessionId) -> Result<(), Error> {
        match self.store.session(id)? {
            Some(s) if s.user == user.id && s.revoked_at.is_none() => {
                self.store.revoke_session(id, self.now())?;
                self.store.flush().await?;
                Ok(())
            }
            _ => Err(Error::not_found("session")),
        }
    }

    /// Sets a user's password without the current one (`pixee-pim user set-password`, for an
    /// admin locked out of the page): every session ends, every access token dies, and a login
    /// lock is lifted.
    pub async fn set_password(
        &self,
        user: &UserRecord,
        new: String,
        actor: &str,
    ) -> Result<(), Error> {
        super::passwords::check_policy("password", &new)?;
        let hash = self.passwords.hash(new).await?;
        self.cut_off_user(user, Some(&hash), None)?;
        self.store.lockout_clear(&user.email)?;
        self.audit(
            user.default_tenant(),
            "password.reset",
            actor,
            None,
            format!("user {}; every session ended", user.email),
        );
        self.store.flush().await?;
        Ok(())
    }

    /// Changes the password; every other session ends and every earlier access token dies.
    /// Returns a fresh access token for the caller's own session.
    pub async fn change_password(
        &self,
        who: SessionUser,
        principal: &Principal,
        current: String,
        new: String,
        client: &ClientInfo,
    ) -> Result<String, Error> {
        let user = self
            .store
            .user(who.id)?
            .ok_or_else(|| invalid_token("the user no longer exists"))?;
        self.refuse_if_locked(&user.email)?;
        super::passwords::check_policy("new_password", &new)?;
        if !self
            .passwords
            .verify_unless(current, Some(user.password_hash.clone()), || {
                self.refuse_if_locked(&user.email)
            })
            .await?
        {
            // Counted like a failed login, so a stolen access token cannot guess passwords.
            self.record_login_failure(
                &user.email,
                Some(&user),
                Some(principal.tenant),
                client.ip().as_deref(),
                "wrong current password",
            )?;
            self.store.flush().await?;
            return Err(Error::invalid(vec![Invalid::new(
                "current_password",
                "is not the current password",
            )]));
        }
        let hash = self.passwords.hash(new).await?;
        let now = self.now();
        let updated = self.cut_off_user(&user, Some(&hash), Some(who.session))?;
        self.audit(
            Some(principal.tenant),
            "password.changed",
            &principal.actor(),
            client.ip().as_deref(),
            String::new(),
        );
        self.store.flush().await?;
        self.jwt.issue(
            updated.id,
            principal.tenant,
            who.session,
            updated.token_version,
            now,
        )
    }
}

/// Signature and claims, then the session and the user: a token outlives neither.
pub(super) fn verify_access_token(
    auth: &Auth,
    token: &str,
    tenant: Option<&str>,
    now: OffsetDateTime,
) -> Result<Principal, Error> {
    let claims = auth.jwt.verify(token, now)?;
    let session = auth
        .store
        .session_cached(claims.sid)?
        .filter(|s| s.user == claims.sub && s.user_version == claims.ver);
    if !session.is_some_and(|s| auth.session_alive(&s, now)) {
        return Err(invalid_token("the session of this access token has ended"));
    }
    let user = auth
        .store
        .user_cached(claims.sub)?
        .filter(|u| u.token_version == claims.ver)
        .ok_or_else(|| invalid_token("this access token was revoked; refresh or log in again"))?;
    let tenant = super::parse_tenant(tenant)?.unwrap_or(claims.tid);
    let role = user
        .role_in(tenant)
        .filter(|_| !user.superadmin || auth.store.tenant_cached(tenant).ok().flatten().is_some())
        .ok_or_else(|| Error::forbidden("you are not a member of this tenant"))?;
    Ok(Principal {
        tenant,
        environment: Environment::Live,
        scopes: role.scopes(),
        role: Some(role),
        subject: Subject::User {
            user,
            session: claims.sid,
        },
    })
}
