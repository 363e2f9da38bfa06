//! Products: validation, create / replace / patch / delete, and listing with filters.
//!
//! One patch type serves POST, PUT and PATCH: create and replace apply it to an empty record
//! and then require `ean` and `name`; PATCH applies it to the stored record. `null` clears an
//! optional field and is refused for required ones.
use super::field::Field;
use crate::clock::SharedClock;
use crate::domain::{Ean, Invalid, ProductId};
use crate::error::Error;
use crate::search::SearchIndex;
use crate::store::{Namespace, ProductRecord, Store, StoreError, Tombstone};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

pub const MAX_BULK_DELETE: usize = 1000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProductPatch {
    pub ean: Field<String>,
    /// Read-only (it always equals `ean`): accepted only when it does, so a client may send
    /// back what it read.
    pub barcode: Field<String>,
    pub sku: Field<String>,
    pub reference: Field<String>,
    pub name: Field<String>,
    pub description: Field<String>,
    pub brand: Field<String>,
    pub price: Field<f64>,
    pub cost_price: Field<f64>,
    pub currency: Field<String>,
    pub weight: Field<f64>,
    #[serde(deserialize_with = "super::field::whole_field")]
    pub stock: Field<i64>,
    pub is_active: Field<bool>,
    pub supplier_id: Field<Uuid>,
    pub supplier_code: Field<String>,
    pub category_ids: Field<Vec<Uuid>>,
    pub attributes: Field<BTreeMap<String, String>>,
}

fn text(
    errors: &mut Vec<Invalid>,
    field: &str,
    value: Field<String>,
    max: usize,
    slot: &mut Option<String>,
) {
    match value {
        Field::Absent => {}
        Field::Null => *slot = None,
        Field::Value(v) => {
            let v = v.trim().to_owned();
            if v.chars().count() > max {
                errors.push(Invalid::new(
                    field,
                    format!("must be at most {max} characters"),
                ));
            } else {
                *slot = (!v.is_empty()).then_some(v);
            }
        }
    }
}

fn amount(errors: &mut Vec<Invalid>, field: &str, value: Field<f64>, slot: &mut Option<f64>) {
    match value {
        Field::Absent => {}
        Field::Null => *slot = None,
        Field::Value(v) if (0.0..1e15).contains(&v) => *slot = Some(v),
        Field::Value(_) => errors.push(Invalid::new(field, "must be a number from 0 to 10^15")),
    }
}

fn required<T>(errors: &mut Vec<Invalid>, field: &str, value: Field<T>, slot: &mut T) {
    match value {
        Field::Absent => {}
        Field::Null => errors.push(Invalid::new(field, "must not be null")),
        Field::Value(v) => *slot = v,
    }
}

impl ProductPatch {
    /// Applies the patch to `p`, collecting every problem rather than stopping at the first.
    pub fn apply(self, p: &mut ProductRecord) -> Result<(), Vec<Invalid>> {
        let mut errors = Vec::new();
        let e = &mut errors;
        match self.ean {
            Field::Absent => {}
            Field::Null => e.push(Invalid::new("ean", "must not be null")),
            Field::Value(v) => match Ean::parse(&v) {
                Ok(ean) => p.ean = ean.as_str().to_owned(),
                Err(err) => e.push(err),
            },
        }
        match self.barcode {
            Field::Absent => {}
            Field::Value(b) if b.trim() == p.ean => {}
            _ => e.push(Invalid::new(
                "barcode",
                "is read-only: it always equals ean (set ean instead)",
            )),
        }
        match self.name {
            Field::Absent => {}
            Field::Null => e.push(Invalid::new("name", "must not be null")),
            Field::Value(v) if v.trim().is_empty() || v.chars().count() > 500 => {
                e.push(Invalid::new("name", "must be 1 to 500 characters"))
            }
            Field::Value(v) => p.name = v.trim().to_owned(),
        }
        text(e, "sku", self.sku, 100, &mut p.sku);
        text(e, "reference", self.reference, 100, &mut p.reference);
        text(
            e,
            "description",
            self.description,
            20_000,
            &mut p.description,
        );
        text(e, "brand", self.brand, 200, &mut p.brand);
        text(
            e,
            "supplier_code",
            self.supplier_code,
            100,
            &mut p.supplier_code,
        );
        amount(e, "price", self.price, &mut p.price);
        amount(e, "cost_price", self.cost_price, &mut p.cost_price);
        amount(e, "weight", self.weight, &mut p.weight);
        match self.currency {
            Field::Value(c) if !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())) => e
                .push(Invalid::new(
                    "currency",
                    "must be a three-letter ISO 4217 code such as EUR",
                )),
            other => required(e, "currency", other, &mut p.currency),
        }
        required(e, "stock", self.stock, &mut p.stock);
        required(e, "is_active", self.is_active, &mut p.is_active);
        match self.supplier_id {
            Field::Absent => {}
            Field::Null => p.supplier_id = None,
            Field::Value(id) => p.supplier_id = Some(id),
        }
        match self.category_ids {
            Field::Value(ids) if ids.len() > 100 => {
                e.push(Invalid::new("category_ids", "at most 100 categories"))
            }
            Field::Value(ids) => {
                let mut seen = std::collections::HashSet::new();
                p.category_ids = ids.into_iter().filter(|id| seen.insert(*id)).collect();
            }
            other => required(e, "category_ids", other, &mut p.category_ids),
        }
        match self.attributes {
            Field::Value(a)
                if a.len() > 200
                    || a.iter().any(|(k, v)| {
                        k.is_empty() || k.chars().count() > 100 || v.chars().count() > 2000
                    }) =>
            {
                e.push(Invalid::new(
                    "attributes",
                    "at most 200 entries; keys 1 to 100 characters, values at most 2000",
                ))
            }
            other => required(e, "attributes", other, &mut p.attributes),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    #[default]
    CreatedAt,
    UpdatedAt,
    Name,
    Price,
}

#[derive(Debug, Default)]
pub struct ListQuery {
    pub search: Option<String>,
    pub is_active: Option<bool>,
    /// Products changed at or after this time.
    pub updated_since: Option<OffsetDateTime>,
    pub supplier_id: Option<Uuid>,
    pub category_id: Option<Uuid>,
    /// `None`: relevance order for a search, creation order otherwise.
    pub sort_by: Option<SortBy>,
    pub descending: bool,
    pub offset: usize,
    pub limit: usize,
}

impl ListQuery {
    fn has_filters(&self) -> bool {
        self.search.is_some()
            || self.is_active.is_some()
            || self.supplier_id.is_some()
            || self.category_id.is_some()
    }

    /// Every filter but the search text (the index answers that one).
    /// `categories`: the filter's category and its descendants, when `category_id` is given.
    fn matches(&self, p: &ProductRecord, categories: Option<&HashSet<Uuid>>) -> bool {
        if self.updated_since.is_some_and(|t| p.updated_at < t) {
            return false;
        }
        self.is_active.is_none_or(|a| p.is_active == a)
            && self.supplier_id.is_none_or(|s| p.supplier_id == Some(s))
            && categories.is_none_or(|set| p.category_ids.iter().any(|c| set.contains(c)))
    }
}

/// Rendered list answers, each kept with the epoch it was computed at and reused only while
/// that epoch holds: the store's catalog epoch (any product write moves it) and the search
/// index's commit count (a search answer computed before the index took a write in is not
/// kept past the commit that brings it). A read-mostly catalog answers its popular pages and
/// searches without reading or serializing them again.
#[derive(Default)]
pub struct PageCache {
    pages: std::sync::Mutex<Pages>,
}

#[derive(Default)]
struct Pages {
    map: std::collections::HashMap<(Namespace, String), CachedPage>,
    /// What the kept answers and their keys weigh.
    bytes: usize,
}

/// What a kept answer is valid for: the store's catalog epoch and the search index's commits.
pub type Epoch = (u64, u64);

/// The epoch an answer was computed at, and the answer.
type CachedPage = (Epoch, Arc<[u8]>);

/// Pages kept at most, and their weight at most: the cache starts over when either is reached.
/// An answer heavier than a sixteenth of the budget (a long change feed) is not kept.
const CACHED_PAGES: usize = 1024;
const CACHED_BYTES: usize = 8 << 20;

#[derive(Clone)]
pub struct Catalog {
    store: Store,
    clock: SharedClock,
    search: SearchIndex,
    pages: Arc<PageCache>,
    /// How long tombstones of deleted products are kept; `None` keeps them for ever.
    tombstone_retention: Option<time::Duration>,
}

/// Most tombstones one list answer carries; `deleted_more` says when there are more.
pub const MAX_DELETED: usize = 1000;

/// What a single-product write changed, for the search index.
fn one_product(p: &ProductRecord) -> Vec<ProductId> {
    vec![p.id]
}

/// An update's result: a product that is gone is a 404.
fn finish_update(updated: Result<ProductRecord, StoreError>) -> Result<ProductRecord, Error> {
    updated.map_err(|e| match e {
        StoreError::NotFound => Error::not_found("product"),
        other => other.into(),
    })
}

/// A product with every optional field empty (what POST and PUT build on).
pub fn blank(id: ProductId, now: OffsetDateTime) -> ProductRecord {
    ProductRecord {
        id,
        ean: String::new(),
        sku: None,
        reference: None,
        name: String::new(),
        description: None,
        brand: None,
        price: None,
        cost_price: None,
        currency: "EUR".into(),
        weight: None,
        stock: 0,
        is_active: true,
        supplier_id: None,
        supplier_code: None,
        category_ids: Vec::new(),
        attributes: BTreeMap::new(),
        created_at: now,
        updated_at: now,
    }
}

/// `old` with `patch` applied and stamped `at`, inside a store update. The patch was checked
/// against the record read before; failing now means the record changed meanwhile.
pub(super) fn patched(
    patch: &ProductPatch,
    old: &ProductRecord,
    at: OffsetDateTime,
) -> Result<ProductRecord, StoreError> {
    let mut next = old.clone();
    patch
        .clone()
        .apply(&mut next)
        .map_err(|_| StoreError::Conflict("the product changed during the update; retry"))?;
    next.updated_at = at;
    Ok(next)
}

/// A full record built from a patch: `ean` and `name` are required.
pub fn complete(patch: ProductPatch, mut base: ProductRecord) -> Result<ProductRecord, Error> {
    let mut missing = Vec::new();
    if patch.ean.is_absent() {
        missing.push(Invalid::new("ean", "is required"));
    }
    if patch.name.is_absent() {
        missing.push(Invalid::new("name", "is required"));
    }
    let applied = patch.apply(&mut base);
    let mut errors = missing;
    errors.extend(applied.err().unwrap_or_default());
    if errors.is_empty() {
        Ok(base)
    } else {
        Err(Error::invalid(errors))
    }
}

impl Catalog {
    pub fn new(store: Store, clock: SharedClock, search: SearchIndex) -> Self {
        Catalog {
            store,
            clock,
            search,
            pages: Arc::default(),
            tombstone_retention: Some(time::Duration::days(90)),
        }
    }

    /// Keeps tombstones this long (`None`: for ever).
    pub fn with_tombstone_retention(mut self, keep: Option<time::Duration>) -> Self {
        self.tombstone_retention = keep;
        self
    }

    /// Drops the tombstones older than the retention; returns how many.
    pub fn sweep_tombstones(&self) -> Result<usize, Error> {
        match self.tombstone_retention {
            Some(keep) => Ok(self.store.sweep_tombstones(self.clock.now() - keep)?),
            None => Ok(0),
        }
    }

    /// The products deleted at or after `since`, oldest first, at most `MAX_DELETED`; and
    /// whether more follow (the client asks again from the last one's `deleted_at`).
    pub fn deleted_since(
        &self,
        ns: Namespace,
        since: OffsetDateTime,
    ) -> Result<(Vec<Tombstone>, bool), Error> {
        let mut out = Vec::new();
        for t in self.store.tombstones_since(ns, since) {
            if out.len() == MAX_DELETED {
                return Ok((out, true));
            }
            out.push(t?);
        }
        Ok((out, false))
    }

    /// Turns the patch's supplier fields into a consistent pair: a code or an id names a
    /// supplier (422 when it names none) and fills in the other; `null` or an empty code on
    /// either, with nothing naming a supplier, clears both.
    pub(super) fn resolve_supplier(
        &self,
        ns: Namespace,
        patch: &mut ProductPatch,
    ) -> Result<(), Error> {
        let id = match &patch.supplier_id {
            Field::Value(i) => Some(*i),
            _ => None,
        };
        let code = match &patch.supplier_code {
            Field::Value(c) if !c.trim().is_empty() => Some(c.trim().to_owned()),
            _ => None,
        };
        if id.is_none() && code.is_none() {
            let clears =
                matches!(patch.supplier_id, Field::Null) || !patch.supplier_code.is_absent();
            if clears {
                patch.supplier_id = Field::Null;
                patch.supplier_code = Field::Null;
            }
            return Ok(());
        }
        if let Some(s) = super::suppliers::resolve(&self.store, ns, id, code.as_deref())? {
            patch.supplier_id = Field::Value(s.id);
            patch.supplier_code = Field::Value(s.code);
        }
        Ok(())
    }

    pub async fn create(
        &self,
        ns: Namespace,
        mut patch: ProductPatch,
    ) -> Result<ProductRecord, Error> {
        self.resolve_supplier(ns, &mut patch)?;
        let stamp = self.stamp();
        let product = complete(patch, blank(ProductId::generate(), stamp.at))?;
        let written = self.write_durably(ns, one_product, move |store| {
            let inserted = store.insert_product(ns, &product);
            drop(stamp);
            inserted.map(|()| product)
        });
        Ok(written.await??)
    }

    /// Runs a product write off the request workers and waits until it is durable
    /// ([`Store::write_durable`]). Once the flush is done, the search index hears which
    /// products it wrote, even when the client hung up meanwhile. As with
    /// [`Catalog::made_durable`], the indexer only reads what a flush covered.
    async fn write_durably<R, F>(
        &self,
        ns: Namespace,
        changed: fn(&R) -> Vec<ProductId>,
        write: F,
    ) -> Result<Result<R, StoreError>, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    {
        let search = self.search.clone();
        let (written, flushed) = self
            .store
            .write_durable(write, move |written: &Result<R, StoreError>| {
                if let Ok(r) = written {
                    search.changed(ns, changed(r));
                }
            })
            .await?;
        flushed?;
        Ok(written)
    }

    pub fn get(&self, ns: Namespace, id: ProductId) -> Result<ProductRecord, Error> {
        self.store
            .product(ns, id)?
            .ok_or_else(|| Error::not_found("product"))
    }

    /// PUT: replaces every field (created_at stays).
    pub async fn replace(
        &self,
        ns: Namespace,
        id: ProductId,
        mut patch: ProductPatch,
    ) -> Result<ProductRecord, Error> {
        self.resolve_supplier(ns, &mut patch)?;
        let stamp = self.stamp();
        let template = complete(patch, blank(id, stamp.at))?;
        let updated = self.write_durably(ns, one_product, move |store| {
            let updated = store.update_product(ns, id, |old| {
                Ok(ProductRecord {
                    created_at: old.created_at,
                    ..template.clone()
                })
            });
            drop(stamp);
            updated
        });
        finish_update(updated.await?)
    }

    /// PATCH: changes only the fields present.
    pub async fn patch(
        &self,
        ns: Namespace,
        id: ProductId,
        mut patch: ProductPatch,
    ) -> Result<ProductRecord, Error> {
        self.resolve_supplier(ns, &mut patch)?;
        // Field checks do not depend on the stored values: run them once up front so a bad
        // patch is a 422 before any store work.
        let mut scratch = self.get(ns, id)?;
        patch.clone().apply(&mut scratch).map_err(Error::invalid)?;
        let stamp = self.stamp();
        let updated = self.write_durably(ns, one_product, move |store| {
            let updated = store.update_product(ns, id, |old| patched(&patch, old, stamp.at));
            drop(stamp);
            updated
        });
        finish_update(updated.await?)
    }

    /// Tells the search index about products committed and flushed (a job's batch, off the
    /// async workers).
    pub(super) fn search_changed(&self, ns: Namespace, changed: Vec<ProductId>) {
        self.search.changed(ns, changed);
    }

    /// Another node of the cluster committed `changes` (`store/cluster.rs`): the products it
    /// wrote go to the search index, which a search here then waits for like for a write made
    /// here. After a gap, every product changed since it began is indexed again.
    pub fn apply_remote(&self, changes: &crate::store::cluster::Changes) {
        if changes.everything {
            let since = changes.since.unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                - crate::search::CATCH_UP_MARGIN;
            match self.store.products_changed_since(since) {
                Ok(changed) => {
                    for (ns, id) in changed {
                        self.search.changed(ns, [id]);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not catch the search index up"),
            }
            return;
        }
        for key in changes.keys("products") {
            let (Some(ns), Some(id)) = (
                crate::store::keys::namespace_of(key),
                key.get(17..).and_then(ProductId::from_slice),
            ) else {
                continue;
            };
            self.search.changed(ns, [id]);
        }
    }

    /// Makes the write durable, then tells the search index which products it changed: the
    /// indexer only ever reads what a flush already covered (a newer write of the same product
    /// that a crash loses is within the catch-up's reach at the next start).
    pub(super) async fn made_durable(
        &self,
        ns: Namespace,
        changed: impl IntoIterator<Item = ProductId>,
    ) -> Result<(), Error> {
        let flushed = self.store.flush().await;
        self.search.changed(ns, changed);
        Ok(flushed?)
    }

    pub async fn delete(&self, ns: Namespace, ids: &[ProductId]) -> Result<Vec<ProductId>, Error> {
        let stamp = self.stamp();
        let ids = ids.to_vec();
        let deleted = self.write_durably(ns, Vec::clone, move |store| {
            let deleted = store.delete_products(ns, &ids, stamp.at);
            drop(stamp);
            deleted
        });
        Ok(deleted.await??)
    }

    /// How long tombstones are kept (`None`: for ever).
    pub(super) fn tombstone_retention(&self) -> Option<time::Duration> {
        self.tombstone_retention
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The time for a product write, held until its transaction committed (change feeds
    /// answer only up to the oldest such time still held: `store/horizon.rs`).
    pub(super) fn stamp(&self) -> crate::store::WriteStamp {
        self.store.write_stamp(|| self.clock.now())
    }

    /// The epoch of what a list reads: read it before computing an answer that may be kept
    /// (for a search, after [`Catalog::search_ready`]).
    pub fn epoch(&self) -> Epoch {
        (self.store.catalog_epoch(), self.search.generation())
    }

    /// A rendered answer kept for `key` (the request's query) in `ns`, if no write came since.
    /// A search asks after [`Catalog::search_ready`], so its own writes are in the index.
    pub fn cached_page(&self, ns: Namespace, key: &str) -> Option<Arc<[u8]>> {
        let epoch = self.epoch();
        let pages = self.pages.pages.lock().ok()?;
        pages
            .map
            .get(&(ns, key.to_owned()))
            .filter(|(at, _)| *at == epoch)
            .map(|(_, body)| body.clone())
    }

    /// Keeps a rendered answer computed at `epoch` (read before computing it).
    pub fn keep_page(&self, ns: Namespace, key: &str, epoch: Epoch, body: Arc<[u8]>) {
        let weight = body.len() + key.len();
        if weight > CACHED_BYTES / 16 {
            return;
        }
        if let Ok(mut pages) = self.pages.pages.lock() {
            if pages.map.len() >= CACHED_PAGES || pages.bytes + weight > CACHED_BYTES {
                pages.map.clear();
                pages.bytes = 0;
            }
            if let Some((_, old)) = pages.map.insert((ns, key.to_owned()), (epoch, body)) {
                pages.bytes = pages.bytes.saturating_sub(old.len() + key.len());
            }
            pages.bytes += weight;
        }
    }

    /// Stops the search indexer once it has committed what it was sent (at shutdown).
    /// Whether the store answers a read.
    pub fn store_healthy(&self) -> bool {
        self.store.meta_get("bootstrapped").is_ok()
    }

    /// Bytes on disk of the store and of the search index.
    pub fn disk_usage(&self) -> Result<(u64, u64), Error> {
        Ok((self.store.size_on_disk()?, self.search.size_on_disk()))
    }

    /// Hits and misses of the store's record caches, by cache.
    pub fn cache_counts(&self) -> [(&'static str, crate::metrics::CacheCounts); 4] {
        self.store.cache_counts()
    }

    /// Whether the store's record caches may be served now (see [`Store::caches_trusted`]).
    pub fn caches_trusted(&self) -> bool {
        self.store.caches_trusted()
    }

    /// Whether the search index follows the store's writes (its indexer runs and commits).
    pub fn search_healthy(&self) -> bool {
        self.search.is_healthy()
    }

    pub fn close_search(&self) {
        self.search.shutdown();
    }

    /// Waits until the search index holds every product write acknowledged so far (a search
    /// finds what its client has just written).
    pub async fn search_ready(&self) {
        self.search.fresh().await;
    }

    /// One page of products and the number matching in all.
    ///
    /// Without other filters, creation order is a walk of the product keys and last-change
    /// order (or `updated_since`) a walk of the updated_at index: the cost is the page's, not
    /// the catalog's. A search alone is a page of the search index. Other filters read the
    /// products of their index (the search hits, the supplier's or the categories' products,
    /// or those changed since `updated_since`), so their cost grows with those, not with the
    /// catalog.
    pub fn list(&self, ns: Namespace, q: &ListQuery) -> Result<(Vec<ProductRecord>, u64), Error> {
        let sort = q.sort_by.unwrap_or_default();
        if !q.has_filters() && sort == SortBy::CreatedAt && q.updated_since.is_none() {
            // Keys are time-ordered ids: the page is a range walk, the total a counter.
            let items = self
                .store
                .products_in_order(ns, q.descending, q.offset)
                .take(q.limit)
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((items, self.store.product_count(ns)?));
        }
        if !q.has_filters() && sort == SortBy::UpdatedAt {
            return self.list_by_update(ns, q);
        }
        let only_active = q.search.is_none()
            && q.supplier_id.is_none()
            && q.category_id.is_none()
            && q.updated_since.is_none()
            && sort == SortBy::CreatedAt;
        if let (Some(active), true) = (q.is_active, only_active) {
            return self.list_by_activity(ns, active, q);
        }
        let only_search = q.is_active.is_none()
            && q.supplier_id.is_none()
            && q.category_id.is_none()
            && q.updated_since.is_none()
            && q.sort_by.is_none();
        if let (Some(text), true) = (&q.search, only_search) {
            let (ids, total) = self.search.page(ns, text, q.offset, q.limit)?;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                // A product deleted since the search read the index is left out of the page.
                if let Some(p) = self.store.product(ns, id)? {
                    items.push(p);
                }
            }
            return Ok((items, total));
        }
        let categories = self.category_set(ns, q)?;
        let candidates = self.candidates(ns, q, categories.as_ref())?;
        let mut all = Vec::new();
        for p in candidates {
            let p = p?;
            if q.matches(&p, categories.as_ref()) {
                all.push(p);
            }
        }
        // A search keeps the index's relevance order unless an order is asked for.
        if q.search.is_none() || q.sort_by.is_some() {
            match sort {
                SortBy::CreatedAt => all.sort_by_key(|p| p.id),
                SortBy::UpdatedAt => all.sort_by_key(|p| (p.updated_at, p.id)),
                SortBy::Name => all.sort_by_key(|p| p.name.to_lowercase()),
                SortBy::Price => {
                    all.sort_by(|a, b| a.price.unwrap_or(0.0).total_cmp(&b.price.unwrap_or(0.0)))
                }
            }
            if q.descending {
                all.reverse();
            }
        }
        let total = all.len() as u64;
        Ok((
            all.into_iter().skip(q.offset).take(q.limit).collect(),
            total,
        ))
    }

    /// Every product matching the filters, to `each`, without holding them: in relevance order
    /// for a search, else in the order of the index the filters read (creation order without
    /// filters, last change with `updated_since` alone). Exports stream the catalog through it.
    pub fn each_match(
        &self,
        ns: Namespace,
        q: &ListQuery,
        mut each: impl FnMut(ProductRecord) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let categories = self.category_set(ns, q)?;
        for p in self.candidates(ns, q, categories.as_ref())? {
            let p = p?;
            if q.matches(&p, categories.as_ref()) {
                each(p)?;
            }
        }
        Ok(())
    }

    /// A category filter covers the category and every category below it. An id that names
    /// no category (kept by products from before categories were records) matches the
    /// products that list it.
    fn category_set(&self, ns: Namespace, q: &ListQuery) -> Result<Option<HashSet<Uuid>>, Error> {
        Ok(match q.category_id {
            Some(c) => {
                let mut set: HashSet<Uuid> = self
                    .store
                    .category_subtree(ns, c)?
                    .into_iter()
                    .map(|c| c.id)
                    .collect();
                set.insert(c);
                Some(set)
            }
            None => None,
        })
    }

    /// The products a filtered list reads: those of the most selective index the filters
    /// name. Each still has to pass [`ListQuery::matches`].
    fn candidates<'a>(
        &'a self,
        ns: Namespace,
        q: &ListQuery,
        categories: Option<&HashSet<Uuid>>,
    ) -> Result<Box<dyn Iterator<Item = Result<ProductRecord, StoreError>> + 'a>, Error> {
        let read = move |id: ProductId| self.store.product(ns, id).transpose();
        Ok(
            match (&q.search, q.supplier_id, categories, q.updated_since) {
                // The search hits, best first.
                (Some(text), _, _, _) => {
                    Box::new(self.search.all(ns, text)?.into_iter().filter_map(read))
                }
                // Only the supplier's products are read, from its index.
                (None, Some(supplier), _, _) => Box::new(
                    self.store
                        .product_ids_of_supplier(ns, supplier)?
                        .into_iter()
                        .filter_map(read),
                ),
                // Only the products of those categories are read, from their index.
                (None, None, Some(set), _) => {
                    let mut ids = BTreeSet::new();
                    for c in set {
                        ids.extend(self.store.product_ids_in_category(ns, *c)?);
                    }
                    Box::new(ids.into_iter().filter_map(read))
                }
                // Only the products changed since then are read.
                (None, None, None, Some(since)) => Box::new(
                    self.store
                        .product_ids_by_update(ns, Some(since), false)
                        .filter_map(move |id| {
                            id.and_then(|id| self.store.product(ns, id)).transpose()
                        }),
                ),
                // Only the inactive products are read, from their index.
                (None, None, None, None) if q.is_active == Some(false) => Box::new(
                    self.store
                        .inactive_product_ids(ns, false, 0)
                        .filter_map(move |id| {
                            id.and_then(|id| self.store.product(ns, id)).transpose()
                        }),
                ),
                (None, None, None, None) => self.store.products_in_order(ns, false, 0),
            },
        )
    }

    /// A page in creation order of the active or the inactive products; the total comes from
    /// the counters. Inactive products are read from their index. Active ones are the products
    /// minus those: the walk reads each product up to the page's end, so the cost is the page
    /// over the share of active products, not the catalog.
    fn list_by_activity(
        &self,
        ns: Namespace,
        active: bool,
        q: &ListQuery,
    ) -> Result<(Vec<ProductRecord>, u64), Error> {
        let inactive = self.store.inactive_count(ns)?;
        if !active {
            let mut items = Vec::with_capacity(q.limit.min(100));
            for id in self
                .store
                .inactive_product_ids(ns, q.descending, q.offset)
                .take(q.limit)
            {
                // A product deleted since its index key was read is left out of the page.
                if let Some(p) = self.store.product(ns, id?)? {
                    items.push(p);
                }
            }
            return Ok((items, inactive));
        }
        let total = self.store.product_count(ns)?.saturating_sub(inactive);
        let mut items = Vec::with_capacity(q.limit.min(100));
        let mut skipped = 0;
        for p in self.store.products_in_order(ns, q.descending, 0) {
            let p = p?;
            if !p.is_active {
                continue;
            }
            if skipped < q.offset {
                skipped += 1;
                continue;
            }
            if items.len() >= q.limit {
                break;
            }
            items.push(p);
        }
        Ok((items, total))
    }

    /// A page in last-change order, walking the updated_at index (from `updated_since` when
    /// given): the page reads `offset + limit` index keys and `limit` records.
    fn list_by_update(
        &self,
        ns: Namespace,
        q: &ListQuery,
    ) -> Result<(Vec<ProductRecord>, u64), Error> {
        let total = match q.updated_since {
            None => self.store.product_count(ns)?,
            Some(since) => {
                let mut n = 0u64;
                for id in self.store.product_ids_by_update(ns, Some(since), false) {
                    id?;
                    n += 1;
                }
                n
            }
        };
        let mut items = Vec::with_capacity(q.limit.min(100));
        for id in self
            .store
            .product_ids_by_update(ns, q.updated_since, q.descending)
            .skip(q.offset)
        {
            if items.len() >= q.limit {
                break;
            }
            // A product deleted since its index key was read is left out of the page.
            if let Some(p) = self.store.product(ns, id?)? {
                items.push(p);
            }
        }
        Ok((items, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (
        tempfile::TempDir,
        Store,
        SharedClock,
        SearchIndex,
        Catalog,
        Namespace,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        let clock: SharedClock = Arc::new(crate::clock::ManualClock::new(
            OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        ));
        let (search, _) =
            SearchIndex::open(&dir.path().join("search"), store.clone(), clock.clone()).unwrap();
        let catalog = Catalog::new(store.clone(), clock.clone(), search.clone());
        let ns = Namespace {
            tenant: crate::domain::TenantId::generate(),
            environment: crate::domain::Environment::Live,
        };
        (dir, store, clock, search, catalog, ns)
    }

    #[tokio::test]
    async fn kept_answers_stay_within_their_weight() {
        let (_dir, _store, _clock, search, catalog, ns) = fixture();
        let epoch = catalog.epoch();
        let body = |n: usize| -> Arc<[u8]> { vec![b' '; n].into() };
        // Too heavy to keep at all.
        catalog.keep_page(ns, "huge", epoch, body(CACHED_BYTES / 8));
        assert!(catalog.cached_page(ns, "huge").is_none());
        // Kept until the next one would pass the budget; then the cache starts over.
        let third = CACHED_BYTES / 3;
        let big = CACHED_BYTES / 20;
        for i in 0..(third / big) {
            catalog.keep_page(ns, &format!("p{i}"), epoch, body(big));
        }
        assert!(catalog.cached_page(ns, "p0").is_some());
        for i in 100..(100 + 2 * third / big + 2) {
            catalog.keep_page(ns, &format!("p{i}"), epoch, body(big));
        }
        assert!(catalog.cached_page(ns, "p0").is_none());
        assert!(
            catalog
                .cached_page(ns, &format!("p{}", 100 + 2 * third / big + 1))
                .is_some()
        );
        search.shutdown();
    }

    fn named(body: u64, name: &str) -> ProductPatch {
        serde_json::from_value(serde_json::json!({
            "ean": crate::domain::Ean::from_body(body).as_str(),
            "name": name,
        }))
        .unwrap()
    }

    /// A product write that waits for a flush (here: the flush gate held by another thread)
    /// waits on the store's writer thread: the runtime thread, like a request worker, goes on
    /// serving reads meanwhile. Run on the runtime thread, the write would hold it until the gate was
    /// released, and the read would come after.
    #[tokio::test]
    async fn a_product_write_waiting_for_a_flush_leaves_the_worker_free() {
        let (_dir, _store, _clock, search, catalog, ns) = fixture();
        let first = catalog.create(ns, named(11, "First")).await.unwrap();
        let (held, holding) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _gate = crate::store::kv::flush_gate_exclusive();
            held.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(400));
            std::time::Instant::now()
        });
        holding.recv().unwrap();
        let c = catalog.clone();
        let create = tokio::spawn(async move { c.create(ns, named(12, "Second")).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(catalog.get(ns, first.id).unwrap().name, "First");
        let read_at = std::time::Instant::now();
        assert!(
            !create.is_finished(),
            "the create went through a held flush gate"
        );
        let second = create.await.unwrap().unwrap();
        let released_at = holder.join().unwrap();
        assert!(
            read_at < released_at,
            "the read waited for the write's flush"
        );
        assert_eq!(catalog.get(ns, second.id).unwrap().name, "Second");
        search.shutdown();
    }

    /// A create whose caller stops waiting (a client that hung up while the write waited for
    /// its flush) is committed all the same, and the search index hears of it: the product is
    /// found without any later write or restart.
    #[tokio::test]
    async fn a_write_whose_caller_hung_up_still_reaches_the_search_index() {
        let (_dir, _store, _clock, search, catalog, ns) = fixture();
        let (held, holding) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _gate = crate::store::kv::flush_gate_exclusive();
            held.send(()).unwrap();
            released.recv().unwrap();
        });
        holding.recv().unwrap();
        let c = catalog.clone();
        let create = tokio::spawn(async move { c.create(ns, named(13, "Quokka")).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!create.is_finished(), "the create went through a held gate");
        create.abort();
        assert!(create.await.unwrap_err().is_cancelled());
        release.send(()).unwrap();
        holder.join().unwrap();
        let mut found = (Vec::new(), 0);
        for _ in 0..200 {
            catalog.search_ready().await;
            found = search.page(ns, "quokka", 0, 10).unwrap();
            if found.1 == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(found.1, 1, "the index never heard of the create");
        let stored = catalog.get(ns, found.0[0]).unwrap();
        assert_eq!(stored.name, "Quokka");
        search.shutdown();
    }

    #[tokio::test]
    async fn a_kept_search_answer_goes_when_the_index_takes_in_a_write_it_lacked() {
        let (_dir, store, clock, search, catalog, ns) = fixture();
        // A write the store holds but the index does not have yet (between its commit and
        // its indexing); an answer computed now lacks it.
        let mut p = blank(ProductId::generate(), clock.now());
        p.ean = crate::domain::Ean::from_body(7).as_str().to_owned();
        p.name = "Narwhal".into();
        store.insert_product(ns, &p).unwrap();
        let epoch = catalog.epoch();
        catalog.keep_page(ns, "search=narwhal", epoch, Arc::from(&b"[]"[..]));
        assert!(catalog.cached_page(ns, "search=narwhal").is_some());
        search.changed(ns, [p.id]);
        catalog.search_ready().await;
        assert!(catalog.cached_page(ns, "search=narwhal").is_none());
        let (ids, total) = search.page(ns, "narwhal", 0, 10).unwrap();
        assert_eq!((ids, total), (vec![p.id], 1));
        search.shutdown();
    }
}
