//! Exact sliding windows for candidate keys: a ring of time buckets.

use crate::sync::{AtomicU64, Ordering};

const COUNT_MASK: u64 = 0xFFFF_FFFF;

/// A ring of `buckets` atomic slots; each packs the bucket number it holds
/// (high 32 bits, wrapping) and its count (low 32 bits).
///
/// `add` is one `fetch_add` in the common case (same bucket as the slot
/// holds) and a compare-and-swap when the slot must be recycled for a new
/// bucket, so concurrent writers never lose a count and never take a lock.
/// A writer whose clock lags behind a slot's bucket adds to the newer
/// bucket: counts may move later in time, never earlier, so a window sum
/// never under-reports what was added inside the window.
pub(crate) struct BucketRing {
    slots: Slots,
    bucket_ms: u64,
}

/// Rings of up to `INLINE` buckets (the default rule has 10) live inside
/// the candidate, with no pointer to chase; longer ones on the heap.
const INLINE: usize = 12;

enum Slots {
    Inline { len: u8, slots: [AtomicU64; INLINE] },
    Heap(Box<[AtomicU64]>),
}

impl BucketRing {
    pub(crate) fn new(buckets: u32, bucket_ms: u64) -> Self {
        debug_assert!(buckets > 0 && bucket_ms > 0);
        let slots = if buckets as usize <= INLINE {
            Slots::Inline {
                len: buckets as u8,
                slots: Default::default(),
            }
        } else {
            Slots::Heap((0..buckets).map(|_| AtomicU64::new(0)).collect())
        };
        BucketRing { slots, bucket_ms }
    }

    #[inline]
    fn slots(&self) -> &[AtomicU64] {
        match &self.slots {
            Slots::Inline { len, slots } => &slots[..usize::from(*len)],
            Slots::Heap(s) => s,
        }
    }

    /// Bytes held outside the ring itself.
    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.slots {
            Slots::Inline { .. } => 0,
            Slots::Heap(s) => s.len() * 8,
        }
    }

    #[inline]
    fn locate(&self, now_ms: u64) -> (u32, &AtomicU64) {
        let bucket = now_ms / self.bucket_ms;
        let slots = self.slots();
        (
            bucket as u32,
            &slots[(bucket % slots.len() as u64) as usize],
        )
    }

    /// Adds `n` (saturating at `u32::MAX` per bucket) at `now_ms`.
    #[inline]
    pub(crate) fn add(&self, n: u64, now_ms: u64) {
        let (bucket, slot) = self.locate(now_ms);
        let n = n.min(COUNT_MASK);
        let mut old = slot.load(Ordering::Relaxed);
        loop {
            let current = self.is_current(bucket, old);
            let count = old & COUNT_MASK;
            if current && count + n <= COUNT_MASK {
                // Same bucket (or a newer one written by a clock ahead of ours).
                slot.fetch_add(n, Ordering::Relaxed);
                return;
            }
            let new = if current {
                (old & !COUNT_MASK) | COUNT_MASK
            } else {
                (u64::from(bucket) << 32) | n
            };
            match slot.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => old = actual,
            }
        }
    }

    /// Whether a slot holding `slot` counts for `bucket` itself: it holds
    /// `bucket`, or a bucket less than a ring ahead (a writer whose clock runs
    /// ahead). Anything else is stale (or never written) and is recycled.
    #[inline]
    fn is_current(&self, bucket: u32, slot: u64) -> bool {
        let ahead = ((slot >> 32) as u32).wrapping_sub(bucket);
        (ahead as usize) < self.slots().len()
    }

    /// The count in the window that ends in the bucket holding `now_ms`.
    #[inline]
    pub(crate) fn sum(&self, now_ms: u64) -> u64 {
        let bucket = (now_ms / self.bucket_ms) as u32;
        let slots = self.slots();
        let len = slots.len() as u32;
        slots
            .iter()
            .map(|s| {
                let v = s.load(Ordering::Relaxed);
                // In the window: at most `len - 1` buckets old, or less than
                // a ring ahead (see `is_current`).
                let age = bucket.wrapping_sub((v >> 32) as u32);
                if age < len || age.wrapping_neg() < len {
                    v & COUNT_MASK
                } else {
                    0
                }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn window_slides_bucket_by_bucket() {
        let r = BucketRing::new(10, 100);
        for t in (0..1000).step_by(100) {
            r.add(10, 100_000 + t);
        }
        assert_eq!(r.sum(100_999), 100);
        assert_eq!(r.sum(101_000), 90, "the first bucket left the window");
        assert_eq!(r.sum(101_899), 10);
        assert_eq!(r.sum(101_900), 0);
        r.add(1, 101_900);
        assert_eq!(r.sum(101_900), 1, "a recycled slot starts from zero");
    }

    #[test]
    fn real_unix_timestamps_start_from_empty_slots() {
        // 1.7e12 ms / 100 wraps the 32-bit bucket number into the upper half:
        // never-written slots (bucket 0) must not read as current.
        let r = BucketRing::new(10, 100);
        let t0 = 1_700_000_000_000;
        for b in 0..30 {
            r.add(66, t0 + b * 100);
            assert_eq!(r.sum(t0 + b * 100), 66 * (b + 1).min(10), "bucket {b}");
        }
    }

    #[test]
    fn saturates() {
        let r = BucketRing::new(2, 10);
        r.add(u64::MAX, 5);
        r.add(7, 5);
        assert_eq!(r.sum(5), COUNT_MASK);
    }

    #[test]
    fn concurrent_adds_are_not_lost() {
        let r = std::sync::Arc::new(BucketRing::new(4, 1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        r.add(1, 50_000 + i / 10);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.sum(50_999), 40_000);
    }

    proptest! {
        /// The window sum equals a brute-force count over the same buckets
        /// when time only moves forward.
        #[test]
        fn matches_brute_force(steps in prop::collection::vec((0u64..40, 1u64..5), 1..300), buckets in 1u32..12, start in 0u64..(1 << 45)) {
            let bucket_ms = 10;
            let r = BucketRing::new(buckets, bucket_ms);
            let mut t = start;
            let mut log = Vec::new();
            for (dt, n) in steps {
                t += dt;
                r.add(n, t);
                log.push((t / bucket_ms, n));
                let now = t / bucket_ms;
                let truth: u64 = log.iter().filter(|(b, _)| b + u64::from(buckets) > now).map(|(_, n)| n).sum();
                prop_assert_eq!(r.sum(t), truth);
            }
        }
    }
}
