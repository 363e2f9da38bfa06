//! Tenants, users and memberships; first-start bootstrap; unlock; reading the audit log.
//!
//! What a tenant admin learns about users of other tenants: only whether an email has an
//! account on the instance (adding a member names an existing user; an unknown email is 404).
//! Never their other memberships, their superadmin flag or their lock state: those show only
//! to admins of a tenant the user belongs to.
use super::lockout::LockoutState;
use super::{Auth, Principal};
use crate::domain::{Email, Invalid, Role, TenantId, UserId};
use crate::error::Error;
use crate::store::{AuditEvent, Membership, StoreError, TenantRecord, UserRecord};
use time::OffsetDateTime;

/// A member as their tenant's admins see them.
pub struct MemberView {
    pub user: UserRecord,
    pub role: Option<Role>,
    pub locked_until: Option<OffsetDateTime>,
}

/// The membership a tenant admin granted: nothing else about the user.
pub struct Granted {
    pub user: UserId,
    pub email: String,
    pub tenant: TenantId,
    pub role: Role,
}

/// Whose audit events to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditScope {
    /// The caller's tenant (its admins).
    Tenant,
    /// Events that belong to no tenant, such as failed logins of unknown emails (superadmins).
    Instance,
}

/// An audit log the caller was found allowed to read; only [`Auth::audit_log`] makes one.
pub struct AuditLog(TenantId);

/// Events of no tenant are kept under the nil tenant id.
pub(super) const INSTANCE: TenantId = TenantId(uuid::Uuid::nil());

pub fn validate_tenant_name(name: &str) -> Result<String, Invalid> {
    let name = crate::domain::display_name("name", name)?;
    if TenantId::parse(&name).is_some() {
        return Err(Invalid::new("name", "must not look like a tenant id"));
    }
    Ok(name)
}

/// What the first start created, for the one-time message.
pub struct Bootstrap {
    pub admin_email: String,
    /// Set only when the password was generated here and must be shown once.
    pub generated_password: Option<String>,
}

impl Auth {
    pub fn create_tenant(&self, name: &str) -> Result<TenantRecord, Error> {
        let tenant = TenantRecord {
            id: TenantId::generate(),
            name: validate_tenant_name(name)?,
            created_at: self.now(),
        };
        self.store.insert_tenant(&tenant)?;
        Ok(tenant)
    }

    /// The tenants the caller may act in, with the caller's role (a key: its own tenant).
    pub fn tenants_of(
        &self,
        principal: &Principal,
    ) -> Result<Vec<(TenantRecord, Option<Role>)>, Error> {
        if principal.key_id().is_some() {
            return Ok(self
                .store
                .tenant(principal.tenant)?
                .into_iter()
                .map(|t| (t, None))
                .collect());
        }
        let who = principal.require_session()?;
        let user = self
            .store
            .user(who.id)?
            .ok_or_else(|| Error::not_found("user"))?;
        Ok(self
            .store
            .list_tenants()?
            .into_iter()
            .filter_map(|t| user.role_in(t.id).map(|role| (t, Some(role))))
            .collect())
    }

    /// Whether the session's user is admin of `tenant` (whatever tenant the request addresses;
    /// a superadmin administers every tenant). A tenant that does not exist is administered
    /// by no one. API keys administer nothing (403).
    pub fn administers(&self, principal: &Principal, tenant: TenantId) -> Result<bool, Error> {
        let who = principal.require_session()?;
        let caller = self
            .store
            .user(who.id)?
            .ok_or_else(|| Error::not_found("user"))?;
        Ok(self.store.tenant(tenant)?.is_some() && caller.role_in(tenant) == Some(Role::Admin))
    }

    /// A superadmin creates a tenant and becomes its admin.
    pub async fn create_tenant_by(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<TenantRecord, Error> {
        let who = principal.require_superadmin()?;
        let tenant = self.create_tenant(name)?;
        let now = self.now();
        self.store.update_user(who.id, |u| {
            u.memberships.push(Membership {
                tenant: tenant.id,
                role: Role::Admin,
            });
            u.updated_at = now;
            Ok(())
        })?;
        self.audit(
            Some(tenant.id),
            "tenant.created",
            &principal.actor(),
            None,
            tenant.name.clone(),
        );
        self.store.flush().await?;
        Ok(tenant)
    }

    /// The tenant's members as its admins see them.
    pub fn members(&self, tenant: TenantId) -> Result<Vec<MemberView>, Error> {
        self.store
            .tenant_members(tenant)?
            .into_iter()
            .map(|u| self.member_view(u, tenant))
            .collect()
    }

    fn member_view(&self, user: UserRecord, tenant: TenantId) -> Result<MemberView, Error> {
        let now = self.now();
        let locked_until = self
            .store
            .lockout_get::<LockoutState>(&user.email)?
            .and_then(|s| s.locked_until.filter(|until| *until > now));
        Ok(MemberView {
            role: user.role_in(tenant),
            user,
            locked_until,
        })
    }

    /// A tenant admin creates a user who becomes a member of the caller's tenant.
    pub async fn create_member(
        &self,
        principal: &Principal,
        email: &str,
        password: String,
        role: Role,
    ) -> Result<MemberView, Error> {
        principal.require_admin()?;
        let membership = Membership {
            tenant: principal.tenant,
            role,
        };
        let user = self
            .create_user(email, password, vec![membership], false)
            .await?;
        self.audit(
            Some(principal.tenant),
            "user.created",
            &principal.actor(),
            None,
            format!("{} as {}", user.email, role.as_str()),
        );
        self.store.flush().await?;
        self.member_view(user, principal.tenant)
    }

    /// An admin of `tenant` (whatever tenant the request addresses) grants an existing user a
    /// role there. The answer is the membership granted, nothing more about the user.
    pub async fn grant_membership(
        &self,
        principal: &Principal,
        tenant: TenantId,
        email: &str,
        role: Role,
    ) -> Result<Granted, Error> {
        if !self.administers(principal, tenant)? {
            return Err(Error::forbidden("you are not an admin of this tenant"));
        }
        let user = self.add_member(tenant, email, role).await?;
        self.audit(
            Some(tenant),
            "member.added",
            &principal.actor(),
            None,
            format!("{} as {}", user.email, role.as_str()),
        );
        self.store.flush().await?;
        Ok(Granted {
            user: user.id,
            email: user.email,
            tenant,
            role,
        })
    }

    /// A tenant admin lifts the lock of a member of the caller's tenant.
    pub async fn unlock_member(
        &self,
        principal: &Principal,
        id: UserId,
        ip: Option<&str>,
    ) -> Result<MemberView, Error> {
        principal.require_admin()?;
        let user = self
            .store
            .user(id)?
            .filter(|u| u.memberships.iter().any(|m| m.tenant == principal.tenant))
            .ok_or_else(|| Error::not_found("user"))?;
        self.unlock(&user, Some(principal.tenant), &principal.actor(), ip)
            .await?;
        self.member_view(user, principal.tenant)
    }

    /// The audit log `scope` names, if the caller may read it: the tenant's needs its admin,
    /// the instance's (no tenant) a superadmin. Checked once, before the page is judged.
    pub fn audit_log(&self, principal: &Principal, scope: AuditScope) -> Result<AuditLog, Error> {
        Ok(AuditLog(match scope {
            AuditScope::Tenant => {
                principal.require_admin()?;
                principal.tenant
            }
            AuditScope::Instance => {
                principal.require_superadmin()?;
                INSTANCE
            }
        }))
    }

    /// A page of `log`, newest first, and the total.
    pub fn audit_events(
        &self,
        log: &AuditLog,
        offset: usize,
        take: usize,
    ) -> Result<(Vec<AuditEvent>, usize), Error> {
        Ok(self.store.audit_page(log.0, offset, take)?)
    }

    /// The tenant record, from the coherent cache (per-request paths).
    pub fn tenant_cached(
        &self,
        id: TenantId,
    ) -> Result<Option<std::sync::Arc<TenantRecord>>, Error> {
        Ok(self.store.tenant_cached(id)?)
    }

    /// Resolves a tenant given by id or by name (the CLI accepts both).
    pub fn find_tenant(&self, id_or_name: &str) -> Result<TenantRecord, Error> {
        let found = match TenantId::parse(id_or_name) {
            Some(id) => self.store.tenant(id)?,
            None => self.store.tenant_by_name(id_or_name.trim())?,
        };
        found.ok_or_else(|| Error::not_found("tenant"))
    }

    pub async fn create_user(
        &self,
        email: &str,
        password: String,
        memberships: Vec<Membership>,
        superadmin: bool,
    ) -> Result<UserRecord, Error> {
        let email = Email::parse(email)?;
        super::passwords::check_policy("password", &password)?;
        if self.store.user_by_email(email.as_str())?.is_some() {
            return Err(StoreError::Duplicate(crate::store::Unique::Email).into());
        }
        let now = self.now();
        let user = UserRecord {
            id: UserId::generate(),
            email: email.as_str().to_owned(),
            password_hash: self.passwords.hash(password).await?,
            memberships,
            superadmin,
            token_version: 0,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_user(&user)?;
        self.store.flush().await?;
        Ok(user)
    }

    /// Adds (or changes) the role of an existing user in a tenant.
    pub async fn add_member(
        &self,
        tenant: TenantId,
        email: &str,
        role: Role,
    ) -> Result<UserRecord, Error> {
        let email = Email::parse(email)?;
        let user = self
            .store
            .user_by_email(email.as_str())?
            .ok_or_else(|| Error::not_found("user"))?;
        let now = self.now();
        let user = self.store.update_user(user.id, |u| {
            match u.memberships.iter_mut().find(|m| m.tenant == tenant) {
                Some(m) => m.role = role,
                None => u.memberships.push(Membership { tenant, role }),
            }
            u.updated_at = now;
            Ok(())
        })?;
        self.store.flush().await?;
        Ok(user)
    }

    /// Lifts a lock and clears the failure count.
    pub async fn unlock(
        &self,
        user: &UserRecord,
        tenant: Option<TenantId>,
        actor: &str,
        ip: Option<&str>,
    ) -> Result<bool, Error> {
        let was_locked = self
            .store
            .lockout_get::<LockoutState>(&user.email)?
            .is_some_and(|s| s.locked_for(self.now()).is_some());
        self.store.lockout_clear(&user.email)?;
        let tenant = tenant.or_else(|| user.default_tenant());
        self.audit(
            tenant,
            "account.unlocked",
            actor,
            ip,
            format!("user {}", user.email),
        );
        self.store.flush().await?;
        Ok(was_locked)
    }

    /// First start: the `default` tenant and one superadmin. Later starts change nothing.
    pub async fn bootstrap(
        &self,
        admin_email: &str,
        admin_password: Option<String>,
    ) -> Result<Option<Bootstrap>, Error> {
        if self.store.meta_get("bootstrapped")?.is_some() {
            return Ok(None);
        }
        // Several nodes of a cluster may start for the first time together: each step that
        // loses the race to another node takes what that node created instead.
        let tenant = match self.store.tenant_by_name("default")? {
            Some(t) => t,
            None => match self.create_tenant("default") {
                Ok(t) => t,
                Err(e) => self.store.tenant_by_name("default")?.ok_or(e)?,
            },
        };
        let email = Email::parse(admin_email)?;
        let mut generated = None;
        if self.store.user_by_email(email.as_str())?.is_none() {
            let password = match admin_password {
                Some(p) => p,
                None => {
                    let p = super::secret::random_base62(24)?;
                    generated = Some(p.clone());
                    p
                }
            };
            let membership = Membership {
                tenant: tenant.id,
                role: Role::Admin,
            };
            if let Err(e) = self
                .create_user(email.as_str(), password, vec![membership], true)
                .await
            {
                if self.store.user_by_email(email.as_str())?.is_none() {
                    return Err(e);
                }
                // Another node created the admin first and prints its password: this start
                // is not the first.
                return Ok(None);
            }
        }
        self.store.meta_set("bootstrapped", b"1")?;
        self.store.flush().await?;
        Ok(Some(Bootstrap {
            admin_email: email.as_str().to_owned(),
            generated_password: generated,
        }))
    }
}
