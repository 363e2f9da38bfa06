//! Suppliers: validation, create / patch / delete, listing, and resolving a product's
//! `supplier_code` or `supplier_id` to the supplier it names.
use super::field::Field;
use crate::clock::SharedClock;
use crate::domain::Invalid;
use crate::error::Error;
use crate::store::{Namespace, Store, StoreError, SupplierRecord};
use serde::Deserialize;
use uuid::Uuid;

/// How often a supplier write is tried again when a product changed its reference meanwhile.
const RETRIES: usize = 5;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SupplierPatch {
    pub code: Field<String>,
    pub name: Field<String>,
    pub email: Field<String>,
    pub phone: Field<String>,
    pub country: Field<String>,
    pub currency: Field<String>,
    #[serde(deserialize_with = "super::field::whole_field")]
    pub lead_time_days: Field<i64>,
    pub is_active: Field<bool>,
}

/// A trimmed text of 1 to `max` characters (catalog data keeps what it is given, as product
/// names do).
fn text(errors: &mut Vec<Invalid>, field: &str, v: String, max: usize) -> Option<String> {
    let v = v.trim().to_owned();
    if v.is_empty() || v.chars().count() > max {
        errors.push(Invalid::new(
            field,
            format!("must be 1 to {max} characters after trimming"),
        ));
        return None;
    }
    Some(v)
}

fn optional(
    errors: &mut Vec<Invalid>,
    field: &str,
    value: Field<String>,
    max: usize,
    check: impl Fn(&str) -> Option<&'static str>,
    slot: &mut Option<String>,
) {
    match value {
        Field::Absent => {}
        Field::Null => *slot = None,
        Field::Value(v) if v.trim().is_empty() => *slot = None,
        Field::Value(v) => {
            if let Some(v) = text(errors, field, v, max) {
                match check(&v) {
                    Some(problem) => errors.push(Invalid::new(field, problem)),
                    None => *slot = Some(v),
                }
            }
        }
    }
}

fn upper_letters(n: usize, problem: &'static str) -> impl Fn(&str) -> Option<&'static str> {
    move |v: &str| (!(v.len() == n && v.bytes().all(|b| b.is_ascii_uppercase()))).then_some(problem)
}

impl SupplierPatch {
    /// Applies the patch to `s`, collecting every problem.
    pub fn apply(self, s: &mut SupplierRecord) -> Result<(), Vec<Invalid>> {
        let mut errors = Vec::new();
        let e = &mut errors;
        match self.code {
            Field::Absent => {}
            Field::Null => e.push(Invalid::new("code", "must not be null")),
            Field::Value(v) => {
                if let Some(v) = text(e, "code", v, 64) {
                    s.code = v;
                }
            }
        }
        match self.name {
            Field::Absent => {}
            Field::Null => e.push(Invalid::new("name", "must not be null")),
            Field::Value(v) => {
                if let Some(v) = text(e, "name", v, 200) {
                    s.name = v;
                }
            }
        }
        let email = |v: &str| {
            let ok = v.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && !domain.is_empty() && !v.contains(char::is_whitespace)
            });
            (!ok).then_some("must be an email address")
        };
        optional(e, "email", self.email, 254, email, &mut s.email);
        optional(e, "phone", self.phone, 50, |_| None, &mut s.phone);
        optional(
            e,
            "country",
            self.country,
            2,
            upper_letters(2, "must be an ISO 3166-1 alpha-2 code such as FR"),
            &mut s.country,
        );
        optional(
            e,
            "currency",
            self.currency,
            3,
            upper_letters(3, "must be a three-letter ISO 4217 code such as EUR"),
            &mut s.currency,
        );
        match self.lead_time_days {
            Field::Absent => {}
            Field::Null => s.lead_time_days = None,
            Field::Value(d) if (0..=3650).contains(&d) => {
                s.lead_time_days = u32::try_from(d).ok();
            }
            Field::Value(_) => e.push(Invalid::new("lead_time_days", "must be 0 to 3650")),
        }
        match self.is_active {
            Field::Absent => {}
            Field::Null => e.push(Invalid::new("is_active", "must not be null")),
            Field::Value(a) => s.is_active = a,
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[derive(Debug, Default)]
pub struct SupplierQuery {
    /// Lower-cased; matches a substring of the code or the name.
    pub search: Option<String>,
    pub is_active: Option<bool>,
}

#[derive(Clone)]
pub struct Suppliers {
    store: Store,
    clock: SharedClock,
}

impl Suppliers {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Suppliers { store, clock }
    }

    pub async fn create(
        &self,
        ns: Namespace,
        patch: SupplierPatch,
    ) -> Result<SupplierRecord, Error> {
        let mut missing = Vec::new();
        if patch.code.is_absent() {
            missing.push(Invalid::new("code", "is required"));
        }
        if patch.name.is_absent() {
            missing.push(Invalid::new("name", "is required"));
        }
        let now = self.clock.now();
        let mut supplier = SupplierRecord {
            id: Uuid::now_v7(),
            code: String::new(),
            name: String::new(),
            email: None,
            phone: None,
            country: None,
            currency: None,
            lead_time_days: None,
            is_active: true,
            product_count: 0,
            created_at: now,
            updated_at: now,
        };
        let applied = patch.apply(&mut supplier);
        missing.extend(applied.err().unwrap_or_default());
        if !missing.is_empty() {
            return Err(Error::invalid(missing));
        }
        self.store.insert_supplier(ns, &supplier)?;
        self.store.flush().await?;
        Ok(supplier)
    }

    pub fn get(&self, ns: Namespace, id: Uuid) -> Result<SupplierRecord, Error> {
        self.store
            .supplier(ns, id)?
            .ok_or_else(|| Error::not_found("supplier"))
    }

    /// Every matching supplier, by name then code (a namespace holds hundreds of suppliers).
    pub fn list(&self, ns: Namespace, q: &SupplierQuery) -> Result<Vec<SupplierRecord>, Error> {
        let mut all: Vec<SupplierRecord> = self
            .store
            .suppliers(ns)?
            .into_iter()
            .filter(|s| q.is_active.is_none_or(|a| s.is_active == a))
            .filter(|s| {
                q.search.as_ref().is_none_or(|needle| {
                    s.code.to_lowercase().contains(needle) || s.name.to_lowercase().contains(needle)
                })
            })
            .collect();
        all.sort_by_cached_key(|s| (s.name.to_lowercase(), s.code.to_lowercase()));
        Ok(all)
    }

    pub async fn patch(
        &self,
        ns: Namespace,
        id: Uuid,
        patch: SupplierPatch,
    ) -> Result<SupplierRecord, Error> {
        let mut scratch = self.get(ns, id)?;
        patch.clone().apply(&mut scratch).map_err(Error::invalid)?;
        let updated = super::retrying(RETRIES, || {
            let referencing = self.store.product_ids_of_supplier(ns, id)?;
            // Products that reference the supplier change with it (change feeds wait for it).
            let stamp = self.store.write_stamp(|| self.clock.now());
            let now = stamp.at;
            self.store
                .update_supplier(ns, id, &referencing, now, |old| {
                    let mut next = old.clone();
                    patch.clone().apply(&mut next).map_err(|_| {
                        StoreError::Conflict("the supplier changed during the update; retry")
                    })?;
                    next.updated_at = now;
                    Ok(next)
                })
        });
        let supplier = updated.map_err(|e| not_found_or(e, "supplier"))?;
        self.store.flush().await?;
        Ok(supplier)
    }

    /// Deletes a supplier; with `detach`, the products that reference it lose the reference
    /// (in the same transaction). Returns how many products were detached.
    pub async fn delete(&self, ns: Namespace, id: Uuid, detach: bool) -> Result<u64, Error> {
        let deleted = super::retrying(RETRIES, || {
            let referencing = self.store.product_ids_of_supplier(ns, id)?;
            let stamp = self.store.write_stamp(|| self.clock.now());
            self.store
                .delete_supplier(ns, id, detach, &referencing, stamp.at)
        });
        let detached = deleted.map_err(|e| not_found_or(e, "supplier"))?;
        self.store.flush().await?;
        Ok(detached)
    }
}

fn not_found_or(e: StoreError, what: &str) -> Error {
    match e {
        StoreError::NotFound => Error::not_found(what),
        other => other.into(),
    }
}

/// Resolves a product's supplier fields: `supplier_code` names a supplier by its code,
/// `supplier_id` by its id; both given must name the same one. `None` means "not given".
pub fn resolve(
    store: &Store,
    ns: Namespace,
    id: Option<Uuid>,
    code: Option<&str>,
) -> Result<Option<SupplierRecord>, Error> {
    let by_code = match code {
        Some(c) => Some(store.supplier_by_code(ns, c)?.ok_or_else(|| {
            Error::invalid(vec![Invalid::new("supplier_code", "names no supplier")])
        })?),
        None => None,
    };
    let by_id = match id {
        Some(i) => Some(store.supplier(ns, i)?.ok_or_else(|| {
            Error::invalid(vec![Invalid::new("supplier_id", "names no supplier")])
        })?),
        None => None,
    };
    match (by_id, by_code) {
        (Some(a), Some(b)) if a.id != b.id => Err(Error::invalid(vec![Invalid::new(
            "supplier_code",
            "names another supplier than supplier_id",
        )])),
        (a, b) => Ok(a.or(b)),
    }
}
