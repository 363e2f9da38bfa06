//! Tenants, users and memberships; first-start bootstrap; unlock.
use super::Auth;
use super::lockout::LockoutState;
use crate::domain::{Email, Invalid, Role, TenantId, UserId};
use crate::error::Error;
use crate::store::{Membership, StoreError, TenantRecord, UserRecord};

pub fn validate_tenant_name(name: &str) -> Result<String, Invalid> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(Invalid::new(
            "name",
            "must be 1 to 100 printable characters",
        ));
    }
    if TenantId::parse(name).is_some() {
        return Err(Invalid::new("name", "must not look like a tenant id"));
    }
    Ok(name.to_owned())
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
            return Err(StoreError::Duplicate("a user with this email").into());
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
        let tenant = match self.store.tenant_by_name("default")? {
            Some(t) => t,
            None => self.create_tenant("default")?,
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
            self.create_user(email.as_str(), password, vec![membership], true)
                .await?;
        }
        self.store.meta_set("bootstrapped", b"1")?;
        self.store.flush().await?;
        Ok(Some(Bootstrap {
            admin_email: email.as_str().to_owned(),
            generated_password: generated,
        }))
    }
}
