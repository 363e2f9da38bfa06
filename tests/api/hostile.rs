//! Hostile input, generated: property tests (proptest) that throw arbitrary and nearly-valid
//! credentials, tenant headers, pagination parameters and JSON bodies at the live server.
//! Whatever arrives, the answer is never a 5xx, and every 4xx is the SPEC §3 problem shape with
//! a known code.
//!
//! The cases run on a blocking thread with their own small runtime, so the server's runtime
//! keeps serving while proptest drives it.
use crate::helpers::{Key, Session, TestApp, spawn_app};
use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};

const CASES: u32 = 96;

const CODES: &[&str] = &[
    "AUTHENTICATION_REQUIRED",
    "INVALID_API_KEY",
    "INVALID_TOKEN",
    "INVALID_CREDENTIALS",
    "PERMISSION_DENIED",
    "NOT_FOUND",
    "VALIDATION_ERROR",
    "DUPLICATE_EAN",
    "CONFLICT",
    "ACCOUNT_LOCKED",
    "RATE_LIMIT_EXCEEDED",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "METHOD_NOT_ALLOWED",
];

/// What the properties need from the running app, owned so it can cross to another thread.
#[derive(Clone)]
struct Target {
    base: String,
    admin: Session,
    key: Key,
    tenant: String,
    product: String,
}

/// One answer, read whole.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    /// The SPEC promise for any input: no 5xx; a 4xx is a problem document with a known code,
    /// its own status and a timestamp.
    fn check(&self, what: &str) -> Result<(), TestCaseError> {
        prop_assert!(self.status < 500, "{what}: answered {}", self.status);
        if self.status >= 400 {
            prop_assert!(
                self.content_type.starts_with("application/problem+json"),
                "{what}: {} with content type {:?}",
                self.status,
                self.content_type
            );
            let body: Value = serde_json::from_slice(&self.body)
                .map_err(|e| TestCaseError::fail(format!("{what}: problem is not JSON: {e}")))?;
            prop_assert_eq!(&body["status"], &json!(self.status), "{}: {}", what, body);
            let code = body["error_code"].as_str().unwrap_or("");
            prop_assert!(CODES.contains(&code), "{what}: unknown code in {body}");
            prop_assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
            prop_assert!(body["timestamp"].is_string() && body["type"].is_string());
        }
        Ok(())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Runs `property` over the strategy `make` builds, on a blocking thread, sending with a
/// private runtime.
async fn run<M, S, F>(target: &Target, make: M, property: F)
where
    M: FnOnce() -> S + Send + 'static,
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(&Sender, S::Value) -> Result<(), TestCaseError> + Send + 'static,
{
    let target = target.clone();
    actix_web::rt::task::spawn_blocking(move || {
        let sender = Sender {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            client: reqwest::Client::new(),
            target,
        };
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&make(), |v| property(&sender, v)) {
            panic!("{e}");
        }
    })
    .await
    .expect("property thread");
}

struct Sender {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    target: Target,
}

impl Sender {
    fn send(&self, rb: reqwest::RequestBuilder) -> Answer {
        self.rt.block_on(async {
            let res = rb.send().await.expect("the server answers");
            Answer {
                status: res.status().as_u16(),
                content_type: res
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned(),
                body: res.bytes().await.expect("body").to_vec(),
            }
        })
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}/api/v1{path}", self.target.base))
    }
}

/// Bytes a header value may carry (visible ASCII, space, tab, obs-text).
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![0x20u8..=0x7e, Just(b'\t'), 0x80u8..=0xff,],
        0..120,
    )
}

/// `raw` with one character replaced, or cut, or extended.
fn mutated(raw: String) -> impl Strategy<Value = String> {
    let len = raw.len();
    (0..len, prop::char::range('!', '~'), 0..3u8).prop_map(move |(i, c, how)| {
        let mut s: Vec<char> = raw.chars().collect();
        match how {
            0 => s[i] = c,
            1 => s.truncate(i),
            _ => s.insert(i, c),
        }
        s.into_iter().collect()
    })
}

async fn target(app: &TestApp) -> Target {
    let (admin, key) = app
        .admin_and_key(&["products:read", "products:write", "products:delete"])
        .await;
    let product = app
        .create_product(&key.raw, "4006381333931", "anchor")
        .await;
    assert_eq!(product.status(), 201);
    let product = product.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    Target {
        base: app.address.clone(),
        admin,
        key,
        tenant: app.default_tenant_id.clone(),
        product,
    }
}

#[actix_web::test]
async fn arbitrary_and_nearly_valid_api_keys_get_a_401_problem_and_never_a_5xx() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let raw = t.key.raw.clone();
    let strategy = move || {
        prop_oneof![
            header_value(),
            "pm_(live|test)_[0-9A-Za-z]{38}".prop_map(String::into_bytes),
            mutated(raw).prop_map(String::into_bytes),
        ]
    };
    run(&t, strategy, |s, value| {
        let a = s.send(s.req(Method::GET, "/products").header(
            "X-API-Key",
            reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
        ));
        a.check("X-API-Key")?;
        if value != s.target.key.raw.as_bytes() {
            prop_assert_eq!(a.status, 401);
        }
        Ok(())
    })
    .await;
}

#[actix_web::test]
async fn arbitrary_mutated_and_unsigned_tokens_get_a_401_problem_and_never_a_5xx() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let token = t.admin.token.clone();
    let parts: Vec<&str> = token.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = |header: &str| format!("{}.{}.", b64.encode(header), parts[1]);
    let unsigned = vec![
        forged(r#"{"alg":"none","typ":"at+jwt"}"#),
        forged(r#"{"alg":"HS512","typ":"at+jwt"}"#),
        forged(r#"{"alg":"RS256","typ":"at+jwt"}"#),
        forged(r#"{"typ":"at+jwt"}"#),
        format!("{}.{}", parts[0], parts[1]),
    ];
    let mutable = token.clone();
    let strategy = move || {
        prop_oneof![
            header_value().prop_map(|v| [b"Bearer ".to_vec(), v].concat()),
            header_value(),
            mutated(mutable).prop_map(|t| format!("Bearer {t}").into_bytes()),
            prop::sample::select(unsigned).prop_map(|t| format!("Bearer {t}").into_bytes()),
        ]
    };
    run(&t, strategy, move |s, value| {
        let a = s.send(s.req(Method::GET, "/auth/me").header(
            "Authorization",
            reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
        ));
        a.check("Authorization")?;
        if value != format!("Bearer {token}").as_bytes() {
            prop_assert!(a.status == 401 || a.status == 400, "{}", a.status);
        }
        Ok(())
    })
    .await;
}

#[actix_web::test]
async fn arbitrary_tenant_headers_are_400_403_or_the_callers_own_tenant() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let tenant = t.tenant.clone();
    let strategy = move || {
        prop_oneof![
            header_value(),
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                .prop_map(String::into_bytes),
            mutated(tenant.clone()).prop_map(String::into_bytes),
            Just(tenant.into_bytes()),
        ]
    };
    run(&t, strategy, |s, value| {
        let tenant = reqwest::header::HeaderValue::from_bytes(&value).unwrap();
        for rb in [
            s.req(Method::GET, "/auth/me")
                .header("X-API-Key", &s.target.key.raw),
            s.req(Method::GET, "/auth/me")
                .bearer_auth(&s.target.admin.token),
        ] {
            let a = s.send(rb.header("X-Tenant-ID", tenant.clone()));
            a.check("X-Tenant-ID")?;
            let own = value
                .trim_ascii()
                .eq_ignore_ascii_case(s.target.tenant.as_bytes());
            if own {
                prop_assert_eq!(a.status, 200);
            } else {
                prop_assert!(a.status == 400 || a.status == 403, "{}", a.status);
            }
        }
        Ok(())
    })
    .await;
}

/// A query value: numbers of every size and sign, or any text.
fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..200).prop_map(|n| n.to_string()),
        "[0-9]{15,40}",
        any::<f64>().prop_map(|f| f.to_string()),
        ".{0,12}",
    ]
}

#[actix_web::test]
async fn arbitrary_pagination_and_filters_never_break_the_list() {
    let app = spawn_app().await;
    let t = target(&app).await;
    let strategy = || {
        let names = prop::sample::select(vec![
            "page",
            "per_page",
            "skip",
            "limit",
            "sort_by",
            "sort_order",
            "is_active",
            "search",
            "supplier_id",
            "category_id",
        ]);
        prop::collection::vec((names, query_value()), 0..5)
    };
    run(&t, strategy, |s, query| {
        let a = s.send(
            s.req(Method::GET, "/products")
                .header("X-API-Key", &s.target.key.raw)
                .query(&query),
        );
        a.check("pagination")?;
        prop_assert!(matches!(a.status, 200 | 400 | 422), "{}", a.status);
        if a.status == 200 {
            let body = a.json();
            let per_page = body["per_page"].as_u64().unwrap_or(0);
            // Legacy `limit` pages reach 500 (SPEC §4); `per_page` stops at 100.
            let cap = if query.iter().any(|(k, _)| *k == "limit") {
                500
            } else {
                100
            };
            prop_assert!((1..=cap).contains(&per_page), "{body}");
            prop_assert!(
                body["items"]
                    .as_array()
                    .is_some_and(|i| i.len() as u64 <= per_page)
            );
            prop_assert!(body["page"].as_u64().is_some_and(|p| p >= 1));
        }
        Ok(())
    })
    .await;
}

/// Any JSON value, biased towards objects that carry the API's field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::from),
        "[0-9]{8}|[0-9]{13}".prop_map(Value::from),
    ];
    let field = prop::sample::select(vec![
        "name",
        "email",
        "password",
        "role",
        "scopes",
        "environment",
        "expires_at",
        "grace_seconds",
        "ean",
        "sku",
        "reference",
        "price",
        "stock",
        "is_active",
        "attributes",
        "category_ids",
        "ids",
        "current_password",
        "new_password",
        "currency",
        "weight",
        "supplier_id",
    ])
    .prop_map(str::to_owned);
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[actix_web::test]
async fn arbitrary_json_bodies_on_every_writing_route_never_get_a_5xx() {
    let app = spawn_app().await;
    let t = target(&app).await;
    // A key that only the rotate route may touch, so the other routes keep working.
    let (_, spare) = app.admin_and_key(&["products:read"]).await;
    let routes: Vec<(Method, String)> = vec![
        (Method::POST, "/auth/login".into()),
        (Method::POST, "/auth/refresh".into()),
        (Method::POST, "/auth/password".into()),
        (Method::POST, "/api-keys".into()),
        (Method::POST, format!("/api-keys/{}/rotate", spare.id)),
        (Method::POST, "/tenants".into()),
        (Method::POST, "/users".into()),
        (Method::POST, format!("/tenants/{}/members", t.tenant)),
        (Method::POST, "/products".into()),
        (Method::PATCH, format!("/products/{}", t.product)),
        (Method::PUT, format!("/products/{}", t.product)),
        (Method::POST, "/products/bulk-delete".into()),
    ];
    let strategy = move || {
        let body = prop_oneof![
            json_value().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..64),
            ".{0,40}".prop_map(String::into_bytes),
        ];
        (prop::sample::select(routes), body)
    };
    run(&t, strategy, |s, ((method, path), body)| {
        let a = s.send(
            s.req(method.clone(), &path)
                .bearer_auth(&s.target.admin.token)
                .header("Content-Type", "application/json")
                .body(body),
        );
        a.check(&format!("{method} {path}"))?;
        Ok(())
    })
    .await;
    // The properties never disturbed the session or the key they used.
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &t.admin.token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
