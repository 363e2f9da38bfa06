//! `/ext` (SPEC §9): the External API machine-to-machine integrations use. API keys only,
//! products addressed by EAN, every answer in the `{success, data, meta, errors}` envelope
//! (`envelope.rs`; errors are rewritten into it by the request middleware).
use super::envelope::{self, ExtMeta};
use super::partner::{self, ItemResult, ListFilters, ProductsBody};
use crate::auth::Principal;
use crate::catalog::batch::{Outcome, ProductKey, WhenMissing};
use crate::catalog::{Catalog, ProductPatch};
use crate::domain::{Ean, Invalid, Scope};
use crate::error::{Error, ErrorKind};
use crate::views::ProductOut;
use crate::web::JsonBody;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

/// Most items in one batch.
pub const MAX_BATCH: usize = 500;

#[derive(Serialize)]
struct Status {
    status: &'static str,
    version: &'static str,
    api_key_name: String,
    scopes: Vec<&'static str>,
}

async fn status(principal: Principal) -> Result<HttpResponse, Error> {
    let key = partner::key_of(&principal)?;
    principal.require(Scope::ExtProductsRead)?;
    Ok(envelope::ext(
        StatusCode::OK,
        Status {
            status: "ok",
            version: "1.0",
            api_key_name: key.name.clone(),
            scopes: principal.scopes.names(),
        },
        ExtMeta::single(),
    ))
}

#[derive(Deserialize)]
struct ListParams {
    page: Option<u64>,
    page_size: Option<u64>,
    search: Option<String>,
    #[serde(default, deserialize_with = "super::query_bool")]
    is_active: Option<bool>,
    #[serde(default, deserialize_with = "super::query_time")]
    updated_since: Option<time::OffsetDateTime>,
}

async fn list(
    principal: Principal,
    catalog: web::Data<Catalog>,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::ExtProductsRead)?;
    let params = params.into_inner();
    let (items, total, page) = partner::list(
        &catalog,
        principal.namespace(),
        params.page,
        params.page_size,
        "page_size",
        ListFilters {
            search: params.search,
            is_active: params.is_active,
            updated_since: params.updated_since,
        },
    )
    .await?;
    let data: Vec<ProductOut> = items.into_iter().map(ProductOut::from).collect();
    Ok(envelope::ext(
        StatusCode::OK,
        data,
        ExtMeta::list(total, page.page, page.per_page as u64),
    ))
}

/// The EAN of a path: one that cannot be an EAN names no product.
fn path_ean(raw: &str) -> Result<String, Error> {
    Ean::parse(raw)
        .map(|e| e.as_str().to_owned())
        .map_err(|_| ProductKey::Ean(raw.to_owned()).not_found())
}

async fn get(
    principal: Principal,
    catalog: web::Data<Catalog>,
    ean: web::Path<String>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::ExtProductsRead)?;
    let ean = path_ean(&ean)?;
    let product = catalog.get_by(principal.namespace(), &ProductKey::Ean(ean))?;
    Ok(envelope::ext(
        StatusCode::OK,
        ProductOut::from(product),
        ExtMeta::single(),
    ))
}

async fn create(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<ProductPatch>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::ExtProductsWrite)?;
    let patch = body.parse()?;
    let product = catalog
        .create(principal.namespace(), patch)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::DuplicateEan => e.in_french("Un produit avec cet EAN existe déjà."),
            _ => e,
        })?;
    Ok(envelope::ext(
        StatusCode::CREATED,
        ProductOut::from(product),
        ExtMeta::single(),
    ))
}

/// The body of a write addressed by EAN may repeat the EAN, never name another.
fn same_ean(patch: &ProductPatch, ean: &str) -> Result<(), Error> {
    match &patch.ean {
        crate::catalog::field::Field::Value(v)
            if !Ean::parse(v).is_ok_and(|e| e.as_str() == ean) =>
        {
            Err(Invalid::new("ean", "must equal the EAN of the path").into())
        }
        _ => Ok(()),
    }
}

/// PUT: creates the product (201) or replaces every field of the one holding the EAN (200).
async fn put(
    principal: Principal,
    catalog: web::Data<Catalog>,
    ean: web::Path<String>,
    body: JsonBody<ProductPatch>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::ExtProductsWrite)?;
    let ean = Ean::parse(&ean).map_err(Error::from)?.as_str().to_owned();
    let mut patch = body.parse()?;
    same_ean(&patch, &ean)?;
    patch.ean = crate::catalog::field::Field::Value(ean.clone());
    let ns = principal.namespace();
    // A replace of an existing product, or a create; a create that loses a race with another
    // one for the same EAN replaces what that one made.
    for _ in 0..3 {
        if let Some(current) = catalog.find(ns, &ProductKey::Ean(ean.clone()))? {
            return match catalog.replace(ns, current.id, patch.clone()).await {
                Ok(p) => Ok(envelope::ext(
                    StatusCode::OK,
                    ProductOut::from(p),
                    ExtMeta::single(),
                )),
                Err(e) if e.kind == ErrorKind::NotFound => continue,
                Err(e) => Err(e),
            };
        }
        match catalog.create(ns, patch.clone()).await {
            Ok(p) => {
                return Ok(envelope::ext(
                    StatusCode::CREATED,
                    ProductOut::from(p),
                    ExtMeta::single(),
                ));
            }
            Err(e) if e.kind == ErrorKind::DuplicateEan => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::new(
        ErrorKind::Conflict,
        "the product kept changing during the write; retry",
    ))
}

async fn patch(
    principal: Principal,
    catalog: web::Data<Catalog>,
    ean: web::Path<String>,
    body: JsonBody<ProductPatch>,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::ExtProductsWrite)?;
    let ean = path_ean(&ean)?;
    let patch = body.parse()?;
    same_ean(&patch, &ean)?;
    match catalog
        .write_by(
            principal.namespace(),
            ProductKey::Ean(ean),
            patch,
            WhenMissing::Refuse,
        )
        .await?
    {
        Outcome::Created(p) | Outcome::Updated(p) => Ok(envelope::ext(
            StatusCode::OK,
            ProductOut::from(p),
            ExtMeta::single(),
        )),
        Outcome::Failed(e) => Err(e),
    }
}

/// One batch item's answer.
#[derive(Serialize)]
struct BatchResult {
    ean: Option<String>,
    status: &'static str,
    errors: Vec<String>,
}

impl From<ItemResult> for BatchResult {
    fn from(r: ItemResult) -> Self {
        BatchResult {
            ean: r.ean,
            status: r.status,
            errors: r.errors,
        }
    }
}

/// POST (upsert by EAN) and PATCH (partial updates of existing products) of up to 500.
async fn batch(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<ProductsBody>,
    missing: WhenMissing,
) -> Result<HttpResponse, Error> {
    partner::key_of(&principal)?;
    principal.require(Scope::ExtProductsWrite)?;
    let raw = body.parse()?.products;
    partner::check_size(&raw, "products", MAX_BATCH)?;
    let items = partner::read_items(raw, partner::ean_key, partner::patch_of);
    let results = partner::run_batch(&catalog, principal.namespace(), items, missing).await?;
    let total = results.len() as u64;
    let data: Vec<BatchResult> = results.into_iter().map(BatchResult::from).collect();
    Ok(envelope::ext(
        StatusCode::OK,
        data,
        ExtMeta::list(total, 1, total),
    ))
}

async fn batch_upsert(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<ProductsBody>,
) -> Result<HttpResponse, Error> {
    batch(principal, catalog, body, WhenMissing::Create).await
}

async fn batch_patch(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<ProductsBody>,
) -> Result<HttpResponse, Error> {
    batch(principal, catalog, body, WhenMissing::Refuse).await
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    // One scope: the router tells `/ext` paths by their prefix instead of trying every
    // pattern of the API on them. Unknown paths under it fall to the app's default service,
    // whose 404 the middleware gives the envelope.
    cfg.service(
        web::scope("/ext")
            .service(web::resource("/status").get(status))
            .service(web::resource("/products").get(list).post(create))
            .service(
                web::resource("/products/batch")
                    .app_data(crate::web::BodyScale(partner::BATCH_BODY_SCALE))
                    .post(batch_upsert)
                    .patch(batch_patch),
            )
            .service(
                web::resource("/products/{ean}")
                    .get(get)
                    .put(put)
                    .patch(patch),
            ),
    );
}
