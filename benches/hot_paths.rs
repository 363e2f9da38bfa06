//! Criterion benchmarks of the hot paths, each next to a baseline measured in the same run
//! (SHA-256 of one key, one sled read) so the figures compare across noisy machines.
//!
//! `cargo bench --bench hot_paths` runs them at full size (10 000 keys, 100 000 products);
//! under `cargo test` each runs once on a small store, to prove the benches still work.
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pixee_pim::auth::passwords::{HashCost, Passwords};
use pixee_pim::auth::{Credentials, key_format};
use pixee_pim::catalog::{Catalog, ListQuery};
use pixee_pim::clock::{SharedClock, SystemClock};
use pixee_pim::config::{ServeArgs, Settings};
use pixee_pim::domain::{Environment, Scope, TenantId};
use pixee_pim::store::{Namespace, Store};
use std::hint::black_box;
use std::sync::Arc;

fn full_size() -> bool {
    std::env::args().any(|a| a == "--bench")
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    auth: pixee_pim::auth::Auth,
    key: String,
    token: String,
    ns: Namespace,
}

fn fixture(rt: &tokio::runtime::Runtime, keys: u64, products: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), 64 << 20).expect("store");
    let args = ServeArgs {
        key_reads_per_minute: Some(u32::MAX),
        ..Default::default()
    };
    let settings = Settings::resolve(dir.path().to_path_buf(), args);
    let clock: SharedClock = Arc::new(SystemClock);
    let auth = pixee_pim::startup::build_auth(&store, &settings, clock, HashCost::FAST_FOR_TESTS)
        .expect("auth");
    rt.block_on(auth.bootstrap("bench@example.com", Some("bench password 1".into())))
        .expect("bootstrap");
    let tenant: TenantId = store
        .tenant_by_name("default")
        .expect("store")
        .expect("tenant")
        .id;
    let now = auth.now();
    pixee_pim::seed::keys(&store, tenant, Environment::Live, keys, now).expect("seed keys");
    let ns = Namespace {
        tenant,
        environment: Environment::Live,
    };
    pixee_pim::seed::products(&store, ns, products, now).expect("seed products");
    let issued = rt
        .block_on(auth.create_key(pixee_pim::auth::api_keys::NewKeyRequest {
            tenant,
            environment: Environment::Live,
            name: "bench".into(),
            scopes: [Scope::ProductsRead].into_iter().collect(),
            expires_at: None,
            created_by: "bench".into(),
            ip: None,
            extra_tenants: Vec::new(),
        }))
        .expect("key");
    let client = pixee_pim::auth::sessions::ClientInfo::default();
    let tokens = rt
        .block_on(auth.login("bench@example.com", "bench password 1".into(), &client))
        .expect("login");
    Fixture {
        _dir: dir,
        store,
        auth,
        key: issued.raw,
        token: tokens.access_token,
        ns,
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (keys, products) = if full_size() {
        (10_000, 100_000)
    } else {
        (100, 1_000)
    };
    let f = fixture(&rt, keys, products);
    let bearer = format!("Bearer {}", f.token);

    let mut g = c.benchmark_group("baseline");
    g.bench_function("sha256_of_a_key", |b| {
        b.iter(|| pixee_pim::auth::secret::sha256(black_box(f.key.as_bytes())))
    });
    let tenant = f.ns.tenant;
    g.bench_function("sled_read_of_one_record", |b| {
        b.iter(|| f.store.tenant(black_box(tenant)).expect("read"))
    });
    g.finish();

    let mut g = c.benchmark_group("auth");
    g.bench_function("key_format_check", |b| {
        b.iter(|| key_format::parse(black_box(&f.key)))
    });
    g.bench_function(BenchmarkId::new("key_verify_end_to_end", keys), |b| {
        b.iter(|| {
            let creds = Credentials {
                api_key: Some(&f.key),
                is_read: true,
                ..Default::default()
            };
            let done = f
                .auth
                .authenticate(black_box(creds))
                .map_err(|e| e.0)
                .expect("key accepted");
            done.principal.require(Scope::ProductsRead).expect("scope");
        })
    });
    let now = f.auth.now();
    g.bench_function("jwt_claims_of_a_token_seen_before", |b| {
        b.iter(|| f.auth.jwt.verify(black_box(&f.token), now).expect("valid"))
    });
    g.bench_function("jwt_verify_with_session_check", |b| {
        b.iter(|| {
            let creds = Credentials {
                authorization: Some(&bearer),
                is_read: true,
                ..Default::default()
            };
            f.auth
                .authenticate(black_box(creds))
                .map_err(|e| e.0)
                .expect("token accepted")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("argon2");
    g.sample_size(10);
    let production = Passwords::new(HashCost::PRODUCTION, 1).expect("passwords");
    g.bench_function("hash_at_production_parameters", |b| {
        b.iter(|| {
            rt.block_on(production.hash(black_box("a benchmark password".into())))
                .expect("hash")
        })
    });
    g.finish();

    let (index, _) = pixee_pim::search::SearchIndex::open(
        &f._dir.path().join("search"),
        f.store.clone(),
        Arc::new(SystemClock),
    )
    .expect("search index");
    let catalog = Catalog::new(f.store.clone(), Arc::new(SystemClock), index);
    let mut g = c.benchmark_group("products");
    let first_page = ListQuery {
        descending: true,
        limit: 20,
        ..Default::default()
    };
    g.bench_function(BenchmarkId::new("list_20_newest", products), |b| {
        b.iter(|| catalog.list(f.ns, black_box(&first_page)).expect("list"))
    });
    let deep_page = ListQuery {
        descending: true,
        limit: 20,
        offset: 1_000.min(products as usize - 20),
        ..Default::default()
    };
    g.bench_function(BenchmarkId::new("list_20_at_offset_1000", products), |b| {
        b.iter(|| catalog.list(f.ns, black_box(&deep_page)).expect("list"))
    });
    g.sample_size(10);
    let search = ListQuery {
        search: Some("blue foun".into()),
        descending: true,
        limit: 20,
        ..Default::default()
    };
    g.bench_function(BenchmarkId::new("search_index", products), |b| {
        b.iter(|| catalog.list(f.ns, black_box(&search)).expect("list"))
    });
    g.finish();

    // A product create's store transaction (its indexes, the count, the feed index), without
    // the flush that makes it durable: the part the store boundary could slow down.
    let mut g = c.benchmark_group("store");
    let mut n = 9_000_000_000u64;
    let now = time::OffsetDateTime::now_utc();
    g.bench_function("insert_product", |b| {
        b.iter_batched(
            || {
                n += 1;
                let mut p = pixee_pim::catalog::products::blank(
                    pixee_pim::domain::ProductId::generate(),
                    now,
                );
                p.ean = pixee_pim::domain::Ean::from_body(n).as_str().to_owned();
                p.name = format!("Bench {n}");
                p
            },
            |p| f.store.insert_product(f.ns, &p).expect("insert"),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
