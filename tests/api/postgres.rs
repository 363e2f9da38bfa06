//! A throwaway PostgreSQL cluster for this test run: `initdb` in a temporary directory (as the
//! `postgres` user when the tests run as root, since `initdb` refuses root), listening on a
//! free loopback port and a private socket directory, stopped when the test process exits.
//! Every test app gets a database of its own in it.
//!
//! The API suite runs on PostgreSQL when `PIXEE_TEST_STORE=postgres` (`scripts/test` runs it
//! both ways); the tests that are about PostgreSQL itself start the cluster whatever it says.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Cluster {
    pub port: u16,
    /// Outlives this process on purpose: it stops the cluster once the process is gone.
    _watchdog: Option<std::process::Child>,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

/// Whether this run keeps the API suite's stores in PostgreSQL.
pub fn selected() -> bool {
    std::env::var("PIXEE_TEST_STORE").is_ok_and(|v| v == "postgres")
}

pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// A new, empty database in the run's cluster; its URL.
pub fn fresh_database() -> String {
    cluster().fresh_database()
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/test installs Debian's postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Cluster {
    /// A cluster of its own (the run's shared one is [`cluster`]).
    pub fn start() -> Cluster {
        let bin = bin_dir();
        let as_postgres = rustix::process::geteuid().is_root();
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pixee-pg-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut c = Cluster {
            _watchdog: None,
            port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&c.dir)
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown of the cluster dir to postgres");
        }
        let data = c.dir.join("data");
        c.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        c.pg_ctl("start");
        // Stop the cluster and remove it when this process ends, however it ends. The watchdog
        // runs as this process's user, which may signal it (the cluster's user may not).
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {as_user}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            as_user = if as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = path(&c.bin.join("pg_ctl")),
            data = path(&data),
            dir = path(&c.dir),
        );
        let mut watchdog = Command::new("sh");
        watchdog.args(["-c", &stop]);
        watchdog
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c._watchdog = Some(watchdog.spawn().expect("the cluster's watchdog starts"));
        c
    }

    /// A new, empty database in this cluster; its URL.
    pub fn fresh_database(&self) -> String {
        // One sequence for every cluster of this process: names never collide.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs one SQL statement through psql and returns what it printed (unaligned, no header).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// pg_ctl on this cluster (e.g. `restart`, `stop`), waiting for it.
    pub fn pg_ctl(&self, action: &str) {
        let data = self.dir.join("data");
        if action != "start" {
            self.run("pg_ctl", &["-D", path(&data), "-m", "fast", "-w", action]);
            return;
        }
        // Loopback and a private socket directory only; room for every test app's pool.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=2000 \
             -c log_min_error_statement=panic -c shared_buffers=64MB -c log_min_messages=warning",
            self.port,
            path(&self.dir)
        );
        let log = self.dir.join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    fn command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let out = self
            .command(path(&program))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("{tool} runs: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
