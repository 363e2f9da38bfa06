//! `/categories`: the tree, one category with its children, and the channel mappings (scope
//! `categories:read`); create, rename, move, reorder, delete and mapping writes (an editor or
//! admin session). Every call works in the caller's namespace (tenant + environment).
use super::{ListResponse, PageParams, path_id};
use crate::auth::Principal;
use crate::catalog::{Categories, CategoryNode, CategoryPatch, MappingBody};
use crate::domain::Scope;
use crate::error::Error;
use crate::store::{CategoryRecord, MappingRecord};
use crate::web::JsonBody;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Deserialize)]
struct TreeParams {
    #[serde(default, deserialize_with = "super::query_bool")]
    flat: Option<bool>,
}

#[derive(Deserialize)]
struct MappingParams {
    channel: Option<String>,
}

#[derive(Deserialize)]
struct DeleteParams {
    #[serde(default, deserialize_with = "super::query_bool")]
    cascade: Option<bool>,
}

#[derive(Serialize)]
pub(super) struct CategoryOut {
    id: Uuid,
    name: String,
    parent_id: Option<Uuid>,
    position: u32,
    path: String,
    depth: u32,
    /// Products that list this category itself (not its descendants).
    product_count: u64,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    children: Option<Vec<CategoryOut>>,
}

impl CategoryOut {
    pub(super) fn new(c: CategoryRecord, children: Option<Vec<CategoryOut>>) -> Self {
        CategoryOut {
            id: c.id,
            name: c.name,
            parent_id: c.parent_id,
            position: c.position,
            path: c.path,
            depth: c.depth,
            product_count: c.product_count,
            created_at: c.created_at,
            updated_at: c.updated_at,
            children,
        }
    }

    fn node(n: CategoryNode) -> Self {
        let children = n.children.into_iter().map(CategoryOut::node).collect();
        CategoryOut::new(n.category, Some(children))
    }
}

/// The tree: every root with its descendants nested, and how many categories it holds.
#[derive(Serialize)]
struct TreeOut {
    items: Vec<CategoryOut>,
    total: u64,
}

#[derive(Serialize)]
struct MappingOut {
    id: Uuid,
    category_id: Uuid,
    channel: String,
    external_id: String,
    external_name: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<MappingRecord> for MappingOut {
    fn from(m: MappingRecord) -> Self {
        MappingOut {
            id: m.id,
            category_id: m.category_id,
            channel: m.channel,
            external_id: m.external_id,
            external_name: m.external_name,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

async fn list_categories(
    principal: Principal,
    categories: web::Data<Categories>,
    params: web::Query<TreeParams>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::CategoriesRead)?;
    let page = page.resolve()?;
    let ns = principal.namespace();
    if params.flat.unwrap_or(false) {
        let all = categories
            .flat(ns)?
            .into_iter()
            .map(|c| CategoryOut::new(c, None))
            .collect();
        return Ok(HttpResponse::Ok().json(ListResponse::from_all(all, page)));
    }
    let roots = categories.tree(ns)?;
    fn count(nodes: &[CategoryNode]) -> u64 {
        nodes.iter().map(|n| 1 + count(&n.children)).sum()
    }
    let total = count(&roots);
    let items = roots.into_iter().map(CategoryOut::node).collect();
    Ok(HttpResponse::Ok().json(TreeOut { items, total }))
}

async fn get_category(
    principal: Principal,
    categories: web::Data<Categories>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::CategoriesRead)?;
    let id = path_id(&id, "category")?;
    let ns = principal.namespace();
    let category = categories.get(ns, id)?;
    let children = categories
        .children(ns, id)?
        .into_iter()
        .map(|c| CategoryOut::new(c, None))
        .collect();
    Ok(HttpResponse::Ok().json(CategoryOut::new(category, Some(children))))
}

async fn create_category(
    principal: Principal,
    categories: web::Data<Categories>,
    body: JsonBody<CategoryPatch>,
) -> Result<HttpResponse, Error> {
    principal.require_editor()?;
    let category = categories
        .create(principal.namespace(), body.parse()?)
        .await?;
    Ok(HttpResponse::Created().json(CategoryOut::new(category, None)))
}

async fn patch_category(
    principal: Principal,
    categories: web::Data<Categories>,
    id: web::Path<String>,
    body: JsonBody<CategoryPatch>,
) -> Result<HttpResponse, Error> {
    principal.require_editor()?;
    let id = path_id(&id, "category")?;
    let category = categories
        .patch(principal.namespace(), id, body.parse()?)
        .await?;
    Ok(HttpResponse::Ok().json(CategoryOut::new(category, None)))
}

async fn delete_category(
    principal: Principal,
    categories: web::Data<Categories>,
    id: web::Path<String>,
    params: web::Query<DeleteParams>,
) -> Result<HttpResponse, Error> {
    principal.require_editor()?;
    let id = path_id(&id, "category")?;
    let cascade = params.cascade.unwrap_or(false);
    categories
        .delete(principal.namespace(), id, cascade)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn list_mappings(
    principal: Principal,
    categories: web::Data<Categories>,
    params: web::Query<MappingParams>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::CategoriesRead)?;
    let page = page.resolve()?;
    let channel = params
        .channel
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let all = categories
        .mappings(principal.namespace(), channel)?
        .into_iter()
        .map(MappingOut::from)
        .collect();
    Ok(HttpResponse::Ok().json(ListResponse::from_all(all, page)))
}

async fn put_mapping(
    principal: Principal,
    categories: web::Data<Categories>,
    path: web::Path<(String, String)>,
    body: JsonBody<MappingBody>,
) -> Result<HttpResponse, Error> {
    principal.require_editor()?;
    let (id, channel) = path.into_inner();
    let id = path_id(&id, "category")?;
    let (mapping, created) = categories
        .put_mapping(principal.namespace(), id, &channel, body.parse()?)
        .await?;
    let mut res = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(res.json(MappingOut::from(mapping)))
}

async fn delete_mapping(
    principal: Principal,
    categories: web::Data<Categories>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    principal.require_editor()?;
    let (id, channel) = path.into_inner();
    let id = path_id(&id, "category")?;
    categories
        .delete_mapping(principal.namespace(), id, &channel)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    // `/categories/mappings` before `/categories/{id}`, which would otherwise take it.
    cfg.service(web::resource("/categories/mappings").get(list_mappings))
        .service(
            web::resource("/categories")
                .get(list_categories)
                .post(create_category),
        )
        .service(
            web::resource("/categories/{id}")
                .get(get_category)
                .patch(patch_category)
                .delete(delete_category),
        )
        .service(
            web::resource("/categories/{id}/mappings/{channel}")
                .put(put_mapping)
                .delete(delete_mapping),
        );
}
