//! Call timeouts without a tokio timer per call.
//!
//! `tokio::time::timeout` registers a timer for every call, and when no
//! earlier timer is pending (a caller making one call at a time) that
//! registration wakes the runtime's time driver: a cross-thread wake-up
//! per Redis call, measured at 5-14 µs on the benchmark machine against a
//! ~60 µs round trip. All of a cache's calls share one timeout, so their
//! deadlines arrive in the order the calls start: a FIFO queue and one
//! reaper task that sleeps until the oldest deadline replace the per-call
//! timers. A call ends at most one `tick` after its deadline.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The call did not finish by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

#[derive(Debug)]
struct Call {
    expired: AtomicBool,
    notify: Notify,
}

#[derive(Debug)]
struct Shared {
    timeout: Duration,
    queue: Mutex<VecDeque<(Instant, Weak<Call>)>>,
    /// Wakes the reaper when the queue turns non-empty (shared with the
    /// reaper, which must not hold `Shared` while it waits).
    work: Arc<Notify>,
}

/// Deadlines for calls that all share one timeout.
#[derive(Debug)]
pub(crate) struct Deadlines {
    shared: Arc<Shared>,
}

impl Deadlines {
    /// Starts the reaper on the current tokio runtime; it stops when the
    /// `Deadlines` is dropped.
    pub(crate) fn start(timeout: Duration) -> Deadlines {
        let shared = Arc::new(Shared {
            timeout,
            queue: Mutex::new(VecDeque::new()),
            work: Arc::new(Notify::new()),
        });
        let tick = (timeout / 16).max(Duration::from_millis(1));
        tokio::spawn(reap(
            Arc::downgrade(&shared),
            Arc::clone(&shared.work),
            tick,
        ));
        Deadlines { shared }
    }

    /// Runs `call`, or gives up on it at its deadline.
    pub(crate) async fn run<F: Future>(&self, call: F) -> Result<F::Output, Elapsed> {
        let entry = Arc::new(Call {
            expired: AtomicBool::new(false),
            notify: Notify::new(),
        });
        {
            let mut queue = self.shared.queue.lock();
            let was_empty = queue.is_empty();
            queue.push_back((Instant::now() + self.shared.timeout, Arc::downgrade(&entry)));
            if was_empty {
                self.shared.work.notify_one();
            }
        }
        tokio::select! {
            biased;
            out = call => Ok(out),
            () = entry.notify.notified() => Err(Elapsed),
        }
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        // Let the reaper see that it is no longer needed.
        self.shared.work.notify_one();
    }
}

/// Expires calls in deadline order; sleeps until the oldest deadline, or
/// until work arrives.
async fn reap(shared: Weak<Shared>, work: Arc<Notify>, tick: Duration) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let next = {
            let now = Instant::now();
            let mut queue = s.queue.lock();
            while let Some((deadline, _)) = queue.front() {
                if *deadline > now {
                    break;
                }
                if let Some((_, call)) = queue.pop_front()
                    && let Some(call) = call.upgrade()
                {
                    call.expired.store(true, Ordering::Release);
                    call.notify.notify_one();
                }
            }
            queue.front().map(|(deadline, _)| *deadline)
        };
        match next {
            Some(deadline) => {
                drop(s);
                // At least one tick, so a burst of deadlines is reaped in
                // one wake-up rather than one wake-up each.
                let wake = deadline.max(Instant::now() + tick);
                tokio::time::sleep_until(wake).await;
            }
            None => {
                // A notification sent after the queue was checked is kept
                // as a permit, so it is not lost.
                drop(s);
                if Weak::strong_count(&shared) == 0 {
                    return;
                }
                work.notified().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_end_at_their_deadline_and_not_before() {
        let d = Deadlines::start(Duration::from_millis(100));
        let started = Instant::now();
        let r = d.run(std::future::pending::<()>()).await;
        assert_eq!(r, Err(Elapsed));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took <= Duration::from_millis(100 + 7), "{took:?}");
        assert_eq!(d.run(async { 5 }).await, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn many_calls_expire_in_order_and_fast_ones_finish() {
        let d = Arc::new(Deadlines::start(Duration::from_millis(50)));
        let mut tasks = Vec::new();
        for i in 0..100u64 {
            let d = Arc::clone(&d);
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let r = d
                    .run(tokio::time::sleep(Duration::from_millis(if i % 2 == 0 {
                        10
                    } else {
                        500
                    })))
                    .await;
                (i, r, started.elapsed())
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for t in tasks {
            let (i, r, took) = t.await.unwrap();
            if i % 2 == 0 {
                assert_eq!(r, Ok(()), "call {i}");
            } else {
                assert_eq!(r, Err(Elapsed), "call {i}");
                assert!(
                    took >= Duration::from_millis(50) && took <= Duration::from_millis(55),
                    "{took:?}"
                );
            }
        }
    }

    /// The reaper task ends once its `Deadlines` is dropped, whether it was sleeping towards a
    /// deadline or idle with an empty queue.
    #[tokio::test(start_paused = true)]
    async fn the_reaper_stops_with_its_owner() {
        let tasks = tokio::runtime::Handle::current().metrics();
        let before = tasks.num_alive_tasks();
        for busy in [true, false] {
            let d = Deadlines::start(Duration::from_millis(10));
            assert_eq!(tasks.num_alive_tasks(), before + 1, "the reaper runs");
            if busy {
                assert_eq!(d.run(async { 1 }).await, Ok(1));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(d);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(
                tasks.num_alive_tasks(),
                before,
                "busy {busy}: the reaper ended"
            );
        }
    }
}
