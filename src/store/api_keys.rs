//! API key records, looked up by the SHA-256 digest of the presented key.
//!
//! A key record keeps the digest of its current secret and, during a rotation grace period,
//! the previous digest with its deadline. Revocation removes every digest index entry in the
//! same transaction that marks the record, so no later lookup can find the key.
use super::kv::Transactional;
use super::{Store, StoreError, StoreResult, abort, codec, from_tx, keys};
use crate::domain::{Environment, KeyId, ScopeSet, TenantId, digests_equal};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;

pub use crate::domain::Digest;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: KeyId,
    pub tenant: TenantId,
    pub environment: Environment,
    pub name: String,
    pub scopes: ScopeSet,
    pub hint: String,
    pub digest: Digest,
    /// The secret replaced by the last rotation and the moment it stops working.
    pub previous: Option<(Digest, OffsetDateTime)>,
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub expires_at: Option<OffsetDateTime>,
    pub rotated_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiKeyRecord {
    /// Whether `digest` opens this key at `now`.
    pub fn accepts(&self, digest: &Digest, now: OffsetDateTime) -> bool {
        if self.revoked_at.is_some() || self.expires_at.is_some_and(|e| now >= e) {
            return false;
        }
        if digests_equal(&self.digest, digest) {
            return true;
        }
        self.previous
            .is_some_and(|(old, until)| now < until && digests_equal(&old, digest))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyUsage {
    pub at: OffsetDateTime,
    pub ip: Option<String>,
}

impl Store {
    /// Stores a new key. `extra` are the tenants it reaches besides its home tenant: their
    /// key lists show it, and `X-Tenant-ID` may name them.
    pub fn insert_api_key(&self, key: &ApiKeyRecord, extra: &[TenantId]) -> StoreResult<()> {
        let result = (
            &self.api_keys,
            &self.api_key_by_digest,
            &self.api_keys_by_tenant,
            &self.api_key_tenants,
        )
            .transaction(|(records, by_digest, by_tenant, reaches)| {
                by_digest.set(&key.digest[..], codec::raw(key.id.as_bytes()))?;
                by_tenant.set(
                    &keys::pair(key.tenant.as_bytes(), key.id.as_bytes())[..],
                    codec::raw(&[]),
                )?;
                for t in extra.iter().filter(|t| **t != key.tenant) {
                    by_tenant.set(
                        &keys::pair(t.as_bytes(), key.id.as_bytes())[..],
                        codec::raw(&[]),
                    )?;
                    reaches.set(
                        &keys::pair(key.id.as_bytes(), t.as_bytes())[..],
                        codec::raw(&[]),
                    )?;
                }
                records.set(key.id.as_bytes(), codec::encode(key))?;
                Ok(())
            })
            .map_err(from_tx);
        self.caches.keys.invalidate(&key.digest);
        result
    }

    pub fn api_key(&self, id: KeyId) -> StoreResult<Option<ApiKeyRecord>> {
        self.api_keys
            .get(id.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// The key record a digest points at, if any (the caller still checks `accepts`). This is
    /// the per-request path: a cache hit costs no store read; a miss reads the digest index
    /// and the record.
    pub fn api_key_by_digest(&self, digest: &Digest) -> StoreResult<Option<Arc<ApiKeyRecord>>> {
        self.count_key_lookup();
        self.caches.keys.get_or_load(*digest, || {
            let Some(id) = self.api_key_by_digest.get(digest)? else {
                return Ok(None);
            };
            let id = codec::unraw(&id)
                .and_then(KeyId::from_slice)
                .ok_or(StoreError::Corrupt("key digest index".into()))?;
            self.api_key(id)
        })
    }

    /// After a revocation or rotation commits: drop the cached digests of the old record.
    fn forget_digests(
        &self,
        result: StoreResult<(ApiKeyRecord, Vec<Digest>)>,
    ) -> StoreResult<ApiKeyRecord> {
        let (key, dropped) = result?;
        for d in &dropped {
            self.caches.keys.invalidate(d);
        }
        Ok(key)
    }

    /// The tenants a key reaches besides its home tenant.
    pub fn key_tenants(&self, id: KeyId) -> StoreResult<Vec<TenantId>> {
        self.api_key_tenants
            .scan_prefix(id.as_bytes())
            .keys()
            .map(|k| {
                let k = k?;
                k.get(16..)
                    .and_then(TenantId::from_slice)
                    .ok_or(StoreError::Corrupt("key tenants index".into()))
            })
            .collect()
    }

    /// Whether `tenant` is one of the extra tenants of the key (read from the store on every
    /// call, so a withdrawal bites on the next request whichever worker answers it).
    pub fn key_reaches(&self, id: KeyId, tenant: TenantId) -> StoreResult<bool> {
        Ok(self
            .api_key_tenants
            .contains_key(keys::pair(id.as_bytes(), tenant.as_bytes()))?)
    }

    /// Takes `tenant` out of the key's extra tenants (and its key list). `NotFound` when the
    /// key does not list it.
    pub fn withdraw_key_tenant(&self, id: KeyId, tenant: TenantId) -> StoreResult<()> {
        (&self.api_key_tenants, &self.api_keys_by_tenant)
            .transaction(|(reaches, by_tenant)| {
                if reaches
                    .remove(&keys::pair(id.as_bytes(), tenant.as_bytes())[..])?
                    .is_none()
                {
                    return abort(StoreError::NotFound);
                }
                by_tenant.unset(&keys::pair(tenant.as_bytes(), id.as_bytes())[..])?;
                Ok(())
            })
            .map_err(from_tx)
    }

    pub fn list_api_keys(&self, tenant: TenantId) -> StoreResult<Vec<ApiKeyRecord>> {
        let mut out = Vec::new();
        for item in self.api_keys_by_tenant.scan_prefix(tenant.as_bytes()) {
            let (k, _) = item?;
            let id = KeyId::from_slice(&k[16..])
                .ok_or(StoreError::Corrupt("key tenant index".into()))?;
            if let Some(rec) = self.api_key(id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Marks the key revoked and drops every digest that pointed at it. Revoking twice is a
    /// no-op that returns the record.
    pub fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: KeyId,
        now: OffsetDateTime,
    ) -> StoreResult<ApiKeyRecord> {
        let result = (&self.api_keys, &self.api_key_by_digest)
            .transaction(|(records, by_digest)| {
                let mut key = match load_key(records, tenant, id)? {
                    Ok(k) => k,
                    Err(e) => return abort(e),
                };
                let mut dropped = vec![key.digest];
                if key.revoked_at.is_none() {
                    by_digest.unset(&key.digest[..])?;
                    if let Some((old, _)) = key.previous.take() {
                        by_digest.unset(&old[..])?;
                        dropped.push(old);
                    }
                    key.revoked_at = Some(now);
                    records.set(id.as_bytes(), codec::encode(&key))?;
                }
                Ok((key, dropped))
            })
            .map_err(from_tx);
        self.forget_digests(result)
    }

    /// Replaces the key's secret. With `grace_until`, the replaced secret keeps working until
    /// then; otherwise it is dead when this returns. With `presented`, the rotation is refused
    /// unless that digest is still the current secret (checked inside the transaction).
    #[allow(clippy::too_many_arguments)]
    pub fn rotate_api_key(
        &self,
        tenant: TenantId,
        id: KeyId,
        presented: Option<Digest>,
        new_digest: Digest,
        new_hint: &str,
        grace_until: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> StoreResult<ApiKeyRecord> {
        let result = (&self.api_keys, &self.api_key_by_digest)
            .transaction(|(records, by_digest)| {
                let mut key = match load_key(records, tenant, id)? {
                    Ok(k) => k,
                    Err(e) => return abort(e),
                };
                if key.revoked_at.is_some() {
                    return abort(StoreError::Conflict(
                        "this key is revoked and cannot be rotated",
                    ));
                }
                if presented.is_some_and(|d| d != key.digest) {
                    return abort(StoreError::Conflict(
                        "only the key's current secret can rotate it; this one was already replaced",
                    ));
                }
                // Every digest that pointed at the old record leaves the cache after the commit.
                let mut dropped = vec![key.digest];
                if let Some((older, _)) = key.previous.take() {
                    by_digest.unset(&older[..])?;
                    dropped.push(older);
                }
                match grace_until {
                    Some(until) if until > now => key.previous = Some((key.digest, until)),
                    _ => {
                        by_digest.unset(&key.digest[..])?;
                    }
                }
                by_digest.set(&new_digest[..], codec::raw(id.as_bytes()))?;
                key.digest = new_digest;
                key.hint = new_hint.to_owned();
                key.rotated_at = Some(now);
                records.set(id.as_bytes(), codec::encode(&key))?;
                Ok((key, dropped))
            })
            .map_err(from_tx);
        self.forget_digests(result)
    }

    pub fn key_usage(&self, id: KeyId) -> StoreResult<Option<KeyUsage>> {
        self.api_key_usage
            .get(id.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// Usage lives in its own tree so that recording it can never race a revocation. The later
    /// of the stored and the new use wins, whatever order writers arrive in.
    pub fn set_key_usage(&self, id: KeyId, usage: &KeyUsage) -> StoreResult<()> {
        let new = codec::encode(usage);
        self.api_key_usage.fetch_and_update(id.as_bytes(), |old| {
            let stored_is_later = old
                .and_then(|b| codec::decode::<KeyUsage>(b).ok())
                .is_some_and(|stored| stored.at > usage.at);
            match (stored_is_later, old) {
                (true, Some(old)) => Some(old.to_vec()),
                _ => Some(new.clone()),
            }
        })?;
        Ok(())
    }
}

type TxResult<T> = Result<T, sled::transaction::UnabortableTransactionError>;

fn load_key(
    records: &super::kv::TxTree,
    tenant: TenantId,
    id: KeyId,
) -> TxResult<Result<ApiKeyRecord, StoreError>> {
    let Some(bytes) = records.get(id.as_bytes())? else {
        return Ok(Err(StoreError::NotFound));
    };
    Ok(codec::decode::<ApiKeyRecord>(&bytes).and_then(|k| {
        if k.tenant == tenant {
            Ok(k)
        } else {
            Err(StoreError::NotFound)
        }
    }))
}
