//! `/exports`: start a CSV, JSON or XLSX export of the products (`exports:write`), follow it
//! (`exports:read`) and download its file (`exports:write`), streamed from the data dir
//! (SPEC §8).
use super::{ListResponse, PageParams, path_id};
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::Error;
use crate::jobs::{ExportRequest, Jobs};
use crate::store::{JobKind, JobRecord};
use crate::web::rfc3339;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

#[derive(Serialize)]
struct ExportJobOut {
    id: Uuid,
    status: &'static str,
    format: String,
    file_name: String,
    created_at: String,
    finished_at: Option<String>,
    expires_at: Option<String>,
    total_rows: Option<u64>,
    file_size: u64,
    fields: Vec<String>,
    error: Option<String>,
}

impl From<JobRecord> for ExportJobOut {
    fn from(j: JobRecord) -> Self {
        ExportJobOut {
            id: j.id,
            status: j.status.as_str(),
            format: j.format,
            file_name: j.file_name,
            created_at: rfc3339(j.created_at),
            finished_at: j.finished_at.map(rfc3339),
            expires_at: j.expires_at.map(rfc3339),
            total_rows: j.total_rows,
            file_size: j.file_size,
            fields: j.export.fields,
            error: j.error,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Filters {
    search: Option<String>,
    is_active: Option<bool>,
    supplier_id: Option<Uuid>,
    category_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option")]
    updated_since: Option<time::OffsetDateTime>,
}

/// One body for the three formats; each reads the options SPEC §8 gives it (and the column
/// choice, which all honour).
#[derive(Deserialize)]
#[serde(default)]
struct ExportBody {
    filters: Filters,
    include_fields: Vec<String>,
    exclude_fields: Vec<String>,
    utf8_bom: bool,
    pretty: bool,
    json_lines: bool,
    include_sheets: Vec<String>,
}

impl Default for ExportBody {
    fn default() -> Self {
        ExportBody {
            filters: Filters::default(),
            include_fields: Vec::new(),
            exclude_fields: Vec::new(),
            utf8_bom: true,
            pretty: true,
            json_lines: false,
            include_sheets: Vec::new(),
        }
    }
}

async fn start(
    req: HttpRequest,
    principal: Principal,
    jobs: web::Data<Jobs>,
    format: &'static str,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ExportsWrite)?;
    if req.headers().contains_key(header::CONTENT_TYPE) && !crate::web::is_json(&req) {
        return Err(Error::new(
            crate::error::ErrorKind::UnsupportedMediaType,
            "send the options as JSON with Content-Type: application/json (or no body)",
        ));
    }
    let body: ExportBody = crate::web::read_optional_json(&req, payload).await?;
    let request = ExportRequest {
        format: format.to_owned(),
        search: super::search_text(body.filters.search),
        is_active: body.filters.is_active,
        supplier_id: body.filters.supplier_id,
        category_id: body.filters.category_id,
        updated_since: body.filters.updated_since,
        include_fields: body.include_fields,
        exclude_fields: body.exclude_fields,
        utf8_bom: body.utf8_bom,
        pretty: body.pretty,
        json_lines: body.json_lines,
        include_sheets: body.include_sheets,
    };
    if request.search.is_some() {
        // As for a list: the index first takes in every write acknowledged so far, so the
        // export holds what the client has just written.
        jobs.search_ready().await;
    }
    let ns = principal.namespace();
    let actor = principal.actor();
    let jobs = jobs.into_inner();
    let job = web::block(move || jobs.create_export(ns, request, actor))
        .await
        .map_err(Error::internal)??;
    Ok(HttpResponse::Accepted().json(ExportJobOut::from(job)))
}

async fn csv(
    req: HttpRequest,
    principal: Principal,
    jobs: web::Data<Jobs>,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    start(req, principal, jobs, "csv", payload).await
}

async fn json(
    req: HttpRequest,
    principal: Principal,
    jobs: web::Data<Jobs>,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    start(req, principal, jobs, "json", payload).await
}

async fn xlsx(
    req: HttpRequest,
    principal: Principal,
    jobs: web::Data<Jobs>,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    start(req, principal, jobs, "xlsx", payload).await
}

async fn list_jobs(
    principal: Principal,
    jobs: web::Data<Jobs>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ExportsRead)?;
    let page = page.resolve()?;
    let all = jobs.list(principal.namespace(), JobKind::Export)?;
    let all = all.into_iter().map(ExportJobOut::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse::from_all(all, page)))
}

async fn get_job(
    principal: Principal,
    jobs: web::Data<Jobs>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ExportsRead)?;
    let id = path_id(&id, "export job")?;
    let job = jobs.get(principal.namespace(), JobKind::Export, id)?;
    Ok(HttpResponse::Ok().json(ExportJobOut::from(job)))
}

async fn cancel(
    principal: Principal,
    jobs: web::Data<Jobs>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ExportsWrite)?;
    let id = path_id(&id, "export job")?;
    let ns = principal.namespace();
    let jobs = jobs.into_inner();
    let job = web::block(move || jobs.cancel(ns, JobKind::Export, id))
        .await
        .map_err(Error::internal)??;
    Ok(HttpResponse::Ok().json(ExportJobOut::from(job)))
}

/// Streams a completed export's file in 64 KiB reads.
async fn download(
    principal: Principal,
    jobs: web::Data<Jobs>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ExportsWrite)?;
    let id = path_id(&id, "export job")?;
    let file = jobs.download(principal.namespace(), id)?;
    let handle = tokio::fs::File::open(&file.path)
        .await
        .map_err(Error::internal)?;
    let chunks = futures_util::stream::unfold(handle, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(web::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type(file.content_type)
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", file.file_name),
        ))
        .body(actix_web::body::SizedStream::new(file.size, chunks)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/exports/csv/products").post(csv))
        .service(web::resource("/exports/json/products").post(json))
        .service(web::resource("/exports/xlsx/products").post(xlsx))
        .service(web::resource("/exports/jobs").get(list_jobs))
        .service(web::resource("/exports/jobs/{id}").get(get_job))
        .service(web::resource("/exports/jobs/{id}/cancel").post(cancel))
        .service(web::resource("/exports/jobs/{id}/download").get(download));
}
