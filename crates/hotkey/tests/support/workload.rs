//! Deterministic synthetic read workloads with known ground truth, shared by
//! the accuracy test and the benchmark (`#[path]`-included by both).
//!
//! Instead of sampling reads at random, each key gets a fixed rate and its
//! reads are spread evenly over the buckets, so a million distinct keys cost
//! a few million aggregated `record_at` calls and the true windowed count of
//! every key is known in closed form. [`drive_reads`] replays the same reads
//! one at a time, shuffled within each bucket.

#![allow(dead_code)]

/// A workload: `buckets` buckets of `bucket_ms`; key `r` (1-based rank,
/// encoded as 8 little-endian bytes) is read `rate[r - 1]` times per bucket
/// on average, at least once in total; planted keys are added on top.
pub struct Workload {
    pub buckets: u64,
    pub bucket_ms: u64,
    pub window_buckets: u64,
    per_bucket: Vec<f64>,
    planted: Vec<(Vec<u8>, u64, u64)>,
}

pub fn rank_key(r: u64) -> [u8; 8] {
    r.to_le_bytes()
}

impl Workload {
    /// Zipf(`s`) over `distinct` keys: key `r` is read `top / r^s` times per
    /// second.
    pub fn zipf(
        s: f64,
        distinct: u64,
        top_per_sec: f64,
        buckets: u64,
        bucket_ms: u64,
        window_buckets: u64,
    ) -> Self {
        let scale = bucket_ms as f64 / 1000.0;
        let per_bucket = (1..=distinct)
            .map(|r| top_per_sec / (r as f64).powf(s) * scale)
            .collect();
        Workload {
            buckets,
            bucket_ms,
            window_buckets,
            per_bucket,
            planted: Vec::new(),
        }
    }

    /// Every one of `distinct` keys read `per_sec` times per second.
    pub fn uniform(
        distinct: u64,
        per_sec: f64,
        buckets: u64,
        bucket_ms: u64,
        window_buckets: u64,
    ) -> Self {
        let q = per_sec * bucket_ms as f64 / 1000.0;
        Workload {
            buckets,
            bucket_ms,
            window_buckets,
            per_bucket: vec![q; distinct as usize],
            planted: Vec::new(),
        }
    }

    /// Adds `count` reads of `key` in `bucket`.
    pub fn plant(&mut self, key: &[u8], bucket: u64, count: u64) {
        self.planted.push((key.to_vec(), bucket, count));
    }

    pub fn distinct(&self) -> usize {
        self.per_bucket.len() + {
            let mut p: Vec<&Vec<u8>> = self.planted.iter().map(|(k, _, _)| k).collect();
            p.sort();
            p.dedup();
            p.len()
        }
    }

    /// Reads of rank `r` in bucket `b`.
    fn count(&self, r: u64, b: u64) -> u64 {
        let q = self.per_bucket[(r - 1) as usize];
        if q * self.buckets as f64 >= 1.0 {
            ((b + 1) as f64 * q).floor() as u64 - (b as f64 * q).floor() as u64
        } else {
            // Too rare to be read in an even spread: read once, somewhere.
            u64::from(r.wrapping_mul(7919) % self.buckets == b)
        }
    }

    /// Calls `f(key, count)` for every key read in bucket `b`.
    pub fn for_each_in_bucket(&self, b: u64, mut f: impl FnMut(&[u8], u64)) {
        for r in 1..=self.per_bucket.len() as u64 {
            let n = self.count(r, b);
            if n > 0 {
                f(&rank_key(r), n);
            }
        }
        for (k, pb, n) in &self.planted {
            if *pb == b {
                f(k, *n);
            }
        }
    }

    /// Every key with its largest count in any window of `window_buckets`
    /// consecutive buckets.
    pub fn truth(&self) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::with_capacity(self.per_bucket.len() + self.planted.len());
        let mut counts = vec![0u64; self.buckets as usize];
        for r in 1..=self.per_bucket.len() as u64 {
            for b in 0..self.buckets {
                counts[b as usize] = self.count(r, b);
            }
            out.push((
                rank_key(r).to_vec(),
                max_window(&counts, self.window_buckets),
            ));
        }
        let mut planted: std::collections::BTreeMap<&[u8], Vec<u64>> = Default::default();
        for (k, b, n) in &self.planted {
            planted
                .entry(k)
                .or_insert_with(|| vec![0; self.buckets as usize])[*b as usize] += n;
        }
        for (k, counts) in planted {
            out.push((k.to_vec(), max_window(&counts, self.window_buckets)));
        }
        out
    }
}

fn max_window(counts: &[u64], w: u64) -> u64 {
    let w = w as usize;
    let mut best = 0;
    let mut sum = 0;
    for i in 0..counts.len() {
        sum += counts[i];
        if i >= w {
            sum -= counts[i - w];
        }
        best = best.max(sum);
    }
    best
}

/// Recall and false-positive rate of a run: `reported` holds the keys the
/// detector reported hot. A key is positive if its true count passed
/// `threshold`, negative if it stayed below `threshold / 2`.
pub struct Score {
    pub positives: usize,
    pub found: usize,
    pub negatives: usize,
    pub false_positives: usize,
    pub missed: Vec<(Vec<u8>, u64)>,
    pub false_keys: Vec<(Vec<u8>, u64)>,
    pub grey_reported: usize,
}

impl Score {
    pub fn recall(&self) -> f64 {
        if self.positives == 0 {
            1.0
        } else {
            self.found as f64 / self.positives as f64
        }
    }
    pub fn false_positive_rate(&self) -> f64 {
        if self.negatives == 0 {
            0.0
        } else {
            self.false_positives as f64 / self.negatives as f64
        }
    }
}

pub fn score(
    truth: &[(Vec<u8>, u64)],
    reported: &std::collections::HashSet<Vec<u8>>,
    threshold: u64,
) -> Score {
    let mut s = Score {
        positives: 0,
        found: 0,
        negatives: 0,
        false_positives: 0,
        missed: vec![],
        false_keys: vec![],
        grey_reported: 0,
    };
    for (k, c) in truth {
        let hit = reported.contains(k);
        if *c > threshold {
            s.positives += 1;
            if hit {
                s.found += 1;
            } else {
                s.missed.push((k.clone(), *c));
            }
        } else if *c * 2 < threshold {
            s.negatives += 1;
            if hit {
                s.false_positives += 1;
                s.false_keys.push((k.clone(), *c));
            }
        } else if hit {
            s.grey_reported += 1;
        }
    }
    s
}

/// Runs `w` through `record(key, n, now_ms)` bucket by bucket (reads of a
/// bucket stamped inside it), calling `tick(now_ms)` at each bucket start.
pub fn drive(
    w: &Workload,
    start_ms: u64,
    mut record: impl FnMut(&[u8], u64, u64),
    mut tick: impl FnMut(u64),
) {
    for b in 0..w.buckets {
        let t0 = start_ms + b * w.bucket_ms;
        tick(t0);
        let mut i = 0u64;
        w.for_each_in_bucket(b, |k, n| {
            record(k, n, t0 + i % w.bucket_ms);
            i += 1;
        });
    }
    tick(start_ms + w.buckets * w.bucket_ms);
}

/// Runs `w` one read at a time: per bucket, the reads of all its keys are
/// shuffled (seeded by `seed`) and the i-th of `m` calls `read(key, now_ms)`
/// stamped `t0 + i * bucket_ms / m`, so time only moves forward and every
/// key's reads are interleaved with everyone else's; `tick(now_ms)` runs at
/// each bucket start, as in [`drive`].
pub fn drive_reads(
    w: &Workload,
    start_ms: u64,
    seed: u64,
    mut read: impl FnMut(&[u8], u64),
    mut tick: impl FnMut(u64),
) {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // The bucket's keys in one arena, each read an index into it.
    let mut bytes = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut reads: Vec<u32> = Vec::new();
    for b in 0..w.buckets {
        bytes.clear();
        spans.clear();
        reads.clear();
        w.for_each_in_bucket(b, |k, n| {
            let id = spans.len() as u32;
            spans.push((bytes.len(), k.len()));
            bytes.extend_from_slice(k);
            reads.extend(std::iter::repeat_n(id, n as usize));
        });
        reads.shuffle(&mut rng);
        let t0 = start_ms + b * w.bucket_ms;
        tick(t0);
        let m = reads.len() as u64;
        for (i, &id) in reads.iter().enumerate() {
            let (at, len) = spans[id as usize];
            read(&bytes[at..at + len], t0 + i as u64 * w.bucket_ms / m);
        }
    }
    tick(start_ms + w.buckets * w.bucket_ms);
}

/// The detector the accuracy runs use: the default rule, a fixed seed.
fn detector(start_ms: u64) -> (hotkey::Detector, hotkey::ManualClock) {
    use hotkey::{Config, Detector, ManualClock, Rule};
    let cfg = Config {
        rules: vec![Rule::default()],
        hash_seed: Some(42),
        ..Config::default()
    };
    let clock = ManualClock::new(start_ms);
    let d = Detector::with_clock(cfg, std::sync::Arc::new(clock.clone())).expect("valid config");
    (d, clock)
}

/// Moves the keys of the detector's pending `Hot` events into `reported`.
fn drain_hot(d: &hotkey::Detector, reported: &mut std::collections::HashSet<Vec<u8>>) {
    for e in d.drain_events() {
        if let hotkey::Event::Hot(h) = e {
            reported.insert(h.key);
        }
    }
}

/// Runs `w` through a detector with the default rule (fixed seed), each
/// key's reads of a bucket as one `record_at(key, n, now)` ([`drive`]), and
/// returns the keys it reported hot, with its final stats.
pub fn detect(
    w: &Workload,
    start_ms: u64,
) -> (std::collections::HashSet<Vec<u8>>, hotkey::DetectorStats) {
    let (d, _clock) = detector(start_ms);
    let mut reported = std::collections::HashSet::new();
    drive(
        w,
        start_ms,
        |k, n, now| d.record_at(k, n, now),
        |now| {
            d.tick_at(now);
            drain_hot(&d, &mut reported);
        },
    );
    (reported, d.stats())
}

/// As [`detect`], but through the per-read path an application uses: one
/// `record(key)` per read on the detector's clock, reads interleaved across
/// keys in shuffled order ([`drive_reads`]).
pub fn detect_reads(
    w: &Workload,
    start_ms: u64,
    seed: u64,
) -> (std::collections::HashSet<Vec<u8>>, hotkey::DetectorStats) {
    let (d, clock) = detector(start_ms);
    let mut reported = std::collections::HashSet::new();
    drive_reads(
        w,
        start_ms,
        seed,
        |k, now| {
            clock.set_ms(now);
            d.record(k);
        },
        |now| {
            clock.set_ms(now);
            d.tick();
            drain_hot(&d, &mut reported);
        },
    );
    (reported, d.stats())
}
