//! API key life cycle: create, verify, rotate, revoke. The raw key leaves this module only in
//! the result of `create` and `rotate`.
use super::{Auth, Principal, Subject, key_format, secret::sha256};
use crate::domain::{Environment, Invalid, KeyId, ScopeSet, TenantId};
use crate::error::{Error, ErrorKind};
use crate::store::ApiKeyRecord;
use time::{Duration, OffsetDateTime};

pub const MAX_EXPIRY: Duration = Duration::days(366);
pub const MAX_GRACE_SECONDS: u32 = 86_400;

pub struct NewKeyRequest {
    pub tenant: TenantId,
    pub environment: Environment,
    pub name: String,
    pub scopes: ScopeSet,
    pub expires_at: Option<OffsetDateTime>,
    pub created_by: String,
    /// The creator's address, for the audit log.
    pub ip: Option<String>,
    /// Tenants the key also works in (`X-Tenant-ID`); the caller has checked that the creator
    /// administers each.
    pub extra_tenants: Vec<TenantId>,
}

/// Most extra tenants one key may list.
pub const MAX_EXTRA_TENANTS: usize = 50;

/// A record together with the raw key, returned once.
pub struct IssuedKey {
    pub record: ApiKeyRecord,
    pub raw: String,
}

pub fn validate_name(name: &str) -> Result<String, Invalid> {
    crate::domain::display_name("name", name)
}

pub fn validate_expiry(
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, Invalid> {
    match expires_at {
        Some(at) if at <= now => Err(Invalid::new("expires_at", "must be in the future")),
        Some(at) if at > now + MAX_EXPIRY => {
            Err(Invalid::new("expires_at", "must be at most 366 days ahead"))
        }
        other => Ok(other),
    }
}

impl Auth {
    pub async fn create_key(&self, req: NewKeyRequest) -> Result<IssuedKey, Error> {
        let now = self.now();
        let new = key_format::generate(req.environment)?;
        let record = ApiKeyRecord {
            id: KeyId::generate(),
            tenant: req.tenant,
            environment: req.environment,
            name: req.name,
            scopes: req.scopes,
            hint: new.hint,
            digest: new.digest,
            previous: None,
            created_at: now,
            created_by: req.created_by,
            expires_at: req.expires_at,
            rotated_at: None,
            revoked_at: None,
        };
        let extra: Vec<TenantId> = req
            .extra_tenants
            .iter()
            .copied()
            .filter(|t| *t != record.tenant)
            .collect();
        self.store.insert_api_key(&record, &extra)?;
        self.audit(
            Some(record.tenant),
            "api_key.created",
            &record.created_by,
            req.ip.as_deref(),
            format!("key {} ({}) {}", record.id, record.name, record.hint),
        );
        for t in &extra {
            self.audit(
                Some(*t),
                "api_key.shared",
                &record.created_by,
                req.ip.as_deref(),
                format!(
                    "key {} ({}) {} of tenant {} also works here",
                    record.id, record.name, record.hint, record.tenant
                ),
            );
        }
        self.store.flush().await?;
        Ok(IssuedKey {
            record,
            raw: new.raw,
        })
    }

    /// Replaces the key's secret. `presented` is the digest a self-rotating key authenticated
    /// with: the rotation only happens while it is still the current secret, so a secret kept
    /// alive by a grace period (or one an admin just replaced) cannot take the key over.
    pub async fn rotate_key(
        &self,
        tenant: TenantId,
        id: KeyId,
        grace_seconds: u32,
        presented: Option<[u8; 32]>,
        actor: &str,
        ip: Option<&str>,
    ) -> Result<IssuedKey, Error> {
        let now = self.now();
        let current = self.home_key(tenant, id)?;
        let new = key_format::generate(current.environment)?;
        let grace = (grace_seconds > 0).then(|| now + Duration::seconds(i64::from(grace_seconds)));
        let record = self
            .store
            .rotate_api_key(tenant, id, presented, new.digest, &new.hint, grace, now)?;
        self.audit(
            Some(tenant),
            "api_key.rotated",
            actor,
            ip,
            format!(
                "key {} ({}) now {}; grace {grace_seconds} s",
                record.id, record.name, record.hint
            ),
        );
        self.store.flush().await?;
        Ok(IssuedKey {
            record,
            raw: new.raw,
        })
    }

    pub async fn revoke_key(
        &self,
        tenant: TenantId,
        id: KeyId,
        actor: &str,
        ip: Option<&str>,
    ) -> Result<ApiKeyRecord, Error> {
        self.home_key(tenant, id)?;
        let record = self.store.revoke_api_key(tenant, id, self.now())?;
        self.audit(
            Some(tenant),
            "api_key.revoked",
            actor,
            ip,
            format!("key {} ({}) {}", record.id, record.name, record.hint),
        );
        self.store.flush().await?;
        Ok(record)
    }

    /// The tenant's keys, newest first, revoked ones included.
    pub fn list_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyRecord>, Error> {
        let mut keys = self.store.list_api_keys(tenant)?;
        keys.reverse();
        Ok(keys)
    }

    /// A key of the tenant's list: its own, or one that lists the tenant.
    pub fn get_key(&self, tenant: TenantId, id: KeyId) -> Result<ApiKeyRecord, Error> {
        match self.store.api_key(id)? {
            Some(k) if k.tenant == tenant || self.store.key_reaches(id, tenant)? => Ok(k),
            _ => Err(Error::not_found("API key")),
        }
    }

    /// The tenants a key works in besides its home tenant.
    pub fn key_tenants(&self, id: KeyId) -> Result<Vec<TenantId>, Error> {
        Ok(self.store.key_tenants(id)?)
    }

    /// A key to rotate or revoke: only its home tenant does that. A tenant the key merely
    /// lists sees it (403), any other does not (404).
    fn home_key(&self, tenant: TenantId, id: KeyId) -> Result<ApiKeyRecord, Error> {
        let key = self.get_key(tenant, id)?;
        if key.tenant != tenant {
            return Err(Error::forbidden(
                "only the key's home tenant rotates or revokes it; withdraw your tenant from it instead",
            ));
        }
        Ok(key)
    }

    /// An admin of `tenant` takes it out of a key's extra tenants: the key's next request
    /// there is refused.
    pub async fn withdraw_key_tenant(
        &self,
        principal: &Principal,
        id: KeyId,
        tenant: TenantId,
        ip: Option<&str>,
    ) -> Result<(), Error> {
        if !self.administers(principal, tenant)? {
            return Err(Error::forbidden("you are not an admin of this tenant"));
        }
        let key = self.get_key(tenant, id)?;
        if key.tenant == tenant {
            return Err(Error::new(
                ErrorKind::Conflict,
                "this is the key's home tenant; revoke the key instead",
            ));
        }
        self.store
            .withdraw_key_tenant(id, tenant)
            .map_err(|e| match e {
                crate::store::StoreError::NotFound => Error::not_found("API key"),
                other => other.into(),
            })?;
        self.audit(
            Some(tenant),
            "api_key.withdrawn",
            &principal.actor(),
            ip,
            format!(
                "key {} ({}) {} no longer works here",
                key.id, key.name, key.hint
            ),
        );
        self.store.flush().await?;
        Ok(())
    }

    /// Checks that the creator of a key administers every tenant it lists (a superadmin
    /// administers all); the tenants must exist.
    pub fn check_extra_tenants(
        &self,
        principal: &Principal,
        tenants: &[TenantId],
    ) -> Result<(), Error> {
        if tenants.len() > MAX_EXTRA_TENANTS {
            return Err(Invalid::new("tenant_ids", "at most 50 tenants").into());
        }
        for t in tenants {
            if !self.administers(principal, *t)? {
                return Err(Error::forbidden(format!(
                    "you are not an admin of tenant {t}, so a key cannot reach it"
                )));
            }
        }
        Ok(())
    }
}

/// Format check first (no store read for garbage), then one digest lookup.
pub(super) fn verify(auth: &Auth, raw: &str, now: OffsetDateTime) -> Result<Principal, Error> {
    let invalid = |detail: &str| Error::new(ErrorKind::InvalidApiKey, detail);
    let environment = key_format::parse(raw).ok_or_else(|| {
        invalid("the API key is malformed: expected pm_live_ or pm_test_ followed by 38 letters and digits")
    })?;
    let digest = sha256(raw.as_bytes());
    let record = auth
        .store
        .api_key_by_digest(&digest)?
        .filter(|k| k.environment == environment && k.accepts(&digest, now))
        .ok_or_else(|| invalid("the API key is unknown, revoked or expired"))?;
    Ok(Principal {
        tenant: record.tenant,
        environment: record.environment,
        scopes: record.scopes,
        role: None,
        subject: Subject::ApiKey {
            key: record,
            digest,
        },
    })
}
