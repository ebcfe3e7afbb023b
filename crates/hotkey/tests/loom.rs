//! Model-checks the lock-free counters with loom: every interleaving of
//! concurrent writers (and a reader) of a bucket ring and of a sketch cell
//! loses no read and never reports more than was written.
//!
//! It compiles the library's own `src/window.rs` and `src/sketch.rs` next to
//! a `sync` module that re-exports `loom::sync::atomic`: the code checked is
//! the code shipped. It has no libtest harness (see Cargo.toml), runs with
//! `cargo test -p hotkey --test loom`, and ends with `N passed, 0 failed`.
#![allow(missing_docs, unreachable_pub, dead_code, unused_imports)]

mod sync {
    pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
}

#[path = "../src/sketch.rs"]
mod sketch;
#[path = "../src/window.rs"]
mod window;

use loom::sync::Arc;
use loom::thread;
use sketch::WindowSketch;
use window::BucketRing;

/// Two writers meet a slot that holds a bucket from an old window: one
/// recycles it, the other must add to the recycled slot, not be lost.
fn ring_recycling_loses_no_read() {
    loom::model(|| {
        let ring = Arc::new(BucketRing::new(2, 10));
        ring.add(5, 0); // bucket 0, slot 0
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let ring = Arc::clone(&ring);
                thread::spawn(move || ring.add(1, 20)) // bucket 2, slot 0 again
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(ring.sum(20), 2);
    });
}

/// A reader summing while a writer adds sees a count between what was
/// added before it started and everything, never more.
fn ring_reader_sees_no_phantom_reads() {
    loom::model(|| {
        let ring = Arc::new(BucketRing::new(3, 10));
        let writer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || {
                ring.add(1, 15);
                ring.add(2, 25);
            })
        };
        let seen = ring.sum(25);
        assert!(seen <= 3, "read {seen} of 3");
        writer.join().unwrap();
        assert_eq!(ring.sum(25), 3);
    });
}

/// Two writers of one key at the start of a new epoch: one rotates the
/// cells, the other adds to the rotated cells; the previous epoch is kept.
fn sketch_rotation_loses_no_read() {
    loom::model(|| {
        let sketch = Arc::new(WindowSketch::new(1, 100));
        let hash = 0x1234_5678_9abc_def0;
        sketch.add(hash, 3, 50); // epoch 0
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let sketch = Arc::clone(&sketch);
                thread::spawn(move || {
                    let (before, after) = sketch.add(hash, 1, 150); // epoch 1
                    assert!(before >= 3 && after > before, "({before}, {after})");
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(sketch.estimate(hash, 150), 5);
        assert_eq!(
            sketch.estimate(hash, 250),
            2,
            "epoch 0 leaves after one more epoch"
        );
    });
}

fn main() {
    let models: [(&str, fn()); 3] = [
        ("ring_recycling_loses_no_read", ring_recycling_loses_no_read),
        (
            "ring_reader_sees_no_phantom_reads",
            ring_reader_sees_no_phantom_reads,
        ),
        (
            "sketch_rotation_loses_no_read",
            sketch_rotation_loses_no_read,
        ),
    ];
    testkit::run_models(&models);
}
