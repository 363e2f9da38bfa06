//! The catalog side of an import: a batch of parsed rows upserted by EAN, committed in one
//! store transaction with the job's progress and the batch's log (SPEC §8: "progress is
//! committed in batches, atomically with the rows they cover"). A job resumed after a crash
//! therefore starts right after its last committed batch, and its counts stay exact.
use super::field::Field;
use super::products::{Catalog, ProductPatch, blank, complete, patched};
use crate::domain::{Ean, Invalid, ProductId};
use crate::error::Error;
use crate::store::{
    ImportWrite, JobRecord, JobStatus, LogLevel, LogRecord, Namespace, ProductRecord, RowWrite,
    StoreError,
};
use uuid::Uuid;

/// One data row of an import file, parsed and mapped.
#[derive(Debug)]
pub struct ImportRow {
    /// The row's number in the file (what a spreadsheet shows).
    pub row: u64,
    /// The row as a product patch, or every problem found in its cells.
    pub patch: Result<ProductPatch, Vec<Invalid>>,
    /// The row's cells as read (for the error report).
    pub cells: Vec<String>,
    /// Problems that do not stop the row (a repeated EAN, an unmapped value).
    pub warnings: Vec<(Option<String>, String)>,
}

/// What became of a row before the store was asked.
enum Planned {
    Failed(Vec<(Option<String>, String)>),
    /// A dry run's verdict: `true` when the row would create its product.
    WouldWrite(bool),
    Write {
        ean: String,
        create: Result<Box<ProductRecord>, Vec<(Option<String>, String)>>,
        patch: Box<ProductPatch>,
    },
}

/// An error as log lines: one per field it names, else its detail.
pub fn problems(e: &Error) -> Vec<(Option<String>, String)> {
    if e.errors.is_empty() {
        vec![(None, e.detail.clone())]
    } else {
        invalids(&e.errors)
    }
}

fn invalids(errors: &[Invalid]) -> Vec<(Option<String>, String)> {
    errors
        .iter()
        .map(|i| (Some(i.field.clone()), i.message.clone()))
        .collect()
}

impl Catalog {
    /// Writes one batch of an import: each row is created or, when its EAN exists, changed in
    /// the fields it carries. With `dry_run` nothing of the catalog is written, and each row's
    /// log says what it would do. The job's progress and the batch's log commit with the rows;
    /// an error means nothing of the batch was written (the job was cancelled, or the store
    /// failed). Returns the job as committed and the products written, which the caller hands
    /// to [`Catalog::import_durable`] (batches are flushed together, not one by one: a crash
    /// loses only batches the job resumes from).
    pub fn import_batch(
        &self,
        ns: Namespace,
        job: Uuid,
        rows: Vec<ImportRow>,
        dry_run: bool,
    ) -> Result<(JobRecord, Vec<ProductId>), Error> {
        let stamp = self.stamp();
        let at = stamp.at;
        let mut plans = Vec::with_capacity(rows.len());
        for row in &rows {
            plans.push(self.plan(ns, row, dry_run, at));
        }
        let rewrites: Vec<Box<Rewrite<'_>>> = plans
            .iter()
            .filter_map(|p| match p {
                Planned::Write { patch, .. } => {
                    let rewrite: Box<Rewrite<'_>> =
                        Box::new(move |old: &ProductRecord| patched(patch, old, at));
                    Some(rewrite)
                }
                _ => None,
            })
            .collect();
        // A row whose new product would be invalid may still update an existing one.
        let writes: Vec<ImportWrite<'_>> = plans
            .iter()
            .filter_map(|p| match p {
                Planned::Write { ean, create, .. } => Some((ean, create)),
                _ => None,
            })
            .zip(&rewrites)
            .map(|((ean, create), rewrite)| ImportWrite {
                ean: ean.clone(),
                create: create.as_ref().ok().cloned(),
                change: rewrite.as_ref(),
            })
            .collect();
        let progress = |stored: &JobRecord, results: &[RowWrite]| {
            if stored.status != JobStatus::Processing {
                return Err(StoreError::Conflict("the job is no longer processing"));
            }
            let mut next = stored.clone();
            let mut logs = Vec::new();
            let mut results = results.iter();
            for (row, plan) in rows.iter().zip(&plans) {
                let mut log = |level, field: Option<String>, message: String, cells: bool| {
                    logs.push(LogRecord {
                        row: row.row,
                        level,
                        field,
                        message,
                        cells: if cells { row.cells.clone() } else { Vec::new() },
                    })
                };
                for (field, message) in &row.warnings {
                    next.warnings += 1;
                    log(LogLevel::Warning, field.clone(), message.clone(), false);
                }
                let failed = match plan {
                    Planned::Failed(problems) => Some(problems.clone()),
                    Planned::WouldWrite(created) => {
                        let verb = if *created { "create" } else { "update" };
                        log(
                            LogLevel::Info,
                            None,
                            format!("would {verb} the product (dry run)"),
                            false,
                        );
                        count(&mut next, *created);
                        None
                    }
                    Planned::Write { create, .. } => match results.next() {
                        Some(Ok((_, created))) => {
                            count(&mut next, *created);
                            None
                        }
                        // No product holds the EAN and the row cannot create one.
                        Some(Err(StoreError::NotFound)) => {
                            Some(create.as_ref().err().cloned().unwrap_or_default())
                        }
                        Some(Err(e)) => Some(problems(&Error::from(clone_error(e)))),
                        None => Some(vec![(None, "the row was not written".to_owned())]),
                    },
                };
                if let Some(problems) = failed {
                    next.failed_rows += 1;
                    for (i, (field, message)) in problems.into_iter().enumerate() {
                        log(LogLevel::Error, field, message, i == 0);
                    }
                }
                next.processed_rows += 1;
            }
            next.logs = (stored.logs + logs.len() as u64).min(crate::store::MAX_LOGS);
            Ok((next, logs))
        };
        let (job, results) = self
            .store()
            .import_batch(ns, job, &writes, &progress)
            .map_err(|e| match e {
                StoreError::Conflict(_) => Error::new(
                    crate::error::ErrorKind::Conflict,
                    "the job is no longer processing",
                ),
                e => e.into(),
            })?;
        drop(stamp);
        let changed: Vec<ProductId> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|(p, _)| p.id))
            .collect();
        Ok((job, changed))
    }

    /// Makes an import's committed batches durable, then hands their products to the search
    /// index (which only ever takes in what the store holds durably).
    pub fn import_durable(&self, ns: Namespace, changed: Vec<ProductId>) -> Result<(), Error> {
        let flushed = self.store().flush_blocking();
        if !changed.is_empty() {
            self.search_changed(ns, changed);
        }
        Ok(flushed?)
    }

    fn plan(
        &self,
        ns: Namespace,
        row: &ImportRow,
        dry_run: bool,
        at: time::OffsetDateTime,
    ) -> Planned {
        let mut patch = match &row.patch {
            Ok(p) => p.clone(),
            Err(errors) => return Planned::Failed(invalids(errors)),
        };
        if let Err(e) = self.resolve_supplier(ns, &mut patch) {
            return Planned::Failed(problems(&e));
        }
        // Every field is checked on its own first, so a bad cell is reported as such even
        // when the row would update an existing product.
        let mut scratch = blank(ProductId(Uuid::nil()), at);
        scratch.ean = "0".into();
        if let Err(errors) = patch.clone().apply(&mut scratch) {
            return Planned::Failed(invalids(&errors));
        }
        let create = complete(patch.clone(), blank(ProductId::generate(), at))
            .map(Box::new)
            .map_err(|e| problems(&e));
        let ean = match (&create, &patch.ean) {
            (Ok(p), _) => p.ean.clone(),
            (Err(_), Field::Value(raw)) => match Ean::parse(raw) {
                Ok(ean) => ean.as_str().to_owned(),
                Err(e) => return Planned::Failed(invalids(&[e])),
            },
            (Err(problems), _) => return Planned::Failed(problems.clone()),
        };
        if dry_run {
            return match (self.store().product_by_ean(ns, &ean), create) {
                (Err(e), _) => Planned::Failed(problems(&e.into())),
                (Ok(Some(_)), _) => Planned::WouldWrite(false),
                (Ok(None), Ok(_)) => Planned::WouldWrite(true),
                (Ok(None), Err(problems)) => Planned::Failed(problems),
            };
        }
        Planned::Write {
            ean,
            create,
            patch: Box::new(patch),
        }
    }
}

type Rewrite<'a> = dyn Fn(&ProductRecord) -> Result<ProductRecord, StoreError> + Sync + 'a;

fn count(job: &mut JobRecord, created: bool) {
    job.successful_rows += 1;
    if created {
        job.created_rows += 1;
    } else {
        job.updated_rows += 1;
    }
}

/// The store's refusals are plain values; copy the ones a row can meet.
fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Duplicate(w) => StoreError::Duplicate(*w),
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Conflict(w) => StoreError::Conflict(w),
        StoreError::Missing { field, what } => StoreError::Missing { field, what },
        StoreError::Invalid { field, problem } => StoreError::Invalid { field, problem },
        StoreError::Retry => StoreError::Retry,
        other => StoreError::Corrupt(other.to_string()),
    }
}
