//! Accuracy on a million distinct keys: every key above the threshold is
//! reported, no key below half of it is, uniform traffic reports nothing.

use std::collections::HashSet;

use crate::workload::{self, Workload};

const T: u64 = 1000;
const START: u64 = 1_700_000_000_000;

fn run(w: &Workload) -> (HashSet<Vec<u8>>, hotkey::DetectorStats) {
    workload::detect(w, START)
}

/// As [`run`], one `record(key)` per read, interleaved across keys.
fn run_reads(w: &Workload) -> (HashSet<Vec<u8>>, hotkey::DetectorStats) {
    workload::detect_reads(w, START, 7)
}

fn plant(w: &mut Workload) {
    // Just above the threshold, in one bucket and spread over a window.
    w.plant(b"planted:one-bucket", 13, T + 1);
    for b in 4..14 {
        w.plant(b"planted:spread", b, T / 10 + u64::from(b == 4));
    }
    // Far above, briefly.
    w.plant(b"planted:burst", 7, 5 * T);
    // Exactly at the threshold (not above: may or may not be reported).
    w.plant(b"planted:at", 15, T);
    // Below half, in bursts that never share a window.
    w.plant(b"planted:half", 2, T / 2 - 1);
    w.plant(b"planted:half", 12, T / 2 - 1);
}

fn check(
    name: &str,
    w: &Workload,
    run: fn(&Workload) -> (HashSet<Vec<u8>>, hotkey::DetectorStats),
) {
    let (reported, stats) = run(w);
    let s = workload::score(&w.truth(), &reported, T);
    eprintln!(
        "{name}: positives {} found {} negatives {} false {} grey-reported {} stats {stats:?}",
        s.positives, s.found, s.negatives, s.false_positives, s.grey_reported
    );
    assert!(
        s.positives > 100,
        "{name}: the workload must have many hot keys, has {}",
        s.positives
    );
    assert!(
        s.missed.is_empty(),
        "{name}: missed hot keys (key, true count): {:?}",
        &s.missed[..s.missed.len().min(10)]
    );
    assert!(
        s.false_keys.is_empty(),
        "{name}: reported keys below half the threshold: {:?}",
        s.false_keys
    );
    assert!(
        reported.contains(&b"planted:one-bucket"[..]) && reported.contains(&b"planted:spread"[..])
    );
    assert_eq!(stats.rejected_promotions, 0);
}

#[test]
fn zipf_1_0_million_keys() {
    // Rank r is read 200k / r times per second: ranks up to ~200 are hot.
    let mut w = Workload::zipf(1.0, 1_000_000, 200_000.0, 20, 100, 10);
    plant(&mut w);
    assert!(w.distinct() >= 1_000_000);
    check("zipf(1.0)", &w, run);
}

#[test]
fn zipf_1_2_million_keys() {
    let mut w = Workload::zipf(1.2, 1_000_000, 600_000.0, 20, 100, 10);
    plant(&mut w);
    assert!(w.distinct() >= 1_000_000);
    check("zipf(1.2)", &w, run);
}

#[test]
fn zipf_1_0_one_read_at_a_time() {
    // The tests above hand each key's reads of a bucket to the detector in
    // one call; here every read is its own `record()`, interleaved across
    // keys, so promotions and crossings happen mid-bucket among other keys'
    // reads. Smaller than above to stay fast in debug builds: ~3.9 M reads.
    let mut w = Workload::zipf(1.0, 100_000, 200_000.0, 16, 100, 10);
    plant(&mut w);
    check("zipf(1.0), per read", &w, run_reads);
}

#[test]
fn uniform_traffic_reports_nothing() {
    // A million keys, each read 200 times per second: 200 M reads/s in all,
    // none of them anywhere near the threshold.
    let w = Workload::uniform(1_000_000, 2.0, 20, 100, 10);
    let (reported, stats) = run(&w);
    assert!(
        reported.is_empty(),
        "reported {} keys: {:?}",
        reported.len(),
        reported.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(stats.candidates, 0, "{stats:?}");
}
