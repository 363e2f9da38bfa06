//! `/windev` (SPEC §10): the surface WinDev ERPs synchronise through. API keys on every route
//! but `GET /status`; products addressed by `reference` (or EAN); every answer in the
//! `{success, code, message, data, count, …}` envelope (`envelope.rs`; errors are rewritten
//! into it by the request middleware).
//!
//! The `since` feed pages by position: each answer ends with `next_since`, the position of its
//! last entry (its time and product id), which the client passes as the next `{ts}`. Entries
//! come oldest first by (`updated_at`, id), deletions merged in, and only up to the store's
//! write horizon (`store/horizon.rs`), so a change that commits while a client pages can only
//! appear after the position it has reached: nothing is lost while writes continue. A product
//! changed again while a client pages appears again at its new position.
use super::categories::CategoryOut;
use super::envelope;
use super::partner::{self, ItemResult, ItemsBody, ListFilters, ProductsBody};
use crate::auth::Principal;
use crate::catalog::batch::{Change, FeedStart, Outcome, ProductKey, WhenMissing};
use crate::catalog::field::Field;
use crate::catalog::{Catalog, Categories, ProductPatch, SupplierQuery, Suppliers};
use crate::domain::{Ean, Invalid, ProductId, Scope};
use crate::error::Error;
use crate::store::Namespace;
use crate::views::ProductOut;
use crate::views::SupplierOut;
use crate::web::JsonBody;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Most stock or price lines in one update.
pub const MAX_LINES: usize = 5_000;
/// Most products in one sync.
pub const MAX_SYNC: usize = 1_000;
/// Feed entries per answer: default and most.
pub const FEED_DEFAULT: usize = 1_000;
pub const FEED_MAX: usize = 5_000;

/// Every route of the surface, as `/status` lists them.
const ENDPOINTS: [(&str, &str, &str); 12] = [
    ("GET", "/api/v1/windev/status", ""),
    ("GET", "/api/v1/windev/products", "windev:read"),
    ("GET", "/api/v1/windev/products/{ref}", "windev:read"),
    ("GET", "/api/v1/windev/products/since/{ts}", "windev:read"),
    ("GET", "/api/v1/windev/categories", "windev:read"),
    ("GET", "/api/v1/windev/suppliers", "windev:read"),
    ("PATCH", "/api/v1/windev/products/{ref}", "windev:write"),
    (
        "POST",
        "/api/v1/windev/products/{ref}/activate",
        "windev:write",
    ),
    (
        "POST",
        "/api/v1/windev/products/{ref}/deactivate",
        "windev:write",
    ),
    ("POST", "/api/v1/windev/stock/update", "windev:write"),
    ("POST", "/api/v1/windev/prices/update", "windev:write"),
    ("POST", "/api/v1/windev/products/sync", "windev:sync"),
];

async fn status() -> HttpResponse {
    let endpoints: Vec<Value> = ENDPOINTS
        .iter()
        .map(|(method, path, scope)| {
            json!({"method": method, "path": path, "scope": (!scope.is_empty()).then_some(scope)})
        })
        .collect();
    let count = endpoints.len() as u64;
    envelope::windev(
        "API WinDev opérationnelle",
        json!({"status": "ok", "version": "1.0", "endpoints": endpoints}),
        count,
        Value::Null,
    )
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[derive(Deserialize)]
struct ListParams {
    page: Option<u64>,
    per_page: Option<u64>,
    /// The `/ext` spelling, accepted too.
    page_size: Option<u64>,
    search: Option<String>,
    #[serde(default, deserialize_with = "super::query_bool")]
    is_active: Option<bool>,
    #[serde(default, deserialize_with = "super::query_time")]
    updated_since: Option<OffsetDateTime>,
}

async fn list(
    principal: Principal,
    catalog: web::Data<Catalog>,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::WindevRead)?;
    let params = params.into_inner();
    let (size, field) = match (params.per_page, params.page_size) {
        (Some(n), _) => (Some(n), "per_page"),
        (None, n) => (n, "page_size"),
    };
    let (items, total, page) = partner::list(
        &catalog,
        principal.namespace(),
        params.page,
        size,
        field,
        ListFilters {
            search: params.search,
            is_active: params.is_active,
            updated_since: params.updated_since,
        },
    )
    .await?;
    let data: Vec<ProductOut> = items.into_iter().map(ProductOut::from).collect();
    // `count` is the number found, as the hosted API answers ("125 produits trouvés", count
    // 125, pages 10); the page holds `per_page` of them.
    Ok(envelope::windev(
        format!("{} trouvés", plural(total, "produit", "produits")),
        data,
        total,
        json!({
            "page": page.page,
            "per_page": page.per_page,
            "pages": total.div_ceil(page.per_page as u64),
            "total": total,
        }),
    ))
}

/// The key a path names: a product holding it as reference, else (when it reads as one) as
/// EAN. A reference that names nothing is a 404 that says so.
fn path_key(catalog: &Catalog, ns: Namespace, raw: &str) -> Result<ProductKey, Error> {
    let reference = ProductKey::Reference(raw.trim().to_owned());
    if catalog.find(ns, &reference)?.is_some() {
        return Ok(reference);
    }
    if let Ok(ean) = Ean::parse(raw) {
        let ean = ProductKey::Ean(ean.as_str().to_owned());
        if catalog.find(ns, &ean)?.is_some() {
            return Ok(ean);
        }
    }
    Err(reference.not_found())
}

async fn get(
    principal: Principal,
    catalog: web::Data<Catalog>,
    reference: web::Path<String>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::WindevRead)?;
    let ns = principal.namespace();
    let key = path_key(&catalog, ns, &reference)?;
    let product = catalog.get_by(ns, &key)?;
    Ok(envelope::windev(
        "Produit trouvé",
        ProductOut::from(product),
        1,
        Value::Null,
    ))
}

/// A feed entry: a product (`deleted: false`) or a deletion.
#[derive(Serialize)]
#[serde(untagged)]
enum FeedEntry {
    Product {
        #[serde(flatten)]
        product: Box<ProductOut>,
        deleted: bool,
    },
    Deleted {
        id: String,
        reference: Option<String>,
        ean: String,
        deleted: bool,
        #[serde(with = "time::serde::rfc3339")]
        deleted_at: OffsetDateTime,
    },
}

/// A feed position as a path segment: `<RFC 3339 time with nanoseconds>~<product id>`.
fn position_token(at: i128, id: ProductId) -> String {
    let time = OffsetDateTime::from_unix_timestamp_nanos(at)
        .map(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        })
        .unwrap_or_default();
    format!("{time}~{}", id.0.simple())
}

/// `{ts}`: RFC 3339, Unix seconds, or a position a previous answer gave.
fn feed_start(raw: &str) -> Result<FeedStart, Error> {
    let bad = || {
        Error::from(Invalid::new(
            "ts",
            "must be an RFC 3339 time, Unix seconds, or a next_since position",
        ))
        .in_french(format!(
            "Date invalide : « {raw} » n'est ni une date RFC 3339, ni un horodatage Unix, ni une position next_since."
        ))
    };
    let rfc3339 = |s: &str| {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| bad())
    };
    if let Some((time, id)) = raw.split_once('~') {
        let id = uuid::Uuid::try_parse(id).map_err(|_| bad())?;
        return Ok(FeedStart::After(
            rfc3339(time)?.unix_timestamp_nanos(),
            ProductId(id),
        ));
    }
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        let secs: i64 = raw.parse().map_err(|_| bad())?;
        return OffsetDateTime::from_unix_timestamp(secs)
            .map(FeedStart::Since)
            .map_err(|_| bad());
    }
    rfc3339(&raw.replace(' ', "+")).map(FeedStart::Since)
}

#[derive(Deserialize)]
struct FeedParams {
    limit: Option<u64>,
}

async fn since(
    principal: Principal,
    catalog: web::Data<Catalog>,
    ts: web::Path<String>,
    params: web::Query<FeedParams>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::WindevRead)?;
    let start = feed_start(&ts)?;
    let limit = match params.limit {
        None => FEED_DEFAULT,
        Some(n) if (1..=FEED_MAX as u64).contains(&n) => n as usize,
        Some(_) => return Err(Invalid::new("limit", "must be between 1 and 5000").into()),
    };
    let page = catalog.changes(principal.namespace(), start, limit)?;
    let next = page
        .changes
        .last()
        .map(|c| {
            let (at, id) = c.position();
            position_token(at, id)
        })
        .unwrap_or_else(|| ts.trim().to_owned());
    let (mut changed, mut deleted) = (0u64, 0u64);
    let data: Vec<FeedEntry> = page
        .changes
        .into_iter()
        .map(|c| match c {
            Change::Product(p) => {
                changed += 1;
                FeedEntry::Product {
                    product: Box::new(ProductOut::from(*p)),
                    deleted: false,
                }
            }
            Change::Deleted(t) => {
                deleted += 1;
                FeedEntry::Deleted {
                    id: t.id.to_string(),
                    reference: t.reference,
                    ean: t.ean,
                    deleted: true,
                    deleted_at: t.deleted_at,
                }
            }
        })
        .collect();
    let count = data.len() as u64;
    Ok(envelope::windev(
        format!(
            "{} modifiés, {} supprimés",
            plural(changed, "produit", "produits"),
            deleted
        ),
        data,
        count,
        json!({
            "next_since": next,
            "has_more": page.more,
            // Deletions older than this were swept: a client last in step before it resyncs.
            "deletions_known_since": page.deletions_known_since.map(crate::web::rfc3339),
        }),
    ))
}

async fn categories(
    principal: Principal,
    categories: web::Data<Categories>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::WindevRead)?;
    let data: Vec<CategoryOut> = categories
        .flat(principal.namespace())?
        .into_iter()
        .map(|c| CategoryOut::new(c, None))
        .collect();
    let count = data.len() as u64;
    Ok(envelope::windev(
        format!("{} trouvées", plural(count, "catégorie", "catégories")),
        data,
        count,
        Value::Null,
    ))
}

async fn suppliers(
    principal: Principal,
    suppliers: web::Data<Suppliers>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::WindevRead)?;
    let data: Vec<SupplierOut> = suppliers
        .list(principal.namespace(), &SupplierQuery::default())?
        .into_iter()
        .map(SupplierOut::from)
        .collect();
    let count = data.len() as u64;
    Ok(envelope::windev(
        format!("{} trouvés", plural(count, "fournisseur", "fournisseurs")),
        data,
        count,
        Value::Null,
    ))
}

/// One write to the product a path names.
async fn write_path(
    principal: &Principal,
    catalog: &Catalog,
    reference: &str,
    patch: ProductPatch,
    message: &str,
) -> Result<HttpResponse, Error> {
    let ns = principal.namespace();
    let key = path_key(catalog, ns, reference)?;
    match catalog
        .write_by(ns, key, patch, WhenMissing::Refuse)
        .await?
    {
        Outcome::Created(p) | Outcome::Updated(p) => Ok(envelope::windev(
            message,
            ProductOut::from(p),
            1,
            Value::Null,
        )),
        Outcome::Failed(e) => Err(e),
    }
}

async fn patch(
    principal: Principal,
    catalog: web::Data<Catalog>,
    reference: web::Path<String>,
    body: JsonBody<ProductPatch>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::WindevWrite)?;
    let patch = body.parse()?;
    write_path(
        &principal,
        &catalog,
        &reference,
        patch,
        "Produit mis à jour",
    )
    .await
}

async fn activation(
    principal: Principal,
    catalog: web::Data<Catalog>,
    reference: web::Path<String>,
    active: bool,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::WindevWrite)?;
    let patch = ProductPatch {
        is_active: Field::Value(active),
        ..ProductPatch::default()
    };
    let message = if active {
        "Produit activé"
    } else {
        "Produit désactivé"
    };
    write_path(&principal, &catalog, &reference, patch, message).await
}

async fn activate(
    principal: Principal,
    catalog: web::Data<Catalog>,
    reference: web::Path<String>,
) -> Result<HttpResponse, Error> {
    activation(principal, catalog, reference, true).await
}

async fn deactivate(
    principal: Principal,
    catalog: web::Data<Catalog>,
    reference: web::Path<String>,
) -> Result<HttpResponse, Error> {
    activation(principal, catalog, reference, false).await
}

/// One batch item's answer.
#[derive(Serialize)]
struct BatchResult {
    reference: Option<String>,
    ean: Option<String>,
    status: &'static str,
    errors: Vec<String>,
}

/// The answer to a batch: one result per item, in order, and a summary in the message.
fn batch_answer(what: &str, results: Vec<ItemResult>) -> HttpResponse {
    let failed = results.iter().filter(|r| r.status == "error").count() as u64;
    let count = results.len() as u64;
    let data: Vec<BatchResult> = results
        .into_iter()
        .map(|r| BatchResult {
            reference: r.reference,
            ean: r.ean,
            status: r.status,
            errors: r.errors,
        })
        .collect();
    envelope::windev(
        format!("{what} : {} traités, {} en erreur", count - failed, failed),
        data,
        count,
        json!({"succeeded": count - failed, "failed": failed}),
    )
}

/// A stock line: `{reference or ean, stock}`, stock a whole number from 0.
fn stock_patch(raw: Value) -> Result<ProductPatch, Error> {
    // A whole number, also written as `5.0` (JSON has one number type).
    let whole = |n: &serde_json::Number| {
        n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })
    };
    match raw.get("stock") {
        Some(Value::Number(n)) => match whole(n) {
            Some(s) if s >= 0 => Ok(ProductPatch {
                stock: Field::Value(s),
                ..ProductPatch::default()
            }),
            Some(_) => Err(Error::from(Invalid::new("stock", "must not be negative"))
                .in_french("Stock négatif refusé.")),
            None => Err(Invalid::new("stock", "must be a whole number").into()),
        },
        None | Some(Value::Null) => Err(Invalid::new("stock", "is required").into()),
        Some(_) => Err(Invalid::new("stock", "must be a whole number").into()),
    }
}

/// A price line: `{reference or ean, price, cost_price?}`, amounts from 0.
fn price_patch(raw: Value) -> Result<ProductPatch, Error> {
    let amount = |field: &'static str, required: bool| -> Result<Field<f64>, Error> {
        match raw.get(field) {
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v < 0.0 => Err(Error::from(Invalid::new(field, "must not be negative"))
                    .in_french(format!("Montant négatif refusé ({field})."))),
                Some(v) => Ok(Field::Value(v)),
                None => Err(Invalid::new(field, "must be a number").into()),
            },
            None | Some(Value::Null) if required => Err(Invalid::new(field, "is required").into()),
            None | Some(Value::Null) => Ok(Field::Absent),
            Some(_) => Err(Invalid::new(field, "must be a number").into()),
        }
    };
    Ok(ProductPatch {
        price: amount("price", true)?,
        cost_price: amount("cost_price", false)?,
        ..ProductPatch::default()
    })
}

async fn lines(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<ItemsBody>,
    patch: fn(Value) -> Result<ProductPatch, Error>,
    what: &str,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::WindevWrite)?;
    let raw = body.parse()?.items;
    partner::check_size(&raw, "items", MAX_LINES)?;
    let items = partner::read_items(raw, partner::reference_or_ean_key, patch);
    let results =
        partner::run_batch(&catalog, principal.namespace(), items, WhenMissing::Refuse).await?;
    Ok(batch_answer(what, results))
}

async fn stock_update(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<ItemsBody>,
) -> Result<HttpResponse, Error> {
    lines(
        principal,
        catalog,
        body,
        stock_patch,
        "Mise à jour du stock",
    )
    .await
}

async fn prices_update(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<ItemsBody>,
) -> Result<HttpResponse, Error> {
    lines(
        principal,
        catalog,
        body,
        price_patch,
        "Mise à jour des prix",
    )
    .await
}

/// The reference a sync item is upserted by.
fn reference_key(raw: &Value) -> Result<ProductKey, Error> {
    match raw.get("reference") {
        Some(Value::String(r)) if !r.trim().is_empty() => {
            Ok(ProductKey::Reference(r.trim().to_owned()))
        }
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(Error::from(Invalid::new("reference", "is required"))
                .in_french("Référence manquante : la synchronisation se fait par référence."))
        }
        Some(_) => Err(Invalid::new("reference", "must be a string").into()),
    }
}

async fn sync(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<ProductsBody>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::WindevSync)?;
    let raw = body.parse()?.products;
    partner::check_size(&raw, "products", MAX_SYNC)?;
    let items = partner::read_items(raw, reference_key, partner::patch_of);
    let results =
        partner::run_batch(&catalog, principal.namespace(), items, WhenMissing::Create).await?;
    Ok(batch_answer("Synchronisation", results))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    let batch = || crate::web::BodyScale(partner::BATCH_BODY_SCALE);
    // One scope (see `ext.rs`); unknown paths under it get the app's 404, in the envelope.
    cfg.service(
        web::scope("/windev")
            .service(web::resource("/status").get(status))
            .service(web::resource("/products").get(list))
            .service(web::resource("/products/sync").app_data(batch()).post(sync))
            .service(web::resource("/products/since/{ts}").get(since))
            .service(web::resource("/products/{ref}/activate").post(activate))
            .service(web::resource("/products/{ref}/deactivate").post(deactivate))
            .service(web::resource("/products/{ref}").get(get).patch(patch))
            .service(web::resource("/categories").get(categories))
            .service(web::resource("/suppliers").get(suppliers))
            .service(
                web::resource("/stock/update")
                    .app_data(batch())
                    .post(stock_update),
            )
            .service(
                web::resource("/prices/update")
                    .app_data(batch())
                    .post(prices_update),
            ),
    );
}
