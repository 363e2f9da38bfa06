//! Imports and exports as background jobs (SPEC §8).
//!
//! - **The runner** is a bounded pool of threads (`--job-workers`, default 1), off the async
//!   workers, fed by a queue. Job state lives in the store; at start every job found
//!   `pending`/`analyzing` is analysed again and every job found `processing` resumes.
//! - **An import** is analysed (encoding, delimiter, columns, rows, a proposed mapping), waits
//!   for a mapping if `ean` and `name` are not both mapped, then runs in batches of
//!   [`BATCH`] rows. Each batch's upserts, the job's counters and the batch's log commit in one
//!   transaction (`catalog/import.rs`), so a job killed at any moment resumes after its last
//!   committed batch with exact counts and no duplicate product.
//! - **An export** streams the matching products from the store's indexes to a file under the
//!   data dir, then makes it durable and renames it into place; files expire after
//!   `--export-retention` (24 h) and the sweep removes them.
//! - Files live under `<data dir>/jobs/`: `uploads/` (removed once the import ends),
//!   `exports/`, and `tmp/` (the XLSX writer's scratch).
pub mod export;
pub mod mapping;
pub mod read;

use crate::catalog::Catalog;
use crate::catalog::import::ImportRow;
use crate::clock::SharedClock;
use crate::domain::Invalid;
use crate::error::{Error, ErrorKind};
use crate::store::{
    ExportSpec, ImportSpec, JobKind, JobRecord, JobStatus, LogLevel, LogRecord, Namespace, Store,
    StoreError, TemplateRecord,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// The directory of ownership marks: on a cluster node, a job runs (and resumes) only on the
/// node whose data dir holds its files, which is the node that accepted it.
const OWNED: &str = "owned";

/// Rows per import batch (one store transaction).
pub const BATCH: usize = 250;
/// Committed import batches are made durable (and sent to the search index) together, at
/// most this often.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// Largest upload (SPEC §3).
pub const MAX_UPLOAD: u64 = 50 << 20;
/// Exports check for a cancel (or a shutdown) every this many products.
const EXPORT_CHECK_EVERY: u64 = 1000;

/// How the runner is set up.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// `<data dir>/jobs`.
    pub dir: PathBuf,
    pub workers: usize,
    pub export_retention: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Task {
    Analyze(Namespace, Uuid),
    Process(Namespace, Uuid),
    Export(Namespace, Uuid),
}

#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    catalog: Catalog,
    clock: SharedClock,
    dir: PathBuf,
    export_retention: Duration,
    queue: Mutex<Option<mpsc::Sender<Task>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Set at shutdown: workers stop after the batch they are writing.
    stopping: AtomicBool,
}

/// An upload's form fields (SPEC §8).
#[derive(Debug, Clone, Default)]
pub struct ImportForm {
    pub supplier_id: Option<Uuid>,
    pub supplier_code: Option<String>,
    pub template_id: Option<Uuid>,
    pub auto_process: bool,
    pub skip_header_rows: u32,
    pub dry_run: bool,
}

/// What an export asks for, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    pub format: String,
    pub search: Option<String>,
    pub is_active: Option<bool>,
    pub supplier_id: Option<Uuid>,
    pub category_id: Option<Uuid>,
    pub updated_since: Option<OffsetDateTime>,
    pub include_fields: Vec<String>,
    pub exclude_fields: Vec<String>,
    pub utf8_bom: bool,
    pub pretty: bool,
    pub json_lines: bool,
    pub include_sheets: Vec<String>,
}

/// A finished export, ready to stream.
#[derive(Debug)]
pub struct Download {
    pub path: PathBuf,
    pub file_name: String,
    pub content_type: &'static str,
    pub size: u64,
}

/// Why a worker put a job down.
enum Halt {
    /// The job was cancelled or changed state under the worker.
    Cancelled,
    /// The server is stopping: the job resumes at the next start.
    Stopping,
    /// The job failed for this reason.
    Failed(String),
}

fn mkdir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn store_error(e: StoreError) -> Error {
    e.into()
}

impl Jobs {
    /// Opens the job directories, starts `workers` threads and queues every job a previous
    /// run left unfinished.
    pub fn start(
        store: Store,
        catalog: Catalog,
        clock: SharedClock,
        config: JobsConfig,
    ) -> Result<Jobs, String> {
        for sub in ["uploads", "exports", "tmp", OWNED] {
            mkdir(&config.dir.join(sub))?;
        }
        let (tx, rx) = mpsc::channel::<Task>();
        let jobs = Jobs {
            inner: Arc::new(Inner {
                store,
                catalog,
                clock,
                dir: config.dir,
                export_retention: config.export_retention,
                queue: Mutex::new(Some(tx)),
                workers: Mutex::new(Vec::new()),
                stopping: AtomicBool::new(false),
            }),
        };
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for n in 0..config.workers.max(1) {
            let worker = jobs.clone();
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pixee-job-{n}"))
                .spawn(move || worker.work(&rx))
                .map_err(|e| format!("cannot start a job worker: {e}"))?;
            handles.push(handle);
        }
        if let Ok(mut w) = jobs.inner.workers.lock() {
            *w = handles;
        }
        jobs.resume()
            .map_err(|e| format!("cannot read the jobs: {e}"))?;
        Ok(jobs)
    }

    /// Whether every worker thread is running.
    pub fn is_healthy(&self) -> bool {
        self.inner
            .workers
            .lock()
            .is_ok_and(|w| !w.is_empty() && w.iter().all(|h| !h.is_finished()))
    }

    /// How many jobs each state holds (every state listed, zeros included).
    pub fn counts_by_state(&self) -> Result<Vec<(&'static str, u64)>, Error> {
        let mut counts: Vec<(JobStatus, u64)> = JobStatus::ALL.iter().map(|&s| (s, 0)).collect();
        for (_, job) in self.inner.store.all_jobs()? {
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == job.status) {
                slot.1 += 1;
            }
        }
        Ok(counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect())
    }

    /// Stops the workers after the batch each is writing; unfinished jobs resume at the next
    /// start.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        if let Ok(mut q) = self.inner.queue.lock() {
            q.take();
        }
        let handles = match self.inner.workers.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => Vec::new(),
        };
        for h in handles {
            let _ = h.join();
        }
    }

    /// Marks `id` as this node's: its files are here (see [`OWNED`]).
    fn own(&self, id: Uuid) -> Result<(), Error> {
        std::fs::write(self.owned_path(id), b"").map_err(Error::internal)
    }

    fn owned_path(&self, id: Uuid) -> PathBuf {
        self.inner.dir.join(OWNED).join(id.simple().to_string())
    }

    /// Whether this process may run `id`: always with a store of its own; on a cluster node,
    /// only a job it accepted (another node holds the files of the others).
    fn runs_here(&self, id: Uuid) -> bool {
        !self.inner.store.is_cluster_node() || self.owned_path(id).exists()
    }

    /// The refusal of a request about a job whose files are on another node of the cluster.
    fn elsewhere() -> Error {
        Error::new(
            ErrorKind::Conflict,
            "this job was accepted by another node of the cluster, which holds its file: send \
             the requests about imports and exports to one node (docs/CLUSTER.md)",
        )
    }

    fn resume(&self) -> Result<(), StoreError> {
        for (ns, job) in self.inner.store.all_jobs()? {
            if !self.runs_here(job.id) {
                continue;
            }
            let task = match (job.kind, job.status) {
                (JobKind::Import, JobStatus::Pending | JobStatus::Analyzing) => {
                    Task::Analyze(ns, job.id)
                }
                (JobKind::Import, JobStatus::Processing) => Task::Process(ns, job.id),
                (JobKind::Export, JobStatus::Processing | JobStatus::Pending) => {
                    Task::Export(ns, job.id)
                }
                _ => continue,
            };
            tracing::info!(job = %job.id, status = job.status.as_str(), "resuming a job");
            self.enqueue(task);
        }
        Ok(())
    }

    fn enqueue(&self, task: Task) {
        if let Ok(q) = self.inner.queue.lock()
            && let Some(q) = q.as_ref()
        {
            let _ = q.send(task);
        }
    }

    fn work(&self, rx: &Mutex<mpsc::Receiver<Task>>) {
        loop {
            let task = match rx.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(task) = task else { return };
            if self.stopping() {
                return;
            }
            let (ns, id) = match task {
                Task::Analyze(ns, id) | Task::Process(ns, id) | Task::Export(ns, id) => (ns, id),
            };
            let started = std::time::Instant::now();
            let halt = match task {
                Task::Analyze(..) => self.analyze(ns, id),
                Task::Process(..) => self.process_rows(ns, id),
                Task::Export(..) => self.export(ns, id),
            };
            match halt {
                Ok(()) => tracing::info!(
                    job = %id,
                    ms = started.elapsed().as_millis() as u64,
                    "job step done"
                ),
                Err(Halt::Cancelled) => tracing::info!(job = %id, "job cancelled"),
                Err(Halt::Stopping) => {
                    tracing::info!(job = %id, "job paused for shutdown; it resumes at next start")
                }
                Err(Halt::Failed(reason)) => {
                    tracing::warn!(job = %id, reason = %reason, "job failed");
                    self.fail(ns, id, &reason);
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    fn upload_path(&self, id: Uuid, format: read::Format) -> PathBuf {
        self.inner
            .dir
            .join("uploads")
            .join(format!("{}.{}", id.simple(), format.as_str()))
    }

    fn export_path(&self, job: &JobRecord) -> PathBuf {
        self.inner.dir.join("exports").join(format!(
            "{}.{}",
            job.id.simple(),
            export_extension(job)
        ))
    }

    /// Where an upload is written while it arrives; [`Jobs::create_import`] moves it into
    /// place. The id is the job's.
    pub fn upload_target(&self) -> (Uuid, PathBuf) {
        let id = Uuid::now_v7();
        let path = self
            .inner
            .dir
            .join("uploads")
            .join(format!("{}.part", id.simple()));
        (id, path)
    }

    /// Records an uploaded file as a new import job and queues its analysis. The file at
    /// `part` is removed whatever the outcome, unless it becomes the job's.
    pub fn create_import(
        &self,
        ns: Namespace,
        id: Uuid,
        part: &Path,
        file_name: &str,
        form: ImportForm,
        created_by: String,
    ) -> Result<JobRecord, Error> {
        if let Err(e) = self.check_import(ns, &form) {
            let _ = std::fs::remove_file(part);
            return Err(e);
        }
        // The name's extension, else the file's first bytes.
        let format = read::Format::of_name(file_name).unwrap_or_else(|| read::Format::sniff(part));
        let size = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let path = self.upload_path(id, format);
        std::fs::rename(part, &path).map_err(Error::internal)?;
        let job = JobRecord {
            id,
            kind: JobKind::Import,
            status: JobStatus::Pending,
            format: format.as_str().to_owned(),
            file_name: safe_name(file_name),
            file_size: size,
            created_at: self.now(),
            started_at: None,
            finished_at: None,
            expires_at: None,
            total_rows: None,
            processed_rows: 0,
            successful_rows: 0,
            failed_rows: 0,
            created_rows: 0,
            updated_rows: 0,
            warnings: 0,
            logs: 0,
            error: None,
            error_code: None,
            created_by,
            import: ImportSpec {
                supplier_id: form.supplier_id,
                supplier_code: form.supplier_code,
                template_id: form.template_id,
                auto_process: form.auto_process,
                skip_header_rows: form.skip_header_rows,
                dry_run: form.dry_run,
                ..ImportSpec::default()
            },
            export: ExportSpec::default(),
        };
        if let Err(e) = self.own(id) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        if let Err(e) = self.inner.store.put_job(ns, &job) {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(self.owned_path(id));
            return Err(e.into());
        }
        self.inner.store.flush_blocking().map_err(store_error)?;
        self.enqueue(Task::Analyze(ns, id));
        Ok(job)
    }

    fn check_import(&self, ns: Namespace, form: &ImportForm) -> Result<(), Error> {
        let mut errors = Vec::new();
        if form.supplier_id.is_some() || form.supplier_code.is_some() {
            let found = crate::catalog::suppliers::resolve(
                &self.inner.store,
                ns,
                form.supplier_id,
                form.supplier_code.as_deref(),
            );
            match found {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => errors.push(Invalid::new(
                    if form.supplier_id.is_some() {
                        "supplier_id"
                    } else {
                        "supplier_code"
                    },
                    "names no supplier",
                )),
            }
        }
        if let Some(t) = form.template_id
            && self.inner.store.template(ns, t)?.is_none()
        {
            errors.push(Invalid::new("template_id", "names no import template"));
        }
        if form.skip_header_rows > 1000 {
            errors.push(Invalid::new("skip_header_rows", "must be at most 1000"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(errors))
        }
    }

    /// A job of `kind` in `ns`; another tenant's or environment's job is not found.
    pub fn get(&self, ns: Namespace, kind: JobKind, id: Uuid) -> Result<JobRecord, Error> {
        match self.inner.store.job(ns, id)? {
            Some(job) if job.kind == kind => Ok(job),
            _ => Err(Error::not_found("job")),
        }
    }

    pub fn list(&self, ns: Namespace, kind: JobKind) -> Result<Vec<JobRecord>, Error> {
        Ok(self.inner.store.jobs_of(ns, kind)?)
    }

    /// Sets an import's mapping (only while it waits for one or is ready); it becomes ready
    /// once `ean` and `name` are mapped.
    pub fn set_mapping(
        &self,
        ns: Namespace,
        id: Uuid,
        mapping: BTreeMap<String, String>,
    ) -> Result<JobRecord, Error> {
        let job = self.get(ns, JobKind::Import, id)?;
        let checked = mapping::check(&mapping, &job.import.headers).map_err(Error::invalid)?;
        let job = self
            .inner
            .store
            .update_job(ns, id, |job| {
                if !matches!(job.status, JobStatus::AwaitingMapping | JobStatus::Ready) {
                    return Err(StoreError::Conflict(
                        "the mapping can only change while the job is awaiting_mapping or ready",
                    ));
                }
                job.import.mapping = checked.clone();
                job.status = if mapping::is_complete(&checked) {
                    JobStatus::Ready
                } else {
                    JobStatus::AwaitingMapping
                };
                Ok(())
            })
            .map_err(store_error)?;
        self.inner.store.flush_blocking().map_err(store_error)?;
        Ok(job)
    }

    /// Starts a ready import.
    pub fn process(&self, ns: Namespace, id: Uuid) -> Result<JobRecord, Error> {
        self.get(ns, JobKind::Import, id)?;
        if !self.runs_here(id) {
            return Err(Self::elsewhere());
        }
        let now = self.now();
        let job = self
            .inner
            .store
            .update_job(ns, id, |job| match job.status {
                JobStatus::Ready => {
                    job.status = JobStatus::Processing;
                    job.started_at = Some(now);
                    Ok(())
                }
                JobStatus::AwaitingMapping => Err(StoreError::Conflict(
                    "map the columns to ean and name first (PUT …/mapping)",
                )),
                JobStatus::Pending | JobStatus::Analyzing => {
                    Err(StoreError::Conflict("the file is still being analysed"))
                }
                _ => Err(StoreError::Conflict("the job has already started or ended")),
            })
            .map_err(store_error)?;
        self.inner.store.flush_blocking().map_err(store_error)?;
        self.enqueue(Task::Process(ns, id));
        Ok(job)
    }

    /// Cancels a job that has not ended: what an import committed stays, the rest is not
    /// read; an export's file is never offered.
    pub fn cancel(&self, ns: Namespace, kind: JobKind, id: Uuid) -> Result<JobRecord, Error> {
        self.get(ns, kind, id)?;
        let now = self.now();
        let job = self
            .inner
            .store
            .update_job(ns, id, |job| {
                if job.status.is_final() {
                    return Err(StoreError::Conflict("the job has already ended"));
                }
                job.status = JobStatus::Cancelled;
                job.finished_at = Some(now);
                Ok(())
            })
            .map_err(store_error)?;
        self.inner.store.flush_blocking().map_err(store_error)?;
        if let Some(format) = read::Format::parse(&job.format)
            && job.kind == JobKind::Import
        {
            let _ = std::fs::remove_file(self.upload_path(id, format));
        }
        Ok(job)
    }

    /// A page of an import's log and the number of entries matching.
    pub fn logs(
        &self,
        ns: Namespace,
        id: Uuid,
        level: Option<LogLevel>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<LogRecord>, u64), Error> {
        self.get(ns, JobKind::Import, id)?;
        Ok(self.inner.store.job_logs(id, level, offset, limit)?)
    }

    /// The failed rows as CSV: the file's columns, then the reasons.
    pub fn error_report(&self, ns: Namespace, id: Uuid) -> Result<Vec<u8>, Error> {
        let job = self.get(ns, JobKind::Import, id)?;
        let mut out = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new());
        let mut header: Vec<String> = vec!["row".into()];
        header.extend(job.import.headers.iter().cloned());
        header.push("error".into());
        out.write_record(&header).map_err(Error::internal)?;
        let mut pending: Option<(u64, Vec<String>, Vec<String>)> = None;
        let width = job.import.headers.len();
        let emit = |out: &mut csv::Writer<Vec<u8>>,
                    (row, cells, reasons): (u64, Vec<String>, Vec<String>)|
         -> Result<(), StoreError> {
            let mut record = vec![row.to_string()];
            let mut cells = cells;
            cells.resize(width, String::new());
            record.extend(cells.iter().map(|c| export::neutralised(c).into_owned()));
            record.push(reasons.join("; "));
            out.write_record(&record)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        self.inner.store.each_job_error(id, |log| {
            let reason = match &log.field {
                Some(f) => format!("{f}: {}", log.message),
                None => log.message.clone(),
            };
            match &mut pending {
                Some((row, _, reasons)) if *row == log.row => reasons.push(reason),
                _ => {
                    if let Some(done) = pending.take() {
                        emit(&mut out, done)?;
                    }
                    pending = Some((log.row, log.cells, vec![reason]));
                }
            }
            Ok(())
        })?;
        if let Some(done) = pending.take() {
            emit(&mut out, done)?;
        }
        out.into_inner()
            .map_err(|e| Error::internal(e.into_error()))
    }

    pub fn templates(&self, ns: Namespace) -> Result<Vec<TemplateRecord>, Error> {
        Ok(self.inner.store.templates(ns)?)
    }

    /// Saves a mapping under a name (its targets are checked; its columns are matched by name
    /// when a file uses it).
    pub fn create_template(
        &self,
        ns: Namespace,
        name: &str,
        mapping: BTreeMap<String, String>,
    ) -> Result<TemplateRecord, Error> {
        let name = name.trim();
        let mut errors = Vec::new();
        if name.is_empty() || name.chars().count() > 200 {
            errors.push(Invalid::new("name", "must be 1 to 200 characters"));
        }
        if mapping.is_empty() || mapping.len() > read::MAX_COLUMNS {
            errors.push(Invalid::new(
                "mapping",
                format!("must map 1 to {} columns", read::MAX_COLUMNS),
            ));
        }
        let headers: Vec<String> = mapping.keys().cloned().collect();
        if let Err(e) = mapping::check(&mapping, &headers) {
            errors.extend(e);
        }
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        let t = TemplateRecord {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            mapping,
            created_at: self.now(),
        };
        self.inner.store.put_template(ns, &t)?;
        self.inner.store.flush_blocking().map_err(store_error)?;
        Ok(t)
    }

    /// Records an export job and queues it.
    /// Waits until the search index has taken in every write acknowledged so far (an export
    /// with `search` reads it).
    pub async fn search_ready(&self) {
        self.inner.catalog.search_ready().await;
    }

    pub fn create_export(
        &self,
        ns: Namespace,
        request: ExportRequest,
        created_by: String,
    ) -> Result<JobRecord, Error> {
        let spec = export_spec(&request)?;
        let job = JobRecord {
            id: Uuid::now_v7(),
            kind: JobKind::Export,
            status: JobStatus::Processing,
            format: request.format.clone(),
            file_name: String::new(),
            file_size: 0,
            created_at: self.now(),
            started_at: Some(self.now()),
            finished_at: None,
            expires_at: None,
            total_rows: None,
            processed_rows: 0,
            successful_rows: 0,
            failed_rows: 0,
            created_rows: 0,
            updated_rows: 0,
            warnings: 0,
            logs: 0,
            error: None,
            error_code: None,
            created_by,
            import: ImportSpec::default(),
            export: spec,
        };
        let mut job = job;
        job.file_name = format!(
            "products-{}.{}",
            job.created_at
                .format(time::macros::format_description!(
                    "[year][month][day]-[hour][minute][second]"
                ))
                .unwrap_or_default(),
            export_extension(&job)
        );
        self.own(job.id)?;
        self.inner.store.put_job(ns, &job)?;
        self.inner.store.flush_blocking().map_err(store_error)?;
        self.enqueue(Task::Export(ns, job.id));
        Ok(job)
    }

    /// The file of a completed export: 409 before completion, 410 once expired.
    pub fn download(&self, ns: Namespace, id: Uuid) -> Result<Download, Error> {
        let job = self.get(ns, JobKind::Export, id)?;
        let expired =
            job.status == JobStatus::Expired || job.expires_at.is_some_and(|t| t <= self.now());
        if expired {
            return Err(Error::new(
                ErrorKind::Gone,
                "this export has expired; create it again",
            ));
        }
        match job.status {
            JobStatus::Completed => {}
            JobStatus::Processing | JobStatus::Pending => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "the export is not complete yet; poll the job until its status is completed",
                ));
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("the export is {}: there is no file", other.as_str()),
                ));
            }
        }
        if !self.runs_here(id) {
            return Err(Self::elsewhere());
        }
        let path = self.export_path(&job);
        let size = std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|_| Error::new(ErrorKind::Gone, "this export's file is gone"))?;
        Ok(Download {
            path,
            file_name: job.file_name.clone(),
            content_type: match (job.format.as_str(), job.export.json_lines) {
                ("csv", _) => "text/csv; charset=utf-8",
                ("json", false) => "application/json",
                ("json", true) => "application/x-ndjson",
                _ => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            },
            size,
        })
    }

    /// Expires exports past their time (their files are removed) and removes files no job
    /// holds any more. Returns how many exports expired.
    pub fn sweep(&self) -> Result<usize, Error> {
        let now = self.now();
        let mut expired = 0;
        let mut keep: Vec<String> = Vec::new();
        for (ns, job) in self.inner.store.all_jobs()? {
            if job.kind == JobKind::Export
                && job.status == JobStatus::Completed
                && job.expires_at.is_some_and(|t| t <= now)
            {
                self.inner.store.update_job(ns, job.id, |j| {
                    if j.status == JobStatus::Completed {
                        j.status = JobStatus::Expired;
                    }
                    Ok(())
                })?;
                let _ = std::fs::remove_file(self.export_path(&job));
                expired += 1;
                continue;
            }
            if !job.status.is_final() || job.status == JobStatus::Completed {
                keep.push(job.id.simple().to_string());
            }
        }
        // Files of jobs that ended (or of uploads that never became jobs).
        for sub in ["uploads", "exports", OWNED] {
            let Ok(entries) = std::fs::read_dir(self.inner.dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let stem = name.split('.').next().unwrap_or_default();
                let young = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < std::time::Duration::from_secs(3600));
                if !keep.iter().any(|k| k == stem) && !young {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if expired > 0 {
            self.inner.store.flush_blocking().map_err(store_error)?;
        }
        Ok(expired)
    }

    fn fail(&self, ns: Namespace, id: Uuid, reason: &str) {
        let now = self.now();
        let result = self.inner.store.update_job(ns, id, |job| {
            if job.status.is_final() {
                return Ok(());
            }
            job.status = JobStatus::Failed;
            job.finished_at = Some(now);
            job.error = Some(reason.to_owned());
            if job.kind == JobKind::Import {
                job.error_code = Some(ErrorKind::ImportFailed.code().to_owned());
            }
            Ok(())
        });
        match result {
            Ok(job) => self.remove_upload(&job),
            Err(e) => tracing::error!(job = %id, error = %e, "could not record a job's failure"),
        }
        if let Err(e) = self.inner.store.flush_blocking() {
            tracing::error!(job = %id, error = %e, "could not flush a job's failure");
        }
    }

    fn remove_upload(&self, job: &JobRecord) {
        if job.kind == JobKind::Import
            && let Some(format) = read::Format::parse(&job.format)
        {
            let _ = std::fs::remove_file(self.upload_path(job.id, format));
        }
    }

    fn layout(&self, job: &JobRecord) -> Result<read::Layout, Halt> {
        let format = read::Format::parse(&job.format)
            .ok_or_else(|| Halt::Failed(format!("unknown file type {}", job.format)))?;
        Ok(read::Layout {
            format,
            skip_header_rows: job.import.skip_header_rows,
            encoding: job.import.encoding.clone(),
            delimiter: job.import.delimiter,
            headers: job.import.headers.clone(),
        })
    }

    fn analyze(&self, ns: Namespace, id: Uuid) -> Result<(), Halt> {
        let store = &self.inner.store;
        let Some(job) = store.job(ns, id).map_err(|e| Halt::Failed(e.to_string()))? else {
            return Ok(());
        };
        if !matches!(job.status, JobStatus::Pending | JobStatus::Analyzing) {
            return Ok(());
        }
        store
            .update_job(ns, id, |j| {
                j.status = JobStatus::Analyzing;
                Ok(())
            })
            .map_err(|e| Halt::Failed(e.to_string()))?;
        let layout = self.layout(&job)?;
        let path = self.upload_path(id, layout.format);
        let analysis = read::analyze(&path, layout.format, job.import.skip_header_rows)
            .map_err(Halt::Failed)?;
        if analysis.total_rows == 0 {
            return Err(Halt::Failed("the file holds no data rows".into()));
        }
        let mut mapping = mapping::propose(&analysis.headers);
        if let Some(t) = job.import.template_id
            && let Ok(Some(template)) = store.template(ns, t)
        {
            // The template's columns that this file has, over what analysis proposed.
            for (header, field) in &template.mapping {
                if analysis.headers.iter().any(|h| h == header) {
                    mapping.retain(|_, f| f != field);
                    mapping.insert(header.clone(), field.clone());
                }
            }
            mapping.retain(|_, f| f != mapping::IGNORE);
        }
        let ready = mapping::is_complete(&mapping);
        let start = ready && job.import.auto_process;
        let now = self.now();
        let job = store
            .update_job(ns, id, |j| {
                if j.status != JobStatus::Analyzing {
                    return Err(StoreError::Conflict("the job was cancelled"));
                }
                j.import.headers = analysis.headers.clone();
                j.import.encoding = analysis.encoding.clone();
                j.import.delimiter = analysis.delimiter;
                j.import.mapping = mapping.clone();
                j.total_rows = Some(analysis.total_rows);
                j.status = match (ready, start) {
                    (true, true) => JobStatus::Processing,
                    (true, false) => JobStatus::Ready,
                    _ => JobStatus::AwaitingMapping,
                };
                if start {
                    j.started_at = Some(now);
                }
                Ok(())
            })
            .map_err(|e| match e {
                StoreError::Conflict(_) => Halt::Cancelled,
                e => Halt::Failed(e.to_string()),
            })?;
        store
            .flush_blocking()
            .map_err(|e| Halt::Failed(e.to_string()))?;
        if job.status == JobStatus::Processing {
            return self.process_rows(ns, id);
        }
        Ok(())
    }

    /// Runs (or resumes) an import: rows after the last committed batch, batch by batch.
    fn process_rows(&self, ns: Namespace, id: Uuid) -> Result<(), Halt> {
        let store = &self.inner.store;
        let Some(job) = store.job(ns, id).map_err(|e| Halt::Failed(e.to_string()))? else {
            return Ok(());
        };
        if job.status != JobStatus::Processing {
            return Ok(());
        }
        let layout = self.layout(&job)?;
        let path = self.upload_path(id, layout.format);
        let plan = mapping::Plan::new(
            &job.import.headers,
            &job.import.mapping,
            mapping::Defaults {
                supplier_id: job.import.supplier_id,
                supplier_code: job.import.supplier_code.clone(),
            },
        );
        let rows = read::open(&path, &layout, None).map_err(Halt::Failed)?;
        let done = job.processed_rows;
        let mut unflushed = Unflushed::default();
        let mut seen: HashMap<u64, u64> = HashMap::new();
        let mut index = 0u64;
        let mut batch: Vec<ImportRow> = Vec::with_capacity(BATCH);
        for item in rows {
            let row = match item {
                Ok(row) => row,
                Err(reason) => {
                    self.commit(ns, id, &mut batch, job.import.dry_run, &mut unflushed)?;
                    self.durable(ns, &mut unflushed)?;
                    return Err(Halt::Failed(reason));
                }
            };
            index += 1;
            let patch = match &row.problem {
                Some(p) => Err(vec![Invalid::new("row", p.clone())]),
                None => plan.patch(&row.cells),
            };
            // A repeated EAN among rows that can be written: the later row wins.
            let mut warnings = Vec::new();
            if patch.is_ok()
                && let Some(ean) = plan.ean_of(&row.cells)
                && let Some(first) = seen.insert(ean, row.row)
            {
                warnings.push((
                    Some("ean".to_owned()),
                    format!(
                        "this EAN is also in row {first}; rows apply in file order, so this later row's values win"
                    ),
                ));
            }
            if index <= done {
                continue;
            }
            batch.push(ImportRow {
                row: row.row,
                patch,
                cells: row.cells,
                warnings,
            });
            if batch.len() >= BATCH {
                self.commit(ns, id, &mut batch, job.import.dry_run, &mut unflushed)?;
                if unflushed.since.elapsed() >= FLUSH_EVERY {
                    self.durable(ns, &mut unflushed)?;
                }
                if self.stopping() {
                    self.durable(ns, &mut unflushed)?;
                    return Err(Halt::Stopping);
                }
            }
        }
        self.commit(ns, id, &mut batch, job.import.dry_run, &mut unflushed)?;
        self.durable(ns, &mut unflushed)?;
        let now = self.now();
        let job = store
            .update_job(ns, id, |j| {
                if j.status != JobStatus::Processing {
                    return Err(StoreError::Conflict("the job was cancelled"));
                }
                j.finished_at = Some(now);
                if j.successful_rows == 0 {
                    j.status = JobStatus::Failed;
                    j.error_code = Some(ErrorKind::ImportFailed.code().to_owned());
                    j.error = Some(if j.failed_rows > 0 {
                        "every row failed; see the job's logs or error report".into()
                    } else {
                        "the file holds no data rows".into()
                    });
                } else {
                    j.status = JobStatus::Completed;
                }
                Ok(())
            })
            .map_err(|e| match e {
                StoreError::Conflict(_) => Halt::Cancelled,
                e => Halt::Failed(e.to_string()),
            })?;
        store
            .flush_blocking()
            .map_err(|e| Halt::Failed(e.to_string()))?;
        self.remove_upload(&job);
        Ok(())
    }

    fn commit(
        &self,
        ns: Namespace,
        id: Uuid,
        batch: &mut Vec<ImportRow>,
        dry_run: bool,
        unflushed: &mut Unflushed,
    ) -> Result<(), Halt> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(batch);
        match self.inner.catalog.import_batch(ns, id, rows, dry_run) {
            Ok((_, changed)) => {
                unflushed.changed.extend(changed);
                Ok(())
            }
            Err(e) => {
                // What was committed before stays; make it durable and searchable.
                let _ = self.durable(ns, unflushed);
                Err(if e.kind == ErrorKind::Conflict {
                    Halt::Cancelled
                } else {
                    Halt::Failed(format!("the batch could not be written: {}", e.detail))
                })
            }
        }
    }

    /// Flushes the committed batches and sends their products to the search index.
    fn durable(&self, ns: Namespace, unflushed: &mut Unflushed) -> Result<(), Halt> {
        let changed = std::mem::take(&mut unflushed.changed);
        unflushed.since = std::time::Instant::now();
        let result = self
            .inner
            .catalog
            .import_durable(ns, changed)
            .map_err(|e| Halt::Failed(format!("the store could not be flushed: {}", e.detail)));
        crate::startup::release_free_memory();
        result
    }

    fn export(&self, ns: Namespace, id: Uuid) -> Result<(), Halt> {
        let store = &self.inner.store;
        let Some(job) = store.job(ns, id).map_err(|e| Halt::Failed(e.to_string()))? else {
            return Ok(());
        };
        if job.status != JobStatus::Processing {
            return Ok(());
        }
        let path = self.export_path(&job);
        let part = path.with_extension("part");
        let result = self.write_export(ns, &job, &part);
        let count = match result {
            Ok(count) => count,
            Err(halt) => {
                let _ = std::fs::remove_file(&part);
                return Err(halt);
            }
        };
        std::fs::rename(&part, &path).map_err(|e| Halt::Failed(e.to_string()))?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let now = self.now();
        let retention = self.inner.export_retention;
        let done = store.update_job(ns, id, |j| {
            if j.status != JobStatus::Processing {
                return Err(StoreError::Conflict("the job was cancelled"));
            }
            j.status = JobStatus::Completed;
            j.total_rows = Some(count);
            j.processed_rows = count;
            j.successful_rows = count;
            j.file_size = size;
            j.finished_at = Some(now);
            j.expires_at = Some(now + retention);
            Ok(())
        });
        if let Err(e) = done {
            let _ = std::fs::remove_file(&path);
            return Err(match e {
                StoreError::Conflict(_) => Halt::Cancelled,
                e => Halt::Failed(e.to_string()),
            });
        }
        store
            .flush_blocking()
            .map_err(|e| Halt::Failed(e.to_string()))?;
        Ok(())
    }

    fn write_export(&self, ns: Namespace, job: &JobRecord, part: &Path) -> Result<u64, Halt> {
        let spec = &job.export;
        let columns = spec.fields.clone();
        let mut sink: Box<dyn export::Sink> = match job.format.as_str() {
            "csv" => Box::new(
                export::CsvSink::create(part, columns, spec.utf8_bom).map_err(Halt::Failed)?,
            ),
            "json" => Box::new(
                export::JsonSink::create(part, columns, spec.pretty, spec.json_lines)
                    .map_err(Halt::Failed)?,
            ),
            _ => Box::new(
                export::XlsxSink::create(part, &self.inner.dir.join("tmp"), columns, &spec.sheets)
                    .map_err(Halt::Failed)?,
            ),
        };
        let query = crate::catalog::ListQuery {
            search: spec.search.clone(),
            is_active: spec.is_active,
            updated_since: spec.updated_since,
            supplier_id: spec.supplier_id,
            category_id: spec.category_id,
            ..Default::default()
        };
        let mut count = 0u64;
        let mut halt: Option<Halt> = None;
        let walked = self.inner.catalog.each_match(ns, &query, |p| {
            if let Err(e) = sink.product(&p) {
                halt = Some(Halt::Failed(e));
                return Err(Error::new(ErrorKind::Internal, "stop"));
            }
            count += 1;
            if count.is_multiple_of(EXPORT_CHECK_EVERY) {
                if self.stopping() {
                    halt = Some(Halt::Stopping);
                    return Err(Error::new(ErrorKind::Internal, "stop"));
                }
                let live = self
                    .inner
                    .store
                    .job(ns, job.id)
                    .ok()
                    .flatten()
                    .is_some_and(|j| j.status == JobStatus::Processing);
                if !live {
                    halt = Some(Halt::Cancelled);
                    return Err(Error::new(ErrorKind::Internal, "stop"));
                }
            }
            Ok(())
        });
        if let Some(h) = halt {
            return Err(h);
        }
        walked.map_err(|e| Halt::Failed(e.detail))?;
        let suppliers = if spec.sheets.iter().any(|s| s == "suppliers") {
            let mut all = self
                .inner
                .store
                .suppliers(ns)
                .map_err(|e| Halt::Failed(e.to_string()))?;
            all.sort_by(|a, b| a.code.cmp(&b.code));
            all
        } else {
            Vec::new()
        };
        sink.finish(&suppliers).map_err(Halt::Failed)?;
        Ok(count)
    }
}

/// Import batches committed but not yet flushed, and since when.
struct Unflushed {
    changed: Vec<crate::domain::ProductId>,
    since: std::time::Instant,
}

impl Default for Unflushed {
    fn default() -> Self {
        Unflushed {
            changed: Vec::new(),
            since: std::time::Instant::now(),
        }
    }
}

fn export_extension(job: &JobRecord) -> &'static str {
    match (job.format.as_str(), job.export.json_lines) {
        ("csv", _) => "csv",
        ("json", false) => "json",
        ("json", true) => "ndjson",
        _ => "xlsx",
    }
}

/// A file name safe to show and to send back in `Content-Disposition`: no path, no control
/// characters, at most 200 characters.
fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(200)
        .collect();
    if clean.trim().is_empty() {
        "upload".into()
    } else {
        clean
    }
}

/// Checks an export request and resolves its columns.
fn export_spec(r: &ExportRequest) -> Result<ExportSpec, Error> {
    let mut errors = Vec::new();
    for (name, list) in [
        ("include_fields", &r.include_fields),
        ("exclude_fields", &r.exclude_fields),
    ] {
        for f in list {
            if !export::COLUMNS.contains(&f.as_str()) {
                errors.push(Invalid::new(
                    name,
                    format!(
                        "'{f}' is not a product field (one of {})",
                        export::COLUMNS.join(", ")
                    ),
                ));
            }
        }
    }
    let mut fields: Vec<String> = if r.include_fields.is_empty() {
        export::COLUMNS.iter().map(|c| c.to_string()).collect()
    } else {
        let mut out: Vec<String> = Vec::new();
        for f in &r.include_fields {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    };
    fields.retain(|f| !r.exclude_fields.contains(f));
    if fields.is_empty() && errors.is_empty() {
        errors.push(Invalid::new("include_fields", "leaves no column to export"));
    }
    let mut sheets = Vec::new();
    if r.format == "xlsx" {
        let asked = if r.include_sheets.is_empty() {
            vec!["products".to_owned()]
        } else {
            r.include_sheets.clone()
        };
        for s in asked {
            match s.as_str() {
                "products" | "suppliers" if !sheets.contains(&s) => sheets.push(s),
                "products" | "suppliers" => {}
                other => errors.push(Invalid::new(
                    "include_sheets",
                    format!("'{other}' is not a sheet (products or suppliers)"),
                )),
            }
        }
    }
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    Ok(ExportSpec {
        search: r.search.clone(),
        is_active: r.is_active,
        supplier_id: r.supplier_id,
        category_id: r.category_id,
        updated_since: r.updated_since,
        fields,
        utf8_bom: r.utf8_bom,
        pretty: r.pretty,
        json_lines: r.json_lines,
        sheets,
    })
}
