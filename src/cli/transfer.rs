//! `pixee-pim import` and `pixee-pim export` on a stopped server: the same job runner the API
//! uses (so a first load behaves exactly as an upload would), driven in the foreground with a
//! progress bar on a terminal and plain lines otherwise.
use super::{api_err, fail, open_admin};
use crate::catalog::Catalog;
use crate::clock::{SharedClock, SystemClock};
use crate::domain::Environment;
use crate::jobs::{ExportRequest, ImportForm, Jobs, JobsConfig};
use crate::startup::{Place, StartError};
use crate::store::{JobKind, JobRecord, JobStatus, Namespace};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What `import` was asked.
pub struct ImportArgs<'a> {
    pub file: &'a Path,
    pub tenant: &'a str,
    pub test: bool,
    /// `Header=field` pairs laid over the mapping analysis proposes.
    pub mapping: &'a [String],
    pub dry_run: bool,
    pub skip_header_rows: u32,
    pub supplier_code: Option<String>,
}

/// What `export` was asked.
pub struct ExportArgs<'a> {
    pub tenant: &'a str,
    pub test: bool,
    pub format: &'a str,
    pub out: &'a Path,
    pub search: Option<String>,
    pub no_bom: bool,
}

struct Opened {
    _dir: crate::startup::DataDir,
    jobs: Jobs,
    catalog: Catalog,
    ns: Namespace,
}

fn open(place: &Place, tenant: &str, test: bool) -> Result<Opened, StartError> {
    let (dir, auth) = open_admin(place)?;
    let tenant = auth.find_tenant(tenant).map_err(api_err)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let store = dir.store.clone();
    let (search, _) = crate::search::SearchIndex::open(
        &crate::search::index_dir(&place.data_dir),
        store.clone(),
        clock.clone(),
    )
    .map_err(|e| fail(format!("cannot open the search index: {e}")))?;
    let catalog = Catalog::new(store.clone(), clock.clone(), search);
    let jobs = Jobs::start(
        store,
        catalog.clone(),
        clock,
        JobsConfig {
            dir: place.data_dir.join("jobs"),
            workers: 1,
            export_retention: time::Duration::hours(24),
        },
    )
    .map_err(fail)?;
    Ok(Opened {
        _dir: dir,
        jobs,
        catalog,
        ns: Namespace {
            tenant: tenant.id,
            environment: if test {
                Environment::Test
            } else {
                Environment::Live
            },
        },
    })
}

impl Opened {
    fn close(self) {
        self.jobs.shutdown();
        self.catalog.close_search();
    }
}

/// Shows a job's progress until `done` says it is through.
fn follow(
    o: &Opened,
    kind: JobKind,
    id: uuid::Uuid,
    what: &str,
    done: impl Fn(&JobRecord) -> bool,
) -> Result<JobRecord, StartError> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} rows ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_owned());
        bar
    });
    let mut last_line = std::time::Instant::now();
    loop {
        let job = o.jobs.get(o.ns, kind, id).map_err(api_err)?;
        if let Some(bar) = &bar {
            bar.set_length(job.total_rows.unwrap_or(0));
            bar.set_position(job.processed_rows);
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "pixee-pim: {what}: {} ({} of {} rows)",
                job.status.as_str(),
                job.processed_rows,
                job.total_rows.map_or("?".into(), |t| t.to_string())
            );
            last_line = std::time::Instant::now();
        }
        if done(&job) {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(job);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn run_import(place: &Place, args: ImportArgs<'_>) -> Result<(), StartError> {
    let file_name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let o = open(place, args.tenant, args.test)?;
    let (id, part) = o.jobs.upload_target();
    std::fs::copy(args.file, &part)
        .map_err(|e| fail(format!("cannot read {}: {e}", args.file.display())))?;
    let form = ImportForm {
        supplier_code: args.supplier_code,
        skip_header_rows: args.skip_header_rows,
        dry_run: args.dry_run,
        ..ImportForm::default()
    };
    o.jobs
        .create_import(o.ns, id, &part, &file_name, form, "cli".into())
        .map_err(api_err)?;
    let analysed = follow(&o, JobKind::Import, id, "analysing", |j| {
        !matches!(j.status, JobStatus::Pending | JobStatus::Analyzing)
    })?;
    if analysed.status == JobStatus::Failed {
        let reason = analysed.error.unwrap_or_default();
        o.close();
        return Err(fail(format!("the import failed: {reason}")));
    }
    let mut mapping: BTreeMap<String, String> = analysed.import.mapping.clone();
    for pair in args.mapping {
        let (header, field) = pair
            .split_once('=')
            .ok_or_else(|| fail(format!("--mapping takes Header=field, not {pair:?}")))?;
        mapping.retain(|_, f| f != field.trim());
        mapping.insert(header.trim().to_owned(), field.trim().to_owned());
    }
    let mapped = o.jobs.set_mapping(o.ns, id, mapping).map_err(api_err)?;
    if mapped.status != JobStatus::Ready {
        o.close();
        return Err(fail(format!(
            "map a column to ean and one to name with --mapping Header=field (columns: {})",
            mapped.import.headers.join(", ")
        )));
    }
    o.jobs.process(o.ns, id).map_err(api_err)?;
    let job = follow(&o, JobKind::Import, id, "importing", |j| {
        j.status.is_final()
    })?;
    o.close();
    eprintln!(
        "pixee-pim: import {}: {} rows, {} created, {} updated, {} failed{}",
        job.status.as_str(),
        job.processed_rows,
        job.created_rows,
        job.updated_rows,
        job.failed_rows,
        if job.import.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    println!("{id}");
    match job.status {
        JobStatus::Completed => Ok(()),
        _ => Err(fail(format!(
            "the import {}: {}",
            job.status.as_str(),
            job.error.unwrap_or_default()
        ))),
    }
}

pub(super) fn run_export(place: &Place, args: ExportArgs<'_>) -> Result<(), StartError> {
    let (format, json_lines) = match args.format {
        "csv" => ("csv", false),
        "json" => ("json", false),
        "ndjson" | "jsonl" => ("json", true),
        "xlsx" => ("xlsx", false),
        other => {
            return Err(fail(format!(
                "--format must be csv, json, ndjson or xlsx, not {other}"
            )));
        }
    };
    let o = open(place, args.tenant, args.test)?;
    let request = ExportRequest {
        format: format.into(),
        search: args
            .search
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty()),
        utf8_bom: !args.no_bom,
        pretty: true,
        json_lines,
        include_sheets: vec!["products".into(), "suppliers".into()],
        ..ExportRequest::default()
    };
    let job = o
        .jobs
        .create_export(o.ns, request, "cli".into())
        .map_err(api_err)?;
    let job = follow(&o, JobKind::Export, job.id, "exporting", |j| {
        j.status.is_final()
    })?;
    let result = match job.status {
        JobStatus::Completed => o
            .jobs
            .download(o.ns, job.id)
            .map_err(api_err)
            .and_then(|d| {
                std::fs::copy(&d.path, args.out)
                    .map_err(|e| fail(format!("cannot write {}: {e}", args.out.display())))
            })
            .map(|_| {
                eprintln!(
                    "pixee-pim: exported {} products to {}",
                    job.total_rows.unwrap_or(0),
                    args.out.display()
                )
            }),
        _ => Err(fail(format!(
            "the export {}: {}",
            job.status.as_str(),
            job.error.unwrap_or_default()
        ))),
    };
    o.close();
    result
}
