//! Tenants, users and roles: isolation by construction, X-Tenant-ID, and environments.
use crate::helpers::{Fetch, assert_problem, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `POST /tenants/{tenant}/members` (adds the user, or changes their role there).
async fn add_member(
    app: &crate::helpers::TestApp,
    token: &str,
    tenant: &str,
    email: &str,
    role: &str,
) -> reqwest::Response {
    app.with_token(
        Method::POST,
        &format!("/api/v1/tenants/{tenant}/members"),
        token,
    )
    .json(&json!({"email": email, "role": role}))
    .send()
    .await
    .unwrap()
}

async fn new_tenant(app: &crate::helpers::TestApp, token: &str, name: &str) -> String {
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

#[actix_web::test]
async fn a_superadmin_creates_a_tenant_and_becomes_its_admin() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let acme = new_tenant(&app, &admin.token, "acme").await;
    let dup = app
        .with_token(Method::POST, "/api/v1/tenants", &admin.token)
        .json(&json!({"name": "ACME"}))
        .send()
        .await
        .unwrap();
    assert_problem(dup, 409, "CONFLICT").await;
    let tenants: Value = app
        .with_token(Method::GET, "/api/v1/tenants", &admin.token)
        .json_value()
        .await;
    assert_eq!(tenants["total"], 2);
    let me: Value = app
        .with_token(Method::GET, "/api/v1/auth/me", &admin.token)
        .header("X-Tenant-ID", &acme)
        .json_value()
        .await;
    assert_eq!(me["tenant"]["name"], "acme");
}

#[actix_web::test]
async fn only_a_superadmin_creates_tenants() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.create_user(&admin.token, "plain-admin@example.com", "admin")
        .await;
    let plain = app
        .login("plain-admin@example.com", "a fine password 1")
        .await;
    let res = app
        .with_token(Method::POST, "/api/v1/tenants", &plain.token)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "PERMISSION_DENIED").await;
}

#[actix_web::test]
async fn a_tenant_header_for_a_foreign_or_unknown_tenant_is_403_and_a_malformed_one_400() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let acme = new_tenant(&app, &admin.token, "acme").await;
    app.create_user(&admin.token, "viewer@example.com", "viewer")
        .await;
    let viewer = app.login("viewer@example.com", "a fine password 1").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    for tenant in [&acme, &unknown] {
        let res = app
            .with_token(Method::GET, "/api/v1/products", &viewer.token)
            .header("X-Tenant-ID", tenant)
            .send()
            .await
            .unwrap();
        let body = assert_problem(res, 403, "PERMISSION_DENIED").await;
        assert_eq!(
            body["detail"], "you are not a member of this tenant",
            "foreign and unknown look the same"
        );
    }
    let res = app
        .with_token(Method::GET, "/api/v1/products", &viewer.token)
        .header("X-Tenant-ID", "not-a-uuid")
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "VALIDATION_ERROR").await;
}

#[actix_web::test]
async fn a_key_never_leaves_its_tenant() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let acme = new_tenant(&app, &admin.token, "acme").await;
    let acme_key = {
        let res = app
            .with_token(Method::POST, "/api/v1/api-keys", &admin.token)
            .header("X-Tenant-ID", &acme)
            .json(&json!({"name": "acme", "scopes": ["products:read", "products:write"]}))
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        app.create_product(&acme_key, "4006381333931", "Acme pen")
            .await
            .status(),
        StatusCode::CREATED
    );
    let res = app
        .with_key(Method::GET, "/api/v1/products", &acme_key)
        .header("X-Tenant-ID", &app.default_tenant_id)
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "PERMISSION_DENIED").await;
    let ok = app
        .with_key(Method::GET, "/api/v1/products", &acme_key)
        .header("X-Tenant-ID", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let default_key = app
        .create_key(&admin.token, &["products:read"], "live")
        .await;
    let list: Value = app
        .with_key(Method::GET, "/api/v1/products", &default_key.raw)
        .json_value()
        .await;
    assert_eq!(
        list["total"], 0,
        "the default tenant does not see acme's product"
    );
    let keys: Value = app
        .with_token(Method::GET, "/api/v1/api-keys", &admin.token)
        .json_value()
        .await;
    assert_eq!(keys["total"], 1, "acme's key is not listed in default");
}

#[actix_web::test]
async fn test_keys_and_live_keys_see_separate_catalogs() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let live = app
        .create_key(&admin.token, &["products:read", "products:write"], "live")
        .await;
    let test = app
        .create_key(&admin.token, &["products:read", "products:write"], "test")
        .await;
    assert!(test.raw.starts_with("pm_test_"));
    assert_eq!(
        app.create_product(&live.raw, "4006381333931", "Live pen")
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.create_product(&test.raw, "4006381333931", "Test pen")
            .await
            .status(),
        StatusCode::CREATED,
        "same EAN, other environment"
    );
    for (key, name) in [(&live.raw, "Live pen"), (&test.raw, "Test pen")] {
        let list: Value = app
            .with_key(Method::GET, "/api/v1/products", key)
            .json_value()
            .await;
        assert_eq!(list["total"], 1);
        assert_eq!(list["items"][0]["name"], name);
    }
    let me: Value = app
        .with_key(Method::GET, "/api/v1/auth/me", &test.raw)
        .json_value()
        .await;
    assert_eq!(me["environment"], "test");
    assert_eq!(me["auth"], "api_key");
    assert_eq!(me["key"]["environment"], "test");
    let session_view: Value = app
        .with_token(Method::GET, "/api/v1/products", &admin.token)
        .json_value()
        .await;
    assert_eq!(
        session_view["items"][0]["name"], "Live pen",
        "sessions see live data"
    );
}

#[actix_web::test]
async fn roles_grant_their_scopes_and_only_admins_manage_keys_and_users() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.create_user(&admin.token, "v@example.com", "viewer")
        .await;
    app.create_user(&admin.token, "e@example.com", "editor")
        .await;
    let viewer = app.login("v@example.com", "a fine password 1").await;
    let editor = app.login("e@example.com", "a fine password 1").await;
    let create = |token: String| {
        app.with_token(Method::POST, "/api/v1/products", &token)
            .json(&json!({"ean": "96385074", "name": "Thing"}))
            .send()
    };
    let res = create(viewer.token.clone()).await.unwrap();
    let body = assert_problem(res, 403, "PERMISSION_DENIED").await;
    assert!(body["detail"].as_str().unwrap().contains("products:write"));
    assert_eq!(
        create(editor.token.clone()).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/products", &viewer.token)
            .status_code()
            .await,
        StatusCode::OK
    );
    for path in ["/api/v1/api-keys", "/api/v1/users", "/api/v1/audit-events"] {
        let res = app
            .with_token(Method::GET, path, &editor.token)
            .send()
            .await
            .unwrap();
        assert_problem(res, 403, "PERMISSION_DENIED").await;
    }
    let res = app
        .create_key_raw(
            &editor.token,
            json!({"name": "x", "scopes": ["products:read"]}),
        )
        .await;
    assert_problem(res, 403, "PERMISSION_DENIED").await;
}

#[actix_web::test]
async fn users_are_created_once_and_added_to_other_tenants() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.create_user(&admin.token, "pat@example.com", "viewer")
        .await;
    let dup = app
        .with_token(Method::POST, "/api/v1/users", &admin.token)
        .json(&json!({"email": "PAT@example.com", "password": "another password 2", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_problem(dup, 409, "CONFLICT").await;
    let weak = app
        .with_token(Method::POST, "/api/v1/users", &admin.token)
        .json(&json!({"email": "weak@example.com", "password": "12345678", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_problem(weak, 422, "VALIDATION_ERROR").await;
    let acme = new_tenant(&app, &admin.token, "acme").await;
    let res = add_member(&app, &admin.token, &acme, "pat@example.com", "editor").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let pat = app.login("pat@example.com", "a fine password 1").await;
    let tenants: Value = app
        .with_token(Method::GET, "/api/v1/tenants", &pat.token)
        .json_value()
        .await;
    assert_eq!(tenants["total"], 2);
    let me: Value = app
        .with_token(Method::GET, "/api/v1/auth/me", &pat.token)
        .header("X-Tenant-ID", &acme)
        .json_value()
        .await;
    assert_eq!(me["role"], "editor");
    let not_admin = add_member(&app, &pat.token, &acme, "pat@example.com", "admin").await;
    assert_problem(not_admin, 403, "PERMISSION_DENIED").await;
}

#[actix_web::test]
async fn auth_me_shows_a_role_change_on_the_very_next_request() {
    // Workers reuse the /auth/me body they last wrote while the caller's records are unchanged;
    // a role change replaces the user record, so no worker may answer with the old body.
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.create_user(&admin.token, "sam@example.com", "viewer")
        .await;
    let sam = app.login("sam@example.com", "a fine password 1").await;
    let me = || async {
        app.with_token(Method::GET, "/api/v1/auth/me", &sam.token)
            .json_value()
            .await
    };
    let before = me().await;
    assert_eq!(before["role"], "viewer");
    for _ in 0..16 {
        assert_eq!(me().await, before, "reused bodies are the same body");
    }
    let tenant = before["tenant"]["id"].as_str().unwrap().to_owned();
    let res = add_member(&app, &admin.token, &tenant, "sam@example.com", "editor").await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "a role change answers like an add"
    );
    for _ in 0..16 {
        let after = me().await;
        assert_eq!(after["role"], "editor");
        assert!(
            after["scopes"]
                .as_array()
                .unwrap()
                .contains(&json!("products:write")),
            "{after}"
        );
    }
}
