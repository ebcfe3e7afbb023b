//! Model-checks the slice's buffer swap with loom: every interleaving of two writers and the
//! flusher loses no frame, duplicates none, keeps each writer's order, never holds more than
//! two buffers, and never deadlocks (a writer waiting for room is always woken).
//!
//! It runs with the other tests (`cargo test -p double-buffer --test loom`). No `--cfg loom`
//! is needed, which would rebuild every dependency (tokio has loom paths of its own): it compiles the library's own `src/buffer.rs` next to a `sync` module that re-exports
//! `loom::sync`: the code checked is the code shipped.
#![allow(missing_docs, unreachable_pub, dead_code)]

mod sync {
    pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
    pub(crate) use std::sync::TryLockError;
}

#[path = "../src/buffer.rs"]
mod buffer;

use buffer::{DoubleBuffer, PushError, PushMode};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use loom::thread;

/// A frame: writer, sequence number, tag (4 bytes each... kept to 3 bytes to stay small).
const FRAME: usize = 3;

fn push(
    db: &DoubleBuffer,
    tags: &AtomicU64,
    writer: u8,
    seq: u8,
    mode: PushMode,
) -> Result<(), PushError> {
    db.push(FRAME, mode, |frame| {
        let tag = tags.fetch_add(1, Ordering::Relaxed) + 1;
        frame.copy_from_slice(&[writer, seq, tag as u8]);
        (tag, ())
    })
    .map(|p| p.value)
}

/// Takes batches until `frames` frames were seen; returns them in flush order.
fn flush_all(db: &DoubleBuffer, frames: usize) -> Vec<[u8; FRAME]> {
    let mut seen = Vec::new();
    while seen.len() < frames {
        match db.take() {
            Some(batch) => {
                assert_eq!(batch.bytes().len(), batch.frames() as usize * FRAME);
                for f in batch.bytes().chunks(FRAME) {
                    seen.push([f[0], f[1], f[2]]);
                }
                if let Some(last) = seen.last() {
                    assert_eq!(u64::from(last[2]), batch.last_tag());
                }
                db.restore(batch);
            }
            None => thread::yield_now(),
        }
    }
    seen
}

fn check(seen: &[[u8; FRAME]], writers: u8, each: u8) {
    assert_eq!(
        seen.len(),
        usize::from(writers) * usize::from(each),
        "{seen:?}"
    );
    for w in 0..writers {
        let seqs: Vec<u8> = seen.iter().filter(|f| f[0] == w).map(|f| f[1]).collect();
        assert_eq!(
            seqs,
            (0..each).collect::<Vec<_>>(),
            "writer {w}: lost, duplicated or reordered: {seen:?}"
        );
    }
    // Tags were handed out under the lock: they increase in flush order.
    assert!(seen.windows(2).all(|w| w[0][2] < w[1][2]), "{seen:?}");
}

/// Exhaustive up to four preemptions (loom's advice: bugs need few), which keeps this to a
/// few seconds (five take ten times longer); `LOOM_MAX_PREEMPTIONS` overrides it. Removing the
/// `notify_all` from `restore` makes two of these tests fail within the bound.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(4);
    }
    builder.check(f);
}

#[test]
fn swap_under_the_lock_flush_outside_it() {
    model(|| {
        // Two frames per buffer: the third push swaps, the fifth waits for the flusher.
        let db = Arc::new(DoubleBuffer::new(2 * FRAME));
        let tags = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let (db, tags) = (db.clone(), tags.clone());
                thread::spawn(move || {
                    for seq in 0..2 {
                        push(&db, &tags, w, seq, PushMode::Block).unwrap();
                    }
                })
            })
            .collect();
        let seen = flush_all(&db, 4);
        for w in writers {
            w.join().unwrap();
        }
        check(&seen, 2, 2);
    });
}

#[test]
fn a_writer_waiting_for_room_is_always_woken() {
    model(|| {
        // One frame per buffer: the writer's third push must wait for a restore.
        let db = Arc::new(DoubleBuffer::new(FRAME));
        let tags = Arc::new(AtomicU64::new(0));
        let writer = {
            let (db, tags) = (db.clone(), tags.clone());
            thread::spawn(move || {
                for seq in 0..3 {
                    push(&db, &tags, 0, seq, PushMode::Block).unwrap();
                }
            })
        };
        let seen = flush_all(&db, 3);
        writer.join().unwrap();
        check(&seen, 1, 3);
    });
}

#[test]
fn non_blocking_pushes_never_wait_and_never_lose() {
    model(|| {
        let db = Arc::new(DoubleBuffer::new(FRAME));
        let tags = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let (db, tags, accepted) = (db.clone(), tags.clone(), accepted.clone());
                thread::spawn(move || {
                    let mut seq = 0;
                    for _ in 0..2 {
                        match push(&db, &tags, w, seq, PushMode::Uncontended) {
                            Ok(()) => {
                                seq += 1;
                                accepted.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(PushError::Full | PushError::Contended) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    seq
                })
            })
            .collect();
        let counts: Vec<u8> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let total = accepted.load(Ordering::SeqCst);
        // At most two buffers of one frame each: never more accepted than fits.
        assert!(
            total <= 2,
            "{total} frames accepted into two one-frame buffers"
        );
        let seen = flush_all(&db, total);
        for (w, &n) in counts.iter().enumerate() {
            let seqs: Vec<u8> = seen
                .iter()
                .filter(|f| usize::from(f[0]) == w)
                .map(|f| f[1])
                .collect();
            assert_eq!(seqs, (0..n).collect::<Vec<_>>());
        }
    });
}

/// A waker that records that it was woken, for `poll_push`.
struct Flag(AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_task_polling_for_room_is_always_woken() {
    model(|| {
        // One frame per buffer: the third push finds both full and must be woken by a restore.
        let db = Arc::new(DoubleBuffer::new(FRAME));
        let tags = Arc::new(AtomicU64::new(0));
        let writer = {
            let (db, tags) = (db.clone(), tags.clone());
            thread::spawn(move || {
                let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
                let waker = std::task::Waker::from(flag.clone());
                let mut cx = std::task::Context::from_waker(&waker);
                for seq in 0..3u8 {
                    loop {
                        flag.0.store(false, Ordering::SeqCst);
                        let polled = db.poll_push(&mut cx, FRAME, |frame| {
                            let tag = tags.fetch_add(1, Ordering::Relaxed) + 1;
                            frame.copy_from_slice(&[0, seq, tag as u8]);
                            (tag, ())
                        });
                        match polled {
                            std::task::Poll::Ready(r) => {
                                drop(r.unwrap());
                                break;
                            }
                            // An executor would park the task here; a lost wake-up spins
                            // forever, which loom reports.
                            std::task::Poll::Pending => {
                                while !flag.0.load(Ordering::SeqCst) {
                                    thread::yield_now();
                                }
                            }
                        }
                    }
                }
            })
        };
        let seen = flush_all(&db, 3);
        writer.join().unwrap();
        check(&seen, 1, 3);
    });
}

#[test]
fn shut_wakes_a_waiting_writer() {
    model(|| {
        let db = Arc::new(DoubleBuffer::new(FRAME));
        let tags = Arc::new(AtomicU64::new(0));
        push(&db, &tags, 0, 0, PushMode::Block).unwrap();
        push(&db, &tags, 0, 1, PushMode::Block).unwrap();
        let writer = {
            let (db, tags) = (db.clone(), tags.clone());
            thread::spawn(move || push(&db, &tags, 0, 2, PushMode::Block))
        };
        db.shut();
        // Either it got in before the shut (impossible: both buffers are full and nobody
        // flushes) or it was woken and refused.
        assert_eq!(writer.join().unwrap(), Err(PushError::Shut));
        // What was pushed before is still there for the flusher.
        let seen = flush_all(&db, 2);
        check(&seen, 1, 2);
    });
}
