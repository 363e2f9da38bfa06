//! `/api-keys`: list, create, get, revoke, rotate. Only create and rotate ever answer with the
//! raw key.
use super::{ListResponse, PageParams, path_id};
use crate::auth::api_keys::{MAX_GRACE_SECONDS, NewKeyRequest, validate_expiry, validate_name};
use crate::auth::{Auth, Principal, Subject};
use crate::domain::{Environment, Invalid, KeyId, ScopeSet, TenantId};
use crate::error::Error;
use crate::store::ApiKeyRecord;
use crate::web::JsonBody;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Deserialize)]
struct CreateKey {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    environment: Option<Environment>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    /// Other tenants the key also works in (`X-Tenant-ID`).
    #[serde(default)]
    tenant_ids: Vec<TenantId>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    #[serde(default, deserialize_with = "crate::catalog::field::whole")]
    grace_seconds: u32,
}

#[derive(Serialize)]
pub(crate) struct KeyOut {
    id: String,
    name: String,
    environment: &'static str,
    scopes: Vec<&'static str>,
    hint: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    created_by: String,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    last_used_at: Option<OffsetDateTime>,
    last_used_ip: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    revoked_at: Option<OffsetDateTime>,
    /// The tenant the key belongs to (its admins rotate and revoke it).
    home_tenant_id: String,
    /// The other tenants it works in.
    tenant_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

fn key_out(auth: &Auth, k: ApiKeyRecord, raw: Option<String>) -> Result<KeyOut, Error> {
    let usage = auth.usage.get(k.id);
    let tenant_ids = auth
        .key_tenants(k.id)?
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(KeyOut {
        home_tenant_id: k.tenant.to_string(),
        tenant_ids,
        id: k.id.to_string(),
        name: k.name,
        environment: k.environment.as_str(),
        scopes: k.scopes.names(),
        hint: k.hint,
        created_at: k.created_at,
        created_by: k.created_by,
        expires_at: k.expires_at,
        last_used_at: usage.as_ref().map(|u| u.at),
        last_used_ip: usage.and_then(|u| u.ip),
        revoked_at: k.revoked_at,
        key: raw,
    })
}

fn with_secret(status: actix_web::http::StatusCode, body: KeyOut) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

async fn list_keys(
    principal: Principal,
    auth: web::Data<Auth>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let page = page.resolve()?;
    let items = auth
        .list_keys(principal.tenant)?
        .into_iter()
        .map(|k| key_out(&auth, k, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(ListResponse::from_all(items, page)))
}

async fn create_key(
    req: HttpRequest,
    principal: Principal,
    auth: web::Data<Auth>,
    body: JsonBody<CreateKey>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let body = body.parse()?;
    let mut errors: Vec<Invalid> = Vec::new();
    let name = validate_name(&body.name).map_err(|e| errors.push(e)).ok();
    let scopes = ScopeSet::parse_list(&body.scopes)
        .map_err(|e| errors.push(e))
        .ok();
    let expires_at = validate_expiry(
        body.expires_at.map(|t| t.to_offset(time::UtcOffset::UTC)),
        auth.now(),
    )
    .map_err(|e| errors.push(e))
    .ok();
    let (Some(name), Some(scopes), Some(expires_at)) = (name, scopes, expires_at) else {
        return Err(Error::invalid(errors));
    };
    let mut extra_tenants = body.tenant_ids.clone();
    extra_tenants.retain(|t| *t != principal.tenant);
    extra_tenants.sort();
    extra_tenants.dedup();
    auth.check_extra_tenants(&principal, &extra_tenants)?;
    let issued = auth
        .create_key(NewKeyRequest {
            tenant: principal.tenant,
            environment: body.environment.unwrap_or(Environment::Live),
            name,
            scopes,
            expires_at,
            created_by: principal.actor(),
            ip: super::auth::client_info(&req, &auth).ip(),
            extra_tenants,
        })
        .await?;
    Ok(with_secret(
        actix_web::http::StatusCode::CREATED,
        key_out(&auth, issued.record, Some(issued.raw))?,
    ))
}

async fn get_key(
    principal: Principal,
    auth: web::Data<Auth>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = KeyId(path_id(&id, "API key")?);
    let key = auth.get_key(principal.tenant, id)?;
    Ok(HttpResponse::Ok().json(key_out(&auth, key, None)?))
}

async fn revoke_key(
    req: HttpRequest,
    principal: Principal,
    auth: web::Data<Auth>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = KeyId(path_id(&id, "API key")?);
    let ip = super::auth::client_info(&req, &auth).ip();
    auth.revoke_key(principal.tenant, id, &principal.actor(), ip.as_deref())
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// An admin session, or the key itself (no scope needed); any other key is refused.
async fn rotate_key(
    req: HttpRequest,
    principal: Principal,
    auth: web::Data<Auth>,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, Error> {
    let id = KeyId(path_id(&id, "API key")?);
    // A key rotates itself in its home tenant, whichever tenant it addressed.
    let (presented, home) = match &principal.subject {
        Subject::ApiKey { key, digest } if key.id == id => (Some(*digest), key.tenant),
        Subject::ApiKey { .. } => return Err(Error::forbidden("a key can only rotate itself")),
        Subject::User { .. } => {
            principal.require_admin()?;
            (None, principal.tenant)
        }
    };
    let body = crate::web::read_optional_json::<RotateKey>(&req, body).await?;
    if body.grace_seconds > MAX_GRACE_SECONDS {
        return Err(Invalid::new("grace_seconds", "must be between 0 and 86400").into());
    }
    let ip = super::auth::client_info(&req, &auth).ip();
    let issued = auth
        .rotate_key(
            home,
            id,
            body.grace_seconds,
            presented,
            &principal.actor(),
            ip.as_deref(),
        )
        .await?;
    Ok(with_secret(
        actix_web::http::StatusCode::OK,
        key_out(&auth, issued.record, Some(issued.raw))?,
    ))
}

/// An admin of a tenant the key lists takes that tenant out of it.
async fn withdraw_tenant(
    req: HttpRequest,
    principal: Principal,
    auth: web::Data<Auth>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (id, tenant) = path.into_inner();
    let id = KeyId(path_id(&id, "API key")?);
    let tenant = TenantId(path_id(&tenant, "tenant")?);
    let ip = super::auth::client_info(&req, &auth).ip();
    auth.withdraw_key_tenant(&principal, id, tenant, ip.as_deref())
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api-keys").get(list_keys).post(create_key))
        .service(
            web::resource("/api-keys/{id}")
                .get(get_key)
                .delete(revoke_key),
        )
        .service(web::resource("/api-keys/{id}/rotate").post(rotate_key))
        .service(web::resource("/api-keys/{id}/tenants/{tenant_id}").delete(withdraw_tenant));
}
