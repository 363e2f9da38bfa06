//! Who is calling, in which tenant and environment, with which scopes. Built once per request by
//! the extractor; handlers state what they need with `require*`.
use crate::domain::{Environment, KeyId, Role, Scope, ScopeSet, SessionId, TenantId, UserId};
use crate::error::{Error, ErrorKind};
use crate::store::{ApiKeyRecord, Namespace, UserRecord};
use std::sync::Arc;

/// The records a caller was verified against. They are shared with the store's record cache,
/// not copied: a request builds its principal without allocating.
#[derive(Debug, Clone)]
pub enum Subject {
    User {
        user: Arc<UserRecord>,
        session: SessionId,
    },
    ApiKey {
        key: Arc<ApiKeyRecord>,
        /// SHA-256 of the secret presented (not a secret itself): self-rotation only proceeds
        /// while this is still the key's current secret.
        digest: [u8; 32],
    },
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: TenantId,
    pub environment: Environment,
    pub scopes: ScopeSet,
    /// The user's role in `tenant`; `None` for API keys.
    pub role: Option<Role>,
    pub subject: Subject,
}

/// The user behind a session principal.
#[derive(Debug, Clone, Copy)]
pub struct SessionUser {
    pub id: UserId,
    pub session: SessionId,
    pub superadmin: bool,
}

impl Principal {
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.scopes.contains(scope) {
            return Ok(());
        }
        let who = match self.subject {
            Subject::ApiKey { .. } => "this key lacks",
            Subject::User { .. } => "your role lacks",
        };
        Err(Error::forbidden(format!(
            "{who} the scope {}",
            scope.as_str()
        )))
    }

    pub fn require_session(&self) -> Result<SessionUser, Error> {
        match &self.subject {
            Subject::User { user, session } => Ok(SessionUser {
                id: user.id,
                session: *session,
                superadmin: user.superadmin,
            }),
            Subject::ApiKey { .. } => Err(Error::forbidden(
                "this route needs a user session (log in with POST /api/v1/auth/login); API keys cannot use it",
            )),
        }
    }

    /// A session whose user is admin of the current tenant (superadmins are admin everywhere).
    pub fn require_admin(&self) -> Result<SessionUser, Error> {
        let user = self.require_session()?;
        if self.role == Some(Role::Admin) {
            Ok(user)
        } else {
            Err(Error::forbidden(
                "this action needs the admin role in this tenant",
            ))
        }
    }

    pub fn require_superadmin(&self) -> Result<SessionUser, Error> {
        let user = self.require_session()?;
        if user.superadmin {
            Ok(user)
        } else {
            Err(Error::new(
                ErrorKind::PermissionDenied,
                "only a superadmin can do this",
            ))
        }
    }

    pub fn namespace(&self) -> Namespace {
        Namespace {
            tenant: self.tenant,
            environment: self.environment,
        }
    }

    /// How the audit log names the caller (never a secret).
    pub fn actor(&self) -> String {
        match &self.subject {
            Subject::User { user, .. } => format!("user:{}", user.email),
            Subject::ApiKey { key, .. } => format!("api_key:{}", key.hint),
        }
    }

    pub fn key_id(&self) -> Option<KeyId> {
        match &self.subject {
            Subject::ApiKey { key, .. } => Some(key.id),
            Subject::User { .. } => None,
        }
    }
}
