//! Maintenance commands: backup, restore and the synthetic seed used by benchmarks.
use super::{api_err, fail};
use crate::auth::Auth;
use crate::auth::lockout::LockoutState;
use crate::domain::Environment;
use crate::startup::{DataDir, Place, StartError};
use crate::store::{CheckReport, backup};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub(super) async fn seed(
    data_dir: &Path,
    auth: &Auth,
    tenant: &str,
    env: Environment,
    keys: u64,
    products: u64,
) -> Result<(), StartError> {
    let tenant = auth.find_tenant(tenant).map_err(api_err)?;
    let now = auth.now();
    crate::seed::keys(&auth.store, tenant.id, env, keys, now).map_err(api_err)?;
    let ns = crate::store::Namespace {
        tenant: tenant.id,
        environment: env,
    };
    crate::seed::products(&auth.store, ns, products, now).map_err(api_err)?;
    auth.store.flush().await.map_err(fail)?;
    if products > 0 {
        // Written around the search index: the next start (or `reindex`) builds it again.
        crate::search::remove(&crate::search::index_dir(data_dir)).map_err(fail)?;
    }
    eprintln!(
        "pixee-pim: seeded {keys} keys and {products} products into {}",
        tenant.name
    );
    Ok(())
}

pub(super) fn run_backup(place: &Place, out: &Path, online: bool) -> Result<(), StartError> {
    // Offline: the store is opened (and locked) first, so a running server is refused with
    // the exit code of a locked data dir before any file is written.
    let offline = if online {
        None
    } else {
        let dir = DataDir::open_place(place, 16)?;
        check_store(&dir, place)?;
        Some(dir)
    };
    // FILE.partial, created new (never through a file or link already there) and private.
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(format!("cannot replace {}: {e}", tmp.display()))),
    }
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail(format!("cannot write {}: {e}", tmp.display())))?,
    );
    let written = match &offline {
        Some(dir) => backup::write(&dir.store, &mut file)
            .map(Some)
            .map_err(|e| e.to_string()),
        None => crate::admin::request_backup(&place.data_dir, &mut file).map(|_| None),
    };
    let finished = written.and_then(|n| {
        let file = file.into_inner().map_err(|e| e.error().to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        // A stream cut short (the server stopped) lacks its checksum: never renamed into place.
        let bytes = backup::verify(&mut std::io::BufReader::new(
            std::fs::File::open(&tmp).map_err(|e| e.to_string())?,
        ))
        .map_err(|e| format!("the backup is incomplete: {e}"))?;
        Ok((n, bytes))
    });
    let (n, bytes) = match finished {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e));
        }
    };
    std::fs::rename(&tmp, out).map_err(fail)?;
    match n {
        Some(n) => eprintln!(
            "pixee-pim: backup of {n} entries written to {}",
            out.display()
        ),
        None => eprintln!(
            "pixee-pim: online backup ({bytes} bytes) written to {}",
            out.display()
        ),
    }
    Ok(())
}

/// `pixee-pim check`: prints the records of each tree, then `ok`; a damaged store exits 1.
pub(super) fn run_check(place: &Place) -> Result<(), StartError> {
    let dir = DataDir::open_place(place, 16)?;
    let report = check_store(&dir, place)?;
    for (tree, n) in &report.trees {
        println!("{tree}\t{n}");
    }
    let index = crate::search::index_dir(&place.data_dir);
    if index.exists() {
        let found = crate::search::verify(&index, &dir.store).map_err(fail)?;
        println!("search index\t{}", found.indexed);
        if found.pending > 0 {
            println!(
                "search index, caught up at the next start\t{}",
                found.pending
            );
        }
        if !found.is_clean() {
            return Err(fail(format!(
                "the search index disagrees with the store: {} products missing, {} stale, {} \
                 documents of no product (a start catches up after a crash; \
                 `pixee-pim reindex` rebuilds it)",
                found.missing, found.stale, found.extra
            )));
        }
    } else {
        println!("search index\tnone (built at the next start)");
    }
    println!("ok: {} records checked", report.total());
    Ok(())
}

/// `pixee-pim reindex`: builds the search index from scratch from the store.
pub(super) fn run_reindex(place: &Place) -> Result<(), StartError> {
    let dir = DataDir::open_place(place, 64)?;
    let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
    let started = std::time::Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let n = crate::search::rebuild(
        &crate::search::index_dir(&place.data_dir),
        &dir.store,
        &clock,
        |n| {
            if tty && n.is_multiple_of(100_000) {
                eprintln!("pixee-pim: {n} products indexed");
            }
        },
    )
    .map_err(fail)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "pixee-pim: search index rebuilt: {n} products in {secs:.1} s ({:.0} products/s)",
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn check_store(dir: &DataDir, place: &Place) -> Result<CheckReport, StartError> {
    dir.store
        .check_integrity::<LockoutState>()
        .map_err(|e| fail(format!("the store in {} is damaged: {e}", place)))
}

/// `pixee-pim migrate --from-data-dir DIR --database-url URL`: checks the sled store in DIR,
/// copies it into the PostgreSQL database (which must hold no record), then checks the copy
/// and compares the two reports tree by tree.
pub(super) fn run_migrate(from: &Path, to: &Place) -> Result<(), StartError> {
    if to.database_url.is_none() {
        return Err(fail(
            "migrate needs --database-url (or PIXEE_DATABASE_URL): the PostgreSQL database to copy into",
        ));
    }
    let source_place = Place {
        data_dir: from.to_path_buf(),
        database_url: None,
    };
    let source = DataDir::open(from, 64)?;
    let before = check_store(&source, &source_place)?;
    // The usual case copies into the data dir the server will keep using (the service's own):
    // its lock is already held here.
    let same_dir = std::fs::canonicalize(from).ok() == std::fs::canonicalize(&to.data_dir).ok();
    let (target, _target_dir) = if same_dir {
        let url = to.database_url.as_deref().unwrap_or_default();
        (
            crate::startup::open_postgres_store(from, url, 4, crate::store::Role::Alone)?,
            None,
        )
    } else {
        let dir = DataDir::open_place(to, 16)?;
        (dir.store.clone(), Some(dir))
    };
    if !target.is_empty().map_err(fail)? {
        return Err(fail(
            "the PostgreSQL database already holds records: migrate copies into an empty one only",
        ));
    }
    let started = std::time::Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let copied = backup::copy_store(&source.store, &target, |n| {
        if tty && n > 0 && n.is_multiple_of(100_000) {
            eprintln!("pixee-pim: {n} records copied");
        }
    })
    .map_err(|e| {
        fail(format!(
            "the copy failed (empty the database before trying again): {e}"
        ))
    })?;
    let after = target
        .check_integrity::<LockoutState>()
        .map_err(|e| fail(format!("the copy in PostgreSQL is damaged: {e}")))?;
    if after.trees != before.trees {
        return Err(fail(format!(
            "the copy differs from the source: {:?} against {:?}",
            after.trees, before.trees
        )));
    }
    eprintln!(
        "pixee-pim: copied {copied} records from {} into PostgreSQL in {:.1} s; both check clean",
        from.display(),
        started.elapsed().as_secs_f64()
    );
    println!("ok: {} records checked", after.total());
    Ok(())
}

pub(super) fn run_restore(place: &Place, from: &Path) -> Result<(), StartError> {
    let mut input = std::fs::File::open(from)
        .map_err(|e| fail(format!("cannot read {}: {e}", from.display())))?;
    let dir = DataDir::open_place(place, 16)?;
    if !dir.store.is_empty().map_err(fail)? {
        return Err(fail(format!(
            "restore needs an empty data dir; {} already holds a store",
            place
        )));
    }
    let n = backup::restore(&dir.store, &mut input).map_err(fail)?;
    // The index is derived data: the first start builds it from the restored store.
    crate::search::remove(&crate::search::index_dir(&place.data_dir)).map_err(fail)?;
    eprintln!("pixee-pim: restored {n} entries into {}", place);
    Ok(())
}
