//! The product search index (SPEC §4): tantivy, in `<data-dir>/search`, derived from the store.
//!
//! - **Words**: letters and digits, lower-cased and folded to ASCII (`Crème` is `creme`), from
//!   the name (weighted double), brand, description, sku, reference and EAN. Every word of a
//!   query must match; the last one also matches as a prefix (from two characters on). Query
//!   text is only ever split into words: quotes, colons or brackets are separators, never syntax.
//! - **Written after the store**: each product write, once durable, names the products it
//!   changed; one indexer thread reads their current records (or their absence) and commits
//!   the index: at once when writes are rare, at most once a second while they stream in, and
//!   at once whenever a search waits for them. It may read a newer write of the same product
//!   that is not durable yet; a crash that loses it leaves a product changed moments ago, which
//!   the catch-up reads again. A search first waits (at most [`FRESHNESS_WAIT`]) until every
//!   write acknowledged before it is in the index, waking the indexer: a client finds what it
//!   has just written.
//! - **Caught up at start**: each commit records when its batch began. At start, every product
//!   changed or deleted since then (less [`CATCH_UP_MARGIN`], for writes whose transaction was
//!   still running) is indexed again from the store: a crash between a store commit and the
//!   index commit loses no hit and invents none. An index that is missing, from another
//!   schema, or unreadable is rebuilt from the store (`pixee-pim reindex` does the same).
use crate::clock::SharedClock;
use crate::domain::{ProductId, hex};
use crate::store::{Namespace, ProductRecord, Store, StoreError, keys};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, Occur, Query, TermQuery, TermSetQuery,
};
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use time::OffsetDateTime;

/// The index's directory inside the data dir.
pub const INDEX_DIR: &str = "search";
/// Bumped whenever the schema or the analysis changes: an index of another version is rebuilt.
const FORMAT: u32 = 1;
/// At start, products changed this long before the last commit's batch began are indexed
/// again: a write reads the clock before its transaction commits and tells the indexer after.
pub const CATCH_UP_MARGIN: Duration = Duration::from_secs(60);
/// The longest a search waits for the writes acknowledged before it to reach the index.
pub const FRESHNESS_WAIT: Duration = Duration::from_secs(2);
/// Longer search text is refused (422): no product description needs a longer query, and each
/// word costs a lookup.
pub const MAX_SEARCH_CHARS: usize = 200;
/// Words after this many are ignored (the query already matches only products with all of them).
const MAX_WORDS: usize = 16;
/// Words longer than this are not indexed (and dropped from queries the same way).
const MAX_WORD_BYTES: usize = 100;
/// The indexer's memory budget while serving (tantivy's minimum is 15 MB per thread), and
/// while rebuilding, when it is the only work of the process.
const SERVING_HEAP: usize = 24_000_000;
const REBUILD_HEAP: usize = 128_000_000;
/// While writes stream in and no search waits for them, the index commits at most this often
/// (each commit syncs files and writes a segment); a search that waits wakes the indexer.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Most longer words a prefix stands for (per field): a two-letter prefix in a large catalog
/// matches the first ones in alphabetical order.
const MAX_EXPANSIONS: usize = 256;
/// Up to this many, a prefix's words are matched one posting list each (lazily); beyond, as a set.
const LAZY_EXPANSIONS: usize = 16;
/// Most product changes applied in one index commit.
const MAX_BATCH: usize = 20_000;
const ANALYZER: &str = "folded";

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory: {0}")]
    Directory(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SearchError> for crate::error::Error {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Store(e) => e.into(),
            other => crate::error::Error::internal(other),
        }
    }
}

pub type SearchResult<T> = Result<T, SearchError>;

/// What each commit records about itself.
#[derive(Serialize, Deserialize)]
struct Payload {
    format: u32,
    /// The store changes from before this time (less the margin) are all in the index.
    through_nanos: i128,
    /// Nothing else wrote to the store while this commit's changes were read (a rebuild or the
    /// catch-up at open): the changes from before `through` are all in, with no margin.
    #[serde(default)]
    quiet: bool,
}

impl Payload {
    /// Where the next catch-up starts.
    fn catch_up_from(&self) -> OffsetDateTime {
        let through = OffsetDateTime::from_unix_timestamp_nanos(self.through_nanos)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        if self.quiet {
            through
        } else {
            through - CATCH_UP_MARGIN
        }
    }
}

#[derive(Clone, Copy)]
struct Fields {
    /// The product id (simple hex), for replacing and deleting its document.
    id: Field,
    id_hi: Field,
    id_lo: Field,
    /// The namespace key (hex): every query is confined to one.
    ns: Field,
    name: Field,
    body: Field,
    /// A checksum of what was indexed, so `check` can tell a stale document.
    digest: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        id: b.add_text_field("id", STRING),
        id_hi: b.add_u64_field("id_hi", FAST),
        id_lo: b.add_u64_field("id_lo", FAST),
        ns: b.add_text_field("ns", STRING),
        name: b.add_text_field("name", words.clone()),
        body: b.add_text_field("body", words),
        digest: b.add_u64_field("digest", FAST),
    };
    (b.build(), fields)
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_WORD_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The words of `text` as the index holds them.
fn words(text: &str) -> Vec<String> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

fn ns_key(ns: Namespace) -> String {
    hex(&keys::namespace(ns))
}

fn body(p: &ProductRecord) -> String {
    [
        p.brand.as_deref(),
        p.description.as_deref(),
        p.sku.as_deref(),
        p.reference.as_deref(),
        Some(p.ean.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("\n")
}

fn digest(ns: Namespace, p: &ProductRecord) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&keys::namespace(ns));
    h.update(p.name.as_bytes());
    h.update(&[0]);
    h.update(body(p).as_bytes());
    u64::from(h.finalize())
}

fn id_parts(id: ProductId) -> (u64, u64) {
    let n = id.0.as_u128();
    ((n >> 64) as u64, n as u64)
}

/// What the indexer is sent.
enum Message {
    /// Look at this product again.
    Changed(Namespace, ProductId),
    /// A search waits for the changes sent so far: commit them now.
    Urgent,
    Stop,
}

/// What `check` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Products the index holds correctly.
    pub indexed: u64,
    /// Products of the store the index lacks.
    pub missing: u64,
    /// Products whose document says something else than the store.
    pub stale: u64,
    /// Documents of products the store does not have.
    pub extra: u64,
    /// Products changed since the index's last commit: the next start indexes them again.
    pub pending: u64,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.stale == 0 && self.extra == 0
    }
}

/// What opening the index had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Built from the store (no usable index was there): this many products.
    Rebuilt(u64),
    /// Caught up: this many changed products were looked at again.
    CaughtUp(u64),
}

struct Inner {
    reader: IndexReader,
    fields: Fields,
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    /// Changes sent to the indexer, and changes it has committed (both count messages).
    sent: AtomicU64,
    committed: tokio::sync::watch::Sender<u64>,
    /// The indexer's last commit failed (logged; it retries): searches stop waiting for it.
    failing: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
}

/// The search index, shared by every worker. Cloning shares it.
#[derive(Clone)]
pub struct SearchIndex {
    inner: Arc<Inner>,
}

fn open_index(dir: &Path) -> SearchResult<Index> {
    std::fs::create_dir_all(dir)
        .map_err(|e| SearchError::Directory(format!("cannot create {}: {e}", dir.display())))?;
    let (schema, _) = schema();
    let directory = MmapDirectory::open(dir).map_err(|e| SearchError::Directory(e.to_string()))?;
    let index = Index::open_or_create(directory, schema)?;
    index.tokenizers().register(ANALYZER, analyzer());
    Ok(index)
}

/// How long [`take_writer`] waits for a busy writer lock before it gives up.
const WRITER_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The index's one writer, with the lock file that goes with it. The data dir's own lock
/// already keeps every other pixee-pim process out, so a busy lock here is passing: the
/// writer of the rebuild or catch-up that ran just before has closed its lock file, but a
/// child process being started at that instant (by anything in this process) still holds a
/// copy of the descriptor until it executes its program. Wait that out, briefly and boundedly,
/// instead of failing the start.
fn take_writer(index: &Index, heap: usize) -> SearchResult<IndexWriter> {
    take_writer_within(index, heap, WRITER_LOCK_PATIENCE)
}

fn take_writer_within(
    index: &Index,
    heap: usize,
    patience: std::time::Duration,
) -> SearchResult<IndexWriter> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match index.writer_with_num_threads(1, heap) {
            Err(tantivy::TantivyError::LockFailure(
                tantivy::directory::error::LockError::LockBusy,
                _,
            )) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

fn payload(index: &Index) -> Option<Payload> {
    index
        .load_metas()
        .ok()?
        .payload
        .and_then(|p| serde_json::from_str::<Payload>(&p).ok())
        .filter(|p| p.format == FORMAT)
}

fn commit(writer: &mut IndexWriter, through: OffsetDateTime, quiet: bool) -> SearchResult<()> {
    let payload = serde_json::to_string(&Payload {
        format: FORMAT,
        through_nanos: through.unix_timestamp_nanos(),
        quiet,
    })
    .map_err(|e| SearchError::Directory(e.to_string()))?;
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&payload);
    prepared.commit()?;
    Ok(())
}

/// The index directory of a data dir.
pub fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(INDEX_DIR)
}

/// Opens the index, removing it first when it cannot be opened as this version's index.
fn open_or_reset(dir: &Path) -> SearchResult<(Index, Option<Payload>)> {
    match open_index(dir) {
        Ok(index) => {
            let payload = payload(&index);
            if payload.is_some() {
                return Ok((index, payload));
            }
            // Another format, or never committed: start from an empty directory.
            drop(index);
        }
        Err(e) => tracing::warn!(error = %e, "the search index cannot be opened; rebuilding it"),
    }
    remove(dir)?;
    Ok((open_index(dir)?, None))
}

/// Deletes the index (a restore does, so the next start rebuilds it from the restored store).
pub fn remove(dir: &Path) -> SearchResult<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SearchError::Directory(format!(
            "cannot remove {}: {e}",
            dir.display()
        ))),
    }
}

/// Builds the index from scratch from every product of the store; returns how many it holds.
/// `progress` is called every 10 000 products with the count so far.
pub fn rebuild(
    dir: &Path,
    store: &Store,
    clock: &SharedClock,
    mut progress: impl FnMut(u64),
) -> SearchResult<u64> {
    remove(dir)?;
    let index = open_index(dir)?;
    let mut writer = take_writer(&index, REBUILD_HEAP)?;
    let started = clock.now();
    let n = fill(&mut writer, store, &mut progress)?;
    store.flush_blocking()?;
    // The store is not written while it is rebuilt (the CLI holds it alone; at open, nothing
    // serves yet): the next start catches up from `started` exactly.
    commit(&mut writer, started, true)?;
    // One segment: each query's fixed costs (term lookups, prefix walks) are paid once, not
    // once per segment the writer's budget cut the catalog into. The merge keeps the payload.
    let segments = index.searchable_segment_ids()?;
    if segments.len() > 1 {
        writer.merge(&segments).wait()?;
    }
    writer.wait_merging_threads()?;
    Ok(n)
}

fn fill(
    writer: &mut IndexWriter,
    store: &Store,
    progress: &mut impl FnMut(u64),
) -> SearchResult<u64> {
    let (_, fields) = schema();
    let mut n = 0u64;
    for item in store.all_products() {
        let (ns, p) = item?;
        writer.add_document(document(&fields, ns, &p))?;
        n += 1;
        if n.is_multiple_of(10_000) {
            progress(n);
        }
    }
    Ok(n)
}

fn document(f: &Fields, ns: Namespace, p: &ProductRecord) -> TantivyDocument {
    let (hi, lo) = id_parts(p.id);
    let mut d = TantivyDocument::default();
    d.add_text(f.id, p.id.0.simple().to_string());
    d.add_u64(f.id_hi, hi);
    d.add_u64(f.id_lo, lo);
    d.add_text(f.ns, ns_key(ns));
    d.add_text(f.name, &p.name);
    d.add_text(f.body, body(p));
    d.add_u64(f.digest, digest(ns, p));
    d
}

/// Reads each changed product again and replaces (or drops) its document. Returns how many
/// distinct products it looked at.
fn apply(
    writer: &mut IndexWriter,
    f: &Fields,
    store: &Store,
    changes: &[(Namespace, ProductId)],
) -> SearchResult<usize> {
    let mut seen = HashSet::with_capacity(changes.len());
    for &(ns, id) in changes {
        if !seen.insert(id) {
            continue;
        }
        writer.delete_term(Term::from_field_text(f.id, &id.0.simple().to_string()));
        if let Some(p) = store.product(ns, id)? {
            writer.add_document(document(f, ns, &p))?;
        }
    }
    Ok(seen.len())
}

impl SearchIndex {
    /// Opens the index in `dir` for serving: rebuilds it when there is none (or none usable),
    /// otherwise catches it up with the store; then starts the indexer thread.
    pub fn open(
        dir: &Path,
        store: Store,
        clock: SharedClock,
    ) -> SearchResult<(SearchIndex, Opened)> {
        let opened_at = clock.now();
        let (index, payload) = open_or_reset(dir)?;
        let (_, fields) = schema();
        let opened = match payload {
            None => {
                drop(index);
                let n = rebuild(dir, &store, &clock, |_| {})?;
                Opened::Rebuilt(n)
            }
            Some(p) => {
                drop(index);
                Opened::CaughtUp(catch_up(dir, &store, &clock, p.catch_up_from())?)
            }
        };
        let index = open_index(dir)?;
        let writer = take_writer(&index, SERVING_HEAP)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let (sender, receiver) = mpsc::channel();
        let inner = Arc::new(Inner {
            reader,
            fields,
            sender: Mutex::new(Some(sender)),
            sent: AtomicU64::new(0),
            committed: tokio::sync::watch::Sender::new(0),
            failing: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
            dir: dir.to_owned(),
        });
        let worker = Indexer {
            failing: inner.failing.clone(),
            stopping: inner.stopping.clone(),
            through: opened_at,
            writer,
            store,
            clock,
            fields,
            reader: inner.reader.clone(),
            committed: inner.committed.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("search-indexer".into())
            .spawn(move || worker.run(receiver))
            .map_err(|e| SearchError::Directory(format!("cannot start the indexer: {e}")))?;
        if let Ok(mut slot) = inner.thread.lock() {
            *slot = Some(thread);
        }
        Ok((SearchIndex { inner }, opened))
    }

    /// Tells the indexer that these products changed (or went). Call after the store commit.
    pub fn changed(&self, ns: Namespace, ids: impl IntoIterator<Item = ProductId>) {
        let Ok(guard) = self.inner.sender.lock() else {
            return;
        };
        let Some(sender) = guard.as_ref() else {
            return;
        };
        for id in ids {
            if sender.send(Message::Changed(ns, id)).is_ok() {
                self.inner.sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// How many changes the index has committed: moves with every index commit.
    pub fn generation(&self) -> u64 {
        *self.inner.committed.borrow()
    }

    /// Waits until every change sent before the call is committed to the index, at most
    /// [`FRESHNESS_WAIT`] (then the search answers from what the index has).
    pub async fn fresh(&self) {
        if self.inner.failing.load(Ordering::SeqCst) {
            return;
        }
        let target = self.inner.sent.load(Ordering::SeqCst);
        let mut rx = self.inner.committed.subscribe();
        if *rx.borrow_and_update() >= target {
            return;
        }
        if let Ok(sender) = self.inner.sender.lock()
            && let Some(sender) = sender.as_ref()
        {
            let _ = sender.send(Message::Urgent);
        }
        if tokio::time::timeout(FRESHNESS_WAIT, rx.wait_for(|c| *c >= target))
            .await
            .is_err()
        {
            tracing::warn!("search index behind the store: answering from what it has");
        }
    }

    /// The query for `text` in `ns`; `None` when the text has no word (it matches nothing).
    fn query(
        &self,
        searcher: &tantivy::Searcher,
        ns: Namespace,
        text: &str,
    ) -> SearchResult<Option<BooleanQuery>> {
        let f = &self.inner.fields;
        let mut words = words(text);
        words.truncate(MAX_WORDS);
        let Some(last) = words.len().checked_sub(1) else {
            return Ok(None);
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(words.len() + 1);
        let ns_term = Term::from_field_text(f.ns, &ns_key(ns));
        // Most indexes hold one tenant's live catalog: when every document (deleted ones
        // included) is of this namespace, the clause filters nothing and would only make each
        // candidate seek through a posting list as long as the catalog.
        let documents: u64 = searcher
            .segment_readers()
            .iter()
            .map(|s| u64::from(s.max_doc()))
            .sum();
        if searcher.doc_freq(&ns_term)? != documents {
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(TermQuery::new(ns_term, IndexRecordOption::Basic)),
                    0.0,
                )),
            ));
        }
        for (i, word) in words.iter().enumerate() {
            // Alternatives of a field that holds no such word are left out: each one kept
            // wraps the word's postings in a union the other words must seek through.
            let mut either: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(4);
            for (field, boost) in [(f.name, 2.0), (f.body, 1.0)] {
                let term = Term::from_field_text(field, word);
                if searcher.doc_freq(&term)? == 0 {
                    continue;
                }
                let q = TermQuery::new(term, IndexRecordOption::WithFreqs);
                either.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
            if i == last && word.chars().count() >= 2 {
                for (field, score) in [(f.name, 0.5), (f.body, 0.25)] {
                    let mut words = expand(searcher, field, word)?;
                    // A few words stay lazy term walks that the other words' postings can
                    // skip through; many become one set (a bitset of their documents).
                    let prefix: Box<dyn Query> = match words.len() {
                        0 => continue,
                        1 => Box::new(TermQuery::new(words.remove(0), IndexRecordOption::Basic)),
                        2..=LAZY_EXPANSIONS => Box::new(BooleanQuery::new(
                            words
                                .into_iter()
                                .map(|t| {
                                    let q: Box<dyn Query> =
                                        Box::new(TermQuery::new(t, IndexRecordOption::Basic));
                                    (Occur::Should, q)
                                })
                                .collect(),
                        )),
                        _ => Box::new(TermSetQuery::new(words)),
                    };
                    either.push((Occur::Should, Box::new(ConstScoreQuery::new(prefix, score))));
                }
            }
            // A word no document holds (nor, for the last, starts): nothing matches them all.
            let clause: Box<dyn Query> = match either.len() {
                0 => return Ok(None),
                1 => either.remove(0).1,
                _ => Box::new(BooleanQuery::new(either)),
            };
            clauses.push((Occur::Must, clause));
        }
        Ok(Some(BooleanQuery::new(clauses)))
    }

    /// One page of the products matching `text` in `ns`, best first, and how many match.
    pub fn page(
        &self,
        ns: Namespace,
        text: &str,
        offset: usize,
        limit: usize,
    ) -> SearchResult<(Vec<ProductId>, u64)> {
        let searcher = self.inner.reader.searcher();
        let Some(query) = self.query(&searcher, ns, text)? else {
            return Ok((Vec::new(), 0));
        };
        // The collector reserves room for offset + limit hits: never more than there are.
        let docs = usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX);
        if limit == 0 || offset >= docs {
            return Ok((Vec::new(), searcher.search(&query, &Count)? as u64));
        }
        let (top, total) = searcher.search(
            &query,
            &(
                TopDocs::with_limit(limit.min(docs - offset))
                    .and_offset(offset)
                    .order_by_score(),
                Count,
            ),
        )?;
        let mut columns = HashMap::new();
        let mut ids = Vec::with_capacity(top.len());
        for (_, a) in top {
            let (hi, lo) = match columns.entry(a.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let ff = searcher.segment_reader(a.segment_ord).fast_fields();
                    e.insert((ff.u64("id_hi")?, ff.u64("id_lo")?))
                }
            };
            if let (Some(hi), Some(lo)) = (hi.first(a.doc_id), lo.first(a.doc_id)) {
                let id = (u128::from(hi) << 64) | u128::from(lo);
                ids.push(ProductId(uuid::Uuid::from_u128(id)));
            }
        }
        Ok((ids, total as u64))
    }

    /// Every product matching `text` in `ns`, best first (for searches combined with other
    /// filters: the cost grows with the matches, not with the catalog).
    pub fn all(&self, ns: Namespace, text: &str) -> SearchResult<Vec<ProductId>> {
        let searcher = self.inner.reader.searcher();
        let Some(query) = self.query(&searcher, ns, text)? else {
            return Ok(Vec::new());
        };
        let hits = searcher.search(&query, &AllHits)?;
        Ok(hits
            .into_iter()
            .map(|(_, id)| ProductId(uuid::Uuid::from_u128(id)))
            .collect())
    }

    /// Whether the indexer thread is running and its last commit succeeded.
    /// Bytes the index's files take on disk (its directory holds no subdirectories).
    pub fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.inner.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    }

    pub fn is_healthy(&self) -> bool {
        let running = self
            .inner
            .thread
            .lock()
            .map(|t| t.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false);
        running && !self.inner.failing.load(Ordering::SeqCst)
    }

    /// Stops the indexer after it has committed what it was sent (or given up on a commit
    /// that fails: the next start catches up).
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        if let Ok(mut sender) = self.inner.sender.lock()
            && let Some(s) = sender.take()
        {
            let _ = s.send(Message::Stop);
        }
        let thread = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(sender) = self.sender.get_mut()
            && let Some(s) = sender.take()
        {
            let _ = s.send(Message::Stop);
        }
        if let Some(t) = self.thread.get_mut().ok().and_then(Option::take) {
            let _ = t.join();
        }
    }
}

/// The words of `field` that start with `prefix` (itself included), from each segment's term
/// dictionary (a range walk, no automaton to build), at most [`MAX_EXPANSIONS`] of them.
fn expand(searcher: &tantivy::Searcher, field: Field, prefix: &str) -> SearchResult<Vec<Term>> {
    let start = prefix.as_bytes();
    let end = keys::prefix_end(start);
    let mut found = std::collections::BTreeSet::new();
    for segment in searcher.segment_readers() {
        let inverted = segment.inverted_index(field)?;
        let mut range = inverted.terms().range().ge(start);
        if let Some(end) = &end {
            range = range.lt(end);
        }
        let mut stream = range.into_stream().map_err(tantivy::TantivyError::from)?;
        while found.len() < MAX_EXPANSIONS && stream.advance() {
            found.insert(stream.key().to_vec());
        }
    }
    Ok(found
        .into_iter()
        .filter_map(|w| String::from_utf8(w).ok())
        .map(|w| Term::from_field_text(field, &w))
        .collect())
}

/// Indexes every product changed or deleted since `since` again; returns how many.
fn catch_up(
    dir: &Path,
    store: &Store,
    clock: &SharedClock,
    since: OffsetDateTime,
) -> SearchResult<u64> {
    let index = open_index(dir)?;
    let (_, fields) = schema();
    let started = clock.now();
    let changes = store.products_changed_since(since)?;
    let mut writer = take_writer(&index, SERVING_HEAP)?;
    // A crash can leave files of a commit that never happened (a delete file, a segment); the
    // next commit may want the same names. Remove what no commit refers to first.
    writer.garbage_collect_files().wait()?;
    let n = apply(&mut writer, &fields, store, &changes)?;
    // Runs at open, before anything serves: nothing else writes meanwhile.
    commit(&mut writer, started, true)?;
    writer.wait_merging_threads()?;
    Ok(n as u64)
}

/// Compares the index with the store (the server must be stopped). Products changed since
/// the last index commit (what the next start catches up) are counted as pending, not as
/// disagreements; an index that was never committed, or of another format, is all pending.
pub fn verify(dir: &Path, store: &Store) -> SearchResult<VerifyReport> {
    let mut report = VerifyReport::default();
    let all_pending = |mut report: VerifyReport| -> SearchResult<VerifyReport> {
        for item in store.all_products() {
            item?;
            report.pending += 1;
        }
        Ok(report)
    };
    // An index of another format, or one never committed, is rebuilt by the next start.
    let Ok(index) = open_index(dir) else {
        return all_pending(report);
    };
    let Some(payload) = payload(&index) else {
        return all_pending(report);
    };
    let since = payload.catch_up_from();
    let pending: HashSet<u128> = store
        .products_changed_since(since)?
        .into_iter()
        .map(|(_, id)| id.0.as_u128())
        .collect();
    let reader: IndexReader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let searcher = reader.searcher();
    let mut docs: HashMap<u128, (u64, u32)> = HashMap::new();
    for segment in searcher.segment_readers() {
        let ff = segment.fast_fields();
        let (hi, lo, dg) = (ff.u64("id_hi")?, ff.u64("id_lo")?, ff.u64("digest")?);
        for doc in segment.doc_ids_alive() {
            if let (Some(h), Some(l), Some(d)) = (hi.first(doc), lo.first(doc), dg.first(doc)) {
                let entry = docs
                    .entry((u128::from(h) << 64) | u128::from(l))
                    .or_insert((d, 0));
                entry.1 += 1;
            }
        }
    }
    for item in store.all_products() {
        let (ns, p) = item?;
        let id = p.id.0.as_u128();
        let found = docs.remove(&id);
        if pending.contains(&id) {
            report.pending += 1;
            continue;
        }
        match found {
            None => report.missing += 1,
            Some((d, copies)) if d != digest(ns, &p) || copies != 1 => report.stale += 1,
            Some(_) => report.indexed += 1,
        }
    }
    report.extra = docs.keys().filter(|id| !pending.contains(id)).count() as u64;
    Ok(report)
}

/// The indexer thread: batches the changes it is sent, applies them, makes the store durable,
/// commits the index and publishes how far it got.
struct Indexer {
    failing: Arc<AtomicBool>,
    /// Set by `shutdown`: a failing commit is then given up (the next start catches up).
    stopping: Arc<AtomicBool>,
    writer: IndexWriter,
    store: Store,
    clock: SharedClock,
    fields: Fields,
    reader: IndexReader,
    committed: tokio::sync::watch::Sender<u64>,
    /// The start of the last batch that emptied the queue: every change sent before it is in
    /// the index once that batch is committed.
    through: OffsetDateTime,
}

impl Indexer {
    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        let mut done: u64 = 0;
        let mut stop = false;
        let mut last_commit = Instant::now()
            .checked_sub(COMMIT_INTERVAL)
            .unwrap_or_else(Instant::now);
        while !stop {
            let Ok(first) = receiver.recv() else {
                break;
            };
            let mut batch = Vec::new();
            let mut urgent = false;
            /// Files a message; true when it says to stop.
            fn take(
                message: Message,
                batch: &mut Vec<(Namespace, ProductId)>,
                urgent: &mut bool,
            ) -> bool {
                match message {
                    Message::Changed(ns, id) => {
                        batch.push((ns, id));
                        false
                    }
                    Message::Urgent => {
                        *urgent = true;
                        false
                    }
                    Message::Stop => true,
                }
            }
            stop = take(first, &mut batch, &mut urgent);
            // Under a stream of writes, changes gather until a second after the last commit,
            // unless a search waits for them (or the batch is full, or the server stops).
            while !stop && !urgent && batch.len() < MAX_BATCH {
                let Some(wait) = COMMIT_INTERVAL.checked_sub(last_commit.elapsed()) else {
                    break;
                };
                match receiver.recv_timeout(wait) {
                    Ok(message) => stop = take(message, &mut batch, &mut urgent),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => stop = true,
                }
            }
            // Every change sent before this moment is in the batch once the queue is drained.
            let started = self.clock.now();
            let mut cut = false;
            while !stop {
                if batch.len() >= MAX_BATCH {
                    cut = true;
                    break;
                }
                match receiver.try_recv() {
                    Ok(message) => stop = take(message, &mut batch, &mut urgent),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            last_commit = Instant::now();
            // A batch that left changes queued does not move the catch-up point: those changes
            // may be older than its start.
            let through = if cut { self.through } else { started };
            let mut delay = Duration::from_millis(50);
            loop {
                let t = Instant::now();
                match self.commit_batch(&batch, through) {
                    Ok(()) => {
                        self.failing.store(false, Ordering::SeqCst);
                        self.through = through;
                        tracing::debug!(
                            changes = batch.len(),
                            ms = t.elapsed().as_millis() as u64,
                            "search index commit"
                        );
                        break;
                    }
                    Err(e) => {
                        self.failing.store(true, Ordering::SeqCst);
                        if let Err(r) = self.writer.rollback() {
                            tracing::error!(error = %e, rollback = %r, "search index commit failed; the indexer stops until the next start");
                            return;
                        }
                        if stop || self.stopping.load(Ordering::SeqCst) {
                            tracing::error!(error = %e, "search index commit failed at shutdown; the next start catches up");
                            return;
                        }
                        tracing::error!(error = %e, "search index commit failed; retrying");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            done += batch.len() as u64;
            self.committed.send_replace(done);
        }
        let _ = self.writer.wait_merging_threads();
    }

    fn commit_batch(
        &mut self,
        batch: &[(Namespace, ProductId)],
        through: OffsetDateTime,
    ) -> SearchResult<()> {
        // Every change sent was made durable before it was sent (`Catalog::made_durable`): no
        // flush of the store here, where it would hold sled's lock a second time per write.
        apply(&mut self.writer, &self.fields, &self.store, batch)?;
        commit(&mut self.writer, through, false)?;
        self.reader.reload()?;
        Ok(())
    }
}

/// Every hit with its score and product id (read from the id columns as hits come), best
/// first: no room reserved in advance, so a common word costs its hits and no more.
struct AllHits;

struct SegmentHits {
    hi: tantivy::columnar::Column<u64>,
    lo: tantivy::columnar::Column<u64>,
    hits: Vec<(tantivy::Score, u128)>,
}

impl tantivy::collector::Collector for AllHits {
    type Fruit = Vec<(tantivy::Score, u128)>;
    type Child = SegmentHits;

    fn for_segment(
        &self,
        _segment: tantivy::SegmentOrdinal,
        reader: &tantivy::SegmentReader,
    ) -> tantivy::Result<SegmentHits> {
        let ff = reader.fast_fields();
        Ok(SegmentHits {
            hi: ff.u64("id_hi")?,
            lo: ff.u64("id_lo")?,
            hits: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(
        &self,
        fruits: Vec<Vec<(tantivy::Score, u128)>>,
    ) -> tantivy::Result<Self::Fruit> {
        let mut all: Vec<_> = fruits.into_iter().flatten().collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        Ok(all)
    }
}

impl tantivy::collector::SegmentCollector for SegmentHits {
    type Fruit = Vec<(tantivy::Score, u128)>;

    fn collect(&mut self, doc: tantivy::DocId, score: tantivy::Score) {
        if let (Some(hi), Some(lo)) = (self.hi.first(doc), self.lo.first(doc)) {
            self.hits
                .push((score, (u128::from(hi) << 64) | u128::from(lo)));
        }
    }

    fn harvest(self) -> Self::Fruit {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn words_are_folded_and_split_on_anything_but_letters_and_digits() {
        assert_eq!(words("Crème BRÛLÉE"), ["creme", "brulee"]);
        assert_eq!(words("\"a:b\" (c) [d] \\e"), ["a", "b", "c", "d", "e"]);
        assert_eq!(words("::  \"\" "), Vec::<String>::new());
        assert_eq!(words("EAN 4006381333931"), ["ean", "4006381333931"]);
    }

    #[test]
    fn the_writer_lock_is_waited_for_while_it_is_passing_and_refused_when_it_stays_taken() {
        let dir = tempfile::tempdir().unwrap();
        let index = open_index(dir.path()).unwrap();
        // Held by another writer (as a child process being spawned holds a copy of a closed
        // lock descriptor) for a moment: the writer is taken once it is free.
        let held = take_writer(&index, SERVING_HEAP).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let started = std::time::Instant::now();
        let writer = take_writer(&index, SERVING_HEAP).unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        release.join().unwrap();
        // Held for good: refused once the patience is spent, naming the busy lock.
        let refused =
            take_writer_within(&index, SERVING_HEAP, std::time::Duration::from_millis(100))
                .map(|_| ())
                .unwrap_err();
        assert!(format!("{refused}").contains("LockBusy"), "{refused}");
        drop(writer);
    }

    fn fixture() -> (
        tempfile::TempDir,
        Store,
        Arc<crate::clock::ManualClock>,
        Namespace,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let clock = Arc::new(crate::clock::ManualClock::new(start));
        let ns = Namespace {
            tenant: crate::domain::TenantId::generate(),
            environment: crate::domain::Environment::Live,
        };
        (dir, store, clock, ns)
    }

    fn product(n: u64, name: &str, at: OffsetDateTime) -> ProductRecord {
        let mut p = crate::catalog::products::blank(ProductId::generate(), at);
        p.ean = crate::domain::Ean::from_body(n).as_str().to_owned();
        p.name = name.into();
        p
    }

    #[test]
    fn check_tells_missing_stale_and_extra_documents_from_pending_ones() {
        let (dir, store, clock, ns) = fixture();
        let shared: SharedClock = clock.clone();
        let index = dir.path().join("search");
        let old = clock.now() - time::Duration::hours(2);
        let a = product(1, "Alpha", old);
        let b = product(2, "Beta", old);
        store.insert_product(ns, &a).unwrap();
        store.insert_product(ns, &b).unwrap();
        assert_eq!(rebuild(&index, &store, &shared, |_| {}).unwrap(), 2);
        let clean = verify(&index, &store).unwrap();
        assert_eq!((clean.indexed, clean.is_clean()), (2, true));
        // Old changes the index never saw: a start would not catch these up.
        store.insert_product(ns, &product(3, "Gamma", old)).unwrap();
        store
            .update_product(ns, a.id, |p| {
                Ok(ProductRecord {
                    name: "Renamed".into(),
                    ..p.clone()
                })
            })
            .unwrap();
        store.delete_products(ns, &[b.id], old).unwrap();
        // A recent change: the next start catches it up.
        store
            .insert_product(ns, &product(4, "Delta", clock.now()))
            .unwrap();
        let found = verify(&index, &store).unwrap();
        assert_eq!(
            (
                found.indexed,
                found.missing,
                found.stale,
                found.extra,
                found.pending
            ),
            (0, 1, 1, 1, 1)
        );
        assert_eq!(rebuild(&index, &store, &shared, |_| {}).unwrap(), 3);
        assert!(verify(&index, &store).unwrap().is_clean());
    }

    #[test]
    fn opening_catches_up_recent_changes_and_rebuilds_a_missing_index() {
        let (dir, store, clock, ns) = fixture();
        let shared: SharedClock = clock.clone();
        let index = dir.path().join("search");
        let old = clock.now() - time::Duration::hours(2);
        store
            .insert_product(ns, &product(1, "Walrus tusk", old))
            .unwrap();
        let (search, opened) = SearchIndex::open(&index, store.clone(), shared.clone()).unwrap();
        assert_eq!(opened, Opened::Rebuilt(1));
        search.shutdown();
        drop(search);
        clock.advance(time::Duration::seconds(10));
        // Written while no indexer ran (as between a store commit and a crash).
        store
            .insert_product(ns, &product(2, "Walrus hide", clock.now()))
            .unwrap();
        clock.advance(time::Duration::seconds(1));
        let (search, opened) = SearchIndex::open(&index, store.clone(), shared.clone()).unwrap();
        assert_eq!(opened, Opened::CaughtUp(1));
        let (ids, total) = search.page(ns, "walrus", 0, 10).unwrap();
        assert_eq!((ids.len(), total), (2, 2));
        let other = Namespace {
            environment: crate::domain::Environment::Test,
            ..ns
        };
        assert_eq!(search.page(other, "walrus", 0, 10).unwrap().1, 0);
        search.shutdown();
        drop(search);
        // The catch-up ran before anything served: the next start has nothing to look at
        // again (no margin after a quiet commit).
        let (search, opened) = SearchIndex::open(&index, store.clone(), shared).unwrap();
        assert_eq!(opened, Opened::CaughtUp(0));
        search.shutdown();
    }
}
