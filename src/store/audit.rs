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
        self.audit.set(
            &keys::pair(tenant.as_bytes(), event.id.as_bytes())[..],
            codec::encode(event),
        )?;
        Ok(())
    }

    /// Removes every event older than `before`; returns how many. Event ids are UUID v7, so
    /// the key itself carries the event's time.
    pub fn sweep_audit(&self, before: OffsetDateTime) -> StoreResult<usize> {
        let before = before.unix_timestamp();
        let mut removed = 0;
        for item in self.audit.iter() {
            let (key, _) = item?;
            let at = key
                .get(16..)
                .and_then(|id| Uuid::from_slice(id).ok())
                .and_then(|id| id.get_timestamp())
                .map(|t| t.to_unix().0);
            if at.is_some_and(|secs| i64::try_from(secs).unwrap_or(i64::MAX) < before) {
                self.audit.unset(&key)?;
                removed += 1;
            }
        }
        Ok(removed)
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
