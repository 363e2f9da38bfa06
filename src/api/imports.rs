//! `/imports`: upload a file (multipart, `imports:write`), follow the job (`imports:read`),
//! map its columns, start, cancel, read its log and error report, and saved mappings
//! (SPEC §8). The work itself runs on the job runner (`jobs/`), never on these workers.
use super::{ListResponse, PageParams, path_id};
use crate::auth::Principal;
use crate::domain::{Invalid, Scope};
use crate::error::{Error, ErrorKind};
use crate::jobs::{ImportForm, Jobs, MAX_UPLOAD};
use crate::store::{JobKind, LogLevel, LogRecord, TemplateRecord};
use crate::views::ImportJobOut;
use crate::web::{JsonBody, rfc3339};
use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// What a multipart body may carry besides the file (its headers, boundaries, form fields).
const FORM_OVERHEAD: u64 = 64 * 1024;
/// The form fields besides the file.
const FIELDS: &[&str] = &[
    "supplier_id",
    "supplier_code",
    "template_id",
    "auto_process",
    "skip_header_rows",
    "dry_run",
];
/// Longest form field value besides the file.
const MAX_FIELD: usize = 1024;

#[derive(Serialize)]
struct LogOut {
    row: u64,
    level: &'static str,
    field: Option<String>,
    message: String,
}

impl From<LogRecord> for LogOut {
    fn from(l: LogRecord) -> Self {
        LogOut {
            row: l.row,
            level: l.level.as_str(),
            field: l.field,
            message: l.message,
        }
    }
}

#[derive(Serialize)]
struct TemplateOut {
    id: Uuid,
    name: String,
    mapping: BTreeMap<String, String>,
    created_at: String,
}

impl From<TemplateRecord> for TemplateOut {
    fn from(t: TemplateRecord) -> Self {
        TemplateOut {
            id: t.id,
            name: t.name,
            mapping: t.mapping,
            created_at: rfc3339(t.created_at),
        }
    }
}

#[derive(Deserialize)]
struct MappingBody {
    mapping: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct TemplateBody {
    name: String,
    mapping: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct LogParams {
    level: Option<String>,
}

/// Runs a job-service call on the blocking pool (it reads files and flushes the store).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    web::block(f).await.map_err(Error::internal)?
}

fn too_large() -> Error {
    Error::new(
        ErrorKind::PayloadTooLarge,
        format!("an upload may be at most {} MiB", MAX_UPLOAD >> 20),
    )
}

/// The form fields besides the file.
fn form_of(fields: &BTreeMap<String, String>) -> Result<ImportForm, Error> {
    let mut errors = Vec::new();
    let mut form = ImportForm::default();
    for name in fields.keys() {
        if !FIELDS.contains(&name.as_str()) {
            errors.push(Invalid::new(
                name.as_str(),
                format!("is not a field of this form (file, {})", FIELDS.join(", ")),
            ));
        }
    }
    let flag = |name: &str, errors: &mut Vec<Invalid>| -> bool {
        match fields
            .get(name)
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => {
                errors.push(Invalid::new(name, "must be true, false, 1 or 0"));
                false
            }
        }
    };
    let id = |name: &str, errors: &mut Vec<Invalid>| -> Option<Uuid> {
        let v = fields
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())?;
        match Uuid::try_parse(v) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(Invalid::new(name, "must be a UUID"));
                None
            }
        }
    };
    form.auto_process = flag("auto_process", &mut errors);
    form.dry_run = flag("dry_run", &mut errors);
    form.supplier_id = id("supplier_id", &mut errors);
    form.template_id = id("template_id", &mut errors);
    form.supplier_code = fields
        .get("supplier_code")
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    if let Some(v) = fields.get("skip_header_rows").map(|v| v.trim()) {
        match v.parse::<u32>() {
            Ok(n) => form.skip_header_rows = n,
            Err(_) if v.is_empty() => {}
            Err(_) => errors.push(Invalid::new(
                "skip_header_rows",
                "must be a whole number from 0",
            )),
        }
    }
    if errors.is_empty() {
        Ok(form)
    } else {
        Err(Error::invalid(errors))
    }
}

/// Streams the multipart body: the `file` part to `part` (refused past [`MAX_UPLOAD`]), the
/// other fields into the map. Returns the file's name.
async fn receive(
    mut form: actix_multipart::Multipart,
    part: &std::path::Path,
    fields: &mut BTreeMap<String, String>,
) -> Result<String, Error> {
    let unreadable = |e: actix_multipart::MultipartError| {
        Error::bad_request(format!("the form could not be read: {e}"))
    };
    let mut file_name: Option<String> = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(unreadable)?;
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            if file_name.is_some() {
                return Err(Error::bad_request("send one file per upload"));
            }
            file_name = Some(
                field
                    .content_disposition()
                    .and_then(|cd| cd.get_filename())
                    .unwrap_or_default()
                    .to_owned(),
            );
            let mut out = tokio::fs::File::create(part)
                .await
                .map_err(Error::internal)?;
            let mut size = 0u64;
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(unreadable)?;
                size += chunk.len() as u64;
                if size > MAX_UPLOAD {
                    return Err(too_large());
                }
                out.write_all(&chunk).await.map_err(Error::internal)?;
            }
            out.sync_all().await.map_err(Error::internal)?;
        } else {
            let mut value = Vec::new();
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(unreadable)?;
                if value.len() + chunk.len() > MAX_FIELD {
                    return Err(Error::bad_request(format!(
                        "the form field '{name}' is longer than {MAX_FIELD} bytes"
                    )));
                }
                value.extend_from_slice(&chunk);
            }
            let value = String::from_utf8(value).map_err(|_| {
                Error::bad_request(format!("the form field '{name}' is not UTF-8 text"))
            })?;
            fields.insert(name, value);
        }
    }
    file_name.ok_or_else(|| Error::invalid(vec![Invalid::new("file", "is required")]))
}

async fn upload(
    req: HttpRequest,
    principal: Principal,
    jobs: web::Data<Jobs>,
    payload: web::Payload,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsWrite)?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPLOAD + FORM_OVERHEAD) {
        return Err(too_large());
    }
    let is_form = req
        .mime_type()
        .ok()
        .flatten()
        .is_some_and(|m| m.essence_str() == "multipart/form-data");
    if !is_form {
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            "send the file as multipart/form-data with a 'file' part",
        ));
    }
    let form = actix_multipart::Multipart::new(req.headers(), payload);
    let (id, part) = jobs.upload_target();
    let mut fields = BTreeMap::new();
    let received = receive(form, &part, &mut fields).await;
    let file_name = match received.and_then(|name| form_of(&fields).map(|f| (name, f))) {
        Ok(ok) => ok,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    let (file_name, form) = file_name;
    let ns = principal.namespace();
    let actor = principal.actor();
    let jobs = jobs.into_inner();
    let job = blocking(move || jobs.create_import(ns, id, &part, &file_name, form, actor)).await?;
    Ok(HttpResponse::Accepted().json(ImportJobOut::from(job)))
}

async fn list_jobs(
    principal: Principal,
    jobs: web::Data<Jobs>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsRead)?;
    let page = page.resolve()?;
    let all = jobs.list(principal.namespace(), JobKind::Import)?;
    let all = all.into_iter().map(ImportJobOut::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse::from_all(all, page)))
}

async fn get_job(
    principal: Principal,
    jobs: web::Data<Jobs>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsRead)?;
    let id = path_id(&id, "import job")?;
    let job = jobs.get(principal.namespace(), JobKind::Import, id)?;
    Ok(HttpResponse::Ok().json(ImportJobOut::from(job)))
}

async fn put_mapping(
    principal: Principal,
    jobs: web::Data<Jobs>,
    id: web::Path<String>,
    body: JsonBody<MappingBody>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsWrite)?;
    let id = path_id(&id, "import job")?;
    let body = body.parse()?;
    let ns = principal.namespace();
    let jobs = jobs.into_inner();
    let job = blocking(move || jobs.set_mapping(ns, id, body.mapping)).await?;
    Ok(HttpResponse::Ok().json(ImportJobOut::from(job)))
}

async fn process(
    principal: Principal,
    jobs: web::Data<Jobs>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsWrite)?;
    let id = path_id(&id, "import job")?;
    let ns = principal.namespace();
    let jobs = jobs.into_inner();
    let job = blocking(move || jobs.process(ns, id)).await?;
    Ok(HttpResponse::Accepted().json(ImportJobOut::from(job)))
}

async fn cancel(
    principal: Principal,
    jobs: web::Data<Jobs>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsWrite)?;
    let id = path_id(&id, "import job")?;
    let ns = principal.namespace();
    let jobs = jobs.into_inner();
    let job = blocking(move || jobs.cancel(ns, JobKind::Import, id)).await?;
    Ok(HttpResponse::Ok().json(ImportJobOut::from(job)))
}

async fn logs(
    principal: Principal,
    jobs: web::Data<Jobs>,
    id: web::Path<String>,
    params: web::Query<LogParams>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsRead)?;
    let id = path_id(&id, "import job")?;
    let level = match params.level.as_deref() {
        None | Some("") => None,
        Some("error") => Some(LogLevel::Error),
        Some("warning") => Some(LogLevel::Warning),
        Some("info") => Some(LogLevel::Info),
        Some(_) => {
            return Err(Error::invalid(vec![Invalid::new(
                "level",
                "must be error, warning or info",
            )]));
        }
    };
    let page = page.resolve()?;
    let ns = principal.namespace();
    let jobs = jobs.into_inner();
    let (items, total) =
        blocking(move || jobs.logs(ns, id, level, page.offset, page.per_page)).await?;
    let items = items.into_iter().map(LogOut::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse::new(items, total, page)))
}

async fn error_report(
    principal: Principal,
    jobs: web::Data<Jobs>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsRead)?;
    let id = path_id(&id, "import job")?;
    let ns = principal.namespace();
    let jobs = jobs.into_inner();
    let body = blocking(move || jobs.error_report(ns, id)).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"import-{}-errors.csv\"", id.simple()),
        ))
        .body(body))
}

async fn list_templates(
    principal: Principal,
    jobs: web::Data<Jobs>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsRead)?;
    let page = page.resolve()?;
    let all = jobs.templates(principal.namespace())?;
    let all = all.into_iter().map(TemplateOut::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse::from_all(all, page)))
}

async fn create_template(
    principal: Principal,
    jobs: web::Data<Jobs>,
    body: JsonBody<TemplateBody>,
) -> Result<HttpResponse, Error> {
    principal.require(Scope::ImportsWrite)?;
    let body = body.parse()?;
    let ns = principal.namespace();
    let jobs = jobs.into_inner();
    let t = blocking(move || jobs.create_template(ns, &body.name, body.mapping)).await?;
    Ok(HttpResponse::Created().json(TemplateOut::from(t)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/imports/upload").post(upload))
        .service(web::resource("/imports/jobs").get(list_jobs))
        .service(web::resource("/imports/jobs/{id}").get(get_job))
        .service(web::resource("/imports/jobs/{id}/mapping").put(put_mapping))
        .service(web::resource("/imports/jobs/{id}/process").post(process))
        .service(web::resource("/imports/jobs/{id}/cancel").post(cancel))
        .service(web::resource("/imports/jobs/{id}/logs").get(logs))
        .service(web::resource("/imports/jobs/{id}/error-report").get(error_report))
        .service(
            web::resource("/imports/templates")
                .get(list_templates)
                .post(create_template),
        );
}
