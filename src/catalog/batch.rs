//! Product writes addressed by a business key (EAN or WinDev reference), one at a time or in
//! batches, and the change feed by last change (`/windev/products/since`).
//!
//! - **Batches**: each item is its own store transaction, so one bad item never blocks the
//!   others; the whole batch is made durable by one flush before the answer (the group commit
//!   takes it as one write). Items apply in order: an EAN (or reference) repeated in one batch
//!   is written by each of its items in turn, so the last one's fields win, and each item gets
//!   its own result.
//! - **Upserts** create a missing product (`ean` and `name` required) and otherwise change only
//!   the fields an item carries, as PATCH does: a client that sends part of a product loses
//!   nothing it did not mention. Two batches racing on a new EAN never create it twice: the
//!   store refuses the second insert inside its transaction, and that item then updates the
//!   product the first one created.
//! - **The feed** pages by (`updated_at`, id) with deletions from the tombstones, and answers
//!   only up to the store's write horizon (`store/horizon.rs`): no change can later commit
//!   behind a position a client has already passed.
use super::field::Field;
use super::products::{Catalog, ProductPatch, blank, complete, patched};
use crate::domain::ProductId;
use crate::error::{Error, ErrorKind};
use crate::store::{Namespace, ProductRecord, ProductWrite, StoreError, Tombstone};
use time::OffsetDateTime;

/// How a request names a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductKey {
    Ean(String),
    Reference(String),
}

impl ProductKey {
    /// A new product holds its key: sets it in `patch` unless the patch sets it.
    fn fill(&self, patch: &mut ProductPatch) {
        match self {
            ProductKey::Ean(e) if patch.ean.is_absent() => patch.ean = Field::Value(e.clone()),
            ProductKey::Reference(r) if patch.reference.is_absent() => {
                patch.reference = Field::Value(r.clone())
            }
            _ => {}
        }
    }

    /// Whether `p` holds this key.
    fn names(&self, p: &ProductRecord) -> bool {
        match self {
            ProductKey::Ean(e) => p.ean == *e,
            ProductKey::Reference(r) => p.reference.as_deref() == Some(r.as_str()),
        }
    }

    /// The 404 for this key, with the hosted API's French message.
    pub fn not_found(&self) -> Error {
        let french = match self {
            ProductKey::Ean(e) => format!("Produit avec EAN '{e}' introuvable."),
            ProductKey::Reference(r) => format!("Produit introuvable pour la référence : {r}"),
        };
        Error::not_found("product").in_french(french)
    }
}

/// What a write by key came to.
#[derive(Debug)]
pub enum Outcome {
    Created(ProductRecord),
    Updated(ProductRecord),
    Failed(Error),
}

/// What a write by key does when no product holds the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenMissing {
    Create,
    Refuse,
}

/// Attempts per item: a product created or deleted by another request between the lookup and
/// the transaction sends the item round once more.
const ATTEMPTS: usize = 3;

/// One entry of the change feed.
#[derive(Debug)]
pub enum Change {
    Product(Box<ProductRecord>),
    Deleted(Tombstone),
}

impl Change {
    /// Where the entry sits in the feed: its time (Unix nanoseconds) and product id.
    pub fn position(&self) -> (i128, ProductId) {
        match self {
            Change::Product(p) => (p.updated_at.unix_timestamp_nanos(), p.id),
            Change::Deleted(t) => (t.deleted_at.unix_timestamp_nanos(), t.id),
        }
    }
}

/// Where a feed page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStart {
    /// Changes at or after this time.
    Since(OffsetDateTime),
    /// Changes after this position (a previous page's last entry).
    After(i128, ProductId),
}

/// A page of the feed; `more` says whether changes before the horizon remain after it.
#[derive(Debug)]
pub struct FeedPage {
    pub changes: Vec<Change>,
    pub more: bool,
    /// Deletions are known from this time on (older tombstones are swept); `None`: all kept.
    pub deletions_known_since: Option<OffsetDateTime>,
}

impl Catalog {
    /// The product a key names.
    pub fn find(&self, ns: Namespace, key: &ProductKey) -> Result<Option<ProductRecord>, Error> {
        Ok(match key {
            ProductKey::Ean(e) => self.store().product_by_ean(ns, e)?,
            ProductKey::Reference(r) => self.store().product_by_reference(ns, r)?,
        })
    }

    /// The product a key names, or a 404 that says which key.
    pub fn get_by(&self, ns: Namespace, key: &ProductKey) -> Result<ProductRecord, Error> {
        self.find(ns, key)?.ok_or_else(|| key.not_found())
    }

    /// One write by key, durable before it returns.
    pub async fn write_by(
        &self,
        ns: Namespace,
        key: ProductKey,
        patch: ProductPatch,
        missing: WhenMissing,
    ) -> Result<Outcome, Error> {
        let mut outcomes = self.write_many(ns, vec![Ok((key, patch))], missing).await?;
        outcomes
            .pop()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "a write came back without a result"))
    }

    /// A batch of writes by key, in order; items that arrive as errors (unreadable) are passed
    /// through as failures in their place. Every write that succeeded is durable when this
    /// returns; an error here (the flush failed) means none is confirmed.
    pub async fn write_many(
        &self,
        ns: Namespace,
        items: Vec<Result<(ProductKey, ProductPatch), Error>>,
        missing: WhenMissing,
    ) -> Result<Vec<Outcome>, Error> {
        // Thousands of store transactions in a row: off the async workers, which would
        // otherwise stall every connection they serve meanwhile.
        let catalog = self.clone();
        let outcomes = tokio::task::spawn_blocking(move || catalog.write_items(ns, items, missing))
            .await
            .map_err(Error::internal)?;
        let changed: Vec<ProductId> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Created(p) | Outcome::Updated(p) => Some(p.id),
                Outcome::Failed(_) => None,
            })
            .collect();
        if !changed.is_empty() {
            self.made_durable(ns, changed).await?;
        }
        Ok(outcomes)
    }

    /// The items in order: looked up and checked first, then written [`CHUNK`] to a store
    /// transaction (an item refused there is skipped by the transaction and written alone
    /// afterwards, looking its key up again: another item of the batch may have created or
    /// renamed what it names).
    fn write_items(
        &self,
        ns: Namespace,
        items: Vec<Result<(ProductKey, ProductPatch), Error>>,
        missing: WhenMissing,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(items.len());
        let mut plans: Vec<Plan> = Vec::new();
        let mut again: Vec<(usize, ProductKey, ProductPatch)> = Vec::new();
        let stamp = self.stamp();
        for (i, item) in items.into_iter().enumerate() {
            outcomes.push(None);
            let (key, mut patch) = match item {
                Ok(item) => item,
                Err(e) => {
                    outcomes[i] = Some(Outcome::Failed(e));
                    continue;
                }
            };
            let planned = self
                .resolve_supplier(ns, &mut patch)
                .and_then(|()| self.find(ns, &key))
                .and_then(|found| match found {
                    Some(current) => {
                        let mut scratch = current.clone();
                        patch.clone().apply(&mut scratch).map_err(Error::invalid)?;
                        Ok(Write::Update(current.id))
                    }
                    None if missing == WhenMissing::Refuse => Err(key.not_found()),
                    None => {
                        let mut full = patch.clone();
                        key.fill(&mut full);
                        complete(full, blank(ProductId::generate(), stamp.at))
                            .map(|p| Write::Insert(Box::new(p)))
                    }
                });
            match planned {
                Ok(write) => plans.push(Plan {
                    index: i,
                    key,
                    patch,
                    write,
                }),
                Err(e) => outcomes[i] = Some(Outcome::Failed(e)),
            }
        }
        for chunk in plans.chunks(CHUNK) {
            let rewrites: Vec<Box<Rewrite<'_>>> = chunk
                .iter()
                .map(|plan| {
                    let at = stamp.at;
                    let rewrite: Box<Rewrite<'_>> = Box::new(move |old: &ProductRecord| {
                        // The key may have moved to another product since the lookup.
                        if !plan.key.names(old) {
                            return Err(StoreError::NotFound);
                        }
                        patched(&plan.patch, old, at)
                    });
                    rewrite
                })
                .collect();
            let writes: Vec<ProductWrite<'_>> = chunk
                .iter()
                .zip(&rewrites)
                .map(|(plan, rewrite)| match &plan.write {
                    Write::Insert(p) => ProductWrite::Insert(p.clone()),
                    Write::Update(id) => ProductWrite::Update(*id, rewrite.as_ref()),
                })
                .collect();
            let results = match self.store().product_writes(ns, &writes) {
                Ok(results) => results,
                // The transaction itself failed: each item on its own.
                Err(_) => chunk.iter().map(|_| Err(StoreError::Retry)).collect(),
            };
            for (plan, result) in chunk.iter().zip(results) {
                let outcome = match (result, &plan.write) {
                    (Ok(p), Write::Insert(_)) => Outcome::Created(p),
                    (Ok(p), Write::Update(_)) => Outcome::Updated(p),
                    (
                        Err(
                            StoreError::NotFound
                            | StoreError::Duplicate(_)
                            | StoreError::Conflict(_)
                            | StoreError::Retry,
                        ),
                        _,
                    ) => {
                        again.push((plan.index, plan.key.clone(), plan.patch.clone()));
                        continue;
                    }
                    (Err(e), _) => Outcome::Failed(e.into()),
                };
                outcomes[plan.index] = Some(outcome);
            }
        }
        drop(stamp);
        for (index, key, patch) in again {
            outcomes[index] = Some(self.write_one(ns, &key, patch, missing));
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Outcome::Failed(Error::new(ErrorKind::Internal, "an item was not written"))
                })
            })
            .collect()
    }

    fn write_one(
        &self,
        ns: Namespace,
        key: &ProductKey,
        mut patch: ProductPatch,
        missing: WhenMissing,
    ) -> Outcome {
        if let Err(e) = self.resolve_supplier(ns, &mut patch) {
            return Outcome::Failed(e);
        }
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let step = match self.find(ns, key) {
                Err(e) => return Outcome::Failed(e),
                Ok(Some(current)) => match self.update_one(ns, key, current, &patch) {
                    Step::Wrote(p) => return Outcome::Updated(*p),
                    other => other,
                },
                Ok(None) if missing == WhenMissing::Refuse => {
                    return Outcome::Failed(key.not_found());
                }
                Ok(None) => match self.create_one(ns, key, &patch) {
                    Step::Wrote(p) => return Outcome::Created(*p),
                    other => other,
                },
            };
            match step {
                Step::Wrote(_) => {}
                Step::Fail(e) => return Outcome::Failed(e),
                // Deleted, or created by another request, since the lookup: look again.
                Step::Again(e) => last = Some(e),
            }
        }
        Outcome::Failed(match last {
            Some(StoreError::NotFound) | None => key.not_found(),
            Some(e) => e.into(),
        })
    }

    fn update_one(
        &self,
        ns: Namespace,
        key: &ProductKey,
        current: ProductRecord,
        patch: &ProductPatch,
    ) -> Step {
        // Field checks first, so a bad item is a validation error, not a store conflict.
        let mut scratch = current.clone();
        if let Err(errors) = patch.clone().apply(&mut scratch) {
            return Step::Fail(Error::invalid(errors));
        }
        let stamp = self.stamp();
        let updated = self.store().update_product(ns, current.id, |old| {
            // Another write may have moved the key to another product since the lookup: then
            // this one is not the product the item names (look again).
            if !key.names(old) {
                return Err(StoreError::NotFound);
            }
            patched(patch, old, stamp.at)
        });
        drop(stamp);
        match updated {
            Ok(p) => Step::Wrote(Box::new(p)),
            Err(e @ StoreError::NotFound) => Step::Again(e),
            Err(e) => Step::Fail(e.into()),
        }
    }

    fn create_one(&self, ns: Namespace, key: &ProductKey, patch: &ProductPatch) -> Step {
        let mut patch = patch.clone();
        key.fill(&mut patch);
        let stamp = self.stamp();
        let product = match complete(patch, blank(ProductId::generate(), stamp.at)) {
            Ok(p) => p,
            Err(e) => return Step::Fail(e),
        };
        let inserted = self.store().insert_product(ns, &product);
        drop(stamp);
        match inserted {
            Ok(()) => Step::Wrote(Box::new(product)),
            Err(e @ StoreError::Duplicate(_)) => Step::Again(e),
            Err(e) => Step::Fail(e.into()),
        }
    }

    /// Up to `limit` changes from `start`, oldest first by (`updated_at`, id), products and
    /// deletions merged, stopping at the write horizon.
    pub fn changes(
        &self,
        ns: Namespace,
        start: FeedStart,
        limit: usize,
    ) -> Result<FeedPage, Error> {
        let horizon = self
            .store()
            .feed_horizon(|| self.clock().now())?
            .unix_timestamp_nanos();
        let deletions_known_since = self
            .tombstone_retention()
            .map(|keep| self.clock().now() - keep);
        let (since, after) = match start {
            FeedStart::Since(t) => (t, None),
            FeedStart::After(at, id) => (
                OffsetDateTime::from_unix_timestamp_nanos(at)
                    .map_err(|_| Error::bad_request("the feed position is out of range"))?,
                Some((at, id)),
            ),
        };
        let keep = |pos: (i128, ProductId)| pos.0 < horizon && after.is_none_or(|a| pos > a);
        let store = self.store();
        let mut products = store
            .product_changes_from(ns, since)
            .filter(|item| item.as_ref().map_or(true, |&pos| keep(pos)))
            .peekable();
        let mut deletions = store
            .tombstones_since(ns, since)
            .filter(|item| {
                item.as_ref()
                    .map_or(true, |t| keep((t.deleted_at.unix_timestamp_nanos(), t.id)))
            })
            .peekable();
        let mut changes = Vec::with_capacity(limit.min(1024));
        loop {
            let next_product = head(&mut products, |&pos| pos)?;
            let next_deletion = head(&mut deletions, |t| {
                (t.deleted_at.unix_timestamp_nanos(), t.id)
            })?;
            let take_product = match (next_product, next_deletion) {
                (None, None) => {
                    return Ok(FeedPage {
                        changes,
                        more: false,
                        deletions_known_since,
                    });
                }
                (Some(p), Some(d)) => p <= d,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if changes.len() >= limit {
                return Ok(FeedPage {
                    changes,
                    more: true,
                    deletions_known_since,
                });
            }
            if take_product {
                let Some(Ok((at, id))) = products.next() else {
                    continue;
                };
                // A product changed again since its index key was read appears at its newer
                // position; one deleted since appears as its tombstone.
                if let Some(p) = store.product(ns, id)?
                    && p.updated_at.unix_timestamp_nanos() == at
                {
                    changes.push(Change::Product(Box::new(p)));
                }
            } else if let Some(Ok(t)) = deletions.next() {
                changes.push(Change::Deleted(t));
            }
        }
    }
}

/// Items written per store transaction.
const CHUNK: usize = 256;

/// What an item's store change becomes: `old` to new, or refused.
type Rewrite<'a> = dyn Fn(&ProductRecord) -> Result<ProductRecord, StoreError> + Sync + 'a;

/// An item looked up and checked, waiting for its chunk's transaction.
struct Plan {
    index: usize,
    key: ProductKey,
    patch: ProductPatch,
    write: Write,
}

enum Write {
    Insert(Box<ProductRecord>),
    Update(ProductId),
}

/// What one attempt at an item did.
enum Step {
    Wrote(Box<ProductRecord>),
    /// The product appeared or went between the lookup and the transaction.
    Again(StoreError),
    Fail(Error),
}

/// The position of the next entry of a feed stream, or its error.
fn head<T>(
    it: &mut std::iter::Peekable<impl Iterator<Item = Result<T, StoreError>>>,
    position: impl Fn(&T) -> (i128, ProductId),
) -> Result<Option<(i128, ProductId)>, Error> {
    match it.peek() {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(position(v))),
        Some(Err(_)) => match it.next() {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock, SharedClock};
    use crate::search::SearchIndex;
    use crate::store::Store;
    use std::sync::Arc;

    fn product(n: u64, reference: &str, at: OffsetDateTime) -> ProductRecord {
        let mut p = blank(ProductId::generate(), at);
        p.ean = crate::domain::Ean::from_body(n).as_str().to_owned();
        p.name = reference.into();
        p.reference = Some(reference.into());
        p
    }

    fn references(page: &FeedPage) -> Vec<String> {
        page.changes
            .iter()
            .map(|c| match c {
                Change::Product(p) => p.reference.clone().unwrap_or_default(),
                Change::Deleted(t) => t.reference.clone().unwrap_or_default(),
            })
            .collect()
    }

    #[tokio::test]
    async fn the_feed_waits_for_a_write_stamped_earlier_that_commits_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let manual = Arc::new(ManualClock::new(start));
        let clock: SharedClock = manual.clone();
        let (search, _) =
            SearchIndex::open(&dir.path().join("search"), store.clone(), clock.clone()).unwrap();
        let catalog = Catalog::new(store.clone(), clock, search.clone());
        let ns = Namespace {
            tenant: crate::domain::TenantId::generate(),
            environment: crate::domain::Environment::Live,
        };
        // A slow write takes its time at t, and has not committed yet.
        manual.advance(time::Duration::seconds(1));
        let slow = store.write_stamp(|| manual.now());
        // A quick one at t + 1 s commits at once.
        manual.advance(time::Duration::seconds(1));
        let quick = ProductPatch {
            ean: Field::Value(crate::domain::Ean::from_body(2).as_str().to_owned()),
            name: Field::Value("quick".into()),
            ..ProductPatch::default()
        };
        let written = catalog
            .write_by(
                ns,
                ProductKey::Reference("quick".into()),
                quick,
                WhenMissing::Create,
            )
            .await
            .unwrap();
        assert!(matches!(written, Outcome::Created(_)));
        manual.advance(time::Duration::seconds(1));
        // The feed stops before the slow write's time: nothing yet.
        let first = catalog.changes(ns, FeedStart::Since(start), 100).unwrap();
        assert_eq!(references(&first), Vec::<String>::new());
        // The slow write commits; from where the client stands, both follow, oldest first.
        store
            .insert_product(ns, &product(1, "slow", slow.at))
            .unwrap();
        drop(slow);
        let next = catalog.changes(ns, FeedStart::Since(start), 100).unwrap();
        assert_eq!(references(&next), ["slow", "quick"]);
        // Paging on from the first entry's position gives the second alone.
        let (at, id) = next.changes[0].position();
        let rest = catalog.changes(ns, FeedStart::After(at, id), 100).unwrap();
        assert_eq!(references(&rest), ["quick"]);
        search.shutdown();
    }
}
