//! Tenants: id, unique (case-insensitive) name.
use super::kv::Transactional;
use super::{Store, StoreError, StoreResult, abort, codec, from_tx};
use crate::domain::TenantId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: String,
    pub created_at: OffsetDateTime,
}

impl Store {
    pub fn insert_tenant(&self, tenant: &TenantRecord) -> StoreResult<()> {
        let name_key = tenant.name.to_lowercase();
        let result = (&self.tenants, &self.tenant_by_name)
            .transaction(|(tenants, by_name)| {
                if by_name.get(name_key.as_bytes())?.is_some() {
                    return abort(StoreError::Duplicate(super::Unique::TenantName));
                }
                by_name.set(name_key.as_bytes(), codec::raw(tenant.id.as_bytes()))?;
                tenants.set(tenant.id.as_bytes(), codec::encode(tenant))?;
                Ok(())
            })
            .map_err(from_tx);
        self.caches.tenants.invalidate(&tenant.id);
        result
    }

    pub fn tenant(&self, id: TenantId) -> StoreResult<Option<TenantRecord>> {
        self.tenants
            .get(id.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// `tenant`, through the coherent cache (the per-request path).
    pub fn tenant_cached(&self, id: TenantId) -> StoreResult<Option<std::sync::Arc<TenantRecord>>> {
        self.caches.tenants.get_or_load(id, || self.tenant(id))
    }

    pub fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantRecord>> {
        match self.tenant_by_name.get(name.to_lowercase().as_bytes())? {
            Some(id) => match codec::unraw(&id).and_then(TenantId::from_slice) {
                Some(id) => self.tenant(id),
                None => Err(StoreError::Corrupt("tenant index".into())),
            },
            None => Ok(None),
        }
    }

    pub fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
        self.tenants
            .iter()
            .values()
            .map(|v| codec::decode(&v?))
            .collect()
    }
}
