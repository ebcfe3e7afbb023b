//! The in-process cache for hot keys: bounded in bytes, fresh for a short
//! TTL, then refreshed by one request at a time while the others are
//! served the stale value.
//!
//! Reads are the hot path (a hot key may be read millions of times a
//! second), writes are rare (about one per key per TTL). So the cache is
//! read-optimised: shards of immutable maps behind `ArcSwap`. A read is an
//! `ArcSwap` load (no shared write), one `foldhash` lookup, a clock read
//! and a `Bytes` clone; it takes no lock. A write copies its shard's map,
//! changes it, drops entries past their usable age, evicts the entries
//! fetched longest ago until the shard is within its byte budget, and
//! publishes the copy.
//!
//! A fill races with this instance's own writes: a Redis read that began
//! before a `set` was acknowledged may return the old value after the
//! write dropped the local copy. Each shard counts invalidations (its
//! *epoch*); a fill says which epoch it began in and is not kept if an
//! invalidation came in between, so a write is never undone locally.
//!
//! moka (pinned in the workspace, and still used for the small negative
//! and too-large memos) was measured first: its `get` costs ~275 ns on this
//! machine because it records every read for its admission policy; that
//! alone would cap a core at ~3.6 M hits/s. Here eviction by "fetched
//! longest ago" fits the workload: a key that stays hot is refreshed every
//! TTL, so the oldest entries are those nobody reads any more.
//!
//! Freshness is judged on the injected clock, so one fake clock drives it
//! in tests like everything else.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use foldhash::fast::RandomState;
use parking_lot::Mutex;

use crate::clock::nanos;
use crate::config::LocalConfig;

/// Bytes charged per entry on top of key and value: the map slot, the
/// `Arc<Entry>` and the two `Bytes` handles, rounded up.
pub(crate) const ENTRY_OVERHEAD: u64 = 160;
/// Most shards; fewer when the budget is small, so that a value of
/// `big_value_bytes` still fits one shard four times over.
const MAX_SHARDS: u64 = 16;

#[derive(Debug)]
struct Entry {
    /// `None` records that the key did not exist.
    value: Option<Bytes>,
    fetched_ns: u64,
    weight: u64,
    refreshing: AtomicBool,
}

type Map = HashMap<Bytes, Arc<Entry>, RandomState>;

#[derive(Debug)]
struct Shard {
    map: ArcSwap<Map>,
    /// Serialises writers; holds the bytes charged to the map.
    write: Mutex<u64>,
    /// Invalidations so far; changed only under `write`.
    epoch: AtomicU64,
}

/// What the local cache knows about a key now.
#[derive(Debug)]
pub(crate) enum LocalRead {
    /// Fresh: serve it.
    Fresh(Option<Bytes>),
    /// Stale but within `max_stale`: serve it; if `refresh` is `Some`, this
    /// caller is the one that refreshes it.
    Stale {
        value: Option<Bytes>,
        refresh: Option<RefreshToken>,
    },
    /// Nothing usable.
    Absent,
}

/// The right to refresh one stale entry; released on drop, so a failed
/// refresh lets the next request try again.
#[derive(Debug)]
pub(crate) struct RefreshToken(Arc<Entry>);

impl Drop for RefreshToken {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

#[derive(Debug)]
pub(crate) struct LocalCache {
    shards: Box<[Shard]>,
    shard_budget: u64,
    hasher: RandomState,
    ttl_ns: u64,
    usable_ns: u64,
}

impl LocalCache {
    /// A cache of at most `cfg.max_bytes`; `big_value_bytes` (the largest
    /// value Redis reads may return) sizes the shards.
    pub(crate) fn new(cfg: &LocalConfig, big_value_bytes: u64) -> Self {
        let per_shard_floor = big_value_bytes
            .saturating_add(ENTRY_OVERHEAD)
            .saturating_mul(4);
        let n = (cfg.max_bytes / per_shard_floor.max(1)).clamp(1, MAX_SHARDS);
        let hasher = RandomState::default();
        LocalCache {
            shards: (0..n)
                .map(|_| Shard {
                    map: ArcSwap::from_pointee(Map::with_hasher(hasher.clone())),
                    write: Mutex::new(0),
                    epoch: AtomicU64::new(0),
                })
                .collect(),
            shard_budget: cfg.max_bytes / n,
            hasher,
            ttl_ns: nanos(cfg.ttl),
            usable_ns: nanos(cfg.ttl).saturating_add(nanos(cfg.max_stale)),
        }
    }

    #[inline]
    fn shard(&self, key: &[u8]) -> &Shard {
        let i = std::hash::BuildHasher::hash_one(&self.hasher, key) % self.shards.len() as u64;
        &self.shards[i as usize]
    }

    #[inline]
    pub(crate) fn read(&self, key: &[u8], now_ns: u64) -> LocalRead {
        let map = self.shard(key).map.load();
        let Some(entry) = map.get(key) else {
            return LocalRead::Absent;
        };
        let age = now_ns.saturating_sub(entry.fetched_ns);
        if age < self.ttl_ns {
            return LocalRead::Fresh(entry.value.clone());
        }
        if age >= self.usable_ns {
            return LocalRead::Absent;
        }
        let refresh = entry
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| RefreshToken(Arc::clone(entry)));
        LocalRead::Stale {
            value: entry.value.clone(),
            refresh,
        }
    }

    /// The epoch of `key`'s shard: take it before reading the value that
    /// [`store`](Self::store) will keep.
    pub(crate) fn epoch(&self, key: &[u8]) -> u64 {
        self.shard(key).epoch.load(Ordering::Acquire)
    }

    /// Keeps `value` (or "absent") for `key` as fetched at `now_ns`, unless
    /// the shard was invalidated since `epoch` (the value may predate a
    /// write). A value too big for a shard is not kept.
    pub(crate) fn store(&self, key: &[u8], value: Option<Bytes>, now_ns: u64, epoch: u64) {
        let weight =
            key.len() as u64 + value.as_ref().map_or(0, |v| v.len() as u64) + ENTRY_OVERHEAD;
        if weight > self.shard_budget {
            self.invalidate(key);
            return;
        }
        let entry = Arc::new(Entry {
            value,
            fetched_ns: now_ns,
            weight,
            refreshing: AtomicBool::new(false),
        });
        let shard = self.shard(key);
        let mut bytes = shard.write.lock();
        if shard.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        self.update(shard, &mut bytes, key, now_ns, |map| {
            map.insert(Bytes::copy_from_slice(key), entry);
        });
    }

    /// Drops `key`, and makes fills that began before now not keep their
    /// value.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        let shard = self.shard(key);
        let mut bytes = shard.write.lock();
        shard.epoch.fetch_add(1, Ordering::AcqRel);
        if shard.map.load().contains_key(key) {
            self.update(shard, &mut bytes, key, 0, |map| {
                map.remove(key);
            });
        }
    }

    /// Copy, change, clean, bound, publish; `bytes` is the shard's write
    /// lock, held by the caller.
    fn update(
        &self,
        shard: &Shard,
        bytes: &mut u64,
        key: &[u8],
        now_ns: u64,
        change: impl FnOnce(&mut Map),
    ) {
        let mut map: Map = Map::clone(&shard.map.load());
        change(&mut map);
        if now_ns > 0 {
            let usable = self.usable_ns;
            map.retain(|_, e| now_ns.saturating_sub(e.fetched_ns) < usable);
        }
        let mut total: u64 = map.values().map(|e| e.weight).sum();
        if total > self.shard_budget {
            let mut by_age: Vec<(u64, Bytes)> = map
                .iter()
                .filter(|(k, _)| k.as_ref() != key)
                .map(|(k, e)| (e.fetched_ns, k.clone()))
                .collect();
            by_age.sort_unstable_by_key(|(fetched, _)| *fetched);
            for (_, k) in by_age {
                if total <= self.shard_budget {
                    break;
                }
                if let Some(e) = map.remove(&k) {
                    total -= e.weight;
                }
            }
        }
        *bytes = total;
        shard.map.store(Arc::new(map));
    }

    /// Bytes held (keys, values and per-entry overhead).
    pub(crate) fn weighted_size(&self) -> u64 {
        self.shards.iter().map(|s| *s.write.lock()).sum()
    }

    /// Most bytes the cache may hold.
    #[cfg(test)]
    fn budget(&self) -> u64 {
        self.shard_budget * self.shards.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn cache(max_bytes: u64) -> LocalCache {
        LocalCache::new(
            &LocalConfig {
                max_bytes,
                ttl: Duration::from_millis(100),
                max_stale: Duration::from_millis(400),
            },
            1024,
        )
    }

    #[test]
    fn fresh_then_stale_with_one_refresher_then_absent() {
        let c = cache(1 << 20);
        assert!(matches!(c.read(b"k", 0), LocalRead::Absent));
        c.store(b"k", Some(Bytes::from_static(b"v")), 0, c.epoch(b"k"));
        assert!(matches!(c.read(b"k", 99 * MS), LocalRead::Fresh(Some(_))));

        let first = c.read(b"k", 100 * MS);
        let LocalRead::Stale {
            value: Some(v),
            refresh: Some(token),
        } = first
        else {
            panic!("expected stale with token, got {first:?}");
        };
        assert_eq!(v, Bytes::from_static(b"v"));
        // While the token is held nobody else refreshes.
        for _ in 0..10 {
            assert!(matches!(
                c.read(b"k", 200 * MS),
                LocalRead::Stale { refresh: None, .. }
            ));
        }
        // A failed refresh (token dropped) lets the next request try.
        drop(token);
        assert!(matches!(
            c.read(b"k", 200 * MS),
            LocalRead::Stale {
                refresh: Some(_),
                ..
            }
        ));
        assert!(matches!(c.read(b"k", 500 * MS), LocalRead::Absent));
        // A refresh replaces the entry: fresh again.
        c.store(
            b"k",
            Some(Bytes::from_static(b"w")),
            500 * MS,
            c.epoch(b"k"),
        );
        assert!(matches!(c.read(b"k", 550 * MS), LocalRead::Fresh(Some(v)) if v == "w"));
    }

    #[test]
    fn misses_are_cached_too() {
        let c = cache(1 << 20);
        c.store(b"gone", None, 0, c.epoch(b"gone"));
        assert!(matches!(c.read(b"gone", 0), LocalRead::Fresh(None)));
        c.invalidate(b"gone");
        assert!(matches!(c.read(b"gone", 0), LocalRead::Absent));
        assert_eq!(c.weighted_size(), 0);
    }

    #[test]
    fn the_oldest_fetched_go_first_and_expired_ones_at_the_next_write() {
        let c = LocalCache::new(
            &LocalConfig {
                max_bytes: 3 * (1 + 100 + ENTRY_OVERHEAD),
                ttl: Duration::from_millis(100),
                max_stale: Duration::from_millis(400),
            },
            100,
        );
        let v = Bytes::from(vec![0u8; 100]);
        c.store(b"a", Some(v.clone()), MS, c.epoch(b"a"));
        c.store(b"b", Some(v.clone()), 2 * MS, c.epoch(b"b"));
        c.store(b"c", Some(v.clone()), 3 * MS, c.epoch(b"c"));
        c.store(b"d", Some(v.clone()), 4 * MS, c.epoch(b"d"));
        assert!(
            matches!(c.read(b"a", 4 * MS), LocalRead::Absent),
            "oldest evicted"
        );
        for k in [b"b", b"c", b"d"] {
            assert!(matches!(c.read(k, 4 * MS), LocalRead::Fresh(Some(_))));
        }
        // Past the usable age, the next write drops them.
        c.store(b"e", Some(v), 700 * MS, c.epoch(b"e"));
        assert_eq!(c.weighted_size(), 1 + 100 + ENTRY_OVERHEAD);
    }

    #[test]
    fn a_fill_that_began_before_a_write_is_not_kept() {
        let c = cache(1 << 20);
        c.store(b"k", Some(Bytes::from_static(b"v1")), 0, c.epoch(b"k"));
        // A refresh starts reading from Redis ...
        let began = c.epoch(b"k");
        // ... this instance writes the key (and drops its copy) ...
        c.invalidate(b"k");
        // ... and the refresh comes back with the value from before the write.
        c.store(b"k", Some(Bytes::from_static(b"v1")), MS, began);
        assert!(matches!(c.read(b"k", MS), LocalRead::Absent));
        // A fill that began after the write is kept.
        c.store(b"k", Some(Bytes::from_static(b"v2")), MS, c.epoch(b"k"));
        assert!(matches!(c.read(b"k", MS), LocalRead::Fresh(Some(v)) if v == "v2"));
        // The same for a key that had no local copy when it was written.
        let began = c.epoch(b"new");
        c.invalidate(b"new");
        c.store(b"new", None, MS, began);
        assert!(matches!(c.read(b"new", MS), LocalRead::Absent));
    }

    #[test]
    fn a_value_larger_than_a_shard_is_not_kept() {
        let c = cache(4096);
        c.store(
            b"big",
            Some(Bytes::from(vec![0u8; 8192])),
            0,
            c.epoch(b"big"),
        );
        assert!(matches!(c.read(b"big", 0), LocalRead::Absent));
        assert_eq!(c.weighted_size(), 0);
    }

    proptest! {
        /// Whatever is stored, the cache never holds more bytes than its
        /// budget, and what it returns is the last value stored.
        #[test]
        fn bounded_in_bytes_and_never_wrong(
            ops in prop::collection::vec((0u8..40, 0usize..3000, any::<bool>()), 1..300),
            max in 2_000u64..50_000,
        ) {
            let c = LocalCache::new(
                &LocalConfig {
                    max_bytes: max,
                    ttl: Duration::from_secs(1),
                    max_stale: Duration::from_secs(1),
                },
                1000,
            );
            let mut last: HashMap<u8, usize> = HashMap::new();
            for (i, (k, len, remove)) in ops.into_iter().enumerate() {
                let key = [k];
                if remove {
                    c.invalidate(&key);
                    last.remove(&k);
                } else {
                    c.store(&key, Some(Bytes::from(vec![k; len])), i as u64 + 1, c.epoch(&key));
                    last.insert(k, len);
                }
                prop_assert!(c.weighted_size() <= c.budget());
                prop_assert!(c.budget() <= max);
                for (k, len) in &last {
                    if let LocalRead::Fresh(Some(v)) = c.read(&[*k], i as u64 + 1) {
                        prop_assert_eq!(v.len(), *len);
                        prop_assert!(v.iter().all(|b| b == k));
                    }
                }
            }
        }
    }
}
