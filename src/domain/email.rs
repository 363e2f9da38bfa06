//! Email addresses: trimmed and lower-cased, so lookups and lockout counters use one form.
use super::Invalid;
use serde::{Deserialize, Serialize};

pub const MAX_EMAIL_LEN: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Normalizes without judging the shape: login uses this form so that failures are counted
    /// per submitted address whether or not it could ever exist.
    pub fn normalize(raw: &str) -> String {
        raw.trim().to_lowercase()
    }

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let email = Self::normalize(raw);
        let well_formed = email.len() <= MAX_EMAIL_LEN
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            });
        if well_formed {
            Ok(Self(email))
        } else {
            Err(Invalid::new(
                "email",
                "must be an email address such as name@example.com",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            Email::parse("  Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in ["", "ann", "@example.com", "ann@", "a@b@c", "a b@c.d"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
