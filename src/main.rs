//! Entry point: parse the command line, start logging, dispatch, map failures to an exit code
//! and one readable line on stderr.
// One call into the allocator below is the binary's only `unsafe`; the library forbids it.
#![deny(unsafe_code)]
use clap::Parser;
use pixee_pim::cli::{Cli, run};

// The `system-allocator` feature keeps the C library's malloc, so that heap profilers which
// hook it (heaptrack) see every allocation; docs/PERFORMANCE.md says how it is used.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the memory freed so far to the operating system at once. mimalloc otherwise does so
/// only on later allocator activity, and a server idle after start-up has none: the pages sled
/// freed while opening the store stayed resident (about 22 MiB on a 100 000-product store).
#[allow(unsafe_code)]
fn release_free_memory() {
    #[cfg(not(feature = "system-allocator"))]
    // SAFETY: `mi_collect` takes a flag, touches only the allocator's own state, and may be
    // called from any thread at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
}

fn main() {
    pixee_pim::startup::on_free_memory_release(release_free_memory);
    let cli = Cli::parse();
    pixee_pim::telemetry::init(cli.log_format);
    let result = actix_web::rt::System::new().block_on(run(cli));
    if let Err(e) = result {
        eprintln!("pixee-pim: {e}");
        std::process::exit(e.exit_code());
    }
}
