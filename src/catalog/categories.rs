//! Categories: validation, the tree and flat views, create / rename / move / reorder / delete,
//! and the per-channel mappings.
use super::field::Field;
use crate::clock::SharedClock;
use crate::domain::{Invalid, ProductId};
use crate::error::Error;
use crate::store::{
    CategoryPlacement, CategoryRecord, MappingRecord, Namespace, Store, StoreError,
};
use serde::Deserialize;
use std::collections::BTreeSet;
use uuid::Uuid;

/// How often a category write is tried again when the tree changed while it was prepared.
const RETRIES: usize = 8;
/// Largest `position`.
pub const MAX_POSITION: i64 = 1_000_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CategoryPatch {
    pub name: Field<String>,
    pub parent_id: Field<Uuid>,
    #[serde(deserialize_with = "super::field::whole_field")]
    pub position: Field<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MappingBody {
    pub external_id: Field<String>,
    pub external_name: Field<String>,
}

/// A category with its children, for the tree view.
#[derive(Debug, Clone)]
pub struct CategoryNode {
    pub category: CategoryRecord,
    pub children: Vec<CategoryNode>,
}

/// The checked fields of a patch: `None` leaves the stored value.
struct Checked {
    name: Option<String>,
    /// `Some(None)` moves to the root.
    parent_id: Option<Option<Uuid>>,
    position: Option<u32>,
}

impl CategoryPatch {
    fn check(self) -> Result<Checked, Error> {
        let mut errors = Vec::new();
        let name = match self.name {
            Field::Absent => None,
            Field::Null => {
                errors.push(Invalid::new("name", "must not be null"));
                None
            }
            Field::Value(v) => {
                let v = v.trim().to_owned();
                if v.is_empty() || v.chars().count() > 200 {
                    errors.push(Invalid::new(
                        "name",
                        "must be 1 to 200 characters after trimming",
                    ));
                    None
                } else if v.contains('/') {
                    errors.push(Invalid::new(
                        "name",
                        "must not contain '/', which separates the names of a path",
                    ));
                    None
                } else if v.chars().any(char::is_control) {
                    errors.push(Invalid::new("name", "must not contain control characters"));
                    None
                } else {
                    Some(v)
                }
            }
        };
        let parent_id = match self.parent_id {
            Field::Absent => None,
            Field::Null => Some(None),
            Field::Value(id) => Some(Some(id)),
        };
        let position = match self.position {
            Field::Absent => None,
            Field::Value(p) if (0..=MAX_POSITION).contains(&p) => u32::try_from(p).ok(),
            _ => {
                errors.push(Invalid::new(
                    "position",
                    "must be a whole number from 0 to 1000000",
                ));
                None
            }
        };
        if errors.is_empty() {
            Ok(Checked {
                name,
                parent_id,
                position,
            })
        } else {
            Err(Error::invalid(errors))
        }
    }
}

/// A channel name: 1 to 50 of lower-case letters, digits, `_` and `-` (`shopify`,
/// `google-shopping`).
fn channel(raw: &str) -> Result<String, Error> {
    let ok = !raw.is_empty()
        && raw.len() <= 50
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Error::invalid(vec![Invalid::new(
            "channel",
            "must be 1 to 50 lower-case letters, digits, '_' or '-' (such as shopify)",
        )]))
    }
}

#[derive(Clone)]
pub struct Categories {
    store: Store,
    clock: SharedClock,
}

impl Categories {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Categories { store, clock }
    }

    pub fn get(&self, ns: Namespace, id: Uuid) -> Result<CategoryRecord, Error> {
        self.store
            .category(ns, id)?
            .ok_or_else(|| Error::not_found("category"))
    }

    /// A category's direct children, by position then name.
    pub fn children(&self, ns: Namespace, id: Uuid) -> Result<Vec<CategoryRecord>, Error> {
        let mut children = self.store.category_children(ns, Some(id))?;
        sort(&mut children);
        Ok(children)
    }

    /// The whole tree: the roots, each with its children nested, siblings by position then
    /// name.
    pub fn tree(&self, ns: Namespace) -> Result<Vec<CategoryNode>, Error> {
        let all = self.store.categories(ns)?;
        let mut by_parent: std::collections::HashMap<Option<Uuid>, Vec<CategoryRecord>> =
            std::collections::HashMap::new();
        for c in all {
            by_parent.entry(c.parent_id).or_default().push(c);
        }
        fn build(
            parent: Option<Uuid>,
            by_parent: &mut std::collections::HashMap<Option<Uuid>, Vec<CategoryRecord>>,
        ) -> Vec<CategoryNode> {
            let mut level = by_parent.remove(&parent).unwrap_or_default();
            sort(&mut level);
            level
                .into_iter()
                .map(|c| {
                    let children = build(Some(c.id), by_parent);
                    CategoryNode {
                        category: c,
                        children,
                    }
                })
                .collect()
        }
        Ok(build(None, &mut by_parent))
    }

    /// Every category in the tree's order (depth first, siblings by position then name).
    pub fn flat(&self, ns: Namespace) -> Result<Vec<CategoryRecord>, Error> {
        fn walk(nodes: Vec<CategoryNode>, out: &mut Vec<CategoryRecord>) {
            for n in nodes {
                out.push(n.category);
                walk(n.children, out);
            }
        }
        let mut out = Vec::new();
        walk(self.tree(ns)?, &mut out);
        Ok(out)
    }

    /// `id` and the ids of every category below it; empty when `id` is unknown.
    pub fn subtree_ids(&self, ns: Namespace, id: Uuid) -> Result<Vec<Uuid>, Error> {
        Ok(self
            .store
            .category_subtree(ns, id)?
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// The position after the last of `parent`'s children.
    fn next_position(&self, ns: Namespace, parent: Option<Uuid>) -> Result<u32, StoreError> {
        Ok(self
            .store
            .category_children(ns, parent)?
            .iter()
            .map(|c| c.position.saturating_add(1))
            .max()
            .unwrap_or(0)
            .min(MAX_POSITION as u32))
    }

    pub async fn create(
        &self,
        ns: Namespace,
        patch: CategoryPatch,
    ) -> Result<CategoryRecord, Error> {
        if patch.name.is_absent() {
            return Err(Error::invalid(vec![Invalid::new("name", "is required")]));
        }
        let checked = patch.check()?;
        let name = checked.name.unwrap_or_default();
        let parent_id = checked.parent_id.flatten();
        let id = Uuid::now_v7();
        let created = super::retrying(RETRIES, || {
            let version = self.store.category_version(ns)?;
            let position = match checked.position {
                Some(p) => p,
                None => self.next_position(ns, parent_id)?,
            };
            let place = CategoryPlacement {
                name: name.clone(),
                parent_id,
                position,
            };
            self.store
                .insert_category(ns, id, &place, version, self.clock.now())
        })?;
        self.store.flush().await?;
        Ok(created)
    }

    /// Renames, moves (`parent_id`; `null` for the root) or reorders a category. A move or a
    /// rename rewrites the path of the whole subtree in one transaction.
    pub async fn patch(
        &self,
        ns: Namespace,
        id: Uuid,
        patch: CategoryPatch,
    ) -> Result<CategoryRecord, Error> {
        let checked = patch.check()?;
        let updated = super::retrying(RETRIES, || {
            let version = self.store.category_version(ns)?;
            let subtree = self.store.category_subtree(ns, id)?;
            let Some(current) = subtree.first() else {
                return Err(StoreError::NotFound);
            };
            let parent_id = checked.parent_id.unwrap_or(current.parent_id);
            let position = match checked.position {
                Some(p) => p,
                None if parent_id != current.parent_id => self.next_position(ns, parent_id)?,
                None => current.position,
            };
            let place = CategoryPlacement {
                name: checked.name.clone().unwrap_or_else(|| current.name.clone()),
                parent_id,
                position,
            };
            self.store
                .update_category(ns, &subtree, &place, version, self.clock.now())
        });
        let category = updated.map_err(not_found)?;
        self.store.flush().await?;
        Ok(category)
    }

    /// Deletes a category; refused while it has children or products unless `cascade`, which
    /// deletes the subtree and takes its products out of those categories (the products stay).
    /// Returns how many products lost a category.
    pub async fn delete(&self, ns: Namespace, id: Uuid, cascade: bool) -> Result<u64, Error> {
        let deleted = super::retrying(RETRIES, || {
            let version = self.store.category_version(ns)?;
            let subtree = self.store.category_subtree(ns, id)?;
            let mut products: BTreeSet<ProductId> = BTreeSet::new();
            if cascade {
                for c in &subtree {
                    products.extend(self.store.product_ids_in_category(ns, c.id)?);
                }
            }
            // Products taken out of the categories change (change feeds wait for it).
            let stamp = self.store.write_stamp(|| self.clock.now());
            self.store
                .delete_category(ns, &subtree, &products, cascade, version, stamp.at)
        });
        let detached = deleted.map_err(not_found)?;
        self.store.flush().await?;
        Ok(detached)
    }

    /// Every mapping, or one channel's, by category (oldest first) then channel.
    pub fn mappings(
        &self,
        ns: Namespace,
        channel_filter: Option<&str>,
    ) -> Result<Vec<MappingRecord>, Error> {
        let filter = channel_filter.map(channel).transpose()?;
        Ok(self.store.category_mappings(ns, filter.as_deref())?)
    }

    /// Creates or replaces the mapping of a category for a channel; true when it was created.
    pub async fn put_mapping(
        &self,
        ns: Namespace,
        category: Uuid,
        channel_name: &str,
        body: MappingBody,
    ) -> Result<(MappingRecord, bool), Error> {
        let channel = channel(channel_name)?;
        let mut errors = Vec::new();
        let external_id = match body.external_id {
            Field::Value(v) if !v.trim().is_empty() && v.trim().chars().count() <= 200 => {
                Some(v.trim().to_owned())
            }
            Field::Absent => {
                errors.push(Invalid::new("external_id", "is required"));
                None
            }
            _ => {
                errors.push(Invalid::new(
                    "external_id",
                    "must be 1 to 200 characters after trimming",
                ));
                None
            }
        };
        let external_name = match body.external_name {
            Field::Absent | Field::Null => None,
            Field::Value(v) if v.trim().chars().count() <= 500 => {
                Some(v.trim().to_owned()).filter(|v| !v.is_empty())
            }
            Field::Value(_) => {
                errors.push(Invalid::new(
                    "external_name",
                    "must be at most 500 characters",
                ));
                None
            }
        };
        let Some(external_id) = external_id.filter(|_| errors.is_empty()) else {
            return Err(Error::invalid(errors));
        };
        let now = self.clock.now();
        let record = MappingRecord {
            id: Uuid::now_v7(),
            category_id: category,
            channel,
            external_id,
            external_name,
            created_at: now,
            updated_at: now,
        };
        let put = self
            .store
            .put_category_mapping(ns, &record)
            .map_err(not_found)?;
        self.store.flush().await?;
        Ok(put)
    }

    pub async fn delete_mapping(
        &self,
        ns: Namespace,
        category: Uuid,
        channel_name: &str,
    ) -> Result<(), Error> {
        let channel = channel(channel_name)?;
        self.store
            .delete_category_mapping(ns, category, &channel)
            .map_err(|e| match e {
                StoreError::NotFound => Error::not_found("mapping"),
                other => other.into(),
            })?;
        self.store.flush().await?;
        Ok(())
    }
}

fn sort(level: &mut [CategoryRecord]) {
    level.sort_by_cached_key(|c| (c.position, c.name.to_lowercase(), c.id));
}

fn not_found(e: StoreError) -> Error {
    match e {
        StoreError::NotFound => Error::not_found("category"),
        other => other.into(),
    }
}
