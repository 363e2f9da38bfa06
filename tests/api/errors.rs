//! Bad input gets a clear 4xx in the SPEC §3 shape, never a 5xx; every protected route asks
//! for credentials and for its scope.
use crate::helpers::{Fetch, assert_problem, header_text, spawn_app, spawn_app_with};
use pixee_pim::config::ServeArgs;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Every protected route, with the scope a key needs (None: keys are refused whatever their
/// scopes, because the route needs a session).
const PROTECTED: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/api/v1/auth/me", Some("")),
    ("POST", "/api/v1/auth/logout", None),
    ("POST", "/api/v1/auth/logout-all", None),
    ("POST", "/api/v1/auth/password", None),
    ("GET", "/api/v1/auth/sessions", None),
    (
        "DELETE",
        "/api/v1/auth/sessions/00000000-0000-0000-0000-000000000000",
        None,
    ),
    ("GET", "/api/v1/api-keys", None),
    ("POST", "/api/v1/api-keys", None),
    (
        "GET",
        "/api/v1/api-keys/00000000-0000-0000-0000-000000000000",
        None,
    ),
    (
        "DELETE",
        "/api/v1/api-keys/00000000-0000-0000-0000-000000000000",
        None,
    ),
    (
        "POST",
        "/api/v1/api-keys/00000000-0000-0000-0000-000000000000/rotate",
        None,
    ),
    ("GET", "/api/v1/tenants", Some("")),
    ("POST", "/api/v1/tenants", None),
    (
        "POST",
        "/api/v1/tenants/00000000-0000-0000-0000-000000000000/members",
        None,
    ),
    ("GET", "/api/v1/users", None),
    ("POST", "/api/v1/users", None),
    (
        "POST",
        "/api/v1/users/00000000-0000-0000-0000-000000000000/unlock",
        None,
    ),
    ("GET", "/api/v1/audit-events", None),
    ("GET", "/api/v1/products", Some("products:read")),
    ("POST", "/api/v1/products", Some("products:write")),
    (
        "POST",
        "/api/v1/products/bulk-delete",
        Some("products:delete"),
    ),
    (
        "GET",
        "/api/v1/products/00000000-0000-0000-0000-000000000000",
        Some("products:read"),
    ),
    (
        "PUT",
        "/api/v1/products/00000000-0000-0000-0000-000000000000",
        Some("products:write"),
    ),
    (
        "PATCH",
        "/api/v1/products/00000000-0000-0000-0000-000000000000",
        Some("products:write"),
    ),
    (
        "DELETE",
        "/api/v1/products/00000000-0000-0000-0000-000000000000",
        Some("products:delete"),
    ),
];

#[actix_web::test]
async fn every_protected_route_needs_a_credential_and_its_scope() {
    let app = spawn_app().await;
    // A key holding every scope except the products ones.
    let (_, key) = app
        .admin_and_key(&["categories:read", "suppliers:read", "windev:read"])
        .await;
    for (method, path, scope) in PROTECTED {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let res = app
            .req(method.clone(), path)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_problem(res, 401, "AUTHENTICATION_REQUIRED").await;
        let res = app
            .with_key(method.clone(), path, &key.raw)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        match scope {
            Some("") => assert_eq!(
                res.status(),
                StatusCode::OK,
                "{method} {path} needs no scope"
            ),
            Some(scope) => {
                let body = assert_problem(res, 403, "PERMISSION_DENIED").await;
                assert!(
                    body["detail"].as_str().unwrap().contains(scope),
                    "{method} {path}: {body}"
                );
            }
            None => {
                let s = res.status();
                assert!(
                    s == StatusCode::FORBIDDEN,
                    "{method} {path} refuses keys, got {s}"
                );
            }
        }
    }
}

#[actix_web::test]
async fn malformed_json_wrong_types_and_missing_fields_are_clear_4xx() {
    let app = spawn_app().await;
    let (_, key) = app
        .admin_and_key(&["products:read", "products:write"])
        .await;
    let post = |body: &'static str, ct: &'static str| {
        app.with_key(Method::POST, "/api/v1/products", &key.raw)
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    assert_problem(
        post("{\"ean\": ", "application/json").await.unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_problem(
        post(
            "{\"ean\": \"4006381333931\", \"name\": 12",
            "application/json",
        )
        .await
        .unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_problem(
        post("[1,2]", "application/json").await.unwrap(),
        422,
        "VALIDATION_ERROR",
    )
    .await;
    let typed = assert_problem(
        post(
            "{\"ean\": \"4006381333931\", \"name\": 12}",
            "application/json",
        )
        .await
        .unwrap(),
        422,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(typed["errors"][0]["field"], "name");
    let missing = assert_problem(
        post("{}", "application/json").await.unwrap(),
        422,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(
        missing["errors"].as_array().unwrap().len(),
        2,
        "ean and name are both named: {missing}"
    );
    assert_problem(
        post("ean=1", "text/plain").await.unwrap(),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    let list = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap();
    assert_eq!(
        list.json::<serde_json::Value>().await.unwrap()["total"],
        0,
        "nothing half-written"
    );
}

#[actix_web::test]
async fn oversized_bodies_are_413_and_nothing_is_written() {
    let app = spawn_app_with(ServeArgs {
        json_limit_bytes: Some(4096),
        ..Default::default()
    })
    .await;
    let (_, key) = app
        .admin_and_key(&["products:read", "products:write"])
        .await;
    let big = json!({"ean": "4006381333931", "name": "x", "description": "d".repeat(5000)});
    let res = app
        .with_key(Method::POST, "/api/v1/products", &key.raw)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_problem(res, 413, "PAYLOAD_TOO_LARGE").await;
    let list: serde_json::Value = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .json_value()
        .await;
    assert_eq!(list["total"], 0);
}

#[actix_web::test]
async fn the_default_limit_is_one_mebibyte() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(&["products:write"]).await;
    let big = format!(
        "{{\"ean\":\"4006381333931\",\"name\":\"{}\"}}",
        "x".repeat(1 << 20)
    );
    let res = app
        .with_key(Method::POST, "/api/v1/products", &key.raw)
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_problem(res, 413, "PAYLOAD_TOO_LARGE").await;
}

#[actix_web::test]
async fn unknown_routes_and_ids_are_404_problems() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    assert_problem(
        app.req(Method::GET, "/nope").send().await.unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    assert_problem(
        app.req(Method::GET, "/api/v1/nope").send().await.unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    assert_problem(
        app.with_key(Method::GET, "/api/v1/products/not-a-uuid", &key.raw)
            .send()
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    let unknown = uuid::Uuid::now_v7();
    assert_problem(
        app.with_key(
            Method::GET,
            &format!("/api/v1/products/{unknown}"),
            &key.raw,
        )
        .send()
        .await
        .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    assert_problem(
        app.with_token(Method::GET, "/api/v1/api-keys/123", &admin.token)
            .send()
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    assert_problem(
        app.with_token(
            Method::DELETE,
            &format!("/api/v1/api-keys/{unknown}"),
            &admin.token,
        )
        .send()
        .await
        .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
}

#[actix_web::test]
async fn bad_headers_and_query_parameters_are_400_or_422() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let both = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_problem(both, 400, "VALIDATION_ERROR").await;
    let binary = app
        .req(Method::GET, "/api/v1/products")
        .header(
            "X-API-Key",
            reqwest::header::HeaderValue::from_bytes(b"pm_live_\xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_problem(binary, 401, "INVALID_API_KEY").await;
    for query in ["per_page=0", "per_page=101", "page=0"] {
        let res = app
            .with_key(Method::GET, &format!("/api/v1/products?{query}"), &key.raw)
            .send()
            .await
            .unwrap();
        assert_problem(res, 422, "VALIDATION_ERROR").await;
    }
    for query in [
        "page=abc",
        "is_active=maybe",
        "sort_by=color",
        "supplier_id=nope",
    ] {
        let res = app
            .with_key(Method::GET, &format!("/api/v1/products?{query}"), &key.raw)
            .send()
            .await
            .unwrap();
        assert_problem(res, 400, "VALIDATION_ERROR").await;
    }
}

#[actix_web::test]
async fn responses_carry_a_request_id_and_security_headers() {
    let app = spawn_app().await;
    let res = app.req(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers();
    assert!(h.contains_key("x-request-id"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let page = app.req(Method::GET, "/settings/").send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let root = app.req(Method::GET, "/").send().await.unwrap();
    assert_eq!(root.status(), StatusCode::FOUND);
    assert_eq!(root.headers()["location"], "/settings/");
    let body = assert_problem(
        app.req(Method::GET, "/nope").send().await.unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    assert!(
        body["instance"].as_str().is_some_and(|i| i.len() == 32),
        "instance is the request id"
    );
}

/// A known path with a method it does not serve: 405 problem naming the methods it does.
#[actix_web::test]
async fn a_wrong_method_on_a_known_route_is_405_with_allow() {
    let app = spawn_app().await;
    let res = app
        .req(Method::DELETE, "/api/v1/auth/me")
        .send()
        .await
        .unwrap();
    let allow = header_text(&res, "allow");
    assert_problem(res, 405, "METHOD_NOT_ALLOWED").await;
    assert!(allow.contains("GET"), "Allow: {allow:?}");
}

/// Every body of the API is an object; a JSON array of the fields in order is refused, never
/// read as the struct (it used to log in with `["email", "password"]`).
#[actix_web::test]
async fn a_json_array_is_never_read_as_an_object_body() {
    let app = spawn_app().await;
    let res = app
        .req(Method::POST, "/api/v1/auth/login")
        .header("Content-Type", "application/json")
        .body(serde_json::to_string(&[&app.admin_email, &app.admin_password]).unwrap())
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(body["errors"][0]["field"], "body", "{body}");
}
