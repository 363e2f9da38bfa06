//! API keys: format, storage, listing, rotation and revocation that bite on the next request.
use crate::helpers::{Cred, Fetch, TestApp, assert_problem, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[actix_web::test]
async fn a_created_key_matches_the_format_and_works_once_shown() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let res = app
        .create_key_raw(
            &admin.token,
            json!({"name": "ci", "scopes": ["products:read"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    let raw = body["key"].as_str().unwrap();
    assert!(raw.starts_with("pm_live_") && raw.len() == 46, "{raw}");
    assert_eq!(body["environment"], "live");
    assert_eq!(body["scopes"], json!(["products:read"]));
    assert_eq!(body["hint"], format!("{}…{}", &raw[..12], &raw[42..]));
    assert_eq!(body["created_by"], format!("user:{}", app.admin_email));
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", raw)
            .await,
        StatusCode::OK
    );
}

#[actix_web::test]
async fn lists_and_single_reads_never_contain_the_key() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let list = app
        .with_token(Method::GET, "/api/v1/api-keys", &admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    let list_text = list.text().await.unwrap();
    let one = app
        .with_token(
            Method::GET,
            &format!("/api/v1/api-keys/{}", key.id),
            &admin.token,
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [&list_text, &one] {
        assert!(!text.contains(&key.raw), "the raw key leaked: {text}");
        assert!(!text.contains(&key.raw[12..40]), "part of the key leaked");
    }
    let list: Value = serde_json::from_str(&list_text).unwrap();
    assert_eq!(list["total"], 1);
    assert!(list["items"][0].get("key").is_none());
}

#[actix_web::test]
async fn invalid_key_requests_are_refused_with_field_errors() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let cases = [
        (json!({"name": "x", "scopes": ["products:admin"]}), "scopes"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "", "scopes": ["products:read"]}), "name"),
        (
            json!({"name": "x", "scopes": ["products:read"], "expires_at": "2020-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"name": "x", "scopes": ["products:read"], "expires_at": "2099-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ];
    for (body, field) in cases {
        let res = app.create_key_raw(&admin.token, body.clone()).await;
        let problem = assert_problem(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    let bad_env = app
        .create_key_raw(
            &admin.token,
            json!({"name": "x", "scopes": ["products:read"], "environment": "prod"}),
        )
        .await;
    assert_problem(bad_env, 422, "VALIDATION_ERROR").await;
}

#[actix_web::test]
async fn a_rotated_key_is_refused_on_the_next_request_and_the_new_one_works() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let res = app.rotate(&key.id, Cred::Token(&admin.token)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let new_raw = body["key"].as_str().unwrap();
    assert_eq!(body["id"], key.id.as_str(), "rotation keeps the id");
    assert_eq!(body["name"], "test key");
    assert_ne!(new_raw, key.raw);
    let old = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap();
    assert_problem(old, 401, "INVALID_API_KEY").await;
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", new_raw)
            .await,
        StatusCode::OK
    );
}

#[actix_web::test]
async fn a_key_can_rotate_itself_without_scopes_but_not_another_key() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let other = app
        .create_key(&admin.token, &["products:read", "products:write"], "live")
        .await;
    let refused = app.rotate(&other.id, Cred::Key(&key.raw)).await;
    assert_problem(refused, 403, "PERMISSION_DENIED").await;
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &other.raw)
            .await,
        StatusCode::OK
    );

    let res = app.rotate(&key.id, Cred::Key(&key.raw)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let new_raw = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &key.raw)
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &new_raw)
            .await,
        StatusCode::OK
    );
}

#[actix_web::test]
async fn a_grace_period_keeps_the_old_key_alive_until_it_ends() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let res = app.rotate_with_grace(&key.id, &admin.token, 60).await;
    assert_eq!(res.status(), StatusCode::OK);
    let new_raw = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &key.raw)
            .await,
        StatusCode::OK
    );
    app.clock.advance(time::Duration::seconds(61));
    let admin = app.admin().await;
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &key.raw)
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &new_raw)
            .await,
        StatusCode::OK
    );
    let too_long = app.rotate_with_grace(&key.id, &admin.token, 86_401).await;
    assert_problem(too_long, 422, "VALIDATION_ERROR").await;
}

#[actix_web::test]
async fn a_revoked_key_is_refused_at_once_stays_listed_and_cannot_be_rotated() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let res = app
        .with_token(
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", key.id),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let refused = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap();
    assert_problem(refused, 401, "INVALID_API_KEY").await;
    let one: Value = app
        .with_token(
            Method::GET,
            &format!("/api/v1/api-keys/{}", key.id),
            &admin.token,
        )
        .json_value()
        .await;
    assert!(one["revoked_at"].is_string());
    let rotate = app.rotate(&key.id, Cred::Token(&admin.token)).await;
    assert_problem(rotate, 409, "CONFLICT").await;
}

#[actix_web::test]
async fn an_expired_key_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let expires = (crate::helpers::start_time() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let res = app
        .create_key_raw(
            &admin.token,
            json!({"name": "short", "scopes": ["products:read"], "expires_at": expires}),
        )
        .await;
    let raw = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &raw)
            .await,
        StatusCode::OK
    );
    app.clock.advance(time::Duration::days(1));
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &raw)
            .await,
        StatusCode::UNAUTHORIZED
    );
}

/// A server whose per-key read limit is far above what 64 readers send in a test (the test
/// clock stands still, so the default 1000 a minute would otherwise run out mid-test on a fast
/// machine and the readers would see 429 rather than the status under test).
async fn spawn_unthrottled() -> TestApp {
    crate::helpers::spawn_app_with(pixee_pim::config::ServeArgs {
        key_reads_per_minute: Some(1_000_000),
        ..Default::default()
    })
    .await
}

/// 64 readers use `raw` in a loop while `action` runs; each request notes when it was sent.
/// Returns (requests sent before the action's response arrived that succeeded, statuses of the
/// requests sent after it).
async fn hammer_while<F, Fut>(app: &TestApp, raw: &str, action: F) -> (usize, Vec<StatusCode>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..64 {
        let (client, url, raw, stop) = (
            app.client.clone(),
            app.url("/api/v1/auth/me"),
            raw.to_owned(),
            stop.clone(),
        );
        readers.push(actix_web::rt::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let res = client.get(&url).header("X-API-Key", &raw).send().await;
                seen.push((sent, res.expect("request").status()));
            }
            seen
        }));
    }
    actix_web::rt::time::sleep(Duration::from_millis(150)).await;
    action().await;
    let answered = Instant::now();
    actix_web::rt::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut ok_before, mut after) = (0, Vec::new());
    for r in readers {
        for (sent, status) in r.await.unwrap() {
            if sent > answered {
                after.push(status);
            } else if status == StatusCode::OK {
                ok_before += 1;
            }
        }
    }
    (ok_before, after)
}

fn assert_all_refused_after(ok_before: usize, after: &[StatusCode]) {
    assert!(ok_before > 0, "the readers were really using the key");
    assert!(after.len() >= 64, "readers kept going: {}", after.len());
    let wrong: Vec<_> = after
        .iter()
        .filter(|s| **s != StatusCode::UNAUTHORIZED)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests sent after the response were not refused: {wrong:?}",
        wrong.len(),
        after.len()
    );
}

#[actix_web::test]
async fn revocation_bites_while_64_concurrent_requests_use_the_key() {
    let app = spawn_unthrottled().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let (ok_before, after) = hammer_while(&app, &key.raw, || async {
        let res = app
            .with_token(
                Method::DELETE,
                &format!("/api/v1/api-keys/{}", key.id),
                &admin.token,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    })
    .await;
    assert_all_refused_after(ok_before, &after);
}

#[actix_web::test]
async fn rotation_bites_while_64_concurrent_requests_use_the_key() {
    let app = spawn_unthrottled().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let new = std::cell::RefCell::new(String::new());
    let (ok_before, after) = hammer_while(&app, &key.raw, || async {
        let res = app.rotate(&key.id, Cred::Token(&admin.token)).await;
        assert_eq!(res.status(), StatusCode::OK);
        *new.borrow_mut() = res.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned();
    })
    .await;
    assert_all_refused_after(ok_before, &after);
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/auth/me", &new.take())
            .await,
        StatusCode::OK,
        "the new secret works"
    );
}

#[actix_web::test]
async fn a_key_sent_as_a_bearer_token_is_refused_with_a_hint() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(&["products:read"]).await;
    let res = app
        .with_token(Method::GET, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, 401, "INVALID_API_KEY").await;
    assert!(
        body["detail"].as_str().unwrap().contains("X-API-Key"),
        "{body}"
    );
}

#[actix_web::test]
async fn malformed_keys_are_refused_without_a_store_read() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(&["products:read"]).await;
    let mut bad_checksum = key.raw.clone().into_bytes();
    bad_checksum[45] = if bad_checksum[45] == b'A' { b'B' } else { b'A' };
    let cases = [
        ("wrong checksum", String::from_utf8(bad_checksum).unwrap()),
        ("wrong prefix", key.raw.replacen("pm_live_", "pm_prod_", 1)),
        ("short", key.raw[..40].to_owned()),
        ("garbage", "hello".to_owned()),
        ("empty", String::new()),
    ];
    let before = app.app_auth.store.key_lookups();
    for (what, raw) in &cases {
        let res = app
            .with_key(Method::GET, "/api/v1/products", raw)
            .send()
            .await
            .unwrap();
        let body = assert_problem(res, 401, "INVALID_API_KEY").await;
        assert!(
            body["detail"].as_str().unwrap().contains("malformed"),
            "{what}: {body}"
        );
    }
    assert_eq!(
        app.app_auth.store.key_lookups(),
        before,
        "no malformed key reached the store"
    );
    // A well-formed unknown key does reach it, which is what makes the check above meaningful.
    let unknown = pixee_pim::auth::key_format::generate(pixee_pim::domain::Environment::Live)
        .unwrap()
        .raw;
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &unknown)
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.app_auth.store.key_lookups(), before + 1);
}

#[actix_web::test]
async fn last_used_is_recorded_but_not_for_refused_requests() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let get_key = || async {
        app.with_token(
            Method::GET,
            &format!("/api/v1/api-keys/{}", key.id),
            &admin.token,
        )
        .json_value()
        .await
    };
    assert_eq!(
        app.status_with_key(Method::POST, "/api/v1/products", &key.raw)
            .await,
        StatusCode::FORBIDDEN
    );
    assert!(
        get_key().await["last_used_at"].is_null(),
        "a scope refusal is not a use"
    );
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &key.raw)
            .await,
        StatusCode::OK
    );
    let used = get_key().await;
    assert!(used["last_used_at"].is_string());
    assert_eq!(used["last_used_ip"], "127.0.0.1");
}

#[actix_web::test]
async fn concurrent_rotations_leave_exactly_one_working_secret() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let rotations: Vec<_> = (0..8)
        .map(|_| app.rotate(&key.id, Cred::Token(&admin.token)))
        .collect();
    let mut secrets = Vec::new();
    for r in futures_util::future::join_all(rotations).await {
        assert_eq!(r.status(), StatusCode::OK);
        secrets.push(
            r.json::<Value>().await.unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    secrets.push(key.raw.clone());
    let mut working = 0;
    for s in &secrets {
        if app
            .status_with_key(Method::GET, "/api/v1/products", s)
            .await
            == StatusCode::OK
        {
            working += 1;
        }
    }
    assert_eq!(working, 1);
}

/// The key rotating itself from 8 connections at once: one wins; every loser gets a clear SPEC
/// error (401 if the winner's commit came first, 409 if it raced the transaction itself).
#[actix_web::test]
async fn concurrent_self_rotations_have_one_winner_and_clear_answers_for_the_losers() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(&["products:read"]).await;
    let rotations: Vec<_> = (0..8)
        .map(|_| app.rotate(&key.id, Cred::Key(&key.raw)))
        .collect();
    let mut winners = Vec::new();
    for r in futures_util::future::join_all(rotations).await {
        match r.status().as_u16() {
            200 => winners.push(
                r.json::<Value>().await.unwrap()["key"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            401 => {
                assert_problem(r, 401, "INVALID_API_KEY").await;
            }
            409 => {
                assert_problem(r, 409, "CONFLICT").await;
            }
            other => panic!("a losing rotation answered {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one rotation wins");
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &winners[0])
            .await,
        StatusCode::OK
    );
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &key.raw)
            .await,
        StatusCode::UNAUTHORIZED
    );
}

#[actix_web::test]
async fn a_secret_kept_alive_by_a_grace_period_cannot_rotate_the_key() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(&["products:read"]).await;
    let res = app.rotate_with_grace(&key.id, &admin.token, 3600).await;
    let current = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let takeover = app.rotate(&key.id, Cred::Key(&key.raw)).await;
    assert_problem(takeover, 409, "CONFLICT").await;
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &current)
            .await,
        StatusCode::OK,
        "the owner keeps the key"
    );
    assert_eq!(
        app.rotate(&key.id, Cred::Key(&current)).await.status(),
        StatusCode::OK,
        "the current secret may rotate"
    );
}

#[actix_web::test]
async fn expiry_is_answered_in_utc_and_creation_is_audited_with_the_address() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let res = app
        .create_key_raw(&admin.token, json!({"name": "tz", "scopes": ["products:read"], "expires_at": "2027-02-01T12:00:00+02:00"}))
        .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["expires_at"], "2027-02-01T10:00:00Z");
    let audit: Value = app
        .with_token(Method::GET, "/api/v1/audit-events", &admin.token)
        .json_value()
        .await;
    let created = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "api_key.created")
        .unwrap()
        .clone();
    assert_eq!(created["ip"], "127.0.0.1");
    assert!(
        !audit.to_string().contains(body["key"].as_str().unwrap()),
        "no secret in the audit log"
    );
}

#[actix_web::test]
async fn a_request_refused_for_its_tenant_still_counts_against_the_key() {
    let app = crate::helpers::spawn_app_with(pixee_pim::config::ServeArgs {
        key_reads_per_minute: Some(2),
        ..Default::default()
    })
    .await;
    let (_, key) = app.admin_and_key(&["products:read"]).await;
    let other = uuid::Uuid::now_v7().to_string();
    let res = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .header("X-Tenant-ID", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-ratelimit-remaining"], "1");
    assert_problem(res, 403, "PERMISSION_DENIED").await;
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &key.raw)
            .await,
        StatusCode::OK
    );
    assert_eq!(
        app.status_with_key(Method::GET, "/api/v1/products", &key.raw)
            .await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
