//! Tombstones: what a deleted product leaves behind so change feeds can report the deletion.
//! Written in the delete's own transaction; swept after `--tombstone-retention`.
use super::{Namespace, Store, StoreError, StoreResult, codec, keys};
use crate::domain::ProductId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: ProductId,
    pub ean: String,
    pub reference: Option<String>,
    pub deleted_at: OffsetDateTime,
}

impl Store {
    /// The namespace's tombstones from `since` on (inclusive), oldest first.
    pub fn tombstones_since(
        &self,
        ns: Namespace,
        since: OffsetDateTime,
    ) -> Box<dyn Iterator<Item = StoreResult<Tombstone>> + '_> {
        Box::new(
            super::time_range(&self.tombstones, ns, Some(since))
                .values()
                .map(|v| codec::decode(&v?)),
        )
    }

    /// Removes every tombstone deleted before `cutoff`, in every namespace; returns how many.
    /// Keys sort by namespace, then time, so the walk reads only what it removes plus one key
    /// per namespace, then seeks to the next namespace.
    pub fn sweep_tombstones(&self, cutoff: OffsetDateTime) -> StoreResult<usize> {
        let cutoff = cutoff.unix_timestamp_nanos();
        let mut removed = 0;
        let mut from = Vec::new();
        'namespaces: loop {
            for item in self.tombstones.range(from.as_slice()..).keys() {
                let k = item?;
                let at = keys::updated_key_nanos(&k)
                    .ok_or_else(|| StoreError::Corrupt("tombstones: short key".into()))?;
                if at >= cutoff {
                    match keys::prefix_end(&k[..17]) {
                        Some(next) => {
                            from = next;
                            continue 'namespaces;
                        }
                        None => break 'namespaces,
                    }
                }
                if self.tombstones.remove(&k)?.is_some() {
                    removed += 1;
                }
            }
            break;
        }
        if removed > 0 {
            // Change feeds list tombstones.
            self.catalog_changed();
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Environment, TenantId};

    #[test]
    fn the_sweep_removes_what_expired_in_every_namespace_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let cutoff = t0 + time::Duration::hours(1);
        let namespaces: Vec<Namespace> = (0..3)
            .flat_map(|_| {
                let tenant = TenantId::generate();
                [Environment::Live, Environment::Test].map(|environment| Namespace {
                    tenant,
                    environment,
                })
            })
            .collect();
        // In each namespace: three before the cutoff, one exactly at it, two after.
        let offsets = [-3600i64, -60, -1, 0, 1, 7200];
        for ns in &namespaces {
            for (i, secs) in offsets.iter().enumerate() {
                let at = cutoff + time::Duration::seconds(*secs);
                let id = ProductId::generate();
                let stone = Tombstone {
                    id,
                    ean: format!("{i}"),
                    reference: None,
                    deleted_at: at,
                };
                let key = keys::ns_updated(*ns, at.unix_timestamp_nanos(), id.as_bytes());
                store.tombstones.insert(key, codec::encode(&stone)).unwrap();
            }
        }
        assert_eq!(
            store.sweep_tombstones(cutoff).unwrap(),
            3 * namespaces.len()
        );
        for ns in &namespaces {
            let left: Vec<i64> = store
                .tombstones_since(*ns, t0 - time::Duration::days(1))
                .map(|t| (t.unwrap().deleted_at - cutoff).whole_seconds())
                .collect();
            assert_eq!(left, vec![0, 1, 7200]);
        }
        assert_eq!(store.sweep_tombstones(cutoff).unwrap(), 0);
    }
}
