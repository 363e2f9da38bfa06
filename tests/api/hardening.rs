//! The findings of the independent review (issue "hardening"), each pinned by a test that failed
//! before its fix: forwarded addresses, refresh races and their limit, lock races, retention,
//! what a tenant admin learns about other tenants' users, HEAD, and the small ones.
use crate::helpers::{
    Fetch, Session, TestApp, assert_problem, header_text, refresh_cookie, spawn_app,
    spawn_app_costing, spawn_app_with,
};
use pixee_pim::auth::lockout::LockoutState;
use pixee_pim::auth::passwords::HashCost;
use pixee_pim::config::{ServeArgs, Span};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::Duration;

const MEMBER_PASSWORD: &str = "a fine password 1";

/// Records per tree, from the full integrity check (which also proves nothing dangles).
fn tree_counts(app: &TestApp) -> std::collections::HashMap<&'static str, usize> {
    let report = app
        .app_auth
        .store
        .check_integrity::<LockoutState>()
        .expect("the store is whole");
    report.trees.into_iter().collect()
}

/// A failed login sent through a proxy chain: one `X-Forwarded-For` line per entry.
async fn login_via(app: &TestApp, lines: &[&str], email: &str) -> reqwest::Response {
    let mut rb = app
        .req(Method::POST, "/api/v1/auth/login")
        .json(&json!({"email": email, "password": "wrong password!"}));
    for line in lines {
        rb = rb.header("X-Forwarded-For", *line);
    }
    rb.send().await.expect("login request")
}

async fn audit(app: &TestApp, token: &str, query: &str) -> reqwest::Response {
    app.with_token(Method::GET, &format!("/api/v1/audit-events{query}"), token)
        .send()
        .await
        .expect("audit request")
}

#[actix_web::test]
async fn a_forged_forwarded_for_line_neither_dodges_the_login_limit_nor_reaches_the_audit_log() {
    let app = spawn_app_with(ServeArgs {
        trust_forwarded_for: Some(true),
        login_rate_per_minute: Some(3),
        ..Default::default()
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        // The client invents a new address each time; HAProxy appends its own line.
        let forged = format!("203.0.113.{i}");
        let res = login_via(&app, &[&forged, "198.51.100.7"], "nobody@example.com").await;
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses[..3], [401, 401, 401], "{statuses:?}");
    assert!(
        statuses[3..].iter().all(|s| *s == 429),
        "the proxy's address is the client: {statuses:?}"
    );

    let admin = app.admin().await;
    let events = audit(&app, &admin.token, "?scope=instance&per_page=100")
        .await
        .json::<Value>()
        .await
        .unwrap();
    let ips: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "login.failure")
        .filter_map(|e| e["ip"].as_str())
        .collect();
    assert_eq!(ips, ["198.51.100.7"; 3], "{events}");
}

#[actix_web::test]
async fn behind_two_proxies_the_client_is_the_second_entry_from_the_right() {
    let app = spawn_app_with(ServeArgs {
        trust_forwarded_for: Some(true),
        trusted_proxy_hops: Some(2),
        login_rate_per_minute: Some(2),
        ..Default::default()
    })
    .await;
    // client -> proxy 1 (appends the client) -> proxy 2 (appends proxy 1) -> us.
    for forged in ["203.0.113.1", "203.0.113.2"] {
        let line = format!("{forged}, 192.0.2.10, 10.0.0.1");
        let res = login_via(&app, &[&line], "nobody@example.com").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = login_via(
        &app,
        &["203.0.113.3, 192.0.2.10", "10.0.0.1"],
        "x@example.com",
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "entries count across lines"
    );
    let other = login_via(&app, &["192.0.2.11, 10.0.0.1"], "x@example.com").await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED, "another client");
}

#[actix_web::test]
async fn ipv6_clients_are_limited_per_64() {
    let app = spawn_app_with(ServeArgs {
        trust_forwarded_for: Some(true),
        login_rate_per_minute: Some(3),
        ..Default::default()
    })
    .await;
    for host in 1..=3 {
        let ip = format!("2001:db8:1:2::{host:x}");
        let res = login_via(&app, &[&ip], "nobody@example.com").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{ip}");
    }
    let same_64 = login_via(&app, &["2001:db8:1:2:ffff:1:2:3"], "nobody@example.com").await;
    assert_eq!(
        same_64.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a new address in the same /64 is the same subscriber"
    );
    let next_64 = login_via(&app, &["2001:db8:1:3::1"], "nobody@example.com").await;
    assert_eq!(next_64.status(), StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn a_refresh_race_leaves_the_winner_logged_in() {
    let app = spawn_app().await;
    for _ in 0..3 {
        let session = app.admin().await;
        let attempts: Vec<_> = (0..16).map(|_| app.refresh(&session.refresh)).collect();
        let answers = futures_util::future::join_all(attempts).await;
        let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 409),
            "the losers are told of the race, not logged out: {statuses:?}"
        );
        for loser in answers
            .iter()
            .filter(|r| r.status() == StatusCode::CONFLICT)
        {
            assert!(
                refresh_cookie(loser).is_none(),
                "a loser's answer must not clear the winner's cookie in the browser"
            );
        }
        let winner = answers
            .iter()
            .find(|r| r.status() == StatusCode::OK)
            .unwrap();
        let next = refresh_cookie(winner).expect("the winner's cookie");
        let again = app.refresh(&next).await;
        assert_eq!(
            again.status(),
            StatusCode::OK,
            "the winner's successor is alive"
        );
    }
}

#[actix_web::test]
async fn within_the_grace_period_a_reuse_is_refused_and_after_it_ends_the_session() {
    let app = spawn_app().await;
    let session = app.admin().await;
    let first = app.refresh(&session.refresh).await;
    let next = refresh_cookie(&first).unwrap();

    app.clock.advance(Duration::seconds(9));
    assert_problem(app.refresh(&session.refresh).await, 409, "CONFLICT").await;
    assert_eq!(app.status_of_me(&session.token).await, StatusCode::OK);

    app.clock.advance(Duration::seconds(2));
    assert_problem(app.refresh(&session.refresh).await, 401, "INVALID_TOKEN").await;
    assert_eq!(
        app.refresh(&next).await.status(),
        StatusCode::UNAUTHORIZED,
        "a reuse after the grace period ends the session"
    );
    assert_eq!(
        app.status_of_me(&session.token).await,
        StatusCode::UNAUTHORIZED
    );
}

#[actix_web::test]
async fn with_the_grace_period_off_any_reuse_ends_the_session() {
    let app = spawn_app_with(ServeArgs {
        refresh_reuse_grace_seconds: Some(0),
        ..Default::default()
    })
    .await;
    let session = app.admin().await;
    let next = refresh_cookie(&app.refresh(&session.refresh).await).unwrap();
    assert_problem(app.refresh(&session.refresh).await, 401, "INVALID_TOKEN").await;
    assert_eq!(app.refresh(&next).await.status(), StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn refreshes_are_limited_per_session_and_a_refused_one_spends_nothing() {
    let app = spawn_app_with(ServeArgs {
        refresh_rate_per_minute: Some(3),
        ..Default::default()
    })
    .await;
    let session = app.admin().await;
    let other = app.admin().await;
    let mut cookie = session.refresh.clone();
    for _ in 0..3 {
        let res = app.refresh(&cookie).await;
        assert_eq!(res.status(), StatusCode::OK);
        cookie = refresh_cookie(&res).unwrap();
    }
    let refused = app.refresh(&cookie).await;
    assert!(!header_text(&refused, "retry-after").is_empty());
    assert_problem(refused, 429, "RATE_LIMIT_EXCEEDED").await;
    assert_eq!(
        app.refresh(&other.refresh).await.status(),
        StatusCode::OK,
        "another session has its own window"
    );
    app.clock.advance(Duration::seconds(120));
    assert_eq!(
        app.refresh(&cookie).await.status(),
        StatusCode::OK,
        "the refused cookie was not spent"
    );
}

/// A viewer of the default tenant with the members' password.
async fn member(app: &TestApp, admin: &Session, email: &str) {
    app.create_user(&admin.token, email, "viewer").await;
}

#[actix_web::test]
async fn guesses_queued_behind_a_lock_are_never_verified() {
    let app = spawn_app_costing(ServeArgs::default(), HashCost::PRODUCTION).await;
    let threshold = 5;
    let pool = app.app_auth.passwords.parallel() as u64;
    for round in 0..3 {
        let email = format!("guessed{round}@example.com");
        let before = app.app_auth.passwords.verifications();
        let attempts: Vec<_> = (0..16)
            .map(|_| app.login_raw(&email, "wrong password!"))
            .collect();
        let statuses: Vec<u16> = futures_util::future::join_all(attempts)
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        let verified = app.app_auth.passwords.verifications() - before;
        assert!(
            verified <= threshold + pool,
            "{verified} verifications ran for a lock at {threshold} with {pool} hash slots: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 401).count(),
            5,
            "{statuses:?}"
        );
    }
}

#[actix_web::test]
async fn no_session_is_ever_born_while_a_lock_is_in_force() {
    let app = spawn_app_costing(ServeArgs::default(), HashCost::PRODUCTION).await;
    let admin = app.admin().await;
    let email = "racer@example.com";
    member(&app, &admin, email).await;
    for round in 0..4 {
        let mut attempts = Vec::new();
        for i in 0..16 {
            // Two right passwords among 14 guesses: whatever the order, one run of at least
            // five failures between successes locks the account.
            let password = if i % 8 == round % 8 {
                MEMBER_PASSWORD
            } else {
                "wrong password!"
            };
            attempts.push(app.login_raw(email, password));
        }
        let answers = futures_util::future::join_all(attempts).await;
        let mut tokens = Vec::new();
        for res in answers {
            if res.status() == StatusCode::OK {
                let body: Value = res.json().await.unwrap();
                tokens.push(body["access_token"].as_str().unwrap().to_owned());
            }
        }
        let locked = app
            .app_auth
            .store
            .lockout_get::<LockoutState>(email)
            .unwrap()
            .and_then(|s| s.locked_for(app.app_auth.now()))
            .is_some();
        assert!(locked, "round {round}: fourteen guesses lock the account");
        // Every session born before the lock died with it; one born during it would live.
        for token in &tokens {
            assert_eq!(
                app.status_of_me(token).await,
                StatusCode::UNAUTHORIZED,
                "round {round}: a session outlived the lock"
            );
        }
        assert_eq!(
            app.login_raw(email, MEMBER_PASSWORD).await.status(),
            StatusCode::LOCKED
        );
        app.app_auth.store.lockout_clear(email).unwrap();
    }
}

#[actix_web::test]
async fn the_sweep_drops_old_audit_events_ended_sessions_and_spent_tokens() {
    let app = spawn_app_with(ServeArgs {
        audit_retention: Some(Span::days(2)),
        session_retention: Some(Span::days(1)),
        spent_token_retention: Some(Span::days(1)),
        ..Default::default()
    })
    .await;
    // A: login, two refreshes, logout. B: login, one refresh, kept alive.
    let a = app.admin().await;
    let mut a_cookie = a.refresh.clone();
    for _ in 0..2 {
        a_cookie = refresh_cookie(&app.refresh(&a_cookie).await).unwrap();
    }
    app.with_token(Method::POST, "/api/v1/auth/logout", &a.token)
        .send()
        .await
        .unwrap();
    let b = app.admin().await;
    let b_cookie = refresh_cookie(&app.refresh(&b.refresh).await).unwrap();
    app.fail_logins("nobody@example.com", "wrong password!", 1)
        .await;
    let before = tree_counts(&app);

    app.clock.advance(Duration::hours(25));
    let b_cookie = refresh_cookie(&app.refresh(&b_cookie).await).unwrap();
    let report = app.app_auth.sweep().unwrap();
    let after = tree_counts(&app);
    assert_eq!(report.sessions, 1, "{report:?}: the logged-out session");
    assert_eq!(after["sessions"], before["sessions"] - 1);
    // A's logged-out session took its three tokens (two spent, one live); B lost the token it
    // spent a day ago and kept the one spent now and its live successor.
    assert_eq!(report.refresh_tokens, 4, "{report:?}");
    assert_eq!(after["refresh_tokens"], before["refresh_tokens"] + 1 - 4);
    assert_eq!(after["sessions_by_user"], 1, "only B is live");
    assert_eq!(
        app.refresh(&b_cookie).await.status(),
        StatusCode::OK,
        "B lives on"
    );
    assert_eq!(
        app.refresh(&a_cookie).await.status(),
        StatusCode::UNAUTHORIZED
    );

    app.clock.advance(Duration::hours(24));
    let report = app.app_auth.sweep().unwrap();
    assert!(
        report.audit_events >= 3,
        "{report:?}: the first day's events"
    );
    let admin = app.admin().await;
    let events: Value = audit(&app, &admin.token, "?per_page=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["total"], 1, "only today's login is left: {events}");
    let instance: Value = audit(&app, &admin.token, "?scope=instance")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(instance["total"], 0, "{instance}");
}

#[actix_web::test]
async fn the_live_index_holds_only_live_sessions_and_sessions_out_of_time_leave_it() {
    let app = spawn_app().await;
    let sessions = [app.admin().await, app.admin().await, app.admin().await];
    for s in &sessions[..2] {
        app.with_token(Method::POST, "/api/v1/auth/logout", &s.token)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        tree_counts(&app)["sessions_by_user"],
        1,
        "logouts leave the index"
    );

    app.clock.advance(Duration::days(8));
    app.app_auth.sweep().unwrap();
    assert_eq!(
        tree_counts(&app)["sessions_by_user"],
        0,
        "an idle session is marked ended and leaves the index"
    );
    // Whatever the sweep did, the store still checks whole after a restart.
    let app = app.restart().await;
    assert_eq!(tree_counts(&app)["sessions"], 3);
}

#[actix_web::test]
async fn superadmins_read_instance_events_and_tenant_admins_do_not() {
    let app = spawn_app().await;
    app.fail_logins("nobody@example.com", "wrong password!", 2)
        .await;
    let admin = app.admin().await;
    let events: Value = audit(&app, &admin.token, "?scope=instance")
        .await
        .json()
        .await
        .unwrap();
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{events}");
    assert!(
        items
            .iter()
            .all(|e| e["type"] == "login.failure" && e["actor"] == "nobody@example.com")
    );
    let tenant: Value = audit(&app, &admin.token, "").await.json().await.unwrap();
    assert!(
        !tenant.to_string().contains("nobody@example.com"),
        "the tenant's log holds no instance event"
    );

    let tenant_admin = "tenant-admin@example.com";
    app.with_token(Method::POST, "/api/v1/users", &admin.token)
        .json(&json!({"email": tenant_admin, "password": MEMBER_PASSWORD, "role": "admin"}))
        .send()
        .await
        .unwrap();
    let plain = app.login(tenant_admin, MEMBER_PASSWORD).await;
    assert_problem(
        audit(&app, &plain.token, "?scope=instance").await,
        403,
        "PERMISSION_DENIED",
    )
    .await;
    assert_eq!(audit(&app, &plain.token, "").await.status(), StatusCode::OK);
    assert_problem(
        audit(&app, &admin.token, "?scope=everything").await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
}

#[actix_web::test]
async fn adding_a_member_answers_the_membership_and_nothing_else_about_the_user() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let tenant: Value = app
        .with_token(Method::POST, "/api/v1/tenants", &admin.token)
        .json(&json!({"name": "shop two"}))
        .json_value()
        .await;
    let tenant_id = tenant["id"].as_str().unwrap();
    // A plain admin of the new tenant, and a locked user of the default tenant.
    member(&app, &admin, "owner@example.com").await;
    member(&app, &admin, "locked@example.com").await;
    let grant = |token: &str, email: &str, role: &str| {
        app.with_token(
            Method::POST,
            &format!("/api/v1/tenants/{tenant_id}/members"),
            token,
        )
        .json(&json!({"email": email, "role": role}))
    };
    assert_eq!(
        grant(&admin.token, "owner@example.com", "admin")
            .status_code()
            .await,
        201
    );
    let owner = app.login("owner@example.com", MEMBER_PASSWORD).await;
    app.fail_logins("locked@example.com", "wrong password!", 5)
        .await;

    let res = grant(&owner.token, &app.admin_email, "viewer")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["email", "role", "tenant_id", "user_id"], "{body}");
    assert_eq!(
        body["role"], "viewer",
        "the role granted, not the superadmin's effective one"
    );
    assert_eq!(body["tenant_id"], tenant_id);

    let locked: Value = grant(&owner.token, "locked@example.com", "editor")
        .json_value()
        .await;
    assert_eq!(locked["role"], "editor");
    assert!(locked.get("locked_until").is_none() && locked.get("superadmin").is_none());
}

#[actix_web::test]
async fn head_answers_every_get_route_as_get_would_without_a_body() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(&["products:read"]).await;
    for path in [
        "/healthz",
        "/api/v1/openapi.json",
        "/settings/",
        "/settings/settings.js",
    ] {
        let get = app.req(Method::GET, path).send().await.unwrap();
        let head = app.req(Method::HEAD, path).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "HEAD {path}");
        for name in ["content-type", "content-length", "content-security-policy"] {
            assert_eq!(
                header_text(&head, name),
                header_text(&get, name),
                "HEAD {path}: {name}"
            );
        }
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }

    let get = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap();
    let head = app
        .with_key(Method::HEAD, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let remaining = |r: &reqwest::Response| {
        header_text(r, "x-ratelimit-remaining")
            .parse::<u32>()
            .unwrap()
    };
    assert_eq!(
        remaining(&head),
        remaining(&get) - 1,
        "HEAD counts as a read"
    );
    assert_eq!(
        header_text(&head, "content-length"),
        header_text(&get, "content-length")
    );
    assert!(head.bytes().await.unwrap().is_empty());
    assert_eq!(
        app.req(Method::HEAD, "/api/v1/products")
            .status_code()
            .await,
        StatusCode::UNAUTHORIZED
    );
}

#[actix_web::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let res = app
            .req(Method::GET, "/api/v1/auth/me")
            .header("Authorization", format!("{scheme} {}", admin.token))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{scheme}");
    }
    let basic = app
        .req(Method::GET, "/api/v1/auth/me")
        .header("Authorization", format!("Basic {}", admin.token))
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401, "INVALID_TOKEN").await;
}

#[actix_web::test]
async fn names_refuse_invisible_formatting_characters() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    for name in ["ci\u{202E}yek", "zero\u{200B}width", "\u{2066}isolate"] {
        let key = app
            .create_key_raw(
                &admin.token,
                json!({"name": name, "scopes": ["products:read"]}),
            )
            .await;
        let body = assert_problem(key, 422, "VALIDATION_ERROR").await;
        assert_eq!(body["errors"][0]["field"], "name", "{body}");
        let tenant = app
            .with_token(Method::POST, "/api/v1/tenants", &admin.token)
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap();
        assert_problem(tenant, 422, "VALIDATION_ERROR").await;
    }
    let fine = app
        .create_key_raw(
            &admin.token,
            json!({"name": "Crème brûlée sync", "scopes": ["products:read"]}),
        )
        .await;
    assert_eq!(fine.status(), StatusCode::CREATED);
}

#[actix_web::test]
async fn a_session_out_of_time_long_ago_goes_in_one_sweep_with_its_tokens() {
    let app = spawn_app().await;
    let session = app.admin().await;
    app.refresh(&session.refresh).await;
    let before = tree_counts(&app);
    // Idle for 7 days it ended; 30 days after that it is past the session retention.
    app.clock.advance(Duration::days(40));
    let report = app.app_auth.sweep().unwrap();
    assert_eq!(
        (report.sessions, report.refresh_tokens),
        (1, 2),
        "one pass marks it ended and drops it with its tokens"
    );
    let after = tree_counts(&app);
    assert_eq!(after["sessions"], before["sessions"] - 1);
    assert_eq!(after["refresh_tokens"], before["refresh_tokens"] - 2);
}
