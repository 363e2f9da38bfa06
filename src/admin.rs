//! The admin socket: `<data dir>/admin.sock`, a Unix socket the running server listens on for
//! commands only the machine's operator may give. Today one: `backup`, which streams a
//! point-in-time copy of the store (`pixee-pim backup --online`).
//!
//! Who may connect: the socket is created mode 0600 in the data dir, and each connection's
//! peer credentials are checked — only the server's own user and root are served. Those are
//! exactly the accounts that can read the data dir, and so the store, anyway; no password or
//! token has to be kept in a cron job or a backup script (docs/DECISIONS.md, "Online backup").
//!
//! Protocol: the client sends one line (`backup\n`); the server answers `OK\n` followed by the
//! backup file (which ends in its SHA-256, so a cut-off stream is detected), or `ERR <reason>\n`.
use crate::store::Store;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const SOCKET_NAME: &str = "admin.sock";
/// How often the listener looks for a client (and for the order to stop).
const POLL: Duration = Duration::from_millis(100);

/// The listening socket and its thread; dropping it stops both and removes the socket file.
pub struct AdminSocket {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminSocket {
    /// Listens at `<data_dir>/admin.sock` (a socket left by a server that died is replaced:
    /// the store's lock says no other server runs on this data dir).
    pub fn start(data_dir: &Path, store: Store) -> std::io::Result<AdminSocket> {
        let path = data_dir.join(SOCKET_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Spool files of backups a crash interrupted.
        for entry in std::fs::read_dir(data_dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("backup-") && name.ends_with(".spool") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        // Polled, so stopping needs nothing from the file system (the socket file may be gone
        // by then, with the data dir of a test).
        listener.set_nonblocking(true)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let spool = data_dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("admin-socket".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        // One at a time: a second backup waits for the first.
                        Ok((stream, _)) => {
                            if stream.set_nonblocking(false).is_ok() {
                                serve(stream, &store, &spool);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(POLL);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "admin socket: accept failed");
                            std::thread::sleep(POLL);
                        }
                    }
                }
            })?;
        Ok(AdminSocket {
            path,
            stopping,
            thread: Some(thread),
        })
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the peer runs as this process's user or as root.
fn peer_allowed(stream: &UnixStream) -> bool {
    let ours = rustix::process::getuid();
    rustix::net::sockopt::socket_peercred(stream)
        .is_ok_and(|cred| cred.uid == ours || cred.uid.is_root())
}

fn serve(stream: UnixStream, store: &Store, spool: &Path) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    // A client that stops reading ends its backup instead of holding the socket (and the
    // spool file) for ever.
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let mut out = match stream.try_clone() {
        Ok(out) => std::io::BufWriter::with_capacity(1 << 20, out),
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: cannot use the connection");
            return;
        }
    };
    if !peer_allowed(&stream) {
        tracing::warn!("admin socket: refused a client running as another user");
        let _ = out.write_all(b"ERR only the server's own user or root may use this socket\n");
        return;
    }
    let mut line = String::new();
    // At most one short line: a client cannot make the server buffer more.
    let read = BufReader::new(std::io::Read::take(&stream, 256)).read_line(&mut line);
    let command = line.trim();
    match (read, command) {
        (Ok(_), "backup") => {
            if out.write_all(b"OK\n").is_err() {
                return;
            }
            let started = std::time::Instant::now();
            match crate::store::backup::write_online(store, &mut out, spool) {
                Ok(n) => tracing::info!(
                    entries = n,
                    seconds = started.elapsed().as_secs_f64(),
                    "online backup written to the admin socket"
                ),
                // The stream ends without its checksum: the client refuses it.
                Err(e) => tracing::error!(error = %e, "online backup failed"),
            }
        }
        (Ok(_), other) => {
            let _ = writeln!(
                out,
                "ERR unknown command {other:?}; the commands are: backup"
            );
        }
        (Err(e), _) => tracing::warn!(error = %e, "admin socket: could not read the command"),
    }
    let _ = out.flush();
}

/// The client side (`pixee-pim backup --online`): asks the server on `data_dir` for a backup
/// and copies it to `out`. Returns an error naming what went wrong.
pub fn request_backup(data_dir: &Path, out: &mut impl Write) -> Result<u64, String> {
    let path = data_dir.join(SOCKET_NAME);
    let stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "cannot reach the running server at {}: {e} (is `pixee-pim serve` running on this data dir, and are you its user or root?)",
            path.display()
        )
    })?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    writer
        .write_all(b"backup\n")
        .map_err(|e| format!("cannot send the command: {e}"))?;
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|e| format!("no answer from the server: {e}"))?;
    if status.trim() != "OK" {
        return Err(status
            .trim()
            .strip_prefix("ERR ")
            .unwrap_or("the server ended the connection")
            .to_owned());
    }
    std::io::copy(&mut reader, out).map_err(|e| format!("the backup stream broke: {e}"))
}
