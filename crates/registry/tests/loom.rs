//! Model-checks the lock-free renewal counting with loom: every interleaving of
//! concurrent heartbeats (and a reader) of the per-second renewal buckets loses
//! no renewal and never reports more than were counted, also when a bucket is
//! recycled for a new second; and a lease never moves back in time.
//!
//! It compiles the library's own `src/lease.rs` next to a `sync` module that
//! re-exports `loom::sync::atomic`: the code checked is the code shipped. It has
//! no libtest harness (see Cargo.toml), runs with `cargo test -p registry --test
//! loom`, and ends with `N passed, 0 failed`.
#![allow(missing_docs, unreachable_pub, dead_code, unused_imports)]

mod sync {
    pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
}

mod model {
    pub type Millis = u64;
}

#[path = "../src/lease.rs"]
mod lease;

use lease::{Lease, RenewRate};
use loom::sync::Arc;
use loom::thread;

/// Two heartbeats meet a bucket that still holds a second from a minute ago:
/// one recycles it, the other must count in the recycled bucket, not be lost
/// nor resurrect the old count.
fn bucket_recycling_loses_no_renewal() {
    loom::model(|| {
        let rate = Arc::new(RenewRate::new());
        rate.increment(1_000); // second 1, bucket 1
        rate.increment(1_500);
        let beats: Vec<_> = (0..2)
            .map(|_| {
                let rate = Arc::clone(&rate);
                thread::spawn(move || rate.increment(61_000)) // second 61, bucket 1 again
            })
            .collect();
        for b in beats {
            b.join().unwrap();
        }
        assert_eq!(rate.last_minute(61_000), 2);
    });
}

/// A reader during heartbeats in two seconds sees between nothing and all of
/// them, never more.
fn reader_sees_no_phantom_renewals() {
    loom::model(|| {
        let rate = Arc::new(RenewRate::new());
        let beat = {
            let rate = Arc::clone(&rate);
            thread::spawn(move || {
                rate.increment(5_000);
                rate.increment(6_000);
            })
        };
        let seen = rate.last_minute(6_000);
        assert!(seen <= 2, "read {seen} of 2");
        beat.join().unwrap();
        assert_eq!(rate.last_minute(6_000), 2);
    });
}

/// Heartbeats arriving out of order never move a lease's last renewal back.
fn a_late_renewal_never_moves_the_lease_back() {
    loom::model(|| {
        let lease = Arc::new(Lease::new(0, 90_000, 0));
        let late = {
            let lease = Arc::clone(&lease);
            thread::spawn(move || lease.renew(10_000))
        };
        lease.renew(20_000);
        late.join().unwrap();
        assert_eq!(lease.last_renewal(), 20_000);
    });
}

fn main() {
    let models: [(&str, fn()); 3] = [
        (
            "bucket_recycling_loses_no_renewal",
            bucket_recycling_loses_no_renewal,
        ),
        (
            "reader_sees_no_phantom_renewals",
            reader_sees_no_phantom_renewals,
        ),
        (
            "a_late_renewal_never_moves_the_lease_back",
            a_late_renewal_never_moves_the_lease_back,
        ),
    ];
    testkit::run_models(&models);
}
