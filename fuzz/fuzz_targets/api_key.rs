//! The `X-API-Key` parser: never panics; whatever it accepts has the published shape.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixee_pim::auth::key_format;

fuzz_target!(|raw: &str| {
    if let Some(env) = key_format::parse(raw) {
        assert_eq!(raw.len(), 46);
        assert!(raw.starts_with(match env {
            pixee_pim::domain::Environment::Live => "pm_live_",
            pixee_pim::domain::Environment::Test => "pm_test_",
        }));
        assert!(raw[8..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    let _ = key_format::hint(raw);
    let _ = key_format::looks_like_key(raw);
});
