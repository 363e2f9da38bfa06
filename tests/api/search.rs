//! Search (SPEC §4): a full-text index with folding, AND of words, prefix on the last word,
//! relevance order; hostile text is only words; the index follows every write at once and
//! catches up at start with what the store committed without it.
use crate::helpers::{Fetch, Key, TestApp, assert_problem, names, spawn_app};
use pixee_pim::clock::Clock;
use pixee_pim::domain::{Ean, Environment, ProductId, TenantId};
use pixee_pim::store::Namespace;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn create(app: &TestApp, key: &Key, ean: u64, body: Value) -> String {
    let mut body = body;
    body["ean"] = json!(Ean::from_body(ean).as_str());
    let res = app
        .with_key(Method::POST, "/api/v1/products", &key.raw)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn search(app: &TestApp, key: &Key, query: &str) -> Value {
    app.with_key(Method::GET, "/api/v1/products", &key.raw)
        .query(&[("search", query), ("per_page", "100")])
        .json_value()
        .await
}

async fn catalog(app: &TestApp) -> Key {
    let (_, key) = app
        .admin_and_key(&["products:read", "products:write", "products:delete"])
        .await;
    create(app, &key, 1, json!({"name": "Fountain", "brand": "Aqua"})).await;
    create(
        app,
        &key,
        2,
        json!({"name": "Garden pump", "description": "fits any fountain"}),
    )
    .await;
    create(
        app,
        &key,
        3,
        json!({"name": "Crème brûlée torch", "brand": "Pelikan"}),
    )
    .await;
    create(
        app,
        &key,
        4,
        json!({"name": "Fountain pen", "sku": "FP-100", "reference": "W-77"}),
    )
    .await;
    create(
        app,
        &key,
        5,
        json!({"name": "Drinking fountain", "is_active": false}),
    )
    .await;
    key
}

#[actix_web::test]
async fn words_fold_case_and_accents_all_must_match_and_the_last_is_a_prefix() {
    let app = spawn_app().await;
    let key = catalog(&app).await;
    assert_eq!(
        names(&search(&app, &key, "creme").await),
        ["Crème brûlée torch"]
    );
    assert_eq!(
        names(&search(&app, &key, "CRÈME BRULEE").await),
        ["Crème brûlée torch"]
    );
    assert_eq!(
        names(&search(&app, &key, "pelik").await),
        ["Crème brûlée torch"],
        "brand, prefix"
    );
    assert_eq!(
        search(&app, &key, "foun").await["total"],
        4,
        "prefix of the last word"
    );
    assert_eq!(
        names(&search(&app, &key, "fountain pen").await),
        ["Fountain pen"],
        "every word"
    );
    assert_eq!(
        search(&app, &key, "foun pen").await["total"],
        0,
        "only the last word is a prefix"
    );
    assert_eq!(
        names(&search(&app, &key, "fp 100").await),
        ["Fountain pen"],
        "sku words"
    );
    assert_eq!(
        names(&search(&app, &key, "w-77").await),
        ["Fountain pen"],
        "reference"
    );
    let ean = Ean::from_body(3);
    assert_eq!(
        names(&search(&app, &key, ean.as_str()).await),
        ["Crème brûlée torch"],
        "EAN"
    );
    assert_eq!(search(&app, &key, "nothing like it").await["total"], 0);
}

#[actix_web::test]
async fn hits_come_by_relevance_unless_an_order_is_asked_for() {
    let app = spawn_app().await;
    let key = catalog(&app).await;
    let hits = names(&search(&app, &key, "fountain").await);
    assert_eq!(hits.len(), 4);
    // The name weighs more than the description, and a short name more than a long one:
    // the oldest product comes first although lists are newest first by default.
    assert_eq!(hits[0], "Fountain");
    assert_eq!(hits.last().unwrap(), "Garden pump");
    // An order alone is not an order by: the hits stay by relevance.
    let order_only: Value = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .query(&[("search", "fountain"), ("sort_order", "asc")])
        .json_value()
        .await;
    assert_eq!(names(&order_only), hits);
    let by_name: Value = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .query(&[
            ("search", "fountain"),
            ("sort_by", "name"),
            ("sort_order", "asc"),
        ])
        .json_value()
        .await;
    assert_eq!(
        names(&by_name),
        [
            "Drinking fountain",
            "Fountain",
            "Fountain pen",
            "Garden pump"
        ]
    );
    // Combined with another filter, in relevance order still.
    let active: Value = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .query(&[
            ("search", "fountain"),
            ("is_active", "true"),
            ("per_page", "2"),
        ])
        .json_value()
        .await;
    assert_eq!(active["total"], 3);
    assert_eq!(names(&active), ["Fountain", "Fountain pen"]);
}

#[actix_web::test]
async fn hostile_text_is_only_words_and_overlong_text_is_refused() {
    let app = spawn_app().await;
    let key = catalog(&app).await;
    for q in [
        "\"fountain",
        "fountain:pen",
        "(fountain) [pen]",
        "fountain\\ pen",
        "pen*",
        "fountain AND",
        "+fountain -pen~2",
    ] {
        let res = app
            .with_key(Method::GET, "/api/v1/products", &key.raw)
            .query(&[("search", q)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{q}");
    }
    assert_eq!(
        names(&search(&app, &key, "fountain:pen").await),
        ["Fountain pen"]
    );
    assert_eq!(
        names(&search(&app, &key, "(fountain) [pen]").await),
        ["Fountain pen"]
    );
    assert_eq!(
        search(&app, &key, "::\"\"()").await["total"],
        0,
        "no word matches nothing"
    );
    let long = "fountain ".repeat(500);
    let res = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .query(&[("search", long.as_str())])
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, 422, "VALIDATION_ERROR").await;
    assert!(problem.to_string().contains("search"), "{problem}");
}

#[actix_web::test]
async fn a_search_finds_each_write_at_once_and_stays_in_its_namespace() {
    let app = spawn_app().await;
    let key = catalog(&app).await;
    let id = create(&app, &key, 10, json!({"name": "Zebra lamp"})).await;
    assert_eq!(
        names(&search(&app, &key, "zebra").await),
        ["Zebra lamp"],
        "created"
    );
    let res = app
        .with_key(Method::PATCH, &format!("/api/v1/products/{id}"), &key.raw)
        .json(&json!({"name": "Okapi lamp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        search(&app, &key, "zebra").await["total"],
        0,
        "old name gone"
    );
    assert_eq!(
        names(&search(&app, &key, "okapi").await),
        ["Okapi lamp"],
        "new name found"
    );
    let res = app
        .with_key(Method::DELETE, &format!("/api/v1/products/{id}"), &key.raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(search(&app, &key, "okapi").await["total"], 0, "deleted");
    // The test environment of the same tenant, and another tenant's key, see nothing of it.
    let admin = app.admin().await;
    let test_key = app
        .create_key(&admin.token, &["products:read", "products:write"], "test")
        .await;
    assert_eq!(search(&app, &test_key, "fountain").await["total"], 0);
    create(&app, &test_key, 11, json!({"name": "Fountain of tests"})).await;
    assert_eq!(
        names(&search(&app, &test_key, "fountain").await),
        ["Fountain of tests"]
    );
    assert_eq!(search(&app, &key, "fountain").await["total"], 4);
}

/// Writes the store committed while the index did not see them (a crash between the two) are
/// caught up at the next start: none lost, none invented.
#[actix_web::test]
async fn a_start_catches_up_with_writes_the_index_missed() {
    let app = spawn_app().await;
    let key = catalog(&app).await;
    let ns = Namespace {
        tenant: TenantId::parse(&app.default_tenant_id).unwrap(),
        environment: Environment::Live,
    };
    let store = app.app_auth.store.clone();
    let now = app.clock.now();
    // Straight into the store, around the catalog service and so around the index.
    let mut p = pixee_pim::catalog::products::blank(ProductId::generate(), now);
    p.ean = Ean::from_body(20).as_str().to_owned();
    p.name = "Unseen walrus".into();
    store.insert_product(ns, &p).unwrap();
    let fountain = search(&app, &key, "fountain pen").await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone = ProductId(fountain.parse().unwrap());
    store.delete_products(ns, &[gone], now).unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        search(&app, &key, "walrus").await["total"],
        0,
        "the index missed it"
    );
    assert_eq!(
        search(&app, &key, "fountain pen").await["total"],
        1,
        "and missed this"
    );
    drop(store);
    let app = app.restart().await;
    assert_eq!(
        names(&search(&app, &key, "walrus").await),
        ["Unseen walrus"]
    );
    assert_eq!(search(&app, &key, "fountain pen").await["total"], 0);
    assert_eq!(search(&app, &key, "fountain").await["total"], 3);
}
