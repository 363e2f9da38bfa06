//! The access-token verifier: never panics, and nothing the fuzzer writes verifies (it does not
//! know the secret).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixee_pim::auth::jwt::JwtKeys;
use std::sync::OnceLock;

static KEYS: OnceLock<JwtKeys> = OnceLock::new();

fuzz_target!(|token: &str| {
    let keys = KEYS.get_or_init(|| JwtKeys::new(&[7u8; 32], 900).expect("keys"));
    let now = time::OffsetDateTime::now_utc();
    assert!(keys.verify(token, now).is_err());
});
