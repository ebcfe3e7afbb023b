//! Rate limits: governor's GCRA over a keyed state store that cannot grow
//! without bound.
//!
//! governor's own keyed stores (`DashMapStateStore`, `HashMapStateStore`)
//! keep every key ever seen until someone calls `retain_recent`
//! (governor issue #171): a stream of distinct keys is a memory leak.
//! [`BoundedKeyStore`] implements governor's [`StateStore`] with
//!
//! * a **hard cap** on tracked keys, split over shards;
//! * **idle eviction**: a key unused for `idle` (at least the quota's
//!   refill time) is dropped when its shard is full. That is exact: such a
//!   key's bucket is full again, so forgetting it changes no decision;
//! * an **overflow cell**: when a shard is full of keys that are all still
//!   active, further new keys share one GCRA cell with the same quota,
//!   so they are limited together instead of being tracked (or let
//!   through unlimited).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use metrics::{Counter, Gauge};
use parking_lot::Mutex;

use crate::clock::{Time, nanos};
use crate::config::Rate;
use crate::error::{Error, Result};

/// Keys per shard below which one shard is used.
const KEYS_PER_SHARD: usize = 64;
/// Most shards.
const MAX_SHARDS: usize = 16;

/// A governor [`StateStore`] that cannot grow without bound.
///
/// governor's own keyed stores keep every key ever seen until someone
/// calls `retain_recent` (governor issue #171). This one has
///
/// * a **hard cap** on tracked keys, split over shards;
/// * **idle eviction**: a key unused for `idle` (at least the quota's
///   refill time) is dropped when its shard is full. That is exact: such a
///   key's bucket is full again, so forgetting it changes no decision;
/// * an **overflow cell**: when a shard is full of keys that are all still
///   active, further new keys share one GCRA cell with the same quota, so
///   they are limited together instead of being tracked (or let through
///   unlimited).
///
/// ```
/// use std::time::Duration;
/// use governor::clock::FakeRelativeClock;
/// use governor::middleware::NoOpMiddleware;
/// use governor::{Quota, RateLimiter, nanos::Nanos};
/// use ratelimit::BoundedKeyStore;
///
/// let clock = FakeRelativeClock::default();
/// let store = BoundedKeyStore::new(1_000, Duration::from_secs(1), clock.clone()).unwrap();
/// let quota = Quota::per_second(10u32.try_into().unwrap());
/// let limiter: RateLimiter<String, _, _, NoOpMiddleware<Nanos>> =
///     RateLimiter::new(quota, store, clock);
/// assert!(limiter.check_key(&"user:1".to_owned()).is_ok());
/// assert_eq!(limiter.into_state_store().len(), 1);
/// ```
pub struct BoundedKeyStore<K, C: Clock = DefaultClock> {
    shards: Box<[Mutex<Shard<K>>]>,
    caps: Box<[usize]>,
    idle_ns: u64,
    time: Time<C>,
    hasher: RandomState,
    overflow: Mutex<Option<Nanos>>,
    tracked: AtomicUsize,
    overflowed: AtomicU64,
    tracked_gauge: Gauge,
    overflow_counter: Counter,
}

struct Shard<K> {
    map: HashMap<K, Slot>,
    /// Earliest time of the next sweep, so that a shard full of active
    /// keys is not rescanned for every new key.
    next_sweep_ns: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    tat: Nanos,
    last_seen_ns: u64,
}

impl<K, C: Clock> fmt::Debug for BoundedKeyStore<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedKeyStore")
            .field("shards", &self.shards.len())
            .field("cap", &self.capacity())
            .field("tracked", &self.len())
            .field("idle", &Duration::from_nanos(self.idle_ns))
            .finish()
    }
}

impl<K, C: Clock> BoundedKeyStore<K, C> {
    /// The hard cap on tracked keys.
    pub fn capacity(&self) -> usize {
        self.caps.iter().sum()
    }

    /// Keys tracked now (never above [`capacity`](Self::capacity)).
    pub fn len(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that were decided by the shared overflow cell because the
    /// key's shard was full of active keys.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

impl<K: Hash + Eq + Clone, C: Clock> BoundedKeyStore<K, C> {
    /// A store tracking at most `cap` keys, evicting keys idle for `idle`.
    ///
    /// `idle` should be at least the quota's refill time
    /// ([`Rate::refill_time`]); shorter makes eviction forget buckets that
    /// are not yet full (more permissive).
    pub fn new(cap: usize, idle: Duration, clock: C) -> Result<Self> {
        if cap == 0 {
            return Err(Error::Config {
                field: "max_tracked_keys",
                value: "0".to_owned(),
                reason: "must be at least 1",
            });
        }
        let n = (cap / KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        let caps: Box<[usize]> = (0..n).map(|i| cap / n + usize::from(i < cap % n)).collect();
        Ok(BoundedKeyStore {
            shards: (0..n)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        next_sweep_ns: 0,
                    })
                })
                .collect(),
            caps,
            idle_ns: nanos(idle).max(1),
            time: Time::new(clock),
            hasher: RandomState::new(),
            overflow: Mutex::new(None),
            tracked: AtomicUsize::new(0),
            overflowed: AtomicU64::new(0),
            tracked_gauge: Gauge::noop(),
            overflow_counter: Counter::noop(),
        })
    }

    fn with_metrics(mut self, tracked: Gauge, overflow: Counter) -> Self {
        self.tracked_gauge = tracked;
        self.overflow_counter = overflow;
        self
    }

    /// Drops every key idle for at least `idle`, in every shard.
    pub fn evict_idle(&self) {
        let now = self.time.now_nanos();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            self.sweep(&mut shard, now);
        }
    }

    fn sweep(&self, shard: &mut Shard<K>, now: u64) {
        let before = shard.map.len();
        let idle = self.idle_ns;
        shard
            .map
            .retain(|_, s| now.saturating_sub(s.last_seen_ns) < idle);
        shard.next_sweep_ns = now.saturating_add(idle / 4);
        let removed = before - shard.map.len();
        if removed > 0 {
            let left = self.tracked.fetch_sub(removed, Ordering::Relaxed) - removed;
            self.tracked_gauge.set(left as f64);
        }
    }
}

impl<K: Hash + Eq + Clone, C: Clock> StateStore for BoundedKeyStore<K, C> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let idx = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        let now = self.time.now_nanos();
        let mut shard = self.shards[idx].lock();
        if let Some(slot) = shard.map.get_mut(key) {
            slot.last_seen_ns = now;
            let (result, tat) = f(Some(slot.tat))?;
            slot.tat = tat;
            return Ok(result);
        }
        let cap = self.caps[idx];
        if shard.map.len() >= cap && now >= shard.next_sweep_ns {
            self.sweep(&mut shard, now);
        }
        if shard.map.len() < cap {
            let (result, tat) = f(None)?;
            shard.map.insert(
                key.clone(),
                Slot {
                    tat,
                    last_seen_ns: now,
                },
            );
            let n = self.tracked.fetch_add(1, Ordering::Relaxed) + 1;
            self.tracked_gauge.set(n as f64);
            return Ok(result);
        }
        drop(shard);
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        self.overflow_counter.increment(1);
        let mut cell = self.overflow.lock();
        let (result, tat) = f(*cell)?;
        *cell = Some(tat);
        Ok(result)
    }
}

/// Lets the limiter and [`KeyedLimiter::store`] share one store (governor
/// has no accessor for a live limiter's store).
struct Shared<K, C: Clock>(Arc<BoundedKeyStore<K, C>>);

impl<K: Hash + Eq + Clone, C: Clock> StateStore for Shared<K, C> {
    type Key = K;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

/// A per-key limiter: governor's GCRA over a [`BoundedKeyStore`].
pub struct KeyedLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<Bytes, Shared<Bytes, C>, C, NoOpMiddleware<C::Instant>>,
    store: Arc<BoundedKeyStore<Bytes, C>>,
}

impl<C: Clock> fmt::Debug for KeyedLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("store", &self.store)
            .finish()
    }
}

impl<C: Clock + Clone> KeyedLimiter<C> {
    /// `rate` per key, at most `cap` keys tracked, keys idle for `idle`
    /// evicted; `idle` must be at least the rate's refill time. A rate with
    /// a zero count or burst is an error, as in [`Config`](crate::Config).
    pub fn new(rate: Rate, cap: usize, idle: Duration, clock: C) -> Result<Self> {
        rate.validate("rate")?;
        Self::build(rate, cap, idle, clock, Gauge::noop(), Counter::noop())
    }

    pub(crate) fn build(
        rate: Rate,
        cap: usize,
        idle: Duration,
        clock: C,
        tracked: Gauge,
        overflow: Counter,
    ) -> Result<Self> {
        if idle < rate.refill_time() {
            return Err(Error::Config {
                field: "key_idle_timeout",
                value: format!("{idle:?}"),
                reason: "must be at least the rate's refill time (interval * burst)",
            });
        }
        let store = Arc::new(
            BoundedKeyStore::new(cap, idle, clock.clone())?.with_metrics(tracked, overflow),
        );
        Ok(KeyedLimiter {
            limiter: RateLimiter::new(rate.quota(), Shared(Arc::clone(&store)), clock),
            store,
        })
    }

    /// Takes one permit for `key`; `false` when the key is over its rate.
    #[inline]
    pub fn check(&self, key: &[u8]) -> bool {
        self.limiter.check_key(&Bytes::copy_from_slice(key)).is_ok()
    }

    /// The state store (tracked keys, overflow count, eviction).
    pub fn store(&self) -> &BoundedKeyStore<Bytes, C> {
        &self.store
    }
}

/// A per-instance limiter: governor's GCRA on one atomic cell.
pub(crate) type DirectLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limits a read passes on its way to Redis.
pub(crate) struct Limits<C: Clock> {
    pub(crate) global: Option<DirectLimiter<C>>,
    pub(crate) per_key: Option<KeyedLimiter<C>>,
}

impl<C: Clock> fmt::Debug for Limits<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("global", &self.global.is_some())
            .field("per_key", &self.per_key)
            .finish()
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub(crate) fn new(
        global: Option<Rate>,
        per_key: Option<(Rate, usize, Duration)>,
        clock: &C,
        tracked: Gauge,
        overflow: Counter,
    ) -> Result<Self> {
        Ok(Limits {
            global: global.map(|r| RateLimiter::direct_with_clock(r.quota(), clock.clone())),
            per_key: per_key
                .map(|(rate, cap, idle)| {
                    KeyedLimiter::build(rate, cap, idle, clock.clone(), tracked, overflow)
                })
                .transpose()?,
        })
    }

    /// One permit of the per-instance limit.
    #[inline]
    pub(crate) fn check_global(&self) -> bool {
        self.global.as_ref().is_none_or(|l| l.check().is_ok())
    }

    /// One permit of `key`'s limit.
    #[inline]
    pub(crate) fn check_key(&self, key: &[u8]) -> bool {
        self.per_key.as_ref().is_none_or(|l| l.check(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::Quota;
    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;
    use std::num::NonZeroU32;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_cap_is_hard_and_idle_keys_make_room() {
        let clock = FakeRelativeClock::default();
        let rate = Rate::per_second(10).with_burst(2);
        let limiter = KeyedLimiter::new(rate, 100, SEC, clock.clone()).unwrap();
        let mut passed = 0;
        for i in 0..1000u32 {
            passed += usize::from(limiter.check(&i.to_be_bytes()));
            assert!(limiter.store().len() <= 100);
        }
        assert_eq!(limiter.store().len(), 100);
        assert_eq!(limiter.store().overflowed(), 900);
        // 100 tracked keys pass; the 900 others share one cell (burst 2).
        assert_eq!(passed, 102);
        // After `idle`, new keys evict the idle ones instead of overflowing.
        clock.advance(SEC);
        let before = limiter.store().overflowed();
        for i in 1000..1050u32 {
            assert!(limiter.check(&i.to_be_bytes()));
        }
        assert_eq!(limiter.store().overflowed(), before);
        assert!(limiter.store().len() <= 100);
    }

    #[test]
    fn overflow_keys_share_one_limited_cell() {
        let clock = FakeRelativeClock::default();
        let rate = Rate::per_second(1).with_burst(1);
        let limiter = KeyedLimiter::new(rate, 1, SEC, clock.clone()).unwrap();
        assert!(limiter.check(b"tracked"));
        // Two untracked keys share the overflow cell: only one passes.
        assert!(limiter.check(b"a"));
        assert!(!limiter.check(b"b"));
        assert!(!limiter.check(b"tracked"));
    }

    #[test]
    fn explicit_eviction() {
        let clock = FakeRelativeClock::default();
        let limiter = KeyedLimiter::new(Rate::per_second(10), 50, SEC, clock.clone()).unwrap();
        for i in 0..50u32 {
            assert!(limiter.check(&i.to_be_bytes()));
        }
        clock.advance(SEC / 2);
        limiter.store().evict_idle();
        assert_eq!(limiter.store().len(), 50);
        clock.advance(SEC / 2);
        limiter.store().evict_idle();
        assert!(limiter.store().is_empty());
    }

    #[test]
    fn idle_shorter_than_refill_is_refused() {
        let rate = Rate::per_second(1).with_burst(10);
        let err = KeyedLimiter::new(rate, 10, SEC, FakeRelativeClock::default()).unwrap_err();
        assert!(matches!(
            err,
            Error::Config {
                field: "key_idle_timeout",
                ..
            }
        ));
        assert!(BoundedKeyStore::<Bytes, _>::new(0, SEC, FakeRelativeClock::default()).is_err());
        for bad in [Rate::per_second(0), Rate::per_second(5).with_burst(0)] {
            let err = KeyedLimiter::new(bad, 10, SEC, FakeRelativeClock::default()).unwrap_err();
            assert!(matches!(err, Error::Config { field: "rate", .. }), "{err}");
        }
    }

    #[test]
    fn global_limit_follows_the_fake_clock() {
        let clock = FakeRelativeClock::default();
        let limits = Limits::new(
            Some(Rate::per_second(2).with_burst(2)),
            None,
            &clock,
            Gauge::noop(),
            Counter::noop(),
        )
        .unwrap();
        assert!(limits.check_global());
        assert!(limits.check_global());
        assert!(!limits.check_global());
        clock.advance(SEC / 2);
        assert!(limits.check_global());
        assert!(limits.check_key(b"anything"), "no per-key limit configured");
    }

    proptest! {
        /// Idle eviction is exact: until the first check that had to use
        /// the overflow cell, the bounded store (cap 3, six keys) decides
        /// exactly as governor's unbounded keyed store, however time
        /// advances and keys get evicted.
        #[test]
        fn decisions_match_governors_unbounded_store(
            steps in prop::collection::vec((0u8..6, 0u64..400), 1..400),
            burst in 1u32..4,
            per_second in 1u32..20,
        ) {
            let clock = FakeRelativeClock::default();
            let rate = Rate::per_second(per_second).with_burst(burst);
            let ours = KeyedLimiter::new(rate, 3, rate.refill_time(), clock.clone()).unwrap();
            let reference = RateLimiter::hashmap_with_clock(
                Quota::with_period(rate.interval())
                    .unwrap()
                    .allow_burst(NonZeroU32::new(burst).unwrap()),
                clock.clone(),
            );
            for (key, advance_ms) in steps {
                clock.advance(Duration::from_millis(advance_ms));
                let k = [key];
                let decision = ours.check(&k);
                if ours.store().overflowed() > 0 {
                    break;
                }
                prop_assert_eq!(decision, reference.check_key(&Bytes::copy_from_slice(&k)).is_ok());
                prop_assert!(ours.store().len() <= 3);
            }
        }

        /// However many distinct keys arrive, the store never tracks more
        /// than its cap.
        #[test]
        fn never_above_the_cap(
            keys in prop::collection::vec(any::<u16>(), 1..2000),
            cap in 1usize..300,
        ) {
            let clock = FakeRelativeClock::default();
            let limiter = KeyedLimiter::new(Rate::per_second(100), cap, SEC, clock.clone()).unwrap();
            for (i, k) in keys.iter().enumerate() {
                let _ = limiter.check(&k.to_be_bytes());
                if i % 100 == 0 {
                    clock.advance(SEC / 3);
                }
                prop_assert!(limiter.store().len() <= cap);
            }
            prop_assert_eq!(limiter.store().capacity(), cap);
        }
    }
}
