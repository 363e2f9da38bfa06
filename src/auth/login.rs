//! Password login: the per-IP limit, the lockout state machine, the dummy verification for
//! unknown emails, and the birth of a session (refused if the credentials changed meanwhile).
use super::Auth;
use super::lockout::{FailureOutcome, LockoutState};
use super::secret::{random_base62, sha256};
use super::sessions::{ClientInfo, REFRESH_LEN, Tokens, invalid_credentials, locked};
use crate::domain::{Email, Invalid, SessionId, TenantId};
use crate::error::Error;
use crate::store::{RefreshRecord, SessionRecord, UserRecord};

impl Auth {
    pub async fn login(
        &self,
        email: &str,
        password: String,
        client: &ClientInfo,
    ) -> Result<Tokens, Error> {
        use crate::error::ErrorKind;
        use crate::metrics::Login;
        let result = self.login_unmetered(email, password, client).await;
        crate::metrics::metrics().login(match &result {
            Ok(_) => Login::Ok,
            Err(e) => match e.kind {
                ErrorKind::InvalidCredentials => Login::InvalidCredentials,
                ErrorKind::AccountLocked => Login::Locked,
                ErrorKind::RateLimited => Login::RateLimited,
                ErrorKind::Unavailable => Login::Busy,
                _ => Login::Refused,
            },
        });
        result
    }

    async fn login_unmetered(
        &self,
        email: &str,
        password: String,
        client: &ClientInfo,
    ) -> Result<Tokens, Error> {
        self.check_login_rate(client.addr)?;
        let ip = client.ip();
        let ip = ip.as_deref();
        let email = Email::normalize(email);
        if email.is_empty() || email.len() > crate::domain::MAX_EMAIL_LEN {
            return Err(Invalid::new("email", "must be an email address").into());
        }
        // Refused before queueing for a hash slot, and again once the slot is ours: guesses
        // that queued while the lock was set never run. The user is read between the two, so
        // a lock set after the read has bumped the token version the session is created
        // against (`create_session` checks it in its transaction): no session is ever born
        // while a lock is in force.
        self.refuse_if_locked(&email)?;
        let user = self.store.user_by_email(&email)?;
        let tenant = user.as_ref().and_then(UserRecord::default_tenant);
        let ok = self
            .passwords
            .verify_unless(
                password,
                user.as_ref().map(|u| u.password_hash.clone()),
                || self.refuse_if_locked(&email),
            )
            .await?;
        match (ok, user) {
            (true, Some(user)) => self.finish_login(&email, user, client).await,
            (_, user) => {
                let outcome = self.record_login_failure(
                    &email,
                    user.as_ref(),
                    tenant,
                    ip,
                    "wrong email or password",
                )?;
                self.store.flush().await?;
                match outcome {
                    FailureOutcome::WhileLocked => Err(locked(self.lock_seconds_left(&email)?)),
                    _ => Err(invalid_credentials()),
                }
            }
        }
    }

    pub(super) fn refuse_if_locked(&self, email: &str) -> Result<(), Error> {
        let state: LockoutState = self.store.lockout_get(email)?.unwrap_or_default();
        match state.locked_for(self.now()) {
            Some(left) => Err(locked(left)),
            None => Ok(()),
        }
    }

    fn lock_seconds_left(&self, email: &str) -> Result<u64, Error> {
        let state: LockoutState = self.store.lockout_get(email)?.unwrap_or_default();
        Ok(state.locked_for(self.now()).unwrap_or(1))
    }

    /// Counts a failure for `email`. The failure that locks also bumps the user's token
    /// version in the same transaction: every session and access token of theirs dies with it.
    pub(super) fn record_login_failure(
        &self,
        email: &str,
        user: Option<&UserRecord>,
        tenant: Option<TenantId>,
        ip: Option<&str>,
        why: &str,
    ) -> Result<FailureOutcome, Error> {
        let now = self.now();
        let policy = self.policy.lockout;
        let (old, _, locked_now) =
            self.store
                .lockout_transition(email, user.map(|u| u.id), |s: &LockoutState| {
                    let (next, outcome) = s.record_failure(now, &policy);
                    (next, outcome == FailureOutcome::JustLocked)
                })?;
        let (_, outcome) = old.record_failure(now, &policy);
        self.audit(tenant, "login.failure", email, ip, why.to_owned());
        if locked_now {
            crate::metrics::metrics().lockout();
            if let Some(user) = user {
                // Already dead through the version bump; this only tidies the session list.
                self.store.revoke_user_sessions(user.id, None, now)?;
            }
            self.audit(
                tenant,
                "account.locked",
                email,
                ip,
                format!("locked for {} min", policy.lock_for.whole_minutes()),
            );
        }
        Ok(outcome)
    }

    async fn finish_login(
        &self,
        email: &str,
        user: UserRecord,
        client: &ClientInfo,
    ) -> Result<Tokens, Error> {
        let now = self.now();
        let tenant = user
            .default_tenant()
            .ok_or_else(|| Error::forbidden("this user is not a member of any tenant"))?;
        let session = SessionRecord {
            id: SessionId::generate(),
            user: user.id,
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.policy.session_max,
            revoked_at: None,
            ip: client.ip(),
            user_agent: client
                .user_agent
                .as_ref()
                .map(|ua| ua.chars().take(200).collect()),
            user_version: user.token_version,
        };
        let refresh = random_base62(REFRESH_LEN)?;
        let record = RefreshRecord {
            session: session.id,
            parent: None,
            issued_at: now,
            spent_at: None,
        };
        // Refused if a password change or a lock happened while the hash ran.
        match self.store.create_session(
            &session,
            &user.password_hash,
            &sha256(refresh.as_bytes()),
            &record,
        ) {
            Ok(()) => {}
            Err(crate::store::StoreError::Conflict(_)) => {
                return match self
                    .store
                    .lockout_get::<LockoutState>(email)?
                    .and_then(|s| s.locked_for(now))
                {
                    Some(left) => Err(locked(left)),
                    None => Err(invalid_credentials()),
                };
            }
            Err(e) => return Err(e.into()),
        }
        // A success resets the failure count, but never lifts a lock set meanwhile.
        self.store
            .lockout_transition(email, None, |s: &LockoutState| match s.locked_for(now) {
                Some(_) => (s.clone(), false),
                None => (LockoutState::default(), false),
            })?;
        self.audit(
            Some(tenant),
            "login.success",
            &format!("user:{email}"),
            client.ip().as_deref(),
            format!("session {}", session.id),
        );
        self.store.flush().await?;
        self.tokens(&user, tenant, &session, refresh, now)
    }
}
