//! Hot-key storms: many tasks hammer one key; the server (a private one,
//! whose command counters only this test moves) sees at most the
//! configured rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ratelimit::{BlankReason, LocalConfig, Lookup, ProtectedCache, Rate};

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
fn server_reads(server: &PrivateRedis) -> u64 {
    server.command_calls("getrange") + server.command_calls("evalsha")
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
