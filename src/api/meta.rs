//! Unauthenticated routes: health, the OpenAPI document, and the embedded settings page.
use crate::web::PAGE_CSP;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "static/"]
struct Assets;

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness (SPEC §11): 200 while the store answers and every background part that keeps
/// derived data in step runs (the search indexer, the job runner, the webhook engine); else 503
/// naming what is not. `/healthz` stays the cheap liveness answer.
async fn readyz(
    catalog: web::Data<crate::catalog::Catalog>,
    jobs: web::Data<crate::jobs::Jobs>,
    webhooks: web::Data<crate::webhooks::Webhooks>,
) -> HttpResponse {
    let store = catalog.store_healthy();
    let checks = [
        ("store", store),
        ("search_index", catalog.search_healthy()),
        ("job_runner", jobs.is_healthy()),
        ("webhook_engine", webhooks.is_healthy()),
    ];
    let failing: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
    if failing.is_empty() {
        let parts: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .map(|(name, _)| ((*name).to_owned(), "ok".into()))
            .collect();
        return HttpResponse::Ok().json(serde_json::json!({"status": "ready", "checks": parts}));
    }
    actix_web::ResponseError::error_response(&crate::error::Error::new(
        crate::error::ErrorKind::Unavailable,
        format!("not ready: {} not running", failing.join(", ")),
    ))
}

/// Prometheus metrics (SPEC §11): this machine only, or whoever sends `--metrics-token`.
async fn metrics(
    req: actix_web::HttpRequest,
    access: web::Data<crate::metrics::Access>,
    auth: web::Data<crate::auth::Auth>,
    catalog: web::Data<crate::catalog::Catalog>,
    jobs: web::Data<crate::jobs::Jobs>,
) -> Result<HttpResponse, crate::error::Error> {
    // Headers any common reverse proxy adds; a proxy that adds none (a TCP proxy, a bare
    // `proxy_pass`) cannot be told from a local client: behind one, set a metrics token.
    let proxied = [
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "via",
        "x-forwarded-host",
        "x-forwarded-proto",
    ]
    .iter()
    .any(|h| req.headers().contains_key(*h));
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !crate::metrics::enabled() {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::NotFound,
            "metrics are turned off (--metrics false)",
        ));
    }
    access.check(req.peer_addr().map(|a| a.ip()), proxied, authorization)?;
    let now = crate::metrics::snapshot(&auth, &catalog, &jobs)?;
    let text = crate::metrics::metrics().render(&now).map_err(|e| {
        crate::error::Error::new(
            crate::error::ErrorKind::Internal,
            "metrics could not be rendered",
        )
        .with_cause(e)
    })?;
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(text))
}

async fn openapi() -> HttpResponse {
    asset("openapi.json")
}

fn asset(name: &str) -> HttpResponse {
    let Some(file) = Assets::get(name) else {
        return actix_web::ResponseError::error_response(&crate::error::Error::not_found("file"));
    };
    let mime = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    HttpResponse::Ok()
        .content_type(mime)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_CSP))
        .body(file.data.into_owned())
}

/// The API reference page: renders the OpenAPI document with the page's own script.
async fn docs() -> HttpResponse {
    asset("docs.html")
}

async fn settings_index() -> HttpResponse {
    asset("settings.html")
}

async fn settings_file(name: web::Path<String>) -> HttpResponse {
    // Only the page's own files; the OpenAPI document and word lists are not page assets.
    match name.as_str() {
        "settings.js" | "settings.css" | "favicon.svg" | "docs.js" => asset(&name),
        _ => actix_web::ResponseError::error_response(&crate::error::Error::not_found("file")),
    }
}

async fn root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/settings/"))
        .finish()
}

async fn settings_redirect() -> HttpResponse {
    HttpResponse::MovedPermanently()
        .insert_header((header::LOCATION, "/settings/"))
        .finish()
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").get(healthz))
        .service(web::resource("/readyz").get(readyz))
        .service(web::resource("/metrics").get(metrics))
        .route("/", web::get().to(root))
        .route("/settings", web::get().to(settings_redirect))
        .route("/settings/", web::get().to(settings_index))
        .route("/settings/{name}", web::get().to(settings_file));
}

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/openapi.json").get(openapi))
        .service(web::resource("/docs").get(docs));
}
