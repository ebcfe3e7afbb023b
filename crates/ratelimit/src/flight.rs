//! Single flight: one caller per key does the work, the others wait for
//! its result.
//!
//! The leader runs the work inline (no task is spawned, so the work may
//! borrow). If the leader is cancelled before it finishes, the waiting
//! callers wake up and one of them becomes the new leader, so nobody waits
//! on work that will never finish.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

const SHARDS: usize = 16;

type Flights<T> = HashMap<Bytes, watch::Receiver<Option<T>>>;

pub(crate) struct SingleFlight<T> {
    shards: Box<[Mutex<Flights<T>>]>,
    hasher: RandomState,
}

impl<T> fmt::Debug for SingleFlight<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleFlight")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

enum Role<T> {
    Leader(watch::Sender<Option<T>>),
    Follower(watch::Receiver<Option<T>>),
}

/// Removes the leader's entry whatever happens; followers see the channel
/// close if no result was sent.
struct LeaderGuard<'a, T> {
    flight: &'a SingleFlight<T>,
    key: &'a [u8],
    /// Whether the entry is still ours to remove.
    armed: bool,
}

impl<T> LeaderGuard<'_, T> {
    fn disarm(&mut self) {
        if self.armed {
            self.armed = false;
            // Only the leader removes its key, and nobody inserts the key
            // while it is present, so the entry is ours.
            self.flight.shard(self.key).lock().remove(self.key);
        }
    }
}

impl<T> Drop for LeaderGuard<'_, T> {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl<T> SingleFlight<T> {
    pub(crate) fn new() -> Self {
        SingleFlight {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Flights<T>> {
        &self.shards[(self.hasher.hash_one(key) % SHARDS as u64) as usize]
    }

    /// Keys with work in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

impl<T: Clone> SingleFlight<T> {
    fn join(&self, key: &[u8]) -> Role<T> {
        let mut map = self.shard(key).lock();
        if let Some(rx) = map.get(key) {
            return Role::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(Bytes::copy_from_slice(key), rx);
        Role::Leader(tx)
    }

    /// Runs `work` unless a run for `key` is in flight, in which case waits
    /// for that run's result. Returns the result and whether this caller
    /// ran the work.
    pub(crate) async fn run<F, Fut>(&self, key: &[u8], work: F) -> (T, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let tx = loop {
            match self.join(key) {
                Role::Leader(tx) => break tx,
                Role::Follower(mut rx) => {
                    let shared = rx
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|v| v.clone());
                    if let Some(v) = shared {
                        return (v, false);
                    }
                    // The leader was cancelled: try to lead.
                }
            }
        };
        let mut guard = LeaderGuard {
            flight: self,
            key,
            armed: true,
        };
        let result = work().await;
        // Remove the entry before publishing, so that a caller arriving
        // after the result starts a new run instead of reading an old one.
        guard.disarm();
        let _ = tx.send(Some(result.clone()));
        (result, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_run() {
        let flight = Arc::new(SingleFlight::<u32>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let flight = Arc::clone(&flight);
                let runs = Arc::clone(&runs);
                tokio::spawn(async move {
                    flight
                        .run(b"k", || async {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            7
                        })
                        .await
                })
            })
            .collect();
        let mut leaders = 0;
        for t in tasks {
            let (v, led) = t.await.unwrap();
            assert_eq!(v, 7);
            leaders += usize::from(led);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_leader_hands_over() {
        let flight = Arc::new(SingleFlight::<u32>::new());
        let leader = {
            let flight = Arc::clone(&flight);
            tokio::spawn(async move {
                flight
                    .run(b"k", || async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        1
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let follower = {
            let flight = Arc::clone(&flight);
            tokio::spawn(async move { flight.run(b"k", || async { 2 }).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        leader.abort();
        let (v, led) = follower.await.unwrap();
        assert_eq!((v, led), (2, true), "the follower took over");
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other() {
        let flight = SingleFlight::<u32>::new();
        let (a, b) = tokio::join!(
            flight.run(b"a", || async { 1 }),
            flight.run(b"b", || async { 2 })
        );
        assert_eq!((a, b), ((1, true), (2, true)));
    }
}
