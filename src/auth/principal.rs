//! Who is calling, in which tenant and environment, with which scopes. Built once per request by
//! the extractor; handlers state what they need with `require*`.
use crate::domain::{Environment, KeyId, Role, Scope, ScopeSet, SessionId, TenantId, UserId};
use crate::error::{Error, ErrorKind};
use crate::store::{ApiKeyRecord, Namespace, UserRecord};
use std::sync::Arc;

/// The records a caller was verified against. They are shared with the store's record cache,
/// not copied: a request builds its principal without allocating. `Debug` names the caller
/// only: the records hold a password hash and key digests.
#[derive(Clone)]
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

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::User { user, session } => f
                .debug_struct("User")
                .field("id", &user.id)
                .field("session", session)
                .finish_non_exhaustive(),
            Subject::ApiKey { key, .. } => f
                .debug_struct("ApiKey")
                .field("id", &key.id)
                .field("hint", &key.hint)
                .finish_non_exhaustive(),
        }
    }
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
        Err(Error {
            missing_scope: Some(scope),
            ..Error::forbidden(format!("{who} the scope {}", scope.as_str()))
        })
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

    /// A session whose user is editor or admin of the current tenant (catalog structure:
    /// categories and suppliers are written by people, not integrations).
    pub fn require_editor(&self) -> Result<SessionUser, Error> {
        let user = self.require_session()?;
        if matches!(self.role, Some(Role::Editor | Role::Admin)) {
            Ok(user)
        } else {
            Err(Error::forbidden(
                "this action needs the editor or admin role in this tenant",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Environment, ScopeSet};
    use time::OffsetDateTime;

    #[test]
    fn debug_output_names_the_caller_and_never_its_secrets() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let user = Subject::User {
            user: Arc::new(UserRecord {
                id: UserId::generate(),
                email: "ada@example.com".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                memberships: Vec::new(),
                superadmin: false,
                token_version: 0,
                created_at: now,
                updated_at: now,
            }),
            session: SessionId::generate(),
        };
        let key = Subject::ApiKey {
            key: Arc::new(ApiKeyRecord {
                id: KeyId::generate(),
                tenant: TenantId::generate(),
                environment: Environment::Live,
                name: "ci".into(),
                scopes: ScopeSet::default(),
                hint: "pm_live_abcd…wxyz".into(),
                digest: [0xab; 32],
                previous: Some(([0xcd; 32], now)),
                created_at: now,
                created_by: "admin".into(),
                expires_at: None,
                rotated_at: None,
                revoked_at: None,
            }),
            digest: [0xef; 32],
        };
        let user = format!("{user:?}");
        assert!(user.contains("User") && !user.contains("argon2"), "{user}");
        let key = format!("{key:?}");
        assert!(key.contains("pm_live_abcd"), "{key}");
        // A digest would print as a run of its (repeated) bytes.
        for run in ["171, 171", "205, 205", "239, 239", "ab, ab", "abab"] {
            assert!(!key.contains(run), "a digest ({run}) in {key}");
        }
    }
}
