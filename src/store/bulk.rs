//! Bulk loading for benchmarks and large imports of synthetic data: sled batches per tree,
//! one flush at the end. Not transactional across trees; callers use it on a store no server
//! is using.
use super::{ApiKeyRecord, Namespace, ProductRecord, Store, StoreResult, codec, keys};

impl Store {
    pub fn bulk_insert_api_keys(&self, records: &[ApiKeyRecord]) -> StoreResult<()> {
        let (mut recs, mut by_digest, mut by_tenant) = (
            super::kv::Batch::default(),
            super::kv::Batch::default(),
            super::kv::Batch::default(),
        );
        for k in records {
            recs.insert(k.id.as_bytes(), codec::encode(k));
            by_digest.insert(&k.digest[..], codec::raw(k.id.as_bytes()));
            by_tenant.insert(
                &keys::pair(k.tenant.as_bytes(), k.id.as_bytes())[..],
                codec::raw(&[]),
            );
        }
        self.api_keys.apply_batch(recs)?;
        self.api_key_by_digest.apply_batch(by_digest)?;
        self.api_keys_by_tenant.apply_batch(by_tenant)?;
        Ok(())
    }

    /// Inserts products whose EANs and references are known to be free.
    pub fn bulk_insert_products(
        &self,
        ns: Namespace,
        products: &[ProductRecord],
    ) -> StoreResult<()> {
        let (mut recs, mut by_ean, mut by_updated) = (
            super::kv::Batch::default(),
            super::kv::Batch::default(),
            super::kv::Batch::default(),
        );
        for p in products {
            recs.insert(&keys::ns_id(ns, p.id.as_bytes())[..], codec::encode(p));
            by_ean.insert(keys::ns_str(ns, &p.ean), codec::raw(p.id.as_bytes()));
            by_updated.insert(
                &keys::ns_updated(ns, p.updated_at.unix_timestamp_nanos(), p.id.as_bytes())[..],
                codec::raw(&[]),
            );
        }
        let mut inactive = super::kv::Batch::default();
        let mut inactive_n = 0u64;
        for p in products.iter().filter(|p| !p.is_active) {
            inactive.insert(&keys::ns_id(ns, p.id.as_bytes())[..], codec::raw(&[]));
            inactive_n += 1;
        }
        self.products.apply_batch(recs)?;
        self.product_by_ean.apply_batch(by_ean)?;
        self.products_by_updated.apply_batch(by_updated)?;
        self.products_inactive.apply_batch(inactive)?;
        let add = |key: Vec<u8>, by: u64| {
            self.counters.fetch_and_update(key, |old| {
                let n = old.map_or(0, super::products::read_count);
                Some(codec::raw(&(n + by).to_be_bytes()))
            })
        };
        add(keys::namespace(ns).to_vec(), products.len() as u64)?;
        if inactive_n > 0 {
            add(keys::inactive_counter(ns), inactive_n)?;
        }
        self.catalog_changed();
        Ok(())
    }
}
