//! `/tenants`, `/users`, `/audit-events`.
use super::{ListResponse, PageParams, path_id};
use crate::auth::{Auth, Principal};
use crate::domain::{Role, TenantId, UserId};
use crate::error::Error;
use crate::store::{AuditEvent, Membership, TenantRecord, UserRecord};
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

fn user_out(auth: &Auth, u: UserRecord, tenant: TenantId) -> UserOut {
    let locked_until = auth
        .store
        .lockout_get::<crate::auth::lockout::LockoutState>(&u.email)
        .ok()
        .flatten()
        .and_then(|s| s.locked_until.filter(|until| *until > auth.now()));
    UserOut {
        id: u.id.to_string(),
        role: u.role_in(tenant).map(Role::as_str),
        email: u.email,
        superadmin: u.superadmin,
        created_at: u.created_at,
        locked_until,
    }
}

async fn list_tenants(
    principal: Principal,
    auth: web::Data<Auth>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    let page = page.resolve()?;
    let tenants = match principal.key_id() {
        Some(_) => auth
            .store
            .tenant(principal.tenant)?
            .into_iter()
            .map(|t| tenant_out(t, None))
            .collect(),
        None => {
            let who = principal.require_session()?;
            let user = auth
                .store
                .user(who.id)?
                .ok_or_else(|| Error::not_found("user"))?;
            auth.store
                .list_tenants()?
                .into_iter()
                .filter_map(|t| user.role_in(t.id).map(|role| tenant_out(t, Some(role))))
                .collect()
        }
    };
    Ok(HttpResponse::Ok().json(ListResponse::from_all(tenants, page)))
}

async fn create_tenant(
    principal: Principal,
    auth: web::Data<Auth>,
    body: JsonBody<CreateTenant>,
) -> Result<HttpResponse, Error> {
    let who = principal.require_superadmin()?;
    let tenant = auth.create_tenant(&body.parse()?.name)?;
    let creator = auth
        .store
        .user(who.id)?
        .ok_or_else(|| Error::not_found("user"))?;
    auth.add_member(tenant.id, &creator.email, Role::Admin)
        .await?;
    auth.audit(
        Some(tenant.id),
        "tenant.created",
        &principal.actor(),
        None,
        tenant.name.clone(),
    );
    auth.store.flush().await?;
    Ok(HttpResponse::Created().json(tenant_out(tenant, Some(Role::Admin))))
}

async fn list_users(
    principal: Principal,
    auth: web::Data<Auth>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let page = page.resolve()?;
    let users = auth.store.tenant_members(principal.tenant)?;
    let items = users
        .into_iter()
        .map(|u| user_out(&auth, u, principal.tenant))
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
    let membership = Membership {
        tenant: principal.tenant,
        role,
    };
    let user = auth
        .create_user(&body.email, body.password, vec![membership], false)
        .await?;
    auth.audit(
        Some(principal.tenant),
        "user.created",
        &principal.actor(),
        None,
        format!("{} as {}", user.email, role.as_str()),
    );
    auth.store.flush().await?;
    Ok(HttpResponse::Created().json(user_out(&auth, user, principal.tenant)))
}

async fn add_member(
    principal: Principal,
    auth: web::Data<Auth>,
    id: web::Path<String>,
    body: JsonBody<AddMember>,
) -> Result<HttpResponse, Error> {
    let tenant = TenantId(path_id(&id, "tenant")?);
    // The path names the tenant: the caller must be its admin, whatever X-Tenant-ID says.
    let who = principal.require_session()?;
    let caller = auth
        .store
        .user(who.id)?
        .ok_or_else(|| Error::not_found("user"))?;
    if auth.store.tenant(tenant)?.is_none() || caller.role_in(tenant) != Some(Role::Admin) {
        return Err(Error::forbidden("you are not an admin of this tenant"));
    }
    let body = body.parse()?;
    let role = Role::parse(&body.role)?;
    let user = auth.add_member(tenant, &body.email, role).await?;
    auth.audit(
        Some(tenant),
        "member.added",
        &principal.actor(),
        None,
        format!("{} as {}", user.email, role.as_str()),
    );
    auth.store.flush().await?;
    Ok(HttpResponse::Created().json(user_out(&auth, user, tenant)))
}

async fn unlock_user(
    req: actix_web::HttpRequest,
    principal: Principal,
    auth: web::Data<Auth>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let id = UserId(path_id(&id, "user")?);
    let user = auth
        .store
        .user(id)?
        .filter(|u| u.memberships.iter().any(|m| m.tenant == principal.tenant))
        .ok_or_else(|| Error::not_found("user"))?;
    let ip = super::auth::client_info(&req, &auth).ip;
    auth.unlock(
        &user,
        Some(principal.tenant),
        &principal.actor(),
        ip.as_deref(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(user_out(&auth, user, principal.tenant)))
}

async fn list_audit(
    principal: Principal,
    auth: web::Data<Auth>,
    page: web::Query<PageParams>,
) -> Result<HttpResponse, Error> {
    principal.require_admin()?;
    let page = page.resolve()?;
    let (events, total) = auth
        .store
        .audit_page(principal.tenant, page.offset, page.per_page)?;
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
