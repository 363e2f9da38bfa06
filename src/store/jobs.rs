//! Background jobs (imports and exports, SPEC §8): their records, their row logs and the saved
//! import mappings. An import's progress is written in the same transaction as the products
//! of the rows it covers ([`Store::import_batch`]), so a job resumed after a crash starts
//! exactly after its last committed batch.
use super::kv::Transactional;
use super::kv::TxTree;
use super::products::ProductTrees;
use super::{
    Namespace, ProductRecord, Store, StoreError, StoreResult, abort, codec, from_tx, keys,
};
use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    Import,
    Export,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    Pending,
    Analyzing,
    AwaitingMapping,
    Ready,
    Processing,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    pub const ALL: [JobStatus; 9] = [
        JobStatus::Pending,
        JobStatus::Analyzing,
        JobStatus::AwaitingMapping,
        JobStatus::Ready,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Analyzing => "analyzing",
            JobStatus::AwaitingMapping => "awaiting_mapping",
            JobStatus::Ready => "ready",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    /// No worker will touch the job again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired
        )
    }
}

/// What an import was asked to do (the upload's form fields), and what analysis found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportSpec {
    pub supplier_id: Option<Uuid>,
    pub supplier_code: Option<String>,
    pub template_id: Option<Uuid>,
    pub auto_process: bool,
    pub skip_header_rows: u32,
    pub dry_run: bool,
    /// Found by analysis: `utf-8` or `windows-1252` (CSV only).
    pub encoding: Option<String>,
    /// Found by analysis: the CSV delimiter.
    pub delimiter: Option<u8>,
    /// The column headers, in file order (the keys of the first objects for JSON).
    pub headers: Vec<String>,
    /// Column header → product field.
    pub mapping: BTreeMap<String, String>,
}

/// What an export was asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportSpec {
    pub search: Option<String>,
    pub is_active: Option<bool>,
    pub supplier_id: Option<Uuid>,
    pub category_id: Option<Uuid>,
    pub updated_since: Option<OffsetDateTime>,
    /// The columns, in order (already resolved from `include_fields` / `exclude_fields`).
    pub fields: Vec<String>,
    pub utf8_bom: bool,
    pub pretty: bool,
    pub json_lines: bool,
    pub sheets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    /// `csv`, `json`, `ndjson` or `xlsx`.
    pub format: String,
    pub file_name: String,
    pub file_size: u64,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    pub total_rows: Option<u64>,
    /// Data rows done (an import resumes after them).
    pub processed_rows: u64,
    pub successful_rows: u64,
    pub failed_rows: u64,
    pub created_rows: u64,
    pub updated_rows: u64,
    pub warnings: u64,
    /// Log entries kept (at most [`MAX_LOGS`]).
    pub logs: u64,
    pub error: Option<String>,
    pub error_code: Option<String>,
    /// Who started it (a key or user id).
    pub created_by: String,
    pub import: ImportSpec,
    pub export: ExportSpec,
}

/// Log entries kept per job; a job with more problems counts them all but keeps these.
pub const MAX_LOGS: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warning => "warning",
            LogLevel::Info => "info",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The row in the file (1 is the first line of a CSV or XLSX, the first element of JSON).
    pub row: u64,
    pub level: LogLevel,
    pub field: Option<String>,
    pub message: String,
    /// The row's cells (kept with a failed row's first error, for the error report).
    pub cells: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub id: Uuid,
    pub name: String,
    pub mapping: BTreeMap<String, String>,
    pub created_at: OffsetDateTime,
}

/// What an import batch writes for one row.
pub struct ImportWrite<'a> {
    pub ean: String,
    /// The product when no product holds the EAN yet (`None`: the row cannot create one).
    pub create: Option<Box<ProductRecord>>,
    /// What the product holding the EAN becomes.
    pub change: &'a (dyn Fn(&ProductRecord) -> Result<ProductRecord, StoreError> + Sync),
}

/// One row's store result: the product and whether it was created.
pub type RowWrite = StoreResult<(ProductRecord, bool)>;

/// Builds the job record and the logs a batch commits, from the job as stored and the rows'
/// results. It may run more than once (sled retries a transaction on conflict), so it must not
/// keep state; an error aborts the batch (the job was cancelled meanwhile).
pub type Progress<'a> =
    dyn Fn(&JobRecord, &[RowWrite]) -> Result<(JobRecord, Vec<LogRecord>), StoreError> + 'a;

/// Key of a log entry: job id, row, then the entry's place in the job's log.
/// The webhook event an import's status change makes, if any (SPEC §13).
fn job_event(old: &JobRecord, new: &JobRecord) -> Option<super::EventKind> {
    use super::EventKind;
    if new.kind != JobKind::Import || old.status == new.status {
        return None;
    }
    match new.status {
        JobStatus::Processing => Some(EventKind::ImportStarted),
        JobStatus::Completed => Some(EventKind::ImportCompleted),
        JobStatus::Failed => Some(EventKind::ImportFailed),
        _ => None,
    }
}

fn log_key(job: Uuid, row: u64, seq: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(job.as_bytes());
    out[16..24].copy_from_slice(&row.to_be_bytes());
    out[24..].copy_from_slice(&seq.to_be_bytes());
    out
}

fn write_logs(
    logs_tree: &TxTree,
    job: &JobRecord,
    first_seq: u64,
    logs: &[LogRecord],
) -> Result<(), ConflictableTransactionError<StoreError>> {
    for (i, log) in logs.iter().enumerate() {
        let seq = first_seq + i as u64;
        if seq >= MAX_LOGS {
            break;
        }
        logs_tree.set(&log_key(job.id, log.row, seq)[..], codec::encode(log))?;
    }
    Ok(())
}

impl Store {
    /// Writes a job record as it is (a new job, or a change nothing else races with).
    pub fn put_job(&self, ns: Namespace, job: &JobRecord) -> StoreResult<()> {
        self.jobs
            .set(keys::ns_id(ns, job.id.as_bytes()), codec::encode(job))?;
        Ok(())
    }

    pub fn job(&self, ns: Namespace, id: Uuid) -> StoreResult<Option<JobRecord>> {
        self.jobs
            .get(keys::ns_id(ns, id.as_bytes()))?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// Changes a job with `edit` (compare-and-swap: `edit` sees the stored record and may be
    /// called again if another writer changed it meanwhile). `Err` from `edit` changes nothing.
    pub fn update_job(
        &self,
        ns: Namespace,
        id: Uuid,
        edit: impl Fn(&mut JobRecord) -> Result<(), StoreError>,
    ) -> StoreResult<JobRecord> {
        let key = keys::ns_id(ns, id.as_bytes());
        let switch = self.event_switch();
        let result = (&self.jobs, &self.webhook_events)
            .transaction(|(jobs, events)| {
                let Some(old) = jobs.get(key)? else {
                    return abort(StoreError::NotFound);
                };
                let old: JobRecord = codec::decode(&old).or_else(abort)?;
                let mut job = old.clone();
                edit(&mut job).or_else(abort)?;
                jobs.set(&key[..], codec::encode(&job))?;
                if let Some(kind) = job_event(&old, &job) {
                    let at = job.finished_at.or(job.started_at).unwrap_or(job.created_at);
                    super::webhooks::emit(events, switch, ns, kind, at, || {
                        super::EventData::Job(Box::new(job.clone()))
                    })?;
                }
                Ok(job)
            })
            .map_err(from_tx);
        if result.is_ok() {
            self.events_written();
        }
        result
    }

    /// The namespace's jobs of one kind, newest first (ids are time-ordered).
    pub fn jobs_of(&self, ns: Namespace, kind: JobKind) -> StoreResult<Vec<JobRecord>> {
        let mut out = Vec::new();
        for item in self.jobs.scan_prefix(keys::namespace(ns)).values().rev() {
            let job: JobRecord = codec::decode(&item?)?;
            if job.kind == kind {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// Every job of every namespace (start-up resumes, the sweep expires).
    pub fn all_jobs(&self) -> StoreResult<Vec<(Namespace, JobRecord)>> {
        let mut out = Vec::new();
        for item in self.jobs.iter() {
            let (k, v) = item?;
            let ns = keys::namespace_of(&k)
                .ok_or_else(|| StoreError::Corrupt("jobs: short key".into()))?;
            out.push((ns, codec::decode(&v)?));
        }
        Ok(out)
    }

    /// One batch of an import: the rows' upserts, the job's progress and the batch's logs in
    /// one transaction. `progress` builds the job record and the logs from the job as stored
    /// and the rows' results; an error from it (the job was cancelled) writes nothing.
    pub fn import_batch(
        &self,
        ns: Namespace,
        job: Uuid,
        writes: &[ImportWrite<'_>],
        progress: &Progress<'_>,
    ) -> StoreResult<(JobRecord, Vec<RowWrite>)> {
        let key = keys::ns_id(ns, job.as_bytes());
        let run = |t: &ProductTrees<'_>, extra: &[TxTree]| {
            let (jobs, logs_tree) = (&extra[0], &extra[1]);
            let Some(stored) = jobs.get(key)? else {
                return abort(StoreError::NotFound);
            };
            let stored: JobRecord = codec::decode(&stored).or_else(abort)?;
            let mut results = Vec::with_capacity(writes.len());
            for w in writes {
                results.push(t.upsert_by_ean(ns, &w.ean, w.create.as_deref(), w.change)?);
            }
            let (next, logs) = progress(&stored, &results).or_else(abort)?;
            write_logs(logs_tree, &next, stored.logs, &logs)?;
            jobs.set(&key[..], codec::encode(&next))?;
            Ok((next, results))
        };
        if writes.is_empty() {
            // Nothing of the catalog changes (a dry run, a batch of bad rows): the job's trees
            // alone, without moving the catalog's epoch.
            let trees = [&self.jobs, &self.job_logs];
            return super::kv::transaction(&trees[..], |t| {
                let Some(stored) = t[0].get(key)? else {
                    return abort(StoreError::NotFound);
                };
                let stored: JobRecord = codec::decode(&stored).or_else(abort)?;
                let (next, logs) = progress(&stored, &[]).or_else(abort)?;
                write_logs(&t[1], &next, stored.logs, &logs)?;
                t[0].set(&key[..], codec::encode(&next))?;
                Ok((next, Vec::new()))
            })
            .map_err(super::from_tx);
        }
        self.product_tx_with(&[&self.jobs, &self.job_logs], run)
    }

    /// A page of a job's log in row order, optionally of one level, and how many entries match.
    pub fn job_logs(
        &self,
        job: Uuid,
        level: Option<LogLevel>,
        offset: usize,
        limit: usize,
    ) -> StoreResult<(Vec<LogRecord>, u64)> {
        let mut items = Vec::new();
        let mut total = 0u64;
        for v in self.job_logs.scan_prefix(job.as_bytes()).values() {
            let log: LogRecord = codec::decode(&v?)?;
            if level.is_some_and(|l| l != log.level) {
                continue;
            }
            if total as usize >= offset && items.len() < limit {
                items.push(log);
            }
            total += 1;
        }
        Ok((items, total))
    }

    /// Every error entry of a job, in row order, to `each`.
    pub fn each_job_error(
        &self,
        job: Uuid,
        mut each: impl FnMut(LogRecord) -> StoreResult<()>,
    ) -> StoreResult<()> {
        for v in self.job_logs.scan_prefix(job.as_bytes()).values() {
            let log: LogRecord = codec::decode(&v?)?;
            if log.level == LogLevel::Error {
                each(log)?;
            }
        }
        Ok(())
    }

    /// Removes a job's log (an import started over from its first row).
    pub fn clear_job_logs(&self, job: Uuid) -> StoreResult<()> {
        for k in self.job_logs.scan_prefix(job.as_bytes()).keys() {
            self.job_logs.unset(k?)?;
        }
        Ok(())
    }

    pub fn put_template(&self, ns: Namespace, t: &TemplateRecord) -> StoreResult<()> {
        self.import_templates
            .set(keys::ns_id(ns, t.id.as_bytes()), codec::encode(t))?;
        Ok(())
    }

    pub fn template(&self, ns: Namespace, id: Uuid) -> StoreResult<Option<TemplateRecord>> {
        self.import_templates
            .get(keys::ns_id(ns, id.as_bytes()))?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// The namespace's saved mappings, oldest first.
    pub fn templates(&self, ns: Namespace) -> StoreResult<Vec<TemplateRecord>> {
        self.import_templates
            .scan_prefix(keys::namespace(ns))
            .values()
            .map(|v| codec::decode(&v?))
            .collect()
    }
}
