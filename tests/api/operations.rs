//! Operating the server (SPEC §11): readiness, the health check command, and the commands for
//! an admin locked out of the page (those are in binary.rs).
use crate::helpers::{assert_problem, spawn_app};
use serde_json::Value;

#[actix_web::test]
async fn readyz_names_each_part_and_answers_503_when_one_stops() {
    let app = spawn_app().await;
    let res = app
        .req(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    for part in ["store", "search_index", "job_runner", "webhook_engine"] {
        assert_eq!(body["checks"][part], "ok", "{body}");
    }
    // The job runner stops (as at shutdown): not ready, and the answer says why; liveness stays.
    let jobs = app.jobs.clone();
    actix_web::rt::task::spawn_blocking(move || jobs.shutdown())
        .await
        .unwrap();
    let res = app
        .req(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, 503, "SERVICE_UNAVAILABLE").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("job_runner"), "{detail}");
    assert!(!detail.contains("search_index"), "{detail}");
    let live = app
        .req(reqwest::Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}

#[actix_web::test]
async fn the_healthcheck_command_exits_0_when_ready_and_1_otherwise() {
    use crate::binary::{cli, serve};
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[], &[]).await;
    let out = cli(dir.path())
        .args(["healthcheck", "--url", &server.base])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ready");
    let base = server.base.clone();
    drop(server);
    let out = cli(dir.path())
        .args(["healthcheck", "--url", &base])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "nobody answers");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("/readyz"), "{said}");
}

/// Every 401 says how to authenticate (RFC 9110 `WWW-Authenticate`): `Bearer` (RFC 6750) for
/// tokens, `ApiKey` for keys, both when the request carried neither; the partner surfaces too.
#[actix_web::test]
async fn every_401_carries_a_www_authenticate_challenge() {
    use reqwest::Method;
    let app = spawn_app().await;
    let challenge = |res: &reqwest::Response| {
        assert_eq!(res.status(), 401);
        res.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let res = app
        .req(Method::GET, "/api/v1/products")
        .send()
        .await
        .unwrap();
    let c = challenge(&res);
    assert!(
        c.starts_with("Bearer realm=\"pixee-pim\"") && c.contains("ApiKey"),
        "{c}"
    );
    let res = app
        .with_key(
            Method::GET,
            "/api/v1/products",
            "pm_live_0123456789abcdefghijklmnopqrstuvwxyzAB",
        )
        .send()
        .await
        .unwrap();
    let c = challenge(&res);
    assert!(c.starts_with("ApiKey realm=\"pixee-pim\""), "{c}");
    let res = app
        .with_token(Method::GET, "/api/v1/products", "not.a.token")
        .send()
        .await
        .unwrap();
    let c = challenge(&res);
    assert!(c.contains("error=\"invalid_token\""), "{c}");
    let res = app
        .login_raw("admin@example.com", "wrong password at all")
        .await;
    assert!(challenge(&res).starts_with("Bearer"));
    for path in ["/api/v1/ext/products", "/api/v1/windev/products"] {
        let res = app.req(Method::GET, path).send().await.unwrap();
        assert!(!challenge(&res).is_empty(), "{path}");
    }
    // Other errors carry none.
    let res = app
        .req(Method::GET, "/api/v1/nothing-here")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("www-authenticate").is_none());
}

/// The value of the series `line_start` (name and labels exactly as exposed), or 0 when absent.
fn series(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `/metrics` (SPEC §11) on a server of its own (the counters are per process): requests by
/// route template and status, credential checks, logins and lockouts by outcome, rate-limit
/// refusals, latency histograms, the state gauges; never a raw path, a key, a token or an email.
#[actix_web::test]
async fn metrics_count_by_route_template_and_outcome_and_leak_nothing() {
    use crate::binary::{create_key, insecure_client, login, serve};
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--lockout-threshold", "2", "--key-reads-per-minute", "3"],
        &[("PIXEE_ADMIN_PASSWORD", "metrics admin pass 3")],
    )
    .await;
    let client = insecure_client();
    let url = |p: &str| format!("{}{p}", server.base);
    let token = login(&server.base, "admin@localhost", "metrics admin pass 3").await;
    let key: Value = create_key(&server.base, &token, "scraped").await;
    let raw = key["key"].as_str().unwrap();
    let unknown = "0192f0c4-1c7d-7a00-8000-00000000abcd";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = client
            .get(url(&format!("/api/v1/products/{unknown}")))
            .header("X-API-Key", raw)
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 404, 429], "three reads a minute");
    let bad = client
        .get(url("/api/v1/products"))
        .header("X-API-Key", "pm_live_notakeyatallnotakeyatallnotakey")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let me = client
        .get(url("/api/v1/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let victim = "locked.out@example.com";
    for _ in 0..3 {
        client
            .post(url("/api/v1/auth/login"))
            .json(&serde_json::json!({"email": victim, "password": "wrong password 1"}))
            .send()
            .await
            .unwrap();
    }
    let scrape = client.get(url("/metrics")).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(
        crate::helpers::header_text(&scrape, "content-type")
            .starts_with("text/plain; version=0.0.4"),
    );
    let text = scrape.text().await.unwrap();
    let products = r#"route="/api/v1/products/{id}""#;
    assert_eq!(
        series(
            &text,
            &format!(r#"pixee_http_requests_total{{method="GET",{products},status="404"}}"#)
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            &format!(r#"pixee_http_requests_total{{method="GET",{products},status="429"}}"#)
        ),
        1.0
    );
    // Latency by area of the API and read or write: the four reads of one product and the
    // list refused to the bad key (no other product request was made).
    let area = r#"area="products",access="read""#;
    assert_eq!(
        series(
            &text,
            &format!("pixee_http_request_duration_seconds_count{{{area}}}")
        ),
        5.0
    );
    assert_eq!(
        series(
            &text,
            &format!(r#"pixee_http_request_duration_seconds_bucket{{{area},le="+Inf"}}"#)
        ),
        5.0
    );
    assert!(
        text.contains(r#"pixee_http_request_duration_seconds_count{area="auth",access="write"}"#)
    );
    let outcome =
        |name: &str, outcome: &str| series(&text, &format!(r#"{name}{{outcome="{outcome}"}}"#));
    assert_eq!(outcome("pixee_api_key_verifications_total", "ok"), 3.0);
    assert_eq!(
        outcome("pixee_api_key_verifications_total", "rate_limited"),
        1.0
    );
    assert_eq!(outcome("pixee_api_key_verifications_total", "invalid"), 1.0);
    // The key creation and /me: two session requests.
    assert!(outcome("pixee_access_token_verifications_total", "ok") >= 2.0);
    assert_eq!(outcome("pixee_logins_total", "ok"), 1.0);
    assert_eq!(outcome("pixee_logins_total", "invalid_credentials"), 2.0);
    assert_eq!(outcome("pixee_logins_total", "locked"), 1.0);
    assert_eq!(series(&text, "pixee_lockouts_total"), 1.0);
    assert_eq!(
        series(
            &text,
            r#"pixee_rate_limit_refusals_total{limit="key_reads"}"#
        ),
        1.0
    );
    assert_eq!(series(&text, r#"pixee_jobs{state="pending"}"#), 0.0);
    assert!(
        text.contains(r#"pixee_jobs{state="completed"} 0"#),
        "{text}"
    );
    assert!(series(&text, "pixee_store_size_bytes") > 0.0);
    assert!(text.contains("pixee_argon2_queue_depth 0"));
    assert!(
        series(
            &text,
            r#"pixee_cache_lookups_total{cache="api_keys",result="hit"}"#
        ) >= 1.0
    );
    let ratio = series(&text, r#"pixee_cache_hit_ratio{cache="api_keys"}"#);
    assert!(ratio > 0.0 && ratio <= 1.0, "{ratio}");
    for secret in [
        unknown,
        raw,
        &raw[..16],
        victim,
        "admin@localhost",
        &token[..20],
    ] {
        assert!(!text.contains(secret), "{secret} leaked into the metrics");
    }
    // Unmatched paths share one label.
    client.get(url("/no/such/thing")).send().await.unwrap();
    let text = client
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(!text.contains("/no/such/thing"));
}

/// Without `--metrics-token` only this machine may scrape, and not through a proxy; with it,
/// only a request carrying it (loopback included).
#[actix_web::test]
async fn metrics_answer_loopback_or_the_token_only() {
    use crate::binary::{insecure_client, serve};
    let client = insecure_client();
    let dir = tempfile::tempdir().unwrap();
    let open = serve(dir.path(), &[], &[]).await;
    let metrics = format!("{}/metrics", open.base);
    let res = client.get(&metrics).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let proxied = client
        .get(&metrics)
        .header("X-Forwarded-For", "198.51.100.4")
        .send()
        .await
        .unwrap();
    assert_problem(proxied, 403, "PERMISSION_DENIED").await;
    for header in ["X-Real-IP", "Via"] {
        let res = client
            .get(&metrics)
            .header(header, "198.51.100.4")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{header}");
    }
    drop(open);
    let token = "scrape-me-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let guarded = serve(dir.path(), &[], &[("PIXEE_METRICS_TOKEN", token)]).await;
    let metrics = format!("{}/metrics", guarded.base);
    let res = client.get(&metrics).send().await.unwrap();
    assert_eq!(
        crate::helpers::header_text(&res, "www-authenticate"),
        r#"Bearer realm="pixee-pim", error="invalid_token""#
    );
    assert_problem(res, 401, "INVALID_TOKEN").await;
    let wrong = client
        .get(&metrics)
        .bearer_auth("scrape-me-0123456789abcdeX")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(&metrics)
        .bearer_auth(token)
        .header("X-Forwarded-For", "198.51.100.4")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(
        right
            .text()
            .await
            .unwrap()
            .contains("pixee_http_requests_total")
    );
    // A token too short to be one is refused at start.
    let out = crate::binary::cli(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PIXEE_METRICS_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics_token"));
    drop(guarded);
    // Turned off: not served.
    let dir = tempfile::tempdir().unwrap();
    let off = serve(dir.path(), &["--metrics", "false"], &[]).await;
    let res = client
        .get(format!("{}/metrics", off.base))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "NOT_FOUND").await;
}

/// `backup --online` (SPEC §11) copies the store as it stood at one instant while a client
/// keeps writing: the restored store passes `check`, and its products are exactly those after
/// some prefix of the writer's confirmed operations (creates, and deletes of earlier ones) —
/// at least every operation confirmed before the backup began, at most those begun before it
/// ended. A copy read tree by tree while writes go on fails both.
#[actix_web::test]
async fn an_online_backup_is_one_instant_of_a_store_being_written() {
    use crate::binary::{cli, insecure_client, serve};
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = cli(dir.path()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // A store large enough that the copy takes a while.
    run(&["tenant", "create", "--name", "default"]);
    run(&[
        "seed",
        "--tenant",
        "default",
        "--keys",
        "10",
        "--products",
        "20000",
    ]);
    let key = run(&[
        "key",
        "create",
        "--tenant",
        "default",
        "--name",
        "writer",
        "--scopes",
        "products:read,products:write,products:delete",
    ]);
    // The spool of a backup a crash interrupted goes at the next start.
    let stale = dir.path().join("backup-0123.spool");
    std::fs::write(&stale, b"half a copy").unwrap();
    let server = serve(
        dir.path(),
        &[
            "--key-writes-per-minute",
            "1000000",
            "--key-reads-per-minute",
            "1000000",
        ],
        &[("PIXEE_ADMIN_PASSWORD", "online backup pass 2")],
    )
    .await;
    assert!(!stale.exists());
    #[derive(Clone, Debug)]
    enum Op {
        Create(String),
        Delete(String),
    }
    let log: Arc<Mutex<Vec<Op>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (log, stop, base, key) = (log.clone(), stop.clone(), server.base.clone(), key.clone());
        actix_web::rt::spawn(async move {
            let client = insecure_client();
            let mut ids: Vec<(String, String)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                if i.is_multiple_of(4) && ids.len() > 2 {
                    let (id, ean) = ids.remove(ids.len() - 3);
                    let res = client
                        .delete(format!("{base}/api/v1/products/{id}"))
                        .header("X-API-Key", &key)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 204);
                    log.lock().unwrap().push(Op::Delete(ean));
                    continue;
                }
                let ean = pixee_pim::domain::Ean::from_body(290_000_000_000 + i)
                    .as_str()
                    .to_owned();
                let res = client
                    .post(format!("{base}/api/v1/products"))
                    .header("X-API-Key", &key)
                    .json(&serde_json::json!({"ean": ean, "name": format!("written {i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                let id = res.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                ids.push((id, ean.clone()));
                log.lock().unwrap().push(Op::Create(ean));
            }
        })
    };
    while log.lock().unwrap().len() < 20 {
        actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let confirmed_before = log.lock().unwrap().len();
    let file = dir.path().join("online.pixee-backup");
    let backup = {
        let mut cmd = cli(dir.path());
        cmd.args(["backup", "--online", "--out"]).arg(&file);
        actix_web::rt::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    };
    let confirmed_after = log.lock().unwrap().len();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    // The writer went on meanwhile: the backup did not stop the writes.
    while log.lock().unwrap().len() < confirmed_after + 10 {
        actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    let log = log.lock().unwrap().clone();
    assert!(
        confirmed_after > confirmed_before,
        "no write was confirmed while the backup ran ({confirmed_before} before and after)"
    );
    drop(server);
    // With no server on the data dir, --online says so and writes nothing.
    let nowhere = dir.path().join("nowhere.pixee-backup");
    let out = cli(dir.path())
        .args(["backup", "--online", "--out"])
        .arg(&nowhere)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the running server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!nowhere.exists());
    assert!(!dir.path().join("nowhere.pixee-backup.partial").exists());

    let restored = tempfile::tempdir().unwrap();
    let out = cli(restored.path())
        .args(["restore", "--from"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(restored.path()).arg("check").output().unwrap();
    assert!(
        out.status.success(),
        "check of the restored store: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let server = serve(restored.path(), &[], &[]).await;
    let client = insecure_client();
    let mut found = BTreeSet::new();
    for page in 1.. {
        let res: Value = client
            .get(format!(
                "{}/api/v1/products?search=written&per_page=100&page={page}",
                server.base
            ))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = res["items"].as_array().unwrap();
        found.extend(items.iter().map(|p| p["ean"].as_str().unwrap().to_owned()));
        if page >= res["pages"].as_u64().unwrap() {
            break;
        }
    }
    let mut state = BTreeSet::new();
    let mut instants = Vec::new();
    for (k, op) in std::iter::once(None)
        .chain(log.iter().map(Some))
        .enumerate()
    {
        match op {
            Some(Op::Create(ean)) => {
                state.insert(ean.clone());
            }
            Some(Op::Delete(ean)) => {
                state.remove(ean);
            }
            None => {}
        }
        if state == found {
            instants.push(k);
        }
    }
    assert!(
        instants
            .iter()
            .any(|&k| k >= confirmed_before && k <= confirmed_after + 1),
        "the restored products ({} of them) are no single instant between operation \
         {confirmed_before} and {}: matching instants {instants:?}",
        found.len(),
        confirmed_after + 1
    );
}
