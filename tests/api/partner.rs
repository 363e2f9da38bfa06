//! The partner surfaces, `/ext` (SPEC §9) and `/windev` (SPEC §10): their envelopes for every
//! answer and every error, products by EAN and by reference, batches with one result per item,
//! and the `since` feed.
use crate::helpers::{Fetch, TestApp, header_text, spawn_app, spawn_app_with};
use pixee_pim::clock::Clock;
use pixee_pim::config::ServeArgs;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

const EXT: &[&str] = &["ext:products:read", "ext:products:write"];
const WINDEV: &[&str] = &["windev:read", "windev:write", "windev:sync"];

fn ean(n: u64) -> String {
    pixee_pim::domain::Ean::from_body(300_000_000_000 + n)
        .as_str()
        .to_owned()
}

/// An `/ext` error: the status, JSON, and the envelope with its French message first.
async fn ext_error(res: Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status, "status");
    assert!(header_text(&res, "content-type").starts_with("application/json"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["data"], Value::Null, "{body}");
    assert!(body["meta"]["updated_at"].is_string(), "{body}");
    let first = body["errors"][0].as_str().unwrap_or_default();
    assert!(!first.is_empty(), "{body}");
    body
}

/// A `/windev` error: `code` equals the status, `data` null, `count` 0, a message.
async fn windev_error(res: Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status, "status");
    assert!(header_text(&res, "content-type").starts_with("application/json"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], status, "{body}");
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(body["count"], 0, "{body}");
    assert!(!body["message"].as_str().unwrap_or_default().is_empty());
    body
}

async fn ok(res: Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    assert_eq!(body["success"], true, "{body}");
    body
}

async fn key(app: &TestApp, scopes: &[&str]) -> String {
    app.admin_and_key(scopes).await.1.raw
}

#[actix_web::test]
async fn ext_status_names_the_key_and_its_scopes() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let k = app.create_key(&admin.token, EXT, "live").await;
    let body = ok(
        app.with_key(Method::GET, "/api/v1/ext/status", &k.raw)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(body["data"]["status"], "ok");
    assert_eq!(body["data"]["version"], "1.0");
    assert_eq!(body["data"]["api_key_name"], "test key");
    assert_eq!(body["data"]["scopes"], json!(EXT));
    assert_eq!(body["errors"], json!([]));
    assert!(body["meta"]["updated_at"].is_string());
}

#[actix_web::test]
async fn every_ext_error_is_in_the_envelope_even_before_a_handler_runs() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let k = app.create_key(&admin.token, EXT, "live").await.raw;
    let reader = app
        .create_key(&admin.token, &["products:read"], "live")
        .await
        .raw;
    let status = "/api/v1/ext/status";
    ext_error(app.req(Method::GET, status).send().await.unwrap(), 401).await;
    // A session is not a credential here, valid or not.
    ext_error(
        app.with_token(Method::GET, status, &admin.token)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    ext_error(
        app.with_key(Method::GET, status, "pm_live_nope")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let body = ext_error(
        app.with_key(Method::GET, status, &reader)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("ext:products:read"),
        "{body}"
    );
    // However the path is spelled.
    ext_error(
        app.req(Method::GET, "/api/v1/%65xt/status")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    ext_error(
        app.with_key(Method::GET, "/api/v1/ext/nothing/here", &k)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let res = app
        .with_key(
            Method::DELETE,
            &format!("/api/v1/ext/products/{}", ean(1)),
            &k,
        )
        .send()
        .await
        .unwrap();
    assert!(header_text(&res, "allow").contains("GET"));
    ext_error(res, 405).await;
    let post = |body: String, ct: &'static str| {
        app.with_key(Method::POST, "/api/v1/ext/products", &k)
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    ext_error(
        post("{\"ean\": ".into(), "application/json").await.unwrap(),
        400,
    )
    .await;
    ext_error(post("ean=1".into(), "text/plain").await.unwrap(), 415).await;
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(1 << 21));
    ext_error(post(huge, "application/json").await.unwrap(), 413).await;
    let body = ext_error(
        post(
            json!({"ean": "123", "name": "x"}).to_string(),
            "application/json",
        )
        .await
        .unwrap(),
        422,
    )
    .await;
    assert!(
        body["errors"][1].as_str().unwrap().contains("ean"),
        "{body}"
    );
    // Nothing of the refused writes landed.
    let list = ok(
        app.with_key(Method::GET, "/api/v1/ext/products", &k)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(list["meta"]["total"], 0);

    // Over the rate limit: 429 in the envelope, with Retry-After and the rate headers.
    let app = spawn_app_with(ServeArgs {
        key_reads_per_minute: Some(2),
        ..ServeArgs::default()
    })
    .await;
    let k = key(&app, EXT).await;
    for _ in 0..2 {
        let res = app.with_key(Method::GET, status, &k).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = app.with_key(Method::GET, status, &k).send().await.unwrap();
    assert!(!header_text(&res, "retry-after").is_empty());
    assert_eq!(header_text(&res, "x-ratelimit-limit"), "2");
    assert_eq!(header_text(&res, "x-ratelimit-remaining"), "0");
    ext_error(res, 429).await;
}

#[actix_web::test]
async fn ext_products_are_read_created_replaced_and_patched_by_ean() {
    let app = spawn_app().await;
    let k = key(&app, EXT).await;
    let e = ean(10);
    let create = |body: Value| {
        app.with_key(Method::POST, "/api/v1/ext/products", &k)
            .json(&body)
            .send()
    };
    let body = ok(
        create(json!({"ean": e, "name": "Lampe", "brand": "Acme", "price": 12.5}))
            .await
            .unwrap(),
        201,
    )
    .await;
    assert_eq!(body["data"]["ean"], e.as_str());
    let dup = ext_error(
        create(json!({"ean": e, "name": "Twice"})).await.unwrap(),
        409,
    )
    .await;
    assert!(dup["errors"][0].as_str().unwrap().contains("EAN"));
    let path = format!("/api/v1/ext/products/{e}");
    let got = ok(
        app.with_key(Method::GET, &path, &k).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(got["data"]["name"], "Lampe");
    let missing = ean(11);
    let body = ext_error(
        app.with_key(Method::GET, &format!("/api/v1/ext/products/{missing}"), &k)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(
        body["errors"][0],
        format!("Produit avec EAN '{missing}' introuvable.")
    );
    // PATCH changes what it names.
    let patched = ok(
        app.with_key(Method::PATCH, &path, &k)
            .json(&json!({"price": 9.0}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(
        (
            patched["data"]["price"].as_f64(),
            patched["data"]["brand"].as_str()
        ),
        (Some(9.0), Some("Acme"))
    );
    // PUT replaces every field (200), or creates (201).
    let put = ok(
        app.with_key(Method::PUT, &path, &k)
            .json(&json!({"name": "Lampe bis"}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(put["data"]["brand"], Value::Null);
    assert_eq!(put["data"]["name"], "Lampe bis");
    ok(
        app.with_key(Method::PUT, &format!("/api/v1/ext/products/{missing}"), &k)
            .json(&json!({"name": "Nouveau"}))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    // A body may not move a product to another EAN.
    ext_error(
        app.with_key(Method::PUT, &path, &k)
            .json(&json!({"ean": ean(12), "name": "x"}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    let list = ok(
        app.with_key(Method::GET, "/api/v1/ext/products?page_size=1&page=2", &k)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(
        (
            &list["meta"]["total"],
            &list["meta"]["page"],
            &list["meta"]["page_size"]
        ),
        (&json!(2), &json!(2), &json!(1))
    );
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let found = ok(
        app.with_key(
            Method::GET,
            "/api/v1/ext/products?search=nouv&is_active=1",
            &k,
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(found["data"][0]["name"], "Nouveau");
    ext_error(
        app.with_key(Method::GET, "/api/v1/ext/products?page_size=101", &k)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
}

#[actix_web::test]
async fn an_ext_batch_answers_each_item_in_order_and_a_bad_item_blocks_nothing() {
    let app = spawn_app().await;
    let k = key(&app, EXT).await;
    let existing = ean(20);
    ok(
        app.with_key(Method::POST, "/api/v1/ext/products", &k)
            .json(&json!({"ean": existing, "name": "Old", "brand": "Keep"}))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    let twice = ean(21);
    let items = json!([
        {"ean": twice, "name": "First"},
        {"ean": "12345", "name": "Bad EAN"},
        {"name": "No EAN"},
        {"ean": ean(22)},
        {"ean": ean(23), "name": "Bad price", "price": "cheap"},
        {"ean": existing, "name": "New name"},
        {"ean": twice, "name": "Second"},
        "not an object",
    ]);
    let body = ok(
        app.with_key(Method::POST, "/api/v1/ext/products/batch", &k)
            .json(&json!({"products": items}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let statuses: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "created", "error", "error", "error", "error", "updated", "updated", "error"
        ]
    );
    assert_eq!(body["data"][1]["ean"], "12345");
    assert!(!body["data"][3]["errors"].as_array().unwrap().is_empty());
    assert_eq!(body["meta"]["total"], 8);
    let get = |e: String| {
        app.with_key(Method::GET, &format!("/api/v1/ext/products/{e}"), &k)
            .json_value()
    };
    // The later item of a repeated EAN wins; an update keeps what it does not name.
    assert_eq!(get(twice.clone()).await["data"]["name"], "Second");
    let kept = get(existing.clone()).await;
    assert_eq!(
        (
            kept["data"]["name"].as_str(),
            kept["data"]["brand"].as_str()
        ),
        (Some("New name"), Some("Keep"))
    );
    // PATCH: partial updates of existing products; an unknown EAN is an item error.
    let body = ok(
        app.with_key(Method::PATCH, "/api/v1/ext/products/batch", &k)
            .json(
                &json!({"products": [{"ean": existing, "stock": 7}, {"ean": ean(24), "stock": 1}]}),
            )
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(body["data"][0]["status"], "updated");
    assert_eq!(body["data"][1]["status"], "error");
    assert_eq!(get(existing).await["data"]["stock"], 7);
    assert_eq!(
        app.with_key(
            Method::GET,
            &format!("/api/v1/ext/products/{}", ean(24)),
            &k
        )
        .status_code()
        .await,
        StatusCode::NOT_FOUND
    );
    // Over the limit: refused whole, in the envelope, nothing written.
    let many: Vec<Value> = (0..501)
        .map(|i| json!({"ean": ean(1000 + i), "name": "n"}))
        .collect();
    ext_error(
        app.with_key(Method::POST, "/api/v1/ext/products/batch", &k)
            .json(&json!({"products": many}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    let list = app
        .with_key(Method::GET, "/api/v1/ext/products", &k)
        .json_value()
        .await;
    assert_eq!(list["meta"]["total"], 2);
}

#[actix_web::test]
async fn concurrent_batches_on_the_same_new_eans_create_each_once() {
    let app = spawn_app().await;
    let k = key(&app, EXT).await;
    let items: Vec<Value> = (0..50)
        .map(|i| json!({"ean": ean(500 + i), "name": format!("Racing {i}")}))
        .collect();
    let batch = || {
        app.with_key(Method::POST, "/api/v1/ext/products/batch", &k)
            .json(&json!({"products": items}))
            .json_value()
    };
    let answers = futures_util::future::join_all((0..4).map(|_| batch())).await;
    let mut created = 0;
    for a in &answers {
        for r in a["data"].as_array().unwrap() {
            match r["status"].as_str() {
                Some("created") => created += 1,
                Some("updated") => {}
                other => panic!("item {other:?}: {r}"),
            }
        }
    }
    assert_eq!(created, 50);
    let list = app
        .with_key(Method::GET, "/api/v1/ext/products?page_size=1", &k)
        .json_value()
        .await;
    assert_eq!(list["meta"]["total"], 50);
}

#[actix_web::test]
async fn windev_status_needs_no_key_and_every_error_is_in_its_envelope() {
    let app = spawn_app().await;
    let body = ok(
        app.req(Method::GET, "/api/v1/windev/status")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(body["code"], 200);
    assert_eq!(body["data"]["endpoints"].as_array().unwrap().len(), 12);
    assert_eq!(body["count"], 12);
    let admin = app.admin().await;
    let reader = app
        .create_key(&admin.token, &["windev:read"], "live")
        .await
        .raw;
    let products = "/api/v1/windev/products";
    windev_error(app.req(Method::GET, products).send().await.unwrap(), 401).await;
    windev_error(
        app.with_token(Method::GET, products, &admin.token)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let body = windev_error(
        app.with_key(Method::POST, "/api/v1/windev/stock/update", &reader)
            .json(&json!({"items": [{"reference": "R", "stock": 1}]}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("windev:write"));
    windev_error(
        app.with_key(Method::GET, "/api/v1/windev/nope", &reader)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    windev_error(
        app.with_key(Method::DELETE, products, &reader)
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    let body = windev_error(
        app.with_key(
            Method::GET,
            "/api/v1/windev/products/since/yesterday",
            &reader,
        )
        .send()
        .await
        .unwrap(),
        422,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "ts");
    let writer = key(&app, WINDEV).await;
    windev_error(
        app.with_key(Method::POST, "/api/v1/windev/stock/update", &writer)
            .header("Content-Type", "application/json")
            .body("{\"items\": [")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    windev_error(
        app.with_key(Method::POST, "/api/v1/windev/stock/update", &writer)
            .body("items")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    let lines: Vec<Value> = (0..5001)
        .map(|i| json!({"reference": format!("R{i}"), "stock": 1}))
        .collect();
    windev_error(
        app.with_key(Method::POST, "/api/v1/windev/stock/update", &writer)
            .json(&json!({"items": lines}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
}

/// Creates products with references through `/products/sync`.
async fn sync(app: &TestApp, k: &str, products: Value) -> Value {
    ok(
        app.with_key(Method::POST, "/api/v1/windev/products/sync", k)
            .json(&json!({"products": products}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await
}

#[actix_web::test]
async fn windev_products_by_reference_or_ean_stock_prices_and_activation() {
    let app = spawn_app().await;
    let k = key(&app, WINDEV).await;
    let body = sync(
        &app,
        &k,
        json!([
            {"reference": "REF-001", "ean": ean(1), "name": "Chaise"},
            {"reference": "REF-002", "ean": ean(2), "name": "Table", "stock": 4},
            {"ean": ean(3), "name": "No reference"},
            {"reference": "REF-003", "name": "No EAN"},
        ]),
    )
    .await;
    let statuses: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["created", "created", "error", "error"]);
    assert_eq!(
        (body["succeeded"].as_u64(), body["failed"].as_u64()),
        (Some(2), Some(2))
    );
    // Again: the same references update.
    let body = sync(
        &app,
        &k,
        json!([{"reference": "REF-001", "name": "Chaise bleue"}]),
    )
    .await;
    assert_eq!(body["data"][0]["status"], "updated");

    let get = |r: String| {
        app.with_key(Method::GET, &format!("/api/v1/windev/products/{r}"), &k)
            .send()
    };
    let by_ref = ok(get("REF-001".into()).await.unwrap(), 200).await;
    assert_eq!(
        (
            by_ref["data"]["name"].as_str(),
            by_ref["data"]["ean"].as_str()
        ),
        (Some("Chaise bleue"), Some(ean(1).as_str()))
    );
    assert_eq!(by_ref["count"], 1);
    let by_ean = ok(get(ean(2)).await.unwrap(), 200).await;
    assert_eq!(by_ean["data"]["reference"], "REF-002");
    let body = windev_error(get("REF-404".into()).await.unwrap(), 404).await;
    assert_eq!(
        body["message"],
        "Produit introuvable pour la référence : REF-404"
    );

    let body = ok(
        app.with_key(Method::POST, "/api/v1/windev/stock/update", &k)
            .json(&json!({"items": [
                {"reference": "REF-001", "stock": 12},
                {"ean": ean(2), "stock": 0},
                {"reference": "REF-001", "stock": -1},
                {"reference": "REF-404", "stock": 3},
                {"stock": 3},
                {"reference": "REF-002", "stock": 1.5},
                {"reference": "REF-002", "stock": 2.0},
            ]}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let statuses: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "updated", "updated", "error", "error", "error", "error", "updated"
        ]
    );
    assert_eq!(body["data"][3]["reference"], "REF-404");
    assert_eq!(
        ok(get("REF-001".into()).await.unwrap(), 200).await["data"]["stock"],
        12
    );
    assert_eq!(
        ok(get("REF-002".into()).await.unwrap(), 200).await["data"]["stock"],
        2
    );

    let body = ok(
        app.with_key(Method::POST, "/api/v1/windev/prices/update", &k)
            .json(&json!({"items": [
                {"reference": "REF-001", "price": 19.9, "cost_price": 8},
                {"reference": "REF-002", "price": -3},
                {"reference": "REF-002"},
            ]}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let statuses: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["updated", "error", "error"]);
    let p = ok(get("REF-001".into()).await.unwrap(), 200).await;
    assert_eq!(
        (
            p["data"]["price"].as_f64(),
            p["data"]["cost_price"].as_f64()
        ),
        (Some(19.9), Some(8.0))
    );

    let off = ok(
        app.with_key(
            Method::POST,
            "/api/v1/windev/products/REF-002/deactivate",
            &k,
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(off["data"]["is_active"], false);
    let on = ok(
        app.with_key(
            Method::POST,
            &format!("/api/v1/windev/products/{}/activate", ean(2)),
            &k,
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(on["data"]["is_active"], true);
    let patched = ok(
        app.with_key(Method::PATCH, "/api/v1/windev/products/REF-002", &k)
            .json(&json!({"description": "En chêne"}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(patched["data"]["description"], "En chêne");

    let list = ok(
        app.with_key(Method::GET, "/api/v1/windev/products?per_page=1", &k)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(
        (
            list["total"].as_u64(),
            list["pages"].as_u64(),
            list["count"].as_u64(),
            list["page"].as_u64()
        ),
        (Some(2), Some(2), Some(2), Some(1))
    );
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["message"], "2 produits trouvés");
}

#[actix_web::test]
async fn windev_lists_categories_flat_and_suppliers() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let k = app
        .create_key(&admin.token, &["windev:read"], "live")
        .await
        .raw;
    let root: Value = app
        .with_token(Method::POST, "/api/v1/categories", &admin.token)
        .json(&json!({"name": "Maison"}))
        .json_value()
        .await;
    app.with_token(Method::POST, "/api/v1/categories", &admin.token)
        .json(&json!({"name": "Cuisine", "parent_id": root["id"]}))
        .json_value()
        .await;
    app.with_token(Method::POST, "/api/v1/suppliers", &admin.token)
        .json(&json!({"code": "ACME", "name": "Acme"}))
        .json_value()
        .await;
    let cats = ok(
        app.with_key(Method::GET, "/api/v1/windev/categories", &k)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(cats["count"], 2);
    assert_eq!(cats["data"][1]["parent_id"], root["id"]);
    assert!(
        cats["data"][1]["path"]
            .as_str()
            .unwrap()
            .contains("Cuisine")
    );
    let sups = ok(
        app.with_key(Method::GET, "/api/v1/windev/suppliers", &k)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(
        (sups["count"].as_u64(), sups["data"][0]["code"].as_str()),
        (Some(1), Some("ACME"))
    );
}

#[actix_web::test]
async fn the_since_feed_orders_changes_reports_deletions_once_and_pages_by_position() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let k = app.create_key(&admin.token, WINDEV, "live").await.raw;
    let start = app.clock.now();
    let tick = || app.clock.advance(time::Duration::seconds(1));
    tick();
    sync(
        &app,
        &k,
        json!([{"reference": "A", "ean": ean(1), "name": "A"}]),
    )
    .await;
    tick();
    let b = sync(
        &app,
        &k,
        json!([{"reference": "B", "ean": ean(2), "name": "B"}]),
    )
    .await;
    assert_eq!(b["data"][0]["status"], "created");
    tick();
    sync(
        &app,
        &k,
        json!([{"reference": "C", "ean": ean(3), "name": "C"}]),
    )
    .await;
    tick();
    let b_id = app
        .with_key(Method::GET, "/api/v1/windev/products/B", &k)
        .json_value()
        .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.with_token(
            Method::DELETE,
            &format!("/api/v1/products/{b_id}"),
            &admin.token
        )
        .status_code()
        .await,
        StatusCode::NO_CONTENT
    );
    tick();
    sync(&app, &k, json!([{"reference": "A", "name": "A2"}])).await;
    tick();
    let since = |ts: String| {
        app.with_key(
            Method::GET,
            &format!("/api/v1/windev/products/since/{ts}"),
            &k,
        )
        .json_value()
    };
    let ts = start
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let all = since(ts.clone()).await;
    let seen: Vec<(String, bool)> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reference"].as_str().unwrap().to_owned(),
                e["deleted"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("C".to_owned(), false),
            ("B".to_owned(), true),
            ("A".to_owned(), false)
        ],
        "{all}"
    );
    assert_eq!(all["data"][1]["ean"], ean(2).as_str());
    assert_eq!(all["data"][2]["name"], "A2");
    assert_eq!(all["has_more"], false);
    // Tombstones are kept 90 days by default: deletions are known from then on.
    let known = time::OffsetDateTime::parse(
        all["deletions_known_since"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(known, app.clock.now() - time::Duration::days(90));
    // Unix seconds work as well.
    let unix = since(start.unix_timestamp().to_string()).await;
    assert_eq!(unix["count"], 3);
    // Paging by position: two, then the rest, nothing twice, nothing lost.
    let first = app
        .with_key(
            Method::GET,
            &format!("/api/v1/windev/products/since/{ts}?limit=2"),
            &k,
        )
        .json_value()
        .await;
    assert_eq!(
        (first["count"].as_u64(), first["has_more"].as_bool()),
        (Some(2), Some(true))
    );
    let next = first["next_since"].as_str().unwrap().to_owned();
    let rest = since(next.clone()).await;
    assert_eq!(rest["count"], 1);
    assert_eq!(rest["data"][0]["reference"], "A");
    // At the end, the position stays where it was.
    let end = since(rest["next_since"].as_str().unwrap().to_owned()).await;
    assert_eq!(
        (end["count"].as_u64(), end["has_more"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(end["next_since"], rest["next_since"]);
}

#[actix_web::test]
async fn a_client_paging_the_feed_while_writes_continue_misses_nothing() {
    let app = spawn_app().await;
    let k = key(&app, WINDEV).await;
    let start = app.clock.now();
    let writer = async {
        for i in 0..40u64 {
            app.clock.advance(time::Duration::milliseconds(3));
            sync(
                &app,
                &k,
                json!([{"reference": format!("W{i}"), "ean": ean(700 + i), "name": "w"}]),
            )
            .await;
        }
    };
    let reader = async {
        let mut pos = start.unix_timestamp().to_string();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let page = app
                .with_key(
                    Method::GET,
                    &format!("/api/v1/windev/products/since/{pos}?limit=3"),
                    &k,
                )
                .json_value()
                .await;
            for e in page["data"].as_array().unwrap() {
                seen.insert(e["reference"].as_str().unwrap().to_owned());
            }
            pos = page["next_since"].as_str().unwrap().to_owned();
            tokio::task::yield_now().await;
        }
        (pos, seen)
    };
    let ((), (pos, mut seen)) = futures_util::join!(writer, reader);
    // Then to the end, once the writes are over.
    app.clock.advance(time::Duration::seconds(1));
    let mut pos = pos;
    loop {
        let page = app
            .with_key(
                Method::GET,
                &format!("/api/v1/windev/products/since/{pos}?limit=7"),
                &k,
            )
            .json_value()
            .await;
        for e in page["data"].as_array().unwrap() {
            seen.insert(e["reference"].as_str().unwrap().to_owned());
        }
        pos = page["next_since"].as_str().unwrap().to_owned();
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen.len(), 40, "{seen:?}");
}
