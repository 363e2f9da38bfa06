//! Validated domain types: parse once at the edge, then trust the type.
mod digest;
mod ean;
mod email;
mod ids;
mod name;
mod scope;

pub use digest::{Digest, constant_time_eq, digests_equal, hex};
pub use ean::Ean;
pub use email::{Email, MAX_EMAIL_LEN};
pub use ids::{KeyId, ProductId, SessionId, TenantId, UserId};
pub use name::{MAX_NAME_CHARS, display_name};
pub use scope::{Environment, Role, Scope, ScopeSet};

/// Why a value was refused; `field` names the input it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
