//! Logging: one line per request plus warnings and errors, to stderr. `RUST_LOG` overrides the
//! level. Nothing logs secrets: keys appear as hints, passwords and tokens never.
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sled=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
