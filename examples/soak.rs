//! Soak load driver for `scripts/soak`: a mixed workload against a running `pixee-pim serve`.
//!
//! The mix: product reads and lists with API keys, `/auth/me` with keys and with a session's
//! access token, product creates, updates and deletes (kept around a steady live set), key
//! rotations (by the key itself or by the admin), key replacements (create a new key, revoke
//! the old one), logins right and wrong (unknown emails and a decoy account that locks), and
//! refreshes of the admin and viewer sessions.
//!
//! Every product is checked out by one operation at a time and every key slot is write-locked
//! while it rotates, so each response has exactly one right answer: a read of a product gets
//! the stock of its last acknowledged write, a dead key gets 401 on its very next request.
//!
//! Phases (the wrapper runs them in turn against one server), each writing a JSON report:
//! - `capacity`: closed loop, `--concurrency` tasks at full throttle;
//! - `run`: open loop at a fixed `--rate` of operations a second, sampling the server's RSS
//!   from /proc; then checks every acknowledged write and key state and saves them to `--state`;
//! - `verify`: checks a saved state again (after a restart).
//!
//! The admin password comes from `PIXEE_ADMIN_PASSWORD`, as for the server's first start.

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::{Method, RequestBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ADMIN_EMAIL: &str = "admin@localhost";
const VIEWER_EMAIL: &str = "soak-viewer@example.com";
const DECOY_EMAIL: &str = "soak-decoy@example.com";
const USER_PASSWORD: &str = "soak user password 9";
const SCOPES: [&str; 3] = ["products:read", "products:write", "products:delete"];
/// Keys in use at any time; each is rotated or replaced now and then.
const KEY_SLOTS: usize = 8;
/// Products kept alive: creates and deletes balance around this.
const LIVE_PRODUCTS: usize = 2_000;
/// Open loop: operations beyond this many in flight are skipped (and reported).
const MAX_IN_FLIGHT: usize = 2_048;
const VERIFY_CONCURRENCY: usize = 32;
/// The run stops when no request got an answer for this long while some were in flight.
const STALL_SECONDS: f64 = 60.0;

#[derive(Parser)]
#[command(about = "Soak load driver for pixee-pim (run by scripts/soak)")]
struct Args {
    /// Server base URL, e.g. http://127.0.0.1:8080
    #[arg(long)]
    base: String,
    /// Where the JSON report goes
    #[arg(long)]
    out: PathBuf,
    #[command(subcommand)]
    phase: Phase,
}

#[derive(Subcommand)]
enum Phase {
    /// Closed loop at full throttle; reports operations and requests a second
    Capacity {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Not counted: connections open and caches fill
        #[arg(long, default_value_t = 3)]
        warmup_seconds: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Open loop at `rate` operations a second, then the end-of-run checks
    Run {
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        rate: f64,
        /// The server's process id, for its RSS
        #[arg(long)]
        server_pid: u32,
        #[arg(long, default_value_t = 5)]
        sample_seconds: u64,
        /// Progress lines on stderr this often
        #[arg(long, default_value_t = 30)]
        print_seconds: u64,
        /// The expected state is saved here for `verify`
        #[arg(long)]
        state: PathBuf,
        /// The server's data dir, to sample the store's size on disk
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Checks a state saved by `run` again
    Verify {
        #[arg(long)]
        state: PathBuf,
    },
}

#[tokio::main]
async fn main() -> Res<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        // Below the server's 5 s keep-alive: a pooled connection is never reused just as the
        // server closes it (that race would show up as transport errors).
        .pool_idle_timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let report = match args.phase {
        Phase::Capacity {
            seconds,
            warmup_seconds,
            concurrency,
        } => {
            let world = World::setup(http, &args.base, 21).await?;
            capacity(world, seconds, warmup_seconds, concurrency).await
        }
        Phase::Run {
            seconds,
            rate,
            server_pid,
            sample_seconds,
            print_seconds,
            state,
            data_dir,
        } => {
            let world = World::setup(http.clone(), &args.base, 22).await?;
            let plan = RunPlan {
                seconds,
                rate,
                server_pid,
                sample_seconds: sample_seconds.max(1),
                print_seconds: print_seconds.max(1),
                data_dir,
            };
            let mut report = run(world.clone(), plan).await;
            let expected = world.expected_state();
            std::fs::write(&state, serde_json::to_vec(&expected)?)?;
            report["verify"] = verify(&http, &args.base, &expected).await;
            report
        }
        Phase::Verify { state } => {
            let expected: ExpectedState = serde_json::from_slice(&std::fs::read(&state)?)?;
            json!({"phase": "verify", "verify": verify(&http, &args.base, &expected).await})
        }
    };
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The workload

#[derive(Clone, Copy, Debug)]
enum Op {
    ProductGet,
    ProductList,
    MeKey,
    MeBearer,
    ListBearer,
    Create,
    Update,
    Delete,
    Rotate,
    Replace,
    LoginOk,
    LoginWrong,
    Refresh,
}

/// Weights per 1000 operations. Logins are rare: each costs an argon2id run (~20 ms of a core).
const MIX: [(Op, u64); 13] = [
    (Op::ProductGet, 283),
    (Op::ProductList, 80),
    (Op::MeKey, 150),
    (Op::MeBearer, 150),
    (Op::ListBearer, 50),
    (Op::Create, 100),
    (Op::Update, 80),
    (Op::Delete, 100),
    (Op::Rotate, 2),
    (Op::Replace, 1),
    (Op::LoginOk, 1),
    (Op::LoginWrong, 1),
    (Op::Refresh, 2),
];

fn pick(rng: &mut Rng) -> Op {
    let total: u64 = MIX.iter().map(|(_, w)| w).sum();
    let mut r = rng.below(total);
    for (op, w) in MIX {
        if r < w {
            return op;
        }
        r -= w;
    }
    Op::ProductGet
}

/// SplitMix64: small, fast, and good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn ean13(body: u64) -> String {
    pixee_pim::domain::Ean::from_body(body).as_str().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Counters

#[derive(Default)]
struct KindStats {
    statuses: BTreeMap<u16, u64>,
    latency_us: Vec<u32>,
    unexpected: u64,
    transport_errors: u64,
}

#[derive(Default)]
struct Window {
    requests: u64,
    five_xx: u64,
    /// Answered requests that write to the store (see `writes_store`).
    writes: u64,
    latency_us: Vec<u32>,
}

#[derive(Default)]
struct Counters {
    kinds: BTreeMap<&'static str, KindStats>,
    window: Window,
    ops: u64,
    requests: u64,
    five_xx: u64,
    unexpected: u64,
    transport_errors: u64,
    samples: Vec<String>,
    /// A checked-out product read back missing or with another stock than its last write.
    stale_reads: u64,
    /// A rotated-away or revoked key accepted on its next request.
    dead_key_accepted: u64,
    /// Writes whose outcome is unknown (transport error or 5xx): left out of the checks.
    uncertain_writes: u64,
}

impl Counters {
    fn note(&mut self, line: String) {
        if self.samples.len() < 30 {
            self.samples.push(line);
        }
    }
}

/// Whether an answered request wrote to the store: every successful request but the reads, and
/// every login attempt (a refused one still writes its audit event and lockout count).
fn writes_store(kind: &str, status: u16) -> bool {
    const READS: [&str; 5] = [
        "product.get",
        "product.list",
        "product.list.bearer",
        "me.bearer",
        "me.key",
    ];
    if kind.starts_with("login.") {
        return status < 500;
    }
    status < 300 && !READS.contains(&kind)
}

fn percentile_ms(values: &mut [u32], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64) * p / 100.0).ceil() as usize;
    f64::from(values[rank.clamp(1, values.len()) - 1]) / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Shared state

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

enum Cred<'a> {
    Key(&'a str),
    Bearer(&'a str),
}

struct Key {
    id: String,
    raw: String,
}

struct Product {
    id: String,
    stock: i64,
}

struct Session {
    access: Mutex<String>,
    /// Held across a refresh: two refreshes with one token would end the session (reuse).
    refresh: tokio::sync::Mutex<String>,
}

impl Session {
    fn token(&self) -> String {
        self.access.lock().expect("session lock").clone()
    }
}

/// What the store must hold once the load stops.
#[derive(Serialize, Deserialize)]
struct ExpectedState {
    /// (id, stock) of every product whose create was acknowledged and that was not deleted.
    products: Vec<(String, i64)>,
    deleted: Vec<String>,
    dead_keys: Vec<String>,
    live_keys: Vec<String>,
}

struct World {
    http: reqwest::Client,
    base: String,
    admin: Session,
    viewer: Session,
    keys: Vec<tokio::sync::RwLock<Key>>,
    /// Products not checked out by an operation right now.
    pool: Mutex<Vec<Product>>,
    /// Products alive, checked out or not.
    live: AtomicUsize,
    deleted: Mutex<Vec<String>>,
    dead_keys: Mutex<Vec<String>>,
    /// Keys created by a replacement whose revoke of the old key failed; still valid.
    spare_keys: Mutex<Vec<String>>,
    ean_prefix: u64,
    ean_next: AtomicU64,
    seeds: AtomicU64,
    stats: Mutex<Counters>,
}

/// An error and its sources, "a: b: c".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn refresh_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("refresh_token="))
        .and_then(|rest| rest.split(';').next())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl World {
    /// Logs in the admin, makes sure the viewer and decoy users exist, logs in the viewer,
    /// creates the key slots and the live set of products. `ean_prefix` keeps the phases'
    /// EANs apart.
    async fn setup(http: reqwest::Client, base: &str, ean_prefix: u64) -> Res<Arc<World>> {
        let admin_password =
            std::env::var("PIXEE_ADMIN_PASSWORD").map_err(|_| "PIXEE_ADMIN_PASSWORD is not set")?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let empty_session = || Session {
            access: Mutex::new(String::new()),
            refresh: tokio::sync::Mutex::new(String::new()),
        };
        let mut world = World {
            http,
            base: base.trim_end_matches('/').to_owned(),
            admin: empty_session(),
            viewer: empty_session(),
            keys: Vec::new(),
            pool: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            deleted: Mutex::new(Vec::new()),
            dead_keys: Mutex::new(Vec::new()),
            spare_keys: Mutex::new(Vec::new()),
            ean_prefix,
            ean_next: AtomicU64::new(0),
            seeds: AtomicU64::new(seed),
            stats: Mutex::new(Counters::default()),
        };
        let (access, refresh) = world
            .login("setup.login", ADMIN_EMAIL, &admin_password, &[200])
            .await
            .ok_or("the admin login failed")?;
        world.admin = Session {
            access: Mutex::new(access.clone()),
            refresh: tokio::sync::Mutex::new(refresh),
        };
        for email in [VIEWER_EMAIL, DECOY_EMAIL] {
            let body = json!({"email": email, "password": USER_PASSWORD, "role": "viewer"});
            world
                .call(
                    "setup.user",
                    Method::POST,
                    "/api/v1/users",
                    Cred::Bearer(&access),
                    Some(&body),
                    &[201, 409],
                )
                .await
                .ok_or("creating a user failed")?;
        }
        let (access, refresh) = world
            .login("setup.login", VIEWER_EMAIL, USER_PASSWORD, &[200])
            .await
            .ok_or("the viewer login failed")?;
        world.viewer = Session {
            access: Mutex::new(access),
            refresh: tokio::sync::Mutex::new(refresh),
        };
        for i in 0..KEY_SLOTS {
            let key = world
                .create_key(&format!("soak {ean_prefix}-{i}"))
                .await
                .ok_or("creating a key failed")?;
            world.keys.push(tokio::sync::RwLock::new(key));
        }
        let world = Arc::new(world);
        futures_util::stream::iter(0..LIVE_PRODUCTS)
            .map(|_| {
                let world = world.clone();
                async move {
                    // Stop at the first failure: a stalled server would cost a timeout each.
                    if world.stats.lock().expect("stats lock").transport_errors == 0 {
                        world.create(&mut world.rng()).await;
                    }
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        {
            let stats = world.stats.lock().expect("stats lock");
            if stats.unexpected + stats.transport_errors > 0 {
                return Err(format!("setup failed: {:?}", stats.samples).into());
            }
        }
        *world.stats.lock().expect("stats lock") = Counters::default();
        Ok(world)
    }

    fn rng(&self) -> Rng {
        Rng(self
            .seeds
            .fetch_add(0x632b_e59b_d9b4_e019, Ordering::Relaxed))
    }

    fn request(&self, method: Method, path: &str, cred: Option<Cred<'_>>) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match cred {
            Some(Cred::Key(k)) => req.header("X-API-Key", k),
            Some(Cred::Bearer(t)) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn call(
        &self,
        kind: &'static str,
        method: Method,
        path: &str,
        cred: Cred<'_>,
        body: Option<&Value>,
        expect: &[u16],
    ) -> Option<Reply> {
        let mut req = self.request(method, path, Some(cred));
        if let Some(body) = body {
            req = req.json(body);
        }
        self.send(kind, req, expect).await
    }

    /// `call` with one of the rotating API keys, held (so no rotation swaps it) only while the
    /// request is in flight.
    async fn call_with_key(
        &self,
        rng: &mut Rng,
        kind: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expect: &[u16],
    ) -> Option<Reply> {
        let key = self.slot(rng).read().await;
        self.call(kind, method, path, Cred::Key(&key.raw), body, expect)
            .await
    }

    /// Sends, times and counts one request. `None` on a transport error.
    async fn send(&self, kind: &'static str, req: RequestBuilder, expect: &[u16]) -> Option<Reply> {
        let started = Instant::now();
        let result = async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, bytes))
        }
        .await;
        let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        let mut stats = self.stats.lock().expect("stats lock");
        match result {
            Err(e) => {
                stats.transport_errors += 1;
                stats.kinds.entry(kind).or_default().transport_errors += 1;
                stats.note(format!("{kind}: transport error: {}", error_chain(&e)));
                None
            }
            Ok((status, headers, bytes)) => {
                stats.requests += 1;
                stats.window.requests += 1;
                stats.window.latency_us.push(us);
                if writes_store(kind, status) {
                    stats.window.writes += 1;
                }
                let k = stats.kinds.entry(kind).or_default();
                *k.statuses.entry(status).or_default() += 1;
                k.latency_us.push(us);
                let unexpected = !expect.contains(&status);
                if unexpected {
                    k.unexpected += 1;
                }
                if status >= 500 {
                    stats.five_xx += 1;
                    stats.window.five_xx += 1;
                }
                if unexpected {
                    stats.unexpected += 1;
                    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                    stats.note(format!("{kind}: {status} {text}"));
                }
                drop(stats);
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                Some(Reply {
                    status,
                    headers,
                    body,
                })
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.stats.lock().expect("stats lock"));
    }

    async fn login(
        &self,
        kind: &'static str,
        email: &str,
        password: &str,
        expect: &[u16],
    ) -> Option<(String, String)> {
        let body = json!({"email": email, "password": password});
        let reply = self
            .send(
                kind,
                self.request(Method::POST, "/api/v1/auth/login", None)
                    .json(&body),
                expect,
            )
            .await?;
        if reply.status != 200 {
            return None;
        }
        let access = reply.body["access_token"].as_str()?.to_owned();
        Some((access, refresh_cookie(&reply.headers)?))
    }

    async fn create_key(&self, name: &str) -> Option<Key> {
        let body = json!({"name": name, "scopes": SCOPES});
        let reply = self
            .call(
                "key.create",
                Method::POST,
                "/api/v1/api-keys",
                Cred::Bearer(&self.admin.token()),
                Some(&body),
                &[201],
            )
            .await?;
        Some(Key {
            id: reply.body["id"].as_str()?.to_owned(),
            raw: reply.body["key"].as_str()?.to_owned(),
        })
    }

    fn slot(&self, rng: &mut Rng) -> &tokio::sync::RwLock<Key> {
        &self.keys[rng.below(self.keys.len() as u64) as usize]
    }

    fn checkout(&self, rng: &mut Rng) -> Option<Product> {
        let mut pool = self.pool.lock().expect("pool lock");
        if pool.is_empty() {
            return None;
        }
        let i = rng.below(pool.len() as u64) as usize;
        Some(pool.swap_remove(i))
    }

    fn checkin(&self, p: Product) {
        self.pool.lock().expect("pool lock").push(p);
    }

    /// A product leaves the checks: deleted, or its last write has an unknown outcome.
    fn forget(&self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    async fn run_op(&self, rng: &mut Rng) {
        match pick(rng) {
            Op::ProductGet => self.product_get(rng).await,
            Op::ProductList => self.product_list(rng).await,
            Op::MeKey => {
                self.call_with_key(rng, "me.key", Method::GET, "/api/v1/auth/me", None, &[200])
                    .await;
            }
            Op::MeBearer => {
                let token = self.viewer.token();
                self.call(
                    "me.bearer",
                    Method::GET,
                    "/api/v1/auth/me",
                    Cred::Bearer(&token),
                    None,
                    &[200],
                )
                .await;
            }
            Op::ListBearer => {
                let token = self.viewer.token();
                let path = format!("/api/v1/products?per_page=20&page={}", 1 + rng.below(5));
                self.call(
                    "product.list.bearer",
                    Method::GET,
                    &path,
                    Cred::Bearer(&token),
                    None,
                    &[200],
                )
                .await;
            }
            Op::Create if self.live.load(Ordering::Relaxed) > LIVE_PRODUCTS * 11 / 10 => {
                self.delete(rng).await;
            }
            Op::Create => self.create(rng).await,
            Op::Update => self.update(rng).await,
            Op::Delete if self.live.load(Ordering::Relaxed) < LIVE_PRODUCTS * 9 / 10 => {
                self.create(rng).await;
            }
            Op::Delete => self.delete(rng).await,
            Op::Rotate => self.rotate(rng).await,
            Op::Replace => self.replace(rng).await,
            Op::LoginOk => self.login_ok().await,
            Op::LoginWrong => self.login_wrong(rng).await,
            Op::Refresh => self.refresh(rng).await,
        }
        self.count(|s| s.ops += 1);
    }

    async fn product_get(&self, rng: &mut Rng) {
        let Some(p) = self.checkout(rng) else {
            return self.product_list(rng).await;
        };
        let path = format!("/api/v1/products/{}", p.id);
        let reply = self
            .call_with_key(rng, "product.get", Method::GET, &path, None, &[200])
            .await;
        if let Some(r) = reply {
            let stale = r.status == 404 || (r.status == 200 && r.body["stock"] != json!(p.stock));
            if stale {
                self.count(|s| {
                    s.stale_reads += 1;
                    s.note(format!(
                        "stale read of {}: {} stock {} (expected {})",
                        p.id, r.status, r.body["stock"], p.stock
                    ));
                });
            }
        }
        self.checkin(p);
    }

    async fn product_list(&self, rng: &mut Rng) {
        let path = format!("/api/v1/products?per_page=20&page={}", 1 + rng.below(5));
        self.call_with_key(rng, "product.list", Method::GET, &path, None, &[200])
            .await;
    }

    async fn create(&self, rng: &mut Rng) {
        let n = self.ean_next.fetch_add(1, Ordering::Relaxed);
        let ean = ean13(self.ean_prefix * 10_000_000_000 + n);
        let stock = rng.below(1000) as i64;
        let body = json!({
            "ean": ean,
            "sku": format!("SOAK-{n}"),
            "name": format!("Soak product {n}"),
            "description": "created by the soak benchmark",
            "price": 9.99,
            "stock": stock,
            "attributes": {"run": "soak"},
        });
        let reply = self
            .call_with_key(
                rng,
                "product.create",
                Method::POST,
                "/api/v1/products",
                Some(&body),
                &[201],
            )
            .await;
        match reply {
            Some(r) if r.status == 201 => match r.body["id"].as_str() {
                Some(id) => {
                    self.live.fetch_add(1, Ordering::Relaxed);
                    self.checkin(Product {
                        id: id.to_owned(),
                        stock,
                    });
                }
                None => self.count(|s| s.note(format!("create: 201 without an id: {}", r.body))),
            },
            Some(r) if r.status < 500 => {}
            _ => self.count(|s| s.uncertain_writes += 1),
        }
    }

    async fn update(&self, rng: &mut Rng) {
        let Some(mut p) = self.checkout(rng) else {
            return self.create(rng).await;
        };
        let stock = rng.below(100_000) as i64;
        let body = json!({"stock": stock, "price": (rng.below(10_000) as f64) / 100.0});
        let path = format!("/api/v1/products/{}", p.id);
        let reply = self
            .call_with_key(
                rng,
                "product.update",
                Method::PATCH,
                &path,
                Some(&body),
                &[200],
            )
            .await;
        match reply {
            Some(r) if r.status == 200 => {
                p.stock = stock;
                self.checkin(p);
            }
            Some(r) if r.status == 404 => {
                self.count(|s| {
                    s.stale_reads += 1;
                    s.note(format!("update of {} answered 404", p.id));
                });
                self.forget();
            }
            Some(r) if r.status < 500 => self.checkin(p),
            _ => {
                self.count(|s| s.uncertain_writes += 1);
                self.forget();
            }
        }
    }

    async fn delete(&self, rng: &mut Rng) {
        let Some(p) = self.checkout(rng) else {
            return self.create(rng).await;
        };
        let path = format!("/api/v1/products/{}", p.id);
        let reply = self
            .call_with_key(rng, "product.delete", Method::DELETE, &path, None, &[204])
            .await;
        match reply {
            Some(r) if r.status == 204 => {
                self.deleted.lock().expect("deleted lock").push(p.id);
                self.forget();
            }
            Some(r) if r.status < 500 && r.status != 404 => self.checkin(p),
            Some(r) if r.status == 404 => {
                self.count(|s| {
                    s.stale_reads += 1;
                    s.note(format!("delete of {} answered 404", p.id));
                });
                self.forget();
            }
            _ => {
                self.count(|s| s.uncertain_writes += 1);
                self.forget();
            }
        }
    }

    /// The old key's very next request must be refused.
    async fn probe_dead(&self, raw: String) {
        let reply = self
            .call(
                "key.dead-probe",
                Method::GET,
                "/api/v1/auth/me",
                Cred::Key(&raw),
                None,
                &[401],
            )
            .await;
        if reply.is_some_and(|r| r.status != 401) {
            self.count(|s| s.dead_key_accepted += 1);
        }
        self.dead_keys.lock().expect("dead keys lock").push(raw);
    }

    /// Rotation by the key itself or by the admin, alternately.
    async fn rotate(&self, rng: &mut Rng) {
        let mut key = self.slot(rng).write().await;
        let admin = self.admin.token();
        let cred = if rng.below(2) == 0 {
            Cred::Key(&key.raw)
        } else {
            Cred::Bearer(&admin)
        };
        let path = format!("/api/v1/api-keys/{}/rotate", key.id);
        let reply = self
            .call("key.rotate", Method::POST, &path, cred, None, &[200])
            .await;
        if let Some(new) = reply.as_ref().and_then(|r| r.body["key"].as_str()) {
            let old = std::mem::replace(&mut key.raw, new.to_owned());
            self.probe_dead(old).await;
        }
    }

    /// A new key takes the slot and the old one is revoked.
    async fn replace(&self, rng: &mut Rng) {
        let mut key = self.slot(rng).write().await;
        let n = self.ean_next.fetch_add(1, Ordering::Relaxed);
        let Some(new) = self.create_key(&format!("soak replacement {n}")).await else {
            return;
        };
        let path = format!("/api/v1/api-keys/{}", key.id);
        let admin = self.admin.token();
        let reply = self
            .call(
                "key.revoke",
                Method::DELETE,
                &path,
                Cred::Bearer(&admin),
                None,
                &[204],
            )
            .await;
        if reply.is_some_and(|r| r.status == 204) {
            let old = std::mem::replace(&mut *key, new);
            self.probe_dead(old.raw).await;
        } else {
            self.spare_keys.lock().expect("spare lock").push(new.raw);
        }
    }

    /// Login, one request with the new session, logout.
    async fn login_ok(&self) {
        let Some((access, _)) = self
            .login("login.ok", VIEWER_EMAIL, USER_PASSWORD, &[200])
            .await
        else {
            return;
        };
        self.call(
            "me.new-session",
            Method::GET,
            "/api/v1/auth/me",
            Cred::Bearer(&access),
            None,
            &[200],
        )
        .await;
        self.call(
            "logout",
            Method::POST,
            "/api/v1/auth/logout",
            Cred::Bearer(&access),
            None,
            &[204],
        )
        .await;
    }

    /// An unknown email (401), or the decoy's wrong password (401, or 423 once it locked).
    async fn login_wrong(&self, rng: &mut Rng) {
        if rng.below(2) == 0 {
            let email = format!("ghost-{:x}@example.com", rng.next());
            self.login("login.unknown", &email, "wrong password 1", &[401])
                .await;
        } else {
            self.login("login.wrong", DECOY_EMAIL, "wrong password 1", &[401, 423])
                .await;
        }
    }

    async fn refresh(&self, rng: &mut Rng) {
        let session = if rng.below(2) == 0 {
            &self.admin
        } else {
            &self.viewer
        };
        let mut cookie = session.refresh.lock().await;
        let req = self
            .request(Method::POST, "/api/v1/auth/refresh", None)
            .header("Cookie", format!("refresh_token={}", *cookie))
            .json(&json!({}));
        let Some(reply) = self.send("refresh", req, &[200]).await else {
            return;
        };
        if reply.status != 200 {
            return;
        }
        match (
            reply.body["access_token"].as_str(),
            refresh_cookie(&reply.headers),
        ) {
            (Some(access), Some(next)) => {
                *session.access.lock().expect("session lock") = access.to_owned();
                *cookie = next;
            }
            _ => self.count(|s| s.note("refresh: 200 without a token or cookie".into())),
        }
    }

    fn expected_state(&self) -> ExpectedState {
        let products = self
            .pool
            .lock()
            .expect("pool lock")
            .iter()
            .map(|p| (p.id.clone(), p.stock))
            .collect();
        // A slot still write-locked (only if the drain timed out) is left out.
        let mut live_keys: Vec<String> = self
            .keys
            .iter()
            .filter_map(|k| k.try_read().ok().map(|k| k.raw.clone()))
            .collect();
        live_keys.extend(self.spare_keys.lock().expect("spare lock").iter().cloned());
        ExpectedState {
            products,
            deleted: self.deleted.lock().expect("deleted lock").clone(),
            dead_keys: self.dead_keys.lock().expect("dead keys lock").clone(),
            live_keys,
        }
    }

    /// Counters of the load so far, as JSON.
    fn report(&self, seconds: f64) -> Value {
        let mut stats = self.stats.lock().expect("stats lock");
        let kinds: serde_json::Map<String, Value> = stats
            .kinds
            .iter_mut()
            .map(|(name, k)| {
                let count: u64 = k.statuses.values().sum();
                let statuses: BTreeMap<String, u64> = k
                    .statuses
                    .iter()
                    .map(|(s, n)| (s.to_string(), *n))
                    .collect();
                (
                    (*name).to_owned(),
                    json!({
                        "count": count,
                        "statuses": statuses,
                        "unexpected": k.unexpected,
                        "transport_errors": k.transport_errors,
                        "p50_ms": percentile_ms(&mut k.latency_us, 50.0),
                        "p99_ms": percentile_ms(&mut k.latency_us, 99.0),
                    }),
                )
            })
            .collect();
        // Product writes (create, update, delete) against product reads (one product, a page).
        let pooled = |names: &[&str]| {
            let mut all: Vec<u32> = names
                .iter()
                .filter_map(|n| stats.kinds.get(n))
                .flat_map(|k| k.latency_us.iter().copied())
                .collect();
            percentile_ms(&mut all, 99.0)
        };
        let write_p99 = pooled(&["product.create", "product.update", "product.delete"]);
        let read_p99 = pooled(&["product.get", "product.list"]);
        json!({
            "seconds": seconds,
            "product_write_p99_ms": write_p99,
            "product_read_p99_ms": read_p99,
            "ops": stats.ops,
            "requests": stats.requests,
            "ops_per_s": stats.ops as f64 / seconds,
            "requests_per_s": stats.requests as f64 / seconds,
            "five_xx": stats.five_xx,
            "unexpected": stats.unexpected,
            "transport_errors": stats.transport_errors,
            "stale_reads": stats.stale_reads,
            "dead_key_accepted": stats.dead_key_accepted,
            "uncertain_writes": stats.uncertain_writes,
            "samples": stats.samples,
            "kinds": kinds,
            "live_products": self.live.load(Ordering::Relaxed),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Phases

async fn capacity(world: Arc<World>, seconds: u64, warmup: u64, concurrency: usize) -> Value {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(warmup + seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let world = world.clone();
            tokio::spawn(async move {
                let mut rng = world.rng();
                while Instant::now() < deadline {
                    world.run_op(&mut rng).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let (ops0, req0) = {
        let s = world.stats.lock().expect("stats lock");
        (s.ops, s.requests)
    };
    tokio::time::sleep_until(deadline.into()).await;
    let (ops1, req1) = {
        let s = world.stats.lock().expect("stats lock");
        (s.ops, s.requests)
    };
    for t in tasks {
        let _ = t.await;
    }
    let secs = seconds as f64;
    let mut report = world.report(started.elapsed().as_secs_f64());
    report["phase"] = json!("capacity");
    report["concurrency"] = json!(concurrency);
    report["measured_seconds"] = json!(secs);
    report["capacity_ops_per_s"] = json!((ops1 - ops0) as f64 / secs);
    report["capacity_requests_per_s"] = json!((req1 - req0) as f64 / secs);
    report
}

struct RunPlan {
    seconds: u64,
    rate: f64,
    server_pid: u32,
    sample_seconds: u64,
    print_seconds: u64,
    data_dir: Option<PathBuf>,
}

/// Bytes in the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The host's CPU time counters from /proc/stat (all cores): busy, iowait, steal, total.
fn host_cpu() -> Option<[u64; 4]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    let total: u64 = f.iter().take(8).sum();
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    Some([busy, get(4), get(7), total])
}

/// The server's CPU time (user + system) in clock ticks.
fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Shares of the host's CPU time between two `host_cpu` readings, in percent: busy, iowait,
/// steal (time the hypervisor gave to someone else).
fn host_shares(before: Option<[u64; 4]>, after: Option<[u64; 4]>) -> Value {
    match (before, after) {
        (Some(b), Some(a)) if a[3] > b[3] => {
            let total = (a[3] - b[3]) as f64;
            let pct = |i: usize| ((a[i] - b[i]) as f64 * 1000.0 / total).round() / 10.0;
            json!({"busy_pct": pct(0), "iowait_pct": pct(1), "steal_pct": pct(2)})
        }
        _ => Value::Null,
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

async fn run(world: Arc<World>, plan: RunPlan) -> Value {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut samples = vec![json!({"t": 0.0, "rss_kib": rss_kib(plan.server_pid)})];
    let mut issued: u64 = 0;
    let mut skipped: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut next_sample = plan.sample_seconds;
    let mut writes: u64 = 0;
    // Seconds since a request last got an answer while some were in flight.
    let mut silent_since: Option<f64> = None;
    let mut stalled = false;
    // What each window says about the machine rather than the server: the host's CPU shares,
    // the server's CPU time, and how late this driver's 1 ms tick ran (a starved driver
    // measures its own delay as latency).
    let mut cpu_before = host_cpu();
    let mut server_ticks_before = process_cpu_ticks(plan.server_pid);
    let mut tick_lag_ms: f64 = 0.0;
    let mut last_tick = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        tick_lag_ms = tick_lag_ms.max(now.duration_since(last_tick).as_secs_f64() * 1000.0 - 1.0);
        last_tick = now;
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed >= plan.seconds as f64 {
            break;
        }
        let due = (elapsed * plan.rate) as u64;
        while issued < due {
            issued += 1;
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                skipped += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (world, in_flight) = (world.clone(), in_flight.clone());
            tokio::spawn(async move {
                world.run_op(&mut world.rng()).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        if elapsed >= next_sample as f64 {
            let window = std::mem::take(&mut world.stats.lock().expect("stats lock").window);
            let mut latency = window.latency_us;
            writes += window.writes;
            let cpu_now = host_cpu();
            let server_ticks = process_cpu_ticks(plan.server_pid);
            let server_cpu_s = server_ticks
                .zip(server_ticks_before)
                .map(|(a, b)| a.saturating_sub(b) as f64 / 100.0);
            let sample = json!({
                "host": host_shares(cpu_before, cpu_now),
                "server_cpu_s": server_cpu_s,
                "driver_tick_lag_ms": tick_lag_ms,
                "t": elapsed,
                "rss_kib": rss_kib(plan.server_pid),
                "disk_bytes": plan.data_dir.as_deref().map(disk_bytes),
                "writes": writes,
                "requests": window.requests,
                "five_xx": window.five_xx,
                "p50_ms": percentile_ms(&mut latency, 50.0),
                "p99_ms": percentile_ms(&mut latency, 99.0),
                "in_flight": in_flight.load(Ordering::Relaxed),
                "issued": issued,
                "skipped": skipped,
            });
            if next_sample.is_multiple_of(plan.print_seconds) {
                eprintln!(
                    "soak: t={:>4}s rss={:.1} MiB disk={:.1} MiB req/s={:.0} 5xx={} p50={:.2} ms p99={:.2} ms in-flight={}",
                    next_sample,
                    sample["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                    sample["disk_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                    window.requests as f64 / plan.sample_seconds as f64,
                    window.five_xx,
                    sample["p50_ms"].as_f64().unwrap_or(0.0),
                    sample["p99_ms"].as_f64().unwrap_or(0.0),
                    sample["in_flight"],
                );
            }
            samples.push(sample);
            cpu_before = cpu_now;
            server_ticks_before = server_ticks;
            tick_lag_ms = 0.0;
            next_sample += plan.sample_seconds;
            if window.requests == 0 && in_flight.load(Ordering::Relaxed) > 0 {
                let since = *silent_since.get_or_insert(elapsed);
                if elapsed - since >= STALL_SECONDS {
                    eprintln!("soak: no answer for {STALL_SECONDS} s; the server stalled");
                    stalled = true;
                    break;
                }
            } else {
                silent_since = None;
            }
        }
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let drain = Instant::now();
    while in_flight.load(Ordering::Relaxed) > 0 && drain.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    samples.push(json!({"t": started.elapsed().as_secs_f64(), "rss_kib": rss_kib(plan.server_pid), "after_drain": true}));
    let mut report = world.report(load_seconds);
    report["phase"] = json!("run");
    report["target_rate"] = json!(plan.rate);
    report["issued"] = json!(issued);
    report["skipped"] = json!(skipped);
    report["still_in_flight"] = json!(in_flight.load(Ordering::Relaxed));
    report["rss_samples"] = Value::Array(samples);
    report["stalled"] = json!(stalled);
    report
}

// ---------------------------------------------------------------------------------------------
// Verification

#[derive(Default, Serialize)]
struct Verification {
    products_checked: u64,
    products_missing: u64,
    products_wrong_value: u64,
    deleted_checked: u64,
    deleted_still_readable: u64,
    dead_keys_checked: u64,
    dead_keys_accepted: u64,
    live_keys_checked: u64,
    live_keys_refused: u64,
    five_xx: u64,
    transport_errors: u64,
    samples: Vec<String>,
}

/// Status and body of a check's request, or its transport error.
type Outcome = Result<(u16, Value), String>;

enum Check {
    Product(String, i64),
    Deleted(String),
    DeadKey(String),
    LiveKey(String),
}

async fn verify(http: &reqwest::Client, base: &str, state: &ExpectedState) -> Value {
    let base = base.trim_end_matches('/');
    let healthz = http
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    if !healthz.is_ok_and(|r| r.status().is_success()) {
        return json!({"error": "the server does not answer /healthz"});
    }
    let Some(reader) = state.live_keys.first() else {
        return json!({"error": "no live key to read with"});
    };
    let checks = state
        .products
        .iter()
        .map(|(id, stock)| Check::Product(id.clone(), *stock))
        .chain(state.deleted.iter().cloned().map(Check::Deleted))
        .chain(state.dead_keys.iter().cloned().map(Check::DeadKey))
        .chain(state.live_keys.iter().cloned().map(Check::LiveKey));
    let results: Vec<(Check, Outcome)> = futures_util::stream::iter(checks)
        .map(|check| async move {
            let (path, key) = match &check {
                Check::Product(id, _) | Check::Deleted(id) => {
                    (format!("/api/v1/products/{id}"), reader.as_str())
                }
                Check::DeadKey(raw) | Check::LiveKey(raw) => {
                    ("/api/v1/auth/me".to_owned(), raw.as_str())
                }
            };
            let result = async {
                let resp = http
                    .get(format!("{base}{path}"))
                    .header("X-API-Key", key)
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let body = resp.json::<Value>().await.unwrap_or(Value::Null);
                Ok::<_, reqwest::Error>((status, body))
            }
            .await
            .map_err(|e| error_chain(&e));
            (check, result)
        })
        .buffer_unordered(VERIFY_CONCURRENCY)
        .collect()
        .await;
    let mut v = Verification::default();
    for (check, result) in results {
        let (status, body) = match result {
            Ok(r) => r,
            Err(e) => {
                v.transport_errors += 1;
                if v.samples.len() < 30 {
                    v.samples.push(e);
                }
                continue;
            }
        };
        if status >= 500 {
            v.five_xx += 1;
        }
        let bad = match &check {
            Check::Product(_, stock) => {
                v.products_checked += 1;
                if status != 200 {
                    v.products_missing += 1;
                    true
                } else if body["stock"] != json!(stock) {
                    v.products_wrong_value += 1;
                    true
                } else {
                    false
                }
            }
            Check::Deleted(_) => {
                v.deleted_checked += 1;
                let bad = status != 404;
                v.deleted_still_readable += u64::from(bad);
                bad
            }
            Check::DeadKey(_) => {
                v.dead_keys_checked += 1;
                let bad = status != 401;
                v.dead_keys_accepted += u64::from(bad);
                bad
            }
            Check::LiveKey(_) => {
                v.live_keys_checked += 1;
                let bad = status != 200;
                v.live_keys_refused += u64::from(bad);
                bad
            }
        };
        if bad && v.samples.len() < 30 {
            let what = match &check {
                Check::Product(id, stock) => format!("product {id} (stock {stock})"),
                Check::Deleted(id) => format!("deleted product {id}"),
                Check::DeadKey(raw) | Check::LiveKey(raw) => {
                    format!("key {}…", &raw[..raw.len().min(12)])
                }
            };
            v.samples.push(format!("{what}: {status} {body}"));
        }
    }
    serde_json::to_value(&v).unwrap_or(Value::Null)
}
