//! The sled store: one database in the data directory, one tree per record kind or index.
//!
//! Invariants:
//! - every value starts with a schema version byte ([`codec`]);
//! - every byte key is built in [`keys`], so the layout lives in one place;
//! - tenant data is only reachable through a [`Namespace`] (tenant + environment) prefix;
//! - writes that touch several trees run in one sled transaction;
//! - callers confirm security-relevant writes to clients only after [`Store::flush`].
mod api_keys;
mod audit;
pub mod backup;
mod bulk;
pub(crate) mod cache;
mod categories;
mod check;
pub mod cluster;
mod codec;
mod group_commit;
mod horizon;
mod jobs;
pub mod keys;
pub(crate) mod kv;
mod pg;

pub use pg::Role;
mod products;
mod sessions;
mod suppliers;
mod tenants;
mod tombstones;
mod users;
mod webhooks;
mod writer;

use std::path::Path;
use time::OffsetDateTime;

pub use api_keys::{ApiKeyRecord, KeyUsage};
pub use audit::AuditEvent;
pub use categories::{CategoryPlacement, CategoryRecord, MAX_DEPTH, MappingRecord};
pub use check::CheckReport;
pub use horizon::WriteStamp;
pub use jobs::{
    ExportSpec, ImportSpec, ImportWrite, JobKind, JobRecord, JobStatus, LogLevel, LogRecord,
    MAX_LOGS, Progress, RowWrite, TemplateRecord,
};
pub use products::{ProductRecord, ProductWrite};
pub use sessions::{RefreshRecord, SessionRecord, SessionSweep, SpendOutcome};
pub use suppliers::SupplierRecord;
pub use tenants::TenantRecord;
pub use tombstones::{CHUNK as TOMBSTONE_CHUNK, Tombstone};
pub use users::{Membership, UserRecord};
pub use webhooks::{
    Attempt, BodyRecord, DISABLE_AFTER_FAILED_EVENTS, DeliveryRecord, DeliveryStatus, EventData,
    EventKind, EventRecord, Recorded, WebhookRecord,
};

use crate::domain::{Environment, TenantId};

/// One tenant's data in one environment: the prefix of every catalog key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub tenant: TenantId,
    pub environment: Environment,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(sled::Error),
    /// The database cannot be reached (PostgreSQL down or restarting): the API answers 503.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database refused to open (a bad URL, a failed migration, another node's lock).
    #[error("{0}")]
    Backend(String),
    #[error("stored record could not be decoded: {0}")]
    Corrupt(String),
    /// A unique value another record already holds; which one is typed, so callers never
    /// read it out of a message.
    #[error("{} already exists", .0.describe())]
    Duplicate(Unique),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("could not make the write durable: {0}")]
    Flush(String),
    /// A reference to a record that does not exist (`field` names no `what`).
    #[error("no such {what} ({field})")]
    Missing {
        field: &'static str,
        what: &'static str,
    },
    /// A write refused for what it would make of related records (`field` says which input).
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: &'static str,
    },
    /// The records a write depends on changed while it was prepared; read again and retry.
    #[error("the records changed during the write; retry")]
    Retry,
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            // `pg.rs` reports a lost or refused connection this way.
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::NotConnected => {
                StoreError::Unavailable(io.to_string())
            }
            e => StoreError::Sled(e),
        }
    }
}

/// The values the store keeps unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unique {
    /// A product's EAN in its namespace (the API's `DUPLICATE_EAN`).
    Ean,
    /// A product's reference in its namespace.
    Reference,
    Email,
    TenantName,
    SupplierCode,
    /// A category's name among its siblings.
    CategoryName,
}

impl Unique {
    pub fn describe(self) -> &'static str {
        match self {
            Unique::Ean => "a product with this EAN",
            Unique::Reference => "a product with this reference",
            Unique::Email => "a user with this email",
            Unique::TenantName => "a tenant with this name",
            Unique::SupplierCode => "a supplier with this code",
            Unique::CategoryName => "a category with this name under the same parent",
        }
    }
}

const CORE_TREES: usize = 6;

/// Every tree the store holds; backup and restore walk this list. The first `CORE_TREES` are
/// the small ones every request depends on, checked at every open.
pub const TREES: &[&str] = &[
    "meta",
    "tenants",
    "tenant_by_name",
    "users",
    "user_by_email",
    "tenant_members",
    "api_keys",
    "api_key_by_digest",
    "api_keys_by_tenant",
    "api_key_tenants",
    "api_key_usage",
    "sessions",
    "sessions_by_user",
    "refresh_tokens",
    "lockout",
    "audit",
    "products",
    "product_by_ean",
    "product_by_ref",
    "products_by_updated",
    "counters",
    "suppliers",
    "supplier_by_code",
    "products_by_supplier",
    "tombstone_chunks",
    "categories",
    "category_by_name",
    "products_by_category",
    "category_mappings",
    "products_inactive",
    "jobs",
    "job_logs",
    "import_templates",
    "webhooks",
    "webhook_events",
    "webhook_bodies",
    "webhook_deliveries",
    "webhook_due",
    // One record per tombstone, as stores before the chunks wrote them: kept so that their
    // backups restore (the next open moves what it holds into `tombstone_chunks`).
    "tombstones",
];

/// This server's change-feed stamps as a cluster node publishes and guards them.
struct FeedStamps {
    horizon: std::sync::Arc<horizon::Horizon>,
    now: Box<dyn Fn() -> OffsetDateTime + Send + Sync>,
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

impl cluster::Stamps for FeedStamps {
    fn floor(&self) -> i64 {
        nanos(self.horizon.horizon(&self.now))
    }

    fn now(&self) -> i64 {
        nanos((self.now)())
    }

    fn raise(&self, to: i64) {
        self.horizon.raise(i128::from(to));
    }

    fn held_before(&self, at: i64) -> bool {
        self.horizon.held_before(i128::from(at))
    }
}

/// The record caches of the auth path, each bounded.
pub(crate) struct Caches {
    /// Keyed by the SHA-256 of a key's secret.
    pub(crate) keys: cache::RecordCache<[u8; 32], ApiKeyRecord>,
    pub(crate) users: cache::RecordCache<crate::domain::UserId, UserRecord>,
    pub(crate) sessions: cache::RecordCache<crate::domain::SessionId, SessionRecord>,
    pub(crate) tenants: cache::RecordCache<TenantId, TenantRecord>,
}

impl Caches {
    fn new(trust: std::sync::Arc<cache::Trust>) -> Self {
        Caches {
            keys: cache::RecordCache::new(100_000, trust.clone()),
            users: cache::RecordCache::new(50_000, trust.clone()),
            sessions: cache::RecordCache::new(100_000, trust.clone()),
            tenants: cache::RecordCache::new(10_000, trust),
        }
    }

    fn forget_all(&self) {
        self.keys.invalidate_all();
        self.users.invalidate_all();
        self.sessions.invalidate_all();
        self.tenants.invalidate_all();
    }
}

/// The trees whose writes other nodes of a cluster hear of (`cluster.rs`): what the caches,
/// the webhook switch and engine, the search index and the kept list answers are built from.
pub const WATCHED: &[&str] = &[
    "tenants",
    "users",
    "sessions",
    "api_keys",
    "api_key_by_digest",
    "webhooks",
    "webhook_events",
    "products",
    "categories",
    "suppliers",
    "tombstone_chunks",
];

/// The watched trees whose writes can change a product list's answer.
const CATALOG_TREES: &[&str] = &["products", "categories", "suppliers", "tombstone_chunks"];

#[derive(Clone)]
pub struct Store {
    db: kv::Db,
    /// How many API-key digest lookups reached the store (lets tests prove that malformed keys
    /// never do, and is the seed of a future metrics endpoint).
    key_lookups: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Records the per-request auth path reads; see `cache.rs` for the coherence rule.
    caches: std::sync::Arc<Caches>,
    group_commit: std::sync::Arc<group_commit::GroupCommit>,
    /// Where request handlers' sled writes run (`writer.rs`).
    writer: std::sync::Arc<writer::Writer>,
    /// Moves after every committed write that can change a product list (product writes and
    /// the category and supplier writes that go through `product_tx`, bulk loads, tombstone
    /// sweeps): a list answer computed at one value is still exact while it stays.
    catalog_epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The stamps of product writes not yet committed (change feeds answer up to the oldest).
    horizon: std::sync::Arc<horizon::Horizon>,
    pub(crate) meta: kv::Tree,
    pub(crate) tenants: kv::Tree,
    pub(crate) tenant_by_name: kv::Tree,
    pub(crate) users: kv::Tree,
    pub(crate) user_by_email: kv::Tree,
    pub(crate) tenant_members: kv::Tree,
    pub(crate) api_keys: kv::Tree,
    pub(crate) api_key_by_digest: kv::Tree,
    pub(crate) api_keys_by_tenant: kv::Tree,
    pub(crate) api_key_tenants: kv::Tree,
    pub(crate) api_key_usage: kv::Tree,
    pub(crate) sessions: kv::Tree,
    pub(crate) sessions_by_user: kv::Tree,
    pub(crate) refresh_tokens: kv::Tree,
    pub(crate) lockout: kv::Tree,
    pub(crate) audit: kv::Tree,
    pub(crate) products: kv::Tree,
    pub(crate) product_by_ean: kv::Tree,
    pub(crate) product_by_ref: kv::Tree,
    pub(crate) products_by_updated: kv::Tree,
    pub(crate) counters: kv::Tree,
    pub(crate) suppliers: kv::Tree,
    pub(crate) supplier_by_code: kv::Tree,
    pub(crate) products_by_supplier: kv::Tree,
    pub(crate) tombstones: kv::Tree,
    pub(crate) categories: kv::Tree,
    pub(crate) category_by_name: kv::Tree,
    pub(crate) products_by_category: kv::Tree,
    pub(crate) category_mappings: kv::Tree,
    pub(crate) products_inactive: kv::Tree,
    pub(crate) jobs: kv::Tree,
    pub(crate) job_logs: kv::Tree,
    pub(crate) import_templates: kv::Tree,
    pub(crate) webhooks: kv::Tree,
    pub(crate) webhook_events: kv::Tree,
    pub(crate) webhook_bodies: kv::Tree,
    pub(crate) webhook_deliveries: kv::Tree,
    pub(crate) webhook_due: kv::Tree,
    /// Which namespaces' changes write webhook events (see `webhooks.rs`).
    events_on: std::sync::Arc<webhooks::EventSwitch>,
}

/// How often sled writes its log and cleans its segments by default, in milliseconds. Under the
/// soak's writes, sled's own default (500) let the file grow 30 to 60 MiB a minute; 100 kept it
/// flat up to about 4 000 operations a second and let it grow again above that (60 MiB a
/// minute at 5 200); 25 keeps it flat there and calms the tail (docs/PERFORMANCE.md, "Cleaning
/// the log" and "The flush period at the new write rates").
pub const DEFAULT_FLUSH_MS: u64 = 25;

/// sled's page cache by default, in MiB. The cache fills with what the store writes, records
/// kept by policy (tombstones, audit events, spent tokens) included, and the server's RSS rises
/// with it until it is full: about 1.5 to 2.8 times this figure in memory. Under the soak's
/// writes (4 990 operations a second, default retentions) 64 MiB had not filled after an hour
/// (RSS +14 % over the second half); 32 levels off by minute 20 (+1.1 %), and costs 12 % of the
/// throughput of random reads spread over a catalog ten times its size (docs/PERFORMANCE.md,
/// "sled's cache size"). `--cache-mb` raises it for large catalogs read at random.
pub const DEFAULT_CACHE_MB: u64 = 32;

/// How long [`Store::open_tuned`] waits for sled's file lock to be released by a handle this
/// process has just closed.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Opens (or creates) the database under `dir` with sled's log written and cleaned every
    /// [`DEFAULT_FLUSH_MS`]. The caller holds the data-dir lock.
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Store> {
        Store::open_tuned(dir, cache_bytes, DEFAULT_FLUSH_MS)
    }

    /// [`Store::open`] with sled's periodic flush every `flush_every_ms` milliseconds. That
    /// thread is also the one that cleans sled's log: each period it spends up to half of it
    /// rewriting the live pages of mostly-dead segments. Under sustained writes a longer period
    /// lets the file grow without bound (docs/PERFORMANCE.md, "Cleaning the log").
    pub fn open_tuned(dir: &Path, cache_bytes: u64, flush_every_ms: u64) -> StoreResult<Store> {
        let path = dir.join("db");
        let config = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(Some(flush_every_ms.clamp(10, 10_000)));
        // The caller holds the data-dir lock, so sled's own file lock can only be held by a
        // handle this process has just closed: sled's IO threads keep the file open for a
        // moment after the last handle goes. That wait is short and bounded; waited out here,
        // a store closed and opened again at once (a restore, a test) does not fail.
        let waited_since = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && waited_since.elapsed() < SLED_LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => break opened?,
            }
        };
        Store::on(kv::Db::Sled(db))
    }

    /// Opens the store kept in the PostgreSQL database at `url` (SPEC §12), applying the schema
    /// migrations first, with up to `connections` connections, as a node of the cluster or as
    /// a command that needs the database to itself (each refused while the other runs).
    pub fn open_postgres(url: &str, connections: u32, role: Role) -> StoreResult<Store> {
        let db = pg::PgDb::connect(url, connections, role, WATCHED).map_err(StoreError::Backend)?;
        Store::on(kv::Db::Pg(db))
    }

    fn on(db: kv::Db) -> StoreResult<Store> {
        let tree = |name: &str| db.open_tree(name);
        let node = db.node().cloned();
        let trust = node.as_ref().map_or_else(
            || std::sync::Arc::new(cache::Trust::always()),
            |n| n.trust.clone(),
        );
        let horizon: std::sync::Arc<horizon::Horizon> = Default::default();
        if let Some(node) = &node {
            horizon.raise(i128::from(node.start_floor()));
        }
        let store = Store {
            meta: tree("meta")?,
            tenants: tree("tenants")?,
            tenant_by_name: tree("tenant_by_name")?,
            users: tree("users")?,
            user_by_email: tree("user_by_email")?,
            tenant_members: tree("tenant_members")?,
            api_keys: tree("api_keys")?,
            api_key_by_digest: tree("api_key_by_digest")?,
            api_keys_by_tenant: tree("api_keys_by_tenant")?,
            api_key_tenants: tree("api_key_tenants")?,
            api_key_usage: tree("api_key_usage")?,
            sessions: tree("sessions")?,
            sessions_by_user: tree("sessions_by_user")?,
            refresh_tokens: tree("refresh_tokens")?,
            lockout: tree("lockout")?,
            audit: tree("audit")?,
            products: tree("products")?,
            product_by_ean: tree("product_by_ean")?,
            product_by_ref: tree("product_by_ref")?,
            products_by_updated: tree("products_by_updated")?,
            counters: tree("counters")?,
            suppliers: tree("suppliers")?,
            supplier_by_code: tree("supplier_by_code")?,
            products_by_supplier: tree("products_by_supplier")?,
            tombstones: tree("tombstone_chunks")?,
            categories: tree("categories")?,
            category_by_name: tree("category_by_name")?,
            products_by_category: tree("products_by_category")?,
            category_mappings: tree("category_mappings")?,
            products_inactive: tree("products_inactive")?,
            jobs: tree("jobs")?,
            job_logs: tree("job_logs")?,
            import_templates: tree("import_templates")?,
            webhooks: tree("webhooks")?,
            webhook_events: tree("webhook_events")?,
            webhook_bodies: tree("webhook_bodies")?,
            webhook_deliveries: tree("webhook_deliveries")?,
            webhook_due: tree("webhook_due")?,
            events_on: Default::default(),
            key_lookups: Default::default(),
            caches: std::sync::Arc::new(Caches::new(trust)),
            group_commit: group_commit::GroupCommit::new(),
            writer: Default::default(),
            catalog_epoch: Default::default(),
            horizon,
            db,
        };
        store.migrate_session_index()?;
        store.migrate_supplier_index()?;
        store.migrate_category_index()?;
        store.migrate_inactive_index()?;
        store.migrate_tombstone_chunks(&store.db.open_tree("tombstones")?)?;
        store.refresh_wanted_events()?;
        Ok(store)
    }

    /// The time for a product write (its `updated_at`, or a deletion's `deleted_at`): hold the
    /// stamp until the write's transaction has committed. See `horizon.rs`.
    pub fn write_stamp(&self, now: impl FnOnce() -> OffsetDateTime) -> WriteStamp {
        self.horizon.stamp(now)
    }

    /// Every product change stamped before this time is committed: what a change feed may
    /// answer without a later commit appearing behind it. On a cluster, also every other
    /// node's (`cluster.rs`).
    pub fn feed_horizon(
        &self,
        now: impl FnOnce() -> OffsetDateTime,
    ) -> StoreResult<OffsetDateTime> {
        let local = self.horizon.horizon(now);
        let published = i64::try_from(local.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        let Some(floor) = self.db.cluster_floor(published)? else {
            return Ok(local);
        };
        Ok(OffsetDateTime::from_unix_timestamp_nanos(i128::from(floor))
            .map_or(local, |f| f.min(local)))
    }

    /// Joins this server to the cluster, when its store is a node's: other nodes' changes are
    /// applied to the caches here and passed to `also` (the search index, the webhook
    /// engine), and the node publishes its change-feed floor by `now`. Until this is called a
    /// node trusts no cache; [`Store::leave_cluster`] undoes it.
    pub fn join_cluster(
        &self,
        now: impl Fn() -> OffsetDateTime + Send + Sync + 'static,
        also: impl Fn(&cluster::Changes) + Send + Sync + 'static,
    ) {
        let Some(node) = self.db.node() else { return };
        node.on_stamps(FeedStamps {
            horizon: self.horizon.clone(),
            now: Box::new(now),
        });
        let store = self.clone();
        node.on_changes(move |changes| {
            store.apply_changes(changes);
            also(changes);
        });
    }

    /// Whether this process runs the background work that one process at a time must run
    /// (webhook deliveries): always on sled; on a cluster, the node holding the runner lock.
    pub fn runs_background(&self) -> bool {
        self.db.node().is_none_or(|n| n.is_runner())
    }

    /// Whether this process is a node of a cluster (its store is PostgreSQL, shared).
    pub fn is_cluster_node(&self) -> bool {
        self.db.node().is_some()
    }

    /// Whether the auth caches may be served: always on sled; on a cluster node while its lease
    /// holds and its listener works.
    pub fn caches_trusted(&self) -> bool {
        self.db.node().is_none_or(|n| n.trusted())
    }

    /// Stops applying other nodes' changes here (the server has stopped serving) and removes
    /// this node's lease, so that no other node's write waits for it; the caches are read
    /// through from then on.
    pub fn leave_cluster(&self) {
        if let kv::Db::Pg(db) = &self.db {
            db.leave();
        }
    }

    /// Applies another node's committed changes to what this process keeps.
    fn apply_changes(&self, changes: &cluster::Changes) {
        if changes.everything {
            self.caches.forget_all();
            self.catalog_changed();
        } else {
            for key in changes.keys("users") {
                if let Some(id) = crate::domain::UserId::from_slice(key) {
                    self.caches.users.invalidate(&id);
                }
            }
            for key in changes.keys("sessions") {
                if let Some(id) = crate::domain::SessionId::from_slice(key) {
                    self.caches.sessions.invalidate(&id);
                }
            }
            for key in changes.keys("tenants") {
                if let Some(id) = TenantId::from_slice(key) {
                    self.caches.tenants.invalidate(&id);
                }
            }
            // The key cache is by digest, the key records by id: a key write (rare: create,
            // revoke, rotate, edit) forgets every cached key.
            if changes.touches("api_keys") || changes.touches("api_key_by_digest") {
                self.caches.keys.invalidate_all();
            }
            if CATALOG_TREES.iter().any(|t| changes.touches(t)) {
                self.catalog_changed();
            }
        }
        if changes.touches("webhooks")
            && let Err(e) = self.refresh_wanted_events()
        {
            tracing::warn!(error = %e, "could not reload the webhooks another node changed");
        }
        if changes.touches("webhook_events") {
            self.events_written();
        }
    }

    /// See the field: read it before computing a list answer, compare it before reusing one.
    pub fn catalog_epoch(&self) -> u64 {
        self.catalog_epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn catalog_changed(&self) {
        self.catalog_epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn key_lookups(&self) -> u64 {
        self.key_lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_key_lookup(&self) {
        self.key_lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn db(&self) -> &kv::Db {
        &self.db
    }

    /// Runs `write` off the request workers and makes it durable: on sled on the store's
    /// writer thread, where it waits for no flush but its own batch's and holds no worker
    /// meanwhile (`writer.rs`); on PostgreSQL in place, as every other write (there a commit
    /// is durable when it answers, and the workers are sized for the round trips). Answers
    /// what `write` returned and whether the flush succeeded.
    ///
    /// `after` sees what `write` returned once the flush is done, before the answer: it runs
    /// even when the caller has stopped waiting (a client that hung up), so what must follow
    /// every committed write (telling the search index) goes there, not after the await.
    pub async fn write_durable<T, F, A>(
        &self,
        write: F,
        after: A,
    ) -> StoreResult<writer::Durable<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> T + Send + 'static,
        A: FnOnce(&T) + Send + 'static,
    {
        match &self.db {
            kv::Db::Sled(db) => {
                let store = self.clone();
                self.writer.run(db, move || write(&store), after).await
            }
            kv::Db::Pg(_) => {
                let written = write(self);
                after(&written);
                Ok((written, Ok(())))
            }
        }
    }

    /// Makes every write so far durable. Awaited before a response confirms a write.
    /// Concurrent callers share one flush (see [`group_commit`]).
    pub async fn flush(&self) -> StoreResult<()> {
        match &self.db {
            kv::Db::Sled(db) => self.group_commit.flush(db).await,
            // Every PostgreSQL commit is durable when it answers.
            kv::Db::Pg(_) => Ok(()),
        }
    }

    /// Bytes the store's files take on disk.
    pub fn size_on_disk(&self) -> StoreResult<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// Hits and misses of the auth path's record caches, by cache.
    pub fn cache_counts(&self) -> [(&'static str, crate::metrics::CacheCounts); 4] {
        let c = &self.caches;
        [
            ("api_keys", c.keys.counts()),
            ("users", c.users.counts()),
            ("sessions", c.sessions.counts()),
            ("tenants", c.tenants.counts()),
        ]
    }

    pub fn flush_blocking(&self) -> StoreResult<()> {
        if let kv::Db::Sled(db) = &self.db {
            db.flush()?;
        }
        Ok(())
    }

    pub fn meta_get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        match self.meta.get(key)? {
            Some(v) => Ok(Some(codec::check_version(&v)?.to_vec())),
            None => Ok(None),
        }
    }

    pub fn meta_set(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.meta.set(key, codec::raw(value))?;
        Ok(())
    }

    /// Returns the value under `key`, first storing `make()` when there is none (atomically).
    pub fn meta_get_or_init(
        &self,
        key: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> StoreResult<Vec<u8>> {
        let candidate = make();
        let stored = codec::raw(&candidate);
        match self
            .meta
            .compare_and_swap(key, None as Option<&[u8]>, Some(stored.as_slice()))?
        {
            Ok(()) => Ok(candidate),
            Err(cas) => match cas.current {
                Some(v) => Ok(codec::check_version(&v)?.to_vec()),
                None => Ok(candidate),
            },
        }
    }

    /// The lockout state kept for a normalized email.
    pub fn lockout_get<S: serde::de::DeserializeOwned>(
        &self,
        email: &str,
    ) -> StoreResult<Option<S>> {
        self.lockout
            .get(email.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// Applies the pure transition `next` to an email's lockout state in one transaction. When
    /// `next` answers `true` (the email just locked) and `user` is given, the user's token
    /// version is bumped in the same transaction, so no crash can leave a locked account with
    /// live sessions. Returns the state before and after, and whether it locked.
    pub fn lockout_transition<S, F>(
        &self,
        email: &str,
        user: Option<crate::domain::UserId>,
        next: F,
    ) -> StoreResult<(S, S, bool)>
    where
        S: serde::Serialize + serde::de::DeserializeOwned + Default,
        F: Fn(&S) -> (S, bool),
    {
        use kv::Transactional;
        let result = (&self.lockout, &self.users)
            .transaction(|(lockout, users)| {
                let old: S = lockout
                    .get(email.as_bytes())?
                    .and_then(|v| codec::decode(&v).ok())
                    .unwrap_or_default();
                let (new, locks) = next(&old);
                lockout.set(email.as_bytes(), codec::encode(&new))?;
                if locks
                    && let Some(uid) = user
                    && let Some(bytes) = users.get(uid.as_bytes())?
                {
                    let mut u: UserRecord = codec::decode(&bytes).or_else(abort)?;
                    u.token_version = u.token_version.wrapping_add(1);
                    users.set(uid.as_bytes(), codec::encode(&u))?;
                }
                Ok((old, new, locks))
            })
            .map_err(from_tx);
        if let (Ok((_, _, true)), Some(uid)) = (&result, user) {
            self.caches.users.invalidate(&uid);
        }
        result
    }

    /// Removes every lockout record `spent` says is spent; returns how many. Each removal is a
    /// compare-and-swap, so a failure recorded meanwhile is never lost.
    pub fn sweep_lockouts<S, F>(&self, spent: F) -> StoreResult<usize>
    where
        S: serde::de::DeserializeOwned,
        F: Fn(&S) -> bool,
    {
        let mut removed = 0;
        for item in self.lockout.iter() {
            let (email, value) = item?;
            let Ok(state) = codec::decode::<S>(&value) else {
                continue;
            };
            if spent(&state)
                && self
                    .lockout
                    .compare_and_swap(&email, Some(&value), None as Option<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn lockout_clear(&self, email: &str) -> StoreResult<bool> {
        Ok(self.lockout.remove(email.as_bytes())?.is_some())
    }

    /// Whether no tree holds anything (restore only loads into such a store).
    pub fn is_empty(&self) -> StoreResult<bool> {
        for name in TREES {
            if !self.db.open_tree(name)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The quick check made at every open: the small trees every request depends on. The large
    /// ones (keys, products, sessions) are checked in full by `check_integrity`, which `backup` and `check` run.
    pub fn verify_core(&self) -> StoreResult<usize> {
        self.verify_trees(&TREES[..CORE_TREES])
    }

    fn verify_trees(&self, names: &[&str]) -> StoreResult<usize> {
        let mut count = 0;
        for name in names {
            for item in self.db.open_tree(name)?.iter() {
                let (_, value) = item?;
                codec::check_version(&value)?;
                count += 1;
            }
        }
        Ok(count)
    }
}

/// Each namespace with a key in `tree` (a catalog tree: keys start with the namespace), in key
/// order: one seek per namespace.
fn namespaces_in(tree: &kv::Tree) -> impl Iterator<Item = StoreResult<Namespace>> + '_ {
    let mut from = Some(Vec::new());
    std::iter::from_fn(move || {
        let start = from.take()?;
        let first = match tree.range(start..).keys().next()? {
            Ok(k) => k,
            Err(e) => return Some(Err(e.into())),
        };
        let Some(ns) = keys::namespace_of(&first) else {
            return Some(Err(StoreError::Corrupt("catalog tree: bad key".into())));
        };
        from = keys::prefix_end(&keys::namespace(ns));
        Some(Ok(ns))
    })
}

/// The keys of a tree laid out as namespace + time + id (`keys::updated_key`) that belong to
/// `ns` and, when `since` is given, carry that time or a later one.
fn time_range(tree: &kv::Tree, ns: Namespace, since: Option<time::OffsetDateTime>) -> kv::Iter {
    let prefix = keys::namespace(ns);
    let start = match since {
        Some(t) => keys::ns_updated(ns, t.unix_timestamp_nanos(), &[0u8; 16]).to_vec(),
        None => prefix.to_vec(),
    };
    match keys::prefix_end(&prefix) {
        Some(end) => tree.range(start..end),
        None => tree.range(start..),
    }
}

/// The product ids that end the keys of an index under `prefix` (namespace + a supplier or
/// category id): the products of one supplier or category.
fn product_ids_under(
    tree: &kv::Tree,
    prefix: &[u8],
    name: &str,
) -> StoreResult<Vec<crate::domain::ProductId>> {
    tree.scan_prefix(prefix)
        .keys()
        .map(|k| {
            let k = k?;
            k.get(33..)
                .and_then(crate::domain::ProductId::from_slice)
                .ok_or_else(|| StoreError::Corrupt(format!("{name}: short key")))
        })
        .collect()
}

pub(crate) fn abort<T>(
    e: StoreError,
) -> sled::transaction::ConflictableTransactionResult<T, StoreError> {
    Err(sled::transaction::ConflictableTransactionError::Abort(e))
}

pub(crate) fn from_tx(e: sled::transaction::TransactionError<StoreError>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => e.into(),
    }
}

/// Opens the store in `dir` again right after a test dropped it: sled's background thread may
/// hold the file lock a moment longer (tests under load saw the reopen refused).
#[cfg(test)]
pub(crate) fn reopen(dir: &Path) -> Store {
    for _ in 0..100 {
        match Store::open(dir, 1 << 20) {
            Ok(store) => return store,
            Err(e) if format!("{e:?}").contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
    panic!("reopen: the store stayed locked");
}
