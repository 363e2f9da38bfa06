//! Authentication and authorization: API keys, sessions (JWT + refresh cookie), passwords,
//! lockout and rate limits. Nothing here knows HTTP except `extractor`.
pub mod accounts;
pub mod api_keys;
pub mod extractor;
pub mod jwt;
pub mod key_format;
pub mod lockout;
mod login;
pub mod passwords;
pub mod principal;
pub mod rate_limit;
pub mod retention;
pub mod secret;
pub mod sessions;
mod usage;

use crate::clock::SharedClock;
use crate::domain::{KeyId, TenantId};
use crate::error::{Error, ErrorKind};
use crate::metrics::{Limit, Verification};
use crate::store::{AuditEvent, Store};
pub use principal::{Principal, SessionUser, Subject};
use rate_limit::{Decision, SlidingWindow};
use std::net::IpAddr;
use time::Duration;
pub use usage::UsageBuffer;

/// Limits and lifetimes, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    pub lockout: lockout::LockoutPolicy,
    pub login_rate_per_minute: u32,
    pub key_reads_per_minute: u32,
    pub key_writes_per_minute: u32,
    pub session_max: Duration,
    pub session_idle: Duration,
    /// Reverse proxies in front whose X-Forwarded-For entries are trusted (0: use the peer).
    pub forwarded_hops: usize,
    /// Refreshes per session per minute (0 = off).
    pub refresh_rate_per_minute: u32,
    /// How long a just-spent refresh token is answered 409 instead of ending its session.
    pub refresh_reuse_grace: Duration,
    /// What the hourly sweep keeps (`None`: forever).
    pub retention: Retention,
}

/// How long records that no request needs any more are kept before the sweep drops them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    pub audit: Option<Duration>,
    /// Sessions that ended (logged out, revoked, expired), with all their refresh tokens.
    pub ended_sessions: Option<Duration>,
    /// Spent refresh tokens of sessions still alive.
    pub spent_refresh_tokens: Option<Duration>,
}

/// Everything authentication needs, shared by all workers.
pub struct Auth {
    pub store: Store,
    pub clock: SharedClock,
    pub jwt: jwt::JwtKeys,
    pub passwords: passwords::Passwords,
    pub policy: AuthPolicy,
    pub usage: UsageBuffer,
    key_windows: SlidingWindow<(KeyId, bool)>,
    login_windows: SlidingWindow<IpAddr>,
    refresh_windows: SlidingWindow<crate::domain::SessionId>,
}

/// The credentials a request carried, before any check.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    pub api_key: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub tenant: Option<&'a str>,
    /// GET, HEAD and OPTIONS count against the read limit, the rest against the write limit.
    pub is_read: bool,
}

/// An authenticated caller, plus the rate-limit decision for key callers.
pub struct Authenticated {
    pub principal: Principal,
    pub rate: Option<Decision>,
    /// The clock reading every check of this request used (read once per request).
    pub at: time::OffsetDateTime,
}

impl Auth {
    pub fn new(
        store: Store,
        clock: SharedClock,
        jwt: jwt::JwtKeys,
        passwords: passwords::Passwords,
        policy: AuthPolicy,
    ) -> Auth {
        Auth {
            usage: UsageBuffer::new(store.clone()),
            store,
            clock,
            jwt,
            passwords,
            policy,
            key_windows: SlidingWindow::default(),
            login_windows: SlidingWindow::default(),
            refresh_windows: SlidingWindow::default(),
        }
    }

    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// Checks whichever credential the request carried. `Err` carries the rate decision too
    /// when a key was over its limit, so the 429 still gets its headers.
    pub fn authenticate(
        &self,
        creds: Credentials<'_>,
    ) -> Result<Authenticated, (Error, Option<Decision>)> {
        // Credentials are judged first (401), the tenant header after (400/403).
        let result = self.authenticate_unmetered(creds);
        let outcome = match &result {
            Ok(_) => Verification::Ok,
            Err((e, _)) => match e.kind {
                ErrorKind::RateLimited => Verification::RateLimited,
                ErrorKind::InvalidApiKey
                | ErrorKind::InvalidToken
                | ErrorKind::AuthenticationRequired => Verification::Invalid,
                _ => Verification::Refused,
            },
        };
        let m = crate::metrics::metrics();
        match (creds.api_key, creds.authorization) {
            (Some(_), None) => m.key_checked(outcome),
            (None, Some(_)) => m.token_checked(outcome),
            _ => {}
        }
        result
    }

    fn authenticate_unmetered(
        &self,
        creds: Credentials<'_>,
    ) -> Result<Authenticated, (Error, Option<Decision>)> {
        let tenant = creds.tenant;
        let now = self.now();
        match (creds.api_key, creds.authorization) {
            (Some(_), Some(_)) => Err((
                Error::bad_request("send either X-API-Key or Authorization, not both"),
                None,
            )),
            (Some(key), None) => self.authenticate_key(key, tenant, creds.is_read, now),
            (None, Some(header)) => self
                .authenticate_bearer(header, tenant, now)
                .map(|principal| Authenticated {
                    principal,
                    rate: None,
                    at: now,
                })
                .map_err(|e| (e, None)),
            (None, None) => Err((
                Error::new(
                    ErrorKind::AuthenticationRequired,
                    "authentication required: send an API key in X-API-Key or a session token in Authorization: Bearer",
                ),
                None,
            )),
        }
    }

    fn authenticate_key(
        &self,
        raw: &str,
        tenant: Option<&str>,
        is_read: bool,
        now: time::OffsetDateTime,
    ) -> Result<Authenticated, (Error, Option<Decision>)> {
        let principal = api_keys::verify(self, raw.trim(), now).map_err(|e| (e, None))?;
        let key_id = principal.key_id().ok_or_else(|| {
            (
                Error::new(ErrorKind::Internal, "BUG: key principal without key"),
                None,
            )
        })?;
        // Every request the key authenticates counts, also one refused for its tenant below.
        let limit = if is_read {
            self.policy.key_reads_per_minute
        } else {
            self.policy.key_writes_per_minute
        };
        let decision = self.key_windows.hit(&(key_id, is_read), limit, now);
        if !decision.allowed {
            crate::metrics::metrics().refused(if is_read {
                Limit::KeyReads
            } else {
                Limit::KeyWrites
            });
            let e = Error::new(
                ErrorKind::RateLimited,
                format!("this key made more than {limit} requests of this kind in the last minute"),
            )
            .with_retry_after(decision.retry_after);
            return Err((e, Some(decision)));
        }
        match parse_tenant(tenant) {
            // Another tenant: only one the key lists, read from the store on every request so
            // that a withdrawal bites at once on every worker.
            Ok(Some(t)) if t != principal.tenant => match self.store.key_reaches(key_id, t) {
                Ok(true) => Ok(Authenticated {
                    principal: Principal {
                        tenant: t,
                        ..principal
                    },
                    rate: Some(decision),
                    at: now,
                }),
                Ok(false) => Err((
                    Error::forbidden("this API key does not work in that tenant"),
                    Some(decision),
                )),
                Err(e) => Err((e.into(), Some(decision))),
            },
            Ok(_) => Ok(Authenticated {
                principal,
                rate: Some(decision),
                at: now,
            }),
            Err(e) => Err((e, Some(decision))),
        }
    }

    fn authenticate_bearer(
        &self,
        header: &str,
        tenant: Option<&str>,
        now: time::OffsetDateTime,
    ) -> Result<Principal, Error> {
        let token = bearer_token(header).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidToken,
                "Authorization must be 'Bearer <access token>'",
            )
        })?;
        if key_format::looks_like_key(token) {
            return Err(Error::new(
                ErrorKind::InvalidApiKey,
                "API keys go in the X-API-Key header, not in Authorization: Bearer",
            ));
        }
        sessions::verify_access_token(self, token, tenant, now)
    }

    /// Counts one login attempt for the client's address (its /64 for IPv6: one subscriber);
    /// `Err` when over the limit.
    pub fn check_login_rate(&self, ip: Option<IpAddr>) -> Result<(), Error> {
        let unknown = IpAddr::from([0u8; 16]);
        let key = rate_limit::subscriber(ip.unwrap_or(unknown));
        let what = "too many login attempts from this address; wait and retry";
        limit(
            &self.login_windows,
            &key,
            self.policy.login_rate_per_minute,
            self.now(),
            what,
        )
        .inspect_err(|_| crate::metrics::metrics().refused(Limit::Login))
    }

    /// Counts one refresh of `session` (Pixee's `AUTH_REFRESH` tier); `Err` when over the limit.
    pub(crate) fn check_refresh_rate(
        &self,
        session: crate::domain::SessionId,
    ) -> Result<(), Error> {
        let what = "too many refreshes of this session; wait and retry";
        limit(
            &self.refresh_windows,
            &session,
            self.policy.refresh_rate_per_minute,
            self.now(),
            what,
        )
        .inspect_err(|_| crate::metrics::metrics().refused(Limit::Refresh))
    }

    /// Appends an audit event; a failure is logged, not returned, so it never blocks a logout.
    pub fn audit(
        &self,
        tenant: Option<TenantId>,
        kind: &str,
        actor: &str,
        ip: Option<&str>,
        detail: String,
    ) {
        let at = self.now();
        let event = AuditEvent {
            id: self.event_id(at),
            at,
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            ip: ip.map(str::to_owned),
            detail,
        };
        let tenant = tenant.unwrap_or(accounts::INSTANCE);
        if let Err(e) = self.store.append_audit(tenant, &event) {
            tracing::error!(error = %e, kind, "could not write audit event");
        }
    }
}

/// One hit against a per-minute limit (`0` = off); a refusal carries `Retry-After`.
fn limit<K: std::hash::Hash + Eq + Clone>(
    windows: &SlidingWindow<K>,
    key: &K,
    per_minute: u32,
    now: time::OffsetDateTime,
    what: &str,
) -> Result<(), Error> {
    if per_minute == 0 {
        return Ok(());
    }
    let d = windows.hit(key, per_minute, now);
    if d.allowed {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::RateLimited, what).with_retry_after(d.retry_after))
    }
}

/// The token of an `Authorization: Bearer <token>` header value. RFC 9110 §11.1: the scheme is
/// case-insensitive, one or more spaces follow it.
pub fn bearer_token(header: &str) -> Option<&str> {
    header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The `X-Tenant-ID` header: absent, or a tenant id; anything else is a 400.
pub fn parse_tenant(raw: Option<&str>) -> Result<Option<TenantId>, Error> {
    match raw {
        None => Ok(None),
        Some(raw) => TenantId::parse(raw.trim())
            .map(Some)
            .ok_or_else(|| Error::bad_request("X-Tenant-ID must be a tenant id (a UUID)")),
    }
}
