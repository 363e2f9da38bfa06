//! Synthetic data for benchmarks and load tests: keys with random secrets nobody knows and
//! products with sequential EANs and names from a small vocabulary, bulk-loaded in batches (`pixee-pim seed`, `benches/`).
use crate::auth::key_format;
use crate::catalog::products::blank;
use crate::domain::{Ean, Environment, KeyId, ProductId, Scope, TenantId};
use crate::error::Error;
use crate::store::{ApiKeyRecord, Namespace, Store};
use time::OffsetDateTime;

const CHUNK: u64 = 10_000;

/// Words for synthetic product names, so that searches have realistic selectivity: a colour
/// and a noun each product, e.g. "Blue fountain 4242" (1 product in 600 has a given pair).
const COLOURS: [&str; 20] = [
    "red", "blue", "green", "black", "white", "grey", "yellow", "orange", "purple", "brown",
    "pink", "silver", "golden", "ivory", "navy", "olive", "teal", "coral", "beige", "crimson",
];
const NOUNS: [&str; 30] = [
    "fountain", "lamp", "chair", "table", "kettle", "bottle", "basket", "blanket", "candle",
    "clock", "mirror", "pillow", "rug", "shelf", "stool", "teapot", "vase", "wallet", "watch",
    "bucket", "drill", "hammer", "ladder", "shovel", "torch", "umbrella", "backpack", "helmet",
    "jacket", "scarf",
];
const BRANDS: [&str; 7] = [
    "Acme", "Nordlys", "Pelikan", "Vesta", "Orion", "Brûlé", "Kestrel",
];

pub fn keys(
    store: &Store,
    tenant: TenantId,
    env: Environment,
    count: u64,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let mut done = 0;
    while done < count {
        let n = CHUNK.min(count - done);
        let mut batch = Vec::with_capacity(n as usize);
        for i in 0..n {
            let key = key_format::generate(env)?;
            batch.push(ApiKeyRecord {
                id: KeyId::generate(),
                tenant,
                environment: env,
                name: format!("seed-{}", done + i),
                scopes: [Scope::ProductsRead].into_iter().collect(),
                hint: key.hint,
                digest: key.digest,
                previous: None,
                created_at: now,
                created_by: "seed".into(),
                expires_at: None,
                rotated_at: None,
                revoked_at: None,
            });
        }
        store.bulk_insert_api_keys(&batch)?;
        done += n;
    }
    Ok(())
}

/// Appends `count` products after the ones already in the namespace.
pub fn products(
    store: &Store,
    ns: Namespace,
    count: u64,
    now: OffsetDateTime,
) -> Result<(), Error> {
    // Sequential EANs are only known to be free in an empty namespace.
    if count > 0 && store.product_count(ns)? > 0 {
        return Err(Error::new(
            crate::error::ErrorKind::Conflict,
            "seed only fills an empty catalog; this tenant and environment already have products",
        ));
    }
    let first = 0;
    let mut done = 0;
    while done < count {
        let n = CHUNK.min(count - done);
        let batch: Vec<_> = (0..n)
            .map(|i| {
                let serial = first + done + i;
                let mut p = blank(ProductId::generate(), now);
                p.ean = Ean::from_body(serial + 1).as_str().to_owned();
                let colour = COLOURS[(serial % 20) as usize];
                let noun = NOUNS[((serial / 20) % 30) as usize];
                p.name = format!("{colour} {noun} {serial}");
                p.brand = Some(BRANDS[(serial % 7) as usize].to_owned());
                p.price = Some((serial % 10_000) as f64 / 100.0);
                p.sku = Some(format!("SKU-{serial}"));
                p
            })
            .collect();
        store.bulk_insert_products(ns, &batch)?;
        done += n;
    }
    Ok(())
}
