//! Per-key rate limits: headers on every key response, 429 with Retry-After past the limit,
//! reads and writes counted apart.
use crate::helpers::{assert_problem, spawn_app_with};
use pixee_pim::config::ServeArgs;
use reqwest::{Method, StatusCode};

#[actix_web::test]
async fn key_responses_carry_rate_headers_and_the_limit_is_enforced() {
    let app = spawn_app_with(ServeArgs {
        key_reads_per_minute: Some(5),
        key_writes_per_minute: Some(2),
        ..Default::default()
    })
    .await;
    let (_, key) = app
        .admin_and_key(&["products:read", "products:write"])
        .await;
    for i in 0..5u32 {
        let res = app
            .with_key(Method::GET, "/api/v1/products", &key.raw)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers();
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], (4 - i).to_string().as_str());
        let reset: i64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(
            reset > crate::helpers::start_time().unix_timestamp()
                && reset <= crate::helpers::start_time().unix_timestamp() + 60
        );
    }
    let res = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    let body = assert_problem(res, 429, "RATE_LIMIT_EXCEEDED").await;
    assert!(
        body["retry_after_seconds"]
            .as_u64()
            .is_some_and(|s| (1..=120).contains(&s)),
        "{body}"
    );

    let write = app
        .create_product(&key.raw, "4006381333931", "writes have their own budget")
        .await;
    assert_eq!(write.status(), StatusCode::CREATED);
    // Workers reuse the rendered limit and window end while they stay the same: a write on
    // the same connection must still show its own limit.
    assert_eq!(write.headers()["x-ratelimit-limit"], "2");
    let reset_of = |res: &reqwest::Response| -> i64 {
        res.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let first_reset = reset_of(&write);
    app.clock.advance(time::Duration::minutes(2));
    let later = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .send()
        .await
        .unwrap();
    assert_eq!(
        reset_of(&later),
        first_reset + 120,
        "the window's end moves on with the clock"
    );
    assert_eq!(later.status(), StatusCode::OK, "a new window");
}

#[actix_web::test]
async fn session_requests_are_not_key_limited() {
    let app = spawn_app_with(ServeArgs {
        key_reads_per_minute: Some(1),
        ..Default::default()
    })
    .await;
    let admin = app.admin().await;
    for _ in 0..3 {
        let res = app
            .with_token(Method::GET, "/api/v1/products", &admin.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(!res.headers().contains_key("x-ratelimit-limit"));
    }
}
