//! What `/ext` and `/windev` share: API keys only, the product list with its filters, and
//! batches of writes by key with one result per item, in order.
use super::envelope::ErrorInfo;
use super::{Page, PageParams};
use crate::auth::Principal;
use crate::auth::principal::Subject;
use crate::catalog::batch::{Outcome, ProductKey, WhenMissing};
use crate::catalog::{Catalog, ListQuery, ProductPatch};
use crate::domain::{Ean, Invalid};
use crate::error::{Error, ErrorKind};
use crate::store::{ApiKeyRecord, Namespace, ProductRecord};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

/// Batch routes read bodies up to this many times the JSON limit (500 full products, or 5 000
/// stock lines, outgrow 1 MiB).
pub const BATCH_BODY_SCALE: usize = 16;

/// The partner surfaces are for integrations: an API key, never a user session.
pub fn key_of(principal: &Principal) -> Result<&ApiKeyRecord, Error> {
    match &principal.subject {
        Subject::ApiKey { key, .. } => Ok(key),
        Subject::User { .. } => Err(Error::new(
            ErrorKind::InvalidToken,
            "this API accepts API keys only (X-API-Key); a Bearer token is refused",
        )),
    }
}

/// The filters both product lists take (each surface's query struct spells them out: serde's
/// `flatten` loses the types of url-encoded values).
#[derive(Debug, Default)]
pub struct ListFilters {
    pub search: Option<String>,
    pub is_active: Option<bool>,
    pub updated_since: Option<OffsetDateTime>,
}

/// A page of products in creation order (newest first, as `/products` answers), or by
/// relevance for a search; `size_field` names the page-size parameter in errors.
pub async fn list(
    catalog: &Catalog,
    ns: Namespace,
    page: Option<u64>,
    size: Option<u64>,
    size_field: &'static str,
    filters: ListFilters,
) -> Result<(Vec<ProductRecord>, u64, Page), Error> {
    if size.is_some_and(|n| !(1..=super::MAX_PER_PAGE).contains(&n)) {
        return Err(Invalid::new(size_field, "must be between 1 and 100").into());
    }
    let page = PageParams {
        page,
        per_page: size,
        skip: None,
        limit: None,
    }
    .resolve()?;
    let search = super::search_text(filters.search);
    if search
        .as_ref()
        .is_some_and(|s| s.chars().count() > crate::search::MAX_SEARCH_CHARS)
    {
        return Err(Invalid::new("search", "must be at most 200 characters").into());
    }
    if search.is_some() {
        catalog.search_ready().await;
    }
    let query = ListQuery {
        search,
        is_active: filters.is_active,
        updated_since: filters.updated_since,
        descending: true,
        offset: page.offset,
        limit: page.per_page,
        ..ListQuery::default()
    };
    let (items, total) = catalog.list(ns, &query)?;
    Ok((items, total, page))
}

/// `{products: […]}`.
#[derive(Deserialize)]
pub struct ProductsBody {
    pub products: Vec<Value>,
}

/// `{items: […]}`.
#[derive(Deserialize)]
pub struct ItemsBody {
    pub items: Vec<Value>,
}

/// One batch item, read: what names it (for its result) and the write, or why it cannot be
/// written.
pub struct Item {
    pub ean: Option<String>,
    pub reference: Option<String>,
    pub write: Result<(ProductKey, ProductPatch), Error>,
}

/// One batch item's result.
pub struct ItemResult {
    pub ean: Option<String>,
    pub reference: Option<String>,
    pub status: &'static str,
    pub errors: Vec<String>,
}

/// A text field of a raw item, if it is a string.
pub fn text_of(raw: &Value, field: &str) -> Option<String> {
    raw.get(field)
        .and_then(Value::as_str)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A batch refused whole: empty, or over its limit.
pub fn check_size(items: &[Value], field: &'static str, max: usize) -> Result<(), Error> {
    if items.is_empty() || items.len() > max {
        let message = format!("must hold 1 to {max} items");
        return Err(Error::from(Invalid::new(field, message)).in_french(format!(
            "Lot refusé : « {field} » doit contenir de 1 à {max} éléments (reçu : {}).",
            items.len()
        )));
    }
    Ok(())
}

/// An item as a product patch (its own field errors, with their paths).
pub fn patch_of(raw: Value) -> Result<ProductPatch, Error> {
    if !raw.is_object() {
        return Err(Invalid::new("item", "must be a JSON object").into());
    }
    serde_path_to_error::deserialize::<_, ProductPatch>(raw).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        Error::invalid(vec![Invalid::new(
            if path == "." { "item".to_owned() } else { path },
            message,
        )])
    })
}

/// The EAN an item is addressed by (its `ean` field).
pub fn ean_key(raw: &Value) -> Result<ProductKey, Error> {
    match raw.get("ean") {
        None | Some(Value::Null) => Err(Invalid::new("ean", "is required").into()),
        Some(Value::String(s)) => Ean::parse(s)
            .map(|e| ProductKey::Ean(e.as_str().to_owned()))
            .map_err(Error::from),
        Some(_) => Err(Invalid::new("ean", "must be a string of 8 or 13 digits").into()),
    }
}

/// The key of a WinDev item: its `reference`, else its `ean`.
pub fn reference_or_ean_key(raw: &Value) -> Result<ProductKey, Error> {
    match raw.get("reference") {
        Some(Value::String(r)) if !r.trim().is_empty() => {
            Ok(ProductKey::Reference(r.trim().to_owned()))
        }
        Some(Value::String(_)) | None | Some(Value::Null) => match raw.get("ean") {
            None | Some(Value::Null) => Err(Error::from(Invalid::new(
                "reference",
                "an item needs a reference or an ean",
            ))
            .in_french("L'élément n'a ni référence ni EAN.")),
            Some(_) => ean_key(raw),
        },
        Some(_) => Err(Invalid::new("reference", "must be a string").into()),
    }
}

/// Reads every item: its key with `key`, its write with `write`.
pub fn read_items(
    raw: Vec<Value>,
    key: impl Fn(&Value) -> Result<ProductKey, Error>,
    write: impl Fn(Value) -> Result<ProductPatch, Error>,
) -> Vec<Item> {
    raw.into_iter()
        .map(|raw| {
            let ean = text_of(&raw, "ean");
            let reference = text_of(&raw, "reference");
            let write = key(&raw).and_then(|k| write(raw).map(|p| (k, p)));
            Item {
                ean,
                reference,
                write,
            }
        })
        .collect()
}

/// Writes the items in order, durable before it returns; one result per item.
pub async fn run_batch(
    catalog: &Catalog,
    ns: Namespace,
    items: Vec<Item>,
    missing: WhenMissing,
) -> Result<Vec<ItemResult>, Error> {
    let mut names = Vec::with_capacity(items.len());
    let mut writes = Vec::with_capacity(items.len());
    for item in items {
        names.push((item.ean, item.reference));
        writes.push(item.write);
    }
    let outcomes = catalog.write_many(ns, writes, missing).await?;
    Ok(names
        .into_iter()
        .zip(outcomes)
        .map(|((ean, reference), outcome)| match outcome {
            Outcome::Created(p) => ItemResult {
                ean: Some(p.ean),
                reference: p.reference,
                status: "created",
                errors: Vec::new(),
            },
            Outcome::Updated(p) => ItemResult {
                ean: Some(p.ean),
                reference: p.reference,
                status: "updated",
                errors: Vec::new(),
            },
            Outcome::Failed(e) => {
                if e.kind == ErrorKind::Internal {
                    tracing::error!(error = %e, cause = ?e.cause, "batch item failed");
                }
                ItemResult {
                    ean,
                    reference,
                    status: "error",
                    errors: ErrorInfo::of(&e).messages(),
                }
            }
        })
        .collect())
}
