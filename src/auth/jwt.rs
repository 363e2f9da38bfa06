//! Access tokens: HS256 JWTs with `typ: at+jwt`, checked against our clock with 60 s of skew.
//!
//! The signature and claims are only half of the check: the extractor also loads the session
//! and the user, so logout, password change and lock cut tokens off before they expire.
use crate::domain::{SessionId, TenantId, UserId, constant_time_eq};
use crate::error::{Error, ErrorKind};
use crate::store::cache::RecordCache;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::hash::BuildHasher;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

pub const ISSUER: &str = "pixee-pim";
pub const AUDIENCE: &str = "pixee-pim-api";
pub const TOKEN_TYPE: &str = "at+jwt";
pub const LEEWAY_SECONDS: i64 = 60;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: UserId,
    pub tid: TenantId,
    pub sid: SessionId,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
    /// The user's token version when issued; a password change or lock bumps it.
    pub ver: u32,
}

/// A token that passed the full check, kept with its text: only that exact text gets its claims.
pub struct VerifiedToken {
    token: Box<[u8]>,
    pub claims: Claims,
}

impl std::ops::Deref for VerifiedToken {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.claims
    }
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Tokens that passed the full check, found by a keyed 64-bit hash of their text and
    /// compared with it in constant time: a token seen again skips the HMAC and the JSON passes
    /// (and a SHA-256 of the whole token, which cost as much as the rest of the lookup). Expiry
    /// is still checked on every use, and the session and user checks that make tokens
    /// revocable run on every request regardless.
    verified: Arc<RecordCache<u64, VerifiedToken>>,
    token_ids: foldhash::quality::RandomState,
    pub ttl_seconds: i64,
}

fn invalid(detail: &str) -> Error {
    Error::new(ErrorKind::InvalidToken, detail)
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_seconds: i64) -> Result<Self, Error> {
        let internal = |e: jsonwebtoken::errors::Error| {
            Error::new(ErrorKind::Internal, "JWT key setup failed").with_cause(e)
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["iss", "aud", "sub", "exp", "iat"]);
        // Expiry is checked against the application clock below, not the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Ok(JwtKeys {
            encoding: EncodingKey::from_secret(secret).map_err(internal)?,
            decoding: DecodingKey::from_secret(secret).map_err(internal)?,
            validation,
            // An expired token is never served again: its entry goes at the next prune.
            verified: Arc::new(RecordCache::keeping(
                100_000,
                Arc::new(crate::store::cache::Trust::always()),
                |t: &VerifiedToken| {
                    t.claims.exp + LEEWAY_SECONDS > OffsetDateTime::now_utc().unix_timestamp()
                },
            )),
            token_ids: foldhash::quality::RandomState::default(),
            ttl_seconds,
        })
    }

    pub fn issue(
        &self,
        user: UserId,
        tenant: TenantId,
        session: SessionId,
        ver: u32,
        now: OffsetDateTime,
    ) -> Result<String, Error> {
        let iat = now.unix_timestamp();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: user,
            tid: tenant,
            sid: session,
            iat,
            exp: iat + self.ttl_seconds,
            jti: Uuid::now_v7(),
            ver,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(TOKEN_TYPE.into());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Error::new(ErrorKind::Internal, "token signing failed").with_cause(e))
    }

    /// Checks signature, algorithm, type, issuer and audience (everything that does not depend
    /// on the time) with jsonwebtoken.
    fn check_signature_and_claims(&self, token: &str) -> Result<Claims, Error> {
        // One decode: it checks the signature with HS256 only and hands back the header, whose
        // type we then require (so `alg: none`, other algorithms and foreign types all fail).
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| invalid("the access token is invalid"))?;
        if data.header.alg != Algorithm::HS256 || data.header.typ.as_deref() != Some(TOKEN_TYPE) {
            return Err(invalid("the access token has the wrong type or algorithm"));
        }
        Ok(data.claims)
    }

    /// Hits and misses of the verified-token cache.
    pub fn cache_counts(&self) -> crate::metrics::CacheCounts {
        self.verified.counts()
    }

    /// Checks algorithm, type, signature, issuer, audience and lifetime.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Arc<VerifiedToken>, Error> {
        let full_check = || {
            self.check_signature_and_claims(token)
                .map(|claims| VerifiedToken {
                    token: token.as_bytes().into(),
                    claims,
                })
        };
        let id = self.token_ids.hash_one(token.as_bytes());
        let cached = self
            .verified
            .get_or_load(id, || full_check().map(Some))?
            .ok_or_else(|| invalid("the access token is invalid"))?;
        let claims = if constant_time_eq(&cached.token, token.as_bytes()) {
            cached
        } else {
            // Another token with the same 64-bit id: checked in full, not cached.
            Arc::new(full_check()?)
        };
        let now = now.unix_timestamp();
        if now >= claims.exp + LEEWAY_SECONDS {
            return Err(invalid("the access token has expired"));
        }
        if claims.iat > now + LEEWAY_SECONDS {
            return Err(invalid("the access token is not valid yet"));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn keys() -> JwtKeys {
        JwtKeys::new(&[7u8; 32], 900).unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn token() -> String {
        keys()
            .issue(
                UserId::generate(),
                TenantId::generate(),
                SessionId::generate(),
                0,
                now(),
            )
            .unwrap()
    }

    fn reencode(
        token: &str,
        header: serde_json::Value,
        claims: Option<serde_json::Value>,
    ) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        let body = match claims {
            Some(c) => B64.encode(c.to_string()),
            None => parts[1].to_owned(),
        };
        format!("{}.{}.{}", B64.encode(header.to_string()), body, parts[2])
    }

    #[test]
    fn a_fresh_token_verifies_with_its_claims() {
        let t = token();
        let c = keys().verify(&t, now()).unwrap();
        assert_eq!(c.exp - c.iat, 900);
        assert_eq!(c.iss, ISSUER);
    }

    #[test]
    fn expiry_allows_sixty_seconds_of_skew_and_no_more() {
        let t = token();
        assert!(
            keys()
                .verify(&t, now() + time::Duration::seconds(959))
                .is_ok()
        );
        assert!(
            keys()
                .verify(&t, now() + time::Duration::seconds(960))
                .is_err()
        );
        assert!(
            keys()
                .verify(&t, now() - time::Duration::seconds(61))
                .is_err(),
            "issued in the future"
        );
    }

    #[test]
    fn a_cached_token_still_expires_and_its_signature_cannot_be_reused() {
        let k = keys();
        let t = k
            .issue(
                UserId::generate(),
                TenantId::generate(),
                SessionId::generate(),
                0,
                now(),
            )
            .unwrap();
        assert!(k.verify(&t, now()).is_ok());
        assert!(
            k.verify(&t, now()).is_ok(),
            "the second check comes from the cache"
        );
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims["ver"] = 7.into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        );
        assert!(
            k.verify(&forged, now()).is_err(),
            "a cached token's signature does not carry over"
        );
        assert!(
            k.verify(&t, now() + time::Duration::seconds(960)).is_err(),
            "expiry is checked on every use"
        );
    }

    #[test]
    fn a_token_that_shares_a_cached_tokens_id_is_still_checked_in_full() {
        let k = keys();
        let good = token();
        let claims = k.verify(&good, now()).unwrap().claims.clone();
        // Plant the good token's entry under the id of a forged one, as a 64-bit collision
        // would: the forged text must not inherit the good token's claims.
        let forged = reencode(
            &good,
            serde_json::json!({"alg": "HS256", "typ": "at+jwt"}),
            None,
        )
        .replace(".", "..");
        let id = k.token_ids.hash_one(forged.as_bytes());
        k.verified
            .get_or_load(id, || {
                Ok::<_, ()>(Some(VerifiedToken {
                    token: good.as_bytes().into(),
                    claims,
                }))
            })
            .unwrap();
        assert!(k.verify(&forged, now()).is_err());
        assert!(k.verify(&good, now()).is_ok());
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let t = token();
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap();
        let mut wrong_aud = claims.clone();
        wrong_aud["aud"] = "someone-else".into();
        let mut wrong_iss = claims.clone();
        wrong_iss["iss"] = "someone-else".into();
        let mut longer = claims.clone();
        longer["exp"] = (now().unix_timestamp() + 99_999).into();
        let hs = serde_json::json!({"alg":"HS256","typ":"at+jwt"});
        let cases = [
            (
                "alg none",
                format!(
                    "{}.{}.",
                    B64.encode(r#"{"alg":"none","typ":"at+jwt"}"#),
                    t.split('.').nth(1).unwrap()
                ),
            ),
            (
                "alg HS512",
                reencode(&t, serde_json::json!({"alg":"HS512","typ":"at+jwt"}), None),
            ),
            (
                "alg RS256",
                reencode(&t, serde_json::json!({"alg":"RS256","typ":"at+jwt"}), None),
            ),
            (
                "typ JWT",
                reencode(&t, serde_json::json!({"alg":"HS256","typ":"JWT"}), None),
            ),
            (
                "no typ",
                reencode(&t, serde_json::json!({"alg":"HS256"}), None),
            ),
            ("wrong aud", reencode(&t, hs.clone(), Some(wrong_aud))),
            ("wrong iss", reencode(&t, hs.clone(), Some(wrong_iss))),
            ("tampered exp", reencode(&t, hs, Some(longer))),
            (
                "other secret",
                JwtKeys::new(&[8u8; 32], 900)
                    .unwrap()
                    .issue(
                        UserId::generate(),
                        TenantId::generate(),
                        SessionId::generate(),
                        0,
                        now(),
                    )
                    .unwrap(),
            ),
            ("garbage", "not.a.jwt".to_owned()),
            ("empty", String::new()),
        ];
        for (what, forged) in cases {
            assert!(
                keys().verify(&forged, now()).is_err(),
                "{what} must be refused"
            );
        }
    }
}
