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
    eprintln!(
        "pixee-pim: seeded {keys} keys and {products} products into {}",
        tenant.name
    );
    Ok(())
}

pub(super) fn run_backup(data_dir: &Path, out: &Path) -> Result<(), StartError> {
    let dir = DataDir::open(data_dir, 16)?;
    check_store(&dir, data_dir)?;
    let tmp = out.with_extension("partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail(format!("cannot write {}: {e}", tmp.display())))?,
    );
    let n = backup::write(&dir.store, &mut file).map_err(fail)?;
    let file = file.into_inner().map_err(|e| fail(e.error()))?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, out).map_err(fail)?;
    eprintln!(
        "pixee-pim: backup of {n} entries written to {}",
        out.display()
    );
    Ok(())
}

/// `pixee-pim check`: prints the records of each tree, then `ok`; a damaged store exits 1.
pub(super) fn run_check(data_dir: &Path) -> Result<(), StartError> {
    let dir = DataDir::open(data_dir, 16)?;
    let report = check_store(&dir, data_dir)?;
    for (tree, n) in &report.trees {
        println!("{tree}\t{n}");
    }
    println!("ok: {} records checked", report.total());
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
    eprintln!(
        "pixee-pim: restored {n} entries into {}",
        data_dir.display()
    );
    Ok(())
}
