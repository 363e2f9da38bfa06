//! Multi-tenant keys (SPEC §2.1): a key that lists other tenants works in each with
//! `X-Tenant-ID`, nowhere else; the listed tenants' admins see it and withdraw their tenant,
//! which bites on the next request; the creator must administer every listed tenant; one rate
//! window per key; revocation and rotation reach every tenant of the key.
use crate::helpers::{Fetch, Session, TestApp, assert_problem, spawn_app, spawn_app_with};
use pixee_pim::auth::lockout::LockoutState;
use pixee_pim::config::ServeArgs;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn new_tenant(app: &TestApp, token: &str, name: &str) -> String {
    let res = app
        .with_token(Method::POST, "/api/v1/tenants", token)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A user whose only tenant is `tenant`, logged in.
async fn member_of(app: &TestApp, admin: &str, tenant: &str, email: &str, role: &str) -> Session {
    let res = app
        .with_token(Method::POST, "/api/v1/users", admin)
        .header("X-Tenant-ID", tenant)
        .json(&json!({"email": email, "password": "a fine password 1", "role": role}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    app.login(email, "a fine password 1").await
}

async fn create(app: &TestApp, token: &str, tenant_ids: Value) -> reqwest::Response {
    app.with_token(Method::POST, "/api/v1/api-keys", token)
        .json(&json!({
            "name": "two homes",
            "scopes": ["products:read", "products:write"],
            "tenant_ids": tenant_ids,
        }))
        .send()
        .await
        .unwrap()
}

async fn as_key(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    tenant: Option<&str>,
) -> reqwest::Response {
    let mut rb = app.with_key(method, path, key);
    if let Some(t) = tenant {
        rb = rb.header("X-Tenant-ID", t);
    }
    rb.send().await.unwrap()
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn a_key_works_in_the_tenants_it_lists_with_its_scopes_and_nowhere_else() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let second = new_tenant(&app, &admin.token, "second").await;
    let third = new_tenant(&app, &admin.token, "third").await;
    let res = create(
        &app,
        &admin.token,
        json!([second, second, app.default_tenant_id]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["home_tenant_id"], json!(app.default_tenant_id));
    assert_eq!(
        created["tenant_ids"],
        json!([second]),
        "home and repeats dropped"
    );
    let key = created["key"].as_str().unwrap();

    let made = app
        .with_key(Method::POST, "/api/v1/products", key)
        .header("X-Tenant-ID", &second)
        .json(&json!({"ean": "4006381333931", "name": "Filed in second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::CREATED);
    let home: Value = as_key(&app, Method::GET, "/api/v1/products", key, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        home["total"], 0,
        "the product is in the second tenant, not the home one"
    );
    let there: Value = as_key(&app, Method::GET, "/api/v1/products", key, Some(&second))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(there["total"], 1);
    let me: Value = as_key(&app, Method::GET, "/api/v1/auth/me", key, Some(&second))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["tenant"]["id"], json!(second));
    assert_eq!(me["environment"], "live");

    let elsewhere = as_key(&app, Method::GET, "/api/v1/products", key, Some(&third)).await;
    assert_problem(elsewhere, 403, "PERMISSION_DENIED").await;
    let bad = as_key(
        &app,
        Method::GET,
        "/api/v1/products",
        key,
        Some("not-a-uuid"),
    )
    .await;
    assert_problem(bad, 400, "VALIDATION_ERROR").await;
    let id = made.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let no_scope = as_key(
        &app,
        Method::DELETE,
        &format!("/api/v1/products/{id}"),
        key,
        Some(&second),
    )
    .await;
    assert_problem(no_scope, 403, "PERMISSION_DENIED").await;
}

#[actix_web::test]
async fn a_listed_tenants_admin_sees_the_key_and_withdraws_it_for_the_next_request() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let second = new_tenant(&app, &admin.token, "second").await;
    let theirs = member_of(
        &app,
        &admin.token,
        &second,
        "second-admin@example.com",
        "admin",
    )
    .await;
    let viewer = member_of(
        &app,
        &admin.token,
        &second,
        "second-viewer@example.com",
        "viewer",
    )
    .await;
    let created: Value = create(&app, &admin.token, json!([second]))
        .await
        .json()
        .await
        .unwrap();
    let (id, key) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );

    let list = app
        .with_token(Method::GET, "/api/v1/api-keys", &theirs.token)
        .json_value()
        .await;
    assert!(
        ids(&list).contains(&id),
        "the listed tenant's admin sees the key: {list}"
    );
    let one = app
        .with_token(
            Method::GET,
            &format!("/api/v1/api-keys/{id}"),
            &theirs.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), StatusCode::OK);
    for (method, path) in [
        (Method::DELETE, format!("/api/v1/api-keys/{id}")),
        (Method::POST, format!("/api/v1/api-keys/{id}/rotate")),
    ] {
        let res = app
            .with_token(method, &path, &theirs.token)
            .send()
            .await
            .unwrap();
        assert_problem(res, 403, "PERMISSION_DENIED").await;
    }

    let path = format!("/api/v1/api-keys/{id}/tenants/{second}");
    let res = app
        .with_token(Method::DELETE, &path, &viewer.token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "PERMISSION_DENIED").await;
    let warm = as_key(&app, Method::GET, "/api/v1/products", &key, Some(&second)).await;
    assert_eq!(warm.status(), StatusCode::OK);
    let res = app
        .with_token(Method::DELETE, &path, &theirs.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let refused = as_key(&app, Method::GET, "/api/v1/products", &key, Some(&second)).await;
    assert_problem(refused, 403, "PERMISSION_DENIED").await;
    let at_home = as_key(&app, Method::GET, "/api/v1/products", &key, None).await;
    assert_eq!(at_home.status(), StatusCode::OK, "the key lives on at home");
    let list = app
        .with_token(Method::GET, "/api/v1/api-keys", &theirs.token)
        .json_value()
        .await;
    assert!(
        !ids(&list).contains(&id),
        "gone from the withdrawn tenant's list"
    );
    let again = app
        .with_token(Method::DELETE, &path, &theirs.token)
        .send()
        .await
        .unwrap();
    assert_problem(again, 404, "NOT_FOUND").await;
    let home = format!("/api/v1/api-keys/{id}/tenants/{}", app.default_tenant_id);
    let res = app
        .with_token(Method::DELETE, &home, &admin.token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "CONFLICT").await;

    let audit = app
        .with_token(
            Method::GET,
            "/api/v1/audit-events?per_page=100",
            &theirs.token,
        )
        .json_value()
        .await;
    let types: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(
        types.contains(&"api_key.shared") && types.contains(&"api_key.withdrawn"),
        "{types:?}"
    );
    app.app_auth
        .store
        .check_integrity::<LockoutState>()
        .expect("the key's tenants agree with the key lists");
}

#[actix_web::test]
async fn a_creator_must_administer_every_tenant_the_key_lists() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let second = new_tenant(&app, &admin.token, "second").await;
    app.create_user(&admin.token, "boss@example.com", "admin")
        .await;
    let add = |role: &'static str| {
        let (app, admin, second) = (&app, &admin, &second);
        async move {
            let res = app
                .with_token(
                    Method::POST,
                    &format!("/api/v1/tenants/{second}/members"),
                    &admin.token,
                )
                .json(&json!({"email": "boss@example.com", "role": role}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
        }
    };
    add("viewer").await;
    let boss = app.login("boss@example.com", "a fine password 1").await;
    let count = || {
        let (app, admin) = (&app, &admin);
        async move {
            app.with_token(Method::GET, "/api/v1/api-keys", &admin.token)
                .json_value()
                .await["total"]
                .as_u64()
                .unwrap()
        }
    };
    let before = count().await;
    assert_problem(
        create(&app, &boss.token, json!([second])).await,
        403,
        "PERMISSION_DENIED",
    )
    .await;
    let nowhere = json!(["0191d5f0-0000-7000-8000-000000000000"]);
    assert_problem(
        create(&app, &boss.token, nowhere).await,
        403,
        "PERMISSION_DENIED",
    )
    .await;
    assert_problem(
        create(&app, &boss.token, json!(["x"])).await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(count().await, before, "no key was made");
    add("admin").await;
    assert_eq!(
        create(&app, &boss.token, json!([second])).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(count().await, before + 1);
}

#[actix_web::test]
async fn one_rate_window_counts_a_key_in_all_its_tenants() {
    let app = spawn_app_with(ServeArgs {
        key_reads_per_minute: Some(4),
        ..Default::default()
    })
    .await;
    let admin = app.admin().await;
    let second = new_tenant(&app, &admin.token, "second").await;
    let created: Value = create(&app, &admin.token, json!([second]))
        .await
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();
    for tenant in [None, Some(second.as_str()), None, Some(second.as_str())] {
        let res = as_key(&app, Method::GET, "/api/v1/products", key, tenant).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let over = as_key(&app, Method::GET, "/api/v1/products", key, Some(&second)).await;
    assert_problem(over, 429, "RATE_LIMIT_EXCEEDED").await;
}

#[actix_web::test]
async fn revocation_and_rotation_reach_every_tenant_of_the_key() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let second = new_tenant(&app, &admin.token, "second").await;
    let first: Value = create(&app, &admin.token, json!([second]))
        .await
        .json()
        .await
        .unwrap();
    let key = first["key"].as_str().unwrap();
    let ok = as_key(&app, Method::GET, "/api/v1/products", key, Some(&second)).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let res = app
        .with_token(
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", first["id"].as_str().unwrap()),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let dead = as_key(&app, Method::GET, "/api/v1/products", key, Some(&second)).await;
    assert_problem(dead, 401, "INVALID_API_KEY").await;

    // A key rotates itself while addressing a listed tenant: the rotation is its home's.
    let other: Value = create(&app, &admin.token, json!([second]))
        .await
        .json()
        .await
        .unwrap();
    let old = other["key"].as_str().unwrap();
    let rotated = app
        .with_key(
            Method::POST,
            &format!("/api/v1/api-keys/{}/rotate", other["id"].as_str().unwrap()),
            old,
        )
        .header("X-Tenant-ID", &second)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.unwrap();
    assert_eq!(rotated["tenant_ids"], json!([second]));
    let new = rotated["key"].as_str().unwrap();
    let stale = as_key(&app, Method::GET, "/api/v1/products", old, Some(&second)).await;
    assert_problem(stale, 401, "INVALID_API_KEY").await;
    let fresh = as_key(&app, Method::GET, "/api/v1/products", new, Some(&second)).await;
    assert_eq!(fresh.status(), StatusCode::OK);
}

#[actix_web::test]
async fn a_use_in_a_listed_tenant_counts_and_a_refused_tenant_does_not() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let second = new_tenant(&app, &admin.token, "second").await;
    let third = new_tenant(&app, &admin.token, "third").await;
    let created = create(&app, &admin.token, json!([second]))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let last_used = || async {
        app.with_token(Method::GET, &format!("/api/v1/api-keys/{id}"), &admin.token)
            .json_value()
            .await["last_used_at"]
            .clone()
    };
    let refused = as_key(&app, Method::GET, "/api/v1/products", key, Some(&third)).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(last_used().await.is_null(), "a tenant refusal is not a use");
    let used = as_key(&app, Method::GET, "/api/v1/products", key, Some(&second)).await;
    assert_eq!(used.status(), StatusCode::OK);
    assert!(
        last_used().await.is_string(),
        "a use in a listed tenant is a use"
    );
}
