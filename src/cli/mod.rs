//! The command line: `serve` and the admin subcommands. Admin subcommands take the data-dir
//! lock without waiting, so they fail at once (exit 2) while a server holds the directory.
use crate::auth::Auth;
use crate::auth::api_keys::{NewKeyRequest, validate_expiry, validate_name};
use crate::auth::passwords::HashCost;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{DEFAULT_DATA_DIR, ServeArgs, Settings, merge_config_file};
use crate::domain::{Environment, KeyId, Role, ScopeSet};
use crate::startup::{Application, DataDir, Place, StartError, build_auth};
use crate::store::Membership;
use clap::{CommandFactory, Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

mod maintenance;
mod transfer;
use maintenance::{run_backup, run_check, run_migrate, run_reindex, run_restore, seed};

#[derive(Debug, Parser)]
#[command(
    name = "pixee-pim",
    version,
    about = "The Pixee PIM API in one self-hosted binary"
)]
pub struct Cli {
    /// Data directory (one sled database)
    #[arg(long, global = true, env = "PIXEE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Keep the records in this PostgreSQL database instead of sled in the data dir
    /// (postgres://user:password@host/db; the data dir still holds the search index). Prefer
    /// the environment variable or the config file: a flag shows in the process list
    #[arg(
        long,
        global = true,
        env = "PIXEE_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Log lines as text or as one JSON object per line (for log shippers)
    #[arg(
        long,
        global = true,
        env = "PIXEE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: crate::telemetry::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and the settings page
    Serve(Box<ServeArgs>),
    /// Manage tenants
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage users
    #[command(subcommand)]
    User(UserCmd),
    /// Manage API keys
    #[command(subcommand)]
    Key(KeyCmd),
    /// Write a consistent copy of the whole store to FILE (the server must be stopped, unless
    /// --online)
    Backup {
        #[arg(long)]
        out: PathBuf,
        /// Ask the server running on this data dir for a point-in-time copy while it keeps
        /// serving and writing (through its admin socket; run as the server's user or root)
        #[arg(long)]
        online: bool,
    },
    /// Check that every record decodes and every index agrees (the server must be stopped)
    Check,
    /// Copy the sled store of another data dir into the empty PostgreSQL database of
    /// --database-url (both servers stopped); refuses a database that holds any record
    Migrate {
        /// The data dir whose sled store is copied
        #[arg(long)]
        from_data_dir: PathBuf,
    },
    /// Print shell completions for bash, zsh or fish (e.g. `pixee-pim completions bash >
    /// /etc/bash_completion.d/pixee-pim`)
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the man page (roff), e.g. `pixee-pim man | gzip > pixee-pim.1.gz`; with
    /// --out-dir, write it and one page per subcommand (pixee-pim-serve.1, …) there
    Man {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Ask a running server whether it is ready (GET /readyz): exit 0 when it is, 1 when not
    /// (for container and systemd health checks)
    Healthcheck {
        /// The server's base URL [default: http:// and PIXEE_LISTEN, or 127.0.0.1:8080]
        #[arg(long)]
        url: Option<String>,
        /// Accept any TLS certificate (a self-signed one on this machine)
        #[arg(long)]
        insecure: bool,
    },
    /// Rebuild the search index from the store (the server must be stopped)
    Reindex,
    /// Load a backup into an empty data dir
    Restore {
        #[arg(long)]
        from: PathBuf,
    },
    /// Import products from a CSV, JSON, NDJSON or XLSX file (the server must be stopped);
    /// rows upsert by EAN. Prints the job id.
    Import {
        file: PathBuf,
        /// Tenant id or name
        #[arg(long)]
        tenant: String,
        /// Into the test environment instead of live
        #[arg(long)]
        test: bool,
        /// Column mappings laid over the detected ones: Header=field (repeat or separate with commas)
        #[arg(long, value_delimiter = ',')]
        mapping: Vec<String>,
        /// Check every row and report what would change; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Rows before the header row
        #[arg(long, default_value_t = 0)]
        skip_header_rows: u32,
        /// Supplier (by code) of every row that names none
        #[arg(long)]
        supplier_code: Option<String>,
    },
    /// Export a tenant's products to a file (the server must be stopped)
    Export {
        /// Tenant id or name
        #[arg(long)]
        tenant: String,
        /// From the test environment instead of live
        #[arg(long)]
        test: bool,
        #[arg(long, value_parser = ["csv", "json", "ndjson", "xlsx"])]
        format: String,
        #[arg(long)]
        out: PathBuf,
        /// Only products matching this search
        #[arg(long)]
        search: Option<String>,
        /// CSV without the UTF-8 byte-order mark
        #[arg(long)]
        no_bom: bool,
    },
    /// Bulk-load synthetic keys and products (for benchmarks; not for production data)
    #[command(hide = true)]
    Seed {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value_t = 0)]
        keys: u64,
        #[arg(long, default_value_t = 0)]
        products: u64,
        /// Seed the test environment instead of live
        #[arg(long)]
        test: bool,
    },
}

/// The shells `completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant; prints its id
    Create {
        #[arg(long)]
        name: String,
    },
    /// List tenants
    List,
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user (password from stdin or PIXEE_PASSWORD, never from argv)
    Create {
        #[arg(long)]
        email: String,
        /// Tenant id or name
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = ["admin", "editor", "viewer"])]
        role: String,
        #[arg(long)]
        superadmin: bool,
    },
    /// Lift a login lock
    Unlock {
        #[arg(long)]
        email: String,
    },
    /// Set a user's password (from stdin or PIXEE_PASSWORD, never from argv); ends every
    /// session of the user and lifts a login lock
    SetPassword {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a key; prints the raw key once, alone on its line
    Create {
        /// Tenant id or name
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// Comma-separated scopes, e.g. products:read,products:write
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// A pm_test_ key (test environment)
        #[arg(long)]
        test: bool,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List a tenant's keys (never the keys themselves)
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key by id
    Revoke { id: String },
    /// Rotate a key by id: the old secret stops working at once; prints the new key once,
    /// alone on its line
    Rotate { id: String },
}

/// Runs the command; `Err` carries the exit code and the one line for stderr.
pub async fn run(cli: Cli) -> Result<(), StartError> {
    let place = Place {
        data_dir: cli.data_dir.clone(),
        database_url: cli.database_url.clone().filter(|u| !u.is_empty()),
    };
    match cli.command {
        Command::Serve(mut args) => {
            if place.database_url.is_some() {
                args.database_url = place.database_url;
            }
            serve(cli.data_dir, *args).await
        }
        Command::Backup { out, online } => run_backup(&place, &out, online),
        Command::Restore { from } => run_restore(&place, &from),
        Command::Check => run_check(&place),
        Command::Migrate { from_data_dir } => run_migrate(&from_data_dir, &place),
        Command::Healthcheck { url, insecure } => healthcheck(url, insecure).await,
        Command::Completions { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "pixee-pim", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out_dir: None } => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(fail),
        Command::Man { out_dir: Some(dir) } => clap_mangen::generate_to(Cli::command(), &dir)
            .map_err(|e| {
                fail(format!(
                    "cannot write the man pages to {}: {e}",
                    dir.display()
                ))
            }),
        Command::Reindex => run_reindex(&place),
        Command::Import {
            file,
            tenant,
            test,
            mapping,
            dry_run,
            skip_header_rows,
            supplier_code,
        } => {
            run_blocking(move || {
                transfer::run_import(
                    &place,
                    transfer::ImportArgs {
                        file: &file,
                        tenant: &tenant,
                        test,
                        mapping: &mapping,
                        dry_run,
                        skip_header_rows,
                        supplier_code,
                    },
                )
            })
            .await
        }
        Command::Export {
            tenant,
            test,
            format,
            out,
            search,
            no_bom,
        } => {
            run_blocking(move || {
                transfer::run_export(
                    &place,
                    transfer::ExportArgs {
                        tenant: &tenant,
                        test,
                        format: &format,
                        out: &out,
                        search,
                        no_bom,
                    },
                )
            })
            .await
        }
        other => admin(&place, other).await,
    }
}

/// Runs a long foreground command off the async runtime (it waits on threads and files).
async fn run_blocking(
    f: impl FnOnce() -> Result<(), StartError> + Send + 'static,
) -> Result<(), StartError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StartError::Other(e.to_string()))?
}

fn fail(e: impl std::fmt::Display) -> StartError {
    StartError::Other(e.to_string())
}

async fn serve(data_dir: PathBuf, args: ServeArgs) -> Result<(), StartError> {
    let mut args = merge_config_file(args).map_err(StartError::Other)?;
    args.admin_password = std::env::var("PIXEE_ADMIN_PASSWORD").ok();
    let settings = Settings::resolve(data_dir, args);
    let clock: SharedClock = Arc::new(SystemClock);
    let app = Application::build(settings.clone(), clock, HashCost::PRODUCTION).await?;
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{}/settings/", settings.listen);
    if let Some(boot) = &app.bootstrap {
        eprintln!(
            "pixee-pim: first start: created tenant 'default' and superadmin {}",
            boot.admin_email
        );
        if let Some(pw) = &boot.generated_password {
            eprintln!("pixee-pim: generated admin password (shown once, store it now): {pw}");
        }
        eprintln!("pixee-pim: settings page: {url}");
    }
    tracing::info!(listen = %settings.listen, data_dir = %settings.data_dir.display(), "pixee-pim {} serving on {scheme}://{}", env!("CARGO_PKG_VERSION"), settings.listen);
    app.run_until_stopped().await.map_err(fail)
}

/// GET `<url>/readyz` within 5 s: `Ok` on 200, else the reason (exit 1).
async fn healthcheck(url: Option<String>, insecure: bool) -> Result<(), StartError> {
    let base = url.unwrap_or_else(|| {
        let listen = std::env::var("PIXEE_LISTEN")
            .unwrap_or_else(|_| crate::config::DEFAULT_LISTEN.to_owned());
        format!("http://{listen}")
    });
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .danger_accept_invalid_certs(insecure)
        .build()
        .map_err(fail)?;
    let target = format!("{}/readyz", base.trim_end_matches('/'));
    let response = client
        .get(&target)
        .send()
        .await
        .map_err(|e| fail(format!("{target}: no answer ({e})")))?;
    let status = response.status();
    if status.is_success() {
        println!("ready");
        return Ok(());
    }
    let detail = response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|b| b["detail"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Err(fail(format!("{target}: {status} {detail}")))
}

fn open_admin(place: &Place) -> Result<(DataDir, Auth), StartError> {
    let dir = DataDir::open_place(place, 16)?;
    let settings = Settings::defaults(place.data_dir.clone());
    let auth = build_auth(
        &dir.store,
        &settings,
        Arc::new(SystemClock),
        HashCost::PRODUCTION,
    )?;
    Ok((dir, auth))
}

fn read_password() -> Result<String, StartError> {
    if let Ok(pw) = std::env::var("PIXEE_PASSWORD") {
        return Ok(pw);
    }
    let mut input = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut input)
        .map_err(fail)?;
    let pw = input.strip_suffix('\n').unwrap_or(&input);
    Ok(pw.strip_suffix('\r').unwrap_or(pw).to_owned())
}

fn api_err(e: crate::error::Error) -> StartError {
    let mut line = e.detail;
    for f in e.errors.iter() {
        line = format!("{}: {}", f.field, f.message);
    }
    StartError::Other(line)
}

fn find_user(auth: &Auth, email: &str) -> Result<crate::store::UserRecord, StartError> {
    let email = crate::domain::Email::normalize(email);
    auth.store
        .user_by_email(&email)
        .map_err(fail)?
        .ok_or_else(|| fail(format!("no user with email {email}")))
}

fn find_key(auth: &Auth, id: &str) -> Result<crate::store::ApiKeyRecord, StartError> {
    let id = KeyId::parse(id).ok_or_else(|| fail("the key id must be a UUID"))?;
    auth.store
        .api_key(id)
        .map_err(fail)?
        .ok_or_else(|| fail("no such key"))
}

async fn admin(place: &Place, cmd: Command) -> Result<(), StartError> {
    let (_dir, auth) = open_admin(place)?;
    match cmd {
        Command::Tenant(TenantCmd::Create { name }) => {
            let t = auth.create_tenant(&name).map_err(api_err)?;
            auth.store.flush().await.map_err(fail)?;
            println!("{}", t.id);
        }
        Command::Tenant(TenantCmd::List) => {
            for t in auth.store.list_tenants().map_err(fail)? {
                println!("{}\t{}", t.id, t.name);
            }
        }
        Command::User(UserCmd::Create {
            email,
            tenant,
            role,
            superadmin,
        }) => {
            let tenant = auth.find_tenant(&tenant).map_err(api_err)?;
            let role = Role::parse(&role).map_err(|e| fail(e.message))?;
            let password = read_password()?;
            let user = auth
                .create_user(
                    &email,
                    password,
                    vec![Membership {
                        tenant: tenant.id,
                        role,
                    }],
                    superadmin,
                )
                .await
                .map_err(api_err)?;
            println!("{}", user.id);
        }
        Command::User(UserCmd::Unlock { email }) => {
            let user = find_user(&auth, &email)?;
            let was_locked = auth
                .unlock(&user, None, "cli", None)
                .await
                .map_err(api_err)?;
            println!(
                "{}",
                if was_locked {
                    "unlocked"
                } else {
                    "was not locked; failure count cleared"
                }
            );
        }
        Command::User(UserCmd::SetPassword { email }) => {
            let user = find_user(&auth, &email)?;
            let password = read_password()?;
            auth.set_password(&user, password, "cli")
                .await
                .map_err(api_err)?;
            println!("password set for {}; every session ended", user.email);
        }
        Command::Key(KeyCmd::Rotate { id }) => {
            let key = find_key(&auth, &id)?;
            let issued = auth
                .rotate_key(key.tenant, key.id, 0, None, "cli", None)
                .await
                .map_err(api_err)?;
            println!("{}", issued.raw);
        }
        Command::Key(KeyCmd::Create {
            tenant,
            name,
            scopes,
            test,
            expires_in_days,
        }) => {
            let tenant = auth.find_tenant(&tenant).map_err(api_err)?;
            let now = auth.now();
            let expires_at = expires_in_days.map(|d| now + time::Duration::days(i64::from(d)));
            let issued = auth
                .create_key(NewKeyRequest {
                    tenant: tenant.id,
                    environment: if test {
                        Environment::Test
                    } else {
                        Environment::Live
                    },
                    name: validate_name(&name).map_err(|e| fail(e.to_string()))?,
                    scopes: ScopeSet::parse_list(&scopes).map_err(|e| fail(e.to_string()))?,
                    expires_at: validate_expiry(expires_at, now)
                        .map_err(|e| fail(e.to_string()))?,
                    created_by: "cli".into(),
                    ip: None,
                    extra_tenants: Vec::new(),
                })
                .await
                .map_err(api_err)?;
            println!("{}", issued.raw);
        }
        Command::Key(KeyCmd::List { tenant }) => {
            let tenant = auth.find_tenant(&tenant).map_err(api_err)?;
            for k in auth.store.list_api_keys(tenant.id).map_err(fail)? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.name,
                    k.environment.as_str(),
                    k.hint,
                    k.scopes.names().join(","),
                    state
                );
            }
        }
        Command::Key(KeyCmd::Revoke { id }) => {
            let key = find_key(&auth, &id)?;
            auth.revoke_key(key.tenant, key.id, "cli", None)
                .await
                .map_err(api_err)?;
            println!("revoked {}", key.hint);
        }
        Command::Seed {
            tenant,
            keys,
            products,
            test,
        } => {
            let env = if test {
                Environment::Test
            } else {
                Environment::Live
            };
            seed(&place.data_dir, &auth, &tenant, env, keys, products).await?;
        }
        Command::Serve(_)
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Check
        | Command::Migrate { .. }
        | Command::Healthcheck { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Reindex
        | Command::Import { .. }
        | Command::Export { .. } => {}
    }
    Ok(())
}
