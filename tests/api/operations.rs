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
