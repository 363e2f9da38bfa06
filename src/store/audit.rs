//! Audit events, per tenant, in time order (event ids are UUID v7).
use super::{Store, StoreResult, codec, keys};
use crate::domain::TenantId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: Uuid,
    pub at: OffsetDateTime,
    /// e.g. `login.success`, `login.failure`, `account.locked`, `api_key.rotated`.
    pub kind: String,
    /// Who did it: `user:<email>`, `api_key:<hint>`, `cli`, or the submitted email.
    pub actor: String,
    pub ip: Option<String>,
    /// Free text; never a secret.
    pub detail: String,
}

impl Store {
    pub fn append_audit(&self, tenant: TenantId, event: &AuditEvent) -> StoreResult<()> {
        self.audit.insert(
            &keys::pair(tenant.as_bytes(), event.id.as_bytes())[..],
            codec::encode(event),
        )?;
        Ok(())
    }

    /// Newest first: `skip` events, then at most `take`; also returns the total.
    pub fn audit_page(
        &self,
        tenant: TenantId,
        skip: usize,
        take: usize,
    ) -> StoreResult<(Vec<AuditEvent>, usize)> {
        let total = self.audit.scan_prefix(tenant.as_bytes()).count();
        let items = self
            .audit
            .scan_prefix(tenant.as_bytes())
            .rev()
            .skip(skip)
            .take(take)
            .map(|item| {
                item.map_err(Into::into)
                    .and_then(|(_, v)| codec::decode(&v))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((items, total))
    }
}
