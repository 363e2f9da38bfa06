//! Query strings into the list parameters: never panics; a resolved page is within bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pixee_pim::api::PageParams;

fuzz_target!(|query: &[u8]| {
    let Ok(params) = serde_urlencoded::from_bytes::<PageParams>(query) else {
        return;
    };
    if let Ok(page) = params.resolve() {
        assert!((1..=100).contains(&page.per_page));
        assert!(page.page >= 1);
    }
});
