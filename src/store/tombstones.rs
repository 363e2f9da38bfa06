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
    pub fn sweep_tombstones(&self, cutoff: OffsetDateTime) -> StoreResult<usize> {
        let cutoff = cutoff.unix_timestamp_nanos();
        let mut removed = 0;
        for item in self.tombstones.iter().keys() {
            let k = item?;
            let at = keys::updated_key_nanos(&k)
                .ok_or_else(|| StoreError::Corrupt("tombstones: short key".into()))?;
            if at < cutoff && self.tombstones.remove(&k)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
