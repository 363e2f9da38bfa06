//! Prometheus metrics (SPEC §11): what the server counts while it serves, and the text a
//! scrape of `GET /metrics` returns.
//!
//! One registry per process, like the default registry of the Go client: the counters are
//! bumped from the request middleware, the auth path and the login flow, which share no
//! handle but the process. Counters on the hot path are handles fetched once (an atomic add
//! each), never a family lookup by label; the per-request series are looked up by route
//! template (a bounded set), never by raw path. No label carries a key, a token, an email or
//! a tenant: outcomes, routes, methods, statuses and cache names only.
//!
//! Gauges that describe state (argon2 queue, jobs by state, store size, cache hit ratios) are
//! read at scrape time from the services, so they cost nothing between scrapes.
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Latency buckets in seconds: 500 µs to 10 s, about ×2.5 apart.
const LATENCY_BUCKETS: [f64; 11] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// The method of a request, as a closed set (an unusual method is `other`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    other,
}

impl HttpMethod {
    pub fn of(m: &actix_web::http::Method) -> HttpMethod {
        use actix_web::http::Method;
        match *m {
            Method::GET => HttpMethod::GET,
            Method::HEAD => HttpMethod::HEAD,
            Method::POST => HttpMethod::POST,
            Method::PUT => HttpMethod::PUT,
            Method::PATCH => HttpMethod::PATCH,
            Method::DELETE => HttpMethod::DELETE,
            Method::OPTIONS => HttpMethod::OPTIONS,
            _ => HttpMethod::other,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: HttpMethod,
    route: String,
    status: u16,
}

/// The latency histograms' labels: the route template's area (its first segment after
/// `/api/v1`: `products`, `auth`, `ext`, …) and whether the method reads or writes. A
/// histogram per route template and method would make a scrape of a server that has served
/// every operation about 110 KiB (91 operations × 13 lines); per area it stays near 25 KiB,
/// and the requests counter still has every route template and status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AreaLabels {
    area: String,
    access: ReadWrite,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum ReadWrite {
    read,
    write,
}

/// `/api/v1/products/{id}` → `products`; `/healthz` → `healthz`; `/` → `root`.
fn area(route: &str) -> &str {
    let rest = route.strip_prefix("/api/v1").unwrap_or(route);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    match rest.split('/').next() {
        Some("") | None => "root",
        Some(first) => first,
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheResult {
    cache: &'static str,
    result: &'static str,
}

/// How a credential check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Ok,
    /// Unknown, malformed, revoked, expired or of the wrong kind (a 401).
    Invalid,
    /// Valid, but refused for its tenant or header use (400/403).
    Refused,
    /// Valid, but over its rate limit (429).
    RateLimited,
}

impl Verification {
    const ALL: [Verification; 4] = [
        Verification::Ok,
        Verification::Invalid,
        Verification::Refused,
        Verification::RateLimited,
    ];

    fn label(self) -> &'static str {
        match self {
            Verification::Ok => "ok",
            Verification::Invalid => "invalid",
            Verification::Refused => "refused",
            Verification::RateLimited => "rate_limited",
        }
    }
}

/// How a password login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Ok,
    InvalidCredentials,
    Locked,
    RateLimited,
    /// Answered 503: no password-hash slot came free in time.
    Busy,
    /// Refused for another reason (bad input, no tenant, an internal error).
    Refused,
}

impl Login {
    const ALL: [Login; 6] = [
        Login::Ok,
        Login::InvalidCredentials,
        Login::Locked,
        Login::RateLimited,
        Login::Busy,
        Login::Refused,
    ];

    fn label(self) -> &'static str {
        match self {
            Login::Ok => "ok",
            Login::InvalidCredentials => "invalid_credentials",
            Login::Locked => "locked",
            Login::RateLimited => "rate_limited",
            Login::Busy => "busy",
            Login::Refused => "refused",
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    KeyReads,
    KeyWrites,
    Login,
    Refresh,
}

impl Limit {
    const ALL: [Limit; 4] = [
        Limit::KeyReads,
        Limit::KeyWrites,
        Limit::Login,
        Limit::Refresh,
    ];

    fn label(self) -> &'static str {
        match self {
            Limit::KeyReads => "key_reads",
            Limit::KeyWrites => "key_writes",
            Limit::Login => "login",
            Limit::Refresh => "refresh",
        }
    }
}

/// Hits and misses of one record cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
}

/// What a scrape reads from the services at that moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Logins waiting for an argon2 slot, and hashes running.
    pub argon2_waiting: u64,
    pub argon2_running: u64,
    /// Jobs by state (every state listed, zeros included).
    pub jobs: Vec<(&'static str, u64)>,
    pub store_bytes: u64,
    pub search_index_bytes: u64,
    pub caches: Vec<(&'static str, CacheCounts)>,
    /// Whether this process's caches are trusted (always on sled; on a cluster node, while
    /// its lease holds and its listener works: `store/cluster.rs`).
    pub caches_trusted: bool,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<AreaLabels, Histogram>,
    // Sized by each outcome's list (and built by mapping it), so every outcome has its counter.
    key_checks: [Counter; Verification::ALL.len()],
    token_checks: [Counter; Verification::ALL.len()],
    logins: [Counter; Login::ALL.len()],
    lockouts: Counter,
    refusals: [Counter; Limit::ALL.len()],
    argon2_waiting: Gauge,
    argon2_running: Gauge,
    jobs: Family<StateLabel, Gauge>,
    store_bytes: Gauge,
    search_bytes: Gauge,
    caches_trusted: Gauge,
    cache_lookups: Family<CacheResult, Counter<u64, AtomicU64>>,
    cache_ratio: Family<CacheLabel, Gauge<f64, AtomicU64>>,
    rendering: std::sync::Mutex<()>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
/// Off (`--metrics false`): nothing is counted and `/metrics` is not served.
static ENABLED: AtomicBool = AtomicBool::new(true);

pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pixee");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status",
            requests.clone(),
        );
        let latency =
            Family::<AreaLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response, by area of the API and read or write",
            Unit::Seconds,
            latency.clone(),
        );
        let key_family = Family::<Outcome, Counter>::default();
        registry.register(
            "api_key_verifications",
            "API keys checked, by outcome",
            key_family.clone(),
        );
        let token_family = Family::<Outcome, Counter>::default();
        registry.register(
            "access_token_verifications",
            "Session access tokens checked, by outcome",
            token_family.clone(),
        );
        let login_family = Family::<Outcome, Counter>::default();
        registry.register(
            "logins",
            "Password logins, by outcome",
            login_family.clone(),
        );
        let lockouts = Counter::default();
        registry.register(
            "lockouts",
            "Emails locked after repeated failed logins",
            lockouts.clone(),
        );
        let refusal_family = Family::<LimitLabel, Counter>::default();
        registry.register(
            "rate_limit_refusals",
            "Requests refused by a rate limit, by limit",
            refusal_family.clone(),
        );
        let argon2_waiting = Gauge::default();
        registry.register(
            "argon2_queue_depth",
            "Password hashes waiting for a slot",
            argon2_waiting.clone(),
        );
        let argon2_running = Gauge::default();
        registry.register(
            "argon2_running",
            "Password hashes running",
            argon2_running.clone(),
        );
        let jobs = Family::<StateLabel, Gauge>::default();
        registry.register("jobs", "Import and export jobs, by state", jobs.clone());
        let store_bytes = Gauge::default();
        registry.register_with_unit(
            "store_size",
            "Size of the store's files on disk",
            Unit::Bytes,
            store_bytes.clone(),
        );
        let search_bytes = Gauge::default();
        registry.register_with_unit(
            "search_index_size",
            "Size of the search index's files on disk",
            Unit::Bytes,
            search_bytes.clone(),
        );
        let caches_trusted = Gauge::default();
        registry.register(
            "caches_trusted",
            "1 while the auth caches may be served (on a cluster node: its lease holds and \
             its listener works), else 0: every lookup reads the store",
            caches_trusted.clone(),
        );
        let cache_lookups = Family::<CacheResult, Counter<u64, AtomicU64>>::default();
        registry.register(
            "cache_lookups",
            "Lookups in the auth path's record caches, by cache and result",
            cache_lookups.clone(),
        );
        let cache_ratio = Family::<CacheLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "cache_hit_ratio",
            "Share of lookups served from a record cache since start",
            cache_ratio.clone(),
        );
        // Each array is its outcome list mapped to handles: one counter per outcome, by type.
        let outcome = |family: &Family<Outcome, Counter>, outcome: &'static str| {
            family.get_or_create_owned(&Outcome { outcome })
        };
        let key_checks = Verification::ALL.map(|v| outcome(&key_family, v.label()));
        let token_checks = Verification::ALL.map(|v| outcome(&token_family, v.label()));
        let logins = Login::ALL.map(|l| outcome(&login_family, l.label()));
        let refusals = Limit::ALL
            .map(|l| refusal_family.get_or_create_owned(&LimitLabel { limit: l.label() }));
        Metrics {
            registry,
            requests,
            latency,
            key_checks,
            token_checks,
            logins,
            lockouts,
            refusals,
            argon2_waiting,
            argon2_running,
            jobs,
            store_bytes,
            search_bytes,
            caches_trusted,
            cache_lookups,
            cache_ratio,
            rendering: std::sync::Mutex::new(()),
        }
    }

    /// One answered request: `route` is the matched route template (`unmatched` when none).
    pub fn request(&self, method: HttpMethod, route: String, status: u16, seconds: f64) {
        if !enabled() {
            return;
        }
        let labels = RequestLabels {
            method,
            route,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        let access = match method {
            HttpMethod::GET | HttpMethod::HEAD | HttpMethod::OPTIONS => ReadWrite::read,
            _ => ReadWrite::write,
        };
        let area = area(&labels.route).to_owned();
        self.latency
            .get_or_create(&AreaLabels { area, access })
            .observe(seconds);
    }

    pub fn key_checked(&self, outcome: Verification) {
        if !enabled() {
            return;
        }
        self.key_checks[outcome as usize].inc();
    }

    pub fn token_checked(&self, outcome: Verification) {
        if !enabled() {
            return;
        }
        self.token_checks[outcome as usize].inc();
    }

    pub fn login(&self, outcome: Login) {
        if !enabled() {
            return;
        }
        self.logins[outcome as usize].inc();
    }

    pub fn lockout(&self) {
        if !enabled() {
            return;
        }
        self.lockouts.inc();
    }

    pub fn refused(&self, limit: Limit) {
        if !enabled() {
            return;
        }
        self.refusals[limit as usize].inc();
    }

    /// The text of a scrape (Prometheus text format 0.0.4), with `now`'s state gauges.
    pub fn render(&self, now: &Snapshot) -> Result<String, std::fmt::Error> {
        // One scrape at a time: the cache counters are moved up to the caches' totals, and two
        // scrapes doing that at once would count the difference twice.
        let _one = self.rendering.lock();
        self.argon2_waiting.set(clamp(now.argon2_waiting));
        self.argon2_running.set(clamp(now.argon2_running));
        for &(state, n) in &now.jobs {
            self.jobs.get_or_create(&StateLabel { state }).set(clamp(n));
        }
        self.store_bytes.set(clamp(now.store_bytes));
        self.search_bytes.set(clamp(now.search_index_bytes));
        self.caches_trusted.set(i64::from(now.caches_trusted));
        for &(cache, c) in &now.caches {
            for (result, n) in [("hit", c.hits), ("miss", c.misses)] {
                let counter = self
                    .cache_lookups
                    .get_or_create(&CacheResult { cache, result });
                // Counters only move forward; the caches' own totals are the truth.
                let seen = counter.get();
                if n > seen {
                    counter.inc_by(n - seen);
                }
            }
            let lookups = c.hits + c.misses;
            let ratio = if lookups == 0 {
                0.0
            } else {
                c.hits as f64 / lookups as f64
            };
            self.cache_ratio
                .get_or_create(&CacheLabel { cache })
                .set(ratio);
        }
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Reads the state gauges from the services.
pub fn snapshot(
    auth: &crate::auth::Auth,
    catalog: &crate::catalog::Catalog,
    jobs: &crate::jobs::Jobs,
) -> Result<Snapshot, crate::error::Error> {
    let (argon2_waiting, argon2_running) = auth.passwords.load();
    let (store_bytes, search_index_bytes) = catalog.disk_usage()?;
    let mut caches = catalog.cache_counts().to_vec();
    caches.push(("access_tokens", auth.jwt.cache_counts()));
    Ok(Snapshot {
        argon2_waiting,
        argon2_running,
        jobs: jobs.counts_by_state()?,
        store_bytes,
        search_index_bytes,
        caches,
        caches_trusted: catalog.caches_trusted(),
    })
}

/// Who may scrape: with a token, whoever sends it; without, only clients on this machine
/// that did not come through a proxy (a reverse proxy on the same host connects from
/// loopback, and would otherwise hand the metrics to the internet).
#[derive(Clone, Default)]
pub struct Access {
    /// The token's SHA-256: compared digest to digest, so not even its length shows.
    token: Option<crate::domain::Digest>,
    /// `--trust-forwarded-for` is set: a proxy stands in front, so a loopback peer is no proof
    /// of a local client.
    behind_proxy: bool,
}

impl Access {
    pub fn new(token: Option<String>, behind_proxy: bool) -> Access {
        Access {
            token: token.map(|t| crate::auth::secret::sha256(t.as_bytes())),
            behind_proxy,
        }
    }

    pub fn check(
        &self,
        peer: Option<std::net::IpAddr>,
        proxied: bool,
        authorization: Option<&str>,
    ) -> Result<(), crate::error::Error> {
        use crate::error::{Error, ErrorKind};
        match &self.token {
            Some(token) => {
                let sent = authorization.and_then(crate::auth::bearer_token);
                match sent {
                    Some(sent)
                        if crate::domain::constant_time_eq(
                            &crate::auth::secret::sha256(sent.as_bytes()),
                            token,
                        ) =>
                    {
                        Ok(())
                    }
                    _ => Err(Error::new(
                        ErrorKind::InvalidToken,
                        "send the metrics token as Authorization: Bearer <token>",
                    )),
                }
            }
            None if !proxied
                && !self.behind_proxy
                && peer.is_some_and(|ip| ip.to_canonical().is_loopback()) =>
            {
                Ok(())
            }
            None => Err(Error::forbidden(
                "metrics are served to this machine only; set --metrics-token to scrape from elsewhere",
            )),
        }
    }
}

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_are_the_first_segment_of_the_template() {
        assert_eq!(area("/api/v1/products/{id}"), "products");
        assert_eq!(area("/api/v1/ext/products/{ean}"), "ext");
        assert_eq!(area("/api/v1/auth/login"), "auth");
        assert_eq!(area("/healthz"), "healthz");
        assert_eq!(area("/settings/{name}"), "settings");
        assert_eq!(area("/"), "root");
        assert_eq!(area("unmatched"), "unmatched");
    }

    #[test]
    fn scrapes_come_from_loopback_or_carry_the_token() {
        let local = Some("127.0.0.1".parse().expect("ip"));
        let mapped = Some("::ffff:127.0.0.1".parse().expect("ip"));
        let remote = Some("192.0.2.7".parse().expect("ip"));
        let open = Access::new(None, false);
        assert!(open.check(local, false, None).is_ok());
        assert!(open.check(mapped, false, None).is_ok());
        assert!(open.check(remote, false, None).is_err());
        // Through a proxy on this host: not local.
        assert!(open.check(local, true, None).is_err());
        assert!(open.check(None, false, None).is_err());
        // Behind a proxy the operator declared, loopback proves nothing.
        assert!(Access::new(None, true).check(local, false, None).is_err());
        let guarded = Access::new(Some("a-long-metrics-token".into()), true);
        assert!(
            guarded
                .check(remote, true, Some("Bearer a-long-metrics-token"))
                .is_ok()
        );
        assert!(
            guarded
                .check(remote, false, Some("bearer  a-long-metrics-token"))
                .is_ok()
        );
        // With a token set, loopback needs it too.
        assert!(guarded.check(local, false, None).is_err());
        assert!(
            guarded
                .check(local, false, Some("Bearer a-long-metrics-toke"))
                .is_err()
        );
        assert!(
            guarded
                .check(local, false, Some("Basic a-long-metrics-token"))
                .is_err()
        );
    }

    /// Every outcome of every list has a series of its own. Failed when `busy` was added to
    /// the login outcomes without a counter (a refused login then panicked its worker).
    #[test]
    fn every_listed_outcome_is_counted() {
        let m = Metrics::new();
        for outcome in Login::ALL {
            m.login(outcome);
        }
        for outcome in Verification::ALL {
            m.key_checked(outcome);
            m.token_checked(outcome);
        }
        for limit in Limit::ALL {
            m.refused(limit);
        }
        let text = m.render(&Snapshot::default()).expect("render");
        let lines = Login::ALL
            .map(|o| format!("pixee_logins_total{{outcome=\"{}\"}} 1", o.label()))
            .into_iter()
            .chain(Verification::ALL.map(|o| {
                format!(
                    "pixee_api_key_verifications_total{{outcome=\"{}\"}} 1",
                    o.label()
                )
            }))
            .chain(Verification::ALL.map(|o| {
                format!(
                    "pixee_access_token_verifications_total{{outcome=\"{}\"}} 1",
                    o.label()
                )
            }))
            .chain(Limit::ALL.map(|l| {
                format!(
                    "pixee_rate_limit_refusals_total{{limit=\"{}\"}} 1",
                    l.label()
                )
            }));
        for line in lines {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn outcomes_land_in_their_own_series() {
        let m = Metrics::new();
        m.key_checked(Verification::Ok);
        m.key_checked(Verification::Ok);
        m.key_checked(Verification::RateLimited);
        m.token_checked(Verification::Invalid);
        m.login(Login::Locked);
        m.lockout();
        m.refused(Limit::Login);
        m.request(HttpMethod::GET, "/api/v1/products/{id}".into(), 200, 0.003);
        let text = m
            .render(&Snapshot {
                jobs: vec![("processing", 2)],
                caches: vec![("api_keys", CacheCounts { hits: 3, misses: 1 })],
                ..Default::default()
            })
            .expect("render");
        for line in [
            r#"pixee_api_key_verifications_total{outcome="ok"} 2"#,
            r#"pixee_api_key_verifications_total{outcome="rate_limited"} 1"#,
            r#"pixee_api_key_verifications_total{outcome="invalid"} 0"#,
            r#"pixee_access_token_verifications_total{outcome="invalid"} 1"#,
            r#"pixee_logins_total{outcome="locked"} 1"#,
            "pixee_lockouts_total 1",
            r#"pixee_rate_limit_refusals_total{limit="login"} 1"#,
            r#"pixee_http_requests_total{method="GET",route="/api/v1/products/{id}",status="200"} 1"#,
            r#"pixee_http_request_duration_seconds_bucket{area="products",access="read",le="0.005"} 1"#,
            r#"pixee_http_request_duration_seconds_bucket{area="products",access="read",le="0.0025"} 0"#,
            r#"pixee_jobs{state="processing"} 2"#,
            r#"pixee_cache_lookups_total{cache="api_keys",result="hit"} 3"#,
            r#"pixee_cache_hit_ratio{cache="api_keys"} 0.75"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // A second scrape with larger cache totals moves the counters to them, never back.
        let text = m
            .render(&Snapshot {
                caches: vec![("api_keys", CacheCounts { hits: 5, misses: 1 })],
                ..Default::default()
            })
            .expect("render");
        assert!(text.contains(r#"pixee_cache_lookups_total{cache="api_keys",result="hit"} 5"#));
    }
}
