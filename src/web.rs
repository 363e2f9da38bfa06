//! HTTP plumbing shared by every route: the problem+json error response, the request
//! middleware (request id, access log, security headers, key rate-limit headers and usage),
//! and the JSON body extractor with its size limit.
use crate::auth::Auth;
use crate::auth::extractor::KeyRequest;
use crate::domain::Invalid;
use crate::error::{Error, ErrorKind};
use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::time::Instant;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

tokio::task_local! {
    static REQUEST_ID: String;
}

pub const PROBLEM_JSON: &str = "application/problem+json";
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::AuthenticationRequired
        | ErrorKind::InvalidApiKey
        | ErrorKind::InvalidToken
        | ErrorKind::InvalidCredentials => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::DuplicateEan | ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::AccountLocked => StatusCode::LOCKED,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::ImportFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn problem_body(
    status: StatusCode,
    code: &str,
    detail: &str,
    errors: &[Invalid],
    retry_after: Option<u32>,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "error_code": code,
        "timestamp": rfc3339(OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or_else(|_| OffsetDateTime::now_utc())),
        "instance": REQUEST_ID.try_with(Clone::clone).unwrap_or_default(),
    });
    if !errors.is_empty() {
        body["errors"] = errors
            .iter()
            .map(|e| serde_json::json!({"field": e.field, "message": e.message}))
            .collect();
    }
    if let Some(seconds) = retry_after {
        body["retry_after_seconds"] = seconds.into();
    }
    body
}

/// The `WWW-Authenticate` challenge of a 401 (RFC 9110 §11.6.1): `Bearer` (RFC 6750) for
/// access tokens, with `error="invalid_token"` when one was refused, and `ApiKey` (this API's
/// name for the `X-API-Key` header) for keys. A request that sent neither gets both.
fn challenge(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::AuthenticationRequired => {
            r#"Bearer realm="pixee-pim", ApiKey realm="pixee-pim", header="X-API-Key""#
        }
        ErrorKind::InvalidToken => r#"Bearer realm="pixee-pim", error="invalid_token""#,
        ErrorKind::InvalidApiKey => r#"ApiKey realm="pixee-pim", header="X-API-Key""#,
        ErrorKind::InvalidCredentials => r#"Bearer realm="pixee-pim""#,
        _ => return None,
    })
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        status_of(self.kind)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let status = self.status_code();
        if self.kind == ErrorKind::Internal {
            let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
            tracing::error!(request_id, error = %self, cause = ?self.cause, "internal error");
        }
        let mut res = HttpResponse::build(status);
        res.content_type(PROBLEM_JSON);
        if let Some(seconds) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if let Some(challenge) = challenge(self.kind) {
            res.insert_header((header::WWW_AUTHENTICATE, challenge));
        }
        let mut res = res.body(
            problem_body(
                status,
                self.kind.code(),
                &self.detail,
                &self.errors,
                self.retry_after,
            )
            .to_string(),
        );
        // For the partner surfaces, whose envelopes the middleware builds from it.
        res.extensions_mut()
            .insert(crate::api::envelope::ErrorInfo::of(self));
        res
    }
}

/// A body for an error actix produced itself (no content type yet): same problem shape.
fn problem_for_status(status: StatusCode) -> HttpResponse {
    let (kind, detail) = match status.as_u16() {
        404 => (ErrorKind::NotFound, "no such route"),
        405 => (
            ErrorKind::MethodNotAllowed,
            "this route does not accept this method",
        ),
        413 => (ErrorKind::PayloadTooLarge, "the request body is too large"),
        415 => (ErrorKind::UnsupportedMediaType, "unsupported content type"),
        s if s >= 500 => (ErrorKind::Internal, "an internal error occurred"),
        _ => (ErrorKind::BadRequest, "the request could not be read"),
    };
    let mut res = Error::new(kind, detail).error_response();
    *res.status_mut() = status;
    res
}

pub async fn not_found() -> HttpResponse {
    Error::new(ErrorKind::NotFound, "no such route").error_response()
}

/// Request ids: a random per-process prefix and a counter, 32 hex characters. Unique within a
/// run, unguessable across runs, and no system call per request.
fn next_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        crate::auth::secret::random_bytes::<8>()
            .map(u64::from_le_bytes)
            .unwrap_or_default()
    });
    format!(
        "{prefix:016x}{:016x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Outermost middleware: request id, access log, security headers, problem bodies for bare
/// errors, and the API-key bookkeeping (rate headers, last-used) after the handler ran.
pub async fn request_middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let request_id = next_request_id();
    let started = Instant::now();
    let method = req.method().clone();
    // HEAD is GET without the body (RFC 9110 §9.3.2): every GET route answers it with the
    // same status and headers, counted as a read. The routes see GET; the connection's codec
    // read HEAD off the wire and sends no body (keeping GET's Content-Length).
    if method == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
    let path = req.path().to_owned();
    // The path as the router matches it (percent-encoded letters decoded), so no spelling of
    // a partner path escapes its envelope.
    let surface = crate::api::envelope::Surface::of(req.match_info().as_str());
    // The routing layer turns handler and extractor errors into responses, so `Err` here is
    // rare (and still becomes a response further out).
    let mut res = REQUEST_ID
        .scope(request_id.clone(), async move {
            let res = next.call(req).await?;
            // Under `/ext` and `/windev` every error takes the surface's envelope.
            if let (Some(surface), true) = (surface, res.status().as_u16() >= 400) {
                let info = res
                    .response()
                    .extensions()
                    .get::<crate::api::envelope::ErrorInfo>()
                    .cloned();
                let enveloped = crate::api::envelope::rewrite(surface, res.response(), info);
                let (r, _) = res.into_parts();
                return Ok(ServiceResponse::new(r, enveloped).map_into_right_body());
            }
            let bare_error =
                res.status().as_u16() >= 400 && !res.headers().contains_key(header::CONTENT_TYPE);
            Ok::<_, actix_web::Error>(if bare_error {
                let status = res.status();
                // A 405 names the methods the route does accept.
                let allow = res.headers().get(header::ALLOW).cloned();
                let (r, _) = res.into_parts();
                let mut problem = problem_for_status(status);
                if let Some(allow) = allow {
                    problem.headers_mut().insert(header::ALLOW, allow);
                }
                ServiceResponse::new(r, problem).map_into_right_body()
            } else {
                res.map_into_left_body()
            })
        })
        .await?;
    let status = res.status();
    if crate::metrics::enabled() {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        crate::metrics::metrics().request(
            crate::metrics::HttpMethod::of(&method),
            route,
            status.as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    after_key_request(&mut res);
    set_security_headers(&mut res, &request_id);
    tracing::info!(
        target: "pixee_pim::access",
        %method,
        path,
        status = status.as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        request_id,
    );
    Ok(res)
}

fn after_key_request<B>(res: &mut ServiceResponse<B>) {
    let Some(kr) = res.request().extensions().get::<KeyRequest>().cloned() else {
        return;
    };
    let status = res.status().as_u16();
    // A request refused for scope or tenant (or over the limit) is not a use of the key.
    if let (Some(key), false) = (kr.key, matches!(status, 401 | 403 | 429))
        && let Some(auth) = res.request().app_data::<web::Data<Auth>>()
    {
        auth.usage.record(key, kr.ip, kr.at);
    }
    let (limit, reset) = rate_header_values(&kr.rate);
    let headers = res.headers_mut();
    headers.insert(HeaderName::from_static("x-ratelimit-limit"), limit);
    headers.insert(
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderValue::from(kr.rate.remaining),
    );
    headers.insert(HeaderName::from_static("x-ratelimit-reset"), reset);
}

/// The limit and the window's end change rarely (per configuration, once a minute); each
/// worker keeps their last rendering instead of formatting and allocating them per response.
fn rate_header_values(rate: &crate::auth::rate_limit::Decision) -> (HeaderValue, HeaderValue) {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(u32, HeaderValue, i64, HeaderValue)>> =
            const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        let (limit, limit_value, reset, reset_value) = last.get_or_insert_with(|| {
            let (l, r) = (rate.limit, rate.reset_at);
            (l, HeaderValue::from(l), r, HeaderValue::from(r))
        });
        if *limit != rate.limit {
            *limit = rate.limit;
            *limit_value = HeaderValue::from(rate.limit);
        }
        if *reset != rate.reset_at {
            *reset = rate.reset_at;
            *reset_value = HeaderValue::from(rate.reset_at);
        }
        (limit_value.clone(), reset_value.clone())
    })
}

fn set_security_headers<B>(res: &mut ServiceResponse<B>, request_id: &str) {
    let path = res.request().path();
    let is_page = path.starts_with("/settings") || path == "/api/v1/docs";
    // The scheme is known when the server starts; asking the connection info would parse
    // Forwarded/Host headers on every response.
    let secure = res.request().app_data::<Tls>().is_some_and(|t| t.0);
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    let csp = if is_page { PAGE_CSP } else { API_CSP };
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if secure {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
}

/// Whether this server speaks HTTPS (then responses carry HSTS).
#[derive(Debug, Clone, Copy)]
pub struct Tls(pub bool);

/// Largest JSON body accepted (SPEC §3: 1 MiB unless configured).
#[derive(Debug, Clone, Copy)]
pub struct JsonLimit(pub usize);

/// On a route's resource: its bodies may be this many times [`JsonLimit`] (batch routes).
#[derive(Debug, Clone, Copy)]
pub struct BodyScale(pub usize);

/// A JSON body: requires `Content-Type: application/json`, enforces the size limit (413),
/// tells malformed JSON (400) from wrong or missing fields (422, naming the field).
///
/// Only the size limit applies during extraction; content type and parsing are checked when
/// the handler calls [`JsonBody::parse`], after it has authorized the caller, so a caller
/// without the scope learns nothing from how its body is judged.
pub struct JsonBody<T>(Result<T, Error>);

impl<T> JsonBody<T> {
    pub fn parse(self) -> Result<T, Error> {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = Error;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (limit, declared) = body_limits(req);
        let is_json = is_json(req);
        let mut payload = payload.take();
        Box::pin(async move {
            let bytes = read_limited(&mut payload, limit, declared).await?;
            if !is_json {
                return Ok(JsonBody(Err(Error::new(
                    ErrorKind::UnsupportedMediaType,
                    "send the body as JSON with Content-Type: application/json",
                ))));
            }
            Ok(JsonBody(parse_json(&bytes)))
        })
    }
}

/// Whether the request declares a JSON body (`application/json` or a `+json` type).
pub fn is_json(req: &HttpRequest) -> bool {
    req.mime_type().ok().flatten().is_some_and(|m| {
        m.essence_str() == "application/json" || m.suffix().is_some_and(|s| s == "json")
    })
}

/// The configured JSON limit and the declared Content-Length, if any.
fn body_limits(req: &HttpRequest) -> (usize, Option<usize>) {
    let scale = req.app_data::<BodyScale>().map_or(1, |s| s.0.max(1));
    let limit = req
        .app_data::<JsonLimit>()
        .map_or(1 << 20, |l| l.0)
        .saturating_mul(scale);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    (limit, declared)
}

/// A body that may be absent: empty (or only whitespace) means `T::default()`, anything else
/// must be JSON of `T`. Same size limit and error shapes as [`JsonBody`].
pub async fn read_optional_json<T: DeserializeOwned + Default>(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<T, Error> {
    let (limit, declared) = body_limits(req);
    let bytes = read_limited(&mut payload, limit, declared).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&bytes)
}

async fn read_limited<S>(
    payload: &mut S,
    limit: usize,
    declared: Option<usize>,
) -> Result<web::BytesMut, Error>
where
    S: futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>> + Unpin,
{
    let too_large = || {
        Error::new(
            ErrorKind::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| Error::bad_request(format!("the request body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    // Syntax first, so a broken body is a 400 even when a field before the break has the wrong
    // type.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(Error::bad_request(format!(
            "the body is not valid JSON: {e}"
        )));
    }
    // Every body of this API is an object; serde would also read a struct from an array of its
    // fields in order, which no client means.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::invalid(vec![Invalid::new(
            "body",
            "must be a JSON object",
        )]));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let field = if path == "." { "body".to_owned() } else { path };
                    let message = inner.to_string();
                    let message = message
                        .split(" at line")
                        .next()
                        .unwrap_or(&message)
                        .to_owned();
                    Err(Error::invalid(vec![Invalid::new(field, message)]))
                }
                _ => Err(Error::bad_request(format!(
                    "the body is not valid JSON: {inner}"
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Login {
        email: String,
        password: String,
    }

    #[test]
    fn a_body_must_be_an_object_not_its_fields_in_order() {
        assert!(parse_json::<Login>(br#" {"email": "a@b.c", "password": "p"}"#).is_ok());
        let refused = parse_json::<Login>(br#"["a@b.c", "p"]"#).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Validation);
        assert_eq!(refused.errors[0].field, "body");
        let broken = parse_json::<Login>(b"[").unwrap_err();
        assert_eq!(broken.kind, ErrorKind::BadRequest);
    }
}
