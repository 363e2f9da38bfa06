//! Webhooks (SPEC §13) delivered to real receivers on loopback: every event type signed,
//! retries on the backoff schedule, the address policy, hostile receivers, and delivery after
//! a kill -9 between the change and its delivery.
use crate::helpers::{Session, TestApp, assert_problem, spawn_app_with};
use actix_web::{HttpRequest, HttpResponse, web};
use hmac::{Hmac, KeyInit, Mac};
use pixee_pim::config::ServeArgs;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a receiver was sent.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub event: String,
    pub delivery: String,
    pub signature: String,
    pub custom: Option<String>,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// How a receiver answers.
#[derive(Clone)]
struct Behaviour {
    status: Arc<AtomicU16>,
    hang: Arc<AtomicBool>,
    stream: Arc<AtomicBool>,
    redirect: Arc<Mutex<Option<String>>>,
}

/// An HTTP receiver on loopback that records every request.
pub(crate) struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Received>>>,
    how: Behaviour,
    server: actix_web::dev::ServerHandle,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap()).await
    }

    pub async fn start_on(listener: std::net::TcpListener) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let how = Behaviour {
            status: Arc::new(AtomicU16::new(200)),
            hang: Arc::default(),
            stream: Arc::default(),
            redirect: Arc::default(),
        };
        let (s, h) = (seen.clone(), how.clone());
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(web::Data::new((s.clone(), h.clone())))
                .default_service(web::to(receive))
        })
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            seen,
            how,
            server: handle,
        }
    }

    pub fn answer(&self, status: u16) {
        self.how.status.store(status, Ordering::SeqCst);
    }

    pub fn hang(&self, on: bool) {
        self.how.hang.store(on, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} of {n} requests arrived: {seen:#?}",
                seen.len()
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

type State = web::Data<(Arc<Mutex<Vec<Received>>>, Behaviour)>;

async fn receive(req: HttpRequest, body: web::Bytes, state: State) -> HttpResponse {
    let (seen, how) = state.get_ref();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    seen.lock().unwrap().push(Received {
        event: header("X-PM-Event").unwrap_or_default(),
        delivery: header("X-PM-Delivery").unwrap_or_default(),
        signature: header("X-PM-Signature").unwrap_or_default(),
        custom: header("X-Shop-Token"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    if how.hang.load(Ordering::SeqCst) {
        actix_web::rt::time::sleep(Duration::from_secs(3600)).await;
    }
    if let Some(to) = how.redirect.lock().unwrap().clone() {
        return HttpResponse::Found()
            .insert_header(("Location", to))
            .finish();
    }
    if how.stream.load(Ordering::SeqCst) {
        // A body that never ends: a gigabyte and more, 64 KiB at a time.
        let chunk = web::Bytes::from(vec![b'x'; 64 * 1024]);
        let body =
            futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
        return HttpResponse::Ok().streaming(body);
    }
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(how.status.load(Ordering::SeqCst)).unwrap(),
    )
    .body("ok")
}

/// `X-PM-Signature` checked the way docs/WEBHOOKS.md tells receivers to.
pub(crate) fn signature_ok(secret: &str, header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => v1.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    v1.contains(&expected)
}

async fn spawn() -> TestApp {
    spawn_app_with(ServeArgs {
        webhooks_allow_private: Some(true),
        key_writes_per_minute: Some(100_000),
        ..Default::default()
    })
    .await
}

pub(crate) async fn create_webhook(app: &TestApp, admin: &Session, body: Value) -> Value {
    let res = app
        .with_token(Method::POST, "/api/v1/webhooks", &admin.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    assert_eq!(
        res.headers().get("cache-control").unwrap(),
        "no-store",
        "the answer holds the secret"
    );
    res.json().await.unwrap()
}

async fn deliveries(app: &TestApp, admin: &Session, hook: &str) -> Value {
    let res = app
        .with_token(
            Method::GET,
            &format!("/api/v1/webhooks/{hook}/deliveries?per_page=100"),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Polls the deliveries until `done` holds for the newest one.
async fn newest_delivery_when(
    app: &TestApp,
    admin: &Session,
    hook: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let list = deliveries_when(app, admin, hook, |list| {
        list["items"].get(0).is_some_and(&done)
    })
    .await;
    list["items"][0].clone()
}

/// The webhook's delivery list once `done` holds for it, waiting up to 30 s. A delivery's
/// outcome is recorded after the receiver answered, so a receiver that has seen every event
/// does not mean the list says so yet.
async fn deliveries_when(
    app: &TestApp,
    admin: &Session,
    hook: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let list = deliveries(app, admin, hook).await;
        if done(&list) {
            return list;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{list}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server, a receiver answering `status`, the admin, a webhook of product.created to it with
/// `max_retries`, and a key that creates products.
struct Hooked {
    app: TestApp,
    receiver: Receiver,
    admin: Session,
    id: String,
    key: crate::helpers::Key,
}

async fn hooked(status: u16, max_retries: u32) -> Hooked {
    let app = spawn().await;
    let receiver = Receiver::start().await;
    receiver.answer(status);
    let admin = app.admin().await;
    let hook = create_webhook(
        &app,
        &admin,
        json!({"name": "receiver", "url": receiver.url, "events": ["product.created"],
               "max_retries": max_retries}),
    )
    .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    let key = app
        .create_key(&admin.token, &["products:write"], "live")
        .await;
    Hooked {
        app,
        receiver,
        admin,
        id,
        key,
    }
}

/// Creates a product for each EAN number of `eans` (each must be created).
async fn create_products(app: &TestApp, key: &str, eans: std::ops::Range<u64>, name: &str) {
    for n in eans {
        assert_eq!(app.create_product(key, &ean(n), name).await.status(), 201);
    }
}

fn ean(n: u64) -> String {
    let body = format!("{:012}", 400_000_000_000 + n);
    let total: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    format!("{body}{}", (10 - total % 10) % 10)
}

const EVERY_EVENT: &[&str] = &[
    "product.created",
    "product.updated",
    "product.deleted",
    "import.started",
    "import.completed",
    "import.failed",
    "supplier.created",
    "supplier.updated",
    "test",
];

/// Imports `csv` (processing at once) and waits for the job to end.
async fn import(app: &TestApp, key: &str, csv: &str) -> Value {
    let fields = [("auto_process", "true")];
    let id = crate::jobs::upload_ok(app, key, "items.csv", csv.as_bytes().to_vec(), &fields).await;
    crate::jobs::wait(app, key, "imports", &id, &["completed", "failed"]).await
}

#[actix_web::test]
async fn every_event_type_arrives_signed_with_the_record_as_the_api_shows_it() {
    let app = spawn().await;
    let receiver = Receiver::start().await;
    let admin = app.admin().await;
    let hook = create_webhook(
        &app,
        &admin,
        json!({"name": "shop", "url": receiver.url, "events": EVERY_EVENT,
               "headers": {"X-Shop-Token": "abc123"}}),
    )
    .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{hook}");
    // SPEC §13's defaults.
    assert_eq!(hook["max_retries"], 3);
    assert_eq!(hook["timeout_seconds"], 10);
    assert_eq!(hook["is_active"], true);
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    // The secret is shown once.
    let again: Value = app
        .with_token(
            Method::GET,
            &format!("/api/v1/webhooks/{hook_id}"),
            &admin.token,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(again.get("secret").is_none(), "{again}");
    assert_eq!(again["environment"], "live");

    let key = app
        .create_key(
            &admin.token,
            &[
                "products:read",
                "products:write",
                "products:delete",
                "imports:read",
                "imports:write",
            ],
            "live",
        )
        .await;
    let send = |method: Method, path: &str, body: Value| {
        app.with_key(method, path, &key.raw).json(&body).send()
    };
    // Suppliers are written by editors' sessions.
    let res = app
        .with_token(Method::POST, "/api/v1/suppliers", &admin.token)
        .json(&json!({"code": "ACME", "name": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let supplier: Value = res.json().await.unwrap();
    let sid = supplier["id"].as_str().unwrap();
    let res = app
        .with_token(
            Method::PATCH,
            &format!("/api/v1/suppliers/{sid}"),
            &admin.token,
        )
        .json(&json!({"name": "Acme Corp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app.create_product(&key.raw, &ean(1), "Widget").await;
    assert_eq!(res.status(), 201);
    let product: Value = res.json().await.unwrap();
    let pid = product["id"].as_str().unwrap();
    let res = send(
        Method::PATCH,
        &format!("/api/v1/products/{pid}"),
        json!({"price": 12.5}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .with_key(Method::DELETE, &format!("/api/v1/products/{pid}"), &key.raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let done = import(&app, &key.raw, &format!("ean,name\n{},Imported\n", ean(2))).await;
    assert_eq!(done["status"], "completed");
    let failed = import(&app, &key.raw, "ean,name\n123,Bad\n").await;
    assert_eq!(failed["status"], "failed");
    let res = app
        .with_token(
            Method::POST,
            &format!("/api/v1/webhooks/{hook_id}/test"),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let test: Value = res.json().await.unwrap();
    assert_eq!(test["status"], "succeeded", "{test}");
    assert_eq!(test["status_code"], 200);

    // supplier ×2, product ×3, the imported product, import started/completed and
    // started/failed, test.
    let seen = receiver.wait_for(11).await;
    let mut types: Vec<&str> = seen.iter().map(|r| r.event.as_str()).collect();
    types.sort();
    let mut expected = vec![
        "import.completed",
        "import.failed",
        "import.started",
        "import.started",
        "product.created",
        "product.created",
        "product.deleted",
        "product.updated",
        "supplier.created",
        "supplier.updated",
        "test",
    ];
    expected.sort();
    assert_eq!(types, expected);
    let tenant = app.default_tenant_id.clone();
    let mut ids = std::collections::HashSet::new();
    for r in &seen {
        assert!(
            signature_ok(&secret, &r.signature, &r.body),
            "bad signature on {r:?}"
        );
        assert!(!signature_ok("whsec_wrong", &r.signature, &r.body));
        assert_eq!(r.custom.as_deref(), Some("abc123"));
        let body = r.json();
        assert_eq!(body["type"], r.event);
        assert_eq!(body["tenant_id"], tenant);
        assert_eq!(body["environment"], "live");
        assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(ids.insert(r.delivery.clone()), "one delivery id per event");
    }
    let of = |t: &str| seen.iter().find(|r| r.event == t).unwrap().json();
    let created = of("product.created");
    assert!(created["data"]["ean"] == ean(1) || created["data"]["ean"] == ean(2));
    let updated = of("product.updated");
    assert_eq!(updated["data"]["price"], 12.5);
    assert_eq!(updated["data"]["barcode"], ean(1), "as the API shows it");
    let deleted = of("product.deleted");
    assert_eq!(deleted["data"]["id"], pid);
    assert!(deleted["data"]["deleted_at"].is_string(), "{deleted}");
    assert_eq!(of("supplier.updated")["data"]["name"], "Acme Corp");
    assert_eq!(of("import.completed")["data"]["created_rows"], 1);
    assert_eq!(of("import.failed")["data"]["error_code"], "IMPORT_FAILED");
    assert_eq!(of("test")["data"]["webhook_id"], hook_id.as_str());

    // Every delivery is listed as succeeded, each on its first attempt.
    let list = deliveries_when(&app, &admin, &hook_id, |list| {
        list["items"].as_array().is_some_and(|items| {
            items.len() == 11
                && items.iter().all(|d| {
                    d["status"] == "succeeded" && d["status_code"] == 200 && d["attempt"] == 1
                })
        })
    })
    .await;
    assert_eq!(list["total"], 11);
    receiver.stop().await;
}

#[actix_web::test]
async fn events_go_only_to_webhooks_of_their_tenant_environment_and_types() {
    let app = spawn().await;
    let (live, test, products_only) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let admin = app.admin().await;
    create_webhook(
        &app,
        &admin,
        json!({"name": "live", "url": live.url, "events": ["product.created"]}),
    )
    .await;
    let t = create_webhook(
        &app,
        &admin,
        json!({"name": "test", "url": test.url, "events": ["product.created"], "environment": "test"}),
    )
    .await;
    assert_eq!(t["environment"], "test");
    create_webhook(
        &app,
        &admin,
        json!({"name": "suppliers", "url": products_only.url, "events": ["supplier.created"]}),
    )
    .await;
    let live_key = app
        .create_key(&admin.token, &["products:write"], "live")
        .await;
    let test_key = app
        .create_key(&admin.token, &["products:write"], "test")
        .await;
    assert_eq!(
        app.create_product(&live_key.raw, &ean(10), "Live")
            .await
            .status(),
        201
    );
    assert_eq!(
        app.create_product(&test_key.raw, &ean(11), "Test")
            .await
            .status(),
        201
    );
    let l = live.wait_for(1).await;
    let t = test.wait_for(1).await;
    assert_eq!(l[0].json()["data"]["ean"], ean(10));
    assert_eq!(l[0].json()["environment"], "live");
    assert_eq!(t[0].json()["data"]["ean"], ean(11));
    assert_eq!(t[0].json()["environment"], "test");
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(live.seen().len(), 1);
    assert_eq!(test.seen().len(), 1);
    assert!(
        products_only.seen().is_empty(),
        "not subscribed to products"
    );
}

#[actix_web::test]
async fn failed_deliveries_are_retried_on_the_backoff_schedule_then_redelivered_by_hand() {
    let Hooked {
        app,
        receiver,
        admin,
        id,
        key,
    } = hooked(500, 2).await;
    assert_eq!(
        app.create_product(&key.raw, &ean(20), "Flaky")
            .await
            .status(),
        201
    );
    // The default first wait is 30 s, each next one four times longer, all within ±20 %.
    for (attempt, plain) in [(1u64, 30.0), (2, 120.0)] {
        let seen = receiver.wait_for(attempt as usize).await;
        assert_eq!(seen.len() as u64, attempt, "no attempt before it is due");
        let d = newest_delivery_when(&app, &admin, &id, |d| d["attempt"] == attempt).await;
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(d["status_code"], 500);
        assert!(d["error"].as_str().unwrap().contains("500"), "{d}");
        let at = |f: &str| {
            time::OffsetDateTime::parse(
                d[f].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        let wait = (at("next_attempt_at") - at("last_attempt_at")).as_seconds_f64();
        assert!(
            wait >= plain * 0.8 - 0.001 && wait <= plain * 1.2 + 0.001,
            "attempt {attempt} waits {wait} s"
        );
        // Not before it is due…
        app.clock.advance(time::Duration::seconds_f64(wait * 0.5));
        actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(receiver.seen().len() as u64, attempt, "retried too early");
        // …and soon after.
        app.clock
            .advance(time::Duration::seconds_f64(wait * 0.5 + 1.0));
    }
    let seen = receiver.wait_for(3).await;
    assert!(
        seen.iter().all(|r| r.delivery == seen[0].delivery),
        "one delivery id"
    );
    assert_ne!(
        seen[0].signature, seen[2].signature,
        "each attempt signs its own time"
    );
    let d = newest_delivery_when(&app, &admin, &id, |d| d["attempt"] == 3).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["next_attempt_at"].is_null());
    app.clock.advance(time::Duration::hours(10));
    actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        receiver.seen().len(),
        3,
        "max_retries 2: three attempts in all"
    );

    // Redelivered by hand once the receiver is fixed: same delivery id, a success. (Ten hours
    // passed on the test clock: the admin logs in again.)
    let admin = app.admin().await;
    receiver.answer(204);
    let res = app
        .with_token(
            Method::POST,
            &format!(
                "/api/v1/webhooks/{id}/deliveries/{}/redeliver",
                d["id"].as_str().unwrap()
            ),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let seen = receiver.wait_for(4).await;
    assert_eq!(seen[3].delivery, seen[0].delivery);
    let d = newest_delivery_when(&app, &admin, &id, |d| d["status"] == "succeeded").await;
    assert_eq!(d["attempt"], 4);
    assert_eq!(d["status_code"], 204);
    let res = app
        .with_token(
            Method::POST,
            &format!(
                "/api/v1/webhooks/{id}/deliveries/{}/redeliver",
                uuid::Uuid::now_v7()
            ),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "NOT_FOUND").await;
}

#[actix_web::test]
async fn ten_failed_events_in_a_row_turn_the_webhook_off_and_say_so_in_the_audit_log() {
    let Hooked {
        app,
        receiver,
        admin,
        id,
        key,
    } = hooked(503, 0).await;
    create_products(&app, &key.raw, 100..100 + 10, "Down").await;
    receiver.wait_for(10).await;
    let started = Instant::now();
    let off = loop {
        let h: Value = app
            .with_token(Method::GET, &format!("/api/v1/webhooks/{id}"), &admin.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if h["is_active"] == false {
            break h;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{h}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(off["failed_events"], 10);
    assert!(off["disabled_at"].is_string());
    let audit: Value = app
        .with_token(
            Method::GET,
            "/api/v1/audit-events?per_page=100",
            &admin.token,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "webhook.disabled"
                && e["detail"].as_str().unwrap().contains("10 failed events")),
        "{audit}"
    );
    // Off: the next change is not sent.
    assert_eq!(
        app.create_product(&key.raw, &ean(200), "After")
            .await
            .status(),
        201
    );
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.seen().len(), 10);
    // Turned on again by hand, its count starts over and events flow.
    receiver.answer(200);
    let res = app
        .with_token(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            &admin.token,
        )
        .json(&json!({"is_active": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let on: Value = res.json().await.unwrap();
    assert_eq!(on["failed_events"], 0);
    assert!(on["disabled_at"].is_null());
    assert_eq!(
        app.create_product(&key.raw, &ean(201), "On").await.status(),
        201
    );
    let seen = receiver.wait_for(11).await;
    assert_eq!(seen[10].json()["data"]["ean"], ean(201));
}

#[actix_web::test]
async fn the_address_policy_refuses_what_it_must() {
    // Without --webhooks-allow-private.
    let app = spawn_app_with(ServeArgs::default()).await;
    let admin = app.admin().await;
    let create = |url: &str| {
        app.with_token(Method::POST, "/api/v1/webhooks", &admin.token)
            .json(&json!({"name": "x", "url": url, "events": ["test"]}))
            .send()
    };
    for url in [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "https://user:secret@example.com/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.8/hook",
        "http://2130706433/hook",
        "http://[::1]/hook",
        "not a url",
    ] {
        let body = assert_problem(create(url).await.unwrap(), 422, "VALIDATION_ERROR").await;
        assert!(body.to_string().contains("url"), "{url}: {body}");
    }
    // A name is checked once resolved: localhost is loopback, refused at delivery.
    let res = create("http://localhost:9/hook").await.unwrap();
    assert_eq!(res.status(), 201);
    let hook: Value = res.json().await.unwrap();
    let res = app
        .with_token(
            Method::POST,
            &format!("/api/v1/webhooks/{}/test", hook["id"].as_str().unwrap()),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    let d: Value = res.json().await.unwrap();
    assert_eq!(d["status"], "pending", "retried later: {d}");
    assert!(d["status_code"].is_null());
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("loopback or private"), "{error}");

    // With the switch on, loopback is allowed, metadata never.
    let app = spawn().await;
    let admin = app.admin().await;
    let res = app
        .with_token(Method::POST, "/api/v1/webhooks", &admin.token)
        .json(&json!({"name": "x", "url": "http://169.254.169.254/", "events": ["test"]}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "VALIDATION_ERROR").await;

    // A redirect is not followed, even to an allowed address.
    let target = Receiver::start().await;
    let redirecting = Receiver::start().await;
    *redirecting.how.redirect.lock().unwrap() = Some(target.url.clone());
    let hook = create_webhook(
        &app,
        &admin,
        json!({"name": "r", "url": redirecting.url, "events": ["test"]}),
    )
    .await;
    let d: Value = app
        .with_token(
            Method::POST,
            &format!("/api/v1/webhooks/{}/test", hook["id"].as_str().unwrap()),
            &admin.token,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["status_code"], 302, "{d}");
    assert_eq!(d["status"], "pending");
    assert_eq!(redirecting.seen().len(), 1);
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert!(target.seen().is_empty(), "the redirect was followed");
}

#[actix_web::test]
async fn bad_webhook_input_gets_a_clear_error_and_keys_cannot_manage_webhooks() {
    let app = spawn().await;
    let admin = app.admin().await;
    let receiver = Receiver::start().await;
    let post = |body: Value| {
        app.with_token(Method::POST, "/api/v1/webhooks", &admin.token)
            .json(&body)
            .send()
    };
    let url = receiver.url.as_str();
    for (body, field) in [
        (json!({"url": url, "events": ["test"]}), "name"),
        (json!({"name": "x", "events": ["test"]}), "url"),
        (json!({"name": "x", "url": url}), "events"),
        (json!({"name": "x", "url": url, "events": []}), "events"),
        (
            json!({"name": "x", "url": url, "events": ["product.exploded"]}),
            "events",
        ),
        (
            json!({"name": "x", "url": url, "events": ["test"], "max_retries": 6}),
            "max_retries",
        ),
        (
            json!({"name": "x", "url": url, "events": ["test"], "max_retries": -1}),
            "max_retries",
        ),
        (
            json!({"name": "x", "url": url, "events": ["test"], "timeout_seconds": 0}),
            "timeout_seconds",
        ),
        (
            json!({"name": "x", "url": url, "events": ["test"], "timeout_seconds": 31}),
            "timeout_seconds",
        ),
        (
            json!({"name": "x", "url": url, "events": ["test"], "secret": "short"}),
            "secret",
        ),
        (
            json!({"name": "x", "url": url, "events": ["test"], "headers": {"X-PM-Signature": "forged"}}),
            "headers",
        ),
        (
            json!({"name": "x", "url": url, "events": ["test"], "headers": {"Host": "evil"}}),
            "headers",
        ),
        (
            json!({"name": "x", "url": url, "events": ["test"], "headers": {"X-Ok": "line\nbreak"}}),
            "headers",
        ),
        (
            json!({"name": "x", "url": url, "events": ["test"], "environment": "staging"}),
            "environment",
        ),
    ] {
        let res = post(body.clone()).await.unwrap();
        let problem = assert_problem(res, 422, "VALIDATION_ERROR").await;
        assert!(problem.to_string().contains(field), "{body}: {problem}");
    }
    for (body, status) in [
        (json!({"name": "x", "url": url, "events": "test"}), 422),
        (
            json!({"name": "x", "url": url, "events": ["test"], "surprise": 1}),
            422,
        ),
    ] {
        let res = post(body.clone()).await.unwrap();
        assert_eq!(res.status(), status, "{body}");
    }
    let res = app
        .with_token(Method::POST, "/api/v1/webhooks", &admin.token)
        .header("Content-Type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "VALIDATION_ERROR").await;
    let list: Value = app
        .with_token(Method::GET, "/api/v1/webhooks", &admin.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 0, "nothing written: {list}");

    // The secret can be chosen; the webhook can be patched, and deleted with its deliveries.
    let hook = create_webhook(
        &app,
        &admin,
        json!({"name": "x", "url": url, "events": ["test"], "secret": "my-own-secret-0123456789"}),
    )
    .await;
    assert_eq!(hook["secret"], "my-own-secret-0123456789");
    let id = hook["id"].as_str().unwrap().to_owned();
    let res = app
        .with_token(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            &admin.token,
        )
        .json(&json!({"timeout_seconds": 99}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "VALIDATION_ERROR").await;
    let res = app
        .with_token(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            &admin.token,
        )
        .json(&json!({"name": "renamed", "events": ["test", "product.deleted"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let patched: Value = res.json().await.unwrap();
    assert_eq!(patched["name"], "renamed");
    assert_eq!(
        patched["timeout_seconds"], 10,
        "the refused patch changed nothing"
    );
    assert_eq!(patched["events"], json!(["test", "product.deleted"]));
    assert!(patched.get("secret").is_none());

    // API keys have no webhook scope: a key is refused.
    let key = app
        .create_key(&admin.token, &["products:read"], "live")
        .await;
    for (method, path) in [
        (Method::GET, "/api/v1/webhooks".to_owned()),
        (Method::POST, "/api/v1/webhooks".to_owned()),
        (Method::GET, format!("/api/v1/webhooks/{id}")),
        (Method::POST, format!("/api/v1/webhooks/{id}/test")),
    ] {
        let res = app
            .with_key(method.clone(), &path, &key.raw)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{method} {path}");
    }
    // Another tenant's admin does not see it.
    let res = app
        .with_token(
            Method::DELETE,
            &format!("/api/v1/webhooks/{id}"),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    for (method, path) in [
        (Method::GET, format!("/api/v1/webhooks/{id}")),
        (Method::GET, format!("/api/v1/webhooks/{id}/deliveries")),
        (Method::DELETE, format!("/api/v1/webhooks/{id}")),
        (Method::GET, "/api/v1/webhooks/not-a-uuid".to_owned()),
    ] {
        let res = app
            .with_token(method, &path, &admin.token)
            .send()
            .await
            .unwrap();
        assert_problem(res, 404, "NOT_FOUND").await;
    }
}

#[actix_web::test]
async fn hostile_receivers_hold_up_neither_the_api_nor_other_webhooks() {
    let app = spawn().await;
    let admin = app.admin().await;
    let (hanging, streaming, good) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    hanging.hang(true);
    streaming.how.stream.store(true, Ordering::SeqCst);
    for (name, r) in [
        ("hanging", &hanging),
        ("streaming", &streaming),
        ("good", &good),
    ] {
        create_webhook(
            &app,
            &admin,
            json!({"name": name, "url": r.url, "events": ["product.created"], "timeout_seconds": 30}),
        )
        .await;
    }
    let key = app
        .create_key(&admin.token, &["products:write", "products:read"], "live")
        .await;
    let started = Instant::now();
    create_products(&app, &key.raw, 300..300 + 30, "Busy").await;
    // The good receiver gets all 30 while the hanging one holds its few slots for 30 s, and
    // the streaming one's endless answers are cut after a few KiB.
    good.wait_for(30).await;
    streaming.wait_for(30).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "other webhooks waited for the hanging one: {:?}",
        started.elapsed()
    );
    let in_flight = hanging.seen().len();
    assert!(
        (1..=pixee_pim::webhooks::engine::PER_WEBHOOK).contains(&in_flight),
        "{in_flight} requests in flight to one receiver"
    );
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &key.raw)
            .await,
        200
    );
    hanging.stop().await;
}

/// The receiver-side verification in docs/WEBHOOKS.md, run against a real delivery: the Python
/// snippet with Python, the Rust one compiled into this test.
#[actix_web::test]
async fn the_verification_code_in_the_docs_accepts_real_deliveries_and_nothing_else() {
    let app = spawn().await;
    let receiver = Receiver::start().await;
    let admin = app.admin().await;
    let hook = create_webhook(
        &app,
        &admin,
        json!({"name": "docs", "url": receiver.url, "events": ["test"]}),
    )
    .await;
    let secret = hook["secret"].as_str().unwrap();
    let res = app
        .with_token(
            Method::POST,
            &format!("/api/v1/webhooks/{}/test", hook["id"].as_str().unwrap()),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got = receiver.wait_for(1).await.remove(0);
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/WEBHOOKS.md"),
    )
    .unwrap();
    let block = |lang: &str| -> String {
        let start = doc.find(&format!("```{lang}\n")).expect("a code block") + lang.len() + 4;
        let end = start + doc[start..].find("```").unwrap();
        doc[start..end].to_owned()
    };
    // The Rust block is the very function this test compiles.
    let rust = include_str!("../../docs/verify_signature.rs");
    assert_eq!(
        block("rust").trim(),
        rust.trim(),
        "docs/WEBHOOKS.md and docs/verify_signature.rs differ"
    );
    let t: i64 = got.signature.split(',').next().unwrap()[2..]
        .parse()
        .unwrap();
    assert!(doc_rust::verify(
        secret,
        &got.signature,
        got.body.as_bytes(),
        t,
        300
    ));
    assert!(!doc_rust::verify(secret, &got.signature, b"{}", t, 300));
    assert!(!doc_rust::verify(
        "whsec_other",
        &got.signature,
        got.body.as_bytes(),
        t,
        300
    ));
    assert!(
        !doc_rust::verify(secret, &got.signature, got.body.as_bytes(), t + 301, 300),
        "a replay"
    );

    let python = format!(
        "{}\nimport sys\nsecret, header, body, now = sys.argv[1], sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])\nprint(verify(secret, header, body, now=now))\n",
        block("python")
    );
    let run = |secret: &str, body: &str, now: i64| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                &python,
                secret,
                &got.signature,
                body,
                &now.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(run(secret, &got.body, t), "True");
    assert_eq!(run(secret, "{}", t), "False");
    assert_eq!(run("whsec_other", &got.body, t), "False");
    assert_eq!(run(secret, &got.body, t + 301), "False");
}

mod doc_rust {
    include!("../../docs/verify_signature.rs");
}

/// kill -9 while the first delivery is in flight (the receiver holds it): at the next start the
/// engine sends it again, and it arrives.
#[actix_web::test]
async fn a_kill_9_between_the_change_and_its_delivery_still_delivers() {
    use crate::binary::{insecure_client, login, serve};
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PIXEE_ADMIN_EMAIL", "admin@example.com"),
        ("PIXEE_ADMIN_PASSWORD", "kill nine admin pass 1"),
    ];
    let flags = ["--webhooks-allow-private"];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = Receiver::start_on(listener).await;
    receiver.hang(true);
    let mut server = serve(dir.path(), &flags, &env).await;
    let token = login(&server.base, env[0].1, env[1].1).await;
    let client = insecure_client();
    let res = client
        .post(format!("{}/api/v1/webhooks", server.base))
        .bearer_auth(&token)
        .json(&json!({"name": "k", "url": receiver.url, "events": ["product.created", "product.updated"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let secret = res.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = client
        .post(format!("{}/api/v1/api-keys", server.base))
        .bearer_auth(&token)
        .json(&json!({"name": "k", "scopes": ["products:write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let key = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut confirmed = Vec::new();
    for n in 0..3 {
        let res = client
            .post(format!("{}/api/v1/products", server.base))
            .header("X-API-Key", &key)
            .json(&json!({"ean": ean(500 + n), "name": format!("Kill {n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        confirmed.push(ean(500 + n));
    }
    // The receiver holds the first deliveries; none is answered.
    receiver.wait_for(1).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);
    receiver.stop().await;

    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let receiver = Receiver::start_on(listener).await;
    let server = serve(dir.path(), &flags, &env).await;
    let seen = receiver.wait_for(3).await;
    let mut eans: Vec<String> = seen
        .iter()
        .map(|r| {
            assert!(signature_ok(&secret, &r.signature, &r.body));
            r.json()["data"]["ean"].as_str().unwrap().to_owned()
        })
        .collect();
    eans.sort();
    eans.dedup();
    assert_eq!(eans, confirmed, "every confirmed change is delivered");
    drop(server);

    // The CLI's offline import writes events too; the next server delivers them.
    let csv = dir.path().join("offline.csv");
    std::fs::write(
        &csv,
        format!("ean,name\n{},Offline A\n{},Offline B\n", ean(600), ean(601)),
    )
    .unwrap();
    let out = crate::binary::cli(dir.path())
        .args(["import", csv.to_str().unwrap(), "--tenant", "default"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = serve(dir.path(), &flags, &env).await;
    // Earlier deliveries may come again (the previous server was killed before recording
    // them: at least once); the offline ones must come.
    let started = Instant::now();
    let wanted = [ean(600), ean(601)];
    while !wanted.iter().all(|e| {
        receiver
            .seen()
            .iter()
            .any(|r| r.event == "product.created" && r.json()["data"]["ean"] == *e)
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:#?}",
            receiver.seen()
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server);
    let check = crate::binary::cli(dir.path())
        .arg("check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// At most 50 webhooks per tenant and environment, also when the creates race: with 48 stored,
/// eight at once leave exactly 50 (two 201, six 409).
#[actix_web::test]
async fn concurrent_creates_never_pass_the_webhook_limit() {
    let app = spawn().await;
    let admin = app.admin().await;
    let url = "https://receiver.example/hook";
    for i in 0..48 {
        create_webhook(
            &app,
            &admin,
            json!({"name": format!("h{i}"), "url": url, "events": ["test"]}),
        )
        .await;
    }
    let attempts = (0..8).map(|i| {
        app.with_token(Method::POST, "/api/v1/webhooks", &admin.token)
            .json(&json!({"name": format!("race{i}"), "url": url, "events": ["test"]}))
            .send()
    });
    let mut statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 201, 409, 409, 409, 409, 409, 409]);
    let list: Value = app
        .with_token(Method::GET, "/api/v1/webhooks?per_page=100", &admin.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 50);
}
