//! In-memory sliding-window counters (per API key and per client IP for logins).
//!
//! The window is approximated the usual way: the previous fixed minute's count is weighted by
//! how much of it still overlaps the sliding minute. Shards keep lock contention low when many
//! keys are active at once. A restart starts fresh windows.
use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use time::OffsetDateTime;

const SHARDS: usize = 16;
const WINDOW_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// Unix milliseconds at which this fixed window began.
    start: i64,
    current: u32,
    previous: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds at which the current fixed window ends.
    pub reset_at: i64,
    /// Seconds to wait before a retry can succeed (when refused).
    pub retry_after: u64,
}

pub struct SlidingWindow<K> {
    shards: Vec<Mutex<HashMap<K, Window, RandomState>>>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone> Default for SlidingWindow<K> {
    fn default() -> Self {
        SlidingWindow {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: RandomState::default(),
        }
    }
}

impl<K: Hash + Eq + Clone> SlidingWindow<K> {
    /// Counts one hit for `key` against `limit` per minute.
    pub fn hit(&self, key: &K, limit: u32, now: OffsetDateTime) -> Decision {
        // Milliseconds in 64 bits: nanoseconds would need 128-bit division on every request.
        let now_ms = now.unix_timestamp() * 1000 + i64::from(now.millisecond());
        let start = now_ms - now_ms.rem_euclid(WINDOW_MS);
        let shard = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut map = match self.shards[shard].lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() > 100_000 {
            map.retain(|_, w| w.start >= start - WINDOW_MS);
        }
        let w = map.entry(key.clone()).or_default();
        if w.start != start {
            w.previous = if w.start == start - WINDOW_MS {
                w.current
            } else {
                0
            };
            w.current = 0;
            w.start = start;
        }
        let elapsed = (now_ms - start) as f64 / WINDOW_MS as f64;
        let weighted = |current: u32| f64::from(w.previous) * (1.0 - elapsed) + f64::from(current);
        let reset_at = (start + WINDOW_MS) / 1000;
        let allowed = weighted(w.current + 1) <= f64::from(limit);
        if allowed {
            w.current += 1;
        }
        let used = weighted(w.current).ceil() as u32;
        let retry_after = if allowed {
            0
        } else {
            seconds_until_allowed(w.previous, w.current, limit, elapsed)
        };
        Decision {
            allowed,
            limit,
            remaining: limit.saturating_sub(used),
            reset_at,
            retry_after,
        }
    }
}

/// The unit an address-based limit counts: an IPv4 address, or the /64 of an IPv6 one (one
/// subscriber line gets a whole /64 and can pick any address in it). IPv4-mapped IPv6
/// addresses count as the IPv4 address they carry.
pub fn subscriber(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// How long until one more hit fits: later in this window once enough of the previous
/// window's weight has slid out, or else in the next window, where this one's count becomes
/// the weighted previous.
fn seconds_until_allowed(previous: u32, current: u32, limit: u32, elapsed: f64) -> u64 {
    if limit == 0 {
        return 60;
    }
    let (p, c, l) = (f64::from(previous), f64::from(current), f64::from(limit));
    let at = if c + 1.0 <= l && p > 0.0 {
        // p * (1 - e) + c + 1 <= l
        1.0 - (l - c - 1.0) / p
    } else {
        // next window: c * (1 - e) + 1 <= l
        1.0 + if c > 0.0 {
            (1.0 - (l - 1.0) / c).max(0.0)
        } else {
            0.0
        }
    };
    let wait = ((at - elapsed).max(0.0) * (WINDOW_MS as f64 / 1e3)).ceil() as u64;
    wait.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            subscriber(ip("2001:db8:1:2:aaaa::1")),
            subscriber(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            "one /64 is one subscriber"
        );
        assert_ne!(
            subscriber(ip("2001:db8:1:2::1")),
            subscriber(ip("2001:db8:1:3::1")),
            "the next /64 is someone else"
        );
        assert_eq!(subscriber(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(subscriber(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(subscriber(ip("192.0.2.7")), subscriber(ip("192.0.2.8")));
    }

    #[test]
    fn the_limit_is_enforced_and_remaining_counts_down() {
        let w = SlidingWindow::default();
        for i in 0..3u32 {
            let d = w.hit(&"k", 3, t0());
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i);
        }
        let refused = w.hit(&"k", 3, t0());
        assert!(!refused.allowed);
        assert!(refused.retry_after >= 1 && refused.retry_after <= 120);
        assert!(w.hit(&"other", 3, t0()).allowed, "keys are counted apart");
    }

    #[test]
    fn retry_after_is_long_enough_for_the_retry_to_pass() {
        for limit in [1u32, 3, 30, 1000] {
            let w = SlidingWindow::default();
            let start = t0() - Duration::seconds(t0().unix_timestamp() % 60);
            let mut now = start + Duration::seconds(50);
            for _ in 0..limit {
                assert!(w.hit(&1, limit, now).allowed);
            }
            let refused = w.hit(&1, limit, now);
            assert!(!refused.allowed);
            now += Duration::seconds(refused.retry_after as i64);
            assert!(
                w.hit(&1, limit, now).allowed,
                "limit {limit}: retry after {} s still refused",
                refused.retry_after
            );
        }
    }

    #[test]
    fn the_previous_minute_still_weighs_on_the_next() {
        let w = SlidingWindow::default();
        for _ in 0..10 {
            assert!(w.hit(&1, 10, t0()).allowed);
        }
        // Just after the minute boundary almost all of the previous minute still counts.
        let next_start = t0() + Duration::seconds(60 - (t0().unix_timestamp() % 60));
        assert!(!w.hit(&1, 10, next_start + Duration::seconds(1)).allowed);
        // Two minutes later the window is empty again.
        assert!(w.hit(&1, 10, next_start + Duration::seconds(120)).allowed);
    }
}
