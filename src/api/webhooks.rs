//! `/webhooks` (SPEC §13): tenant admins manage their webhooks with a session (no key scope
//! exists for them), send a test, read the deliveries and send one again.
use super::{ListResponse, PageParams, path_id};
use crate::auth::Principal;
use crate::domain::Environment;
use crate::error::Error;
use crate::store::{DeliveryRecord, WebhookRecord};
use crate::web::{JsonBody, rfc3339};
use crate::webhooks::{WebhookInput, Webhooks};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Serialize)]
struct WebhookOut {
    id: Uuid,
    name: String,
    url: String,
    environment: &'static str,
    events: Vec<String>,
    /// Only in the answer that creates the webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    headers: BTreeMap<String, String>,
    max_retries: u32,
    timeout_seconds: u32,
    is_active: bool,
    failed_events: u32,
    disabled_at: Option<String>,
    created_by: String,
    created_at: String,
    updated_at: String,
}

impl WebhookOut {
    fn new((environment, w): (Environment, WebhookRecord), with_secret: bool) -> Self {
        WebhookOut {
            id: w.id,
            name: w.name,
            url: w.url,
            environment: environment.as_str(),
            events: w.events,
            secret: with_secret.then_some(w.secret),
            headers: w.headers,
            max_retries: w.max_retries,
            timeout_seconds: w.timeout_seconds,
            is_active: w.is_active,
            failed_events: w.failed_events,
            disabled_at: w.disabled_at.map(rfc3339),
            created_by: w.created_by,
            created_at: rfc3339(w.created_at),
            updated_at: rfc3339(w.updated_at),
        }
    }
}

#[derive(Serialize)]
struct DeliveryOut {
    id: Uuid,
    webhook_id: Uuid,
    event_id: Uuid,
    event: &'static str,
    status: &'static str,
    /// Attempts made so far.
    attempt: u32,
    status_code: Option<u16>,
    duration_ms: Option<u64>,
    error: Option<String>,
    last_attempt_at: Option<String>,
    next_attempt_at: Option<String>,
    created_at: String,
}

impl From<DeliveryRecord> for DeliveryOut {
    fn from(d: DeliveryRecord) -> Self {
        DeliveryOut {
            id: d.id,
            webhook_id: d.webhook_id,
            event_id: d.event_id,
            event: d.event.as_str(),
            status: d.status.as_str(),
            attempt: d.attempts,
            status_code: d.status_code,
            duration_ms: d.duration_ms,
            error: d.error,
            last_attempt_at: d.last_attempt_at.map(rfc3339),
            next_attempt_at: d.next_attempt_at.map(rfc3339),
            created_at: rfc3339(d.created_at),
        }
    }
}

async fn list_webhooks(
    principal: Principal,
    hooks: web::Data<Webhooks>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let page = page.resolve()?;
    let all = hooks.list(principal.tenant)?;
    let all = all.into_iter().map(|w| WebhookOut::new(w, false)).collect();
    Ok(HttpResponse::Ok().json(ListResponse::from_all(all, page)))
}

async fn create_webhook(
    principal: Principal,
    hooks: web::Data<Webhooks>,
    body: JsonBody<WebhookInput>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let hook = hooks
        .create(principal.tenant, &principal.actor(), body.parse()?)
        .await?;
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(WebhookOut::new(hook, true)))
}

async fn get_webhook(
    principal: Principal,
    hooks: web::Data<Webhooks>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = path_id(&id, "webhook")?;
    let (ns, hook) = hooks.get(principal.tenant, id)?;
    Ok(HttpResponse::Ok().json(WebhookOut::new((ns.environment, hook), false)))
}

async fn patch_webhook(
    principal: Principal,
    hooks: web::Data<Webhooks>,
    id: web::Path<String>,
    body: JsonBody<WebhookInput>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = path_id(&id, "webhook")?;
    let hook = hooks.patch(principal.tenant, id, body.parse()?).await?;
    Ok(HttpResponse::Ok().json(WebhookOut::new(hook, false)))
}

async fn delete_webhook(
    principal: Principal,
    hooks: web::Data<Webhooks>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = path_id(&id, "webhook")?;
    hooks.delete(principal.tenant, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn test_webhook(
    principal: Principal,
    hooks: web::Data<Webhooks>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = path_id(&id, "webhook")?;
    let delivery = hooks.test(principal.tenant, id).await?;
    Ok(HttpResponse::Ok().json(DeliveryOut::from(delivery)))
}

async fn list_deliveries(
    principal: Principal,
    hooks: web::Data<Webhooks>,
    id: web::Path<String>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = path_id(&id, "webhook")?;
    let page = page.resolve()?;
    let (items, total) = hooks.deliveries(principal.tenant, id, page.offset, page.per_page)?;
    let items = items.into_iter().map(DeliveryOut::from).collect();
    Ok(HttpResponse::Ok().json(ListResponse::new(items, total as u64, page)))
}

async fn redeliver(
    principal: Principal,
    hooks: web::Data<Webhooks>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = path_id(&path.0, "webhook")?;
    let delivery = path_id(&path.1, "delivery")?;
    let d = hooks.redeliver(principal.tenant, id, delivery).await?;
    Ok(HttpResponse::Accepted().json(DeliveryOut::from(d)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks")
            .get(list_webhooks)
            .post(create_webhook),
    )
    .service(
        web::resource("/webhooks/{id}")
            .get(get_webhook)
            .patch(patch_webhook)
            .delete(delete_webhook),
    )
    .service(web::resource("/webhooks/{id}/test").post(test_webhook))
    .service(web::resource("/webhooks/{id}/deliveries").get(list_deliveries))
    .service(web::resource("/webhooks/{id}/deliveries/{delivery_id}/redeliver").post(redeliver));
}
