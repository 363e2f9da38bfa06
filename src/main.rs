//! Entry point: parse the command line, start logging, dispatch, map failures to an exit code
//! and one readable line on stderr.
#![deny(unsafe_code)]
use clap::Parser;
use pixee_pim::cli::{Cli, run};

fn main() {
    cap_malloc_arenas();
    let cli = Cli::parse();
    pixee_pim::telemetry::init();
    let result = actix_web::rt::System::new().block_on(run(cli));
    if let Err(e) = result {
        eprintln!("pixee-pim: {e}");
        std::process::exit(e.exit_code());
    }
}

/// One malloc arena instead of glibc's default of eight per core. Under write churn (sled's
/// IO threads, the blocking pool and the workers each allocating) the many arenas fragment: a
/// 10-minute soak at half capacity grew from 332 to 472 MiB with the default, and stayed flat at
/// 181 MiB with one arena (docs/SECURITY.md, "Soak"). Small allocations still come from each
/// thread's cache without a lock. `MALLOC_ARENA_MAX` in the environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; it runs before any other thread
        // exists, and a refusal (return value 0) leaves the default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}
