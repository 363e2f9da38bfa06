//! Several `serve` nodes on one PostgreSQL database (SPEC §12): what keeps each node's caches
//! and in-memory views exact while the others write.
//!
//! - **Leases.** Each node holds a row in `nodes` whose `expires_at` it moves [`LEASE`] ahead
//!   every [`RENEW_EVERY`]. The renewal statement carries a heartbeat to the node itself,
//!   which comes back after every notice committed before the renewal has been applied here;
//!   only then is the trust extended, to the node's own, earlier reckoning of the lease (when
//!   it sent the renewal, plus the lease, less [`MARGIN`]). The next renewal waits for that
//!   heartbeat: a node renews only while its listener works end to end.
//! - **Notices in the writing transaction.** A transaction that writes a tree some node keeps
//!   a view of ([`super::WATCHED`]) issues `pg_notify` in the statement that sends its writes,
//!   naming the keys it wrote, when another node holds a lease: PostgreSQL delivers it at the
//!   commit, and a crash cannot separate the two. A notice too long for a payload is written
//!   to `notices` in the same transaction and named.
//! - **The write waits.** After its commit the writer reads which other nodes hold a live
//!   lease and waits until each has acknowledged the notice (it applied it to its caches,
//!   search index and list answers first), or until that node's lease has run out, by which
//!   time that node no longer trusts its caches. Only then does the write answer its client:
//!   a request sent to any node after that answer sees the write.
//! - **Reading through.** A node whose listener is down, or whose lease it could not renew,
//!   serves every request from the database. When its listener is back it first forgets all
//!   it holds (the notices it missed are gone), then trusts again.
//! - **Joining, rejoining, sweeping** and the change feed's floors: docs/ARCHITECTURE.md,
//!   "Several nodes on one database", and the functions [`register`], `rejoin` and `sweep`.
use super::cache::Trust;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The channel every notice, acknowledgement and heartbeat goes through.
pub const CHANNEL: &str = "pixee_changes";
/// How long a lease lasts after each renewal.
pub const LEASE: Duration = Duration::from_secs(3);
/// How often a node renews its lease (and sends itself a heartbeat).
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How much earlier than the database a node stops trusting its own lease.
const MARGIN: Duration = Duration::from_millis(500);
/// A notice body longer than this goes through the `notices` table (PostgreSQL's payload limit
/// is 8 000 bytes, and the body travels as hex).
const INLINE_BYTES: usize = 3_800;

/// What a committed transaction changed, as a receiving node learns it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Everything may have changed: the node missed notices (its listener was down, or its
    /// lease ran out) and forgets all it holds.
    pub everything: bool,
    /// The watched trees written, with the keys written in each.
    pub writes: Vec<(String, Vec<u8>)>,
    /// With `everything`: changes before this time were all heard (`None`: unknown).
    pub since: Option<time::OffsetDateTime>,
}

impl Changes {
    pub fn everything() -> Changes {
        Changes {
            everything: true,
            writes: Vec::new(),
            since: None,
        }
    }

    /// Whether `tree` was written (or everything changed).
    pub fn touches(&self, tree: &str) -> bool {
        self.everything || self.writes.iter().any(|(t, _)| t == tree)
    }

    /// The keys written in `tree`.
    pub fn keys<'a>(&'a self, tree: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.writes
            .iter()
            .filter(move |(t, _)| t == tree)
            .map(|(_, k)| k.as_slice())
    }

    /// The notice body: per write, the tree's name (one length byte) and the key (two).
    pub fn encode(&self) -> Vec<u8> {
        if self.everything {
            return vec![0xff];
        }
        let mut out = Vec::new();
        for (tree, key) in &self.writes {
            let (Ok(tl), Ok(kl)) = (u8::try_from(tree.len()), u16::try_from(key.len())) else {
                // No tree name or key of the store is this long; announce everything instead.
                return vec![0xff];
            };
            out.push(tl);
            out.extend_from_slice(tree.as_bytes());
            out.extend_from_slice(&kl.to_be_bytes());
            out.extend_from_slice(key);
        }
        out
    }

    pub fn decode(body: &[u8]) -> Option<Changes> {
        if body == [0xff] {
            return Some(Changes::everything());
        }
        let mut writes = Vec::new();
        let mut rest = body;
        while let Some((&tl, r)) = rest.split_first() {
            let tl = usize::from(tl);
            let tree = std::str::from_utf8(r.get(..tl)?).ok()?.to_string();
            let r = &r[tl..];
            let kl = usize::from(u16::from_be_bytes([*r.first()?, *r.get(1)?]));
            let key = r.get(2..2 + kl)?.to_vec();
            rest = &r[2 + kl..];
            writes.push((tree, key));
        }
        Some(Changes {
            everything: false,
            writes,
            since: None,
        })
    }
}

/// The `pg_notify` payload of `node`'s notice `seq`: its body inline when short, otherwise the
/// `notices` row written beside it (`row` gives its id once written).
pub fn payload(node: Uuid, seq: u64, body: &[u8], row: Option<i64>) -> String {
    match row {
        Some(id) => format!("r {node} {seq} {id}"),
        None => format!("n {node} {seq} {}", crate::domain::hex(body)),
    }
}

/// Whether a notice body fits in its payload.
pub fn inline(body: &[u8]) -> bool {
    body.len() <= INLINE_BYTES
}

type Handler = Arc<dyn Fn(&Changes) + Send + Sync>;
/// What a node needs of its server's change-feed stamps (`store/horizon.rs`), all in Unix
/// nanoseconds of the server's clock.
pub trait Stamps: Send + Sync {
    /// The horizon now: no stamp still held is below it.
    fn floor(&self) -> i64;
    /// The clock now.
    fn now(&self) -> i64;
    /// No stamp is taken below `to` from now on.
    fn raise(&self, to: i64);
    /// Whether a stamp below `at` is still held.
    fn held_before(&self, at: i64) -> bool;
}

/// This process as a node of the cluster: its identity, its lease's trust, the notices it sent
/// and the acknowledgements they got.
pub struct Node {
    pub id: Uuid,
    seq: AtomicU64,
    /// Until when this node's caches may be used (see [`Trust`]).
    pub trust: Arc<Trust>,
    /// Acknowledgements received, by the sequence number of this node's notice.
    acks: Mutex<HashMap<u64, HashSet<Uuid>>>,
    acked: Condvar,
    /// Applies another node's changes to this process's caches and views (set while a server
    /// serves).
    handler: Mutex<Option<Handler>>,
    /// The server has stopped serving: the caches are never trusted again.
    left: AtomicBool,
    /// The server's change-feed stamps: the horizon is published in the lease row.
    stamps: OnceLock<Box<dyn Stamps>>,
    /// Moves each time the listener is lost (notices may have been missed since).
    gaps: AtomicU64,
    /// Since when notices may have been missed, for the gaps not yet forgotten.
    gap_since: Mutex<Option<time::OffsetDateTime>>,
    /// The last gap this node has forgotten its caches for.
    flushed: AtomicU64,
    listening: AtomicBool,
    /// The last renewal's heartbeat sent, and the last one that came back.
    sent: AtomicU64,
    heard: AtomicU64,
    /// The renewal whose heartbeat has not come back yet: its number, when it was sent, and
    /// the gap count then. Its heartbeat comes back after every notice committed before the
    /// renewal has been applied here, and only then is the trust extended.
    pending: Mutex<Option<(u64, Instant, u64)>>,
    /// The lease had run out in the database: this node waits for the transactions that did
    /// not see it before it may trust again.
    rejoining: AtomicBool,
    /// Makes the listener connect again (its heartbeats stopped coming back).
    reconnect: tokio::sync::Notify,
    /// The highest floor any node had published when this one registered.
    start_floor: AtomicI64,
    /// This node holds the runner lock (see `pg.rs`).
    runner: AtomicBool,
    /// Runs the lease's next round at once (a handler was just set: trust need not wait).
    wake: tokio::sync::Notify,
}

impl Node {
    pub fn new() -> Arc<Node> {
        Arc::new(Node {
            id: Uuid::new_v4(),
            seq: AtomicU64::new(0),
            trust: Arc::new(Trust::never()),
            acks: Mutex::new(HashMap::new()),
            acked: Condvar::new(),
            handler: Mutex::new(None),
            left: AtomicBool::new(false),
            stamps: OnceLock::new(),
            // A node starts with a gap: it trusts nothing until it has listened and forgotten.
            gaps: AtomicU64::new(1),
            gap_since: Mutex::new(Some(time::OffsetDateTime::now_utc())),
            flushed: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            heard: AtomicU64::new(0),
            pending: Mutex::new(None),
            rejoining: AtomicBool::new(false),
            reconnect: tokio::sync::Notify::new(),
            start_floor: AtomicI64::new(0),
            wake: tokio::sync::Notify::new(),
            runner: AtomicBool::new(false),
        })
    }

    /// Sets what applies other nodes' changes here; until then this node trusts nothing.
    pub fn on_changes(&self, handler: impl Fn(&Changes) + Send + Sync + 'static) {
        if let Ok(mut slot) = self.handler.lock() {
            *slot = Some(Arc::new(handler));
        }
        self.wake.notify_one();
    }

    fn handler(&self) -> Option<Handler> {
        self.handler.lock().ok().and_then(|h| h.clone())
    }

    /// The server has stopped: nothing here is trusted or kept current any more, and the lease
    /// is not renewed (the caller removes it, so that no writer waits for this node).
    pub fn leave(&self) {
        self.left.store(true, Ordering::SeqCst);
        self.trust.end();
        if let Ok(mut slot) = self.handler.lock() {
            *slot = None;
        }
    }

    /// Sets the stamps whose horizon this node publishes as its change-feed floor.
    pub fn on_stamps(&self, stamps: impl Stamps + 'static) {
        let _ = self.stamps.set(Box::new(stamps));
    }

    /// Whether this node runs the cluster's background work now.
    pub fn is_runner(&self) -> bool {
        self.runner.load(Ordering::SeqCst)
    }

    pub fn set_runner(&self, runner: bool) {
        self.runner.store(runner, Ordering::SeqCst);
    }

    /// The highest change-feed floor published when this node registered: its own stamps must
    /// not fall behind it (a horizon another node gave out may already have passed it).
    pub fn start_floor(&self) -> i64 {
        self.start_floor.load(Ordering::SeqCst)
    }

    /// Notices may have been missed: trust nothing until the caches are forgotten. (The gap
    /// is counted before the trust ends, so a renewal that checks the count after extending
    /// the trust cannot undo this.)
    fn lost(&self) {
        if let Ok(mut since) = self.gap_since.lock() {
            // A connection can die unnoticed, but no longer than the lease it stops renewing.
            let silent = time::Duration::try_from(LEASE + RENEW_EVERY).unwrap_or_default();
            since.get_or_insert(time::OffsetDateTime::now_utc() - silent);
        }
        self.gaps.fetch_add(1, Ordering::SeqCst);
        self.trust.end();
    }

    /// Whether this node's caches may be used now.
    pub fn trusted(&self) -> bool {
        self.trust.holds()
    }

    /// A new notice of this node: its number, with an empty set of acknowledgements.
    pub fn begin_notice(&self) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut acks) = self.acks.lock() {
            acks.insert(seq, HashSet::new());
        }
        seq
    }

    /// The notice was not committed after all.
    pub fn drop_notice(&self, seq: u64) {
        if let Ok(mut acks) = self.acks.lock() {
            acks.remove(&seq);
        }
    }

    /// Waits, after notice `seq` committed, until every other node whose lease was live when
    /// it was sent has acknowledged it, or its lease has run out. `live` is that set, with the
    /// time each lease had left then.
    pub fn wait_for_acks(&self, seq: u64, live: Vec<(Uuid, Duration)>) {
        let start = Instant::now();
        let deadlines: Vec<(Uuid, Instant)> = live
            .into_iter()
            .map(|(id, left)| (id, start + left + Duration::from_millis(50)))
            .collect();
        let Ok(mut acks) = self.acks.lock() else {
            return;
        };
        loop {
            let now = Instant::now();
            let got = acks.get(&seq);
            let waiting = deadlines
                .iter()
                .filter(|(id, until)| *until > now && !got.is_some_and(|g| g.contains(id)))
                .map(|(_, until)| *until)
                .min();
            let Some(until) = waiting else { break };
            match self.acked.wait_timeout(acks, until - now) {
                Ok((guard, _)) => acks = guard,
                Err(_) => return,
            }
        }
        acks.remove(&seq);
    }

    fn record_ack(&self, seq: u64, from: Uuid) {
        if let Ok(mut acks) = self.acks.lock()
            && let Some(set) = acks.get_mut(&seq)
        {
            set.insert(from);
            self.acked.notify_all();
        }
    }

    /// The renewal numbered `n` came back through the listener: every notice committed before
    /// it has been applied, so the trust may run to its lease (unless a gap, a rejoin or the
    /// end came between).
    fn renewal_heard(&self, n: u64) {
        self.heard.fetch_max(n, Ordering::SeqCst);
        let Some((_, sent_at, gap)) = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.take_if(|(m, _, _)| *m <= n))
        else {
            return;
        };
        let clear = || {
            self.gaps.load(Ordering::SeqCst) == gap
                && self.flushed.load(Ordering::SeqCst) == gap
                && !self.left.load(Ordering::SeqCst)
                && !self.rejoining.load(Ordering::SeqCst)
        };
        if clear() {
            self.trust.extend(sent_at + LEASE - MARGIN);
            // Checked again after extending: a gap counted meanwhile ends the trust (`lost`
            // counts first, then ends it).
            if !clear() {
                self.trust.end();
            }
        }
    }

    /// Starts the listener, waits (a few seconds at most) until it listens, registers the
    /// lease, then keeps it, all on `pool` (the node's own few connections, apart from the
    /// requests', so that an acknowledgement never waits behind them). Listening first: a
    /// write that sees the lease can count on this node hearing its notice.
    pub async fn start(self: &Arc<Node>, pool: PgPool) -> Result<(), sqlx::Error> {
        tokio::spawn(listen(self.clone(), pool.clone()));
        let started = Instant::now();
        while !self.listening.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        register(self, &pool).await?;
        tokio::spawn(keep_lease(self.clone(), pool));
        Ok(())
    }
}

/// Receives notices, acknowledgements and heartbeats; marks a gap whenever the connection is
/// lost.
async fn listen(node: Arc<Node>, pool: PgPool) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                listener.eager_reconnect(false);
                if listener.listen(CHANNEL).await.is_ok() {
                    // A gap counted now that this connection listens: the caches are
                    // forgotten after this point, so nothing missed before it is kept.
                    node.lost();
                    // Renewals resume: the heartbeats lost with the old connection are
                    // not waited for.
                    node.heard
                        .store(node.sent.load(Ordering::SeqCst), Ordering::SeqCst);
                    node.listening.store(true, Ordering::SeqCst);
                    loop {
                        tokio::select! {
                            got = listener.try_recv() => match got {
                                Ok(Some(n)) => receive(&node, &pool, n.payload()).await,
                                Ok(None) | Err(_) => break,
                            },
                            () = node.reconnect.notified() => break,
                        }
                    }
                    tracing::warn!("lost the cluster listener; reading through until it is back");
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot listen for cluster notices yet"),
        }
        node.listening.store(false, Ordering::SeqCst);
        node.lost();
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn receive(node: &Arc<Node>, pool: &PgPool, payload: &str) {
    let mut parts = payload.splitn(4, ' ');
    let (Some(kind), Some(from), Some(n), rest) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(from), Ok(n)) = (Uuid::parse_str(from), n.parse::<u64>()) else {
        return;
    };
    match kind {
        "h" if from == node.id => node.renewal_heard(n),
        "a" if from == node.id => {
            if let Some(acker) = rest.and_then(|r| Uuid::parse_str(r).ok()) {
                node.record_ack(n, acker);
            }
        }
        "n" | "r" if from != node.id => {
            let changes = match (kind, rest) {
                ("n", Some(hex)) => unhex(hex).and_then(|b| Changes::decode(&b)),
                ("r", Some(id)) => match id.parse::<i64>() {
                    Ok(id) => fetch_notice(pool, id).await,
                    Err(_) => None,
                },
                _ => None,
            };
            // A notice this node cannot read: it forgets everything rather than guess (as after
            // a gap, with the catch-up that bounds).
            let Some(changes) = changes else {
                node.lost();
                acknowledge(node, pool, from, n).await;
                return;
            };
            let handler = node.handler();
            let done = tokio::task::spawn_blocking(move || {
                if let Some(handler) = handler {
                    handler(&changes);
                }
            })
            .await;
            if done.is_err() {
                node.lost();
            }
            acknowledge(node, pool, from, n).await;
        }
        _ => {}
    }
}

/// Tells `writer` that this node has applied its notice `n`.
async fn acknowledge(node: &Node, pool: &PgPool, writer: Uuid, n: u64) {
    let ack = format!("a {writer} {n} {}", node.id);
    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(ack)
        .execute(pool)
        .await
    {
        // The writer waits this node's lease out instead; this node may not count on having
        // been heard, so it reads through until it has forgotten everything.
        tracing::warn!(error = %e, "could not acknowledge a cluster notice");
        node.lost();
    }
}

async fn fetch_notice(pool: &PgPool, id: i64) -> Option<Changes> {
    let row = sqlx::query("SELECT body FROM notices WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .ok()??;
    let body: Vec<u8> = row.try_get(0).ok()?;
    Changes::decode(&body)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Renews the lease while the listener works (the previous renewal's heartbeat came back),
/// publishing the node's feed floor; forgets the caches after a gap before trusting them
/// again; makes a silent listener connect again; sweeps what dead nodes left.
async fn keep_lease(node: Arc<Node>, pool: PgPool) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut unheard: u32 = 0;
    let sweeping = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = node.wake.notified() => {}
        }
        ticks += 1;
        if pool.is_closed() || node.left.load(Ordering::SeqCst) {
            return;
        }
        let listening = node.listening.load(Ordering::SeqCst);
        let heard = node.heard.load(Ordering::SeqCst) >= node.sent.load(Ordering::SeqCst);
        tracing::debug!(
            heard,
            listening,
            trusted = node.trust.holds(),
            gaps = node.gaps.load(Ordering::SeqCst),
            flushed = node.flushed.load(Ordering::SeqCst),
            "cluster lease tick"
        );
        if heard {
            unheard = 0;
            if listening {
                renew(&node, &pool).await;
            }
        } else {
            unheard += 1;
            if unheard >= 3 {
                // A connection can die without an error (a half-open socket): start over.
                node.reconnect.notify_one();
                unheard = 0;
            }
        }
        if ticks.is_multiple_of(5) && !sweeping.swap(true, Ordering::SeqCst) {
            let (pool, sweeping) = (pool.clone(), sweeping.clone());
            tokio::spawn(async move {
                if let Err(e) = sweep(&pool).await {
                    tracing::debug!(error = %e, "could not sweep the leases of dead nodes");
                }
                sweeping.store(false, Ordering::SeqCst);
            });
        }
    }
}

/// Removes what dead nodes left: their leases in two steps (marked gone, which fails their
/// writes begun after; then, once every transaction begun before has ended, removed: a feed
/// counts a lease's floor until then), and old long notices.
async fn sweep(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE nodes SET gone = true \
         WHERE expires_at < clock_timestamp() - interval '1 second' AND NOT gone",
    )
    .execute(pool)
    .await?;
    // Only the leases gone before the wait: one marked later may have writes begun meanwhile.
    let gone: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM nodes WHERE gone")
        .fetch_all(pool)
        .await?;
    if !gone.is_empty() {
        wait_for_older_transactions(pool).await?;
        sqlx::query("DELETE FROM nodes WHERE gone AND id = ANY($1)")
            .bind(gone)
            .execute(pool)
            .await?;
    }
    sqlx::query("DELETE FROM notices WHERE at < clock_timestamp() - interval '5 minutes'")
        .execute(pool)
        .await?;
    Ok(())
}

async fn renew(node: &Arc<Node>, pool: &PgPool) {
    if node.rejoining.load(Ordering::SeqCst) {
        return;
    }
    if !node.trust.holds()
        && node.flushed.load(Ordering::SeqCst) == node.gaps.load(Ordering::SeqCst)
        && node.pending.lock().is_ok_and(|p| p.is_none())
    {
        // The lease lapsed by this node's reckoning: writers may have stopped waiting for it.
        node.lost();
    }
    let gap = node.gaps.load(Ordering::SeqCst);
    let must_flush = node.flushed.load(Ordering::SeqCst) != gap;
    let handler = node.handler().filter(|_| !node.left.load(Ordering::SeqCst));
    // Forgets what the gap may have made stale; without a handler (the server is not serving
    // yet, or any more) the lease is renewed all the same, but nothing is trusted.
    if let (true, Some(handler)) = (must_flush, handler) {
        let since = node.gap_since.lock().ok().and_then(|mut s| s.take());
        let changes = Changes {
            since,
            ..Changes::everything()
        };
        match tokio::task::spawn_blocking(move || handler(&changes)).await {
            Ok(()) => node.flushed.store(gap, Ordering::SeqCst),
            Err(_) => {
                if let Ok(mut s) = node.gap_since.lock() {
                    *s = since.or(*s);
                }
            }
        }
    }
    let floor = node
        .stamps
        .get()
        .map_or_else(|| node.start_floor(), |s| s.floor());
    let n = node.sent.fetch_add(1, Ordering::SeqCst) + 1;
    let sent_at = Instant::now();
    // One statement: the renewal of a lease that stands (not swept), whether it was still
    // live (NULL: there is none), and the heartbeat that comes back after every notice
    // committed before it.
    let renewed: Result<(Option<bool>, i64), _> = sqlx::query_as(
        "WITH old AS (SELECT expires_at > clock_timestamp() AND NOT gone AS live \
         FROM nodes WHERE id = $1), \
         up AS (UPDATE nodes SET expires_at = clock_timestamp() + make_interval(secs => $2), \
         floor = GREATEST(floor, $3) WHERE id = $1 AND NOT gone RETURNING 1), \
         beat AS MATERIALIZED (SELECT pg_notify($4, $5)) \
         SELECT (SELECT live FROM old), (SELECT count(*) FROM up) \
         FROM (SELECT count(*) FROM beat) b",
    )
    .bind(node.id)
    .bind(LEASE.as_secs_f64())
    .bind(floor)
    .bind(CHANNEL)
    .bind(format!("h {} {n}", node.id))
    .fetch_one(pool)
    .await;
    match renewed {
        // The lease had run out in the database, or was swept: writers passed this node by,
        // and a feed elsewhere may have answered past its stamps. It rejoins in the
        // background.
        Ok((live, renewed)) if live != Some(true) || renewed == 0 => {
            node.rejoining.store(true, Ordering::SeqCst);
            node.lost();
            let (node, pool) = (node.clone(), pool.clone());
            tokio::spawn(async move {
                if let Err(e) = rejoin(&node, &pool, renewed == 0).await {
                    tracing::warn!(error = %e, "could not rejoin the cluster yet");
                }
                node.lost();
                node.rejoining.store(false, Ordering::SeqCst);
            });
        }
        Ok(_) => {
            if let Ok(mut p) = node.pending.lock() {
                *p = Some((n, sent_at, gap));
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not renew this node's lease"),
    }
}

/// Makes a node whose lease ran out a member again. A lease that was swept (`swept`) is
/// registered again only once every write this node stamped before has ended: those fail
/// their fence meanwhile, so none commits a stamp a feed elsewhere may already have passed.
/// Then, as at the first start, it waits for every transaction begun before, which did not
/// see its lease.
async fn rejoin(node: &Node, pool: &PgPool, swept: bool) -> Result<(), sqlx::Error> {
    if node.left.load(Ordering::SeqCst) {
        return Ok(());
    }
    if swept {
        // Back first as a lease marked gone: every write of this node still fails its fence,
        // and a feed elsewhere counts this floor, no lower than any other's.
        let highest: Option<i64> =
            sqlx::query_scalar("SELECT max(floor) FROM nodes WHERE id <> $1")
                .bind(node.id)
                .fetch_one(pool)
                .await?;
        sqlx::query(
            "INSERT INTO nodes (id, expires_at, floor, gone) \
             VALUES ($1, clock_timestamp() + make_interval(secs => $2), $3, true) \
             ON CONFLICT (id) DO UPDATE SET gone = true, expires_at = EXCLUDED.expires_at, \
             floor = GREATEST(nodes.floor, EXCLUDED.floor)",
        )
        .bind(node.id)
        .bind(LEASE.as_secs_f64())
        .bind(highest.unwrap_or(0))
        .execute(pool)
        .await?;
        // Read again once this lease is in: a feed that read the floors before published its
        // own first.
        let highest: Option<i64> =
            sqlx::query_scalar("SELECT max(floor) FROM nodes WHERE id <> $1")
                .bind(node.id)
                .fetch_one(pool)
                .await?;
        node.start_floor
            .fetch_max(highest.unwrap_or(0), Ordering::SeqCst);
        let mut floor = node.start_floor();
        if let Some(stamps) = node.stamps.get() {
            // Other nodes' feeds may have answered past this node's clock meanwhile; the
            // stamps taken before the raise must end (failing their fence) before the lease
            // stands again.
            stamps.raise(node.start_floor());
            let after = stamps.now().max(node.start_floor()).saturating_add(1);
            let started = Instant::now();
            while stamps.held_before(after) && started.elapsed() < OLDEST_TRANSACTION {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            floor = stamps.floor();
        }
        if node.left.load(Ordering::SeqCst) {
            return Ok(());
        }
        sqlx::query(
            "UPDATE nodes SET gone = false, \
             expires_at = clock_timestamp() + make_interval(secs => $2), \
             floor = GREATEST(floor, $3) WHERE id = $1",
        )
        .bind(node.id)
        .bind(LEASE.as_secs_f64())
        .bind(floor)
        .execute(pool)
        .await?;
    }
    wait_for_older_transactions(pool).await
}

/// Registers `node`'s first lease, then takes the highest floor the other nodes have
/// published as its own stamps' minimum (see [`Node::start_floor`]): a feed elsewhere that
/// read the floors before this lease existed published its own first, so its answer is below
/// that. Then it waits for every transaction begun before: their snapshots do not hold this
/// lease, so they neither tell nor wait for this node; those begun after do.
pub async fn register(node: &Node, pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO nodes (id, expires_at, floor) \
         VALUES ($1, clock_timestamp() + make_interval(secs => $2), 0)",
    )
    .bind(node.id)
    .bind(LEASE.as_secs_f64())
    .execute(pool)
    .await?;
    let highest: Option<i64> = sqlx::query_scalar("SELECT max(floor) FROM nodes WHERE id <> $1")
        .bind(node.id)
        .fetch_one(pool)
        .await?;
    node.start_floor
        .store(highest.unwrap_or(0), Ordering::SeqCst);
    wait_for_older_transactions(pool).await
}

/// The other nodes whose lease is live now, with the time each has left.
pub async fn live_nodes(pool: &PgPool, me: Uuid) -> Result<Vec<(Uuid, Duration)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8 FROM nodes \
         WHERE id <> $1 AND expires_at > clock_timestamp() AND NOT gone",
    )
    .bind(me)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let id: Uuid = r.try_get(0)?;
            let left: f64 = r.try_get(1)?;
            Ok((id, Duration::from_secs_f64(left.clamp(0.0, 60.0))))
        })
        .collect()
}

/// How long [`wait_for_older_transactions`] waits at most: a transaction left idle longer is
/// ended by the database (`idle_in_transaction_session_timeout`).
const OLDEST_TRANSACTION: Duration = Duration::from_secs(65);

/// Waits until every transaction on this database begun before now (by another session) has
/// ended. After a lease became live (again), what this node reads is then newer than the
/// commits of the transactions that did not see the lease, or their notices reach it; after a
/// dead node's lease was removed, its writes still committing are done.
pub async fn wait_for_older_transactions(pool: &PgPool) -> Result<(), sqlx::Error> {
    let now: f64 = sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
        .fetch_one(pool)
        .await?;
    let started = Instant::now();
    loop {
        let older: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND backend_type = 'client backend' AND application_name = 'pixee-pim' \
             AND pid <> pg_backend_pid() AND xact_start < to_timestamp($1)",
        )
        .bind(now)
        .fetch_one(pool)
        .await?;
        if older == 0 || started.elapsed() > OLDEST_TRANSACTION {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_body_reads_back_as_written() {
        let changes = Changes {
            everything: false,
            since: None,
            writes: vec![
                ("api_keys".into(), vec![1, 2, 3]),
                ("sessions".into(), vec![]),
                ("products".into(), vec![9; 300]),
            ],
        };
        assert_eq!(Changes::decode(&changes.encode()), Some(changes.clone()));
        assert_eq!(
            unhex(&crate::domain::hex(&changes.encode())),
            Some(changes.encode())
        );
        assert_eq!(Changes::decode(&[5, b'a']), None, "a cut body is refused");
        assert_eq!(
            Changes::decode(&Changes::everything().encode()),
            Some(Changes::everything())
        );
    }

    #[test]
    fn a_writer_waits_for_each_live_node_or_its_lease() {
        let node = Node::new();
        let seq = node.begin_notice();
        let other = Uuid::new_v4();
        let late = Uuid::new_v4();
        let acking = node.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            acking.record_ack(seq, other);
        });
        let start = Instant::now();
        node.wait_for_acks(
            seq,
            vec![
                (other, Duration::from_secs(10)),
                (late, Duration::from_millis(200)),
            ],
        );
        let waited = start.elapsed();
        t.join().unwrap();
        assert!(
            waited >= Duration::from_millis(200),
            "the silent node's lease is waited out"
        );
        assert!(
            waited < Duration::from_secs(5),
            "the acknowledged node ends its wait"
        );
    }
}
