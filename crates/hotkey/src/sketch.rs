//! The screening sketch: a windowed Count-Min sketch with one memory access
//! per update.
//!
//! It answers "at most how many times was this key read in the current
//! window?" for any key, in fixed memory, so that only keys that may be
//! heavy get an exact window ([`crate::window`]).
//!
//! Layout: `blocks` cache lines of eight 64-bit cells. A key hashes to one
//! block and, inside it, to one cell of each of four pairs (four "rows" of a
//! Count-Min sketch that share a cache line, so an update costs one cache
//! miss instead of four). Each cell packs a 16-bit epoch tag and two 24-bit
//! counters: reads in the current window-length epoch and in the previous
//! one. A cell is rotated lazily by whoever touches it first in a new epoch.
//!
//! Guarantee (the property tests check it): for every key, `estimate` is at
//! least the number of reads of that key recorded in the current and the
//! previous epoch, hence at least its count in any bucketed window that
//! ends now (a window of length W starting after `now - W` lies inside
//! those two epochs). It over-estimates by collisions and by the part of the
//! previous epoch outside the window; it never under-estimates, except when
//! a 24-bit counter saturates at 16,777,215 (then the key is far above any
//! valid candidate level anyway).

use crate::sync::{AtomicU64, Ordering};

const COUNT_BITS: u32 = 24;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = 0xFFFF;
/// Largest candidate level the sketch can represent.
pub(crate) const SKETCH_COUNT_MAX: u64 = COUNT_MAX;

/// One cache line of cells.
#[derive(Default)]
#[repr(C, align(64))]
struct Block([AtomicU64; 8]);

/// See the module docs.
pub(crate) struct WindowSketch {
    blocks: Box<[Block]>,
    mask: u64,
    epoch_ms: u64,
}

#[inline]
fn unpack(cell: u64) -> (u64, u64, u64) {
    (
        cell >> 48,
        (cell >> COUNT_BITS) & COUNT_MAX,
        cell & COUNT_MAX,
    )
}

#[inline]
fn pack(tag: u64, cur: u64, prev: u64) -> u64 {
    (tag << 48) | (cur << COUNT_BITS) | prev
}

/// `(cur, prev)` of a cell as seen in epoch `tag`.
#[inline]
fn view(cell: u64, tag: u64) -> (u64, u64) {
    let (t, cur, prev) = unpack(cell);
    match tag.wrapping_sub(t) & TAG_MASK {
        // Same epoch, or the cell was written by a caller whose clock is one
        // epoch ahead: count it as current (over-estimating is safe).
        0 | TAG_MASK => (cur, prev),
        1 => (0, cur),
        _ => (0, 0),
    }
}

impl WindowSketch {
    /// A sketch of `blocks` cache lines (a power of two) whose epochs last
    /// `epoch_ms` (the window of the rule it screens for).
    pub(crate) fn new(blocks: usize, epoch_ms: u64) -> Self {
        debug_assert!(blocks.is_power_of_two() && epoch_ms > 0);
        let blocks: Box<[Block]> = (0..blocks).map(|_| Block::default()).collect();
        let mask = blocks.len() as u64 - 1;
        WindowSketch {
            blocks,
            mask,
            epoch_ms,
        }
    }

    /// Bytes of memory held.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.blocks.len() * size_of::<Block>()
    }

    #[inline]
    fn cells(&self, hash: u64) -> (&Block, [usize; 4]) {
        // The low bits pick the block (the candidate table uses the high bits
        // for its shard), bits 40.. pick one cell of each pair.
        let block = &self.blocks[(hash & self.mask) as usize];
        let sub = hash >> 40;
        let idx = [
            (sub & 1) as usize,
            2 + ((sub >> 1) & 1) as usize,
            4 + ((sub >> 2) & 1) as usize,
            6 + ((sub >> 3) & 1) as usize,
        ];
        (block, idx)
    }

    /// Adds `n` reads of the key with `hash` at `now_ms`; returns the
    /// estimate before and after the addition.
    #[inline]
    pub(crate) fn add(&self, hash: u64, n: u64, now_ms: u64) -> (u64, u64) {
        let tag = (now_ms / self.epoch_ms) & TAG_MASK;
        let n = n.min(COUNT_MAX);
        let (block, idx) = self.cells(hash);
        let mut before = u64::MAX;
        let mut after = u64::MAX;
        for i in idx {
            let cell = &block.0[i];
            let mut old = cell.load(Ordering::Relaxed);
            loop {
                let (cur, prev) = view(old, tag);
                let new = pack(tag, (cur + n).min(COUNT_MAX), prev);
                match cell.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        before = before.min(cur + prev);
                        after = after.min((cur + n).min(COUNT_MAX) + prev);
                        break;
                    }
                    Err(actual) => old = actual,
                }
            }
        }
        (before, after)
    }

    /// The estimate of the key with `hash` at `now_ms`.
    #[inline]
    pub(crate) fn estimate(&self, hash: u64, now_ms: u64) -> u64 {
        let tag = (now_ms / self.epoch_ms) & TAG_MASK;
        let (block, idx) = self.cells(hash);
        idx.iter()
            .map(|&i| {
                let (cur, prev) = view(block.0[i].load(Ordering::Relaxed), tag);
                cur + prev
            })
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn hash(k: u64) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::with_seed(7).hash_one(k)
    }

    #[test]
    fn counts_rotate_by_epoch() {
        let s = WindowSketch::new(16, 1000);
        let h = hash(1);
        assert_eq!(s.add(h, 5, 10_000), (0, 5));
        assert_eq!(s.add(h, 2, 10_999), (5, 7));
        // Next epoch: the old epoch is still counted (it may overlap the window).
        assert_eq!(s.estimate(h, 11_000), 7);
        assert_eq!(s.add(h, 1, 11_500), (7, 8));
        // Two epochs later the first one is gone.
        assert_eq!(s.estimate(h, 12_000), 1);
        assert_eq!(s.estimate(h, 13_000), 0);
        // A tag that wrapped around long ago reads as empty.
        assert_eq!(s.estimate(h, 11_000 + 7 * 1000 * 65_536 + 2000), 0);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let s = WindowSketch::new(1, 1000);
        s.add(hash(1), u64::MAX, 0);
        s.add(hash(1), 10, 0);
        assert_eq!(s.estimate(hash(1), 0), COUNT_MAX);
    }

    proptest! {
        /// The estimate never under-reports the reads of the current and
        /// previous epoch, whatever the collisions (tiny sketch).
        #[test]
        fn never_under_reports(ops in prop::collection::vec((0u64..40, 1u64..20, 0u64..50), 1..400)) {
            let s = WindowSketch::new(2, 10);
            let mut t = 0u64;
            let mut log: Vec<(u64, u64, u64)> = Vec::new();
            for (key, n, dt) in ops {
                t += dt;
                s.add(hash(key), n, t);
                log.push((key, n, t));
                let epoch = t / 10;
                let mut truth: HashMap<u64, u64> = HashMap::new();
                for &(k, n, at) in &log {
                    if at / 10 + 1 >= epoch {
                        *truth.entry(k).or_default() += n;
                    }
                }
                for (k, c) in truth {
                    prop_assert!(s.estimate(hash(k), t) >= c, "key {} truth {} at {}", k, c, t);
                }
            }
        }
    }
}
