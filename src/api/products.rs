//! `/products`: list, create, get, replace, patch, delete, bulk delete. Every call works in the
//! caller's namespace (tenant + environment), so a test key never touches live data.
use super::{ListResponse, PageParams, path_id};
use crate::auth::Principal;
use crate::catalog::products::MAX_BULK_DELETE;
use crate::catalog::{Catalog, ListQuery, ProductPatch, SortBy};
use crate::domain::{Invalid, ProductId, Scope};
use crate::error::Error;
use crate::views::{DeletedOut, ProductOut};
use crate::web::JsonBody;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Query of the list route. Pagination fields are spelled out rather than flattened: serde's
/// `flatten` loses the types of url-encoded values.
#[derive(Deserialize)]
struct ListParams {
    page: Option<u64>,
    per_page: Option<u64>,
    skip: Option<u64>,
    limit: Option<u64>,
    search: Option<String>,
    #[serde(default, deserialize_with = "super::query_bool")]
    is_active: Option<bool>,
    #[serde(default, deserialize_with = "super::query_time")]
    updated_since: Option<OffsetDateTime>,
    supplier_id: Option<Uuid>,
    category_id: Option<Uuid>,
    sort_by: Option<SortBy>,
    sort_order: Option<SortOrder>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum SortOrder {
    Asc,
    Desc,
}

/// A list answer to `updated_since`: the page, plus the deletions since then.
#[derive(Serialize)]
struct ChangeFeed {
    #[serde(flatten)]
    list: ListResponse<ProductOut>,
    deleted: Vec<DeletedOut>,
    /// More than `MAX_DELETED` deletions: ask again from the last one's `deleted_at`.
    deleted_more: bool,
}

#[derive(Deserialize)]
struct BulkDelete {
    ids: Vec<String>,
}

#[derive(Serialize)]
struct BulkDeleted {
    deleted: usize,
    not_found: Vec<String>,
}

async fn list_products(
    principal: Principal,
    catalog: web::Data<Catalog>,
    params: web::Query<ListParams>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ProductsRead)?;
    let params = params.into_inner();
    let ns = principal.namespace();
    if params.search.is_some() {
        // The index first takes in every write acknowledged so far: a client finds what it has
        // just written, whether the answer is computed or kept.
        catalog.search_ready().await;
    }
    // Answers are kept until the next catalog write or index commit.
    if let Some(body) = catalog.cached_page(ns, req.query_string()) {
        return Ok(json_body(body));
    }
    let epoch = catalog.epoch();
    let page = PageParams {
        page: params.page,
        per_page: params.per_page,
        skip: params.skip,
        limit: params.limit,
    }
    .resolve()?;
    let search = super::search_text(params.search);
    if search
        .as_ref()
        .is_some_and(|s| s.chars().count() > crate::search::MAX_SEARCH_CHARS)
    {
        return Err(Error::invalid(vec![Invalid::new(
            "search",
            format!(
                "must be at most {} characters",
                crate::search::MAX_SEARCH_CHARS
            ),
        )]));
    }
    let query = ListQuery {
        search,
        is_active: params.is_active,
        updated_since: params.updated_since,
        supplier_id: params.supplier_id,
        category_id: params.category_id,
        sort_by: params.sort_by,
        descending: params.sort_order.unwrap_or(SortOrder::Desc) == SortOrder::Desc,
        offset: page.offset,
        limit: page.per_page,
    };
    let (items, total) = catalog.list(ns, &query)?;
    let items = items.into_iter().map(ProductOut::from).collect();
    let list = ListResponse::new(items, total, page);
    let body = match params.updated_since {
        None => serde_json::to_vec(&list),
        // A change feed: also the products deleted since then, from their tombstones.
        Some(since) => {
            let (deleted, deleted_more) = catalog.deleted_since(ns, since)?;
            serde_json::to_vec(&ChangeFeed {
                list,
                deleted: deleted.into_iter().map(DeletedOut::from).collect(),
                deleted_more,
            })
        }
    }
    .map_err(Error::internal)?;
    let body: std::sync::Arc<[u8]> = body.into();
    catalog.keep_page(ns, req.query_string(), epoch, body.clone());
    Ok(json_body(body))
}

fn json_body(body: std::sync::Arc<[u8]>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(actix_web::http::header::ContentType::json())
        .body(web::Bytes::from_owner(body))
}

async fn create_product(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<ProductPatch>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ProductsWrite)?;
    let product = catalog.create(principal.namespace(), body.parse()?).await?;
    Ok(HttpResponse::Created().json(ProductOut::from(product)))
}

async fn get_product(
    principal: Principal,
    catalog: web::Data<Catalog>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ProductsRead)?;
    let id = ProductId(path_id(&id, "product")?);
    Ok(HttpResponse::Ok().json(ProductOut::from(catalog.get(principal.namespace(), id)?)))
}

async fn replace_product(
    principal: Principal,
    catalog: web::Data<Catalog>,
    id: web::Path<String>,
    body: JsonBody<ProductPatch>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ProductsWrite)?;
    let id = ProductId(path_id(&id, "product")?);
    let product = catalog
        .replace(principal.namespace(), id, body.parse()?)
        .await?;
    Ok(HttpResponse::Ok().json(ProductOut::from(product)))
}

async fn patch_product(
    principal: Principal,
    catalog: web::Data<Catalog>,
    id: web::Path<String>,
    body: JsonBody<ProductPatch>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ProductsWrite)?;
    let id = ProductId(path_id(&id, "product")?);
    let product = catalog
        .patch(principal.namespace(), id, body.parse()?)
        .await?;
    Ok(HttpResponse::Ok().json(ProductOut::from(product)))
}

async fn delete_product(
    principal: Principal,
    catalog: web::Data<Catalog>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ProductsDelete)?;
    let id = ProductId(path_id(&id, "product")?);
    if catalog
        .delete(principal.namespace(), &[id])
        .await?
        .is_empty()
    {
        return Err(Error::not_found("product"));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Deletes up to 1000 products at once; answers how many went and which ids were not found.
async fn bulk_delete(
    principal: Principal,
    catalog: web::Data<Catalog>,
    body: JsonBody<BulkDelete>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ProductsDelete)?;
    let raw = body.parse()?.ids;
    if raw.is_empty() || raw.len() > MAX_BULK_DELETE {
        return Err(Invalid::new("ids", "must hold 1 to 1000 ids").into());
    }
    let mut ids = Vec::with_capacity(raw.len());
    let mut not_found = Vec::new();
    for s in raw {
        match Uuid::try_parse(&s) {
            Ok(u) => ids.push(ProductId(u)),
            Err(_) => not_found.push(s),
        }
    }
    let deleted = catalog.delete(principal.namespace(), &ids).await?;
    not_found.extend(
        ids.iter()
            .filter(|id| !deleted.contains(id))
            .map(ToString::to_string),
    );
    Ok(HttpResponse::Ok().json(BulkDeleted {
        deleted: deleted.len(),
        not_found,
    }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/products")
            .get(list_products)
            .post(create_product),
    )
    .service(web::resource("/products/bulk-delete").post(bulk_delete))
    .service(
        web::resource("/products/{id}")
            .get(get_product)
            .put(replace_product)
            .patch(patch_product)
            .delete(delete_product),
    );
}
