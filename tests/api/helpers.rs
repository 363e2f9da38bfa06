//! `spawn_app`: the real actix server on port 0 with a temporary data dir, a manual clock and
//! small argon2 parameters; `TestApp` wraps the calls tests make over and over.
#![allow(dead_code)]
use pixee_pim::auth::passwords::HashCost;
use pixee_pim::clock::{ManualClock, SharedClock};
use pixee_pim::config::{ServeArgs, Settings};
use pixee_pim::startup::Application;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use tempfile::TempDir;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "initial admin pass 1";
/// A well-formed id that names nothing.
pub const NOWHERE_ID: &str = "00000000-0000-4000-8000-000000000000";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub admin_email: String,
    pub admin_password: String,
    pub default_tenant_id: String,
    pub clock: Arc<ManualClock>,
    pub data_dir: Arc<TempDir>,
    pub app_auth: actix_web::web::Data<pixee_pim::auth::Auth>,
    pub app_catalog: actix_web::web::Data<pixee_pim::catalog::Catalog>,
    pub jobs: actix_web::web::Data<pixee_pim::jobs::Jobs>,
    handle: actix_web::dev::ServerHandle,
    task: Option<actix_web::rt::task::JoinHandle<std::io::Result<()>>>,
    args: ServeArgs,
    cost: HashCost,
}

pub fn start_time() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(ServeArgs::default()).await
}

/// Starts the server with these settings (unset ones take their defaults). The login rate
/// limit is off unless set, so tests can log in freely.
pub async fn spawn_app_with(args: ServeArgs) -> TestApp {
    spawn_app_costing(args, HashCost::FAST_FOR_TESTS).await
}

/// [`spawn_app_with`] hashing passwords at `cost`: the production cost makes logins slow
/// enough for concurrent ones to queue for a hash slot, as they do under a real flood.
pub async fn spawn_app_costing(mut args: ServeArgs, cost: HashCost) -> TestApp {
    args.login_rate_per_minute.get_or_insert(0);
    if crate::postgres::selected() && args.database_url.is_none() {
        args.database_url = Some(crate::postgres::fresh_database());
    }
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let clock = Arc::new(ManualClock::new(start_time()));
    start(dir, clock, args, cost).await
}

async fn start(
    dir: Arc<TempDir>,
    clock: Arc<ManualClock>,
    args: ServeArgs,
    cost: HashCost,
) -> TestApp {
    let mut serve = args.clone();
    serve.listen = Some("127.0.0.1:0".into());
    serve.admin_email = Some(ADMIN_EMAIL.into());
    serve.admin_password = Some(ADMIN_PASSWORD.into());
    serve.workers = Some(2);
    let settings = Settings::resolve(dir.path().to_path_buf(), serve);
    let shared: SharedClock = clock.clone();
    // After a restart, the old server's worker threads may still be dropping their share of
    // the store when the new one opens it (sled's file lock): wait for them, briefly.
    let mut attempts = 0;
    let app = loop {
        match Application::build(settings.clone(), shared.clone(), cost).await {
            Ok(app) => break app,
            Err(e)
                if attempts < 50
                    && (format!("{e:?}").contains("could not acquire lock")
                        || format!("{e:?}").contains("another pixee-pim process")) =>
            {
                attempts += 1;
                actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the application starts: {e:?}"),
        }
    };
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let app_auth = app.auth();
    let app_catalog = app.catalog();
    let jobs = app.jobs();
    let task = actix_web::rt::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let default_tenant_id = app_auth
        .store
        .tenant_by_name("default")
        .expect("store")
        .expect("default tenant")
        .id
        .to_string();
    TestApp {
        address,
        client,
        admin_email: ADMIN_EMAIL.into(),
        admin_password: ADMIN_PASSWORD.into(),
        default_tenant_id,
        clock,
        data_dir: dir,
        app_auth,
        app_catalog,
        jobs,
        handle,
        task: Some(task),
        args,
        cost,
    }
}

/// A logged-in session: the access token and the raw refresh cookie value.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub refresh: String,
}

/// A created key: its id and the raw key shown once.
#[derive(Debug, Clone)]
pub struct Key {
    pub id: String,
    pub raw: String,
}

pub fn refresh_cookie(res: &Response) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("refresh_token="))
        .map(|c| {
            c["refresh_token=".len()..]
                .split(';')
                .next()
                .unwrap_or("")
                .to_owned()
        })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn with_key(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.req(method, path).header("X-API-Key", key)
    }

    pub fn with_token(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.req(method, path).bearer_auth(token)
    }

    pub async fn login_raw(&self, email: &str, password: &str) -> Response {
        self.req(Method::POST, "/api/v1/auth/login")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    pub async fn login(&self, email: &str, password: &str) -> Session {
        let res = self.login_raw(email, password).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "login of {email} should succeed"
        );
        let refresh = refresh_cookie(&res).expect("refresh cookie");
        let body: Value = res.json().await.expect("json");
        Session {
            token: body["access_token"].as_str().expect("token").to_owned(),
            refresh,
        }
    }

    /// Sends `n` logins with a wrong password, whatever they answer.
    pub async fn fail_logins(&self, email: &str, wrong_password: &str, n: usize) {
        for _ in 0..n {
            self.login_raw(email, wrong_password).await;
        }
    }

    pub async fn admin(&self) -> Session {
        self.login(&self.admin_email, &self.admin_password).await
    }

    pub async fn refresh(&self, refresh: &str) -> Response {
        self.req(Method::POST, "/api/v1/auth/refresh")
            .header("Content-Type", "application/json")
            .header("Cookie", format!("refresh_token={refresh}"))
            .body("{}")
            .send()
            .await
            .expect("refresh request")
    }

    /// The status of `GET /auth/me` with an access token: is this token alive?
    pub async fn status_of_me(&self, token: &str) -> StatusCode {
        self.with_token(Method::GET, "/api/v1/auth/me", token)
            .send()
            .await
            .expect("me request")
            .status()
    }

    pub async fn create_key_raw(&self, token: &str, body: Value) -> Response {
        self.with_token(Method::POST, "/api/v1/api-keys", token)
            .json(&body)
            .send()
            .await
            .expect("create key request")
    }

    pub async fn create_key(&self, token: &str, scopes: &[&str], environment: &str) -> Key {
        let res = self
            .create_key_raw(
                token,
                json!({"name": "test key", "scopes": scopes, "environment": environment}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.expect("json");
        Key {
            id: body["id"].as_str().expect("id").to_owned(),
            raw: body["key"].as_str().expect("key").to_owned(),
        }
    }

    /// An admin session and a live key with the given scopes.
    pub async fn admin_and_key(&self, scopes: &[&str]) -> (Session, Key) {
        let admin = self.admin().await;
        let key = self.create_key(&admin.token, scopes, "live").await;
        (admin, key)
    }

    pub async fn status_with_key(&self, method: Method, path: &str, key: &str) -> StatusCode {
        self.with_key(method, path, key)
            .send()
            .await
            .expect("request")
            .status()
    }

    pub async fn rotate(&self, id: &str, cred: Cred<'_>) -> Response {
        cred.apply(self.req(Method::POST, &format!("/api/v1/api-keys/{id}/rotate")))
            .send()
            .await
            .expect("rotate request")
    }

    /// An admin rotation that keeps the old secret alive for `grace_seconds`.
    pub async fn rotate_with_grace(&self, id: &str, token: &str, grace_seconds: u32) -> Response {
        self.with_token(
            Method::POST,
            &format!("/api/v1/api-keys/{id}/rotate"),
            token,
        )
        .json(&json!({ "grace_seconds": grace_seconds }))
        .send()
        .await
        .expect("rotate request")
    }

    pub async fn create_product(&self, key: &str, ean: &str, name: &str) -> Response {
        self.with_key(Method::POST, "/api/v1/products", key)
            .json(&json!({"ean": ean, "name": name}))
            .send()
            .await
            .expect("create product")
    }

    /// Stops the server (in-flight requests finish, the store is flushed) and starts it again on
    /// the same data dir and clock.
    /// Stops the server and lets go of its store (the data dir and database stay).
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub async fn restart(mut self) -> TestApp {
        self.handle.stop(true).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let (dir, clock, args, cost) = (
            self.data_dir.clone(),
            self.clock.clone(),
            self.args.clone(),
            self.cost,
        );
        drop(self);
        start(dir, clock, args, cost).await
    }

    pub async fn create_user(&self, admin: &str, email: &str, role: &str) -> Value {
        let res = self
            .with_token(Method::POST, "/api/v1/users", admin)
            .json(&json!({"email": email, "password": "a fine password 1", "role": role}))
            .send()
            .await
            .expect("create user");
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.expect("json")
    }
}

/// Sends a request and reads what the tests look at, panicking on transport errors.
pub trait Fetch {
    async fn json_value(self) -> Value;
    async fn status_code(self) -> StatusCode;
}

impl Fetch for RequestBuilder {
    async fn json_value(self) -> Value {
        self.send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json body")
    }

    async fn status_code(self) -> StatusCode {
        self.send().await.expect("request").status()
    }
}

/// Which credential a request carries.
#[derive(Debug, Clone, Copy)]
pub enum Cred<'a> {
    Key(&'a str),
    Token(&'a str),
}

impl Cred<'_> {
    pub fn apply(self, rb: RequestBuilder) -> RequestBuilder {
        match self {
            Cred::Key(k) => rb.header("X-API-Key", k),
            Cred::Token(t) => rb.bearer_auth(t),
        }
    }
}

/// A response header as text, empty when absent or not text.
pub fn header_text(res: &Response, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Asserts the SPEC §3 problem shape and the code; returns the body.
pub async fn assert_problem(res: Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "status for {code}");
    let ct = header_text(&res, "content-type");
    assert!(
        ct.starts_with("application/problem+json"),
        "content type {ct:?}"
    );
    let body: Value = res.json().await.expect("problem body is json");
    assert_eq!(body["error_code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    let ts = body["timestamp"].as_str().expect("timestamp");
    assert!(
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
        "timestamp {ts}"
    );
    body
}

/// The `name` of each item of a list answer, in order.
pub fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect()
}
