//! Building the application: lock the data dir, open the store, bootstrap, bind, serve.
//! Tests call [`Application::build`] with port 0 and a manual clock to run the real server.
use crate::auth::passwords::{HashCost, Passwords};
use crate::auth::{
    Auth, AuthPolicy, Retention, accounts::Bootstrap, jwt::JwtKeys, lockout::LockoutPolicy,
};
use crate::catalog::{Catalog, Categories, Suppliers};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::store::Store;
use crate::web::JsonLimit;
use actix_web::dev::Server;
use actix_web::{App, HttpServer, middleware::from_fn, web};
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use time::Duration;

/// Why the server or an admin command could not start. `exit_code` follows SPEC §1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "data dir {0} is in use by another pixee-pim process (is a server running?); stop it first (a backup can be taken from a running server with `backup --online`)"
    )]
    Locked(PathBuf),
    #[error("{0}")]
    Other(String),
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Locked(_) => 2,
            StartError::Other(_) => 1,
        }
    }
}

fn other(e: impl std::fmt::Display) -> StartError {
    StartError::Other(e.to_string())
}

/// Lowers the calling thread's scheduling priority (nice 10) for background work (the webhook
/// engine, an online backup's copy, password hashes): when the cores are busy, requests go
/// first. Never for a thread that will hold a lock request workers wait on. Failing (no
/// permission) is harmless.
pub fn background_priority(what: &str) {
    #[cfg(target_os = "linux")]
    {
        // On Linux a thread id names that thread alone.
        let tid = rustix::thread::gettid();
        if rustix::process::setpriority_process(Some(tid), 10).is_err() {
            tracing::debug!(thread = what, "keeps the normal priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = what;
}

/// Hands memory freed so far back to the operating system. The binary installs its
/// allocator's way of doing it (`main.rs`); the library never names the allocator.
static RELEASE_FREE_MEMORY: OnceLock<fn()> = OnceLock::new();

/// Installs the hook run once a store is open; the first call wins.
pub fn on_free_memory_release(hook: fn()) {
    let _ = RELEASE_FREE_MEMORY.set(hook);
}

/// Hands memory freed so far back to the operating system (after a burst of writes, such as
/// an import's batches, freed pages are otherwise kept by the allocator for a while).
pub fn release_free_memory() {
    if let Some(release) = RELEASE_FREE_MEMORY.get() {
        release();
    }
}

/// The exclusive hold on a data directory, for as long as this value lives.
pub struct DataDir {
    _lock: File,
    pub store: Store,
}

/// A file in the data dir saying its records are in PostgreSQL, written when a store there is
/// opened with `--database-url`: a command run there without the URL (say, from a shell that
/// lacks the service's environment) is refused instead of creating an empty sled store beside
/// the real one.
pub const ENGINE_MARKER: &str = "engine";

/// Opens the store in the PostgreSQL database at `url` for the data dir `dir` (whose lock the
/// caller holds), marking the data dir as PostgreSQL's.
pub fn open_postgres_store(
    dir: &Path,
    url: &str,
    connections: u32,
    role: crate::store::Role,
) -> Result<Store, StartError> {
    let store = Store::open_postgres(url, connections, role)
        .map_err(|e| other(format!("cannot open the store in PostgreSQL: {e}")))?;
    std::fs::write(dir.join(ENGINE_MARKER), "postgresql\n").map_err(|e| {
        other(format!(
            "cannot write {}: {e}",
            dir.join(ENGINE_MARKER).display()
        ))
    })?;
    Ok(store)
}

/// Where the admin commands find the store: the data dir, and the PostgreSQL database when
/// the records are kept there (`--database-url`).
#[derive(Clone)]
pub struct Place {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.database_url {
            // Never the URL itself: it may carry a password.
            Some(_) => write!(f, "PostgreSQL (data dir {})", self.data_dir.display()),
            None => write!(f, "{}", self.data_dir.display()),
        }
    }
}

impl DataDir {
    /// Opens the store where `place` says, with a sled cache of `cache_mb` when it is sled's.
    pub fn open_place(place: &Place, cache_mb: u64) -> Result<DataDir, StartError> {
        match &place.database_url {
            None => DataDir::open(&place.data_dir, cache_mb),
            Some(url) => DataDir::open_postgres(&place.data_dir, url, 4, crate::store::Role::Alone),
        }
    }

    /// The data dir, locked, with the store in the PostgreSQL database at `url`. The data dir
    /// is marked as PostgreSQL's (see [`ENGINE_MARKER`]).
    pub fn open_postgres(
        dir: &Path,
        url: &str,
        connections: u32,
        role: crate::store::Role,
    ) -> Result<DataDir, StartError> {
        let lock = DataDir::lock(dir)?;
        let store = open_postgres_store(dir, url, connections, role)?;
        DataDir::checked(lock, store, "PostgreSQL")
    }

    /// Creates the directory if needed, takes its lock without waiting, opens the store.
    pub fn open(dir: &Path, cache_mb: u64) -> Result<DataDir, StartError> {
        DataDir::open_tuned(dir, cache_mb, crate::store::DEFAULT_FLUSH_MS)
    }

    /// [`DataDir::open`] with sled's log flushed and cleaned every `flush_ms` milliseconds.
    pub fn open_tuned(dir: &Path, cache_mb: u64, flush_ms: u64) -> Result<DataDir, StartError> {
        let lock = DataDir::lock(dir)?;
        let marker = dir.join(ENGINE_MARKER);
        if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == "postgresql") {
            return Err(other(format!(
                "the records of data dir {} are in PostgreSQL: pass --database-url (or set \
                 PIXEE_DATABASE_URL); to keep them in sled here again, remove {}",
                dir.display(),
                marker.display()
            )));
        }
        let store = Store::open_tuned(dir, cache_mb.saturating_mul(1024 * 1024), flush_ms)
            .map_err(|e| other(format!("cannot open the store in {}: {e}", dir.display())))?;
        DataDir::checked(lock, store, &dir.display().to_string())
    }

    /// The data dir as `serve` uses it: the store in sled there, or in the PostgreSQL database
    /// of `settings.database` (the data dir then holds the search index and the admin socket).
    pub fn open_for(settings: &Settings) -> Result<DataDir, StartError> {
        let Some(database) = &settings.database else {
            return DataDir::open_tuned(
                &settings.data_dir,
                settings.cache_mb,
                settings.store_flush_ms,
            );
        };
        DataDir::open_postgres(
            &settings.data_dir,
            &database.url,
            database.connections,
            crate::store::Role::Node,
        )
    }

    /// Start-up stays fast whatever the store's size: only the small core trees are checked
    /// here; `backup` and `check` check everything.
    fn checked(lock: File, store: Store, place: &str) -> Result<DataDir, StartError> {
        store
            .verify_core()
            .map_err(|e| other(format!("the store in {place} is damaged: {e}")))?;
        Ok(DataDir { _lock: lock, store })
    }

    /// Creates the directory if needed and takes its lock without waiting.
    fn lock(dir: &Path) -> Result<File, StartError> {
        // The store holds the token-signing secret: owner-only from the start.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| other(format!("cannot create data dir {}: {e}", dir.display())))?;
        let lock_path = dir.join("pixee.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| other(format!("data dir {} is not writable: {e}", dir.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StartError::Locked(dir.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(other(format!(
                    "cannot lock data dir {}: {e}",
                    dir.display()
                )));
            }
        }
        Ok(lock)
    }
}

/// Builds the shared auth service for a store (the CLI uses it too).
pub fn build_auth(
    store: &Store,
    settings: &Settings,
    clock: SharedClock,
    cost: HashCost,
) -> Result<Auth, StartError> {
    let secret = store
        .meta_get_or_init("jwt_secret", || {
            crate::auth::secret::random_bytes::<32>()
                .map(|b| b.to_vec())
                .unwrap_or_default()
        })
        .map_err(other)?;
    if secret.len() != 32 {
        return Err(other(
            "the system random generator failed while creating the token secret",
        ));
    }
    let jwt = JwtKeys::new(&secret, i64::from(settings.access_token_ttl_seconds))
        .map_err(|e| other(e.detail))?;
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get() / 2);
    let passwords = Passwords::new(cost, parallel).map_err(|e| other(e.detail))?;
    let policy = AuthPolicy {
        lockout: LockoutPolicy {
            threshold: settings.lockout_threshold,
            window: Duration::minutes(i64::from(settings.lockout_minutes)),
            lock_for: Duration::minutes(i64::from(settings.lockout_minutes)),
        },
        login_rate_per_minute: settings.login_rate_per_minute,
        key_reads_per_minute: settings.key_reads_per_minute,
        key_writes_per_minute: settings.key_writes_per_minute,
        session_max: Duration::days(i64::from(settings.session_max_days)),
        session_idle: Duration::days(i64::from(settings.session_idle_days)),
        forwarded_hops: if settings.trust_forwarded_for {
            settings.trusted_proxy_hops as usize
        } else {
            0
        },
        refresh_rate_per_minute: settings.refresh_rate_per_minute,
        refresh_reuse_grace: Duration::seconds(i64::from(settings.refresh_reuse_grace_seconds)),
        retention: Retention {
            audit: settings.audit_retention.duration(),
            ended_sessions: settings.session_retention.duration(),
            spent_refresh_tokens: settings.spent_token_retention.duration(),
        },
    };
    Ok(Auth::new(store.clone(), clock, jwt, passwords, policy))
}

pub struct Application {
    server: Server,
    port: u16,
    auth: web::Data<Auth>,
    catalog: web::Data<Catalog>,
    jobs: web::Data<crate::jobs::Jobs>,
    webhooks: web::Data<crate::webhooks::Webhooks>,
    /// The TLS certificates, reloaded on SIGHUP.
    certificates: Option<Arc<crate::tls::Certificates>>,
    pub bootstrap: Option<Bootstrap>,
    sweep_every: std::time::Duration,
    /// `pixee-pim backup --online` talks to it; dropped (and removed) before the data dir.
    _admin: Option<crate::admin::AdminSocket>,
    _data_dir: DataDir,
}

impl Application {
    pub async fn build(
        settings: Settings,
        clock: SharedClock,
        cost: HashCost,
    ) -> Result<Application, StartError> {
        jsonwebtoken::crypto::CryptoProvider::try_get_default()
            .ok_or_else(|| other("BUG: no JWT crypto provider is compiled in"))?;
        let data_dir = DataDir::open_for(&settings)?;
        // Everything that can fail at start-up happens before the first-start bootstrap, so a
        // generated admin password is never created and then lost to a failed start.
        // The search index first: a rebuild (after a restore) can take a while, and no client
        // should be connected and waiting meanwhile.
        let (search, opened) = crate::search::SearchIndex::open(
            &crate::search::index_dir(&settings.data_dir),
            data_dir.store.clone(),
            clock.clone(),
        )
        .map_err(|e| other(format!("cannot open the search index: {e}")))?;
        match opened {
            crate::search::Opened::Rebuilt(n) => {
                tracing::info!(products = n, "search index built from the store")
            }
            crate::search::Opened::CaughtUp(n) => {
                tracing::debug!(products = n, "search index caught up with the store")
            }
        }
        let certificates = match &settings.tls {
            Some((cert, key)) => Some(crate::tls::Certificates::load(cert, key).map_err(other)?),
            None => None,
        };
        let tls = match &certificates {
            Some(c) => Some(c.server_config().map_err(other)?),
            None => None,
        };
        let listener = TcpListener::bind(&settings.listen)
            .map_err(|e| other(format!("cannot listen on {}: {e}", settings.listen)))?;
        let port = listener.local_addr().map_err(other)?.port();
        let store = data_dir.store.clone();
        let auth = web::Data::new(build_auth(&store, &settings, clock.clone(), cost)?);
        let suppliers = web::Data::new(Suppliers::new(store.clone(), clock.clone()));
        let categories = web::Data::new(Categories::new(store.clone(), clock.clone()));
        let catalog = web::Data::new(
            Catalog::new(store.clone(), clock.clone(), search)
                .with_tombstone_retention(settings.tombstone_retention.duration()),
        );
        let jobs = web::Data::new(
            crate::jobs::Jobs::start(
                store.clone(),
                catalog.get_ref().clone(),
                clock.clone(),
                crate::jobs::JobsConfig {
                    dir: settings.data_dir.join("jobs"),
                    workers: settings.job_workers,
                    export_retention: settings
                        .export_retention
                        .duration()
                        .unwrap_or(Duration::hours(24)),
                },
            )
            .map_err(other)?,
        );
        let webhooks = web::Data::new(
            crate::webhooks::Webhooks::start(
                store.clone(),
                clock.clone(),
                crate::webhooks::WebhooksConfig {
                    allow_private: settings.webhooks_allow_private,
                    retry_base: std::time::Duration::from_secs(
                        settings.webhook_retry_base.0.unwrap_or(30),
                    ),
                },
            )
            .map_err(other)?,
        );
        // On a cluster, other nodes' writes reach this node's caches, search index and
        // webhook engine from here on (`store/cluster.rs`).
        {
            let (catalog, webhooks, clock) = (catalog.clone(), webhooks.clone(), clock.clone());
            data_dir.store.join_cluster(
                move || clock.now(),
                move |changes| {
                    catalog.apply_remote(changes);
                    webhooks.apply_remote(changes);
                },
            );
        }
        // The services (and the job runner, which may resume jobs) start before the first-start
        // bootstrap: a failure there must not lose a generated admin password.
        let bootstrap = auth
            .bootstrap(&settings.admin_email, settings.admin_password.clone())
            .await
            .map_err(|e| other(format!("first start failed: {}", e.detail)))?;
        let limit = JsonLimit(settings.json_limit_bytes);
        let tls_enabled = settings.tls.is_some();
        let app_auth = auth.clone();
        let app_catalog = catalog.clone();
        let app_jobs = jobs.clone();
        let app_webhooks = webhooks.clone();
        crate::metrics::set_enabled(settings.metrics);
        let metrics_access = web::Data::new(crate::metrics::Access::new(
            settings.metrics_token.clone(),
            settings.trust_forwarded_for,
        ));
        let http = HttpServer::new(move || {
            App::new()
                .app_data(metrics_access.clone())
                .app_data(app_auth.clone())
                .app_data(app_catalog.clone())
                .app_data(app_jobs.clone())
                .app_data(app_webhooks.clone())
                .app_data(suppliers.clone())
                .app_data(categories.clone())
                .app_data(limit)
                .app_data(crate::web::Tls(tls_enabled))
                .app_data(crate::api::query_config())
                .app_data(crate::api::path_config())
                .wrap(from_fn(crate::web::request_middleware))
                .configure(crate::api::configure)
        })
        .workers(settings.workers)
        .shutdown_timeout(10);
        let http = match tls {
            None => http.listen(listener),
            Some(tls) => http.listen_rustls_0_23(listener, tls),
        }
        .map_err(|e| other(format!("cannot listen on {}: {e}", settings.listen)))?;
        // Opening the store (sled's recovery) and the bootstrap freed tens of MiB on a large
        // store; hand them back before serving (docs/PERFORMANCE.md, RSS idle).
        if let Some(release) = RELEASE_FREE_MEMORY.get() {
            release();
        }
        Ok(Application {
            server: http.run(),
            port,
            auth,
            catalog,
            jobs,
            webhooks,
            certificates,
            bootstrap,
            sweep_every: std::time::Duration::from_secs(settings.sweep_interval.0.unwrap_or(3600)),
            _admin: match crate::admin::AdminSocket::start(
                &settings.data_dir,
                data_dir.store.clone(),
            ) {
                Ok(socket) => Some(socket),
                Err(e) => {
                    tracing::warn!(error = %e, "no admin socket: `backup --online` will not reach this server");
                    None
                }
            },
            _data_dir: data_dir,
        })
    }

    /// Stops the server from outside (tests restart it on the same data dir).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn auth(&self) -> web::Data<Auth> {
        self.auth.clone()
    }

    pub fn catalog(&self) -> web::Data<Catalog> {
        self.catalog.clone()
    }

    pub fn jobs(&self) -> web::Data<crate::jobs::Jobs> {
        self.jobs.clone()
    }

    pub fn webhooks(&self) -> web::Data<crate::webhooks::Webhooks> {
        self.webhooks.clone()
    }

    /// Serves until SIGINT/SIGTERM (or the server handle stops); in-flight requests finish, then
    /// buffered key usage is written and the store flushed.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let sweeper = actix_web::rt::spawn(sweep_periodically(
            self.auth.clone(),
            self.catalog.clone(),
            self.jobs.clone(),
            self.webhooks.clone(),
            self.sweep_every,
        ));
        let reloader = self
            .certificates
            .clone()
            .map(|c| actix_web::rt::spawn(reload_on_sighup(c)));
        let result = self.server.await;
        sweeper.abort();
        if let Some(r) = reloader {
            r.abort();
        }
        // Job workers finish the batch they are writing; their jobs resume at the next start.
        let jobs = self.jobs.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || jobs.shutdown()).await {
            tracing::warn!(error = %e, "the job workers did not stop cleanly");
        }
        // Deliveries in flight are dropped: they are sent again at the next start.
        let webhooks = self.webhooks.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || webhooks.shutdown()).await {
            tracing::warn!(error = %e, "the webhook engine did not stop cleanly");
        }
        // The indexer commits what it was sent before the data dir is let go.
        let catalog = self.catalog.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || catalog.close_search()).await {
            tracing::warn!(error = %e, "the search indexer did not stop cleanly");
        }
        self.auth.usage.persist_all();
        self.auth.store.leave_cluster();
        if let Err(e) = self.auth.store.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        result
    }
}

/// Reads the TLS certificate and key again on every SIGHUP (a certbot renewal hook sends one):
/// new handshakes get the new certificate, open connections go on; a bad pair is refused with a
/// log line and the previous certificate stays.
async fn reload_on_sighup(certificates: Arc<crate::tls::Certificates>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate loads at start only");
            return;
        };
        while hangups.recv().await.is_some() {
            let c = certificates.clone();
            match tokio::task::spawn_blocking(move || c.reload()).await {
                Ok(Ok(())) => tracing::info!("TLS certificate reloaded"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays")
                }
                Err(e) => tracing::warn!(error = %e, "TLS certificate reload did not finish"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = certificates;
}

/// Every `every`, off the workers: the retention sweep (`auth/retention.rs`), the sweep of
/// product tombstones, the expiry of finished exports and of old webhook deliveries.
async fn sweep_periodically(
    auth: web::Data<Auth>,
    catalog: web::Data<Catalog>,
    jobs: web::Data<crate::jobs::Jobs>,
    webhooks: web::Data<crate::webhooks::Webhooks>,
    every: std::time::Duration,
) {
    loop {
        actix_web::rt::time::sleep(every).await;
        let auth = auth.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || auth.sweep()).await {
            Ok(Ok(r)) if r.total() > 0 => tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                lockouts = r.lockouts,
                audit_events = r.audit_events,
                sessions = r.sessions,
                refresh_tokens = r.refresh_tokens,
                "retention sweep"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e.detail, "retention sweep failed"),
            Err(e) => tracing::warn!(error = %e, "retention sweep did not finish"),
        }
        let catalog = catalog.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || catalog.sweep_tombstones()).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                tombstones = n,
                "tombstone sweep"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e.detail, "tombstone sweep failed"),
            Err(e) => tracing::warn!(error = %e, "tombstone sweep did not finish"),
        }
        let jobs = jobs.clone();
        match tokio::task::spawn_blocking(move || jobs.sweep()).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(exports = n, "expired exports removed"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e.detail, "export sweep failed"),
            Err(e) => tracing::warn!(error = %e, "export sweep did not finish"),
        }
        let webhooks = webhooks.clone();
        match tokio::task::spawn_blocking(move || webhooks.sweep()).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(deliveries = n, "old webhook deliveries removed"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e.detail, "delivery sweep failed"),
            Err(e) => tracing::warn!(error = %e, "delivery sweep did not finish"),
        }
    }
}
