//! Entry point: parse the command line, start logging, dispatch, map failures to an exit code
//! and one readable line on stderr.
#![forbid(unsafe_code)]
use clap::Parser;
use pixee_pim::cli::{Cli, run};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    pixee_pim::telemetry::init();
    let result = actix_web::rt::System::new().block_on(run(cli));
    if let Err(e) = result {
        eprintln!("pixee-pim: {e}");
        std::process::exit(e.exit_code());
    }
}
