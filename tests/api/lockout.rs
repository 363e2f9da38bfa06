//! Failed logins and lockout: no user enumeration, 423 with Retry-After, survives a restart,
//! admins unlock, and a per-IP limit.
use crate::helpers::{Fetch, assert_problem, spawn_app, spawn_app_with};
use pixee_pim::config::ServeArgs;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The body without the parts that legitimately differ per request.
fn comparable(mut body: Value) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.remove("timestamp");
        o.remove("instance");
    }
    body
}

async fn attempt(
    app: &crate::helpers::TestApp,
    email: &str,
    password: &str,
) -> (u16, Option<String>, Value) {
    let res = app.login_raw(email, password).await;
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, comparable(res.json().await.unwrap()))
}

#[actix_web::test]
async fn known_and_unknown_emails_get_identical_answers_through_the_lock() {
    let app = spawn_app().await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..7 {
        known.push(attempt(&app, &app.admin_email, "wrong password!").await);
        unknown.push(attempt(&app, "nobody@example.com", "wrong password!").await);
    }
    let statuses: Vec<u16> = known.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 423, 423]);
    assert_eq!(
        known, unknown,
        "status, Retry-After and body must not reveal which email exists"
    );
    assert_eq!(known[0].2["error_code"], "INVALID_CREDENTIALS");
    assert_eq!(known[5].2["error_code"], "ACCOUNT_LOCKED");
}

#[actix_web::test]
async fn a_locked_account_refuses_even_the_right_password_until_the_lock_ends() {
    let app = spawn_app().await;
    app.fail_logins(&app.admin_email, "wrong password!", 5)
        .await;
    let res = app.login_raw(&app.admin_email, &app.admin_password).await;
    assert_eq!(res.headers()["retry-after"], "900");
    assert_problem(res, 423, "ACCOUNT_LOCKED").await;
    app.clock.advance(time::Duration::minutes(10));
    let res = app.login_raw(&app.admin_email, "wrong again!!").await;
    assert_eq!(
        res.headers()["retry-after"],
        "300",
        "failures during a lock do not extend it"
    );
    app.clock.advance(time::Duration::minutes(5));
    assert_eq!(
        app.login_raw(&app.admin_email, &app.admin_password)
            .await
            .status(),
        StatusCode::OK
    );
}

#[actix_web::test]
async fn a_success_resets_the_failure_count() {
    let app = spawn_app().await;
    app.fail_logins(&app.admin_email, "wrong password!", 4)
        .await;
    app.admin().await;
    for _ in 0..4 {
        assert_eq!(
            app.login_raw(&app.admin_email, "wrong password!")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login_raw(&app.admin_email, &app.admin_password)
            .await
            .status(),
        StatusCode::OK
    );
}

#[actix_web::test]
async fn locking_cuts_off_the_users_sessions_at_once() {
    let app = spawn_app().await;
    let s = app.admin().await;
    app.fail_logins(&app.admin_email, "wrong password!", 5)
        .await;
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &s.token)
            .status_code()
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&s.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[actix_web::test]
async fn a_lock_survives_a_restart() {
    let app = spawn_app().await;
    app.fail_logins(&app.admin_email, "wrong password!", 5)
        .await;
    let app = app.restart().await;
    assert_problem(
        app.login_raw(&app.admin_email, &app.admin_password).await,
        423,
        "ACCOUNT_LOCKED",
    )
    .await;
}

#[actix_web::test]
async fn an_admin_unlocks_a_locked_member_and_it_is_audited() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app
        .create_user(&admin.token, "ed@example.com", "editor")
        .await;
    app.fail_logins("ed@example.com", "wrong password!", 5)
        .await;
    assert_eq!(
        app.login_raw("ed@example.com", "a fine password 1")
            .await
            .status(),
        StatusCode::LOCKED
    );
    let users: Value = app
        .with_token(Method::GET, "/api/v1/users", &admin.token)
        .json_value()
        .await;
    let listed = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "ed@example.com")
        .unwrap()
        .clone();
    assert!(listed["locked_until"].is_string(), "{listed}");
    let res = app
        .with_token(
            Method::POST,
            &format!("/api/v1/users/{}/unlock", user["id"].as_str().unwrap()),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.login_raw("ed@example.com", "a fine password 1")
            .await
            .status(),
        StatusCode::OK
    );
    let audit: Value = app
        .with_token(
            Method::GET,
            "/api/v1/audit-events?per_page=100",
            &admin.token,
        )
        .json_value()
        .await;
    let kinds: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for kind in [
        "login.failure",
        "account.locked",
        "account.unlocked",
        "login.success",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let text = audit.to_string();
    assert!(
        !text.contains("wrong password!") && !text.contains("a fine password 1"),
        "no secret in the audit log"
    );
}

#[actix_web::test]
async fn concurrent_failures_across_the_threshold_lock_exactly_once() {
    let app = spawn_app().await;
    let attempts: Vec<_> = (0..12)
        .map(|_| app.login_raw(&app.admin_email, "wrong password!"))
        .collect();
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    // Exactly the first five failures count (401, the fifth sets the lock); every other one
    // lands during the lock (423), whichever way the 12 interleave.
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 423).count(),
        7,
        "{statuses:?}"
    );
    let admin_locked = app.login_raw(&app.admin_email, &app.admin_password).await;
    assert_eq!(admin_locked.status(), StatusCode::LOCKED);
    let events = app
        .app_auth
        .store
        .audit_page(
            pixee_pim::domain::TenantId::parse(&app.default_tenant_id).unwrap(),
            0,
            100,
        )
        .unwrap()
        .0;
    assert_eq!(
        events.iter().filter(|e| e.kind == "account.locked").count(),
        1
    );
}

#[actix_web::test]
async fn one_address_is_limited_in_login_attempts() {
    let app = spawn_app_with(ServeArgs {
        login_rate_per_minute: Some(3),
        ..Default::default()
    })
    .await;
    for i in 0..3 {
        let email = format!("user{i}@example.com");
        assert_eq!(
            app.login_raw(&email, "wrong password!").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let res = app.login_raw("other@example.com", "wrong password!").await;
    assert!(res.headers().contains_key("retry-after"));
    let body = assert_problem(res, 429, "RATE_LIMIT_EXCEEDED").await;
    assert!(body["retry_after_seconds"].as_u64().is_some());
}

/// Records that no longer matter are swept; a lock in force and failures inside the window stay.
#[actix_web::test]
async fn the_sweep_forgets_spent_lockout_records_and_keeps_live_ones() {
    use pixee_pim::auth::lockout::LockoutState;
    let app = spawn_app().await;
    let store = &app.app_auth.store;
    let state = |email: &str| store.lockout_get::<LockoutState>(email).unwrap();
    app.fail_logins("nobody@example.com", "wrong password!", 2)
        .await;
    app.fail_logins(&app.admin_email, "wrong password!", 5)
        .await;
    app.clock.advance(time::Duration::minutes(10));
    app.fail_logins("recent@example.com", "wrong password!", 1)
        .await;
    app.fail_logins("locked-later@example.com", "wrong password!", 5)
        .await;
    assert_eq!(
        app.app_auth.sweep_lockouts().unwrap(),
        0,
        "nothing is spent yet"
    );

    // 16 minutes in: the first failures left the window and the admin's lock ran out.
    app.clock.advance(time::Duration::minutes(6));
    assert_eq!(app.app_auth.sweep_lockouts().unwrap(), 2);
    assert!(state("nobody@example.com").is_none());
    assert!(state(&app.admin_email).is_none());
    assert_eq!(state("recent@example.com").unwrap().recent.len(), 1);
    assert!(
        app.login_raw("locked-later@example.com", "any password 1")
            .await
            .status()
            == StatusCode::LOCKED,
        "a lock in force survives the sweep"
    );
    // The admin logs in again: the sweep changed no answer.
    assert_eq!(
        app.login_raw(&app.admin_email, &app.admin_password)
            .await
            .status(),
        StatusCode::OK
    );
}
