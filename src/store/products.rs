//! Product records and their per-namespace indexes (EAN, reference, updated_at, supplier,
//! category) and counter. Uniqueness of EAN and reference, and the existence of a newly
//! referenced supplier or category, are checked inside the same transaction that writes.
use super::kv::TxTree;
use super::{
    EventData, EventKind, Namespace, Store, StoreError, StoreResult, abort, codec, from_tx, keys,
};
use crate::domain::ProductId;
use serde::{Deserialize, Serialize};
use sled::transaction::UnabortableTransactionError;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductRecord {
    pub id: ProductId,
    pub ean: String,
    pub sku: Option<String>,
    pub reference: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub brand: Option<String>,
    pub price: Option<f64>,
    pub cost_price: Option<f64>,
    pub currency: String,
    pub weight: Option<f64>,
    pub stock: i64,
    pub is_active: bool,
    pub supplier_id: Option<Uuid>,
    pub supplier_code: Option<String>,
    pub category_ids: Vec<Uuid>,
    pub attributes: BTreeMap<String, String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// The trees a product write touches, inside one transaction. Supplier writes use the same set,
/// since renaming or deleting a supplier rewrites the products that reference it.
pub(super) struct ProductTrees<'a> {
    pub(super) products: &'a TxTree,
    by_ean: &'a TxTree,
    by_ref: &'a TxTree,
    by_updated: &'a TxTree,
    pub(super) counters: &'a TxTree,
    pub(super) suppliers: &'a TxTree,
    pub(super) supplier_by_code: &'a TxTree,
    by_supplier: &'a TxTree,
    tombstones: &'a TxTree,
    pub(super) categories: &'a TxTree,
    pub(super) category_by_name: &'a TxTree,
    pub(super) by_category: &'a TxTree,
    pub(super) mappings: &'a TxTree,
    inactive: &'a TxTree,
    /// The webhook outbox: events are written with the change that causes them.
    events: &'a TxTree,
    switch: &'a super::webhooks::EventSwitch,
}

type Tx<T> = Result<T, UnabortableTransactionError>;
/// A write inside a transaction: the outer error aborts the transaction (storage), the inner
/// one is the write refused by its checks (nothing of it written).
type Checked<T> =
    Result<Result<T, StoreError>, sled::transaction::ConflictableTransactionError<StoreError>>;

/// One write of [`Store::product_writes`].
pub enum ProductWrite<'a> {
    Insert(Box<ProductRecord>),
    /// The product and what it becomes (`Err` skips the write with that error).
    Update(
        ProductId,
        &'a (dyn Fn(&ProductRecord) -> Result<ProductRecord, StoreError> + Sync),
    ),
}

impl ProductTrees<'_> {
    /// Writes a webhook event for this transaction's change (when `ns` has an active webhook).
    pub(super) fn emit(
        &self,
        ns: Namespace,
        kind: EventKind,
        at: OffsetDateTime,
        data: impl FnOnce() -> EventData,
    ) -> Tx<()> {
        super::webhooks::emit(self.events, self.switch, ns, kind, at, data)
    }

    pub(super) fn emit_product(&self, ns: Namespace, kind: EventKind, p: &ProductRecord) -> Tx<()> {
        self.emit(ns, kind, p.updated_at, || {
            EventData::Product(Box::new(p.clone()))
        })
    }

    /// Inserts `p` once it passes the checks; a check's failure is the inner error (nothing
    /// written).
    fn insert(&self, ns: Namespace, p: &ProductRecord) -> Checked<()> {
        for check in [
            self.check_unique(ns, p)?,
            self.check_supplier(ns, None, p)?,
            self.check_categories(ns, None, p)?,
        ] {
            if let Err(e) = check {
                return Ok(Err(e));
            }
        }
        self.add_indexes(ns, p)?;
        self.move_supplier(ns, None, Some(p))?;
        self.move_categories(ns, None, Some(p))?;
        self.move_active(ns, None, Some(p))?;
        self.products
            .set(&keys::ns_id(ns, p.id.as_bytes())[..], codec::encode(p))?;
        self.bump_count(ns, p.id.as_bytes(), 1)?;
        self.emit_product(ns, EventKind::ProductCreated, p)?;
        Ok(Ok(()))
    }

    /// Replaces product `id` with `change(current)` once it passes the checks.
    fn update(
        &self,
        ns: Namespace,
        id: ProductId,
        change: &dyn Fn(&ProductRecord) -> Result<ProductRecord, StoreError>,
    ) -> Checked<ProductRecord> {
        let old = match self.load(ns, id)? {
            Ok(old) => old,
            Err(e) => return Ok(Err(e)),
        };
        let new = match change(&old) {
            Ok(new) => new,
            Err(e) => return Ok(Err(e)),
        };
        for check in [
            self.check_unique(ns, &new)?,
            self.check_supplier(ns, Some(&old), &new)?,
            self.check_categories(ns, Some(&old), &new)?,
        ] {
            if let Err(e) = check {
                return Ok(Err(e));
            }
        }
        self.remove_indexes(ns, &old)?;
        self.add_indexes(ns, &new)?;
        self.move_supplier(ns, Some(&old), Some(&new))?;
        self.move_categories(ns, Some(&old), Some(&new))?;
        self.move_active(ns, Some(&old), Some(&new))?;
        self.products
            .set(&keys::ns_id(ns, id.as_bytes())[..], codec::encode(&new))?;
        self.emit_product(ns, EventKind::ProductUpdated, &new)?;
        Ok(Ok(new))
    }

    /// Replaces the product holding `ean` by `change(current)`, or inserts `create` when none
    /// does (`None`: nothing to create, the write is refused with [`StoreError::NotFound`]).
    /// The lookup is inside the transaction, so no concurrent write can make it stale: any
    /// other refusal here is the item's own (a reference held by another product, an unknown
    /// supplier or category). `true` when the product was created.
    pub(super) fn upsert_by_ean(
        &self,
        ns: Namespace,
        ean: &str,
        create: Option<&ProductRecord>,
        change: &dyn Fn(&ProductRecord) -> Result<ProductRecord, StoreError>,
    ) -> Checked<(ProductRecord, bool)> {
        match (
            self.index_owner(self.by_ean, &keys::ns_str(ns, ean))?,
            create,
        ) {
            (Some(id), _) => Ok(self.update(ns, id, change)?.map(|p| (p, false))),
            (None, Some(p)) => Ok(self.insert(ns, p)?.map(|()| (p.clone(), true))),
            (None, None) => Ok(Err(StoreError::NotFound)),
        }
    }

    fn index_owner(&self, tree: &TxTree, key: &[u8]) -> Tx<Option<ProductId>> {
        Ok(tree
            .get(key)?
            .and_then(|v| codec::unraw(&v).and_then(ProductId::from_slice)))
    }

    /// Moves the supplier index entry and reference counts from `old` to `new` (either absent
    /// for a create or a delete); nothing is written when the supplier stays the same.
    pub(super) fn move_supplier(
        &self,
        ns: Namespace,
        old: Option<&ProductRecord>,
        new: Option<&ProductRecord>,
    ) -> Tx<()> {
        let before = old.and_then(|p| p.supplier_id.map(|s| (s, p.id)));
        let after = new.and_then(|p| p.supplier_id.map(|s| (s, p.id)));
        if before == after {
            return Ok(());
        }
        if let Some((sid, pid)) = before {
            self.by_supplier
                .unset(&keys::ns_pair(ns, sid.as_bytes(), pid.as_bytes())[..])?;
            self.count_reference(ns, sid, -1)?;
        }
        if let Some((sid, pid)) = after {
            self.by_supplier.set(
                &keys::ns_pair(ns, sid.as_bytes(), pid.as_bytes())[..],
                codec::raw(&[]),
            )?;
            self.count_reference(ns, sid, 1)?;
        }
        Ok(())
    }

    /// Moves the inactive-product index entry and counter from `old` to `new` (either absent
    /// for a create or a delete). Most products are active and stay so: nothing is written.
    fn move_active(
        &self,
        ns: Namespace,
        old: Option<&ProductRecord>,
        new: Option<&ProductRecord>,
    ) -> Tx<()> {
        let before = old.filter(|p| !p.is_active).map(|p| p.id);
        let after = new.filter(|p| !p.is_active).map(|p| p.id);
        if before == after {
            return Ok(());
        }
        let counter = keys::inactive_counter(ns);
        let mut count = self.counters.get(&counter)?.map_or(0, |v| read_count(&v));
        if let Some(id) = before {
            self.inactive.unset(&keys::ns_id(ns, id.as_bytes())[..])?;
            count = count.saturating_sub(1);
        }
        if let Some(id) = after {
            self.inactive
                .set(&keys::ns_id(ns, id.as_bytes())[..], codec::raw(&[]))?;
            count += 1;
        }
        self.counters
            .set(counter, codec::raw(&count.to_be_bytes()))?;
        Ok(())
    }

    pub(super) fn add_indexes(&self, ns: Namespace, p: &ProductRecord) -> Tx<()> {
        self.by_ean
            .set(keys::ns_str(ns, &p.ean), codec::raw(p.id.as_bytes()))?;
        if let Some(r) = &p.reference {
            self.by_ref
                .set(keys::ns_str(ns, r), codec::raw(p.id.as_bytes()))?;
        }
        self.by_updated.set(
            &keys::ns_updated(ns, p.updated_at.unix_timestamp_nanos(), p.id.as_bytes())[..],
            codec::raw(&[]),
        )?;
        Ok(())
    }

    pub(super) fn remove_indexes(&self, ns: Namespace, p: &ProductRecord) -> Tx<()> {
        self.by_ean.unset(keys::ns_str(ns, &p.ean))?;
        if let Some(r) = &p.reference {
            self.by_ref.unset(keys::ns_str(ns, r))?;
        }
        self.by_updated.unset(
            &keys::ns_updated(ns, p.updated_at.unix_timestamp_nanos(), p.id.as_bytes())[..],
        )?;
        Ok(())
    }

    /// Refuses an EAN or reference already held by another product of the namespace.
    fn check_unique(&self, ns: Namespace, p: &ProductRecord) -> Tx<Result<(), StoreError>> {
        if self
            .index_owner(self.by_ean, &keys::ns_str(ns, &p.ean))?
            .is_some_and(|id| id != p.id)
        {
            return Ok(Err(StoreError::Duplicate(super::Unique::Ean)));
        }
        if let Some(r) = &p.reference
            && self
                .index_owner(self.by_ref, &keys::ns_str(ns, r))?
                .is_some_and(|id| id != p.id)
        {
            return Ok(Err(StoreError::Duplicate(super::Unique::Reference)));
        }
        Ok(Ok(()))
    }

    /// Moves a supplier's reference count. A supplier id without a record (kept from before
    /// suppliers were records) has nothing to count.
    fn count_reference(&self, ns: Namespace, supplier: Uuid, delta: i64) -> Tx<()> {
        let key = keys::ns_id(ns, supplier.as_bytes());
        edit_record(self.suppliers, &key, |s: &mut super::SupplierRecord| {
            s.product_count = s.product_count.saturating_add_signed(delta)
        })
    }

    /// Refuses a supplier reference that `old` did not already hold and that names no supplier.
    fn check_supplier(
        &self,
        ns: Namespace,
        old: Option<&ProductRecord>,
        p: &ProductRecord,
    ) -> Tx<Result<(), StoreError>> {
        let Some(sid) = p.supplier_id else {
            return Ok(Ok(()));
        };
        if old.is_some_and(|o| o.supplier_id == Some(sid)) {
            return Ok(Ok(()));
        }
        if self
            .suppliers
            .get(keys::ns_id(ns, sid.as_bytes()))?
            .is_none()
        {
            return Ok(Err(StoreError::Missing {
                field: "supplier_id",
                what: "supplier",
            }));
        }
        Ok(Ok(()))
    }

    /// Moves the namespace's product count by `delta`, in the shard of product `id`.
    fn bump_count(&self, ns: Namespace, id: &[u8; 16], delta: i64) -> Tx<()> {
        let shards = if self.counters.shared() {
            keys::COUNT_SHARDS_SHARED
        } else {
            keys::COUNT_SHARDS
        };
        let key = keys::count_shard(ns, id, shards);
        let current = self.counters.get(key)?.map_or(0, |v| read_delta(&v));
        self.counters
            .set(&key[..], codec::raw(&(current + delta).to_be_bytes()))?;
        Ok(())
    }

    pub(super) fn load(
        &self,
        ns: Namespace,
        id: ProductId,
    ) -> Tx<Result<ProductRecord, StoreError>> {
        Ok(match self.products.get(keys::ns_id(ns, id.as_bytes()))? {
            Some(bytes) => codec::decode(&bytes),
            None => Err(StoreError::NotFound),
        })
    }
}

/// Rewrites the record at `key` with `edit` applied; nothing when there is no readable record
/// (a reference counted by a record kept from before that record type existed).
pub(super) fn edit_record<T: Serialize + serde::de::DeserializeOwned>(
    tree: &TxTree,
    key: &[u8],
    edit: impl FnOnce(&mut T),
) -> Tx<()> {
    let Some(bytes) = tree.get(key)? else {
        return Ok(());
    };
    let Ok(mut record) = codec::decode::<T>(&bytes) else {
        return Ok(());
    };
    edit(&mut record);
    tree.set(key, codec::encode(&record))?;
    Ok(())
}

/// A product counter value (version byte + u64 BE); 0 when absent or unreadable.
/// A shard of a product count: what creates and deletes moved it by (may be negative: a product
/// counted in the base is deleted through its shard).
pub(super) fn read_delta(v: &[u8]) -> i64 {
    codec::unraw(v)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i64::from_be_bytes)
}

/// A namespace's product count from its counter records: the base (bulk loads, stores from
/// before the shards) plus every shard. `records` are the counters from the namespace's key up
/// to its shards' end, in key order.
pub(super) fn sum_count(
    records: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> StoreResult<u64> {
    let mut total: i64 = 0;
    for item in records {
        let (k, v) = item?;
        total += if k.len() == 17 {
            read_count(&v) as i64
        } else {
            read_delta(&v)
        };
    }
    Ok(total.max(0) as u64)
}

pub(super) fn read_count(v: &[u8]) -> u64 {
    codec::unraw(v)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl Store {
    /// One transaction over every tree of the catalog. That is more trees than sled's tuple
    /// form takes, so it uses the slice form; the view's order is the array's.
    pub(super) fn product_tx<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: Fn(
            &ProductTrees<'_>,
        ) -> Result<T, sled::transaction::ConflictableTransactionError<StoreError>>,
    {
        self.product_tx_with(&[], |t, _| f(t))
    }

    /// [`Store::product_tx`] over `extra` trees as well (an import's job record and logs,
    /// committed with the rows they cover); `f` sees them in the same order.
    pub(super) fn product_tx_with<T, F>(&self, extra: &[&super::kv::Tree], f: F) -> StoreResult<T>
    where
        F: Fn(
            &ProductTrees<'_>,
            &[TxTree],
        ) -> Result<T, sled::transaction::ConflictableTransactionError<StoreError>>,
    {
        let mut trees: Vec<&super::kv::Tree> = vec![
            &self.products,
            &self.product_by_ean,
            &self.product_by_ref,
            &self.products_by_updated,
            &self.counters,
            &self.suppliers,
            &self.supplier_by_code,
            &self.products_by_supplier,
            &self.tombstones,
            &self.categories,
            &self.category_by_name,
            &self.products_by_category,
            &self.category_mappings,
            &self.products_inactive,
            &self.webhook_events,
        ];
        trees.extend_from_slice(extra);
        let result = super::kv::transaction(&trees[..], |t| {
            f(
                &ProductTrees {
                    products: &t[0],
                    by_ean: &t[1],
                    by_ref: &t[2],
                    by_updated: &t[3],
                    counters: &t[4],
                    suppliers: &t[5],
                    supplier_by_code: &t[6],
                    by_supplier: &t[7],
                    tombstones: &t[8],
                    categories: &t[9],
                    category_by_name: &t[10],
                    by_category: &t[11],
                    mappings: &t[12],
                    inactive: &t[13],
                    events: &t[14],
                    switch: self.event_switch(),
                },
                &t[15..],
            )
        })
        .map_err(from_tx);
        // After the commit, never before: an answer computed at the old epoch may not have
        // seen this write.
        if result.is_ok() {
            self.catalog_changed();
            self.events_written();
        }
        result
    }

    pub fn insert_product(&self, ns: Namespace, p: &ProductRecord) -> StoreResult<()> {
        self.product_tx(|t| t.insert(ns, p)?.or_else(abort))
    }

    /// Several product writes in one transaction: each is checked as alone (and sees the ones
    /// before it), and one that fails its checks is skipped with its error while the others
    /// are written. One commit, one catalog epoch move.
    pub fn product_writes(
        &self,
        ns: Namespace,
        writes: &[ProductWrite<'_>],
    ) -> StoreResult<Vec<StoreResult<ProductRecord>>> {
        self.product_tx(|t| {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(match w {
                    ProductWrite::Insert(p) => t.insert(ns, p)?.map(|()| (**p).clone()),
                    ProductWrite::Update(id, change) => t.update(ns, *id, change)?,
                });
            }
            Ok(out)
        })
    }

    /// Replaces a product with `change(current)`; the id and namespace never change.
    pub fn update_product<F>(
        &self,
        ns: Namespace,
        id: ProductId,
        change: F,
    ) -> StoreResult<ProductRecord>
    where
        F: Fn(&ProductRecord) -> Result<ProductRecord, StoreError>,
    {
        self.product_tx(|t| t.update(ns, id, &change)?.or_else(abort))
    }

    /// Deletes the given products, leaving a tombstone for each (change feeds report the
    /// deletion); returns the ids that existed.
    pub fn delete_products(
        &self,
        ns: Namespace,
        ids: &[ProductId],
        now: OffsetDateTime,
    ) -> StoreResult<Vec<ProductId>> {
        self.product_tx(|t| {
            let mut deleted = Vec::new();
            for id in ids {
                let Ok(old) = t.load(ns, *id)? else { continue };
                t.remove_indexes(ns, &old)?;
                t.move_supplier(ns, Some(&old), None)?;
                t.move_categories(ns, Some(&old), None)?;
                t.move_active(ns, Some(&old), None)?;
                t.products.unset(&keys::ns_id(ns, id.as_bytes())[..])?;
                t.bump_count(ns, id.as_bytes(), -1)?;
                let tombstone = super::tombstones::bury(
                    t.tombstones,
                    ns,
                    super::Tombstone {
                        id: *id,
                        ean: old.ean.clone(),
                        reference: old.reference.clone(),
                        deleted_at: now,
                    },
                )?;
                t.emit(ns, EventKind::ProductDeleted, now, || {
                    EventData::Deleted(tombstone.clone())
                })?;
                deleted.push(*id);
            }
            Ok(deleted)
        })
    }

    pub fn product(&self, ns: Namespace, id: ProductId) -> StoreResult<Option<ProductRecord>> {
        self.products
            .get(keys::ns_id(ns, id.as_bytes()))?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    pub fn product_by_ean(&self, ns: Namespace, ean: &str) -> StoreResult<Option<ProductRecord>> {
        match self
            .product_by_ean
            .get(keys::ns_str(ns, ean))?
            .and_then(|v| codec::unraw(&v).and_then(ProductId::from_slice))
        {
            Some(id) => self.product(ns, id),
            None => Ok(None),
        }
    }

    /// The product holding `reference` (the WinDev key) in the namespace.
    pub fn product_by_reference(
        &self,
        ns: Namespace,
        reference: &str,
    ) -> StoreResult<Option<ProductRecord>> {
        match self
            .product_by_ref
            .get(keys::ns_str(ns, reference))?
            .and_then(|v| codec::unraw(&v).and_then(ProductId::from_slice))
        {
            Some(id) => self.product(ns, id),
            None => Ok(None),
        }
    }

    pub fn product_count(&self, ns: Namespace) -> StoreResult<u64> {
        let base = keys::namespace(ns);
        let mut end = base.to_vec();
        end.push(1);
        sum_count(self.counters.range_whole(&base[..]..&end[..]))
    }

    /// Ids of the namespace's products by last change (oldest first unless `newest_first`),
    /// from `since` on (inclusive) when given: a walk of the updated_at index, keys only.
    pub fn product_ids_by_update(
        &self,
        ns: Namespace,
        since: Option<OffsetDateTime>,
        newest_first: bool,
    ) -> Box<dyn Iterator<Item = StoreResult<ProductId>> + '_> {
        let range = super::time_range(&self.products_by_updated, ns, since);
        let id = |item: sled::Result<(sled::IVec, sled::IVec)>| -> StoreResult<ProductId> {
            let (k, _) = item?;
            k.get(33..)
                .and_then(ProductId::from_slice)
                .ok_or_else(|| StoreError::Corrupt("products_by_updated: short key".into()))
        };
        if newest_first {
            Box::new(range.rev().map(id))
        } else {
            Box::new(range.map(id))
        }
    }

    /// The namespace's product changes from `since` on (inclusive), oldest first, as
    /// (`updated_at` in Unix nanoseconds, id): a walk of the updated_at index, keys only.
    pub fn product_changes_from(
        &self,
        ns: Namespace,
        since: OffsetDateTime,
    ) -> impl Iterator<Item = StoreResult<(i128, ProductId)>> + '_ {
        super::time_range(&self.products_by_updated, ns, Some(since)).map(|item| {
            let (k, _) = item?;
            let at = keys::updated_key_nanos(&k);
            let id = k.get(33..).and_then(ProductId::from_slice);
            at.zip(id)
                .ok_or_else(|| StoreError::Corrupt("products_by_updated: short key".into()))
        })
    }

    /// Products of the namespace in creation order (newest first when `newest_first`).
    /// Skips `skip` products before decoding any, so a deep page costs a key walk, not a decode
    /// of every record before it.
    pub fn products_in_order(
        &self,
        ns: Namespace,
        newest_first: bool,
        skip: usize,
    ) -> Box<dyn Iterator<Item = StoreResult<ProductRecord>> + '_> {
        let iter = self.products.scan_prefix(keys::namespace(ns));
        let decode = |item: sled::Result<(sled::IVec, sled::IVec)>| -> StoreResult<ProductRecord> {
            let (_, v) = item?;
            codec::decode(&v)
        };
        if newest_first {
            Box::new(iter.rev().skip(skip).map(decode))
        } else {
            Box::new(iter.skip(skip).map(decode))
        }
    }

    /// Every product of every namespace, in key order (what `reindex` and `check` walk).
    pub fn all_products(
        &self,
    ) -> impl Iterator<Item = StoreResult<(Namespace, ProductRecord)>> + '_ {
        self.products.iter().map(|item| {
            let (k, v) = item?;
            let ns = keys::namespace_of(&k)
                .ok_or_else(|| StoreError::Corrupt("products: bad key".into()))?;
            Ok((ns, codec::decode(&v)?))
        })
    }

    /// The products of every namespace changed or deleted at or after `since`, from the
    /// updated_at index and the tombstones: what a derived index must look at again after a
    /// crash. Reads only those keys plus one per namespace. A product may appear twice.
    pub fn products_changed_since(
        &self,
        since: OffsetDateTime,
    ) -> StoreResult<Vec<(Namespace, ProductId)>> {
        let mut out = Vec::new();
        let tree = &self.products_by_updated;
        for ns in super::namespaces_in(tree) {
            let ns = ns?;
            for k in super::time_range(tree, ns, Some(since)).keys() {
                let k = k?;
                let id = k
                    .get(33..)
                    .and_then(ProductId::from_slice)
                    .ok_or_else(|| StoreError::Corrupt("change index: short key".into()))?;
                out.push((ns, id));
            }
        }
        for ns in super::namespaces_in(&self.tombstones) {
            let ns = ns?;
            for t in self.tombstones_since(ns, since) {
                out.push((ns, t?.id));
            }
        }
        Ok(out)
    }

    /// How many of the namespace's products are inactive (`is_active` false).
    pub fn inactive_count(&self, ns: Namespace) -> StoreResult<u64> {
        Ok(self
            .counters
            .get(keys::inactive_counter(ns))?
            .map_or(0, |v| read_count(&v)))
    }

    /// Ids of the namespace's inactive products in creation order (newest first when
    /// `newest_first`), after skipping `skip`: a walk of their index, keys only.
    pub fn inactive_product_ids(
        &self,
        ns: Namespace,
        newest_first: bool,
        skip: usize,
    ) -> Box<dyn Iterator<Item = StoreResult<ProductId>> + '_> {
        let iter = self
            .products_inactive
            .scan_prefix(keys::namespace(ns))
            .keys();
        let id = |k: sled::Result<sled::IVec>| -> StoreResult<ProductId> {
            k?.get(17..)
                .and_then(ProductId::from_slice)
                .ok_or_else(|| StoreError::Corrupt("products_inactive: short key".into()))
        };
        if newest_first {
            Box::new(iter.rev().skip(skip).map(id))
        } else {
            Box::new(iter.skip(skip).map(id))
        }
    }

    /// Stores written before the inactive-product index: build it once (idempotent).
    pub(super) fn migrate_inactive_index(&self) -> StoreResult<()> {
        const DONE: &str = "products_inactive_built";
        // An empty store stays empty (restore needs one); its products are indexed as they come.
        if self.meta.get(DONE)?.is_some() || self.products.is_empty() {
            return Ok(());
        }
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for item in self.products.iter() {
            let (k, v) = item?;
            let p: ProductRecord = codec::decode(&v)?;
            if !p.is_active {
                self.products_inactive.set(&k, codec::raw(&[]))?;
                *counts.entry(k[..17].to_vec()).or_default() += 1;
            }
        }
        for (ns, n) in counts {
            let key = [ns.as_slice(), keys::INACTIVE.as_bytes()].concat();
            self.counters.set(key, codec::raw(&n.to_be_bytes()))?;
        }
        self.meta.set(DONE, codec::raw(b"1"))?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::lockout::LockoutState;
    use crate::domain::{Environment, TenantId};

    fn product(n: u64, active: bool) -> ProductRecord {
        let mut p =
            crate::catalog::products::blank(ProductId::generate(), OffsetDateTime::now_utc());
        p.ean = crate::domain::Ean::from_body(n).as_str().to_owned();
        p.name = format!("P{n}");
        p.is_active = active;
        p
    }

    #[test]
    fn inactive_products_are_indexed_and_counted_through_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let ns = Namespace {
            tenant: TenantId::generate(),
            environment: Environment::Live,
        };
        let (a, b, c) = (product(1, true), product(2, false), product(3, false));
        for p in [&a, &b, &c] {
            store.insert_product(ns, p).unwrap();
        }
        let ids = |newest_first| {
            store
                .inactive_product_ids(ns, newest_first, 0)
                .collect::<StoreResult<Vec<_>>>()
                .unwrap()
        };
        assert_eq!(ids(false), [b.id, c.id]);
        assert_eq!(ids(true), [c.id, b.id]);
        assert_eq!(store.inactive_count(ns).unwrap(), 2);
        let flip = |id, active| {
            store
                .update_product(ns, id, |p| {
                    Ok(ProductRecord {
                        is_active: active,
                        ..p.clone()
                    })
                })
                .unwrap()
        };
        flip(a.id, false);
        flip(b.id, true);
        assert_eq!(ids(false), [a.id, c.id]);
        store
            .delete_products(ns, &[c.id], OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(
            (ids(false), store.inactive_count(ns).unwrap()),
            (vec![a.id], 1)
        );
        store
            .check_integrity::<LockoutState>()
            .expect("index and counter agree");
        // A counter that disagrees is found.
        store
            .counters
            .set(keys::inactive_counter(ns), codec::raw(&5u64.to_be_bytes()))
            .unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("inactive"), "{err}");
    }

    #[test]
    fn the_product_count_sums_its_base_and_shards_and_check_finds_a_wrong_shard() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let ns = Namespace {
            tenant: TenantId::generate(),
            environment: Environment::Live,
        };
        // Bulk loads count in the base record; creates and deletes in the shards, so a product
        // of the base deleted through its shard leaves that shard negative.
        let loaded: Vec<_> = (100..140).map(|n| product(n, true)).collect();
        store.bulk_insert_products(ns, &loaded).unwrap();
        let created: Vec<_> = (200..230).map(|n| product(n, true)).collect();
        for p in &created {
            store.insert_product(ns, p).unwrap();
        }
        let gone: Vec<_> = loaded[..25]
            .iter()
            .chain(&created[..5])
            .map(|p| p.id)
            .collect();
        store
            .delete_products(ns, &gone, OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(store.product_count(ns).unwrap(), 40);
        let shards = store
            .counters
            .scan_prefix(keys::namespace(ns))
            .keys()
            .filter(|k| k.as_ref().is_ok_and(|k| k.len() == 19))
            .count();
        assert!(shards > 10, "creates spread over the shards ({shards})");
        store
            .check_integrity::<LockoutState>()
            .expect("the count agrees with the products");
        // A count written with PostgreSQL's wider layout (a migrated or restored store) reads
        // and checks the same: one shard's delta moved to a shard beyond sled's 64.
        let moved = keys::count_shard(ns, created[0].id.as_bytes(), keys::COUNT_SHARDS);
        let mut wide = moved;
        wide[18] = 200;
        let delta = store.counters.remove(moved).unwrap().expect("a shard");
        store.counters.set(wide, delta.clone()).unwrap();
        assert_eq!(store.product_count(ns).unwrap(), 40);
        store
            .check_integrity::<LockoutState>()
            .expect("a shard beyond 64 is a shard");
        store.counters.remove(wide).unwrap();
        store.counters.set(moved, delta).unwrap();
        let shard = keys::count_shard(ns, created[6].id.as_bytes(), keys::COUNT_SHARDS);
        store
            .counters
            .set(shard, codec::raw(&7i64.to_be_bytes()))
            .unwrap();
        let err = store.check_integrity::<LockoutState>().unwrap_err();
        assert!(err.to_string().contains("products"), "{err}");
    }

    #[test]
    fn products_from_before_the_inactive_index_are_indexed_once_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace {
            tenant: TenantId::generate(),
            environment: Environment::Test,
        };
        let old = product(7, false);
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            store.insert_product(ns, &old).unwrap();
            // What an older version left: no index entry, no counter.
            store.products_inactive.clear().unwrap();
            store.counters.remove(keys::inactive_counter(ns)).unwrap();
            store.meta.remove("products_inactive_built").unwrap();
            store.db.flush().unwrap();
            assert!(store.check_integrity::<LockoutState>().is_err());
        }
        let store = crate::store::reopen(dir.path());
        assert_eq!(store.inactive_count(ns).unwrap(), 1);
        store
            .check_integrity::<LockoutState>()
            .expect("rebuilt at open");
    }
}
