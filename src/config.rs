//! Server settings: flag > environment variable > config file (TOML) > default.
//!
//! clap merges flags and environment variables; the config file fills what both left unset.
//! Every key of the file is the flag's name with `_` for `-` (e.g. `lockout_threshold = 5`).
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "./pixee-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, env = "PIXEE_LISTEN")]
    pub listen: Option<String>,
    /// PEM certificate chain; with --tls-key serves HTTPS
    #[arg(long, env = "PIXEE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key
    #[arg(long, env = "PIXEE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TOML file with any of these settings
    #[arg(long, env = "PIXEE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Consecutive failed logins that lock an email
    #[arg(long, env = "PIXEE_LOCKOUT_THRESHOLD")]
    pub lockout_threshold: Option<u32>,
    /// Minutes a lock lasts (also the window failures are counted in)
    #[arg(long, env = "PIXEE_LOCKOUT_MINUTES")]
    pub lockout_minutes: Option<u32>,
    /// Login attempts per client IP per minute (0 = unlimited)
    #[arg(long, env = "PIXEE_LOGIN_RATE_PER_MINUTE")]
    pub login_rate_per_minute: Option<u32>,
    /// Reads (GET/HEAD/OPTIONS) per API key per minute
    #[arg(long, env = "PIXEE_KEY_READS_PER_MINUTE")]
    pub key_reads_per_minute: Option<u32>,
    /// Writes per API key per minute
    #[arg(long, env = "PIXEE_KEY_WRITES_PER_MINUTE")]
    pub key_writes_per_minute: Option<u32>,
    /// Access token lifetime in seconds
    #[arg(long, env = "PIXEE_ACCESS_TOKEN_TTL_SECONDS")]
    pub access_token_ttl_seconds: Option<u32>,
    /// Absolute session lifetime in days
    #[arg(long, env = "PIXEE_SESSION_MAX_DAYS")]
    pub session_max_days: Option<u32>,
    /// Days without a refresh after which a session ends
    #[arg(long, env = "PIXEE_SESSION_IDLE_DAYS")]
    pub session_idle_days: Option<u32>,
    /// sled page cache size in MiB
    #[arg(long, env = "PIXEE_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// How often the store writes its log and cleans it, in milliseconds (10 to 10000)
    #[arg(long, env = "PIXEE_STORE_FLUSH_MS")]
    pub store_flush_ms: Option<u64>,
    /// Keep every record in this PostgreSQL database instead of sled in the data dir
    /// (postgres://user:password@host/db). Prefer the environment variable or the config file:
    /// a flag shows in the process list
    #[arg(skip)]
    pub database_url: Option<String>,
    /// Connections to PostgreSQL (default: the request workers plus four, at most 64)
    #[arg(long, env = "PIXEE_DATABASE_CONNECTIONS")]
    pub database_connections: Option<u32>,
    /// Largest JSON request body in bytes
    #[arg(long, env = "PIXEE_JSON_LIMIT_BYTES")]
    pub json_limit_bytes: Option<usize>,
    /// HTTP worker threads (default: number of cores)
    #[arg(long, env = "PIXEE_WORKERS")]
    pub workers: Option<usize>,
    /// Take the client address from X-Forwarded-For (only behind your own reverse proxy)
    #[arg(long, env = "PIXEE_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: Option<bool>,
    /// With --trust-forwarded-for: how many proxies of yours append to X-Forwarded-For (the
    /// client is that many entries from the right)
    #[arg(long, env = "PIXEE_TRUSTED_PROXY_HOPS")]
    pub trusted_proxy_hops: Option<u32>,
    /// Refreshes per session per minute (0 = unlimited)
    #[arg(long, env = "PIXEE_REFRESH_RATE_PER_MINUTE")]
    pub refresh_rate_per_minute: Option<u32>,
    /// Seconds during which a just-spent refresh token gets 409 instead of ending the session
    /// (0 = off; at most 60)
    #[arg(long, env = "PIXEE_REFRESH_REUSE_GRACE_SECONDS")]
    pub refresh_reuse_grace_seconds: Option<u32>,
    /// How long audit events are kept: 90d, 12h, 30m, 45s, or 0 for ever
    #[arg(long, env = "PIXEE_AUDIT_RETENTION")]
    pub audit_retention: Option<Span>,
    /// How long ended sessions (and their refresh tokens) are kept; 0 for ever
    #[arg(long, env = "PIXEE_SESSION_RETENTION")]
    pub session_retention: Option<Span>,
    /// How long spent refresh tokens of live sessions are kept; 0 for ever
    #[arg(long, env = "PIXEE_SPENT_TOKEN_RETENTION")]
    pub spent_token_retention: Option<Span>,
    /// How long tombstones of deleted products are kept for change feeds; 0 for ever
    #[arg(long, env = "PIXEE_TOMBSTONE_RETENTION")]
    pub tombstone_retention: Option<Span>,
    /// How often the retention sweep runs
    #[arg(long, env = "PIXEE_SWEEP_INTERVAL")]
    pub sweep_interval: Option<Span>,
    /// Import and export jobs run at once (each on its own thread)
    #[arg(long, env = "PIXEE_JOB_WORKERS")]
    pub job_workers: Option<usize>,
    /// How long a finished export's file can be downloaded (then it is removed)
    #[arg(long, env = "PIXEE_EXPORT_RETENTION")]
    pub export_retention: Option<Span>,
    /// Let webhooks deliver to loopback and private addresses (for testing a receiver on this
    /// machine or your own network); link-local and metadata addresses stay refused
    #[arg(long, env = "PIXEE_WEBHOOKS_ALLOW_PRIVATE", num_args = 0..=1, default_missing_value = "true")]
    pub webhooks_allow_private: Option<bool>,
    /// Wait before a failed webhook delivery's first retry; each further retry waits four
    /// times longer (with jitter)
    #[arg(long, env = "PIXEE_WEBHOOK_RETRY_BASE")]
    pub webhook_retry_base: Option<Span>,
    /// Count requests and serve /metrics (on by default; `--metrics false` turns both off)
    #[arg(long, env = "PIXEE_METRICS", num_args = 0..=1, default_missing_value = "true")]
    pub metrics: Option<bool>,
    /// Bearer token that lets Prometheus scrape /metrics from elsewhere (at least 16
    /// characters; without it /metrics answers this machine only). Prefer the environment
    /// variable or the config file: a flag shows in the process list
    #[arg(long, env = "PIXEE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Email of the superadmin created on first start
    #[arg(long, env = "PIXEE_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// Password of the superadmin created on first start (generated and printed when unset)
    /// (Read from PIXEE_ADMIN_PASSWORD only, never from argv.)
    #[arg(skip)]
    #[serde(skip)]
    pub admin_password: Option<String>,
}

/// A length of time written as a whole number and a unit (`90d`, `12h`, `30m`, `45s`); `0`
/// means "no limit" (kept for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Option<u64>);

impl Span {
    pub const fn hours(n: u64) -> Span {
        Span(Some(n * 3600))
    }

    pub const fn days(n: u64) -> Span {
        Span(Some(n * 86_400))
    }

    /// The span as a duration; `None` for "no limit".
    pub fn duration(self) -> Option<time::Duration> {
        self.0
            .map(|s| time::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX)))
    }
}

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Span, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(Span(None));
        }
        let bad =
            || format!("{s:?} is not a span: write a whole number and s, m, h or d (90d), or 0");
        let (number, unit) = s.split_at(s.len().saturating_sub(1));
        let n: u64 = number.parse().map_err(|_| bad())?;
        let per = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        // Ten years is longer than anyone keeps a login record; more is a typo.
        match n.checked_mul(per) {
            Some(secs) if secs <= 3650 * 86_400 => Ok(Span((secs > 0).then_some(secs))),
            _ => Err(format!("{s:?} is longer than ten years")),
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: String,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub lockout_threshold: u32,
    pub lockout_minutes: u32,
    pub login_rate_per_minute: u32,
    pub key_reads_per_minute: u32,
    pub key_writes_per_minute: u32,
    pub access_token_ttl_seconds: u32,
    pub session_max_days: u32,
    pub session_idle_days: u32,
    pub cache_mb: u64,
    pub store_flush_ms: u64,
    pub database: Option<Database>,
    pub json_limit_bytes: usize,
    pub workers: usize,
    pub trust_forwarded_for: bool,
    pub trusted_proxy_hops: u32,
    pub refresh_rate_per_minute: u32,
    pub refresh_reuse_grace_seconds: u32,
    pub audit_retention: Span,
    pub session_retention: Span,
    pub spent_token_retention: Span,
    pub tombstone_retention: Span,
    pub sweep_interval: Span,
    pub job_workers: usize,
    pub export_retention: Span,
    pub webhooks_allow_private: bool,
    pub webhook_retry_base: Span,
    pub metrics: bool,
    pub metrics_token: Option<String>,
    pub admin_email: String,
    pub admin_password: Option<String>,
}

/// Where the records live when not in sled: a PostgreSQL URL (its password never shows in
/// `Debug`) and the size of the connection pool.
#[derive(Clone)]
pub struct Database {
    pub url: String,
    pub connections: u32,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &"(hidden)")
            .field("connections", &self.connections)
            .finish()
    }
}

/// Request workers by default: the cores on sled, whose calls rarely wait; eight per core on
/// PostgreSQL, where a worker waits for each round trip to the database (creates on this
/// 2-core machine: 2 550/s with 8 workers, 2 970/s with 16 or 32).
fn default_workers(postgres: bool) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    if postgres { cores * 8 } else { cores }
}

impl Settings {
    /// Defaults everywhere, for `data_dir`.
    pub fn defaults(data_dir: PathBuf) -> Settings {
        Settings::resolve(data_dir, ServeArgs::default())
    }

    pub fn resolve(data_dir: PathBuf, a: ServeArgs) -> Settings {
        let database_url = a.database_url.filter(|u| !u.is_empty());
        let workers = a
            .workers
            .unwrap_or_else(|| default_workers(database_url.is_some()))
            .max(1);
        let database = database_url.map(|url| Database {
            url,
            connections: a
                .database_connections
                .unwrap_or((workers as u32 + 4).min(64))
                .clamp(2, 1000),
        });
        Settings {
            data_dir,
            listen: a.listen.unwrap_or_else(|| DEFAULT_LISTEN.into()),
            tls: a.tls_cert.zip(a.tls_key),
            lockout_threshold: a.lockout_threshold.unwrap_or(5).max(1),
            lockout_minutes: a.lockout_minutes.unwrap_or(15).clamp(1, 60 * 24 * 365),
            login_rate_per_minute: a.login_rate_per_minute.unwrap_or(30),
            key_reads_per_minute: a.key_reads_per_minute.unwrap_or(1000),
            key_writes_per_minute: a.key_writes_per_minute.unwrap_or(100),
            access_token_ttl_seconds: a.access_token_ttl_seconds.unwrap_or(900).clamp(60, 86_400),
            session_max_days: a.session_max_days.unwrap_or(30).clamp(1, 3650),
            session_idle_days: a.session_idle_days.unwrap_or(7).clamp(1, 3650),
            cache_mb: a.cache_mb.unwrap_or(crate::store::DEFAULT_CACHE_MB).max(1),
            store_flush_ms: a
                .store_flush_ms
                .unwrap_or(crate::store::DEFAULT_FLUSH_MS)
                .clamp(10, 10_000),
            json_limit_bytes: a.json_limit_bytes.unwrap_or(1 << 20).max(1024),
            workers,
            database,
            trust_forwarded_for: a.trust_forwarded_for.unwrap_or(false),
            trusted_proxy_hops: a.trusted_proxy_hops.unwrap_or(1).clamp(1, 16),
            refresh_rate_per_minute: a.refresh_rate_per_minute.unwrap_or(30),
            refresh_reuse_grace_seconds: a.refresh_reuse_grace_seconds.unwrap_or(10).min(60),
            audit_retention: a.audit_retention.unwrap_or(Span::days(90)),
            session_retention: a.session_retention.unwrap_or(Span::days(30)),
            spent_token_retention: a.spent_token_retention.unwrap_or(Span::days(30)),
            tombstone_retention: a.tombstone_retention.unwrap_or(Span::days(90)),
            sweep_interval: a
                .sweep_interval
                .filter(|s| s.0.is_some())
                .unwrap_or(Span::hours(1)),
            job_workers: a.job_workers.unwrap_or(1).clamp(1, 64),
            export_retention: a
                .export_retention
                .filter(|s| s.0.is_some())
                .unwrap_or(Span::hours(24)),
            webhooks_allow_private: a.webhooks_allow_private.unwrap_or(false),
            webhook_retry_base: a
                .webhook_retry_base
                .filter(|s| s.0.is_some())
                .unwrap_or(Span(Some(30))),
            metrics: a.metrics.unwrap_or(true),
            metrics_token: a.metrics_token.filter(|t| !t.is_empty()),
            admin_email: a.admin_email.unwrap_or_else(|| "admin@localhost".into()),
            admin_password: a.admin_password.filter(|p| !p.is_empty()),
        }
    }
}

/// Fills unset values of `args` from the TOML file it names.
pub fn merge_config_file(args: ServeArgs) -> Result<ServeArgs, String> {
    let args = fill_from_file(args)?;
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        return Err("TLS needs both a certificate and a key (tls_cert and tls_key)".into());
    }
    if args.metrics_token.as_deref().is_some_and(|t| {
        !t.is_empty() && (t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()))
    }) {
        return Err("metrics_token must be at least 16 printable characters without spaces".into());
    }
    Ok(args)
}

fn fill_from_file(mut args: ServeArgs) -> Result<ServeArgs, String> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let file = read_config(&path)?;
    macro_rules! fill {
        ($($f:ident),*) => { $( if args.$f.is_none() { args.$f = file.$f; } )* };
    }
    fill!(
        listen,
        tls_cert,
        tls_key,
        lockout_threshold,
        lockout_minutes,
        login_rate_per_minute,
        key_reads_per_minute,
        key_writes_per_minute,
        access_token_ttl_seconds,
        session_max_days,
        session_idle_days,
        cache_mb,
        store_flush_ms,
        database_url,
        database_connections,
        json_limit_bytes,
        workers,
        trust_forwarded_for,
        trusted_proxy_hops,
        refresh_rate_per_minute,
        refresh_reuse_grace_seconds,
        audit_retention,
        session_retention,
        spent_token_retention,
        tombstone_retention,
        sweep_interval,
        job_workers,
        export_retention,
        webhooks_allow_private,
        webhook_retry_base,
        metrics,
        metrics_token,
        admin_email
    );
    Ok(args)
}

fn read_config(path: &Path) -> Result<ServeArgs, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "config file {} is not valid: {}",
            path.display(),
            e.message()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> Result<ServeArgs, String> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("pixee.toml");
        std::fs::write(&path, text).expect("write");
        merge_config_file(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
    }

    #[test]
    fn the_file_fills_what_flags_left_unset() {
        let args = with_file("lockout_threshold = 9\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        assert_eq!(args.lockout_threshold, Some(9));
        let s = Settings::resolve(PathBuf::from("x"), args);
        assert_eq!(
            (s.lockout_threshold, s.listen.as_str()),
            (9, "0.0.0.0:9000")
        );
    }

    #[test]
    fn half_a_tls_setup_unknown_keys_and_bad_types_are_refused() {
        assert!(
            with_file("tls_cert = \"/c.pem\"\n")
                .unwrap_err()
                .contains("both")
        );
        assert!(with_file("lockout_treshold = 3\n").is_err());
        assert!(with_file("lockout_threshold = \"five\"\n").is_err());
    }

    #[test]
    fn spans_take_a_unit_and_zero_means_for_ever() {
        let parse = |s: &str| s.parse::<Span>();
        assert_eq!(parse("90d"), Ok(Span(Some(90 * 86_400))));
        assert_eq!(parse("12h"), Ok(Span(Some(12 * 3600))));
        assert_eq!(parse("30m"), Ok(Span(Some(1800))));
        assert_eq!(parse(" 45s "), Ok(Span(Some(45))));
        assert_eq!(parse("0"), Ok(Span(None)));
        for bad in [
            "",
            "d",
            "90",
            "9x",
            "-1d",
            "1.5h",
            "99999d",
            "18446744073709551615d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} is refused");
        }
        let args = with_file("audit_retention = \"7d\"\nsweep_interval = \"30s\"\n").unwrap();
        let s = Settings::resolve(PathBuf::from("x"), args);
        assert_eq!(s.audit_retention, Span::days(7));
        assert_eq!(s.sweep_interval, Span(Some(30)));
        assert_eq!(s.session_retention, Span::days(30), "the default");
        assert!(with_file("audit_retention = \"seven days\"\n").is_err());
    }

    /// The store's tuning falls back to the defaults the measurements chose (docs/PERFORMANCE.md),
    /// and the file fills it like any other setting.
    #[test]
    fn the_store_tuning_defaults_to_the_measured_values_and_the_file_sets_it() {
        let s = Settings::resolve(PathBuf::from("x"), ServeArgs::default());
        assert_eq!((s.cache_mb, s.store_flush_ms), (32, 25));
        let args = with_file("cache_mb = 128\nstore_flush_ms = 100\n").unwrap();
        let s = Settings::resolve(PathBuf::from("x"), args);
        assert_eq!((s.cache_mb, s.store_flush_ms), (128, 100));
    }

    #[test]
    fn extreme_durations_are_clamped() {
        let s = Settings::resolve(
            PathBuf::from("x"),
            ServeArgs {
                lockout_minutes: Some(u32::MAX),
                session_max_days: Some(u32::MAX),
                ..Default::default()
            },
        );
        assert!(s.lockout_minutes <= 60 * 24 * 365 && s.session_max_days <= 3650);
    }
}
