//! Big values, on private servers whose traffic counters only these tests
//! move (the soft-limit warning, which counts on the client, uses the
//! shared one).

use std::time::Duration;

use governor::clock::FakeRelativeClock;
use ratelimit::metrics::BIG_VALUES;
use ratelimit::{BigValueConfig, Error, Lookup, ProbeMode, ProtectedCache, ValueKind};
use testkit::TestRecorder;

use crate::support::{PrivateRedis, admin, shared_redis, test_config, unique_key, unique_name};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn a_64_mib_value_is_refused_without_being_read() {
    let server = PrivateRedis::start();
    let url = server.url();
    let mut con = admin(&url);
    let key = unique_key("big64");
    let size = 64 * MIB;
    // Build the value on the server: nothing crosses the network.
    let len: u64 = redis::cmd("SETRANGE")
        .arg(&key)
        .arg(size - 1)
        .arg("x")
        .query(&mut con)
        .unwrap();
    assert_eq!(len, size);
    let cache = ProtectedCache::connect(test_config(&unique_name("big64"), &url))
        .await
        .unwrap();
    let limit = cache.config().big_values.max_bytes;
    assert_eq!(limit, MIB);

    // Load the scripts first, so the counts below are of calls only (an
    // empty string is one of the values the probe leaves to the script).
    let empty = unique_key("empty");
    let _: () = redis::cmd("SET")
        .arg(&empty)
        .arg("")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        cache.get(&empty).await.unwrap(),
        Lookup::Hit(Default::default())
    );
    assert_eq!(
        cache.size(unique_key("absent")).await.unwrap(),
        Lookup::Miss
    );

    let sent_before = server.stat("total_net_output_bytes");
    let scripts_before = server.command_calls("evalsha");
    for _ in 0..3 {
        assert_eq!(
            cache.get(&key).await.unwrap(),
            Lookup::TooLarge { size, limit }
        );
    }
    let Lookup::Hit(measured) = cache.size(&key).await.unwrap() else {
        panic!("size not measured");
    };
    assert_eq!(measured.kind, ValueKind::String);
    assert_eq!(measured.bytes, size);
    let sent = server.stat("total_net_output_bytes") - sent_before;
    assert!(
        sent < 64 * 1024,
        "{sent} bytes left the server for a refused value"
    );
    // The verdict is remembered: one guarded read (the probe, then the
    // script), then no more round trips; the other script call is `size`.
    assert_eq!(server.command_calls("evalsha") - scripts_before, 2);
    assert!(sent <= cache.config().big_values.read_probe_bytes + 4096);

    // A 64 MiB write is refused before anything is sent.
    let received_before = server.stat("total_net_input_bytes");
    let other = unique_key("big64-write");
    let err = cache
        .set(&other, vec![0u8; size as usize], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ValueTooLarge { size: s, limit: l, .. } if s == size && l == limit),
        "{err}"
    );
    let received = server.stat("total_net_input_bytes") - received_before;
    assert!(received < 64 * 1024, "{received} bytes reached the server");
    let exists: bool = redis::cmd("EXISTS").arg(&other).query(&mut con).unwrap();
    assert!(!exists);

    // At the limit is fine, one byte above is not.
    cache
        .set(&other, vec![1u8; limit as usize], None)
        .await
        .unwrap();
    assert!(matches!(cache.get(&other).await.unwrap(), Lookup::Hit(v) if v.len() as u64 == limit));
    assert!(
        cache
            .set(&other, vec![1u8; limit as usize + 1], None)
            .await
            .is_err()
    );
}

/// A writer keeps flipping a key between a small value and an 8 MiB one
/// while readers read it. The probe is bounded and the size check and the
/// read of the script are one atomic step, so no read ever carries the big
/// value: with the probe on (in either mode), a read sends at most
/// `probe + 1` bytes of it; with the probe off, none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_writer_cannot_make_a_read_pull_a_big_value() {
    for (probe, mode) in [
        (1024, ProbeMode::HitFirst),
        (1024, ProbeMode::Pipelined),
        (0, ProbeMode::HitFirst),
    ] {
        racing_writer(probe, mode).await;
    }
}

async fn racing_writer(probe: u64, mode: ProbeMode) {
    let server = PrivateRedis::start();
    let url = server.url();
    let key = unique_key("bigrace");
    let clock = FakeRelativeClock::default();
    let mut cfg = test_config(&unique_name("bigrace"), &url);
    cfg.local = None;
    cfg.big_values = BigValueConfig {
        max_bytes: 4096,
        warn_bytes: 2048,
        max_elements: 100,
        read_probe_bytes: probe,
        probe_mode: mode,
    };
    let cache = ProtectedCache::builder(cfg)
        .clock(clock.clone())
        .connect()
        .await
        .unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first_flip = std::sync::Arc::new(tokio::sync::Notify::new());
    let writer = {
        let (url, key, stop) = (url.clone(), key.clone(), stop.clone());
        let first_flip = first_flip.clone();
        std::thread::spawn(move || {
            let mut con = admin(&url);
            let mut flips = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg("small")
                    .query(&mut con)
                    .unwrap();
                let _: u64 = redis::cmd("SETRANGE")
                    .arg(&key)
                    .arg(8 * MIB - 1)
                    .arg("x")
                    .query(&mut con)
                    .unwrap();
                flips += 1;
                if flips == 1 {
                    first_flip.notify_one();
                }
            }
            flips
        })
    };
    first_flip.notified().await;
    let sent_before = server.stat("total_net_output_bytes");
    let (mut small, mut big) = (0u64, 0u64);
    let reads = 300;
    for _ in 0..reads {
        clock.advance(Duration::from_secs(2)); // forget the too-large verdict
        match cache.get(&key).await.unwrap() {
            Lookup::Hit(v) => {
                assert_eq!(&v[..], b"small");
                small += 1;
            }
            Lookup::TooLarge { size, .. } => {
                assert_eq!(size, 8 * MIB);
                big += 1;
            }
            Lookup::Miss => {}
            other => panic!("{other:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = writer.join().unwrap();
    let sent = server.stat("total_net_output_bytes") - sent_before;
    assert!(
        flips > 0 && small + big > 0,
        "flips {flips}, small {small}, big {big}"
    );
    // Each read sends at most the probe plus a few dozen bytes of framing;
    // the writer's replies are a few bytes each.
    let bound = reads * (probe + 128) + u64::from(flips) * 16 + 64 * 1024;
    assert!(
        sent < bound,
        "probe {probe} {mode:?}: {sent} bytes left the server, bound {bound}"
    );
}

#[tokio::test]
async fn collections_are_guarded_by_element_count_and_memory() {
    let server = PrivateRedis::start();
    let url = server.url();
    let mut con = admin(&url);
    let mut cfg = test_config(&unique_name("bighash"), &url);
    cfg.big_values.max_elements = 10;
    let cache = ProtectedCache::connect(cfg).await.unwrap();

    let wide = unique_key("wide");
    for i in 0..20 {
        let _: () = redis::cmd("HSET")
            .arg(&wide)
            .arg(i)
            .arg("v")
            .query(&mut con)
            .unwrap();
    }
    assert_eq!(
        cache.get_hash(&wide).await.unwrap(),
        Lookup::TooLarge {
            size: 20,
            limit: 10
        }
    );

    let heavy = unique_key("heavy");
    let fat = vec![b'x'; 2 * MIB as usize];
    let _: () = redis::cmd("HSET")
        .arg(&heavy)
        .arg("f")
        .arg(&fat[..])
        .query(&mut con)
        .unwrap();
    let sent_before = server.stat("total_net_output_bytes");
    let Lookup::TooLarge { size, limit } = cache.get_hash(&heavy).await.unwrap() else {
        panic!("a 2 MiB hash was read");
    };
    assert!(size > 2 * MIB && limit == MIB, "{size} {limit}");
    assert!(server.stat("total_net_output_bytes") - sent_before < 64 * 1024);
}

#[tokio::test]
async fn a_one_node_redis_cluster_by_configuration() {
    let server = PrivateRedis::cluster();
    let name = unique_name("cluster");
    let base = test_config(&name, &server.url());
    let cfg = ratelimit::Config {
        topology: ratelimit::Topology::Cluster {
            nodes: vec![server.url()],
        },
        ..base
    };
    let cache = ProtectedCache::connect(cfg).await.unwrap();
    for i in 0..20 {
        let key = unique_key(&format!("cluster{i}"));
        cache.set(&key, format!("v{i}"), None).await.unwrap();
        assert_eq!(
            cache.get(&key).await.unwrap(),
            Lookup::Hit(format!("v{i}").into())
        );
        assert!(cache.del(&key).await.unwrap());
        assert_eq!(cache.get(&key).await.unwrap(), Lookup::Miss);
    }
    let big = unique_key("cluster-big");
    let mut con = admin(&server.url());
    let _: u64 = redis::cmd("SETRANGE")
        .arg(&big)
        .arg(2 * MIB)
        .arg("x")
        .query(&mut con)
        .unwrap();
    assert!(matches!(
        cache.get(&big).await.unwrap(),
        Lookup::TooLarge { .. }
    ));
}

#[tokio::test]
async fn values_above_the_soft_limit_are_served_and_counted_as_warned() {
    const KIB: usize = 1024;
    let name = unique_name("bigwarn");
    let mut cfg = test_config(&name, &shared_redis());
    cfg.local = None;
    cfg.big_values = BigValueConfig {
        max_bytes: 64 * KIB as u64,
        warn_bytes: 4 * KIB as u64,
        max_elements: 100,
        read_probe_bytes: 16 * KIB as u64,
        probe_mode: ProbeMode::default(),
    };
    let recorder = TestRecorder::new();
    let guard = recorder.guard();
    let cache = ProtectedCache::connect(cfg).await.unwrap();
    drop(guard);
    let metric =
        |event: &str| recorder.counter(BIG_VALUES, &[("cache", name.as_str()), ("event", event)]);

    // At or below the soft limit: served, not warned.
    for len in [100, 4 * KIB] {
        let key = unique_key("bigwarn-small");
        cache.set(&key, vec![b's'; len], None).await.unwrap();
        assert!(matches!(cache.get(&key).await.unwrap(), Lookup::Hit(v) if v.len() == len));
        cache.del(&key).await.unwrap();
    }
    assert_eq!(metric("warned"), 0, "a value within the soft limit warned");

    // Between the soft and the hard limit: written and read, each counted
    // once; both read paths (a value within the probe, and one longer than
    // the probe, read by the script) warn.
    let mut warned = 0;
    for len in [4 * KIB + 1, 32 * KIB] {
        let key = unique_key("bigwarn-big");
        cache.set(&key, vec![b'b'; len], None).await.unwrap();
        warned += 1;
        assert_eq!(metric("warned"), warned, "write of {len} bytes");
        match cache.get(&key).await.unwrap() {
            Lookup::Hit(v) => assert_eq!(v.len(), len),
            other => panic!("{len} bytes are below the hard limit, got {other:?}"),
        }
        warned += 1;
        assert_eq!(metric("warned"), warned, "read of {len} bytes");
        cache.del(&key).await.unwrap();
    }
    assert_eq!(metric("read_refused"), 0);
    assert_eq!(metric("write_refused"), 0);
}

#[tokio::test]
async fn a_too_large_verdict_is_remembered_for_the_local_ttl_then_asked_again() {
    let server = PrivateRedis::start();
    let url = server.url();
    let key = unique_key("bigmemo");
    let _: u64 = redis::cmd("SETRANGE")
        .arg(&key)
        .arg(8191)
        .arg("x")
        .query(&mut admin(&url))
        .unwrap();
    let clock = FakeRelativeClock::default();
    let mut cfg = test_config(&unique_name("bigmemo"), &url);
    let ttl = cfg.local.as_ref().expect("local cache on by default").ttl;
    cfg.big_values = BigValueConfig {
        max_bytes: 4096,
        warn_bytes: 2048,
        max_elements: 100,
        read_probe_bytes: 1024,
        probe_mode: ProbeMode::default(),
    };
    let cache = ProtectedCache::builder(cfg)
        .clock(clock.clone())
        .connect()
        .await
        .unwrap();
    let too_large = Lookup::TooLarge {
        size: 8192,
        limit: 4096,
    };
    let probes = || server.command_calls("getrange");
    for round in 0..3 {
        let before = probes();
        for _ in 0..5 {
            assert_eq!(cache.get(&key).await.unwrap(), too_large);
            clock.advance(ttl / 8);
        }
        // One guarded read per TTL; the other four are answered from the
        // memo.
        assert_eq!(probes() - before, 1, "round {round}");
        clock.advance(ttl);
    }
}

/// The probe's size limits in these tests: a 64-byte probe, a 4 KiB limit.
fn probe_config(name: &str, url: &str, mode: ProbeMode) -> ratelimit::Config {
    let mut cfg = test_config(name, url);
    cfg.local = None;
    cfg.big_values = BigValueConfig {
        max_bytes: 4096,
        warn_bytes: 4096,
        max_elements: 100,
        read_probe_bytes: 64,
        probe_mode: mode,
    };
    cfg
}

/// Both probe modes give every kind of string the same answer: the mode
/// changes what a read costs, never what it returns.
#[tokio::test]
async fn both_probe_modes_answer_every_kind_of_string_alike() {
    let server = PrivateRedis::start();
    let url = server.url();
    let mut con = admin(&url);
    for mode in [ProbeMode::HitFirst, ProbeMode::Pipelined] {
        let cache = ProtectedCache::connect(probe_config(&unique_name("modes"), &url, mode))
            .await
            .unwrap();
        let set = |con: &mut redis::Connection, key: &str, value: &[u8]| {
            let _: () = redis::cmd("SET").arg(key).arg(value).query(con).unwrap();
        };
        let small = unique_key("modes-small");
        set(&mut con, &small, b"small");
        assert_eq!(
            cache.get(&small).await.unwrap(),
            Lookup::Hit("small".into()),
            "{mode:?}"
        );

        assert_eq!(
            cache.get(unique_key("modes-missing")).await.unwrap(),
            Lookup::Miss,
            "{mode:?}"
        );

        let empty = unique_key("modes-empty");
        set(&mut con, &empty, b"");
        assert_eq!(
            cache.get(&empty).await.unwrap(),
            Lookup::Hit(Default::default()),
            "{mode:?}"
        );

        // Exactly the probe is still within it; one byte more is not.
        for len in [64, 65, 1000, 4096] {
            let key = unique_key("modes-long");
            let value = vec![b'l'; len];
            set(&mut con, &key, &value);
            assert_eq!(
                cache.get(&key).await.unwrap(),
                Lookup::Hit(value.into()),
                "{mode:?}, {len} bytes"
            );
        }

        let over = unique_key("modes-over");
        set(&mut con, &over, &[b'o'; 4097]);
        assert_eq!(
            cache.get(&over).await.unwrap(),
            Lookup::TooLarge {
                size: 4097,
                limit: 4096
            },
            "{mode:?}"
        );
    }
}

/// Commands the server ran, by name, as `INFO commandstats` counts them
/// (commands a script runs are counted too).
#[derive(Debug, PartialEq, Eq)]
struct Sent {
    getrange: u64,
    exists: u64,
    evalsha: u64,
    eval: u64,
    get: u64,
}

impl Sent {
    fn now(server: &PrivateRedis) -> Sent {
        let [getrange, exists, evalsha, eval, get] =
            ["getrange", "exists", "evalsha", "eval", "get"].map(|c| server.command_calls(c));
        Sent {
            getrange,
            exists,
            evalsha,
            eval,
            get,
        }
    }

    fn since(server: &PrivateRedis, before: &Sent) -> Sent {
        let now = Sent::now(server);
        Sent {
            getrange: now.getrange - before.getrange,
            exists: now.exists - before.exists,
            evalsha: now.evalsha - before.evalsha,
            eval: now.eval - before.eval,
            get: now.get - before.get,
        }
    }

    const fn of(getrange: u64, exists: u64, evalsha: u64) -> Sent {
        Sent {
            getrange,
            exists,
            evalsha,
            eval: 0,
            get: 0,
        }
    }
}

/// With the default `HitFirst`, a small hit costs Redis exactly one
/// command, `GETRANGE`; a miss is `GETRANGE`, then the script (whose own
/// `EXISTS` runs inside it, atomically). `Pipelined` sends `GETRANGE` +
/// `EXISTS` for both, and no script.
#[tokio::test]
async fn hit_first_sends_one_command_per_small_hit_and_the_script_per_miss() {
    assert_eq!(BigValueConfig::default().probe_mode, ProbeMode::HitFirst);
    let server = PrivateRedis::start();
    let url = server.url();
    let small = unique_key("sent-small");
    let _: () = redis::cmd("SET")
        .arg(&small)
        .arg("small")
        .query(&mut admin(&url))
        .unwrap();

    let hit_first = ProtectedCache::connect(probe_config(
        &unique_name("sent"),
        &url,
        ProbeMode::HitFirst,
    ))
    .await
    .unwrap();
    // Load the script, so that the counts below are of calls only (the
    // first EVALSHA of a script Redis does not hold fails with NOSCRIPT).
    assert_eq!(
        hit_first.get(unique_key("sent-warm")).await.unwrap(),
        Lookup::Miss
    );

    let before = Sent::now(&server);
    assert_eq!(
        hit_first.get(&small).await.unwrap(),
        Lookup::Hit("small".into())
    );
    assert_eq!(
        Sent::since(&server, &before),
        Sent::of(1, 0, 0),
        "HitFirst hit"
    );

    let before = Sent::now(&server);
    assert_eq!(
        hit_first.get(unique_key("sent-missing")).await.unwrap(),
        Lookup::Miss
    );
    // The one `EXISTS` is the script's, inside the atomic step.
    assert_eq!(
        Sent::since(&server, &before),
        Sent::of(1, 1, 1),
        "HitFirst miss"
    );

    let pipelined = ProtectedCache::connect(probe_config(
        &unique_name("sent"),
        &url,
        ProbeMode::Pipelined,
    ))
    .await
    .unwrap();
    let before = Sent::now(&server);
    assert_eq!(
        pipelined.get(&small).await.unwrap(),
        Lookup::Hit("small".into())
    );
    assert_eq!(
        Sent::since(&server, &before),
        Sent::of(1, 1, 0),
        "Pipelined hit"
    );

    let before = Sent::now(&server);
    assert_eq!(
        pipelined.get(unique_key("sent-missing")).await.unwrap(),
        Lookup::Miss
    );
    assert_eq!(
        Sent::since(&server, &before),
        Sent::of(1, 1, 0),
        "Pipelined miss"
    );
}
