//! Suppliers and their per-namespace code index. A supplier record also counts the products
//! that reference it: product writes keep the count in the same transaction that changes the
//! reference, so a delete can tell "still referenced" without a scan racing new references.
use super::products::{ProductRecord, ProductTrees};
use super::{Namespace, Store, StoreError, StoreResult, abort, codec, keys};
use crate::domain::ProductId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupplierRecord {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub country: Option<String>,
    pub currency: Option<String>,
    pub lead_time_days: Option<u32>,
    pub is_active: bool,
    /// Products whose `supplier_id` is this supplier; kept by every product write.
    pub product_count: u64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// The code index's key part: codes are unique without regard to letter case.
pub fn code_key(code: &str) -> String {
    code.to_lowercase()
}

impl Store {
    /// Stores written before suppliers were records hold products with a `supplier_id` and no
    /// `products_by_supplier` entry: index them once (idempotent; no supplier records existed,
    /// so there is no count to fix).
    pub(super) fn migrate_supplier_index(&self) -> StoreResult<()> {
        const DONE: &str = "products_by_supplier_built";
        if self.meta.get(DONE)?.is_some() || self.products.is_empty() {
            return Ok(());
        }
        for item in self.products.iter() {
            let (k, v) = item?;
            let p: ProductRecord = codec::decode(&v)?;
            if let Some(sid) = p.supplier_id {
                let mut key = Vec::with_capacity(49);
                key.extend_from_slice(&k[..17]);
                key.extend_from_slice(sid.as_bytes());
                key.extend_from_slice(p.id.as_bytes());
                self.products_by_supplier.set(key, codec::raw(&[]))?;
            }
        }
        self.meta.set(DONE, codec::raw(b"1"))?;
        self.db.flush()?;
        Ok(())
    }

    pub fn insert_supplier(&self, ns: Namespace, s: &SupplierRecord) -> StoreResult<()> {
        let code = keys::ns_str(ns, &code_key(&s.code));
        // Through the catalog's transaction, for its webhook outbox.
        self.product_tx(|t| {
            if t.supplier_by_code.get(&code)?.is_some() {
                return abort(StoreError::Duplicate(super::Unique::SupplierCode));
            }
            t.supplier_by_code
                .set(code.as_slice(), codec::raw(s.id.as_bytes()))?;
            t.suppliers
                .set(&keys::ns_id(ns, s.id.as_bytes())[..], codec::encode(s))?;
            t.emit(ns, super::EventKind::SupplierCreated, s.created_at, || {
                super::EventData::Supplier(Box::new(s.clone()))
            })?;
            Ok(())
        })
    }

    pub fn supplier(&self, ns: Namespace, id: Uuid) -> StoreResult<Option<SupplierRecord>> {
        self.suppliers
            .get(keys::ns_id(ns, id.as_bytes()))?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    pub fn supplier_by_code(
        &self,
        ns: Namespace,
        code: &str,
    ) -> StoreResult<Option<SupplierRecord>> {
        match self
            .supplier_by_code
            .get(keys::ns_str(ns, &code_key(code)))?
            .and_then(|v| codec::unraw(&v).and_then(|b| Uuid::from_slice(b).ok()))
        {
            Some(id) => self.supplier(ns, id),
            None => Ok(None),
        }
    }

    /// Every supplier of the namespace (a namespace holds hundreds, not millions).
    pub fn suppliers(&self, ns: Namespace) -> StoreResult<Vec<SupplierRecord>> {
        self.suppliers
            .scan_prefix(keys::namespace(ns))
            .values()
            .map(|v| codec::decode(&v?))
            .collect()
    }

    /// Ids of the products that reference `supplier`, from the index.
    pub fn product_ids_of_supplier(
        &self,
        ns: Namespace,
        supplier: Uuid,
    ) -> StoreResult<Vec<ProductId>> {
        super::product_ids_under(
            &self.products_by_supplier,
            &keys::ns_id(ns, supplier.as_bytes()),
            "products_by_supplier",
        )
    }

    /// Replaces a supplier with `change(current)`. A new code moves the code index and is
    /// copied into every referencing product (whose `updated_at` becomes `now`), all in one
    /// transaction; `referencing` are the product ids read from the index beforehand, and the
    /// transaction refuses to go on (a retryable conflict) if the count says they are not all.
    pub fn update_supplier<F>(
        &self,
        ns: Namespace,
        id: Uuid,
        referencing: &[ProductId],
        now: OffsetDateTime,
        change: F,
    ) -> StoreResult<SupplierRecord>
    where
        F: Fn(&SupplierRecord) -> Result<SupplierRecord, StoreError>,
    {
        let key = keys::ns_id(ns, id.as_bytes());
        self.product_tx(|t| {
            let old: SupplierRecord = match t.suppliers.get(key)? {
                Some(v) => codec::decode(&v).or_else(abort)?,
                None => return abort(StoreError::NotFound),
            };
            let mut new = change(&old).or_else(abort)?;
            new.id = old.id;
            new.product_count = old.product_count;
            new.created_at = old.created_at;
            if code_key(&new.code) != code_key(&old.code) {
                let new_code = keys::ns_str(ns, &code_key(&new.code));
                if t.supplier_by_code.get(&new_code)?.is_some() {
                    return abort(StoreError::Duplicate(super::Unique::SupplierCode));
                }
                t.supplier_by_code
                    .unset(keys::ns_str(ns, &code_key(&old.code)))?;
                t.supplier_by_code
                    .set(new_code, codec::raw(id.as_bytes()))?;
            }
            if new.code != old.code {
                relink(t, ns, id, referencing, old.product_count, now, |p| {
                    p.supplier_code = Some(new.code.clone());
                })?;
            }
            t.suppliers.set(&key[..], codec::encode(&new))?;
            t.emit(
                ns,
                super::EventKind::SupplierUpdated,
                new.updated_at,
                || super::EventData::Supplier(Box::new(new.clone())),
            )?;
            Ok(new)
        })
    }

    /// Deletes a supplier. Referenced by products, it is refused (`Conflict`) unless `detach`,
    /// which clears the reference of each of `referencing` (read from the index beforehand;
    /// the transaction checks them against the count) in the same transaction.
    pub fn delete_supplier(
        &self,
        ns: Namespace,
        id: Uuid,
        detach: bool,
        referencing: &[ProductId],
        now: OffsetDateTime,
    ) -> StoreResult<u64> {
        let key = keys::ns_id(ns, id.as_bytes());
        self.product_tx(|t| {
            let old: SupplierRecord = match t.suppliers.get(key)? {
                Some(v) => codec::decode(&v).or_else(abort)?,
                None => return abort(StoreError::NotFound),
            };
            if old.product_count > 0 && !detach {
                return abort(StoreError::Conflict(
                    "products reference this supplier; delete with ?detach=true to clear their supplier",
                ));
            }
            relink(t, ns, id, referencing, old.product_count, now, |p| {
                p.supplier_id = None;
                p.supplier_code = None;
            })?;
            t.supplier_by_code.unset(keys::ns_str(ns, &code_key(&old.code)))?;
            t.suppliers.unset(&key[..])?;
            Ok(old.product_count)
        })
    }
}

/// Applies `edit` to every product of `referencing` that still references `supplier`, moving
/// their updated_at index to `now`. The products found must be exactly `count` (the supplier's
/// reference count); otherwise a reference appeared or went since the index was read, and the
/// caller retries with a fresh read.
fn relink(
    t: &ProductTrees<'_>,
    ns: Namespace,
    supplier: Uuid,
    referencing: &[ProductId],
    count: u64,
    now: OffsetDateTime,
    edit: impl Fn(&mut ProductRecord),
) -> Result<(), sled::transaction::ConflictableTransactionError<StoreError>> {
    let mut found = 0u64;
    for pid in referencing {
        let Ok(old) = t.load(ns, *pid)? else { continue };
        if old.supplier_id != Some(supplier) {
            continue;
        }
        found += 1;
        let mut new = old.clone();
        edit(&mut new);
        new.updated_at = now;
        t.remove_indexes(ns, &old)?;
        t.add_indexes(ns, &new)?;
        t.move_supplier(ns, Some(&old), Some(&new))?;
        t.products
            .set(&keys::ns_id(ns, pid.as_bytes())[..], codec::encode(&new))?;
        t.emit_product(ns, super::EventKind::ProductUpdated, &new)?;
    }
    if found != count {
        return abort(StoreError::Retry);
    }
    Ok(())
}
