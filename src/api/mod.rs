//! HTTP API v1: one file per resource, each with its DTOs at the top and `configure` at the
//! bottom. Handlers authorize, parse, call one service function, and map to a DTO.
mod accounts;
mod api_keys;
mod auth;
mod meta;
mod products;

use crate::error::{Error, ErrorKind};
use actix_web::web;
use serde::{Deserialize, Serialize};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .configure(auth::configure)
            .configure(api_keys::configure)
            .configure(accounts::configure)
            .configure(products::configure)
            .configure(meta::configure_api),
    );
    // After the API: the page's `/settings/{name}` pattern is then never tried for API paths.
    meta::configure(cfg);
    cfg.default_service(web::to(crate::web::not_found));
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _| Error::bad_request(format!("invalid query parameter: {e}")).into())
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|_, _| Error::new(ErrorKind::NotFound, "not found").into())
}

/// `page`/`per_page`, or the legacy `skip`/`limit`.
#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    pub page: Option<u64>,
    pub per_page: Option<u64>,
    pub skip: Option<u64>,
    pub limit: Option<u64>,
}

pub const MAX_PER_PAGE: u64 = 100;
/// Largest `page` accepted (the OpenAPI document states the same bound).
pub const MAX_PAGE: u64 = 10_000_000;
/// Largest legacy `skip` accepted (the OpenAPI document states the same bound).
pub const MAX_SKIP: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub offset: usize,
    pub per_page: usize,
    pub page: u64,
}

impl PageParams {
    pub fn resolve(&self) -> Result<Page, Error> {
        let per_page = self.per_page.or(self.limit).unwrap_or(20);
        let mut errors = Vec::new();
        if !(1..=MAX_PER_PAGE).contains(&per_page) {
            errors.push(crate::domain::Invalid::new(
                "per_page",
                "must be between 1 and 100",
            ));
        }
        if self.page == Some(0) {
            errors.push(crate::domain::Invalid::new("page", "starts at 1"));
        }
        if self.page.is_some_and(|p| p > MAX_PAGE) {
            errors.push(crate::domain::Invalid::new("page", "is too large"));
        }
        if self.skip.is_some_and(|s| s > MAX_SKIP) {
            errors.push(crate::domain::Invalid::new("skip", "is too large"));
        }
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        let offset = match (self.page, self.skip) {
            (Some(page), _) => (page - 1) * per_page,
            (None, Some(skip)) => skip,
            (None, None) => 0,
        };
        Ok(Page {
            offset: usize::try_from(offset).unwrap_or(usize::MAX),
            per_page: usize::try_from(per_page).unwrap_or(20),
            page: offset / per_page + 1,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct ListResponse<T> {
    pub items: Vec<T>,
    pub total: u64,
    pub page: u64,
    pub per_page: u64,
    pub pages: u64,
}

impl<T> ListResponse<T> {
    pub fn new(items: Vec<T>, total: u64, page: Page) -> Self {
        let per_page = page.per_page as u64;
        ListResponse {
            items,
            total,
            page: page.page,
            per_page,
            pages: total.div_ceil(per_page),
        }
    }

    /// Pages a list already held in memory.
    pub fn from_all(all: Vec<T>, page: Page) -> Self {
        let total = all.len() as u64;
        let items = all
            .into_iter()
            .skip(page.offset)
            .take(page.per_page)
            .collect();
        ListResponse::new(items, total, page)
    }
}

/// A path id: anything that is not a UUID is simply not found.
pub fn path_id(raw: &str, what: &str) -> Result<uuid::Uuid, Error> {
    uuid::Uuid::try_parse(raw).map_err(|_| Error::not_found(what))
}
