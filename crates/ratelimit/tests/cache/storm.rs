//! Hot-key storms: many tasks hammer one key; the server (a private one,
//! whose command counters only this test moves) sees at most the
//! configured rate: the local copy's refreshes with the local cache on,
//! the per-key limit with it off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use ratelimit::metrics::BLANKS;
use ratelimit::{BlankReason, LocalConfig, Lookup, ProtectedCache, Rate};
use testkit::TestRecorder;

use crate::support::{PrivateRedis, admin, test_config, unique_key, unique_name};

struct Storm {
    hits: u64,
    blanks: u64,
    elapsed: Duration,
}

/// `tasks` tasks read `key` as fast as they can for `length`.
async fn storm(cache: &ProtectedCache, key: &str, tasks: usize, length: Duration) -> Storm {
    let hits = Arc::new(AtomicU64::new(0));
    let blanks = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (cache, key) = (cache.clone(), key.to_owned());
            let (hits, blanks) = (Arc::clone(&hits), Arc::clone(&blanks));
            tokio::spawn(async move {
                while started.elapsed() < length {
                    match cache.get(&key).await.unwrap() {
                        Lookup::Hit(v) => {
                            assert_eq!(&v[..], b"hot value");
                            hits.fetch_add(1, Ordering::Relaxed);
                        }
                        Lookup::Blank(BlankReason::RateLimited | BlankReason::KeyRateLimited) => {
                            blanks.fetch_add(1, Ordering::Relaxed);
                            // A real caller would render the blank; yield
                            // so the storm does not starve the runtime.
                            tokio::task::yield_now().await;
                        }
                        other => panic!("callers get Hit or Blank, got {other:?}"),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    Storm {
        hits: hits.load(Ordering::Relaxed),
        blanks: blanks.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

/// Reads of a small value that reached the server: each is one
/// `GETRANGE` (the bounded probe) or, with the probe off, one `EVALSHA`.
/// `GET` is counted too, so that a read path sending it could not hide.
fn server_reads(server: &PrivateRedis) -> u64 {
    server.command_calls("getrange") + server.command_calls("evalsha") + server.command_calls("get")
}

/// GCRA's bound: `burst + rate × t`, plus one for the clock's edge.
fn bound(rate: Rate, t: Duration) -> u64 {
    u64::from(rate.burst)
        + (t.as_secs_f64() * f64::from(rate.count) / rate.per.as_secs_f64()) as u64
        + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_key_storm_is_capped_by_the_instance_limit() {
    let server = PrivateRedis::start();
    let key = unique_key("storm-cold");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("hot value")
        .query(&mut admin(&server.url()))
        .unwrap();
    let read_limit = Rate::per_second(50).with_burst(10);
    let mut cfg = test_config(&unique_name("storm-cold"), &server.url());
    cfg.read_limit = Some(read_limit);
    let cache = ProtectedCache::connect(cfg).await.unwrap();
    // One read before the measured storm starts the limiter.
    let limiter_start = Instant::now();
    assert_eq!(cache.get(unique_key("warm")).await.unwrap(), Lookup::Miss);

    let before = server_reads(&server);
    let s = storm(&cache, &key, 32, Duration::from_millis(1500)).await;
    let reads = server_reads(&server) - before;
    // The limiter's bound runs from its first permit (the warm-up read,
    // which took one).
    let cap = bound(read_limit, limiter_start.elapsed()) - 1;
    assert!(
        reads <= cap,
        "redis saw {reads} reads, cap {cap} over {:?}",
        s.elapsed
    );
    assert_eq!(reads, s.hits, "every hit is one read, every blank none");
    assert!(
        s.blanks > 10 * s.hits,
        "a storm: {} blanks, {} hits",
        s.blanks,
        s.hits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_storm_is_served_locally_and_redis_sees_a_few_reads() {
    let server = PrivateRedis::start();
    let key = unique_key("storm-hot");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("hot value")
        .query(&mut admin(&server.url()))
        .unwrap();
    let key_limit = Rate::per_second(5).with_burst(2);
    let ttl = Duration::from_millis(200);
    let mut cfg = test_config(&unique_name("storm-hot"), &server.url());
    cfg.read_limit = Some(Rate::per_second(1_000));
    cfg.hot_key_limit = Some(key_limit);
    cfg.local = Some(LocalConfig {
        max_bytes: 1024 * 1024,
        ttl,
        max_stale: Duration::from_secs(2),
    });
    let hot_key = key.clone();
    let cache = ProtectedCache::builder(cfg)
        .hot_keys(move |k: &[u8]| k == hot_key.as_bytes())
        .connect()
        .await
        .unwrap();
    assert_eq!(cache.get(unique_key("warm")).await.unwrap(), Lookup::Miss);

    let before = server_reads(&server);
    let s = storm(&cache, &key, 32, Duration::from_secs(2)).await;
    let reads = server_reads(&server) - before;
    // One read to fill the local cache, then one refresh per TTL at most,
    // and never more than the per-key limit allows.
    let per_ttl = (s.elapsed.as_secs_f64() / ttl.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        reads <= per_ttl,
        "{reads} reads, one per {ttl:?} allows {per_ttl}"
    );
    assert!(
        reads <= bound(key_limit, s.elapsed),
        "{reads} reads above the key limit"
    );
    assert!(reads >= 2, "the value was refreshed: {reads} reads");
    assert_eq!(s.blanks, 0, "a hot key with a local copy never blanks");
    assert!(
        s.hits > 100 * reads,
        "{} local hits for {reads} redis reads",
        s.hits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_local_cache_a_hot_key_is_held_to_its_per_key_limit() {
    const TASKS: usize = 32;
    const READS_PER_TASK: u64 = 8;
    const STEPS: u32 = 20;
    let server = PrivateRedis::start();
    let hot = unique_key("key-limit-hot");
    let cold = unique_key("key-limit-cold");
    for key in [&hot, &cold] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("hot value")
            .query(&mut admin(&server.url()))
            .unwrap();
    }
    let key_limit = Rate::per_second(10).with_burst(5);
    let name = unique_name("key-limit");
    let mut cfg = test_config(&name, &server.url());
    // No local copy and no instance limit: every hot read that is not
    // blanked by the key's own limit reaches Redis.
    cfg.local = None;
    cfg.read_limit = None;
    cfg.hot_key_limit = Some(key_limit);
    let recorder = TestRecorder::new();
    let clock = FakeRelativeClock::default();
    let hot_key = hot.clone();
    let guard = recorder.guard();
    let cache = ProtectedCache::builder(cfg)
        .hot_keys(move |k: &[u8]| k == hot_key.as_bytes())
        .clock(clock.clone())
        .connect()
        .await
        .unwrap();
    drop(guard);

    let before = server_reads(&server);
    let (mut hot_hits, mut blanks, mut cold_hits) = (0, 0, 0);
    // The fake clock stands still while the tasks hammer, and moves one
    // rate interval between rounds: the limiter's decisions do not depend
    // on how the tasks interleave or how loaded the machine is.
    for step in 0..=STEPS {
        if step > 0 {
            clock.advance(key_limit.interval());
        }
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let cache = cache.clone();
                // Every fourth task reads the cold key meanwhile.
                let key = if i % 4 == 0 {
                    cold.clone()
                } else {
                    hot.clone()
                };
                tokio::spawn(async move {
                    let (mut hits, mut blanks) = (0u64, 0u64);
                    for _ in 0..READS_PER_TASK {
                        match cache.get(&key).await.unwrap() {
                            Lookup::Hit(v) => {
                                assert_eq!(&v[..], b"hot value");
                                hits += 1;
                            }
                            Lookup::Blank(BlankReason::KeyRateLimited) => blanks += 1,
                            other => panic!(
                                "{key}: expected Hit or Blank(KeyRateLimited), got {other:?}"
                            ),
                        }
                        tokio::task::yield_now().await;
                    }
                    (key, hits, blanks)
                })
            })
            .collect();
        let mut step_hot_hits = 0;
        for t in tasks {
            let (key, hits, b) = t.await.unwrap();
            if key == cold {
                assert_eq!(b, 0, "the cold key was limited in step {step}");
                cold_hits += hits;
            } else {
                step_hot_hits += hits;
                blanks += b;
            }
        }
        // GCRA: the whole burst at once, then one permit per interval.
        let expected = if step == 0 {
            u64::from(key_limit.burst)
        } else {
            1
        };
        assert_eq!(step_hot_hits, expected, "hot hits in step {step}");
        hot_hits += step_hot_hits;
    }
    let reads = server_reads(&server) - before;

    // The limiter's documented bound over the (fake) time that passed:
    // burst + rate × t, exact here because the clock moved in whole
    // intervals; it admits exactly that many.
    let elapsed = key_limit.interval() * STEPS;
    let cap = u64::from(key_limit.burst)
        + (elapsed.as_secs_f64() * f64::from(key_limit.count) / key_limit.per.as_secs_f64()) as u64;
    assert_eq!(hot_hits, cap, "hot reads admitted over {elapsed:?}");
    let hot_reads = TASKS as u64 * 3 / 4 * READS_PER_TASK * u64::from(STEPS + 1);
    assert_eq!(hot_hits + blanks, hot_reads);
    assert_eq!(
        cold_hits,
        TASKS as u64 / 4 * READS_PER_TASK * u64::from(STEPS + 1),
        "every cold read was a hit"
    );
    // Redis saw one read per hit and none per blank: the hot key's share
    // is its hits, exactly the per-key bound checked above.
    assert_eq!(reads, hot_hits + cold_hits, "server reads");
    assert_eq!(
        recorder.counter(
            BLANKS,
            &[("cache", name.as_str()), ("reason", "key_rate_limited")]
        ),
        blanks
    );
    // Only the hot key is tracked by the per-key limiter.
    assert_eq!(cache.tracked_keys(), 1);
}
