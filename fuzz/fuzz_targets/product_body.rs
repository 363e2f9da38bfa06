//! A product body through the server's JSON reader and the catalog's validation: never panics,
//! and an accepted product always has a valid EAN.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixee_pim::catalog::products::{ProductPatch, blank};
use pixee_pim::domain::{Ean, ProductId};

fuzz_target!(|body: &[u8]| {
    let Ok(patch) = pixee_pim::web::parse_json::<ProductPatch>(body) else {
        return;
    };
    let mut product = blank(ProductId::generate(), time::OffsetDateTime::UNIX_EPOCH);
    if patch.apply(&mut product).is_ok() {
        assert!(Ean::parse(&product.ean).is_ok(), "{}", product.ean);
    }
});
