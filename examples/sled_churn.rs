//! Memory of sled under churn with a constant live set, by key layout: the experiment behind
//! docs/PERFORMANCE.md's "flat memory under writes". Run by hand:
//!
//! ```sh
//! cargo run --release --example sled_churn -- monotonic 2000000
//! cargo run --release --example sled_churn -- recycled 2000000
//! cargo run --release --example sled_churn -- indexed 300000 1   # one flush per write
//! cargo run --release --example sled_churn -- indexed 300000 64 random
//! cargo run --release --example sled_churn -- retained 2000000
//! cargo run --release --example sled_churn -- retained 2000000 64 packed
//! ```
//!
//! `random` (indexed only) is the soak's own pattern: the removed record is any live one, not
//! the oldest, and the EAN-like index key is spread over the key space as real EANs are.
//!
//! `retained` keeps every record (as retention keeps tombstones and audit events): the RSS per
//! record is sled's state per page, since leaves split at 16 entries whatever their size.
//! `retained … packed` appends each record to a chunk of up to 64 (one sled value), as the
//! tombstone chunks do.
//!
//! Each operation inserts one record and removes the oldest, keeping `LIVE` records, as the
//! product churn of the soak does. `monotonic` keys grow for ever (time-ordered ids, as
//! `products` and `products_by_updated` use); `recycled` keys come from a fixed space of
//! `4 * LIVE` slots, so emptied pages are filled again. The store has the server's settings
//! (low-space mode, 64 MiB cache). Prints RSS and sled's on-disk size as it goes.
use std::collections::VecDeque;

// The server's allocator, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LIVE: u64 = 2_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let layout = args.next().unwrap_or_else(|| "monotonic".into());
    let ops: u64 = args.next().map_or(Ok(1_000_000), |n| n.parse())?;
    // How many indexed operations share one flush (the group commit's batch).
    let flush_every: u64 = args.next().map_or(Ok(64), |n| n.parse())?.max(1);
    let random = args.next().is_some_and(|a| a == "random" || a == "packed");
    // xorshift: the same sequence every run.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next_random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .cache_capacity(64 << 20)
        .mode(sled::Mode::LowSpace)
        .open()?;
    let tree = db.open_tree("churn")?;
    // `indexed`: the product write's shape, one transaction over the record and two index
    // trees (an EAN-like key and a time key), flushed every 64 operations as the group commit
    // does under load.
    let by_ean = db.open_tree("churn_by_ean")?;
    let by_time = db.open_tree("churn_by_time")?;
    let value = vec![7u8; 200];
    let mut live: VecDeque<[u8; 16]> = VecDeque::new();
    let key = |i: u64| -> [u8; 16] {
        let mut k = [0u8; 16];
        match layout.as_str() {
            // A slot number, spread over the key space by a multiplicative hash.
            "recycled" => {
                let slot = (i % (4 * LIVE)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                k[..8].copy_from_slice(&slot.to_be_bytes());
            }
            _ => k[..8].copy_from_slice(&i.to_be_bytes()),
        }
        k
    };
    let start = rss_kib();
    println!("layout {layout}: {ops} operations, live set {LIVE}; RSS at start {start} KiB");
    for i in 0..ops {
        let k = key(i);
        if layout == "retained" {
            // A tombstone-sized record under a time-ordered key.
            let record = [9u8; 60];
            if random {
                // `packed`: the chunk's key is its first record's; at most 64 per chunk.
                let chunk = key(i - i % 64);
                tree.update_and_fetch(chunk, |old| {
                    let mut v = old.map(<[u8]>::to_vec).unwrap_or_default();
                    v.extend_from_slice(&record);
                    Some(v)
                })?;
            } else {
                tree.insert(k, &record[..])?;
            }
            if i % flush_every == 0 {
                db.flush()?;
            }
        } else if layout == "indexed" {
            use sled::Transactional;
            let victim = if random {
                next_random() as usize % LIVE as usize
            } else {
                0
            };
            let old = (live.len() as u64 >= LIVE).then(|| live[victim]);
            // The EAN-like key: the id itself, or spread over the key space.
            let ean = |k: &[u8; 16]| -> [u8; 8] {
                let n = u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
                if random {
                    n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
                } else {
                    n.to_be_bytes()
                }
            };
            (&tree, &by_ean, &by_time)
                .transaction(|(t, e, u)| {
                    t.insert(&k, value.as_slice())?;
                    e.insert(&ean(&k), &k[..])?;
                    u.insert(&(i.to_be_bytes()), &k[..])?;
                    if let Some(o) = old {
                        t.remove(&o)?;
                        e.remove(&ean(&o))?;
                        u.remove(&o[..8])?;
                    }
                    Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| format!("{e:?}"))?;
            if old.is_some() {
                live.remove(victim);
            }
            live.push_back(k);
            if i % flush_every == 0 {
                db.flush()?;
            }
        } else {
            tree.insert(k, value.as_slice())?;
            live.push_back(k);
            if live.len() as u64 > LIVE
                && let Some(old) = live.pop_front()
            {
                tree.remove(old)?;
            }
        }
        if (i + 1) % (ops / 10).max(1) == 0 {
            db.flush()?;
            let rss = rss_kib();
            println!(
                "{:>9} ops  RSS {:>7} KiB  (+{:>6.1} bytes/op)  disk {:>6} KiB  records {}",
                i + 1,
                rss,
                (rss.saturating_sub(start) * 1024) as f64 / (i + 1) as f64,
                db.size_on_disk()? / 1024,
                tree.len()
            );
        }
    }
    Ok(())
}
