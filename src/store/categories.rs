//! The category tree of a namespace and its channel mappings (key layouts in [`keys`]).
//!
//! The name index gives sibling uniqueness and the children of a node (a prefix scan). Every
//! category or mapping write bumps a per-namespace version (in `counters`). A move or delete
//! reads the subtree before its transaction, since sled cannot scan inside one; the transaction
//! then refuses to go on (a retryable conflict) when the version says the tree changed
//! meanwhile. Product writes keep each category's `product_count` and the product index in the
//! product's own transaction, without bumping the version; a cascading delete checks the
//! products it read against those counts instead.
use super::products::{ProductRecord, ProductTrees};
use super::{Namespace, Store, StoreError, StoreResult, abort, codec, keys};
use crate::domain::ProductId;
use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use std::collections::{BTreeSet, HashMap, HashSet};
use time::OffsetDateTime;
use uuid::Uuid;

/// How deep the tree may nest: a root is at depth 1. Eight levels hold every shop taxonomy we
/// know of (Google's product taxonomy goes seven deep) and keep a path readable.
pub const MAX_DEPTH: u32 = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryRecord {
    pub id: Uuid,
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub position: u32,
    /// The names from the root down to this one, `/`-joined.
    pub path: String,
    /// 1 for a root.
    pub depth: u32,
    /// Products that list this category (not its descendants); kept by every product write.
    pub product_count: u64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingRecord {
    pub id: Uuid,
    pub category_id: Uuid,
    pub channel: String,
    pub external_id: String,
    pub external_name: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// What a category write asks for; the store computes path and depth from the parent it finds
/// inside the transaction.
#[derive(Debug, Clone)]
pub struct CategoryPlacement {
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub position: u32,
}

type TxError = ConflictableTransactionError<StoreError>;

/// The name index's prefix for the children of `parent` (the nil id for the roots).
fn children_prefix(ns: Namespace, parent: Option<Uuid>) -> [u8; 33] {
    keys::ns_id(ns, parent.unwrap_or(Uuid::nil()).as_bytes())
}

fn name_key(ns: Namespace, parent: Option<Uuid>, name: &str) -> Vec<u8> {
    keys::ns_id_str(
        ns,
        parent.unwrap_or(Uuid::nil()).as_bytes(),
        &name.to_lowercase(),
    )
}

/// The tree's version lives in `counters` beside the namespace's product count.
fn version_key(ns: Namespace) -> Vec<u8> {
    keys::ns_str(ns, "categories")
}

fn child_path(parent: Option<&CategoryRecord>, name: &str) -> (String, u32) {
    match parent {
        Some(p) => (format!("{}/{name}", p.path), p.depth + 1),
        None => (name.to_owned(), 1),
    }
}

impl ProductTrees<'_> {
    fn category_version(&self, ns: Namespace) -> Result<u64, TxError> {
        Ok(self
            .counters
            .get(version_key(ns))?
            .map_or(0, |v| super::products::read_count(&v)))
    }

    /// Refuses to go on when the tree changed since `expected` was read (`None`: whatever it
    /// is); bumps the version.
    fn claim_version(&self, ns: Namespace, expected: Option<u64>) -> Result<(), TxError> {
        let current = self.category_version(ns)?;
        if expected.is_some_and(|e| e != current) {
            return abort(StoreError::Retry);
        }
        self.counters
            .set(version_key(ns), codec::raw(&(current + 1).to_be_bytes()))?;
        Ok(())
    }

    fn load_category(&self, ns: Namespace, id: Uuid) -> Result<Option<CategoryRecord>, TxError> {
        match self.categories.get(keys::ns_id(ns, id.as_bytes()))? {
            Some(v) => Ok(Some(codec::decode(&v).or_else(abort)?)),
            None => Ok(None),
        }
    }

    fn put_category(&self, ns: Namespace, c: &CategoryRecord) -> Result<(), TxError> {
        self.categories
            .set(&keys::ns_id(ns, c.id.as_bytes())[..], codec::encode(c))?;
        Ok(())
    }

    /// Refuses a category id that `old` did not already list and that names no category.
    pub(super) fn check_categories(
        &self,
        ns: Namespace,
        old: Option<&ProductRecord>,
        p: &ProductRecord,
    ) -> Result<Result<(), StoreError>, TxError> {
        for id in &p.category_ids {
            if old.is_some_and(|o| o.category_ids.contains(id)) {
                continue;
            }
            if self
                .categories
                .get(keys::ns_id(ns, id.as_bytes()))?
                .is_none()
            {
                return Ok(Err(StoreError::Missing {
                    field: "category_ids",
                    what: "category",
                }));
            }
        }
        Ok(Ok(()))
    }

    /// Moves the category index entries and counts from `old` to `new` (either absent for a
    /// create or a delete).
    pub(super) fn move_categories(
        &self,
        ns: Namespace,
        old: Option<&ProductRecord>,
        new: Option<&ProductRecord>,
    ) -> Result<(), sled::transaction::UnabortableTransactionError> {
        let before: HashSet<Uuid> = old
            .map(|p| p.category_ids.iter().copied().collect())
            .unwrap_or_default();
        let after: HashSet<Uuid> = new
            .map(|p| p.category_ids.iter().copied().collect())
            .unwrap_or_default();
        let Some(pid) = old.or(new).map(|p| p.id) else {
            return Ok(());
        };
        for c in before.difference(&after) {
            self.by_category
                .unset(&keys::ns_pair(ns, c.as_bytes(), pid.as_bytes())[..])?;
            self.count_category(ns, *c, -1)?;
        }
        for c in after.difference(&before) {
            self.by_category.set(
                &keys::ns_pair(ns, c.as_bytes(), pid.as_bytes())[..],
                codec::raw(&[]),
            )?;
            self.count_category(ns, *c, 1)?;
        }
        Ok(())
    }

    /// Moves a category's product count (an id kept from before categories were records has
    /// nothing to count).
    fn count_category(
        &self,
        ns: Namespace,
        id: Uuid,
        delta: i64,
    ) -> Result<(), sled::transaction::UnabortableTransactionError> {
        super::products::edit_record(
            self.categories,
            &keys::ns_id(ns, id.as_bytes()),
            |c: &mut CategoryRecord| c.product_count = c.product_count.saturating_add_signed(delta),
        )
    }

    /// The parent a category is placed under, refusing an unknown one and a tree deeper than
    /// [`MAX_DEPTH`] once `extra_depth` levels hang below the placed category.
    fn parent_for(
        &self,
        ns: Namespace,
        parent_id: Option<Uuid>,
        extra_depth: u32,
    ) -> Result<Option<CategoryRecord>, TxError> {
        let parent = match parent_id {
            Some(pid) => match self.load_category(ns, pid)? {
                Some(p) => Some(p),
                None => {
                    return abort(StoreError::Missing {
                        field: "parent_id",
                        what: "category",
                    });
                }
            },
            None => None,
        };
        let depth = parent.as_ref().map_or(1, |p| p.depth + 1);
        if depth + extra_depth > MAX_DEPTH {
            return abort(StoreError::Invalid {
                field: "parent_id",
                problem: "the tree would nest deeper than 8 levels",
            });
        }
        Ok(parent)
    }
}

impl Store {
    /// Stores written before categories were records hold products whose `category_ids` no
    /// index lists: index them once (idempotent). Those ids name no category record; they stay
    /// as the client wrote them, counted by nothing, until a write changes them.
    pub(super) fn migrate_category_index(&self) -> StoreResult<()> {
        const DONE: &str = "products_by_category_built";
        // An empty store stays empty (restore needs one); its products are indexed as they come.
        if self.meta.get(DONE)?.is_some() || self.products.is_empty() {
            return Ok(());
        }
        for item in self.products.iter() {
            let (k, v) = item?;
            let p: ProductRecord = codec::decode(&v)?;
            for c in &p.category_ids {
                let mut key = Vec::with_capacity(49);
                key.extend_from_slice(&k[..17]);
                key.extend_from_slice(c.as_bytes());
                key.extend_from_slice(p.id.as_bytes());
                self.products_by_category.set(key, codec::raw(&[]))?;
            }
        }
        self.meta.set(DONE, codec::raw(b"1"))?;
        self.db.flush()?;
        Ok(())
    }

    /// The namespace's tree version, read before preparing a category write.
    pub fn category_version(&self, ns: Namespace) -> StoreResult<u64> {
        Ok(self
            .counters
            .get(version_key(ns))?
            .map_or(0, |v| super::products::read_count(&v)))
    }

    pub fn category(&self, ns: Namespace, id: Uuid) -> StoreResult<Option<CategoryRecord>> {
        self.categories
            .get(keys::ns_id(ns, id.as_bytes()))?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// Every category of the namespace (a namespace holds thousands, not millions).
    pub fn categories(&self, ns: Namespace) -> StoreResult<Vec<CategoryRecord>> {
        self.categories
            .scan_prefix(keys::namespace(ns))
            .values()
            .map(|v| codec::decode(&v?))
            .collect()
    }

    /// The direct children of `parent` (the roots for `None`), from the name index.
    pub fn category_children(
        &self,
        ns: Namespace,
        parent: Option<Uuid>,
    ) -> StoreResult<Vec<CategoryRecord>> {
        let mut out = Vec::new();
        for v in self
            .category_by_name
            .scan_prefix(children_prefix(ns, parent))
            .values()
        {
            let v = v?;
            let id = codec::unraw(&v)
                .and_then(|b| Uuid::from_slice(b).ok())
                .ok_or_else(|| StoreError::Corrupt("category_by_name: bad value".into()))?;
            if let Some(c) = self.category(ns, id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// `id` and every category below it, parents before children; empty when `id` is unknown.
    pub fn category_subtree(&self, ns: Namespace, id: Uuid) -> StoreResult<Vec<CategoryRecord>> {
        let Some(root) = self.category(ns, id)? else {
            return Ok(Vec::new());
        };
        let mut out = vec![root];
        let mut next = 0;
        while next < out.len() {
            let children = self.category_children(ns, Some(out[next].id))?;
            out.extend(children);
            next += 1;
        }
        Ok(out)
    }

    /// Ids of the products that list `category`, from the index.
    pub fn product_ids_in_category(
        &self,
        ns: Namespace,
        category: Uuid,
    ) -> StoreResult<Vec<ProductId>> {
        super::product_ids_under(
            &self.products_by_category,
            &keys::ns_id(ns, category.as_bytes()),
            "products_by_category",
        )
    }

    /// Creates a category under the parent `place` names, its path and depth taken from the
    /// parent as the transaction finds it.
    pub fn insert_category(
        &self,
        ns: Namespace,
        id: Uuid,
        place: &CategoryPlacement,
        version: u64,
        now: OffsetDateTime,
    ) -> StoreResult<CategoryRecord> {
        self.product_tx(|t| {
            t.claim_version(ns, Some(version))?;
            let parent = t.parent_for(ns, place.parent_id, 0)?;
            let key = name_key(ns, place.parent_id, &place.name);
            if t.category_by_name.get(&key)?.is_some() {
                return abort(StoreError::Duplicate(super::Unique::CategoryName));
            }
            let (path, depth) = child_path(parent.as_ref(), &place.name);
            let record = CategoryRecord {
                id,
                name: place.name.clone(),
                parent_id: place.parent_id,
                position: place.position,
                path,
                depth,
                product_count: 0,
                created_at: now,
                updated_at: now,
            };
            t.category_by_name.set(key, codec::raw(id.as_bytes()))?;
            t.put_category(ns, &record)?;
            Ok(record)
        })
    }

    /// Renames, moves or reorders a category. `subtree` is what [`Store::category_subtree`]
    /// read at `version`; a new path or depth is written down the whole subtree in the same
    /// transaction. A parent inside the subtree is refused (it would make a cycle).
    pub fn update_category(
        &self,
        ns: Namespace,
        subtree: &[CategoryRecord],
        place: &CategoryPlacement,
        version: u64,
        now: OffsetDateTime,
    ) -> StoreResult<CategoryRecord> {
        let Some(root) = subtree.first() else {
            return Err(StoreError::NotFound);
        };
        let inside: HashSet<Uuid> = subtree.iter().map(|c| c.id).collect();
        let below = subtree.iter().map(|c| c.depth).max().unwrap_or(root.depth) - root.depth;
        self.product_tx(|t| {
            t.claim_version(ns, Some(version))?;
            let Some(old) = t.load_category(ns, root.id)? else {
                return abort(StoreError::NotFound);
            };
            if place.parent_id.is_some_and(|p| inside.contains(&p)) {
                return abort(StoreError::Invalid {
                    field: "parent_id",
                    problem: "a category cannot move under itself or one of its descendants",
                });
            }
            let parent = t.parent_for(ns, place.parent_id, below)?;
            let old_key = name_key(ns, old.parent_id, &old.name);
            let new_key = name_key(ns, place.parent_id, &place.name);
            if new_key != old_key {
                if t.category_by_name.get(&new_key)?.is_some() {
                    return abort(StoreError::Duplicate(super::Unique::CategoryName));
                }
                t.category_by_name.unset(old_key)?;
                t.category_by_name
                    .set(new_key, codec::raw(old.id.as_bytes()))?;
            }
            let (path, depth) = child_path(parent.as_ref(), &place.name);
            let moved = path != old.path || depth != old.depth;
            let new = CategoryRecord {
                name: place.name.clone(),
                parent_id: place.parent_id,
                position: place.position,
                path,
                depth,
                updated_at: now,
                ..old
            };
            t.put_category(ns, &new)?;
            if moved {
                let mut placed: HashMap<Uuid, (String, u32)> = HashMap::new();
                placed.insert(new.id, (new.path.clone(), new.depth));
                for node in &subtree[1..] {
                    let Some(mut c) = t.load_category(ns, node.id)? else {
                        return abort(StoreError::Retry);
                    };
                    let Some((parent_path, parent_depth)) =
                        c.parent_id.and_then(|p| placed.get(&p)).cloned()
                    else {
                        return abort(StoreError::Retry);
                    };
                    c.path = format!("{parent_path}/{}", c.name);
                    c.depth = parent_depth + 1;
                    c.updated_at = now;
                    placed.insert(c.id, (c.path.clone(), c.depth));
                    t.put_category(ns, &c)?;
                }
            }
            Ok(new)
        })
    }

    /// Deletes a category. With children or products it is refused (`Conflict`) unless
    /// `cascade`: then the whole `subtree` goes, with its mappings, and every product of
    /// `products` loses those categories. `subtree` and `products` (the ids the product index
    /// held for the subtree) were read at `version`; the product count of the subtree's
    /// records must match what the products list, or a product changed meanwhile and the
    /// caller retries. Returns how many products were detached.
    pub fn delete_category(
        &self,
        ns: Namespace,
        subtree: &[CategoryRecord],
        products: &BTreeSet<ProductId>,
        cascade: bool,
        version: u64,
        now: OffsetDateTime,
    ) -> StoreResult<u64> {
        let Some(root) = subtree.first() else {
            return Err(StoreError::NotFound);
        };
        let doomed: HashSet<Uuid> = subtree.iter().map(|c| c.id).collect();
        // Every mapping of the subtree, or the error: a list cut short would leave mappings of
        // deleted categories behind.
        let mut channels: Vec<Vec<u8>> = Vec::new();
        for c in subtree {
            for k in self
                .category_mappings
                .scan_prefix(keys::ns_id(ns, c.id.as_bytes()))
                .keys()
            {
                channels.push(k?.to_vec());
            }
        }
        self.product_tx(|t| {
            t.claim_version(ns, Some(version))?;
            let Some(old) = t.load_category(ns, root.id)? else {
                return abort(StoreError::NotFound);
            };
            if !cascade && subtree.len() > 1 {
                return abort(StoreError::Conflict(
                    "the category has subcategories; delete with ?cascade=true to delete them too",
                ));
            }
            if !cascade && old.product_count > 0 {
                return abort(StoreError::Conflict(
                    "products are in this category; delete with ?cascade=true to take them out of it",
                ));
            }
            let mut expected = 0u64;
            for c in subtree {
                let Some(fresh) = t.load_category(ns, c.id)? else {
                    return abort(StoreError::Retry);
                };
                expected += fresh.product_count;
            }
            let mut memberships = 0u64;
            let mut detached = 0u64;
            for pid in products {
                let Ok(old) = t.load(ns, *pid)? else { continue };
                let gone = old.category_ids.iter().filter(|c| doomed.contains(c)).count();
                if gone == 0 {
                    continue;
                }
                memberships += gone as u64;
                detached += 1;
                let mut new = old.clone();
                new.category_ids.retain(|c| !doomed.contains(c));
                new.updated_at = now;
                t.remove_indexes(ns, &old)?;
                t.add_indexes(ns, &new)?;
                for c in old.category_ids.iter().filter(|c| doomed.contains(c)) {
                    t.by_category
                        .unset(&keys::ns_pair(ns, c.as_bytes(), pid.as_bytes())[..])?;
                }
                t.products
                    .set(&keys::ns_id(ns, pid.as_bytes())[..], codec::encode(&new))?;
                t.emit_product(ns, super::EventKind::ProductUpdated, &new)?;
            }
            if memberships != expected {
                return abort(StoreError::Retry);
            }
            for c in subtree {
                t.category_by_name
                    .unset(name_key(ns, c.parent_id, &c.name))?;
                t.categories.unset(&keys::ns_id(ns, c.id.as_bytes())[..])?;
            }
            for k in &channels {
                t.mappings.unset(k.as_slice())?;
            }
            Ok(detached)
        })
    }

    /// Every mapping of the namespace, or of one channel.
    pub fn category_mappings(
        &self,
        ns: Namespace,
        channel: Option<&str>,
    ) -> StoreResult<Vec<MappingRecord>> {
        let mut out = Vec::new();
        for v in self
            .category_mappings
            .scan_prefix(keys::namespace(ns))
            .values()
        {
            let m: MappingRecord = codec::decode(&v?)?;
            if channel.is_none_or(|c| m.channel == c) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Creates or replaces the mapping of `category` for `m.channel` (its id and creation time
    /// stay on a replace). `NotFound` when the category does not exist.
    pub fn put_category_mapping(
        &self,
        ns: Namespace,
        m: &MappingRecord,
    ) -> StoreResult<(MappingRecord, bool)> {
        let key = keys::ns_id_str(ns, m.category_id.as_bytes(), &m.channel);
        self.product_tx(|t| {
            if t.load_category(ns, m.category_id)?.is_none() {
                return abort(StoreError::NotFound);
            }
            t.claim_version(ns, None)?;
            let old: Option<MappingRecord> = match t.mappings.get(&key)? {
                Some(v) => Some(codec::decode(&v).or_else(abort)?),
                None => None,
            };
            let created = old.is_none();
            let record = match old {
                Some(o) => MappingRecord {
                    id: o.id,
                    created_at: o.created_at,
                    ..m.clone()
                },
                None => m.clone(),
            };
            t.mappings.set(key.as_slice(), codec::encode(&record))?;
            Ok((record, created))
        })
    }

    /// Removes a mapping; `NotFound` when there is none.
    pub fn delete_category_mapping(
        &self,
        ns: Namespace,
        category: Uuid,
        channel: &str,
    ) -> StoreResult<()> {
        let key = keys::ns_id_str(ns, category.as_bytes(), channel);
        self.product_tx(|t| {
            if t.mappings.remove(key.as_slice())?.is_none() {
                return abort(StoreError::NotFound);
            }
            t.claim_version(ns, None)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::lockout::LockoutState;
    use crate::domain::{Environment, TenantId};

    #[test]
    fn products_from_before_categories_are_indexed_once_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace {
            tenant: TenantId::generate(),
            environment: Environment::Live,
        };
        let legacy = Uuid::now_v7();
        let id = {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let now = OffsetDateTime::now_utc();
            let mut p = crate::catalog::products::blank(ProductId::generate(), now);
            p.ean = "4006381333931".into();
            p.name = "Old".into();
            store.insert_product(ns, &p).unwrap();
            // What an older version stored: a category id no record stands for, no index entry.
            p.category_ids = vec![legacy];
            store
                .products
                .set(keys::ns_id(ns, p.id.as_bytes()), codec::encode(&p))
                .unwrap();
            store.meta.remove("products_by_category_built").unwrap();
            store.db.flush().unwrap();
            assert!(
                store.check_integrity::<LockoutState>().is_err(),
                "no index entry yet"
            );
            p.id
        };
        let store = crate::store::reopen(dir.path());
        assert_eq!(store.product_ids_in_category(ns, legacy).unwrap(), vec![id]);
        store
            .check_integrity::<LockoutState>()
            .expect("the index agrees, and a category id from before is kept");
    }
}
