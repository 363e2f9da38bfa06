//! The envelopes of the two partner surfaces (SPEC §9, §10), for answers and for errors.
//!
//! - `/api/v1/ext/…`: `{success, data, meta: {total, page, page_size, updated_at}, errors}`.
//! - `/api/v1/windev/…`: `{success, code, message, data, count, …}`.
//!
//! Every error under either prefix takes its surface's envelope, including the ones produced
//! before a handler runs (credentials, scope, rate limit, unknown route, wrong method, body
//! too large or not JSON): the request middleware hands each error response under the
//! prefixes to [`rewrite`], which reads the [`ErrorInfo`] the error left on the response (or
//! only its status, for errors actix produced itself). Messages are in French, as the hosted
//! API writes them; clients branch on the status, never on the text.
use crate::domain::Invalid;
use crate::error::{Error, ErrorKind};
use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

pub const EXT_PREFIX: &str = "/api/v1/ext";
pub const WINDEV_PREFIX: &str = "/api/v1/windev";

/// Which envelope a path answers with, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Ext,
    Windev,
}

impl Surface {
    pub fn of(path: &str) -> Option<Surface> {
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under(EXT_PREFIX) {
            Some(Surface::Ext)
        } else if under(WINDEV_PREFIX) {
            Some(Surface::Windev)
        } else {
            None
        }
    }
}

/// What an error response carries for the envelopes (left in the response's extensions).
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    pub kind: ErrorKind,
    pub errors: Vec<Invalid>,
    pub retry_after: Option<u32>,
    pub missing_scope: Option<&'static str>,
    pub french: Option<String>,
}

impl ErrorInfo {
    pub fn of(e: &Error) -> Self {
        ErrorInfo {
            kind: e.kind,
            errors: e.errors.to_vec(),
            retry_after: e.retry_after,
            missing_scope: e.missing_scope.map(|s| s.as_str()),
            french: e.french.as_deref().map(str::to_owned),
        }
    }

    /// For an error actix produced itself: only its status is known.
    pub fn for_status(status: StatusCode) -> Self {
        let kind = match status.as_u16() {
            401 => ErrorKind::AuthenticationRequired,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            405 => ErrorKind::MethodNotAllowed,
            413 => ErrorKind::PayloadTooLarge,
            415 => ErrorKind::UnsupportedMediaType,
            422 => ErrorKind::Validation,
            429 => ErrorKind::RateLimited,
            s if s >= 500 => ErrorKind::Internal,
            _ => ErrorKind::BadRequest,
        };
        ErrorInfo {
            kind,
            errors: Vec::new(),
            retry_after: None,
            missing_scope: None,
            french: None,
        }
    }

    /// The one-line French message.
    pub fn message(&self) -> String {
        if let Some(m) = &self.french {
            return m.clone();
        }
        match self.kind {
            ErrorKind::AuthenticationRequired => {
                "Clé API manquante : envoyez-la dans l'en-tête X-API-Key.".into()
            }
            ErrorKind::InvalidApiKey => "Clé API invalide, expirée ou révoquée.".into(),
            ErrorKind::InvalidToken | ErrorKind::InvalidCredentials => {
                "Authentification refusée : cette API n'accepte que les clés API (en-tête X-API-Key).".into()
            }
            ErrorKind::PermissionDenied => match self.missing_scope {
                Some(scope) => format!("Permission refusée : la portée « {scope} » est requise."),
                None => "Permission refusée pour ce locataire ou cette ressource.".into(),
            },
            ErrorKind::NotFound => "Ressource introuvable.".into(),
            ErrorKind::BadRequest => {
                "Requête illisible : JSON mal formé ou paramètre invalide.".into()
            }
            ErrorKind::Validation => "Données invalides.".into(),
            ErrorKind::DuplicateEan => "Un produit avec cet EAN existe déjà.".into(),
            ErrorKind::Conflict => "Conflit avec l'état actuel des données.".into(),
            ErrorKind::AccountLocked => "Compte temporairement verrouillé.".into(),
            ErrorKind::RateLimited => match self.retry_after {
                Some(s) => format!("Trop de requêtes : réessayez dans {s} secondes."),
                None => "Trop de requêtes : réessayez plus tard.".into(),
            },
            ErrorKind::PayloadTooLarge => "Corps de requête trop volumineux.".into(),
            ErrorKind::UnsupportedMediaType => {
                "Type de contenu non pris en charge : envoyez du JSON (Content-Type: application/json).".into()
            }
            ErrorKind::MethodNotAllowed => "Méthode non autorisée pour cette route.".into(),
            ErrorKind::Gone => "Ressource expirée.".into(),
            ErrorKind::ImportFailed => "L'import a échoué.".into(),
            ErrorKind::Unavailable => "Service indisponible.".into(),
            ErrorKind::Internal => "Erreur interne du serveur.".into(),
        }
    }

    /// The message, then one line per invalid field.
    pub fn messages(&self) -> Vec<String> {
        let mut out = vec![self.message()];
        out.extend(field_messages(&self.errors));
        out
    }
}

/// One French line per invalid field (the field's own explanation stays as the domain wrote it).
pub fn field_messages(errors: &[Invalid]) -> Vec<String> {
    errors
        .iter()
        .map(|e| format!("Champ « {} » : {}", e.field, e.message))
        .collect()
}

pub fn now_rfc3339() -> String {
    crate::web::rfc3339(
        OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc()),
    )
}

/// `meta` of an `/ext` answer.
#[derive(Debug, Serialize)]
pub struct ExtMeta {
    pub total: Option<u64>,
    pub page: Option<u64>,
    pub page_size: Option<u64>,
    pub updated_at: String,
}

impl ExtMeta {
    pub fn single() -> Self {
        ExtMeta {
            total: Some(1),
            page: Some(1),
            page_size: Some(1),
            updated_at: now_rfc3339(),
        }
    }

    pub fn list(total: u64, page: u64, page_size: u64) -> Self {
        ExtMeta {
            total: Some(total),
            page: Some(page),
            page_size: Some(page_size),
            updated_at: now_rfc3339(),
        }
    }
}

/// A successful `/ext` answer, serialized straight from its parts.
#[derive(Serialize)]
struct ExtBody<T> {
    success: bool,
    data: T,
    meta: ExtMeta,
    errors: [(); 0],
}

/// A successful `/ext` answer.
pub fn ext(status: StatusCode, data: impl Serialize, meta: ExtMeta) -> HttpResponse {
    HttpResponse::build(status).json(ExtBody {
        success: true,
        data,
        meta,
        errors: [],
    })
}

/// A successful `/windev` answer; `extra` adds fields (paging, feed position) to the envelope.
pub fn windev(
    message: impl Into<String>,
    data: impl Serialize,
    count: u64,
    extra: Value,
) -> HttpResponse {
    let mut body = json!({
        "success": true,
        "code": 200,
        "message": message.into(),
        "data": data,
        "count": count,
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    HttpResponse::Ok().json(body)
}

/// The envelope body of an error on `surface`.
pub fn error_body(surface: Surface, status: StatusCode, info: &ErrorInfo) -> Value {
    match surface {
        Surface::Ext => json!({
            "success": false,
            "data": null,
            "meta": ExtMeta { total: None, page: None, page_size: None, updated_at: now_rfc3339() },
            "errors": info.messages(),
        }),
        Surface::Windev => {
            let mut body = json!({
                "success": false,
                "code": status.as_u16(),
                "message": info.message(),
                "data": null,
                "count": 0,
            });
            if !info.errors.is_empty() {
                body["errors"] = info
                    .errors
                    .iter()
                    .map(|e| json!({"field": e.field, "message": e.message}))
                    .collect();
            }
            if let Some(s) = info.retry_after {
                body["retry_after_seconds"] = s.into();
            }
            body
        }
    }
}

/// Turns an error response under a surface's prefix into its envelope, keeping its status and
/// headers (Allow, Retry-After, the rate-limit headers).
pub fn rewrite<B>(
    surface: Surface,
    res: &HttpResponse<B>,
    info: Option<ErrorInfo>,
) -> HttpResponse {
    let status = res.status();
    let info = info.unwrap_or_else(|| ErrorInfo::for_status(status));
    let mut out = HttpResponse::build(status).json(error_body(surface, status, &info));
    for (name, value) in res.headers() {
        if name != actix_web::http::header::CONTENT_TYPE
            && name != actix_web::http::header::CONTENT_LENGTH
        {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}
