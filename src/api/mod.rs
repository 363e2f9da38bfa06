//! HTTP API v1: one file per resource, each with its DTOs at the top and `configure` at the
//! bottom. Handlers authorize, parse, call one service function, and map to a DTO.
mod accounts;
mod api_keys;
mod auth;
mod categories;
pub mod envelope;
mod exports;
mod ext;
mod imports;
mod meta;
mod partner;
mod products;
mod suppliers;
mod webhooks;
mod windev;

use crate::error::{Error, ErrorKind};
use actix_web::web;
use serde::{Deserialize, Serialize};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            // The partner surfaces first: their prefixes are told apart at once.
            .configure(ext::configure)
            .configure(windev::configure)
            .configure(auth::configure)
            .configure(api_keys::configure)
            .configure(accounts::configure)
            .configure(products::configure)
            .configure(suppliers::configure)
            .configure(categories::configure)
            .configure(imports::configure)
            .configure(exports::configure)
            .configure(webhooks::configure)
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
///
/// `per_page` (1 to 100, default 20) and `limit` (1 to 500, default 50) each keep their own
/// bounds; `per_page` wins when both are given. The offset is `page`'s when given, else
/// `skip`'s. A request that uses only the legacy pair gets the legacy page size and the old
/// `meta` object in its answer, so clients written against the older docs keep paging.
#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    pub page: Option<u64>,
    pub per_page: Option<u64>,
    pub skip: Option<u64>,
    pub limit: Option<u64>,
}

pub const MAX_PER_PAGE: u64 = 100;
/// Largest legacy `limit`, and its default.
pub const MAX_LIMIT: u64 = 500;
pub const DEFAULT_LIMIT: u64 = 50;
/// Largest `page` accepted (the OpenAPI document states the same bound).
pub const MAX_PAGE: u64 = 10_000_000;
/// Largest legacy `skip` accepted (the OpenAPI document states the same bound).
pub const MAX_SKIP: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub offset: usize,
    pub per_page: usize,
    pub page: u64,
    /// Only `skip`/`limit` were given: the answer carries the legacy `meta`.
    pub legacy: bool,
}

impl PageParams {
    pub fn resolve(&self) -> Result<Page, Error> {
        let legacy = self.page.is_none()
            && self.per_page.is_none()
            && (self.skip.is_some() || self.limit.is_some());
        let mut errors = Vec::new();
        if self
            .per_page
            .is_some_and(|n| !(1..=MAX_PER_PAGE).contains(&n))
        {
            errors.push(crate::domain::Invalid::new(
                "per_page",
                "must be between 1 and 100",
            ));
        }
        if self.limit.is_some_and(|n| !(1..=MAX_LIMIT).contains(&n)) {
            errors.push(crate::domain::Invalid::new(
                "limit",
                "must be between 1 and 500",
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
        let default = if legacy { DEFAULT_LIMIT } else { 20 };
        let per_page = self.per_page.or(self.limit).unwrap_or(default);
        let offset = match (self.page, self.skip) {
            (Some(page), _) => (page - 1) * per_page,
            (None, Some(skip)) => skip,
            (None, None) => 0,
        };
        Ok(Page {
            offset: usize::try_from(offset).unwrap_or(usize::MAX),
            per_page: usize::try_from(per_page).unwrap_or(20),
            page: offset / per_page + 1,
            legacy,
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
    /// The older docs' paging object, answered to `skip`/`limit` requests only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<LegacyMeta>,
}

#[derive(Debug, Serialize)]
pub struct LegacyMeta {
    pub total: u64,
    pub page: u64,
    pub per_page: u64,
    pub total_pages: u64,
    pub has_next: bool,
    pub has_previous: bool,
}

impl<T> ListResponse<T> {
    pub fn new(items: Vec<T>, total: u64, page: Page) -> Self {
        let per_page = page.per_page as u64;
        let pages = total.div_ceil(per_page);
        let meta = page.legacy.then(|| LegacyMeta {
            total,
            page: page.page,
            per_page,
            total_pages: pages,
            has_next: (page.offset as u64).saturating_add(items.len() as u64) < total,
            has_previous: page.offset > 0,
        });
        ListResponse {
            items,
            total,
            page: page.page,
            per_page,
            pages,
            meta,
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

/// A `search` value as the catalog matches it: trimmed and lower-cased; blank is no search.
pub fn search_text(raw: Option<String>) -> Option<String> {
    raw.map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
}

/// A boolean in a query string: `true`, `false`, `1` or `0` (older clients send the digits).
pub fn query_bool<'de, D>(de: D) -> Result<Option<bool>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw: Option<String> = Option::deserialize(de)?;
    raw.map(|s| match s.as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(serde::de::Error::custom(
            "a boolean must be true, false, 1 or 0",
        )),
    })
    .transpose()
}

/// An RFC 3339 time in a query string. A `+` in an offset that reached us as a space (an
/// unencoded `+` means space in a query string) is read as the `+` it was.
pub fn query_time<'de, D>(de: D) -> Result<Option<time::OffsetDateTime>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw: Option<String> = Option::deserialize(de)?;
    raw.map(|s| {
        time::OffsetDateTime::parse(
            &s.trim().replace(' ', "+"),
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| {
            serde::de::Error::custom("a time must be RFC 3339, such as 2026-01-31T12:00:00Z")
        })
    })
    .transpose()
}

/// A path id: anything that is not a UUID is simply not found.
pub fn path_id(raw: &str, what: &str) -> Result<uuid::Uuid, Error> {
    uuid::Uuid::try_parse(raw).map_err(|_| Error::not_found(what))
}
