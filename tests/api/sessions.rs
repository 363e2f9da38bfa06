//! Sessions: login, the refresh cookie, rotation with reuse detection, and everything that
//! cuts access tokens off at once.
use crate::helpers::{Fetch, assert_problem, refresh_cookie, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[actix_web::test]
async fn login_returns_a_bearer_token_and_a_strict_refresh_cookie() {
    let app = spawn_app().await;
    let res = app.login_raw(&app.admin_email, &app.admin_password).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in [
        "refresh_token=",
        "Path=/api/v1/auth",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Max-Age=2592000",
    ] {
        assert!(cookie.contains(part), "cookie {cookie:?} lacks {part}");
    }
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
    let token = body["access_token"].as_str().unwrap();
    let me: Value = app
        .with_token(Method::GET, "/api/v1/auth/me", token)
        .json_value()
        .await;
    assert_eq!(me["auth"], "jwt");
    assert_eq!(me["user"]["email"], app.admin_email.as_str());
    assert_eq!(me["tenant"]["name"], "default");
    assert_eq!(me["role"], "admin");
}

#[actix_web::test]
async fn login_email_is_trimmed_and_case_insensitive_but_the_password_is_exact() {
    let app = spawn_app().await;
    let res = app
        .login_raw("  ADMIN@Example.com ", &app.admin_password)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .login_raw(&app.admin_email, &app.admin_password.to_uppercase())
        .await;
    assert_problem(res, 401, "INVALID_CREDENTIALS").await;
}

#[actix_web::test]
async fn refresh_needs_only_the_cookie_and_rotates_it() {
    let app = spawn_app().await;
    let session = app.admin().await;
    let res = app.refresh(&session.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let next = refresh_cookie(&res).unwrap();
    assert_ne!(next, session.refresh);
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &token)
            .status_code()
            .await,
        StatusCode::OK
    );
    assert_eq!(
        app.refresh(&next).await.status(),
        StatusCode::OK,
        "the successor works"
    );
}

#[actix_web::test]
async fn refresh_without_a_json_content_type_is_415() {
    let app = spawn_app().await;
    let session = app.admin().await;
    let res = app
        .req(Method::POST, "/api/v1/auth/refresh")
        .header("Cookie", format!("refresh_token={}", session.refresh))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .unwrap();
    assert_problem(res, 415, "UNSUPPORTED_MEDIA_TYPE").await;
    let empty = app
        .req(Method::POST, "/api/v1/auth/refresh")
        .header("Cookie", format!("refresh_token={}", session.refresh))
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::OK, "an empty JSON body is fine");
}

#[actix_web::test]
async fn refresh_without_or_with_a_bad_cookie_is_invalid_token() {
    let app = spawn_app().await;
    let none = app
        .req(Method::POST, "/api/v1/auth/refresh")
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(none, 401, "INVALID_TOKEN").await;
    assert_problem(app.refresh("garbage").await, 401, "INVALID_TOKEN").await;
    assert_problem(app.refresh(&"a".repeat(43)).await, 401, "INVALID_TOKEN").await;
}

#[actix_web::test]
async fn reusing_a_spent_refresh_token_ends_the_whole_session() {
    let app = spawn_app().await;
    let session = app.admin().await;
    let first = app.refresh(&session.refresh).await;
    let next = refresh_cookie(&first).unwrap();
    let token = first.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Past the grace period that spares a refresh race (hardening.rs pins the period itself).
    app.clock.advance(time::Duration::seconds(11));
    let reuse = app.refresh(&session.refresh).await;
    assert_problem(reuse, 401, "INVALID_TOKEN").await;

    assert_eq!(
        app.refresh(&next).await.status(),
        StatusCode::UNAUTHORIZED,
        "the successor died too"
    );
    for t in [&token, &session.token] {
        let res = app
            .with_token(Method::GET, "/api/v1/auth/me", t)
            .send()
            .await
            .unwrap();
        assert_problem(res, 401, "INVALID_TOKEN").await;
    }
    let admin = app.admin().await;
    let audit: Value = app
        .with_token(Method::GET, "/api/v1/audit-events", &admin.token)
        .json_value()
        .await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "refresh_token.reused"),
        "{audit}"
    );
}

#[actix_web::test]
async fn logout_ends_the_session_and_its_access_token_at_once() {
    let app = spawn_app().await;
    let session = app.admin().await;
    let other = app.admin().await;
    let res = app
        .with_token(Method::POST, "/api/v1/auth/logout", &session.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cleared = res.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &session.token)
            .status_code()
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&session.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &other.token)
            .status_code()
            .await,
        StatusCode::OK,
        "other sessions live on"
    );
}

#[actix_web::test]
async fn logout_all_ends_every_session_of_the_user() {
    let app = spawn_app().await;
    let a = app.admin().await;
    let b = app.admin().await;
    let res = app
        .with_token(Method::POST, "/api/v1/auth/logout-all", &a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for s in [&a, &b] {
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
}

#[actix_web::test]
async fn a_password_change_cuts_off_every_earlier_token_but_keeps_the_callers_session() {
    let app = spawn_app().await;
    let mine = app.admin().await;
    let other = app.admin().await;
    let new_password = "a brand new password";
    let res = app
        .with_token(Method::POST, "/api/v1/auth/password", &mine.token)
        .json(&json!({"current_password": app.admin_password, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let fresh = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &mine.token)
            .status_code()
            .await,
        StatusCode::UNAUTHORIZED,
        "the caller's old token"
    );
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &other.token)
            .status_code()
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&other.refresh).await.status(),
        StatusCode::UNAUTHORIZED,
        "other sessions ended"
    );
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &fresh)
            .status_code()
            .await,
        StatusCode::OK
    );
    assert_eq!(
        app.refresh(&mine.refresh).await.status(),
        StatusCode::OK,
        "the caller's session continues"
    );
    assert_problem(
        app.login_raw(&app.admin_email, &app.admin_password).await,
        401,
        "INVALID_CREDENTIALS",
    )
    .await;
    assert_eq!(
        app.login_raw(&app.admin_email, new_password).await.status(),
        StatusCode::OK
    );
}

#[actix_web::test]
async fn a_password_change_needs_the_current_password_and_a_good_new_one() {
    let app = spawn_app().await;
    let s = app.admin().await;
    let wrong = app
        .with_token(Method::POST, "/api/v1/auth/password", &s.token)
        .json(
            &json!({"current_password": "not it at all", "new_password": "another fine password"}),
        )
        .send()
        .await
        .unwrap();
    assert_problem(wrong, 422, "VALIDATION_ERROR").await;
    for weak in ["short", "password123"] {
        let res = app
            .with_token(Method::POST, "/api/v1/auth/password", &s.token)
            .json(&json!({"current_password": app.admin_password, "new_password": weak}))
            .send()
            .await
            .unwrap();
        let body = assert_problem(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(body["errors"][0]["field"], "new_password");
    }
}

#[actix_web::test]
async fn access_tokens_expire_after_fifteen_minutes_plus_skew() {
    let app = spawn_app().await;
    let s = app.admin().await;
    app.clock.advance(time::Duration::seconds(900 + 59));
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &s.token)
            .status_code()
            .await,
        StatusCode::OK
    );
    app.clock.advance(time::Duration::seconds(2));
    let res = app
        .with_token(Method::GET, "/api/v1/auth/me", &s.token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "INVALID_TOKEN").await;
    assert_eq!(
        app.refresh(&s.refresh).await.status(),
        StatusCode::OK,
        "refresh still works"
    );
}

#[actix_web::test]
async fn sessions_end_after_seven_idle_days_and_thirty_days_in_all() {
    let app = spawn_app().await;
    let idle = app.admin().await;
    app.clock.advance(time::Duration::days(7));
    assert_eq!(
        app.refresh(&idle.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let mut s = app.admin().await;
    for days in [6, 6, 6, 6, 5] {
        app.clock.advance(time::Duration::days(days));
        let res = app.refresh(&s.refresh).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "refreshed every few days, alive until day 30"
        );
        s.refresh = refresh_cookie(&res).unwrap();
    }
    app.clock.advance(time::Duration::days(1));
    assert_eq!(
        app.refresh(&s.refresh).await.status(),
        StatusCode::UNAUTHORIZED,
        "30 days after login"
    );
}

#[actix_web::test]
async fn sessions_can_be_listed_and_ended_one_by_one() {
    let app = spawn_app().await;
    let mine = app.admin().await;
    let other = app.admin().await;
    let list: Value = app
        .with_token(Method::GET, "/api/v1/auth/sessions", &mine.token)
        .json_value()
        .await;
    assert_eq!(list["total"], 2);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.iter().filter(|s| s["current"] == true).count(), 1);
    let other_id = items.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = serde_json::to_string(&list).unwrap();
    assert!(!text.contains(&mine.refresh) && !text.contains(&mine.token));
    let res = app
        .with_token(
            Method::DELETE,
            &format!("/api/v1/auth/sessions/{other_id}"),
            &mine.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.with_token(Method::GET, "/api/v1/auth/me", &other.token)
            .status_code()
            .await,
        StatusCode::UNAUTHORIZED
    );
    let again = app
        .with_token(
            Method::DELETE,
            &format!("/api/v1/auth/sessions/{other_id}"),
            &mine.token,
        )
        .send()
        .await
        .unwrap();
    assert_problem(again, 404, "NOT_FOUND").await;
}

#[actix_web::test]
async fn session_routes_refuse_api_keys() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(&["products:read"]).await;
    for (method, path) in [
        (Method::POST, "/api/v1/auth/logout"),
        (Method::GET, "/api/v1/auth/sessions"),
        (Method::POST, "/api/v1/auth/logout-all"),
    ] {
        let res = app.with_key(method, path, &key.raw).send().await.unwrap();
        assert_problem(res, 403, "PERMISSION_DENIED").await;
    }
}

#[actix_web::test]
async fn forged_tokens_are_refused() {
    let app = spawn_app().await;
    let s = app.admin().await;
    let mut parts: Vec<String> = s.token.split('.').map(str::to_owned).collect();
    parts[2] = parts[2].chars().rev().collect();
    let tampered = parts.join(".");
    for token in [tampered.as_str(), "eyJhbGciOiJub25lIn0.e30.", "nonsense"] {
        let res = app
            .with_token(Method::GET, "/api/v1/auth/me", token)
            .send()
            .await
            .unwrap();
        assert_problem(res, 401, "INVALID_TOKEN").await;
    }
    let basic = app
        .req(Method::GET, "/api/v1/auth/me")
        .header("Authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401, "INVALID_TOKEN").await;
}

#[actix_web::test]
async fn a_login_whose_password_check_raced_a_password_change_gets_no_session() {
    let app = spawn_app().await;
    let store = &app.app_auth.store;
    let user = store.user_by_email(&app.admin_email).unwrap().unwrap();
    // The login read the user (version, hash), then the password changed before it stored a
    // session: the store refuses the stale session.
    let now = app.app_auth.now();
    store
        .change_credentials(
            user.id,
            Some("$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"),
            None,
            now,
        )
        .unwrap();
    let session = pixee_pim::store::SessionRecord {
        id: pixee_pim::domain::SessionId::generate(),
        user: user.id,
        created_at: now,
        last_seen_at: now,
        expires_at: now + time::Duration::days(30),
        revoked_at: None,
        ip: None,
        user_agent: None,
        user_version: user.token_version,
    };
    let refresh = pixee_pim::store::RefreshRecord {
        session: session.id,
        parent: None,
        issued_at: now,
        spent_at: None,
    };
    let result = store.create_session(&session, &user.password_hash, &[7u8; 32], &refresh);
    assert!(
        matches!(result, Err(pixee_pim::store::StoreError::Conflict(_))),
        "{result:?}"
    );
    assert!(
        store.session(session.id).unwrap().is_none(),
        "nothing half-written"
    );
}

#[actix_web::test]
async fn missing_credentials_are_401_even_with_a_malformed_tenant_header() {
    let app = spawn_app().await;
    let res = app
        .req(Method::GET, "/api/v1/products")
        .header("X-Tenant-ID", "nonsense")
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "AUTHENTICATION_REQUIRED").await;
}
