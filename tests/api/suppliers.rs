//! Suppliers: CRUD by editor and admin sessions, reads by keys with `suppliers:read`, unique
//! codes, products naming their supplier by code or id, and deletes that respect references.
use crate::helpers::{Fetch, TestApp, assert_problem, spawn_app};
use pixee_pim::auth::lockout::LockoutState;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const KEY_SCOPES: &[&str] = &[
    "products:read",
    "products:write",
    "products:delete",
    "suppliers:read",
];

async fn create_supplier(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.with_token(Method::POST, "/api/v1/suppliers", token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn supplier_id(app: &TestApp, token: &str, code: &str, name: &str) -> String {
    let res = create_supplier(app, token, json!({"code": code, "name": name})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[actix_web::test]
async fn a_supplier_is_created_read_listed_patched_and_deleted() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(KEY_SCOPES).await;
    let res = create_supplier(
        &app,
        &admin.token,
        json!({"code": " ACME ", "name": "Acme Corp", "email": "orders@acme.test", "country": "FR", "currency": "EUR", "lead_time_days": 12}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["code"], "ACME", "trimmed");
    assert_eq!(created["is_active"], true);
    assert_eq!(created["product_count"], 0);
    let path = format!("/api/v1/suppliers/{}", created["id"].as_str().unwrap());
    let read: Value = app
        .with_key(Method::GET, &path, &key.raw)
        .json_value()
        .await;
    assert_eq!(read, created, "a key with suppliers:read reads it");

    supplier_id(&app, &admin.token, "BOLT", "Bolt & Nut").await;
    let (app, key) = (&app, &key);
    let list = |q: &'static str| async move {
        app.with_key(Method::GET, &format!("/api/v1/suppliers?{q}"), &key.raw)
            .json_value()
            .await
    };
    let all = list("").await;
    assert_eq!(all["total"], 2);
    assert_eq!(all["items"][0]["name"], "Acme Corp", "ordered by name");
    assert_eq!(list("search=bolt").await["total"], 1);
    assert_eq!(list("search=acm").await["items"][0]["code"], "ACME");

    let patched: Value = app
        .with_token(Method::PATCH, &path, &admin.token)
        .json(&json!({"is_active": false, "email": null, "lead_time_days": 3}))
        .json_value()
        .await;
    assert_eq!(patched["is_active"], false);
    assert!(patched["email"].is_null());
    assert_eq!(patched["lead_time_days"], 3);
    assert_eq!(patched["name"], "Acme Corp", "untouched fields stay");
    assert_eq!(list("is_active=0").await["total"], 1);
    assert_eq!(list("is_active=true").await["items"][0]["code"], "BOLT");

    let gone = app
        .with_token(Method::DELETE, &path, &admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.status_with_key(Method::GET, &path, &key.raw).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(list("").await["total"], 1);
}

#[actix_web::test]
async fn only_editor_and_admin_sessions_write_suppliers_and_keys_need_the_read_scope() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(KEY_SCOPES).await;
    app.create_user(&admin.token, "ed@example.com", "editor")
        .await;
    app.create_user(&admin.token, "vi@example.com", "viewer")
        .await;
    let editor = app.login("ed@example.com", "a fine password 1").await;
    let viewer = app.login("vi@example.com", "a fine password 1").await;
    let body = json!({"code": "E1", "name": "Editor's"});
    assert_eq!(
        create_supplier(&app, &editor.token, body.clone())
            .await
            .status(),
        StatusCode::CREATED
    );
    let refused = create_supplier(
        &app,
        &viewer.token,
        json!({"code": "V1", "name": "Viewer's"}),
    )
    .await;
    assert_problem(refused, 403, "PERMISSION_DENIED").await;
    let by_key = app
        .with_key(Method::POST, "/api/v1/suppliers", &key.raw)
        .json(&json!({"code": "K1", "name": "Key's"}))
        .send()
        .await
        .unwrap();
    assert_problem(by_key, 403, "PERMISSION_DENIED").await;
    let viewer_reads = app
        .with_token(Method::GET, "/api/v1/suppliers", &viewer.token)
        .json_value()
        .await;
    assert_eq!(viewer_reads["total"], 1, "a viewer reads suppliers");

    let products_only = app
        .create_key(&admin.token, &["products:read"], "live")
        .await;
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/suppliers", &products_only.raw)
            .await,
        StatusCode::FORBIDDEN
    );
}

#[actix_web::test]
async fn codes_are_unique_without_regard_to_case_and_bad_fields_change_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let id = supplier_id(&app, &admin.token, "ACME", "Acme").await;
    let dup = create_supplier(&app, &admin.token, json!({"code": "acme", "name": "Other"})).await;
    assert_problem(dup, 409, "CONFLICT").await;
    let other = supplier_id(&app, &admin.token, "ZED", "Zed").await;
    let rename = app
        .with_token(
            Method::PATCH,
            &format!("/api/v1/suppliers/{other}"),
            &admin.token,
        )
        .json(&json!({"code": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_problem(rename, 409, "CONFLICT").await;

    let bad = create_supplier(
        &app,
        &admin.token,
        json!({"name": "", "email": "not an email", "country": "France", "currency": "eur", "lead_time_days": 9999}),
    )
    .await;
    let body = assert_problem(bad, 422, "VALIDATION_ERROR").await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in [
        "code",
        "name",
        "email",
        "country",
        "currency",
        "lead_time_days",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    let list: Value = app
        .with_token(Method::GET, "/api/v1/suppliers", &admin.token)
        .json_value()
        .await;
    assert_eq!(list["total"], 2, "nothing was created");
    assert_eq!(
        app.with_token(
            Method::GET,
            &format!("/api/v1/suppliers/{id}"),
            &admin.token
        )
        .json_value()
        .await["code"],
        "ACME"
    );
    for path in [
        "/api/v1/suppliers/not-a-uuid",
        "/api/v1/suppliers/00000000-0000-0000-0000-000000000000",
    ] {
        let res = app
            .with_token(Method::GET, path, &admin.token)
            .send()
            .await
            .unwrap();
        assert_problem(res, 404, "NOT_FOUND").await;
    }
}

#[actix_web::test]
async fn a_product_names_its_supplier_by_code_or_id_and_filters_by_it() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(KEY_SCOPES).await;
    let acme = supplier_id(&app, &admin.token, "ACME", "Acme").await;
    let bolt = supplier_id(&app, &admin.token, "BOLT", "Bolt").await;
    let post = |body: Value| {
        app.with_key(Method::POST, "/api/v1/products", &key.raw)
            .json(&body)
            .send()
    };
    let by_code: Value =
        post(json!({"ean": "4006381333931", "name": "A", "supplier_code": "acme"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        by_code["supplier_id"],
        acme.as_str(),
        "the code resolves to the id"
    );
    assert_eq!(
        by_code["supplier_code"], "ACME",
        "and reads back as the supplier's code"
    );
    let by_id: Value = post(json!({"ean": "5901234123457", "name": "B", "supplier_id": bolt}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_id["supplier_code"], "BOLT");
    post(json!({"ean": "96385074", "name": "C"})).await.unwrap();

    let unknown = post(json!({"ean": "4012345678901", "name": "D", "supplier_code": "NOPE"}))
        .await
        .unwrap();
    assert_problem(unknown, 422, "VALIDATION_ERROR").await;
    let unknown_id = post(json!({"ean": "4012345678901", "name": "D", "supplier_id": "00000000-0000-0000-0000-000000000000"}))
        .await
        .unwrap();
    assert_problem(unknown_id, 422, "VALIDATION_ERROR").await;
    let mismatch = post(
        json!({"ean": "4012345678901", "name": "D", "supplier_id": acme, "supplier_code": "BOLT"}),
    )
    .await
    .unwrap();
    assert_problem(mismatch, 422, "VALIDATION_ERROR").await;

    let filtered: Value = app
        .with_key(
            Method::GET,
            &format!("/api/v1/products?supplier_id={acme}"),
            &key.raw,
        )
        .json_value()
        .await;
    assert_eq!(filtered["total"], 1);
    assert_eq!(filtered["items"][0]["name"], "A");
    let acme_now: Value = app
        .with_key(Method::GET, &format!("/api/v1/suppliers/{acme}"), &key.raw)
        .json_value()
        .await;
    assert_eq!(acme_now["product_count"], 1);

    // Moving product A to Bolt moves the count and the filter.
    let a_path = format!("/api/v1/products/{}", by_code["id"].as_str().unwrap());
    let moved: Value = app
        .with_key(Method::PATCH, &a_path, &key.raw)
        .json(&json!({"supplier_code": "BOLT"}))
        .json_value()
        .await;
    assert_eq!(moved["supplier_id"], bolt.as_str());
    let bolts: Value = app
        .with_key(
            Method::GET,
            &format!("/api/v1/products?supplier_id={bolt}"),
            &key.raw,
        )
        .json_value()
        .await;
    assert_eq!(bolts["total"], 2);
    let cleared: Value = app
        .with_key(Method::PATCH, &a_path, &key.raw)
        .json(&json!({"supplier_id": null}))
        .json_value()
        .await;
    assert!(cleared["supplier_id"].is_null() && cleared["supplier_code"].is_null());
    let bolt_now: Value = app
        .with_key(Method::GET, &format!("/api/v1/suppliers/{bolt}"), &key.raw)
        .json_value()
        .await;
    assert_eq!(bolt_now["product_count"], 1);
    let report = app
        .app_auth
        .store
        .check_integrity::<LockoutState>()
        .expect("indexes and reference counts agree with the records");
    let counts: std::collections::HashMap<_, _> = report.trees.into_iter().collect();
    assert_eq!(counts["products_by_supplier"], 1);
}

#[actix_web::test]
async fn a_referenced_supplier_is_deleted_only_with_detach_and_a_new_code_reaches_its_products() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(KEY_SCOPES).await;
    let acme = supplier_id(&app, &admin.token, "ACME", "Acme").await;
    let product: Value = app
        .with_key(Method::POST, "/api/v1/products", &key.raw)
        .json(&json!({"ean": "4006381333931", "name": "A", "supplier_code": "ACME"}))
        .json_value()
        .await;
    let product_path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    let supplier_path = format!("/api/v1/suppliers/{acme}");

    app.clock.advance(time::Duration::minutes(1));
    let renamed = app
        .with_token(Method::PATCH, &supplier_path, &admin.token)
        .json(&json!({"code": "ACME-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);
    let after_rename: Value = app
        .with_key(Method::GET, &product_path, &key.raw)
        .json_value()
        .await;
    assert_eq!(
        after_rename["supplier_code"], "ACME-2",
        "the new code reaches the product"
    );
    assert_ne!(
        after_rename["updated_at"], product["updated_at"],
        "and counts as its change"
    );

    let refused = app
        .with_token(Method::DELETE, &supplier_path, &admin.token)
        .send()
        .await
        .unwrap();
    assert_problem(refused, 409, "CONFLICT").await;
    assert_eq!(
        app.with_key(Method::GET, &product_path, &key.raw)
            .json_value()
            .await["supplier_id"],
        acme.as_str(),
        "a refused delete changes nothing"
    );
    let detached = app
        .with_token(
            Method::DELETE,
            &format!("{supplier_path}?detach=1"),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(detached.status(), StatusCode::NO_CONTENT);
    let orphan: Value = app
        .with_key(Method::GET, &product_path, &key.raw)
        .json_value()
        .await;
    assert!(orphan["supplier_id"].is_null() && orphan["supplier_code"].is_null());
    assert_eq!(
        app.status_with_key(Method::GET, &supplier_path, &key.raw)
            .await,
        StatusCode::NOT_FOUND
    );

    // The full integrity check agrees: indexes and reference counts match the records.
    let report = app
        .app_auth
        .store
        .check_integrity::<LockoutState>()
        .expect("the store is whole");
    let counts: std::collections::HashMap<_, _> = report.trees.into_iter().collect();
    assert_eq!(counts["suppliers"], 0);
    assert_eq!(counts["products_by_supplier"], 0);
    let app = app.restart().await;
    assert_eq!(
        app.with_key(Method::GET, &product_path, &key.raw)
            .json_value()
            .await["name"],
        "A"
    );
}

#[actix_web::test]
async fn test_keys_never_see_live_suppliers() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    supplier_id(&app, &admin.token, "ACME", "Acme").await;
    let test_key = app.create_key(&admin.token, KEY_SCOPES, "test").await;
    let list: Value = app
        .with_key(Method::GET, "/api/v1/suppliers", &test_key.raw)
        .json_value()
        .await;
    assert_eq!(list["total"], 0);
    let res = app
        .with_key(Method::POST, "/api/v1/products", &test_key.raw)
        .json(&json!({"ean": "4006381333931", "name": "T", "supplier_code": "ACME"}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "VALIDATION_ERROR").await;
}
