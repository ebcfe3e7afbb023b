//! Redis down, silent, and slow, through a `FaultProxy` in front of the
//! shared server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use ratelimit::metrics::{BLANKS, BREAKER_STATE, BREAKER_TRANSITIONS};
use ratelimit::{BlankReason, Error, Lookup, ProtectedCache, State, Window};
use testkit::FaultProxy;
use tokio::sync::Barrier;

use testkit::TestRecorder;

use crate::support::{shared_addr, test_config, unique_key, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_opens_the_breaker_within_its_window_and_probes_close_it() {
    let recorder = TestRecorder::new();
    let proxy = FaultProxy::start(shared_addr()).unwrap();
    let name = unique_name("down");
    let mut cfg = test_config(&name, &format!("redis://{}", proxy.addr()));
    cfg.call_timeout = Duration::from_millis(200);
    // Wide enough for a loaded machine: the window must hold the failures that trip it, and
    // the breaker must stay open while the checks below run.
    let window = Duration::from_secs(10);
    cfg.breaker.window = Window::Time {
        length: window,
        buckets: 10,
    };
    let open_duration = Duration::from_secs(3);
    cfg.breaker.open_duration = open_duration;
    // The cache registers its metric handles when it connects.
    let guard = recorder.guard();
    let cache = ProtectedCache::connect(cfg).await.unwrap();
    drop(guard);
    let key = unique_key("down");
    cache.set(&key, "v", None).await.unwrap();
    assert!(matches!(cache.get(&key).await.unwrap(), Lookup::Hit(_)));
    let mut events = cache.breaker().subscribe();

    proxy.refuse();
    let down_at = Instant::now();
    let mut failures = 0;
    let opened_after = loop {
        match cache.get(&key).await.unwrap() {
            Lookup::Blank(BlankReason::CircuitOpen) => break down_at.elapsed(),
            Lookup::Blank(BlankReason::Unavailable | BlankReason::Timeout) => failures += 1,
            other => panic!("redis is down, got {other:?}"),
        }
        assert!(down_at.elapsed() < window, "not open after {window:?}");
    };
    // With the two successful calls before the outage, 2 + 3 calls reach
    // min_calls (5) and 3/5 errors reach the 0.5 ratio.
    assert!(failures >= 3, "opened after {failures} failures");
    assert!(opened_after < window, "opened after {opened_after:?}");

    // While open, reads answer at once: 100 of them in far less than one call timeout each.
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(
            cache.get(&key).await.unwrap(),
            Lookup::Blank(BlankReason::CircuitOpen)
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "100 open reads took {:?}",
        started.elapsed()
    );
    let err = cache.set(&key, "w", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Refused {
                reason: BlankReason::CircuitOpen,
                ..
            }
        ),
        "{err}"
    );

    // Redis is back: after open_duration, half-open probes close it.
    proxy.restore();
    let back_at = Instant::now();
    loop {
        let r = cache.get(&key).await.unwrap();
        if cache.breaker().state() == State::Closed {
            assert!(matches!(r, Lookup::Hit(_)), "{r:?}");
            break;
        }
        assert!(
            back_at.elapsed() < open_duration + Duration::from_secs(10),
            "never closed again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen: Vec<(State, State)> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        seen.first(),
        Some(&(State::Closed, State::Open)),
        "{seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&(State::HalfOpen, State::Closed)),
        "{seen:?}"
    );

    // The same story in the metrics.
    let label = [("cache", name.as_str())];
    assert_eq!(recorder.gauge(BREAKER_STATE, &label), Some(0.0));
    let to =
        |s: &str| recorder.counter(BREAKER_TRANSITIONS, &[("cache", name.as_str()), ("to", s)]);
    assert!(to("open") >= 1 && to("half_open") >= 1 && to("closed") >= 1);
    assert!(
        recorder.counter(
            BLANKS,
            &[("cache", name.as_str()), ("reason", "circuit_open")]
        ) >= 100
    );
    cache.del(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_redis_every_call_ends_at_its_timeout() {
    let proxy = FaultProxy::start(shared_addr()).unwrap();
    let mut cfg = test_config(
        &unique_name("blackhole"),
        &format!("redis://{}", proxy.addr()),
    );
    let timeout = Duration::from_millis(300);
    cfg.call_timeout = timeout;
    cfg.breaker.min_calls = 1_000; // keep it closed: this test is about timeouts
    let cache = ProtectedCache::connect(cfg).await.unwrap();
    let key = unique_key("blackhole");
    cache.set(&key, "v", None).await.unwrap();

    proxy.blackhole();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let cache = cache.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let outcome = match i % 3 {
                0 => format!("{:?}", cache.get(&key).await.unwrap()),
                1 => format!("{:?}", cache.set(&key, "w", None).await.unwrap_err()),
                _ => format!("{:?}", cache.del(&key).await.unwrap_err()),
            };
            (outcome, started.elapsed())
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(10), futures_join(tasks))
        .await
        .expect("a call hung past its timeout");
    // The upper bound leaves room for 24 tasks on a loaded 2-core machine; the outcome
    // (a timeout, not a connection error) says which bound ended the call.
    for (outcome, elapsed) in all {
        assert!(
            outcome.contains("Blank(Timeout)") || outcome.starts_with("Timeout"),
            "{outcome}"
        );
        assert!(elapsed >= timeout, "{outcome} after {elapsed:?}");
        assert!(
            elapsed < timeout + Duration::from_secs(1),
            "{outcome} after {elapsed:?}"
        );
    }

    // When the network heals, reads are answered again. (Hit or Miss: the
    // timed-out DELs were held by the blackhole and may run after it, as
    // `Error::Timeout` warns.)
    proxy.restore();
    let healed = Instant::now();
    loop {
        let r = cache.get(&key).await.unwrap();
        if !r.is_blank() {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "never recovered: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cache.del(&key).await.unwrap();
}

async fn futures_join<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task panicked"));
    }
    out
}

/// 64 tasks arrive at a half-open breaker together: exactly N of them are
/// let through to Redis (the proxy delays each direction by a second, so
/// that the probes are still in flight while the others ask, however
/// loaded the machine), the rest get a blank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admits_exactly_n_probes_from_64_tasks() {
    for n in [1u32, 3, 5] {
        let proxy = FaultProxy::start(shared_addr()).unwrap();
        let clock = FakeRelativeClock::default();
        let mut cfg = test_config(
            &unique_name("halfopen"),
            &format!("redis://{}", proxy.addr()),
        );
        cfg.call_timeout = Duration::from_secs(5);
        cfg.breaker.half_open_permits = n;
        cfg.breaker.open_duration = Duration::from_secs(30);
        let cache = ProtectedCache::builder(cfg)
            .clock(clock.clone())
            .connect()
            .await
            .unwrap();
        let key = unique_key("halfopen");
        cache.set(&key, "v", None).await.unwrap();

        cache.breaker().force_open();
        proxy.delay(Duration::from_secs(1));
        clock.advance(Duration::from_secs(30)); // the fake clock says: probe now
        let barrier = Arc::new(Barrier::new(64));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let cache = cache.clone();
                let key = key.clone();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    cache.get(&key).await.unwrap()
                })
            })
            .collect();
        let outcomes = futures_join(tasks).await;
        let hits = outcomes
            .iter()
            .filter(|o| matches!(o, Lookup::Hit(_)))
            .count();
        let blanks = outcomes
            .iter()
            .filter(|o| **o == Lookup::Blank(BlankReason::CircuitOpen))
            .count();
        assert_eq!(hits, n as usize, "{outcomes:?}");
        assert_eq!(blanks, 64 - n as usize);
        assert_eq!(cache.breaker().state(), State::Closed, "the probes passed");
        proxy.restore();
        cache.del(&key).await.unwrap();
    }
}
