//! Backup and restore: one file holding every tree, checked by a SHA-256 trailer.
//!
//! Format: `PIXEEBK1`, then per tree: name length (u32 BE), name, entry count (u64 BE), then per
//! entry key length (u32 BE), key, value length (u32 BE), value; then the SHA-256 of everything
//! before it. Restore refuses a file whose digest does not match, so a truncated copy is never
//! half-imported.
use super::{Store, TREES};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"PIXEEBK1";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] super::StoreError),
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("not a pixee-pim backup, or the file is damaged: {0}")]
    Format(&'static str),
    #[error("{0}")]
    NoSpace(String),
    /// An online backup of a store kept in PostgreSQL: its own tools copy a running database.
    #[error(
        "the store is kept in PostgreSQL: back it up with pg_dump while it runs, or with \
         `pixee-pim backup` once the server is stopped"
    )]
    NotSled,
}

/// The free space an online backup's spool file leaves on its filesystem (the store's own, as
/// the spool sits in the data dir): the copy stops before the store's writes could run out of
/// room. The larger of 64 MiB and 2 % of the filesystem.
fn spool_reserve(fs_bytes: u64) -> u64 {
    (64u64 << 20).max(fs_bytes / 50)
}

/// How often (bytes written to the spool) the copy looks at the free space again.
const SPACE_CHECK_EVERY: u64 = 32 << 20;

/// The free space left to unprivileged writers on `dir`'s filesystem, and its size.
fn free_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(dir)?;
    Ok((
        s.f_bavail.saturating_mul(s.f_frsize),
        s.f_blocks.saturating_mul(s.f_frsize),
    ))
}

/// Refuses to go on when the spool would take `dir`'s filesystem below its reserve.
fn check_space(dir: &Path, reserve: impl Fn(u64) -> u64) -> Result<(), BackupError> {
    let (free, size) = free_space(dir)?;
    let keep = reserve(size);
    if free < keep {
        return Err(BackupError::NoSpace(format!(
            "the online backup stopped: {} has {} MiB free and keeps at least {} MiB for the \
             store's own writes (the backup's spool file needs about the size of the live data)",
            dir.display(),
            free >> 20,
            keep >> 20
        )));
    }
    Ok(())
}

/// The output with its running SHA-256 (the trailer).
struct Hashed<'a, W: Write> {
    out: &'a mut W,
    hasher: Sha256,
}

impl<W: Write> Hashed<'_, W> {
    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }

    fn tree_header(&mut self, name: &str, count: u64) -> std::io::Result<()> {
        self.emit(&(name.len() as u32).to_be_bytes())?;
        self.emit(name.as_bytes())?;
        self.emit(&count.to_be_bytes())
    }

    fn entry(&mut self, k: &[u8], v: &[u8]) -> std::io::Result<()> {
        self.emit(&(k.len() as u32).to_be_bytes())?;
        self.emit(k)?;
        self.emit(&(v.len() as u32).to_be_bytes())?;
        self.emit(v)
    }

    fn finish(self) -> std::io::Result<()> {
        let digest = self.hasher.finalize();
        self.out.write_all(&digest)?;
        self.out.flush()
    }
}

/// Writes the whole store to `out` from a store no one else writes (the server is stopped);
/// returns the number of entries written. Streams: each tree is read twice (its count, then
/// its entries), nothing is held in memory.
pub fn write(store: &Store, out: &mut impl Write) -> Result<u64, BackupError> {
    let mut out = Hashed {
        out,
        hasher: Sha256::new(),
    };
    out.emit(MAGIC)?;
    let mut total = 0u64;
    for name in TREES {
        let tree = store.db().open_tree(name)?;
        let count = tree.len() as u64;
        out.tree_header(name, count)?;
        let mut written = 0u64;
        for item in tree.iter() {
            let (k, v) = item?;
            out.entry(&k, &v)?;
            written += 1;
        }
        if written != count {
            return Err(BackupError::Format(
                "the store changed during an offline backup",
            ));
        }
        total += count;
    }
    out.finish()?;
    Ok(total)
}

/// Writes a point-in-time copy of the store to `out` while the server keeps writing; returns
/// the number of entries written. `spool` is a directory for a temporary file as large as the
/// store's live data.
///
/// How the instant is fixed. sled runs every transaction's closure and commit under one
/// process-wide lock that excludes every other write (a single-key write holds it shared from
/// the moment it announces itself to subscribers until it has told them what it wrote). So an
/// empty transaction whose closure does some work is a barrier: while it runs, no write is
/// under way, and every write is either wholly before it or wholly after it.
///
/// 1. Under a barrier, a subscriber is registered on every tree: from then on every write
///    reports its key and new value, in order, to a drain thread that keeps them in memory.
/// 2. Each tree is copied to the spool file as it iterates (a fuzzy copy: each key holds some
///    value it had during the copy).
/// 3. Under a second barrier (the cut), the drain thread takes everything reported so far and
///    stops listening. A key the copy read with a value from after the cut was written
///    during the copy, so its last report before the cut says what it held at the cut; a key
///    not reported did not change and the copy holds its value at the cut.
/// 4. Each tree's copy is merged with its reports (last report wins, removals drop the key)
///    into the backup. The result is the store as it stood at the cut; the write lock was held
///    only while the drain thread emptied its queues.
pub fn write_online(
    store: &Store,
    out: &mut (impl Write + Send),
    spool: &Path,
) -> Result<u64, BackupError> {
    if store.db().sled().is_none() {
        return Err(BackupError::NotSled);
    }
    let trees: Vec<crate::store::kv::Tree> = TREES
        .iter()
        .map(|name| store.db().open_tree(name))
        .collect::<Result<_, _>>()?;
    let subscribers = barrier(store, || {
        trees
            .iter()
            .filter_map(|t| t.sled())
            .map(|t| t.watch_prefix(vec![]))
            .collect::<Vec<_>>()
    })?;
    let drain = Drain::start(subscribers)?;
    let spool_path = spool.join(format!("backup-{}.spool", uuid::Uuid::new_v4().simple()));
    // The copy and the merge are background work on threads of lower priority; the barriers
    // stay on this thread (a low-priority thread holding sled's write lock would keep the
    // request workers waiting).
    let result = (|| {
        let copied = in_background(|| copy_trees(&trees, &spool_path, spool_reserve));
        // The cut, also when the copy failed: the drain thread must stop either way.
        let reports = barrier(store, || drain.cut())?;
        let reports = reports.ok_or(BackupError::Format("the change listener stopped"))?;
        let sections = copied?;
        in_background(|| merge_out(&spool_path, &sections, reports, out))
    })();
    let _ = std::fs::remove_file(&spool_path);
    result
}

/// Runs `work` on a thread of its own at background priority, and waits for it.
fn in_background<T: Send>(
    work: impl FnOnce() -> Result<T, BackupError> + Send,
) -> Result<T, BackupError> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("backup-copy".into())
            .spawn_scoped(s, || {
                crate::startup::background_priority("online backup");
                work()
            })?
            .join()
            .map_err(|_| BackupError::Format("the backup thread panicked"))?
    })
}

/// Runs `f` while no write can be under way (see [`write_online`]).
fn barrier<T>(store: &Store, f: impl Fn() -> T) -> Result<T, BackupError> {
    let slot = std::sync::Mutex::new(None);
    store
        .meta
        .transaction(|_| {
            let value = f();
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(value);
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
        })
        .map_err(|e| match e {
            sled::transaction::TransactionError::Storage(e) => BackupError::Sled(e),
            sled::transaction::TransactionError::Abort(()) => {
                BackupError::Format("the barrier transaction aborted")
            }
        })?;
    slot.into_inner()
        .ok()
        .flatten()
        .ok_or(BackupError::Format("the barrier did not run"))
}

/// Where one tree's entries sit in the spool file, and how many there are.
struct Section {
    offset: u64,
    count: u64,
}

fn copy_trees(
    trees: &[super::kv::Tree],
    path: &Path,
    reserve: impl Fn(u64) -> u64,
) -> Result<Vec<Section>, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    check_space(dir, &reserve)?;
    let mut checked_at = 0u64;
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let mut spool = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut sections = Vec::with_capacity(trees.len());
    let mut offset = 0u64;
    for tree in trees {
        let start = offset;
        let mut count = 0;
        for item in tree.iter() {
            let (k, v) = item?;
            for part in [&k[..], &v[..]] {
                spool.write_all(&(part.len() as u32).to_be_bytes())?;
                spool.write_all(part)?;
                offset += 4 + part.len() as u64;
            }
            count += 1;
            if offset - checked_at >= SPACE_CHECK_EVERY {
                check_space(dir, &reserve)?;
                checked_at = offset;
            }
        }
        sections.push(Section {
            offset: start,
            count,
        });
    }
    spool.flush()?;
    Ok(sections)
}

/// The last value each key was given before the cut (`None`: removed), per tree.
type Reports = Vec<std::collections::BTreeMap<sled::IVec, Option<sled::IVec>>>;

fn merge_out(
    spool: &Path,
    sections: &[Section],
    mut reports: Reports,
    out: &mut impl Write,
) -> Result<u64, BackupError> {
    let mut out = Hashed {
        out,
        hasher: Sha256::new(),
    };
    out.emit(MAGIC)?;
    let mut total = 0;
    for (i, name) in TREES.iter().enumerate() {
        let changed = std::mem::take(&mut reports[i]);
        let section = &sections[i];
        // Twice over the section: the count goes before the entries.
        let mut count = 0u64;
        merge_section(spool, section, &changed, |_, _| {
            count += 1;
            Ok(())
        })?;
        out.tree_header(name, count)?;
        merge_section(spool, section, &changed, |k, v| out.entry(k, v))?;
        total += count;
    }
    out.finish()?;
    Ok(total)
}

/// Calls `f` on the section's entries merged with `changed`, in key order.
fn merge_section(
    spool: &Path,
    section: &Section,
    changed: &std::collections::BTreeMap<sled::IVec, Option<sled::IVec>>,
    mut f: impl FnMut(&[u8], &[u8]) -> std::io::Result<()>,
) -> Result<(), BackupError> {
    use std::io::{BufReader, Seek, SeekFrom};
    let mut file = std::fs::File::open(spool)?;
    file.seek(SeekFrom::Start(section.offset))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut read_part = |buf: &mut Vec<u8>| -> std::io::Result<()> {
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        buf.resize(u32::from_be_bytes(len) as usize, 0);
        input.read_exact(buf)
    };
    let mut changes = changed.iter().peekable();
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for _ in 0..section.count {
        read_part(&mut k)?;
        read_part(&mut v)?;
        // Changed keys before this one that the copy did not have: written during the copy.
        while let Some((ck, cv)) = changes.next_if(|(ck, _)| ck[..] < k[..]) {
            if let Some(cv) = cv {
                f(ck, cv)?;
            }
        }
        match changes.next_if(|(ck, _)| ck[..] == k[..]) {
            Some((_, Some(cv))) => f(&k, cv)?,
            Some((_, None)) => {}
            None => f(&k, &v)?,
        }
    }
    for (ck, cv) in changes {
        if let Some(cv) = cv {
            f(ck, cv)?;
        }
    }
    Ok(())
}

/// The thread that empties the subscribers' queues (sled blocks a writer whose subscriber's
/// queue of 1 024 is full) until the cut.
struct Drain {
    shared: std::sync::Arc<DrainShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct DrainState {
    cut_requested: bool,
    result: Option<Reports>,
    stopped: bool,
}

#[derive(Default)]
struct DrainShared {
    state: std::sync::Mutex<DrainState>,
    changed: std::sync::Condvar,
}

impl Drain {
    fn start(mut subscribers: Vec<sled::Subscriber>) -> Result<Drain, BackupError> {
        let shared = std::sync::Arc::new(DrainShared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("backup-drain".into())
            .spawn(move || {
                let mut reports: Reports = vec![Default::default(); subscribers.len()];
                loop {
                    // Read before the pass: a cut requested before it began is complete when
                    // the pass ends (no write runs while the cut's barrier is held).
                    let requested = theirs.state.lock().map_or(true, |s| s.cut_requested);
                    let mut any = false;
                    for (sub, changed) in subscribers.iter_mut().zip(reports.iter_mut()) {
                        while let Ok(event) = sub.next_timeout(std::time::Duration::ZERO) {
                            any = true;
                            match event {
                                sled::Event::Insert { key, value } => {
                                    changed.insert(key, Some(value));
                                }
                                sled::Event::Remove { key } => {
                                    changed.insert(key, None);
                                }
                            }
                        }
                    }
                    if requested {
                        break;
                    }
                    if !any {
                        std::thread::sleep(std::time::Duration::from_micros(500));
                    }
                }
                // Stop listening first, so no writer waits on a queue no one reads.
                drop(subscribers);
                if let Ok(mut s) = theirs.state.lock() {
                    s.result = Some(reports);
                    s.stopped = true;
                }
                theirs.changed.notify_all();
            })?;
        Ok(Drain {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for everything reported so far and waits for it; `None` when the thread died.
    fn cut(&self) -> Option<Reports> {
        let mut state = self.shared.state.lock().ok()?;
        state.cut_requested = true;
        while !state.stopped {
            state = self
                .shared
                .changed
                .wait_timeout(state, std::time::Duration::from_millis(100))
                .ok()?
                .0;
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) && !state.stopped {
                return None;
            }
        }
        state.result.take()
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.cut_requested = true;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a backup through without loading it: checks its header, its structure and its
/// SHA-256 trailer; returns the number of bytes before the trailer.
pub fn verify(input: &mut impl Read) -> Result<u64, BackupError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    // The last 32 bytes read are the trailer candidate; everything before is hashed.
    let mut held: Vec<u8> = Vec::new();
    let mut body_len = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        held.extend_from_slice(&buf[..n]);
        if held.len() > 32 {
            let cut = held.len() - 32;
            hasher.update(&held[..cut]);
            body_len += cut as u64;
            held.drain(..cut);
        }
    }
    if held.len() < 32 || body_len < MAGIC.len() as u64 {
        return Err(BackupError::Format("truncated"));
    }
    if hasher.finalize().as_slice() != held.as_slice() {
        return Err(BackupError::Format("checksum mismatch"));
    }
    Ok(body_len)
}

/// Checks a whole backup (its SHA-256 trailer), then loads it into `store` (which must be
/// empty): two passes over the file, entries applied in batches, never the file in memory. The
/// load hashes what it reads too and compares it with the trailer again, so a file that
/// changed between the passes is refused; a load that fails for any reason leaves the store
/// empty again, as it found it.
pub fn restore(store: &Store, input: &mut (impl Read + std::io::Seek)) -> Result<u64, BackupError> {
    let body_len = verify(input)?;
    input.seek(std::io::SeekFrom::Start(0))?;
    load(store, input, body_len).inspect_err(|_| {
        let emptied = TREES.iter().try_for_each(|name| {
            store.db().open_tree(name)?.clear()?;
            Ok::<_, sled::Error>(())
        });
        if let Err(e) = emptied.map_err(BackupError::from).and_then(|()| {
            store.flush_blocking()?;
            Ok(())
        }) {
            tracing::error!(error = %e, "a failed restore could not empty the store again");
        }
    })
}

/// Copies every record of `from` into `to` (`migrate`: a sled store into an empty PostgreSQL
/// one), tree by tree in batches of 10 000; `progress` hears the running total. Returns the
/// records copied. The caller checks both stores and compares their reports afterwards.
pub fn copy_store(
    from: &Store,
    to: &Store,
    mut progress: impl FnMut(u64),
) -> Result<u64, BackupError> {
    let mut total = 0;
    for name in TREES {
        let (source, target) = (from.db().open_tree(name)?, to.db().open_tree(name)?);
        let mut batch = super::kv::Batch::default();
        let mut in_batch = 0;
        for item in source.iter() {
            let (k, v) = item?;
            batch.insert(k, v);
            in_batch += 1;
            if in_batch == 10_000 {
                target.apply_batch(std::mem::take(&mut batch))?;
                total += in_batch;
                in_batch = 0;
                progress(total);
            }
        }
        target.apply_batch(batch)?;
        total += in_batch;
        progress(total);
    }
    to.flush_blocking()?;
    Ok(total)
}

/// What [`restore`] loads: the body's `body_len` bytes, then the trailer, hashed as read.
fn load(store: &Store, input: &mut impl Read, body_len: u64) -> Result<u64, BackupError> {
    let hashing = HashingReader {
        inner: input.by_ref().take(body_len),
        hasher: Sha256::new(),
    };
    let mut body = std::io::BufReader::with_capacity(1 << 20, hashing);
    let mut magic = [0u8; 8];
    body.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(BackupError::Format("missing header"));
    }
    let mut total = 0;
    let mut buf = Vec::new();
    loop {
        let name_len = match read_u32(&mut body) {
            Ok(n) => n as usize,
            Err(BackupError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        };
        read_exact_into(&mut body, &mut buf, name_len)?;
        let name = std::str::from_utf8(&buf).map_err(|_| BackupError::Format("tree name"))?;
        if !TREES.contains(&name) {
            return Err(BackupError::Format("unknown tree"));
        }
        let tree = store.db().open_tree(name)?;
        let mut count = [0u8; 8];
        body.read_exact(&mut count)?;
        let count = u64::from_be_bytes(count);
        let mut batch = super::kv::Batch::default();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for i in 0..count {
            let klen = read_u32(&mut body)? as usize;
            read_exact_into(&mut body, &mut k, klen)?;
            let vlen = read_u32(&mut body)? as usize;
            read_exact_into(&mut body, &mut v, vlen)?;
            batch.insert(&k[..], &v[..]);
            if (i + 1) % 10_000 == 0 {
                tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        tree.apply_batch(batch)?;
        total += count;
    }
    // The loop ends where the body does: every byte of it went through the hasher.
    let digest = body.into_inner().hasher.finalize();
    let mut trailer = [0u8; 32];
    input.read_exact(&mut trailer)?;
    if digest.as_slice() != trailer {
        return Err(BackupError::Format(
            "the file changed while it was being restored",
        ));
    }
    store.flush_blocking()?;
    Ok(total)
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn read_u32(input: &mut impl Read) -> Result<u32, BackupError> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads `len` bytes into `buf`; a length beyond what is left is a damaged file, found before
/// anything that large is allocated.
fn read_exact_into(
    input: &mut impl Read,
    buf: &mut Vec<u8>,
    len: usize,
) -> Result<(), BackupError> {
    buf.clear();
    let got = input.take(len as u64).read_to_end(buf)?;
    if got != len {
        return Err(BackupError::Format("truncated"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(n: u32) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let tree = store.db().open_tree("products").unwrap();
        for i in 0..n {
            tree.set(i.to_be_bytes(), vec![7u8; 40]).unwrap();
        }
        (dir, store)
    }

    #[test]
    fn online_and_offline_backups_of_a_quiet_store_are_the_same_bytes_and_restore() {
        let (dir, store) = store_with(25_000);
        let mut offline = Vec::new();
        write(&store, &mut offline).unwrap();
        let mut online = Vec::new();
        write_online(&store, &mut online, dir.path()).unwrap();
        assert_eq!(offline, online);
        // The spool file is gone.
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".spool"))
        );
        assert_eq!(verify(&mut &online[..]).unwrap(), online.len() as u64 - 32);
        let (_fresh_dir, fresh) = {
            let d = tempfile::tempdir().unwrap();
            let s = Store::open(d.path(), 1 << 20).unwrap();
            (d, s)
        };
        let n = restore(&fresh, &mut std::io::Cursor::new(&online)).unwrap();
        assert!(n >= 25_000);
        assert_eq!(fresh.db().open_tree("products").unwrap().len(), 25_000);
    }

    #[test]
    fn a_cut_short_or_altered_backup_is_refused() {
        let (_dir, store) = store_with(10);
        let mut file = Vec::new();
        write(&store, &mut file).unwrap();
        for bad in [&file[..file.len() - 1], &file[..20], &[][..]] {
            assert!(verify(&mut &bad[..]).is_err());
        }
        let mut altered = file.clone();
        altered[12] ^= 1;
        assert!(matches!(
            verify(&mut &altered[..]),
            Err(BackupError::Format("checksum mismatch"))
        ));
    }

    /// Serves one backup on the first pass and another after the seek back to the start: a
    /// file replaced between `restore`'s check and its load.
    struct Replaced {
        first: std::io::Cursor<Vec<u8>>,
        second: Option<std::io::Cursor<Vec<u8>>>,
        seeked: bool,
    }

    impl Read for Replaced {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (&mut self.second, self.seeked) {
                (Some(second), true) => second.read(buf),
                _ => self.first.read(buf),
            }
        }
    }

    impl std::io::Seek for Replaced {
        fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
            self.seeked = true;
            match &mut self.second {
                Some(second) => second.seek(to),
                None => self.first.seek(to),
            }
        }
    }

    #[test]
    fn a_backup_that_changes_between_check_and_load_is_refused_and_leaves_the_store_empty() {
        let (_dir, store) = store_with(30_000);
        let mut file = Vec::new();
        write(&store, &mut file).unwrap();
        // The same structure with one value byte changed, far past the first batch.
        let mut altered = file.clone();
        let at = file.len() / 2
            + file[file.len() / 2..]
                .windows(40)
                .position(|w| w == [7u8; 40])
                .unwrap();
        altered[at] ^= 1;
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = Store::open(fresh_dir.path(), 1 << 20).unwrap();
        let mut input = Replaced {
            first: std::io::Cursor::new(file.clone()),
            second: Some(std::io::Cursor::new(altered)),
            seeked: false,
        };
        let err = restore(&fresh, &mut input).unwrap_err();
        assert!(
            matches!(err, BackupError::Format(m) if m.contains("changed")),
            "{err}"
        );
        assert!(fresh.is_empty().unwrap());
        // The unchanged file then restores into the same store.
        let mut input = Replaced {
            first: std::io::Cursor::new(file),
            second: None,
            seeked: false,
        };
        assert!(restore(&fresh, &mut input).unwrap() >= 30_000);
        assert_eq!(fresh.db().open_tree("products").unwrap().len(), 30_000);
    }

    #[test]
    fn an_online_backup_stops_before_the_spool_eats_the_reserve_and_leaves_no_spool() {
        let (dir, store) = store_with(100);
        let trees: Vec<crate::store::kv::Tree> = TREES
            .iter()
            .map(|name| store.db().open_tree(name).unwrap())
            .collect();
        let path = dir.path().join("backup-test.spool");
        // A reserve larger than any disk: refused before anything is written.
        let err = copy_trees(&trees, &path, |_| u64::MAX).err().unwrap();
        assert!(
            matches!(err, BackupError::NoSpace(ref m) if m.contains("MiB free")),
            "{err}"
        );
        assert!(!path.exists());
        // No reserve: it goes through (the real one depends on the test machine's disk).
        assert_eq!(copy_trees(&trees, &path, |_| 0).unwrap().len(), TREES.len());
        assert_eq!(spool_reserve(1 << 40), (1u64 << 40) / 50);
        assert_eq!(spool_reserve(1 << 30), 64 << 20);
        assert!(path.exists());
    }
}
