//! The in-process cache for hot keys: bounded in bytes, fresh for a short
//! TTL, then refreshed by one request at a time while the others are
//! served the stale value.
//!
//! moka holds the entries (its weigher bounds the cache in bytes, TinyLFU
//! decides evictions). Freshness is judged on the injected clock, not on
//! moka's, so one fake clock drives it in tests like everything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use moka::sync::Cache;

use crate::clock::nanos;
use crate::config::LocalConfig;

/// Bytes charged per entry on top of key and value: moka's node, the
/// `Arc<Entry>` and the two `Bytes` handles, rounded up.
pub(crate) const ENTRY_OVERHEAD: usize = 160;

#[derive(Debug)]
struct Entry {
    /// `None` records that the key did not exist.
    value: Option<Bytes>,
    fetched_ns: u64,
    refreshing: AtomicBool,
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
    cache: Cache<Bytes, Arc<Entry>>,
    ttl_ns: u64,
    usable_ns: u64,
}

impl LocalCache {
    pub(crate) fn new(cfg: &LocalConfig, name: &str) -> Self {
        let cache = Cache::builder()
            .name(&format!("ratelimit-local-{name}"))
            .max_capacity(cfg.max_bytes)
            .weigher(|k: &Bytes, e: &Arc<Entry>| {
                let size = k.len() + e.value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .build();
        LocalCache {
            cache,
            ttl_ns: nanos(cfg.ttl),
            usable_ns: nanos(cfg.ttl).saturating_add(nanos(cfg.max_stale)),
        }
    }

    #[inline]
    pub(crate) fn read(&self, key: &[u8], now_ns: u64) -> LocalRead {
        let Some(entry) = self.cache.get(key) else {
            return LocalRead::Absent;
        };
        let age = now_ns.saturating_sub(entry.fetched_ns);
        if age < self.ttl_ns {
            return LocalRead::Fresh(entry.value.clone());
        }
        if age >= self.usable_ns {
            self.cache.invalidate(key);
            return LocalRead::Absent;
        }
        let refresh = entry
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| RefreshToken(Arc::clone(&entry)));
        LocalRead::Stale {
            value: entry.value.clone(),
            refresh,
        }
    }

    pub(crate) fn store(&self, key: &[u8], value: Option<Bytes>, now_ns: u64) {
        self.cache.insert(
            Bytes::copy_from_slice(key),
            Arc::new(Entry {
                value,
                fetched_ns: now_ns,
                refreshing: AtomicBool::new(false),
            }),
        );
    }

    pub(crate) fn invalidate(&self, key: &[u8]) {
        self.cache.invalidate(key);
    }

    /// Bytes held, after moka's pending maintenance.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn cache(max_bytes: u64) -> LocalCache {
        LocalCache::new(
            &LocalConfig {
                max_bytes,
                ttl: Duration::from_millis(100),
                max_stale: Duration::from_millis(400),
            },
            "test",
        )
    }

    #[test]
    fn fresh_then_stale_with_one_refresher_then_absent() {
        let c = cache(1 << 20);
        assert!(matches!(c.read(b"k", 0), LocalRead::Absent));
        c.store(b"k", Some(Bytes::from_static(b"v")), 0);
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
        assert!(matches!(c.read(b"k", 0), LocalRead::Absent), "invalidated");
    }

    #[test]
    fn misses_are_cached_too() {
        let c = cache(1 << 20);
        c.store(b"gone", None, 0);
        assert!(matches!(c.read(b"gone", 0), LocalRead::Fresh(None)));
        c.invalidate(b"gone");
        assert!(matches!(c.read(b"gone", 0), LocalRead::Absent));
    }

    #[test]
    fn bounded_in_bytes() {
        let max = 64 * 1024;
        let c = cache(max);
        let value = Bytes::from(vec![7u8; 1000]);
        for i in 0..1000u32 {
            c.store(&i.to_be_bytes(), Some(value.clone()), 0);
        }
        let held = c.weighted_size();
        assert!(held <= max, "{held} bytes held, cap {max}");
        assert!(held > max / 2, "the cache is used: {held}");
    }
}
