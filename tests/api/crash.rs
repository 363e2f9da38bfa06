//! Crash durability of the compiled binary on a real data dir: rounds of one random
//! security-relevant write (or `/ext` batch), each followed by `kill -9` at a random moment 0–5 ms after its
//! response. After every kill, `pixee-pim check` must find every record whole and every index
//! consistent, the server must start cleanly, and every promise made so far must hold: each
//! confirmed write is there and each revocation, logout, password change and lock still bites,
//! and the search index (caught up at start) finds exactly the confirmed products.
//!
//! `PIXEE_CRASH_SEED=<n>` replays one run; the seed is printed on failure.
use crate::binary::{Server, cli, create_key, insecure_client, login, serve};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const ROUNDS: usize = 50;
const THRESHOLD: usize = 3;
const ADMIN_PASSWORD: &str = "crash admin password 1";
const USER: &str = "crash-user@example.com";
const LOCKED_PASSWORD: &str = "locked user password 1";
const SETTINGS: &[&str] = &[
    "--lockout-threshold",
    "3",
    "--login-rate-per-minute",
    "0",
    "--key-reads-per-minute",
    "100000",
    "--key-writes-per-minute",
    "100000",
];

#[derive(Debug, Clone, Copy)]
enum Op {
    CreateKey,
    RotateKey,
    RevokeKey,
    Logout,
    ChangePassword,
    FailLoginsToLock,
    CreateProduct,
    DeleteProduct,
    ExtBatch,
}

const OPS: [Op; 9] = [
    Op::CreateKey,
    Op::RotateKey,
    Op::RevokeKey,
    Op::Logout,
    Op::ChangePassword,
    Op::FailLoginsToLock,
    Op::CreateProduct,
    Op::DeleteProduct,
    Op::ExtBatch,
];

struct Session {
    token: String,
    refresh: String,
}

/// Everything the server has confirmed so far, and so must still hold after any crash.
#[derive(Default)]
struct Promises {
    live_keys: Vec<(String, String)>,
    dead_keys: Vec<String>,
    password: String,
    old_password: Option<String>,
    sessions: Vec<Session>,
    /// Access tokens and refresh tokens that were ended (logout, password change).
    dead_tokens: Vec<String>,
    dead_refresh: Vec<String>,
    locked: Vec<String>,
    products: Vec<String>,
    deleted_products: Vec<String>,
    /// Products written through `/ext` batches: EAN and the name the last batch gave.
    batch_products: std::collections::BTreeMap<String, String>,
    serial: u64,
}

/// A valid EAN-13 for `n`.
fn ean13(n: u64) -> String {
    pixee_pim::domain::Ean::from_body(200_000_000_000 + n)
        .as_str()
        .to_owned()
}

fn refresh_of(res: &reqwest::Response) -> String {
    crate::helpers::refresh_cookie(res).expect("refresh cookie")
}

struct Run {
    client: reqwest::Client,
    base: String,
    admin: String,
    /// A live key with the `/ext` scopes (never revoked by the run).
    ext_key: String,
    p: Promises,
    rng: StdRng,
}

impl Run {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> reqwest::Response {
        rb.send().await.expect("request")
    }

    async fn expect(&self, rb: reqwest::RequestBuilder, status: u16, what: &str) -> Value {
        let res = self.send(rb).await;
        assert_eq!(res.status().as_u16(), status, "{what}");
        res.json().await.unwrap_or(Value::Null)
    }

    async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.send(
            self.client
                .post(self.url("/auth/login"))
                .json(&json!({"email": email, "password": password})),
        )
        .await
    }

    async fn user_session(&mut self) -> usize {
        if self.p.sessions.is_empty() {
            let res = self.login(USER, &self.p.password.clone()).await;
            assert_eq!(res.status(), StatusCode::OK, "the user logs in");
            let refresh = refresh_of(&res);
            let body: Value = res.json().await.unwrap();
            self.p.sessions.push(Session {
                token: body["access_token"].as_str().unwrap().to_owned(),
                refresh,
            });
        }
        self.rng.random_range(0..self.p.sessions.len())
    }

    /// Performs one operation; returns once its confirming response has arrived.
    async fn perform(&mut self, op: Op) -> Op {
        let admin = self.admin.clone();
        match op {
            Op::CreateKey => {
                let body = self
                    .expect(
                        self.client.post(self.url("/api-keys")).bearer_auth(&admin).json(
                            &json!({"name": "crash", "scopes": ["products:read", "products:write"]}),
                        ),
                        201,
                        "key creation",
                    )
                    .await;
                self.p.live_keys.push((
                    body["id"].as_str().unwrap().to_owned(),
                    body["key"].as_str().unwrap().to_owned(),
                ));
            }
            Op::RotateKey | Op::RevokeKey if self.p.live_keys.is_empty() => {
                return Box::pin(self.perform(Op::CreateKey)).await;
            }
            Op::RotateKey => {
                let i = self.rng.random_range(0..self.p.live_keys.len());
                let (id, secret) = self.p.live_keys[i].clone();
                let path = self.url(&format!("/api-keys/{id}/rotate"));
                // Half the rotations are self-rotations with the key itself.
                let rb = if self.rng.random_bool(0.5) {
                    self.client.post(path).header("X-API-Key", &secret)
                } else {
                    self.client.post(path).bearer_auth(&admin)
                };
                let body = self.expect(rb, 200, "rotation").await;
                self.p.live_keys[i].1 = body["key"].as_str().unwrap().to_owned();
                self.p.dead_keys.push(secret);
            }
            Op::RevokeKey => {
                let i = self.rng.random_range(0..self.p.live_keys.len());
                let (id, secret) = self.p.live_keys.remove(i);
                self.expect(
                    self.client
                        .delete(self.url(&format!("/api-keys/{id}")))
                        .bearer_auth(&admin),
                    204,
                    "revocation",
                )
                .await;
                self.p.dead_keys.push(secret);
            }
            Op::Logout => {
                let i = self.user_session().await;
                let s = self.p.sessions.remove(i);
                self.expect(
                    self.client
                        .post(self.url("/auth/logout"))
                        .bearer_auth(&s.token),
                    204,
                    "logout",
                )
                .await;
                self.p.dead_tokens.push(s.token);
                self.p.dead_refresh.push(s.refresh);
            }
            Op::ChangePassword => {
                let i = self.user_session().await;
                let new = format!("crash user password {}", self.p.serial);
                self.p.serial += 1;
                let body = self
                    .expect(
                        self.client
                            .post(self.url("/auth/password"))
                            .bearer_auth(&self.p.sessions[i].token)
                            .json(
                                &json!({"current_password": self.p.password, "new_password": new}),
                            ),
                        200,
                        "password change",
                    )
                    .await;
                // Every access token issued before the change dies; the other sessions end.
                let kept = self.p.sessions.remove(i);
                for s in self.p.sessions.drain(..) {
                    self.p.dead_tokens.push(s.token);
                    self.p.dead_refresh.push(s.refresh);
                }
                self.p.dead_tokens.push(kept.token);
                self.p.sessions.push(Session {
                    token: body["access_token"].as_str().unwrap().to_owned(),
                    refresh: kept.refresh,
                });
                self.p.old_password = Some(std::mem::replace(&mut self.p.password, new));
            }
            Op::FailLoginsToLock => {
                let email = format!("locked-{}@example.com", self.p.serial);
                self.p.serial += 1;
                self.expect(
                    self.client
                        .post(self.url("/users"))
                        .bearer_auth(&admin)
                        .json(
                            &json!({"email": email, "password": LOCKED_PASSWORD, "role": "viewer"}),
                        ),
                    201,
                    "user creation",
                )
                .await;
                for _ in 0..THRESHOLD {
                    let res = self.login(&email, "not the password").await;
                    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
                }
                self.p.locked.push(email);
            }
            Op::CreateProduct => {
                let ean = ean13(self.p.serial);
                self.p.serial += 1;
                let body = self
                    .expect(
                        self.client
                            .post(self.url("/products"))
                            .bearer_auth(&admin)
                            .json(&json!({"ean": ean, "name": "crash product"})),
                        201,
                        "product creation",
                    )
                    .await;
                self.p
                    .products
                    .push(body["id"].as_str().unwrap().to_owned());
            }
            Op::ExtBatch => {
                // New EANs (one of them twice: the later item wins) and products of earlier
                // batches renamed, in one batch answered once every item is durable.
                let round = self.p.serial;
                let mut items = Vec::new();
                let mut expected = Vec::new();
                for _ in 0..3 {
                    let ean = ean13(self.p.serial);
                    self.p.serial += 1;
                    items.push(json!({"ean": ean, "name": format!("batch {round}")}));
                    expected.push((ean, format!("batch {round}")));
                }
                let (twice, _) = expected[0].clone();
                items.push(json!({"ean": twice, "name": format!("batch {round} again")}));
                expected.push((twice, format!("batch {round} again")));
                for ean in self
                    .p
                    .batch_products
                    .keys()
                    .take(2)
                    .cloned()
                    .collect::<Vec<_>>()
                {
                    items.push(json!({"ean": ean, "name": format!("renamed {round}")}));
                    expected.push((ean, format!("renamed {round}")));
                }
                let body = self
                    .expect(
                        self.client
                            .post(self.url("/ext/products/batch"))
                            .header("X-API-Key", &self.ext_key)
                            .json(&json!({"products": items})),
                        200,
                        "ext batch",
                    )
                    .await;
                let results = body["data"].as_array().unwrap();
                assert_eq!(results.len(), expected.len());
                // The new EANs are created, the repeat and the renames update.
                for (i, (r, (ean, name))) in results.iter().zip(expected).enumerate() {
                    let want = if i < 3 { "created" } else { "updated" };
                    assert_eq!(r["status"], want, "batch item {i}: {r}");
                    self.p.batch_products.insert(ean, name);
                }
            }
            Op::DeleteProduct => {
                if self.p.products.is_empty() {
                    return Box::pin(self.perform(Op::CreateProduct)).await;
                }
                let i = self.rng.random_range(0..self.p.products.len());
                let id = self.p.products.remove(i);
                self.expect(
                    self.client
                        .delete(self.url(&format!("/products/{id}")))
                        .bearer_auth(&admin),
                    204,
                    "product deletion",
                )
                .await;
                self.p.deleted_products.push(id);
            }
        }
        op
    }

    /// Every promise made so far, checked against the restarted server.
    async fn verify(&mut self) {
        let me = self.url("/auth/me");
        for (id, key) in &self.p.live_keys {
            let rb = self.client.get(&me).header("X-API-Key", key);
            self.expect(rb, 200, &format!("confirmed key {id} is gone"))
                .await;
        }
        for key in &self.p.dead_keys {
            let rb = self.client.get(&me).header("X-API-Key", key);
            self.expect(rb, 401, "a dead key works again").await;
        }
        for s in &self.p.sessions {
            let rb = self.client.get(&me).bearer_auth(&s.token);
            self.expect(rb, 200, "a live session was lost").await;
        }
        for token in &self.p.dead_tokens {
            let rb = self.client.get(&me).bearer_auth(token);
            self.expect(rb, 401, "an ended token works again").await;
        }
        for refresh in &self.p.dead_refresh {
            let rb = self
                .client
                .post(self.url("/auth/refresh"))
                .header("Content-Type", "application/json")
                .header("Cookie", format!("refresh_token={refresh}"));
            self.expect(rb, 401, "an ended session refreshes").await;
        }
        for email in &self.p.locked {
            let res = self.login(email, LOCKED_PASSWORD).await;
            assert_eq!(
                res.status(),
                StatusCode::LOCKED,
                "the lock of {email} was lost"
            );
        }
        // One failure with the replaced password, then the current one (which resets the count).
        if let Some(old) = &self.p.old_password {
            let res = self.login(USER, old).await;
            assert_eq!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "the old password works"
            );
        }
        let res = self.login(USER, &self.p.password).await;
        assert_eq!(res.status(), StatusCode::OK, "the new password was lost");
        let refresh = refresh_of(&res);
        let body: Value = res.json().await.unwrap();
        self.p.sessions.push(Session {
            token: body["access_token"].as_str().unwrap().to_owned(),
            refresh,
        });
        let product = |id: &str| {
            self.client
                .get(self.url(&format!("/products/{id}")))
                .bearer_auth(&self.admin)
        };
        for id in &self.p.products {
            self.expect(product(id), 200, &format!("confirmed product {id} is gone"))
                .await;
        }
        for id in &self.p.deleted_products {
            self.expect(product(id), 404, &format!("deleted product {id} is back"))
                .await;
        }
        for (ean, name) in &self.p.batch_products {
            let rb = self
                .client
                .get(self.url(&format!("/ext/products/{ean}")))
                .header("X-API-Key", &self.ext_key);
            let body = self
                .expect(rb, 200, &format!("batch product {ean} is gone"))
                .await;
            assert_eq!(body["data"]["name"], name.as_str(), "batch product {ean}");
        }
        // The search index caught up at start: it finds exactly the confirmed products, none
        // lost between the store commit and the index commit, no deleted one invented.
        let found = self
            .expect(
                self.client
                    .get(self.url("/products?search=crash%20produ&limit=500"))
                    .bearer_auth(&self.admin),
                200,
                "search",
            )
            .await;
        let mut hits: Vec<&str> = found["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        let mut confirmed: Vec<&str> = self.p.products.iter().map(String::as_str).collect();
        hits.sort_unstable();
        confirmed.sort_unstable();
        assert_eq!(
            hits, confirmed,
            "search hits differ from the confirmed products"
        );
    }
}

/// `pixee-pim check` on the stopped server's data dir: every tree decodes, every index agrees.
fn check_store(dir: &Path) {
    let out = cli(dir).arg("check").output().unwrap();
    assert!(
        out.status.success(),
        "the store is damaged after kill -9: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: "));
}

fn kill_after(server: &mut Server, micros: u64) {
    std::thread::sleep(Duration::from_micros(micros));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

async fn start(dir: &Path) -> Server {
    let server = serve(dir, SETTINGS, &[("PIXEE_ADMIN_PASSWORD", ADMIN_PASSWORD)]).await;
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        !log.contains("ERROR"),
        "the store opened with errors: {log}"
    );
    server
}

#[actix_web::test]
async fn fifty_random_writes_each_killed_0_to_5_ms_after_their_response_keep_every_promise() {
    let seed = std::env::var("PIXEE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash run seed: {seed} (replay with PIXEE_CRASH_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path()).await;
    let admin = login(&server.base, "admin@localhost", ADMIN_PASSWORD).await;
    let user_password = "crash user password start".to_owned();
    let created = insecure_client()
        .post(format!("{}/api/v1/users", server.base))
        .bearer_auth(&admin)
        .json(&json!({"email": USER, "password": user_password, "role": "editor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let first = create_key(&server.base, &admin, "first").await;
    let ext = insecure_client()
        .post(format!("{}/api/v1/api-keys", server.base))
        .bearer_auth(&admin)
        .json(&json!({"name": "ext", "scopes": ["ext:products:read", "ext:products:write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ext.status(), StatusCode::CREATED);
    let ext_key = ext.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut run = Run {
        client: insecure_client(),
        base: server.base.clone(),
        admin,
        ext_key,
        p: Promises {
            password: user_password,
            live_keys: vec![(
                first["id"].as_str().unwrap().to_owned(),
                first["key"].as_str().unwrap().to_owned(),
            )],
            ..Promises::default()
        },
        rng: StdRng::seed_from_u64(seed),
    };

    let mut done = Vec::new();
    for round in 0..ROUNDS {
        // Each kind of operation once in the first nine rounds, then at random.
        let op = match OPS.get(round) {
            Some(op) => *op,
            None => OPS[run.rng.random_range(0..OPS.len())],
        };
        let performed = run.perform(op).await;
        let delay = run.rng.random_range(0..=5_000);
        kill_after(&mut server, delay);
        done.push(format!("{performed:?}+{delay}us"));

        check_store(dir.path());
        server = start(dir.path()).await;
        run.base = server.base.clone();
        run.verify().await;
    }
    eprintln!("crash rounds: {}", done.join(", "));
    assert!(run.p.dead_keys.len() + run.p.live_keys.len() > 1);
}
