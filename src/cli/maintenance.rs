//! Maintenance commands: backup, restore and the synthetic seed used by benchmarks.
use super::{api_err, fail};
use crate::auth::Auth;
use crate::auth::lockout::LockoutState;
use crate::domain::Environment;
use crate::startup::{DataDir, StartError};
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

pub(super) fn run_backup(data_dir: &Path, out: &Path, online: bool) -> Result<(), StartError> {
    // Offline: the store is opened (and locked) first, so a running server is refused with
    // the exit code of a locked data dir before any file is written.
    let offline = if online {
        None
    } else {
        let dir = DataDir::open(data_dir, 16)?;
        check_store(&dir, data_dir)?;
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
        None => crate::admin::request_backup(data_dir, &mut file).map(|_| None),
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
pub(super) fn run_check(data_dir: &Path) -> Result<(), StartError> {
    let dir = DataDir::open(data_dir, 16)?;
    let report = check_store(&dir, data_dir)?;
    for (tree, n) in &report.trees {
        println!("{tree}\t{n}");
    }
    let index = crate::search::index_dir(data_dir);
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
pub(super) fn run_reindex(data_dir: &Path) -> Result<(), StartError> {
    let dir = DataDir::open(data_dir, 64)?;
    let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
    let started = std::time::Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let n = crate::search::rebuild(
        &crate::search::index_dir(data_dir),
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

fn check_store(dir: &DataDir, data_dir: &Path) -> Result<CheckReport, StartError> {
    dir.store.check_integrity::<LockoutState>().map_err(|e| {
        fail(format!(
            "the store in {} is damaged: {e}",
            data_dir.display()
        ))
    })
}

pub(super) fn run_restore(data_dir: &Path, from: &Path) -> Result<(), StartError> {
    let mut input = std::fs::File::open(from)
        .map_err(|e| fail(format!("cannot read {}: {e}", from.display())))?;
    let dir = DataDir::open(data_dir, 16)?;
    if !dir.store.is_empty().map_err(fail)? {
        return Err(fail(format!(
            "restore needs an empty data dir; {} already holds a store",
            data_dir.display()
        )));
    }
    let n = backup::restore(&dir.store, &mut input).map_err(fail)?;
    // The index is derived data: the first start builds it from the restored store.
    crate::search::remove(&crate::search::index_dir(data_dir)).map_err(fail)?;
    eprintln!(
        "pixee-pim: restored {n} entries into {}",
        data_dir.display()
    );
    Ok(())
}
