//! The actix extractor that turns request headers into a [`Principal`]. Runs on every protected
//! request: header reads, a format check, one digest lookup (keys) or one HMAC plus two record
//! reads (sessions), mostly from the store's coherent record cache. A handler takes at most one
//! `Principal`, so a request is authenticated (and counted against its key's limit) once.
use super::rate_limit::Decision;
use super::{Auth, Credentials, Principal};
use crate::domain::KeyId;
use crate::error::{Error, ErrorKind};
use actix_web::dev::Payload;
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderName};
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use std::future::{Ready, ready};
use std::net::IpAddr;
use time::OffsetDateTime;

// Header names as constants: a `&str` name is parsed into a `HeaderName` on every lookup.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Left in the request for the response middleware: rate-limit headers and key usage.
#[derive(Debug, Clone)]
pub struct KeyRequest {
    pub key: Option<KeyId>,
    pub ip: Option<IpAddr>,
    pub rate: Decision,
    /// When the request was authenticated: its key's last use.
    pub at: OffsetDateTime,
}

fn header<'a>(
    req: &'a HttpRequest,
    name: &HeaderName,
    bad: impl FnOnce() -> Error,
) -> Result<Option<&'a str>, Error> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => visible_ascii(v.as_bytes()).map(Some).ok_or_else(bad),
    }
}

/// What `HeaderValue::to_str` accepts (visible ASCII and tabs), checked without a branch per
/// byte so the compiler can vectorise it: an access token is several hundred bytes, and the
/// byte-at-a-time check showed in profiles of the session path.
fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    // Counting (rather than stopping at the first bad byte) is what LLVM vectorises.
    let bad = bytes
        .iter()
        .filter(|&&b| !((0x20..0x7f).contains(&b) || b == b'\t'))
        .count();
    if bad == 0 {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// The client address: the peer, or behind `hops` trusted reverse proxies the `hops`-th
/// X-Forwarded-For entry from the right, counted over every X-Forwarded-For line in order.
///
/// Proxies append: HAProxy adds a line of its own after whatever the client sent, nginx and
/// most others extend the last line. Either way the entries a client can invent stand to the
/// left of the ones our proxies wrote, so only counting from the right is safe. A list shorter
/// than `hops`, or an entry that is not an address, falls back to the peer (our proxy).
pub fn client_ip(req: &HttpRequest, hops: usize) -> Option<IpAddr> {
    let peer = || req.peer_addr().map(|a| a.ip());
    if hops == 0 {
        return peer();
    }
    let lines = req.headers().get_all(&X_FORWARDED_FOR).collect::<Vec<_>>();
    let entry = lines
        .iter()
        .rev()
        .flat_map(|line| {
            // A line that is not text counts as one entry that is not an address.
            let text = line.to_str().unwrap_or("");
            text.rsplit(',').map(str::trim)
        })
        .nth(hops - 1);
    entry.and_then(|e| e.parse::<IpAddr>().ok()).or_else(peer)
}

fn extract(req: &HttpRequest) -> Result<Principal, Error> {
    let auth = req
        .app_data::<web::Data<Auth>>()
        .ok_or_else(|| Error::new(ErrorKind::Internal, "BUG: Auth is not registered"))?;
    let creds = Credentials {
        api_key: header(req, &X_API_KEY, || {
            Error::new(ErrorKind::InvalidApiKey, "the API key is malformed")
        })?,
        authorization: header(req, &header::AUTHORIZATION, || {
            Error::new(
                ErrorKind::InvalidToken,
                "the Authorization header is malformed",
            )
        })?,
        tenant: header(req, &X_TENANT_ID, || {
            Error::bad_request("X-Tenant-ID must be a tenant id (a UUID)")
        })?,
        is_read: matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS),
    };
    let ip = || client_ip(req, auth.policy.forwarded_hops);
    match auth.authenticate(creds) {
        Ok(done) => {
            if let Some(rate) = done.rate {
                let key = done.principal.key_id();
                req.extensions_mut().insert(KeyRequest {
                    key,
                    ip: ip(),
                    rate,
                    at: done.at,
                });
            }
            Ok(done.principal)
        }
        Err((e, rate)) => {
            if let Some(rate) = rate {
                req.extensions_mut().insert(KeyRequest {
                    key: None,
                    ip: None,
                    rate,
                    at: auth.now(),
                });
            }
            Err(e)
        }
    }
}

impl FromRequest for Principal {
    type Error = Error;
    type Future = Ready<Result<Principal, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(extract(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn header_text_is_accepted_exactly_as_http_does() {
        for b in 0..=255u8 {
            let bytes = [b'a', b, b'z'];
            let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            assert_eq!(
                visible_ascii(value.as_bytes()),
                value.to_str().ok(),
                "byte {b:#04x}"
            );
        }
    }
}
