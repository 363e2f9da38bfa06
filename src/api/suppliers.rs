//! `/suppliers`: list, get (scope `suppliers:read`), create, patch, delete (an editor or admin
//! session). Every call works in the caller's namespace (tenant + environment).
use super::{ListResponse, PageParams, path_id};
use crate::auth::Principal;
use crate::catalog::{SupplierPatch, SupplierQuery, Suppliers};
use crate::domain::Scope;
use crate::error::Error;
use crate::views::SupplierOut;
use crate::web::JsonBody;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

#[derive(Deserialize)]
struct ListParams {
    search: Option<String>,
    #[serde(default, deserialize_with = "super::query_bool")]
    is_active: Option<bool>,
}

#[derive(Deserialize)]
struct DeleteParams {
    #[serde(default, deserialize_with = "super::query_bool")]
    detach: Option<bool>,
}

async fn list_suppliers(
    principal: Principal,
    suppliers: web::Data<Suppliers>,
    params: web::Query<ListParams>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::SuppliersRead)?;
    let params = params.into_inner();
    let page = page.resolve()?;
    let query = SupplierQuery {
        search: super::search_text(params.search),
        is_active: params.is_active,
    };
    let all = suppliers.list(principal.namespace(), &query)?;
    let all = all.into_iter().map(SupplierOut::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse::from_all(all, page)))
}

async fn get_supplier(
    principal: Principal,
    suppliers: web::Data<Suppliers>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::SuppliersRead)?;
    let id = path_id(&id, "supplier")?;
    let supplier = suppliers.get(principal.namespace(), id)?;
    Ok(HttpResponse::Ok().json(SupplierOut::from(supplier)))
}

async fn create_supplier(
    principal: Principal,
    suppliers: web::Data<Suppliers>,
    body: JsonBody<SupplierPatch>,
) -> Result<HttpResponse, Error> {
    principal.require_editor()?;
    let supplier = suppliers
        .create(principal.namespace(), body.parse()?)
        .await?;
    Ok(HttpResponse::Created().json(SupplierOut::from(supplier)))
}

async fn patch_supplier(
    principal: Principal,
    suppliers: web::Data<Suppliers>,
    id: web::Path<String>,
    body: JsonBody<SupplierPatch>,
) -> Result<HttpResponse, Error> {
    principal.require_editor()?;
    let id = path_id(&id, "supplier")?;
    let supplier = suppliers
        .patch(principal.namespace(), id, body.parse()?)
        .await?;
    Ok(HttpResponse::Ok().json(SupplierOut::from(supplier)))
}

async fn delete_supplier(
    principal: Principal,
    suppliers: web::Data<Suppliers>,
    id: web::Path<String>,
    params: web::Query<DeleteParams>,
) -> Result<HttpResponse, Error> {
    principal.require_editor()?;
    let id = path_id(&id, "supplier")?;
    let detach = params.detach.unwrap_or(false);
    suppliers.delete(principal.namespace(), id, detach).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/suppliers")
            .get(list_suppliers)
            .post(create_supplier),
    )
    .service(
        web::resource("/suppliers/{id}")
            .get(get_supplier)
            .patch(patch_supplier)
            .delete(delete_supplier),
    );
}
