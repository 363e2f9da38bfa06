//! Several `pixee-pim serve` processes on one PostgreSQL database (SPEC §12): every promise
//! holds across nodes. Each test starts its nodes (the compiled binary, each with its own data
//! dir) on a fresh database of the run's throwaway cluster; the restart test has a cluster of
//! its own.
use crate::binary::{Server, insecure_client, serve};
use crate::postgres::{Cluster, cluster};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PASSWORD: &str = "cluster admin password 7";
const ADMIN: &str = "admin@localhost";

struct Node {
    server: Server,
    /// One connection, kept alive: the node serves it from one worker thread, whose cache
    /// then holds what this client used.
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Node {
    fn base(&self) -> &str {
        &self.server.base
    }

    /// Whether the node serves from its caches now (`pixee_caches_trusted`).
    async fn trusted(&self) -> bool {
        let text = insecure_client()
            .get(format!("{}/metrics", self.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().any(|l| l == "pixee_caches_trusted 1")
    }
}

/// Starts `n` nodes on the database at `url` together, with `extra` flags, and waits until
/// each trusts its caches (a test of invalidation proves nothing against a node reading
/// through).
async fn nodes(url: &str, n: usize, extra: &[&str], password: Option<&str>) -> Vec<Node> {
    let mut flags = vec!["--metrics"];
    flags.extend_from_slice(extra);
    let starts = (0..n).map(|_| async {
        let dir = tempfile::tempdir().unwrap();
        let mut envs = vec![("PIXEE_DATABASE_URL", url)];
        if let Some(p) = password {
            envs.push(("PIXEE_ADMIN_PASSWORD", p));
        }
        let server = serve(dir.path(), &flags, &envs).await;
        Node {
            server,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap(),
            _dir: dir,
        }
    });
    let started = futures_util::future::join_all(starts).await;
    for node in &started {
        wait_until_trusted(node).await;
    }
    started
}

async fn wait_until_trusted(node: &Node) {
    let since = Instant::now();
    while !node.trusted().await {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "the node never trusted its caches"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fresh() -> String {
    cluster().fresh_database()
}

async fn login(base: &str, email: &str, password: &str) -> reqwest::Response {
    insecure_client()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn token(base: &str) -> String {
    crate::binary::login(base, ADMIN, PASSWORD).await
}

async fn create_key(base: &str, token: &str, scopes: &[&str]) -> (String, String) {
    let res = insecure_client()
        .post(format!("{base}/api/v1/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": "node key", "scopes": scopes}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["key"].as_str().unwrap().to_owned(),
    )
}

async fn revoke(base: &str, token: &str, id: &str) {
    let res = insecure_client()
        .delete(format!("{base}/api/v1/api-keys/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
}

/// A products list with `key` through `node`'s own connection.
async fn list_on(node: &Node, key: &str) -> StatusCode {
    list_through(&node.client, node.base(), key).await
}

/// A products list with `key` on a new connection.
async fn list_with(base: &str, key: &str) -> StatusCode {
    list_through(&insecure_client(), base, key).await
}

async fn list_through(client: &reqwest::Client, base: &str, key: &str) -> StatusCode {
    client
        .get(format!("{base}/api/v1/products"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
        .status()
}

async fn create_product(base: &str, key: &str, ean: &str) -> reqwest::Response {
    insecure_client()
        .post(format!("{base}/api/v1/products"))
        .header("X-API-Key", key)
        .json(&json!({"ean": ean, "name": format!("product {ean}")}))
        .send()
        .await
        .unwrap()
}

fn ean(i: u64) -> String {
    pixee_pim::domain::Ean::from_body(500_000_000_000 + i)
        .as_str()
        .to_owned()
}

#[actix_web::test]
async fn two_first_starts_on_one_database_create_one_admin() {
    let url = fresh();
    let started = nodes(&url, 2, &[], None).await;
    let printed: Vec<String> = started
        .iter()
        .filter_map(|n| {
            n.server
                .stderr
                .lock()
                .unwrap()
                .lines()
                .find_map(|l| l.split("(shown once, store it now): ").nth(1))
                .map(|p| p.trim().to_owned())
        })
        .collect();
    assert_eq!(printed.len(), 1, "exactly one node prints a password");
    for n in &started {
        assert_eq!(
            login(n.base(), ADMIN, &printed[0]).await.status(),
            StatusCode::OK,
            "the printed password works on every node"
        );
    }
    let users: Value = insecure_client()
        .get(format!("{}/api/v1/users", started[1].base()))
        .bearer_auth(crate::binary::login(started[1].base(), ADMIN, &printed[0]).await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["total"], 1, "one admin: {users}");
}

#[actix_web::test]
async fn a_key_revoked_on_one_node_is_refused_on_the_others_at_the_next_request() {
    let url = fresh();
    let n = nodes(&url, 3, &[], Some(PASSWORD)).await;
    let admin = token(n[0].base()).await;
    for round in 0..15 {
        let (id, key) = create_key(n[0].base(), &admin, &["products:read"]).await;
        // The other nodes use the key first, so each holds it in its cache.
        for node in &n[1..] {
            assert_eq!(list_on(node, &key).await, StatusCode::OK);
            assert_eq!(list_on(node, &key).await, StatusCode::OK);
        }
        revoke(n[0].base(), &admin, &id).await;
        for node in &n[1..] {
            assert_eq!(
                list_on(node, &key).await,
                StatusCode::UNAUTHORIZED,
                "round {round}: a revoked key passed on another node"
            );
        }
    }
}

#[actix_web::test]
async fn a_key_rotated_on_one_node_is_dead_on_the_other_at_the_next_request() {
    let url = fresh();
    let n = nodes(&url, 2, &[], Some(PASSWORD)).await;
    let admin = token(n[1].base()).await;
    let (id, old) = create_key(n[1].base(), &admin, &["products:read"]).await;
    assert_eq!(list_on(&n[0], &old).await, StatusCode::OK);
    assert_eq!(list_on(&n[0], &old).await, StatusCode::OK);
    let rotated: Value = insecure_client()
        .post(format!("{}/api/v1/api-keys/{id}/rotate", n[1].base()))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = rotated["key"].as_str().expect("the new key").to_owned();
    assert_eq!(
        list_on(&n[0], &old).await,
        StatusCode::UNAUTHORIZED,
        "the old key is dead on the other node"
    );
    assert_eq!(list_on(&n[0], &new).await, StatusCode::OK);
}

#[actix_web::test]
async fn one_refresh_cookie_sent_to_every_node_at_once_succeeds_once() {
    let url = fresh();
    let n = nodes(&url, 3, &[], Some(PASSWORD)).await;
    for round in 0..5 {
        let res = login(n[0].base(), ADMIN, PASSWORD).await;
        let cookie = crate::helpers::refresh_cookie(&res).expect("a refresh cookie");
        let sends = n.iter().map(|node| {
            let cookie = cookie.clone();
            async move {
                insecure_client()
                    .post(format!("{}/api/v1/auth/refresh", node.base()))
                    .header("Content-Type", "application/json")
                    .header("Cookie", format!("refresh_token={cookie}"))
                    .body("{}")
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        });
        let statuses = futures_util::future::join_all(sends).await;
        let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        assert_eq!(ok, 1, "round {round}: {statuses:?}");
    }
}

#[actix_web::test]
async fn failed_logins_spread_over_the_nodes_lock_the_email_on_every_node() {
    let url = fresh();
    let n = nodes(&url, 3, &["--lockout-threshold", "6"], Some(PASSWORD)).await;
    // Sent at once: each node counts into the one counter, none overwrites another's count.
    let failures = (0..6).map(|i| login(n[i % 3].base(), ADMIN, "not the password at all"));
    for res in futures_util::future::join_all(failures).await {
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    for node in &n {
        assert_eq!(
            login(node.base(), ADMIN, PASSWORD).await.status(),
            StatusCode::LOCKED,
            "the right password is refused while locked, on every node"
        );
    }
}

#[actix_web::test]
async fn one_ean_created_through_every_node_at_once_is_created_once() {
    let url = fresh();
    let n = nodes(&url, 3, &[], Some(PASSWORD)).await;
    let admin = token(n[0].base()).await;
    let (_, key) = create_key(n[0].base(), &admin, &["products:read", "products:write"]).await;
    for round in 0..10u64 {
        let ean = ean(round);
        let sends = n.iter().map(|node| {
            let (key, ean) = (key.clone(), ean.clone());
            async move { create_product(node.base(), &key, &ean).await.status() }
        });
        let statuses = futures_util::future::join_all(sends).await;
        let created = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count();
        assert_eq!((created, refused), (1, 2), "round {round}: {statuses:?}");
    }
}

#[actix_web::test]
async fn a_write_confirmed_just_before_its_node_is_killed_is_served_by_the_others() {
    let url = fresh();
    let mut n = nodes(&url, 3, &[], Some(PASSWORD)).await;
    let admin = token(n[0].base()).await;
    let (_, key) = create_key(n[0].base(), &admin, &["products:read", "products:write"]).await;
    let res = create_product(n[0].base(), &key, &ean(900)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    n[0].server.child.kill().unwrap();
    n[0].server.child.wait().unwrap();
    for node in &n[1..] {
        let got = insecure_client()
            .get(format!("{}/api/v1/products/{id}", node.base()))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
    }
    // The survivors go on writing: each waits out the dead node's lease at most once.
    let started = Instant::now();
    let res = create_product(n[1].base(), &key, &ean(901)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let found = insecure_client()
        .get(format!("{}/api/v1/products?search=product", n[2].base()))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        found["total"], 2,
        "the other survivor's search sees the write at once: {found}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a dead node holds writes up for its lease only"
    );
    n.remove(0);
}

#[actix_web::test]
async fn rate_windows_are_per_node_and_bounded_by_the_limit_times_the_nodes() {
    let url = fresh();
    let n = nodes(&url, 2, &["--key-reads-per-minute", "5"], Some(PASSWORD)).await;
    let admin = token(n[0].base()).await;
    let (_, key) = create_key(n[0].base(), &admin, &["products:read"]).await;
    let mut ok = 0;
    for i in 0..30 {
        if list_with(n[i % 2].base(), &key).await == StatusCode::OK {
            ok += 1;
        }
    }
    assert!(
        (5..=10).contains(&ok),
        "{ok} reads passed: at least the limit, at most the limit times the nodes"
    );
}

#[actix_web::test]
async fn postgres_restarted_under_load_answers_503_loses_no_confirmed_write_and_resumes() {
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let n = nodes(
        &url,
        2,
        &["--key-writes-per-minute", "100000"],
        Some(PASSWORD),
    )
    .await;
    let admin = token(n[0].base()).await;
    let (key_id, key) = create_key(n[0].base(), &admin, &["products:read", "products:write"]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = n
        .iter()
        .enumerate()
        .map(|(w, node)| {
            let (base, key, stop) = (node.base().to_owned(), key.clone(), stop.clone());
            actix_web::rt::spawn(async move {
                let mut confirmed = Vec::new();
                let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let ean = ean(10_000 * (w as u64 + 1) + i);
                    let res = insecure_client()
                        .post(format!("{base}/api/v1/products"))
                        .header("X-API-Key", &key)
                        .json(&json!({"ean": ean, "name": "under restart"}))
                        .timeout(Duration::from_secs(40))
                        .send()
                        .await;
                    let status = res.as_ref().map_or(0, |r| r.status().as_u16());
                    *statuses.entry(status).or_default() += 1;
                    if status == 201
                        && let Ok(res) = res
                        && let Ok(body) = res.json::<Value>().await
                    {
                        confirmed.push(body["id"].as_str().unwrap_or_default().to_owned());
                    }
                    if status != 201 {
                        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                (confirmed, statuses)
            })
        })
        .collect();
    actix_web::rt::time::sleep(Duration::from_millis(700)).await;
    pg.pg_ctl("stop");
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    pg.pg_ctl("start");
    // Service resumes by itself: writes succeed again on both nodes.
    let resumed = Instant::now();
    for node in &n {
        loop {
            let res = create_product(
                node.base(),
                &key,
                &ean(99_000 + resumed.elapsed().as_millis() as u64),
            )
            .await;
            if res.status() == StatusCode::CREATED {
                break;
            }
            assert!(
                resumed.elapsed() < Duration::from_secs(30),
                "the node did not resume: {}",
                res.status()
            );
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        }
    }
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut confirmed = Vec::new();
    let mut refused = 0;
    for w in writers {
        let (c, statuses) = w.await.unwrap();
        for status in statuses.keys() {
            assert!(
                [201, 503].contains(status),
                "only 201 and 503 while the database restarts: {statuses:?}"
            );
        }
        // A write in flight when the database went may wait out the lease of a node it could
        // not ask, and answer after the restart: that writer may see no 503 at all.
        refused += statuses.get(&503).copied().unwrap_or(0);
        confirmed.extend(c);
    }
    assert!(refused > 0, "the outage was seen");
    assert!(!confirmed.is_empty());
    for id in &confirmed {
        let found = insecure_client()
            .get(format!("{}/api/v1/products/{id}", n[1].base()))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            found.status(),
            StatusCode::OK,
            "confirmed write {id} was lost"
        );
    }
    // The caches are trusted again only after they were forgotten: a key revoked on one node
    // after the restart is refused on the other.
    for node in &n {
        wait_until_trusted(node).await;
    }
    assert_eq!(list_on(&n[1], &key).await, StatusCode::OK);
    assert_eq!(list_on(&n[1], &key).await, StatusCode::OK);
    revoke(n[0].base(), &token(n[0].base()).await, &key_id).await;
    assert_eq!(list_on(&n[1], &key).await, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn a_session_ended_on_one_node_is_refused_on_the_other_at_the_next_request() {
    let url = fresh();
    let n = nodes(&url, 2, &[], Some(PASSWORD)).await;
    let session = token(n[0].base()).await;
    let me = |node: &Node, token: String| {
        let request = node
            .client
            .get(format!("{}/api/v1/auth/me", node.base()))
            .bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(me(&n[1], session.clone()).await, StatusCode::OK);
    assert_eq!(me(&n[1], session.clone()).await, StatusCode::OK);
    let out = insecure_client()
        .post(format!("{}/api/v1/auth/logout", n[0].base()))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert!(out.status().is_success(), "{}", out.status());
    assert_eq!(
        me(&n[1], session).await,
        StatusCode::UNAUTHORIZED,
        "a logged-out session passed on the other node"
    );
}

#[actix_web::test]
async fn a_webhook_made_on_one_node_hears_every_nodes_writes_once() {
    let url = fresh();
    let n = nodes(&url, 2, &["--webhooks-allow-private"], Some(PASSWORD)).await;
    let receiver = crate::webhooks::Receiver::start().await;
    let admin = token(n[0].base()).await;
    let made = insecure_client()
        .post(format!("{}/api/v1/webhooks", n[0].base()))
        .bearer_auth(&admin)
        .json(&json!({"name": "cluster", "url": receiver.url, "events": ["product.created"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::CREATED);
    let (_, key) = create_key(n[0].base(), &admin, &["products:write"]).await;
    let mut eans = Vec::new();
    for i in 0..6u64 {
        // Half of them through the node that did not create the webhook.
        let res = create_product(n[(i % 2) as usize].base(), &key, &ean(700 + i)).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        eans.push(ean(700 + i));
    }
    receiver.wait_for(6).await;
    // Time for a second sender, if there were one, to send its copies too.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let seen = receiver.seen();
    let mut delivered: Vec<String> = seen
        .iter()
        .map(|r| {
            r.json()["data"]["ean"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    delivered.sort();
    assert_eq!(delivered, eans, "each write once, from one sender");
}

#[actix_web::test]
async fn the_since_feed_of_one_node_brings_another_nodes_write_within_seconds() {
    let url = fresh();
    let n = nodes(&url, 2, &[], Some(PASSWORD)).await;
    let admin = token(n[0].base()).await;
    let (_, key) = create_key(n[0].base(), &admin, &["products:write", "windev:read"]).await;
    let res = create_product(n[0].base(), &key, &ean(800)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let started = Instant::now();
    loop {
        let feed: Value = insecure_client()
            .get(format!("{}/api/v1/windev/products/since/0", n[1].base()))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let eans: Vec<&str> = feed["data"]
            .as_array()
            .map(|d| d.iter().filter_map(|e| e["ean"].as_str()).collect())
            .unwrap_or_default();
        if eans.contains(&ean(800).as_str()) {
            break;
        }
        // The feed answers up to the lowest floor the nodes published (once a second).
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the other node's feed never brought the write: {feed}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn nodes_whose_leases_were_swept_rejoin_and_keep_every_promise() {
    let url = fresh();
    let database = url.rsplit('/').next().unwrap().to_owned();
    let n = nodes(&url, 2, &[], Some(PASSWORD)).await;
    let admin = token(n[0].base()).await;
    let (id, key) = create_key(n[0].base(), &admin, &["products:read", "products:write"]).await;
    assert_eq!(list_on(&n[1], &key).await, StatusCode::OK);
    // As a sweep does for a node whose lease ran out: every lease marked gone.
    cluster().psql(&database, "UPDATE nodes SET gone = true");
    // Each node finds out at a renewal, stops trusting, waits out its own stamped writes and
    // the transactions that did not see it, and stands again.
    let since = Instant::now();
    while cluster().psql(&database, "SELECT count(*) FROM nodes WHERE gone") != "0" {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "the leases never stood again"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    for node in &n {
        wait_until_trusted(node).await;
    }
    let started = Instant::now();
    loop {
        let res = create_product(n[1].base(), &key, &ean(950)).await;
        if res.status() == StatusCode::CREATED {
            break;
        }
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "writes never resumed"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(list_on(&n[1], &key).await, StatusCode::OK);
    assert_eq!(list_on(&n[1], &key).await, StatusCode::OK);
    revoke(n[0].base(), &admin, &id).await;
    assert_eq!(list_on(&n[1], &key).await, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn an_export_is_downloaded_from_the_node_that_made_it_and_refused_by_the_others() {
    let url = fresh();
    let n = nodes(&url, 2, &[], Some(PASSWORD)).await;
    let admin = token(n[0].base()).await;
    let (_, key) = create_key(n[0].base(), &admin, &["exports:read", "exports:write"]).await;
    let made = insecure_client()
        .post(format!("{}/api/v1/exports/csv/products", n[0].base()))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::ACCEPTED);
    let id = made.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    loop {
        let job: Value = insecure_client()
            .get(format!("{}/api/v1/exports/jobs/{id}", n[1].base()))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "completed" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{job}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let download = |node: &Node| {
        insecure_client()
            .get(format!("{}/api/v1/exports/jobs/{id}/download", node.base()))
            .header("X-API-Key", &key)
            .send()
    };
    let elsewhere = download(&n[1]).await.unwrap();
    assert_eq!(elsewhere.status(), StatusCode::CONFLICT);
    let body: Value = elsewhere.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("CLUSTER.md"),
        "{body}"
    );
    assert_eq!(download(&n[0]).await.unwrap().status(), StatusCode::OK);
}
