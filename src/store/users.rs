//! Users, their memberships and the email index.
use super::kv::Transactional;
use super::{Store, StoreError, StoreResult, abort, codec, from_tx, keys};
use crate::domain::{Role, TenantId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub tenant: TenantId,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: UserId,
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The first membership is the user's default tenant.
    pub memberships: Vec<Membership>,
    pub superadmin: bool,
    /// Bumped by a password change or a lock: every access token carrying an older version is
    /// refused at once.
    pub token_version: u32,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl UserRecord {
    pub fn role_in(&self, tenant: TenantId) -> Option<Role> {
        if self.superadmin {
            return Some(Role::Admin);
        }
        self.memberships
            .iter()
            .find(|m| m.tenant == tenant)
            .map(|m| m.role)
    }

    pub fn default_tenant(&self) -> Option<TenantId> {
        self.memberships.first().map(|m| m.tenant)
    }
}

impl Store {
    /// Inserts a new user; the email must be free.
    pub fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let result = (&self.users, &self.user_by_email, &self.tenant_members)
            .transaction(|(users, by_email, members)| {
                if by_email.get(user.email.as_bytes())?.is_some() {
                    return abort(StoreError::Duplicate(super::Unique::Email));
                }
                by_email.set(user.email.as_bytes(), codec::raw(user.id.as_bytes()))?;
                users.set(user.id.as_bytes(), codec::encode(user))?;
                for m in &user.memberships {
                    members.set(
                        keys::pair(m.tenant.as_bytes(), user.id.as_bytes()),
                        codec::raw(m.role.as_str().as_bytes()),
                    )?;
                }
                Ok(())
            })
            .map_err(from_tx);
        self.caches.users.invalidate(&user.id);
        result
    }

    pub fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.users
            .get(id.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// `user`, through the coherent cache (the per-request path).
    pub fn user_cached(&self, id: UserId) -> StoreResult<Option<std::sync::Arc<UserRecord>>> {
        self.caches.users.get_or_load(id, || self.user(id))
    }

    pub fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        match self.user_by_email.get(email.as_bytes())? {
            Some(id) => match codec::unraw(&id).and_then(UserId::from_slice) {
                Some(id) => self.user(id),
                None => Err(StoreError::Corrupt("email index".into())),
            },
            None => Ok(None),
        }
    }

    /// Read-modify-write of one user in a transaction; `change` may run more than once, so it
    /// must be pure. Membership changes keep the tenant index in step.
    pub fn update_user<F>(&self, id: UserId, change: F) -> StoreResult<UserRecord>
    where
        F: Fn(&mut UserRecord) -> Result<(), StoreError>,
    {
        let result = (&self.users, &self.tenant_members)
            .transaction(|(users, members)| {
                let Some(bytes) = users.get(id.as_bytes())? else {
                    return abort(StoreError::NotFound);
                };
                let mut user: UserRecord = match codec::decode(&bytes) {
                    Ok(u) => u,
                    Err(e) => return abort(e),
                };
                if let Err(e) = change(&mut user) {
                    return abort(e);
                }
                for m in &user.memberships {
                    members.set(
                        keys::pair(m.tenant.as_bytes(), id.as_bytes()),
                        codec::raw(m.role.as_str().as_bytes()),
                    )?;
                }
                users.set(id.as_bytes(), codec::encode(&user))?;
                Ok(user)
            })
            .map_err(from_tx);
        self.caches.users.invalidate(&id);
        result
    }

    /// Bumps the user's token version (and sets a new password hash when given) in one
    /// transaction with moving `keep` (the caller's session) to the new version. Every other
    /// session and every access token issued before is dead from this write on.
    pub fn change_credentials(
        &self,
        id: UserId,
        new_hash: Option<&str>,
        keep: Option<crate::domain::SessionId>,
        now: OffsetDateTime,
    ) -> StoreResult<UserRecord> {
        let result = (&self.users, &self.sessions)
            .transaction(|(users, sessions)| {
                let Some(bytes) = users.get(id.as_bytes())? else {
                    return abort(StoreError::NotFound);
                };
                let mut user: UserRecord = codec::decode(&bytes).or_else(abort)?;
                user.token_version = user.token_version.wrapping_add(1);
                if let Some(hash) = new_hash {
                    user.password_hash = hash.to_owned();
                }
                user.updated_at = now;
                users.set(id.as_bytes(), codec::encode(&user))?;
                if let Some(sid) = keep
                    && let Some(sbytes) = sessions.get(sid.as_bytes())?
                {
                    let mut session: super::SessionRecord =
                        codec::decode(&sbytes).or_else(abort)?;
                    if session.user == id {
                        session.user_version = user.token_version;
                        sessions.set(sid.as_bytes(), codec::encode(&session))?;
                    }
                }
                Ok(user)
            })
            .map_err(from_tx);
        self.caches.users.invalidate(&id);
        if let Some(sid) = keep {
            self.caches.sessions.invalidate(&sid);
        };
        result
    }

    /// Members of a tenant, in user-id (creation) order.
    pub fn tenant_members(&self, tenant: TenantId) -> StoreResult<Vec<UserRecord>> {
        let mut out = Vec::new();
        for item in self.tenant_members.scan_prefix(tenant.as_bytes()) {
            let (key, _) = item?;
            let user_id =
                UserId::from_slice(&key[16..]).ok_or(StoreError::Corrupt("member index".into()))?;
            if let Some(user) = self.user(user_id)? {
                out.push(user);
            }
        }
        Ok(out)
    }
}
