//! [`Detector`]: counts reads per rule and reports keys crossing their
//! threshold.
//!
//! Per rule, every key first goes through the screening
//! [`WindowSketch`](crate::sketch::WindowSketch) (fixed memory, an upper
//! bound of the key's windowed count). A key whose bound reaches the
//! candidate level (`threshold / candidate_divisor`) gets an exact
//! [`BucketRing`](crate::window::BucketRing), seeded with the bound it had
//! before the promoting read, and from then on is counted there and only
//! there. Because the seed is an upper bound and the ring is exact, the
//! candidate's window count never under-reports; the over-estimate is the
//! seed and fades out of the window within one window length.
//!
//! Candidates live in a table sharded by key hash (a read-write lock per
//! shard; the common path takes a shard's read lock and does one atomic
//! add). The hot path allocates only when a key is promoted.
//!
//! A full shard refuses a newcomer when every cold candidate has counted at
//! least as many reads as the newcomer's bound (hot ones are never
//! evicted). The shard then remembers the refusal: the least count of its
//! cold candidates (the *floor*), the bucket, and the rule's generation (which
//! [`Detector::tick_at`] advances whenever it cools keys or sweeps
//! candidates). Until the bucket ends or the generation moves, a key whose
//! bound is at or below the floor is refused at the cost of a few atomic
//! loads, without the write lock or the scan of the shard; counts of
//! candidates only fall at bucket boundaries and candidates only become
//! evictable in a tick, so such a key would have been refused anyway. A key
//! whose bound passes the floor goes through promotion again and evicts.

use std::collections::VecDeque;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::error::Result;
use crate::metrics::{DetectorMetrics, RuleMetrics};
use crate::rule::Rule;
use crate::scan::display_key;
use crate::sketch::WindowSketch;
use crate::window::BucketRing;

const SHARDS: usize = 64;
const SHARD_SHIFT: u32 = 64 - SHARDS.trailing_zeros();

/// A key crossed its rule's threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HotKey {
    /// The key, as recorded.
    pub key: Vec<u8>,
    /// Reads counted in the rule's window when the key was detected (an
    /// upper bound of the true count; see the crate docs).
    pub rate: u64,
    /// Name of the rule that fired.
    pub rule: String,
    /// When it was detected, in the detector's clock (ms since the epoch).
    /// The issue calls it `detected_at`; the unit is in the name, as in
    /// `hotkey-scan`'s output and the znode data.
    pub detected_at_ms: u64,
}

/// A hot key stayed at or below its threshold for its cool-down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CooledKey {
    /// The key.
    pub key: Vec<u8>,
    /// Name of the rule it was hot under.
    pub rule: String,
    /// When it cooled down (ms since the epoch).
    pub cooled_at_ms: u64,
}

/// What the detector reports, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key became hot.
    Hot(HotKey),
    /// A hot key cooled down.
    Cooled(CooledKey),
}

/// Counters describing a detector, from [`Detector::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DetectorStats {
    /// Candidate keys with an exact window, all rules.
    pub candidates: usize,
    /// Keys hot right now.
    pub hot: usize,
    /// Keys promoted to candidates so far.
    pub promotions: u64,
    /// Candidates dropped (idle, or to make room) so far.
    pub evictions: u64,
    /// Reads refused an exact window because their shard was full of busier
    /// (or hot) candidates; they are counted in the sketch instead.
    /// Non-zero means `max_candidates` is too small for the traffic and
    /// recall is no longer guaranteed.
    pub rejected_promotions: u64,
    /// Events dropped because nobody drained them.
    pub dropped_events: u64,
    /// Bytes held by sketches and exact windows (keys included).
    pub memory_bytes: usize,
}

/// Keys up to this long are stored inside the candidate (no pointer to
/// chase on the hot path); longer ones on the heap.
const INLINE_KEY: usize = 32;

enum KeyBytes {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl KeyBytes {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            KeyBytes::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            KeyBytes::Heap(key.into())
        }
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        match self {
            KeyBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyBytes::Heap(b) => b,
        }
    }
}

/// A key with an exact window. Field order keeps what a read touches
/// (hash, key, flag, ring) together.
struct Candidate {
    hash: u64,
    key: KeyBytes,
    hot: AtomicBool,
    ring: BucketRing,
}

impl Candidate {
    #[inline]
    fn is(&self, hash: u64, key: &[u8]) -> bool {
        self.hash == hash && self.key.as_slice() == key
    }

    fn memory_bytes(&self) -> usize {
        let heap_key = match &self.key {
            KeyBytes::Inline { .. } => 0,
            KeyBytes::Heap(b) => b.len(),
        };
        size_of::<Self>() + 16 + heap_key + self.ring.heap_bytes()
    }
}

struct HotEntry {
    candidate: Arc<Candidate>,
    event: HotKey,
    below_since: Option<u64>,
}

struct RuleCounter {
    rule: Rule,
    bucket_ms: u64,
    window_ms: u64,
    cooldown_ms: u64,
    candidate_level: u64,
    shard_cap: usize,
    sketch: WindowSketch,
    shards: Box<[Shard]>,
    hot: Mutex<Vec<HotEntry>>,
    next_sweep_ms: AtomicU64,
    /// Advanced by `tick_at` after it cooled keys or swept candidates (the
    /// only ways a full shard's floor can fall within a bucket), so that
    /// refusals remembered before are no longer trusted.
    generation: AtomicU64,
    metrics: RuleMetrics,
}

/// One shard of a rule's candidate table.
struct Shard {
    table: RwLock<HashTable<Arc<Candidate>>>,
    /// The last refusal (see the module docs), packed by [`Refusal::pack`];
    /// 0 when there is none. Written under the write lock of `table`.
    refusal: AtomicU64,
}

/// A remembered refusal: it holds while the rule's generation and the bucket
/// are the same, for keys whose bound is at most `floor`.
///
/// Packed into 64 bits: generation (low 16 bits of it), bucket number (low
/// 24 bits) and floor (24 bits, clamped down, which only makes the memo
/// refuse less; a floor of 0 means no memo, as no refusal has a floor
/// below the candidate level, at least 1). Both truncations wrap after 2^16
/// ticks that change something or 2^24 buckets, and a memo has to match
/// both at once to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    generation: u64,
    bucket: u64,
    floor: u64,
}

impl Refusal {
    const FLOOR_MAX: u64 = (1 << 24) - 1;

    fn pack(self) -> u64 {
        ((self.generation & 0xFFFF) << 48)
            | ((self.bucket & 0xFF_FFFF) << 24)
            | self.floor.min(Self::FLOOR_MAX)
    }

    /// Whether the packed memo `memo` refuses a key whose bound is `wanted`
    /// in `bucket` at `generation`.
    #[inline]
    fn refuses(memo: u64, generation: u64, bucket: u64, wanted: u64) -> bool {
        let floor = memo & Self::FLOOR_MAX;
        floor != 0
            && wanted <= floor
            && (memo >> 24) & 0xFF_FFFF == bucket & 0xFF_FFFF
            && memo >> 48 == generation & 0xFFFF
    }
}

#[inline]
fn table_hash(hash: u64) -> u64 {
    // The shard index uses the top bits and the sketch the low ones; remix
    // so that the table's own control bits are independent of both.
    hash.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// Counts reads and detects hot keys. See the crate docs for the guarantees.
///
/// All methods take `&self`; share it with an `Arc` across threads.
pub struct Detector {
    config: Config,
    rules: Box<[RuleCounter]>,
    clock: Arc<dyn Clock>,
    hasher: foldhash::fast::FixedState,
    events: Mutex<VecDeque<Event>>,
    max_pending_events: usize,
    notify: Notify,
    promotions: AtomicU64,
    evictions: AtomicU64,
    rejected: AtomicU64,
    dropped_events: AtomicU64,
    metrics: DetectorMetrics,
}

impl fmt::Debug for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detector")
            .field("rules", &self.rules.len())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// A detector on the system clock.
    pub fn new(config: Config) -> Result<Self> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A detector reading time from `clock` (tests use a
    /// [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self> {
        config.validate()?;
        let blocks = (config.sketch_bytes / 64).next_power_of_two();
        let blocks = if blocks * 64 > config.sketch_bytes {
            blocks / 2
        } else {
            blocks
        };
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let window_ms = rule.window.as_millis() as u64;
                RuleCounter {
                    rule: rule.clone(),
                    bucket_ms: rule.bucket_ms(),
                    window_ms,
                    cooldown_ms: rule.cooldown.as_millis() as u64,
                    candidate_level: config.candidate_level(rule),
                    shard_cap: config.max_candidates.div_ceil(SHARDS),
                    sketch: WindowSketch::new(blocks, window_ms),
                    shards: (0..SHARDS)
                        .map(|_| Shard {
                            table: RwLock::new(HashTable::new()),
                            refusal: AtomicU64::new(0),
                        })
                        .collect(),
                    hot: Mutex::new(Vec::new()),
                    next_sweep_ms: AtomicU64::new(0),
                    generation: AtomicU64::new(0),
                    metrics: RuleMetrics::new(&rule.name),
                }
            })
            .collect();
        let seed = config
            .hash_seed
            .unwrap_or_else(|| foldhash::fast::RandomState::default().hash_one(0u64));
        Ok(Detector {
            max_pending_events: config.max_pending_events,
            config,
            rules,
            clock,
            hasher: foldhash::fast::FixedState::with_seed(seed),
            events: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            promotions: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped_events: AtomicU64::new(0),
            metrics: DetectorMetrics::new(),
        })
    }

    /// The configuration it runs with.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The clock this detector reads.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The rules, in matching order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> + '_ {
        self.rules.iter().map(|r| &r.rule)
    }

    /// Records one read of `key` now.
    #[inline]
    pub fn record(&self, key: &[u8]) {
        self.record_at(key, 1, self.clock.now_ms());
    }

    /// Records `n` reads of `key` now (for pre-aggregated counts).
    #[inline]
    pub fn record_n(&self, key: &[u8], n: u64) {
        self.record_at(key, n, self.clock.now_ms());
    }

    /// Records `n` reads of `key` at `now_ms` (the sans-IO form: time is an
    /// argument). Time should not go backwards by more than a bucket; reads
    /// stamped in the past are counted in the newest bucket they meet.
    ///
    /// Any `now_ms` is accepted, `u64::MAX` included: time arithmetic
    /// saturates instead of overflowing (bucket numbers wrap, as they do
    /// every 2^32 buckets anyway).
    #[inline]
    pub fn record_at(&self, key: &[u8], n: u64, now_ms: u64) {
        if n == 0 {
            return;
        }
        let Some(rc) = self.rules.iter().find(|r| r.rule.pattern.matches(key)) else {
            return;
        };
        let hash = self.hasher.hash_one(key);
        let shard = &rc.shards[(hash >> SHARD_SHIFT) as usize];
        {
            let table = shard.table.read();
            if let Some(c) = table.find(table_hash(hash), |c| c.is(hash, key)) {
                c.ring.add(n, now_ms);
                if !c.hot.load(Ordering::Relaxed) {
                    // Under the read lock: no reference-count traffic on the
                    // hot path (lock order: shard, then the hot registry).
                    self.check_hot(rc, c, now_ms);
                }
                return;
            }
        }
        // Promote before adding when this read reaches the candidate level,
        // so that heavy keys leave at most `candidate_level` reads in the
        // sketch and do not inflate the keys they collide with.
        let before = rc.sketch.estimate(hash, now_ms);
        let wanted = before.saturating_add(n);
        if wanted < rc.candidate_level {
            rc.sketch.add(hash, n, now_ms);
        } else if Refusal::refuses(
            shard.refusal.load(Ordering::Relaxed),
            rc.generation.load(Ordering::Acquire),
            now_ms / rc.bucket_ms,
            wanted,
        ) {
            // Refused already in this bucket and generation (module docs):
            // the shard would refuse again, so skip the write lock and scan.
            rc.sketch.add(hash, n, now_ms);
            self.rejected.fetch_add(1, Ordering::Relaxed);
        } else {
            self.promote(rc, key, hash, before, n, now_ms);
        }
    }

    #[cold]
    fn promote(&self, rc: &RuleCounter, key: &[u8], hash: u64, seed: u64, n: u64, now_ms: u64) {
        // Read before the candidates' hot flags: a tick that cools one of
        // them afterwards also moves the generation past this refusal's.
        let generation = rc.generation.load(Ordering::Acquire);
        let shard = &rc.shards[(hash >> SHARD_SHIFT) as usize];
        let mut table = shard.table.write();
        let th = table_hash(hash);
        if let Some(c) = table.find(th, |c| c.is(hash, key)) {
            // Promoted by another thread meanwhile.
            c.ring.add(n, now_ms);
            self.check_hot(rc, c, now_ms);
            return;
        }
        if table.len() >= rc.shard_cap {
            // Make room by evicting the least-counted cold candidate, if it
            // is below the newcomer. Its count goes back into the sketch so
            // that the sketch stays an upper bound for it.
            let victim = table
                .iter()
                .filter(|c| !c.hot.load(Ordering::Relaxed))
                .map(|c| (c.ring.sum(now_ms), c.hash, Arc::as_ptr(c)))
                .min_by_key(|(sum, _, _)| *sum);
            match victim {
                Some((sum, vhash, victim)) if sum < seed.saturating_add(n) => {
                    if let Ok(entry) = table
                        .find_entry(table_hash(vhash), |c| std::ptr::eq(Arc::as_ptr(c), victim))
                    {
                        entry.remove();
                    }
                    rc.sketch.add(vhash, sum, now_ms);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    // No room: the read stays in the sketch, which remains
                    // an upper bound for the key. Remember the floor so that
                    // reads refused again skip this lock and scan.
                    rc.sketch.add(hash, n, now_ms);
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    let floor = victim.map_or(u64::MAX, |(sum, _, _)| sum);
                    let memo = Refusal {
                        generation,
                        bucket: now_ms / rc.bucket_ms,
                        floor,
                    };
                    shard.refusal.store(memo.pack(), Ordering::Relaxed);
                    return;
                }
            }
        }
        let c = Arc::new(Candidate {
            key: KeyBytes::new(key),
            hash,
            ring: BucketRing::new(rc.rule.buckets, rc.bucket_ms),
            hot: AtomicBool::new(false),
        });
        c.ring.add(seed.saturating_add(n), now_ms);
        table.insert_unique(th, Arc::clone(&c), |c| table_hash(c.hash));
        self.promotions.fetch_add(1, Ordering::Relaxed);
        // Still under the write lock, so that no other promotion can evict
        // the candidate between this check and its registration as hot.
        self.check_hot(rc, &c, now_ms);
    }

    #[inline]
    fn check_hot(&self, rc: &RuleCounter, c: &Arc<Candidate>, now_ms: u64) {
        let sum = c.ring.sum(now_ms);
        if sum > rc.rule.threshold
            && c.hot
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let event = HotKey {
                key: c.key.as_slice().to_vec(),
                rate: sum,
                rule: rc.rule.name.clone(),
                detected_at_ms: now_ms,
            };
            rc.hot.lock().push(HotEntry {
                candidate: Arc::clone(c),
                event: event.clone(),
                below_since: None,
            });
            on_hot(rc, &event);
            self.push_event(Event::Hot(event));
        }
    }

    fn push_event(&self, event: Event) {
        let mut q = self.events.lock();
        if q.len() >= self.max_pending_events {
            q.pop_front();
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(event);
        drop(q);
        self.notify.notify_one();
    }

    /// Advances time to the clock's now: cools down keys, drops idle
    /// candidates. Call it about once per bucket (`spawn_ticker` does).
    pub fn tick(&self) {
        self.tick_at(self.clock.now_ms());
    }

    /// [`tick`](Self::tick) at an explicit time; any `now_ms` is accepted
    /// (see [`record_at`](Self::record_at)).
    pub fn tick_at(&self, now_ms: u64) {
        for rc in self.rules.iter() {
            let mut cooled = Vec::new();
            rc.hot.lock().retain_mut(|e| {
                if e.candidate.ring.sum(now_ms) > rc.rule.threshold {
                    e.below_since = None;
                    return true;
                }
                let since = *e.below_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= rc.cooldown_ms {
                    e.candidate.hot.store(false, Ordering::Release);
                    cooled.push(CooledKey {
                        key: e.event.key.clone(),
                        rule: rc.rule.name.clone(),
                        cooled_at_ms: now_ms,
                    });
                    false
                } else {
                    true
                }
            });
            if !cooled.is_empty() {
                // Cooled candidates are evictable now: full shards' floors
                // may have fallen, so their refusals are not trusted any more.
                rc.generation.fetch_add(1, Ordering::Release);
                rc.metrics.cooled.increment(cooled.len() as u64);
                rc.metrics.hot_keys.decrement(cooled.len() as f64);
            }
            for c in cooled {
                tracing::info!(
                    rule = %c.rule,
                    key = %log_key(&c.key),
                    cooled_at_ms = c.cooled_at_ms,
                    "hot key cooled down"
                );
                self.push_event(Event::Cooled(c));
            }
            let due = rc.next_sweep_ms.load(Ordering::Relaxed);
            if now_ms >= due
                && rc
                    .next_sweep_ms
                    .compare_exchange(
                        due,
                        now_ms.saturating_add(rc.window_ms),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                let mut swept = 0;
                for shard in rc.shards.iter() {
                    let mut table = shard.table.write();
                    let before = table.len();
                    table.retain(|c| c.hot.load(Ordering::Relaxed) || c.ring.sum(now_ms) > 0);
                    swept += before - table.len();
                }
                if swept > 0 {
                    // Room in some shards: forget their refusals.
                    rc.generation.fetch_add(1, Ordering::Release);
                    self.evictions.fetch_add(swept as u64, Ordering::Relaxed);
                }
            }
        }
        self.publish_counters();
    }

    /// Publishes the candidate-table counters to the `metrics` recorder
    /// (kept in plain atomics on the read path).
    fn publish_counters(&self) {
        let m = &self.metrics;
        m.promotions
            .publish(self.promotions.load(Ordering::Relaxed));
        m.evictions.publish(self.evictions.load(Ordering::Relaxed));
        m.rejected.publish(self.rejected.load(Ordering::Relaxed));
        m.dropped_events
            .publish(self.dropped_events.load(Ordering::Relaxed));
    }

    /// Takes the next pending event, if any.
    pub fn poll_event(&self) -> Option<Event> {
        self.events.lock().pop_front()
    }

    /// Takes all pending events.
    pub fn drain_events(&self) -> Vec<Event> {
        self.events.lock().drain(..).collect()
    }

    /// Waits for the next event (for an async driver with one consumer).
    pub async fn next_event(&self) -> Event {
        loop {
            if let Some(e) = self.poll_event() {
                return e;
            }
            self.notify.notified().await;
        }
    }

    /// The keys hot right now, with the event that made each hot.
    #[must_use]
    pub fn hot_keys(&self) -> Vec<HotKey> {
        self.rules
            .iter()
            .flat_map(|rc| {
                rc.hot
                    .lock()
                    .iter()
                    .map(|e| e.event.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The count in the window of `key` as the detector sees it now: the
    /// exact window for a candidate, the sketch's upper bound otherwise, and
    /// `None` when no rule matches the key.
    #[must_use]
    pub fn estimate_at(&self, key: &[u8], now_ms: u64) -> Option<u64> {
        let rc = self.rules.iter().find(|r| r.rule.pattern.matches(key))?;
        let hash = self.hasher.hash_one(key);
        let table = rc.shards[(hash >> SHARD_SHIFT) as usize].table.read();
        Some(match table.find(table_hash(hash), |c| c.is(hash, key)) {
            Some(c) => c.ring.sum(now_ms),
            None => rc.sketch.estimate(hash, now_ms),
        })
    }

    /// Counters and memory use (also publishes the counters to the
    /// `metrics` recorder, as [`tick`](Self::tick) does).
    #[must_use]
    pub fn stats(&self) -> DetectorStats {
        self.publish_counters();
        let mut s = DetectorStats {
            promotions: self.promotions.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            rejected_promotions: self.rejected.load(Ordering::Relaxed),
            dropped_events: self.dropped_events.load(Ordering::Relaxed),
            ..DetectorStats::default()
        };
        for rc in self.rules.iter() {
            s.memory_bytes += rc.sketch.memory_bytes();
            for shard in rc.shards.iter() {
                let t = shard.table.read();
                s.candidates += t.len();
                s.memory_bytes +=
                    t.capacity() * 16 + t.iter().map(|c| c.memory_bytes()).sum::<usize>();
            }
            s.hot += rc.hot.lock().len();
        }
        s
    }

    /// Spawns a tokio task that calls [`tick`](Self::tick) every `period`
    /// (use [`tick_period`](Self::tick_period); a zero period counts as
    /// 1 ms) until the handle is aborted.
    pub fn spawn_ticker(
        self: &Arc<Self>,
        period: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        let period = period.max(std::time::Duration::from_millis(1));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                this.tick();
            }
        })
    }

    /// The smallest bucket length of the rules: how often to tick.
    #[must_use]
    pub fn tick_period(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.rules.iter().map(|r| r.bucket_ms).min().unwrap_or(100),
        )
    }
}

impl Drop for Detector {
    /// Takes this detector's hot keys out of the `hotkey_hot_keys` gauge,
    /// which sums the detectors of the process.
    fn drop(&mut self) {
        for rc in self.rules.iter() {
            let hot = rc.hot.lock().len();
            if hot > 0 {
                rc.metrics.hot_keys.decrement(hot as f64);
            }
        }
    }
}

/// A detection's metrics and log line: once per hot episode of a key, so
/// kept out of line, away from the read path.
#[cold]
#[inline(never)]
fn on_hot(rc: &RuleCounter, event: &HotKey) {
    rc.metrics.detected.increment(1);
    rc.metrics.hot_keys.increment(1.0);
    tracing::info!(
        rule = %event.rule,
        key = %log_key(&event.key),
        rate = event.rate,
        detected_at_ms = event.detected_at_ms,
        "hot key detected"
    );
}

/// A key as logged: readable, and at most about 128 bytes of it.
fn log_key(key: &[u8]) -> String {
    const SHOWN: usize = 128;
    if key.len() <= SHOWN {
        display_key(key)
    } else {
        format!("{}... ({} bytes)", display_key(&key[..SHOWN]), key.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    fn detector(rules: Vec<Rule>) -> (Detector, ManualClock) {
        let clock = ManualClock::new(1_000_000);
        let cfg = Config {
            rules,
            sketch_bytes: 1 << 16,
            hash_seed: Some(1),
            ..Config::default()
        };
        (
            Detector::with_clock(cfg, Arc::new(clock.clone())).unwrap(),
            clock,
        )
    }

    fn hot_events(d: &Detector) -> Vec<HotKey> {
        d.drain_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Hot(h) => Some(h),
                Event::Cooled(_) => None,
            })
            .collect()
    }

    #[test]
    fn exactly_threshold_is_not_hot_one_more_is() {
        let (d, clock) = detector(vec![Rule::default()]);
        for _ in 0..1000 {
            d.record(b"k");
        }
        assert!(
            d.drain_events().is_empty(),
            "1000 reads is not more than 1000"
        );
        clock.advance_ms(999);
        d.record(b"k");
        let ev = hot_events(&d);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].key, b"k");
        assert_eq!(ev[0].rate, 1001);
        assert_eq!(ev[0].rule, "default");
        assert_eq!(ev[0].detected_at_ms, 1_000_999);
        d.record(b"k");
        assert!(d.drain_events().is_empty(), "no second event while hot");
        assert_eq!(d.hot_keys().len(), 1);
    }

    #[test]
    fn reads_spread_over_more_than_the_window_are_not_hot() {
        let (d, clock) = detector(vec![Rule::default()]);
        // 600 reads per 1 s window, for 10 s: never more than 1000 in a window.
        for _ in 0..100 {
            for _ in 0..60 {
                d.record(b"steady");
            }
            clock.advance_ms(100);
            d.tick();
        }
        assert!(hot_events(&d).is_empty());
        let est = d.estimate_at(b"steady", clock.now_ms()).unwrap();
        assert!((540..=600 + 250).contains(&est), "window estimate {est}");
    }

    #[test]
    fn windows_are_bucket_aligned_with_one_bucket_of_slack() {
        // 1_000_000 is a bucket boundary; buckets of 100 ms, 10 per window.
        // 1001 reads 900 ms apart (buckets 0 and 9) share a window.
        let (d, _clock) = detector(vec![Rule::default()]);
        d.record_at(b"k", 500, 1_000_099);
        d.record_at(b"k", 501, 1_000_999);
        assert_eq!(hot_events(&d).len(), 1);
        // 990 ms apart, but in buckets 0 and 10: never in one window.
        let (d, _clock) = detector(vec![Rule::default()]);
        d.record_at(b"k", 500, 1_000_050);
        d.record_at(b"k", 501, 1_001_040);
        assert!(hot_events(&d).is_empty());
        assert_eq!(d.estimate_at(b"k", 1_001_040), Some(501));
    }

    #[test]
    fn detection_happens_at_the_crossing_read() {
        let (d, clock) = detector(vec![Rule::default().with_threshold(100)]);
        // 30 reads per 100 ms bucket: the window passes 100 during the 4th bucket.
        let mut detected = None;
        for bucket in 0..10u64 {
            for i in 0..30 {
                d.record(b"k");
                if detected.is_none() && !d.drain_events().is_empty() {
                    detected = Some(bucket * 30 + i + 1);
                }
            }
            clock.advance_ms(100);
        }
        assert_eq!(detected, Some(101), "hot at the 101st read");
    }

    #[test]
    fn cools_down_after_staying_below_for_the_cooldown() {
        let rule = Rule::default()
            .with_threshold(10)
            .with_cooldown(Duration::from_millis(500));
        let (d, clock) = detector(vec![rule]);
        for _ in 0..11 {
            d.record(b"k");
        }
        assert_eq!(hot_events(&d).len(), 1);
        // Still in the window: stays hot.
        clock.advance_ms(900);
        d.tick();
        assert!(d.drain_events().is_empty());
        // Out of the window at +1000; below since then.
        clock.advance_ms(100);
        d.tick();
        clock.advance_ms(400);
        d.tick();
        assert!(d.drain_events().is_empty(), "only 400 ms below");
        // A burst above the threshold resets the cool-down.
        for _ in 0..11 {
            d.record(b"k");
        }
        d.tick();
        clock.advance_ms(1000);
        d.tick();
        clock.advance_ms(499);
        d.tick();
        assert!(d.drain_events().is_empty());
        clock.advance_ms(1);
        d.tick();
        let ev = d.drain_events();
        assert_eq!(ev.len(), 1);
        assert!(
            matches!(&ev[0], Event::Cooled(c) if c.key == b"k" && c.cooled_at_ms == clock.now_ms())
        );
        assert!(d.hot_keys().is_empty());
        // And it can turn hot again.
        for _ in 0..11 {
            d.record(b"k");
        }
        assert_eq!(hot_events(&d).len(), 1);
    }

    #[test]
    fn first_matching_rule_wins_and_unmatched_keys_are_ignored() {
        let (d, _clock) = detector(vec![
            Rule::prefix("users", "user:").with_threshold(5),
            Rule::glob("items", "item:*:v?").with_threshold(2),
        ]);
        for _ in 0..6 {
            d.record(b"user:1");
            d.record(b"order:1");
        }
        for _ in 0..3 {
            d.record(b"item:7:v2");
        }
        let mut ev = hot_events(&d);
        ev.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            ev.iter()
                .map(|e| (e.key.as_slice(), e.rule.as_str()))
                .collect::<Vec<_>>(),
            vec![(&b"item:7:v2"[..], "items"), (&b"user:1"[..], "users")]
        );
        assert_eq!(d.estimate_at(b"order:1", 1_000_000), None);
    }

    #[test]
    fn aggregated_counts_and_binary_keys() {
        let (d, _clock) = detector(vec![Rule::default()]);
        let key = [0u8, 255, b'/', 0];
        d.record_n(&key, 600);
        d.record_n(&key, 401);
        let ev = hot_events(&d);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].key, key);
        assert_eq!(ev[0].rate, 1001);
    }

    #[test]
    fn idle_candidates_are_swept_and_memory_is_bounded() {
        let cfg = Config {
            max_candidates: 128,
            sketch_bytes: 1 << 20,
            hash_seed: Some(3),
            ..Config::default()
        };
        let d = Detector::with_clock(cfg, Arc::new(ManualClock::new(0))).unwrap();
        // 10k distinct keys, each read 300 times: each becomes a candidate.
        for k in 0..10_000u32 {
            d.record_at(&k.to_le_bytes(), 300, 0);
        }
        let s = d.stats();
        assert!(s.candidates <= 128 + SHARDS, "{s:?}");
        assert!(s.evictions > 0 || s.rejected_promotions > 0);
        assert!(
            d.hot_keys().is_empty(),
            "no key was read more than 1000 times"
        );
        d.tick_at(5_000);
        assert_eq!(d.stats().candidates, 0, "idle candidates are dropped");
    }

    #[test]
    fn a_full_candidate_table_keeps_counting_in_the_sketch() {
        // One candidate per shard, each soon hot (so not evictable): most
        // keys are refused a window, yet their counts are never lost.
        let cfg = Config {
            rules: vec![Rule::default().with_threshold(8)],
            max_candidates: 1,
            sketch_bytes: 1 << 20,
            hash_seed: Some(9),
            ..Config::default()
        };
        let d = Detector::with_clock(cfg, Arc::new(ManualClock::new(0))).unwrap();
        for k in 0..400u32 {
            for _ in 0..9 {
                d.record_at(&k.to_le_bytes(), 1, 5);
            }
        }
        let s = d.stats();
        assert!(s.candidates <= SHARDS && s.rejected_promotions > 0, "{s:?}");
        assert_eq!(s.hot, s.candidates);
        for k in 0..400u32 {
            assert!(d.estimate_at(&k.to_le_bytes(), 5).unwrap() >= 9, "key {k}");
        }
    }

    #[test]
    fn times_near_u64_max_do_not_overflow() {
        let (d, _clock) = detector(vec![Rule::default().with_threshold(10)]);
        for now in [u64::MAX - 1, u64::MAX] {
            d.tick_at(now);
            d.record_at(b"k", 6, now);
            d.tick_at(now);
        }
        let ev = hot_events(&d);
        assert_eq!(ev.len(), 1, "12 reads within one bucket cross 10");
        assert_eq!((ev[0].rate, ev[0].detected_at_ms), (12, u64::MAX));
        d.tick_at(u64::MAX);
        assert_eq!(d.stats().hot, 1, "still in the window");
        assert_eq!(d.estimate_at(b"k", u64::MAX), Some(12));
    }

    proptest::proptest! {
        /// Any caller time, anywhere in `u64` and in any order, neither
        /// panics nor loses the read just recorded.
        #[test]
        fn any_caller_time_is_safe(
            ops in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::prelude::any::<u64>(),
                        (u64::MAX - 5_000)..=u64::MAX,
                        0u64..5_000,
                    ],
                    0u8..4,
                    1u64..50,
                    proptest::prelude::any::<bool>(),
                ),
                1..100,
            )
        ) {
            let (d, _clock) = detector(vec![Rule::default().with_threshold(40)]);
            for (now, key, n, tick) in ops {
                if tick {
                    d.tick_at(now);
                }
                d.record_at(&[key], n, now);
                proptest::prop_assert!(d.estimate_at(&[key], now).unwrap() >= n);
            }
        }
    }

    /// A detector whose shards hold one candidate each, and two keys of
    /// one shard.
    fn one_per_shard(rule: Rule) -> (Detector, ManualClock, [u8; 4], [u8; 4]) {
        let clock = ManualClock::new(1_000_000);
        let cfg = Config {
            rules: vec![rule],
            max_candidates: SHARDS,
            sketch_bytes: 1 << 20,
            hash_seed: Some(5),
            ..Config::default()
        };
        let d = Detector::with_clock(cfg, Arc::new(clock.clone())).unwrap();
        let shard = |k: u32| d.hasher.hash_one(k.to_le_bytes()) >> SHARD_SHIFT;
        let other = (1..).find(|&k| shard(k) == shard(0)).unwrap();
        (d, clock, 0u32.to_le_bytes(), other.to_le_bytes())
    }

    /// Records `reads` reads of `key` on another thread while this one holds
    /// the read lock of the key's shard: they finish only if none of them
    /// takes the write lock.
    fn record_without_write_lock(d: &Arc<Detector>, key: [u8; 4], reads: u64) {
        let hash = d.hasher.hash_one(key);
        let _held = d.rules[0].shards[(hash >> SHARD_SHIFT) as usize]
            .table
            .read();
        let (tx, rx) = std::sync::mpsc::channel();
        let d2 = Arc::clone(d);
        std::thread::spawn(move || {
            for _ in 0..reads {
                d2.record(&key);
            }
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a refused read waited for the shard's write lock");
    }

    #[test]
    fn a_refused_key_skips_the_write_lock_and_evicts_once_past_the_floor() {
        // Candidate level 12; the shard's one slot holds `cold`, 50 reads.
        let (d, _clock, cold, key) = one_per_shard(Rule::default().with_threshold(100));
        let d = Arc::new(d);
        d.record_n(&cold, 50);
        for _ in 0..12 {
            d.record(&key); // the 12th reaches the level: refused
        }
        assert_eq!(d.stats().rejected_promotions, 1);
        // Reads 13..=50 are at or below the floor (50): refused cheaply.
        record_without_write_lock(&d, key, 38);
        assert_eq!(d.stats().rejected_promotions, 39);
        assert_eq!(d.estimate_at(&key, d.clock().now_ms()), Some(50));
        // The 51st passes the floor and evicts `cold`; the 101st is hot.
        for _ in 51..=101 {
            d.record(&key);
        }
        let ev = hot_events(&d);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].key.as_slice(), ev[0].rate), (&key[..], 101));
        let s = d.stats();
        assert_eq!((s.evictions, s.rejected_promotions), (1, 39), "{s:?}");
    }

    #[test]
    fn a_refused_key_is_detected_once_a_hot_candidate_cools_down() {
        let rule = Rule::default()
            .with_threshold(100)
            .with_cooldown(Duration::from_millis(100));
        let (d, clock, hot, key) = one_per_shard(rule);
        let d = Arc::new(d);
        d.record_n(&hot, 101);
        assert_eq!(hot_events(&d).len(), 1);
        // A hot candidate is never evicted: every read of `key` from the
        // 12th on is refused, all but the first without the write lock.
        for _ in 0..12 {
            d.record(&key);
        }
        record_without_write_lock(&d, key, 200);
        assert!(hot_events(&d).is_empty());
        assert_eq!(d.stats().rejected_promotions, 201);
        // Two windows later `hot` is below its threshold (not yet for its
        // cool-down) and the reads above have left the sketch. `key` is
        // refused again, in two buckets ...
        clock.advance_ms(2000);
        d.tick();
        clock.advance_ms(50);
        for _ in 0..12 {
            d.record(&key); // the 12th reaches the level
        }
        clock.advance_ms(50);
        for _ in 0..12 {
            d.record(&key); // the first of a new bucket takes the lock
        }
        assert_eq!(d.stats().rejected_promotions, 214);
        // ... then, in the same bucket as the last refusal, the tick cools
        // `hot` down: the remembered refusal no longer holds, the next read
        // evicts `hot`, and the 101st read in the window is detected.
        d.tick();
        assert!(matches!(d.poll_event(), Some(Event::Cooled(c)) if c.key == hot));
        for _ in 0..77 {
            d.record(&key);
        }
        let ev = hot_events(&d);
        assert_eq!(ev.len(), 1, "detected once room freed up");
        assert_eq!((ev[0].key.as_slice(), ev[0].rate), (&key[..], 101));
        let s = d.stats();
        assert_eq!((s.evictions, s.rejected_promotions), (1, 214), "{s:?}");
    }

    #[test]
    fn refusal_memo_round_trips_and_expires() {
        let memo = Refusal {
            generation: 3,
            bucket: 17_000_000_123,
            floor: 50,
        }
        .pack();
        assert!(Refusal::refuses(memo, 3, 17_000_000_123, 50));
        assert!(
            !Refusal::refuses(memo, 3, 17_000_000_123, 51),
            "past the floor"
        );
        assert!(
            !Refusal::refuses(memo, 4, 17_000_000_123, 1),
            "new generation"
        );
        assert!(!Refusal::refuses(memo, 3, 17_000_000_124, 1), "new bucket");
        assert!(!Refusal::refuses(0, 0, 0, 1), "no memo");
        // A floor beyond 24 bits is clamped down: it refuses less, never more.
        let all_hot = Refusal {
            generation: 0,
            bucket: 0,
            floor: u64::MAX,
        }
        .pack();
        assert!(Refusal::refuses(all_hot, 0, 0, Refusal::FLOOR_MAX));
        assert!(!Refusal::refuses(all_hot, 0, 0, Refusal::FLOOR_MAX + 1));
    }

    #[test]
    fn concurrent_records_on_one_key_are_all_counted() {
        // Candidate level 12_500: the key is promoted while four threads record
        // it, so the sketch, the promotion and the ring all run concurrently.
        let (d, clock) = detector(vec![Rule::default().with_threshold(100_000)]);
        let d = Arc::new(d);
        let now = clock.now_ms();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = Arc::clone(&d);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        d.record_at(b"shared", 1, now);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let est = d.estimate_at(b"shared", now).unwrap();
        // One key, so no collisions: nothing is counted twice, and a read racing
        // with the key's promotion on another thread may be missed (the crate
        // docs' exception), at most one per thread.
        assert!((80_000 - 4..=80_000).contains(&est), "{est}");
        assert_eq!(d.stats().promotions, 1);
        assert!(d.drain_events().is_empty(), "80_000 is not above 100_000");
    }
}
