//! `/tenants`, `/users`, `/audit-events`.
use super::{ListResponse, PageParams, path_id};
use crate::auth::accounts::{AuditScope, MemberView};
use crate::auth::{Auth, Principal};
use crate::domain::{Invalid, Role, TenantId, UserId};
use crate::error::Error;
use crate::store::{AuditEvent, TenantRecord};
use crate::web::JsonBody;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Deserialize)]
struct CreateTenant {
    name: String,
}

#[derive(Deserialize)]
struct CreateUser {
    email: String,
    password: String,
    role: String,
}

#[derive(Deserialize)]
struct AddMember {
    email: String,
    role: String,
}

#[derive(Serialize)]
struct TenantOut {
    id: String,
    name: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    role: Option<&'static str>,
}

#[derive(Serialize)]
struct UserOut {
    id: String,
    email: String,
    role: Option<&'static str>,
    superadmin: bool,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    locked_until: Option<OffsetDateTime>,
}

/// The membership granted by `POST /tenants/{id}/members`.
#[derive(Serialize)]
struct MembershipOut {
    user_id: String,
    email: String,
    tenant_id: String,
    role: &'static str,
}

#[derive(Serialize)]
struct AuditOut {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    #[serde(rename = "type")]
    kind: String,
    actor: String,
    ip: Option<String>,
    detail: String,
}

fn tenant_out(t: TenantRecord, role: Option<Role>) -> TenantOut {
    TenantOut {
        id: t.id.to_string(),
        name: t.name,
        created_at: t.created_at,
        role: role.map(Role::as_str),
    }
}

fn user_out(m: MemberView) -> UserOut {
    UserOut {
        id: m.user.id.to_string(),
        role: m.role.map(Role::as_str),
        email: m.user.email,
        superadmin: m.user.superadmin,
        created_at: m.user.created_at,
        locked_until: m.locked_until,
    }
}

async fn list_tenants(
    principal: Principal,
    auth: web::Data<Auth>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    let page = page.resolve()?;
    let tenants = auth
        .tenants_of(&principal)?
        .into_iter()
        .map(|(t, role)| tenant_out(t, role))
        .collect();
    Ok(HttpResponse::Ok().json(ListResponse::from_all(tenants, page)))
}

async fn create_tenant(
    principal: Principal,
    auth: web::Data<Auth>,
    body: JsonBody<CreateTenant>,
) -> Result<HttpResponse, Error> {
    principal.require_superadmin()?;
    let tenant = auth
        .create_tenant_by(&principal, &body.parse()?.name)
        .await?;
    Ok(HttpResponse::Created().json(tenant_out(tenant, Some(Role::Admin))))
}

async fn list_users(
    principal: Principal,
    auth: web::Data<Auth>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let page = page.resolve()?;
    let items = auth
        .members(principal.tenant)?
        .into_iter()
        .map(user_out)
        .collect();
    Ok(HttpResponse::Ok().json(ListResponse::from_all(items, page)))
}

async fn create_user(
    principal: Principal,
    auth: web::Data<Auth>,
    body: JsonBody<CreateUser>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let body = body.parse()?;
    let role = Role::parse(&body.role)?;
    let member = auth
        .create_member(&principal, &body.email, body.password, role)
        .await?;
    Ok(HttpResponse::Created().json(user_out(member)))
}

async fn add_member(
    principal: Principal,
    auth: web::Data<Auth>,
    id: web::Path<String>,
    body: JsonBody<AddMember>,
) -> Result<HttpResponse, Error> {
    let tenant = TenantId(path_id(&id, "tenant")?);
    // The path names the tenant: the caller must be its admin, whatever X-Tenant-ID says.
    principal.require_session()?;
    let body = body.parse()?;
    let role = Role::parse(&body.role)?;
    let granted = auth
        .grant_membership(&principal, tenant, &body.email, role)
        .await?;
    Ok(HttpResponse::Created().json(MembershipOut {
        user_id: granted.user.to_string(),
        email: granted.email,
        tenant_id: granted.tenant.to_string(),
        role: granted.role.as_str(),
    }))
}

async fn unlock_user(
    req: actix_web::HttpRequest,
    principal: Principal,
    auth: web::Data<Auth>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = UserId(path_id(&id, "user")?);
    let ip = super::auth::client_info(&req, &auth).ip();
    let member = auth.unlock_member(&principal, id, ip.as_deref()).await?;
    Ok(HttpResponse::Ok().json(user_out(member)))
}

/// `?scope=tenant` (the default) or `?scope=instance`, beside the paging parameters.
#[derive(Deserialize)]
struct AuditScopeParam {
    scope: Option<String>,
}

async fn list_audit(
    principal: Principal,
    auth: web::Data<Auth>,
    page: web::Query<PageParams>,
    query: web::Query<AuditScopeParam>,
) -> Result<HttpResponse, Error> {
    let scope = match query.scope.as_deref() {
        None | Some("tenant") => AuditScope::Tenant,
        Some("instance") => AuditScope::Instance,
        Some(_) => {
            return Err(Error::invalid(vec![Invalid::new(
                "scope",
                "must be tenant or instance",
            )]));
        }
    };
    // Authorized before the page is judged (DECISIONS.md, order of checks).
    let log = auth.audit_log(&principal, scope)?;
    let page = page.resolve()?;
    let (events, total) = auth.audit_events(&log, page.offset, page.per_page)?;
    let items = events
        .into_iter()
        .map(|e: AuditEvent| AuditOut {
            id: e.id.to_string(),
            time: e.at,
            kind: e.kind,
            actor: e.actor,
            ip: e.ip,
            detail: e.detail,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ListResponse::new(items, total as u64, page)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/tenants")
            .get(list_tenants)
            .post(create_tenant),
    )
    .service(web::resource("/tenants/{id}/members").post(add_member))
    .service(web::resource("/users").get(list_users).post(create_user))
    .service(web::resource("/users/{id}/unlock").post(unlock_user))
    .service(web::resource("/audit-events").get(list_audit));
}
