//! `/auth`: login, refresh, logout, me, password, sessions.
use crate::auth::extractor::client_ip;
use crate::auth::sessions::{ClientInfo, Tokens};
use crate::auth::{Auth, Principal, Subject};
use crate::domain::{Scope, ScopeSet, SessionId, TenantId};
use crate::error::{Error, ErrorKind};
use crate::store::TenantRecord;
use crate::web::{JsonBody, is_json, read_optional_json};
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;

const REFRESH_COOKIE: &str = "refresh_token";
const COOKIE_PATH: &str = "/api/v1/auth";

#[derive(Deserialize)]
struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
}

#[derive(Deserialize)]
struct PasswordRequest {
    current_password: String,
    new_password: String,
}

// `/auth/me` borrows from the records the principal already holds: no copies per request.
#[derive(Serialize)]
struct IdName<'a> {
    id: uuid::Uuid,
    name: &'a str,
}

#[derive(Serialize)]
struct UserRef<'a> {
    id: String,
    email: &'a str,
}

#[derive(Serialize)]
struct KeyRef<'a> {
    id: uuid::Uuid,
    name: &'a str,
    environment: &'static str,
}

/// Scope names as a JSON array, written straight from the set.
struct ScopeNames(ScopeSet);

impl Serialize for ScopeNames {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Scope::as_str))
    }
}

#[derive(Serialize)]
struct MeResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserRef<'a>>,
    tenant: IdName<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    scopes: ScopeNames,
    environment: &'static str,
    auth: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<KeyRef<'a>>,
}

#[derive(Serialize)]
struct SessionOut {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    last_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    ip: Option<String>,
    user_agent: Option<String>,
    current: bool,
}

pub(crate) fn client_info(req: &HttpRequest, auth: &Auth) -> ClientInfo {
    ClientInfo {
        addr: client_ip(req, auth.policy.forwarded_hops),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

fn refresh_cookie(value: String, max_age: i64) -> Cookie<'static> {
    Cookie::build(REFRESH_COOKIE, value)
        .path(COOKIE_PATH)
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(CookieDuration::seconds(max_age))
        .finish()
}

fn token_response(tokens: Tokens) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(refresh_cookie(tokens.refresh_token, tokens.refresh_max_age))
        .json(TokenResponse {
            access_token: tokens.access_token,
            token_type: "bearer",
            expires_in: tokens.expires_in,
        })
}

fn cleared_cookie() -> Cookie<'static> {
    refresh_cookie(String::new(), 0)
}

async fn login(
    req: HttpRequest,
    auth: web::Data<Auth>,
    body: JsonBody<LoginRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.parse()?;
    let tokens = auth
        .login(&body.email, body.password, &client_info(&req, &auth))
        .await?;
    Ok(token_response(tokens))
}

/// Reads only the cookie. The JSON content type is required because a cross-site HTML form
/// cannot send it; the body may be empty or `{}`.
async fn refresh(
    req: HttpRequest,
    payload: web::Payload,
    auth: web::Data<Auth>,
) -> Result<HttpResponse, Error> {
    if !is_json(&req) {
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            "refresh needs Content-Type: application/json",
        ));
    }
    read_optional_json::<serde_json::Map<String, serde_json::Value>>(&req, payload).await?;
    let cookie = req
        .cookie(REFRESH_COOKIE)
        .ok_or_else(|| Error::new(ErrorKind::InvalidToken, "no refresh token cookie was sent"))?;
    match auth
        .refresh(cookie.value(), &client_info(&req, &auth))
        .await
    {
        Ok(tokens) => Ok(token_response(tokens)),
        Err(e) if e.kind == ErrorKind::InvalidToken => {
            // A dead refresh cookie is cleared so the browser stops sending it.
            let mut res = actix_web::ResponseError::error_response(&e);
            let _ = res.add_cookie(&cleared_cookie());
            Ok(res)
        }
        Err(e) => Err(e),
    }
}

async fn logout(principal: Principal, auth: web::Data<Auth>) -> Result<HttpResponse, Error> {
    auth.logout(principal.require_session()?).await?;
    Ok(HttpResponse::NoContent().cookie(cleared_cookie()).finish())
}

async fn logout_all(principal: Principal, auth: web::Data<Auth>) -> Result<HttpResponse, Error> {
    auth.logout_all(principal.require_session()?).await?;
    Ok(HttpResponse::NoContent().cookie(cleared_cookie()).finish())
}

/// `/auth/me` is a pure function of the records the caller was verified against (the key, or
/// the user with the tenant picked) and the tenant record. Cached records are immutable and
/// replaced, never changed, when written, so each worker keeps the body it last wrote for a
/// caller and reuses it while it still holds the very same records (`Arc::ptr_eq`); any write
/// to the key, user or tenant makes the next request build a fresh one.
struct MeBody {
    subject: Subject,
    tenant: Arc<TenantRecord>,
    body: web::Bytes,
}

const ME_BODIES_PER_THREAD: usize = 1024;

thread_local! {
    static ME_BODIES: RefCell<HashMap<(uuid::Uuid, TenantId), MeBody, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

fn same_records(a: &Subject, b: &Subject) -> bool {
    match (a, b) {
        (Subject::ApiKey { key: a, .. }, Subject::ApiKey { key: b, .. }) => Arc::ptr_eq(a, b),
        (Subject::User { user: a, .. }, Subject::User { user: b, .. }) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

fn me_body(principal: &Principal, tenant: &TenantRecord) -> Result<Vec<u8>, Error> {
    let (user, key, kind) = match &principal.subject {
        Subject::User { user, .. } => (
            Some(UserRef {
                id: user.id.to_string(),
                email: &user.email,
            }),
            None,
            "jwt",
        ),
        Subject::ApiKey { key, .. } => (
            None,
            Some(KeyRef {
                id: key.id.0,
                name: &key.name,
                environment: principal.environment.as_str(),
            }),
            "api_key",
        ),
    };
    serde_json::to_vec(&MeResponse {
        user,
        tenant: IdName {
            id: tenant.id.0,
            name: &tenant.name,
        },
        role: principal.role.map(|r| r.as_str()),
        scopes: ScopeNames(principal.scopes),
        environment: principal.environment.as_str(),
        auth: kind,
        key,
    })
    .map_err(|e| Error::new(ErrorKind::Internal, "could not write the response").with_cause(e))
}

async fn me(principal: Principal, auth: web::Data<Auth>) -> Result<HttpResponse, Error> {
    let tenant = auth
        .tenant_cached(principal.tenant)?
        .ok_or_else(|| Error::not_found("tenant"))?;
    let caller = match &principal.subject {
        Subject::ApiKey { key, .. } => key.id.0,
        Subject::User { user, .. } => user.id.0,
    };
    let slot = (caller, principal.tenant);
    let cached = ME_BODIES.with_borrow(|bodies| {
        bodies
            .get(&slot)
            .filter(|m| {
                same_records(&m.subject, &principal.subject) && Arc::ptr_eq(&m.tenant, &tenant)
            })
            .map(|m| m.body.clone())
    });
    let body = match cached {
        Some(body) => body,
        None => {
            let body = web::Bytes::from(me_body(&principal, &tenant)?);
            ME_BODIES.with_borrow_mut(|bodies| {
                if bodies.len() >= ME_BODIES_PER_THREAD {
                    bodies.clear();
                }
                bodies.insert(
                    slot,
                    MeBody {
                        subject: principal.subject.clone(),
                        tenant,
                        body: body.clone(),
                    },
                )
            });
            body
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header(header::ContentType::json())
        .body(body))
}

async fn change_password(
    req: HttpRequest,
    principal: Principal,
    auth: web::Data<Auth>,
    body: JsonBody<PasswordRequest>,
) -> Result<HttpResponse, Error> {
    let who = principal.require_session()?;
    let body = body.parse()?;
    let access_token = auth
        .change_password(
            who,
            &principal,
            body.current_password,
            body.new_password,
            &client_info(&req, &auth),
        )
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(TokenResponse {
            access_token,
            token_type: "bearer",
            expires_in: auth.jwt.ttl_seconds,
        }))
}

async fn list_sessions(
    principal: Principal,
    auth: web::Data<Auth>,
    page: web::Query<super::PageParams>,
) -> Result<HttpResponse, Error> {
    let who = principal.require_session()?;
    let page = page.resolve()?;
    let items = auth
        .live_sessions(who)?
        .into_iter()
        .map(|s| SessionOut {
            id: s.id.to_string(),
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
            ip: s.ip,
            user_agent: s.user_agent,
            current: s.id == who.session,
        })
        .collect();
    Ok(HttpResponse::Ok().json(super::ListResponse::from_all(items, page)))
}

async fn end_session(
    principal: Principal,
    auth: web::Data<Auth>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let who = principal.require_session()?;
    let id = SessionId(super::path_id(&id, "session")?);
    auth.end_session(who, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/auth/login").post(login))
        .service(web::resource("/auth/refresh").post(refresh))
        .service(web::resource("/auth/logout").post(logout))
        .service(web::resource("/auth/logout-all").post(logout_all))
        .service(web::resource("/auth/me").get(me))
        .service(web::resource("/auth/password").post(change_password))
        .service(web::resource("/auth/sessions").get(list_sessions))
        .service(web::resource("/auth/sessions/{id}").delete(end_session));
}
