//! The one error type handlers return. It knows the SPEC error codes but not HTTP: `web.rs`
//! turns it into a problem+json response.
use crate::domain::Invalid;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    AuthenticationRequired,
    InvalidApiKey,
    InvalidToken,
    InvalidCredentials,
    PermissionDenied,
    NotFound,
    /// 400: the request cannot be read (malformed JSON, bad header, bad query).
    BadRequest,
    /// 422: the request was read but a value is not acceptable.
    Validation,
    DuplicateEan,
    Conflict,
    AccountLocked,
    RateLimited,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    /// 410: what the request names existed but is gone for good (an expired export).
    Gone,
    /// An import job whose every row failed (the job's `error_code`; never a response).
    ImportFailed,
    /// 503: the server runs but is not ready (`/readyz`).
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::AuthenticationRequired => "AUTHENTICATION_REQUIRED",
            ErrorKind::InvalidApiKey => "INVALID_API_KEY",
            ErrorKind::InvalidToken => "INVALID_TOKEN",
            ErrorKind::InvalidCredentials => "INVALID_CREDENTIALS",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::BadRequest | ErrorKind::Validation => "VALIDATION_ERROR",
            ErrorKind::DuplicateEan => "DUPLICATE_EAN",
            ErrorKind::Conflict => "CONFLICT",
            ErrorKind::AccountLocked => "ACCOUNT_LOCKED",
            ErrorKind::RateLimited => "RATE_LIMIT_EXCEEDED",
            ErrorKind::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorKind::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorKind::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorKind::Gone => "EXPORT_EXPIRED",
            ErrorKind::ImportFailed => "IMPORT_FAILED",
            ErrorKind::Unavailable => "SERVICE_UNAVAILABLE",
            ErrorKind::Internal => "INTERNAL_ERROR",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct Error {
    pub kind: ErrorKind,
    pub detail: String,
    pub errors: Box<[Invalid]>,
    /// Seconds (a lockout or a rate window: far below `u32::MAX`).
    pub retry_after: Option<u32>,
    /// The scope a 403 is about (the `/ext` and `/windev` envelopes name it).
    pub missing_scope: Option<crate::domain::Scope>,
    /// The message the `/ext` and `/windev` envelopes show, in French as the hosted API
    /// writes them; when absent, one is chosen from the kind (`api/envelope.rs`).
    pub french: Option<Box<str>>,
    /// Logged for 500s, never sent.
    #[source]
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Error {
            kind,
            detail: detail.into(),
            errors: Box::default(),
            retry_after: None,
            missing_scope: None,
            french: None,
            cause: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Error::new(ErrorKind::NotFound, format!("{what} not found"))
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Error::new(ErrorKind::PermissionDenied, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Error::new(ErrorKind::BadRequest, detail)
    }

    pub fn invalid(errors: Vec<Invalid>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => "some fields are not valid".to_owned(),
        };
        Error {
            errors: errors.into_boxed_slice(),
            ..Error::new(ErrorKind::Validation, detail)
        }
    }

    pub fn internal(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error {
            cause: Some(Box::new(cause)),
            ..Error::new(ErrorKind::Internal, "an internal error occurred")
        }
    }

    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }

    /// The message the French-speaking surfaces (`/ext`, `/windev`) show instead of the
    /// kind's generic one.
    pub fn in_french(mut self, message: impl Into<String>) -> Self {
        self.french = Some(message.into().into_boxed_str());
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(u32::try_from(seconds.max(1)).unwrap_or(u32::MAX));
        self
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::invalid(vec![e])
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Error::not_found("record"),
            StoreError::Duplicate(unique) => {
                let kind = match unique {
                    crate::store::Unique::Ean => ErrorKind::DuplicateEan,
                    _ => ErrorKind::Conflict,
                };
                Error::new(kind, format!("{} already exists", unique.describe()))
            }
            StoreError::Conflict(what) => Error::new(ErrorKind::Conflict, what),
            StoreError::Missing { field, what } => {
                Error::invalid(vec![Invalid::new(field, format!("names no {what}"))])
            }
            StoreError::Invalid { field, problem } => {
                Error::invalid(vec![Invalid::new(field, problem)])
            }
            StoreError::Retry => Error::new(
                ErrorKind::Conflict,
                "the records changed during the write; retry",
            ),
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "the database is unavailable");
                Error::new(
                    ErrorKind::Unavailable,
                    "the database is unavailable; retry shortly",
                )
                .with_retry_after(1)
            }
            other => Error::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Unique;

    #[test]
    fn a_duplicate_is_told_apart_by_its_type_not_its_words() {
        let ean: Error = StoreError::Duplicate(Unique::Ean).into();
        assert_eq!(ean.kind, ErrorKind::DuplicateEan);
        assert_eq!(ean.detail, "a product with this EAN already exists");
        for other in [
            Unique::Reference,
            Unique::Email,
            Unique::TenantName,
            Unique::SupplierCode,
            Unique::CategoryName,
        ] {
            let e: Error = StoreError::Duplicate(other).into();
            assert_eq!(e.kind, ErrorKind::Conflict, "{other:?}");
            assert!(e.detail.ends_with("already exists"));
        }
    }
}
