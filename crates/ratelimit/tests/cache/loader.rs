//! Miss storms, the single-flight loader, negative caching, and the local
//! cache for hot keys, against the shared Redis with a fake clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use ratelimit::bytes::Bytes;
use ratelimit::metrics::READS;
use ratelimit::{BlankReason, Error, LocalConfig, Lookup, ProtectedCache};

use testkit::TestRecorder;

use crate::support::{shared_redis, test_config, unique_key, unique_name};

#[derive(Debug)]
struct DbDown;

impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database down")
    }
}

impl std::error::Error for DbDown {}

/// `callers` tasks call `get_or_load(key)` at once with a loader that
/// counts its runs, takes `delay`, and returns `found` (or fails).
fn concurrent_loads(
    cache: &ProtectedCache,
    key: &str,
    callers: usize,
    loads: &Arc<AtomicUsize>,
    delay: Duration,
    found: Result<&'static str, DbDown>,
) -> Vec<tokio::task::JoinHandle<ratelimit::Result<Lookup>>> {
    let found = found.map_err(|_| ());
    (0..callers)
        .map(|_| {
            let (cache, key, loads) = (cache.clone(), key.to_owned(), Arc::clone(loads));
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        found.map(Some).map_err(|()| DbDown)
                    })
                    .await
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_storm_loads_once_and_fills_the_cache() {
    let url = shared_redis();
    let cache = ProtectedCache::connect(test_config(&unique_name("missstorm"), &url))
        .await
        .unwrap();
    let key = unique_key("missstorm");
    let loads = Arc::new(AtomicUsize::new(0));
    let tasks = concurrent_loads(
        &cache,
        &key,
        50,
        &loads,
        Duration::from_millis(200),
        Ok("from the database"),
    );
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap(),
            Lookup::Hit(Bytes::from_static(b"from the database"))
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for 50 callers");
    // The loaded value is in Redis now, with the loader's TTL.
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Lookup::Hit(Bytes::from_static(b"from the database"))
    );
    cache.del(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_loader_fails_every_waiter_and_is_retried_later() {
    let url = shared_redis();
    let cache = ProtectedCache::connect(test_config(&unique_name("loadfail"), &url))
        .await
        .unwrap();
    let key = unique_key("loadfail");
    let loads = Arc::new(AtomicUsize::new(0));
    let tasks = concurrent_loads(
        &cache,
        &key,
        10,
        &loads,
        Duration::from_millis(100),
        Err(DbDown),
    );
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Loader { .. }), "{err}");
        assert!(err.to_string().contains("database down"), "{err}");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let again = cache
        .get_or_load(&key, || async { Ok::<_, DbDown>(Some("ok now")) })
        .await
        .unwrap();
    assert_eq!(again, Lookup::Hit(Bytes::from_static(b"ok now")));
    cache.del(&key).await.unwrap();
}

#[tokio::test]
async fn negative_caching_shields_the_database_until_it_expires() {
    let url = shared_redis();
    let clock = FakeRelativeClock::default();
    let mut cfg = test_config(&unique_name("negative"), &url);
    cfg.loader.negative_ttl = Some(Duration::from_secs(10));
    let cache = ProtectedCache::builder(cfg)
        .clock(clock.clone())
        .connect()
        .await
        .unwrap();
    let key = unique_key("negative");
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<Option<Vec<u8>>, DbDown>(None)
    };
    for _ in 0..5 {
        assert_eq!(cache.get_or_load(&key, load).await.unwrap(), Lookup::Miss);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "remembered as absent");
    clock.advance(Duration::from_secs(10));
    assert_eq!(cache.get_or_load(&key, load).await.unwrap(), Lookup::Miss);
    assert_eq!(loads.load(Ordering::SeqCst), 2, "forgotten after the TTL");
    // A write through this instance clears the negative entry at once.
    cache.set(&key, "now it exists", None).await.unwrap();
    assert!(matches!(
        cache.get_or_load(&key, load).await.unwrap(),
        Lookup::Hit(_)
    ));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    cache.del(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_are_bounded_in_number_and_time() {
    let url = shared_redis();
    let mut cfg = test_config(&unique_name("loadbound"), &url);
    cfg.loader.max_concurrent = 1;
    cfg.loader.timeout = Duration::from_millis(300);
    let cache = ProtectedCache::connect(cfg).await.unwrap();
    let slow = unique_key("loadbound-slow");
    let other = unique_key("loadbound-other");
    let loading = Arc::new(tokio::sync::Notify::new());
    let first = {
        let (cache, slow, loading) = (cache.clone(), slow.clone(), Arc::clone(&loading));
        tokio::spawn(async move {
            cache
                .get_or_load(&slow, || async move {
                    loading.notify_one();
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<Option<Vec<u8>>, DbDown>(None)
                })
                .await
                .unwrap()
        })
    };
    // The one load slot is taken once the first loader runs (not after a guessed delay).
    loading.notified().await;
    let busy = cache
        .get_or_load(&other, || async { Ok::<_, DbDown>(Some("x")) })
        .await
        .unwrap();
    assert_eq!(busy, Lookup::Blank(BlankReason::LoaderBusy));
    assert_eq!(first.await.unwrap(), Lookup::Blank(BlankReason::Timeout));
}

#[tokio::test]
async fn hot_keys_are_served_locally_and_refreshed_by_one_request() {
    let recorder = TestRecorder::new();
    let url = shared_redis();
    let clock = FakeRelativeClock::default();
    let name = unique_name("local");
    let mut cfg = test_config(&name, &url);
    cfg.local = Some(LocalConfig {
        max_bytes: 1024 * 1024,
        ttl: Duration::from_secs(1),
        max_stale: Duration::from_secs(5),
    });
    // The fake clock drives the breaker too: keep a forced open for long.
    cfg.breaker.open_duration = Duration::from_secs(3600);
    let key = unique_key("local");
    let hot = key.clone();
    // The cache registers its metric handles when it connects.
    let guard = recorder.guard();
    let cache = ProtectedCache::builder(cfg)
        .clock(clock.clone())
        .hot_keys(move |k: &[u8]| k == hot.as_bytes())
        .connect()
        .await
        .unwrap();
    drop(guard);
    let redis_hits = || {
        recorder.counter(
            READS,
            &[
                ("cache", name.as_str()),
                ("outcome", "hit"),
                ("source", "redis"),
            ],
        )
    };
    let local_hits = || {
        recorder.counter(
            READS,
            &[
                ("cache", name.as_str()),
                ("outcome", "hit"),
                ("source", "local"),
            ],
        )
    };
    cache.set(&key, "v1", None).await.unwrap();
    for _ in 0..100 {
        assert_eq!(cache.get(&key).await.unwrap(), Lookup::Hit("v1".into()));
    }
    assert_eq!(redis_hits(), 1, "one fill");
    assert_eq!(local_hits(), 99);

    // Another instance changes the value: this one serves its copy until
    // the TTL, then one request refreshes.
    let mut other = crate::support::admin(&url);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v2")
        .query(&mut other)
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Lookup::Hit("v1".into()));
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.get(&key).await.unwrap(), Lookup::Hit("v2".into()));
    assert_eq!(redis_hits(), 2, "one refresh");
    for _ in 0..100 {
        assert_eq!(cache.get(&key).await.unwrap(), Lookup::Hit("v2".into()));
    }
    assert_eq!(redis_hits(), 2);

    // This instance's own writes drop its copy at once.
    cache.set(&key, "v3", None).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Lookup::Hit("v3".into()));

    // Past ttl + max_stale the copy is not used at all.
    cache.breaker().force_open();
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Lookup::Hit("v3".into()),
        "fresh copy"
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Lookup::Hit("v3".into()),
        "stale copy beats a blank while the breaker is open"
    );
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Lookup::Blank(BlankReason::CircuitOpen)
    );
    cache.breaker().reset();
    cache.del(&key).await.unwrap();
    assert!(cache.local_bytes() <= 1024 * 1024);
}

#[cfg(feature = "hotkey")]
#[tokio::test]
async fn keys_reported_by_a_hotkey_set_are_hot() {
    let recorder = TestRecorder::new();
    let url = shared_redis();
    let name = unique_name("hotkeyset");
    let (set, updater) = hotkey::HotKeySet::manual();
    // The cache registers its metric handles when it connects.
    let guard = recorder.guard();
    let cache = ProtectedCache::builder(test_config(&name, &url))
        .hot_keys(set)
        .connect()
        .await
        .unwrap();
    drop(guard);
    let key = unique_key("hotkeyset");
    cache.set(&key, "v", None).await.unwrap();
    let local = || {
        recorder.counter(
            READS,
            &[
                ("cache", name.as_str()),
                ("outcome", "hit"),
                ("source", "local"),
            ],
        )
    };
    for _ in 0..10 {
        assert!(matches!(cache.get(&key).await.unwrap(), Lookup::Hit(_)));
    }
    assert_eq!(local(), 0, "not hot yet: every read goes to redis");
    updater.insert(key.as_bytes());
    for _ in 0..10 {
        assert!(matches!(cache.get(&key).await.unwrap(), Lookup::Hit(_)));
    }
    assert_eq!(local(), 9, "hot: one fill, then local");
    cache.del(&key).await.unwrap();
}
