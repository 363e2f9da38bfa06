//! Backup and restore: one file holding every tree, checked by a SHA-256 trailer.
//!
//! Format: `PIXEEBK1`, then per tree: name length (u32 BE), name, entry count (u64 BE), then per
//! entry key length (u32 BE), key, value length (u32 BE), value; then the SHA-256 of everything
//! before it. Restore refuses a file whose digest does not match, so a truncated copy is never
//! half-imported.
use super::{Store, TREES};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

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
}

/// Writes the whole store to `out`; returns the number of entries written.
pub fn write(store: &Store, out: &mut impl Write) -> Result<u64, BackupError> {
    let mut hasher = Sha256::new();
    let mut emit = |bytes: &[u8]| -> std::io::Result<()> {
        hasher.update(bytes);
        out.write_all(bytes)
    };
    emit(MAGIC)?;
    let mut total = 0u64;
    for name in TREES {
        let tree = store.db().open_tree(name)?;
        let entries: Vec<_> = tree.iter().collect::<Result<_, _>>()?;
        emit(&(name.len() as u32).to_be_bytes())?;
        emit(name.as_bytes())?;
        emit(&(entries.len() as u64).to_be_bytes())?;
        for (k, v) in &entries {
            emit(&(k.len() as u32).to_be_bytes())?;
            emit(k)?;
            emit(&(v.len() as u32).to_be_bytes())?;
            emit(v)?;
        }
        total += entries.len() as u64;
    }
    let digest = hasher.finalize();
    out.write_all(&digest)?;
    out.flush()?;
    Ok(total)
}

/// Reads a whole backup, checks it, then loads it into `store` (which must be empty).
pub fn restore(store: &Store, input: &mut impl Read) -> Result<u64, BackupError> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    if bytes.len() < MAGIC.len() + 32 || &bytes[..8] != MAGIC {
        return Err(BackupError::Format("missing header"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(BackupError::Format("checksum mismatch"));
    }
    let mut cur = Cursor { buf: &body[8..] };
    let mut total = 0;
    while !cur.buf.is_empty() {
        let name_len = cur.u32()? as usize;
        let name = std::str::from_utf8(cur.take(name_len)?)
            .map_err(|_| BackupError::Format("tree name"))?;
        if !TREES.contains(&name) {
            return Err(BackupError::Format("unknown tree"));
        }
        let tree = store.db().open_tree(name)?;
        let count = cur.u64()?;
        let mut batch = sled::Batch::default();
        for _ in 0..count {
            let klen = cur.u32()? as usize;
            let k = cur.take(klen)?;
            let vlen = cur.u32()? as usize;
            let v = cur.take(vlen)?;
            batch.insert(k, v);
        }
        tree.apply_batch(batch)?;
        total += count;
    }
    store.flush_blocking()?;
    Ok(total)
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BackupError> {
        if self.buf.len() < n {
            return Err(BackupError::Format("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, BackupError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, BackupError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
}
