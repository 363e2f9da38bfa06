//! A product body through the server's JSON reader and the catalog's validation, as a creation
//! (PUT and POST): never panics, and an accepted product always has a valid EAN and a name.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixee_pim::catalog::products::{ProductPatch, blank, complete};
use pixee_pim::domain::{Ean, ProductId};

fuzz_target!(|body: &[u8]| {
    let Ok(patch) = pixee_pim::web::parse_json::<ProductPatch>(body) else {
        return;
    };
    let base = blank(ProductId::generate(), time::OffsetDateTime::UNIX_EPOCH);
    if let Ok(product) = complete(patch, base) {
        assert!(Ean::parse(&product.ean).is_ok(), "{}", product.ean);
        assert!(!product.name.trim().is_empty());
    }
});
