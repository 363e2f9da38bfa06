//! The `X-Tenant-ID` parser: never panics; absent is no tenant, anything else a tenant id or a
//! 400.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixee_pim::auth::parse_tenant;

fuzz_target!(|raw: &str| {
    match parse_tenant(Some(raw)) {
        Ok(Some(id)) => assert_eq!(Some(id), pixee_pim::domain::TenantId::parse(raw.trim())),
        Ok(None) => panic!("a present header never means no tenant"),
        Err(e) => assert_eq!(e.kind, pixee_pim::error::ErrorKind::BadRequest),
    }
});
