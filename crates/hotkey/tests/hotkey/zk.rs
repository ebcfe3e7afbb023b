//! Publishing to and watching the real ZooKeeper, with faults through
//! `testkit::FaultProxy`.

use std::sync::Arc;
use std::time::Duration;

use hotkey::metrics::{
    COOLED, DETECTED, HOT_KEYS, ZK_PUBLISHED_KEYS, ZK_RESYNCS, ZK_WATCH_EVENTS, ZK_WRITES,
    ZK_ZNODES,
};
use hotkey::zookeeper_client::{self, Acls, Client, CreateMode};
use hotkey::{
    Config, Detector, DigestCredentials, HotKey, HotKeySet, HotKeyWatch, ManualClock, Rule,
    SyncOutcome, ZkConfig, ZkPublisher, encode_key,
};
use testkit::{FaultProxy, Service, TestRecorder};

use crate::wait_until;

fn zk_addr() -> String {
    testkit::require(Service::ZooKeeper);
    Service::ZooKeeper.addr().unwrap().to_string()
}

fn creds() -> DigestCredentials {
    DigestCredentials {
        user: "detector".into(),
        password: "s3cret".into(),
    }
}

/// A config with a root no other test (or engineer) uses.
fn config(test: &str, connect: &str) -> ZkConfig {
    ZkConfig {
        connect: connect.into(),
        root: format!("/hotkey-test-{test}-{:08x}", rand::random::<u32>()),
        app: "app".into(),
        credentials: Some(creds()),
        session_timeout: Duration::from_secs(4),
        adopt_grace: Duration::from_millis(300),
        ..ZkConfig::default()
    }
}

fn watch_cfg(cfg: &ZkConfig, connect: &str) -> ZkConfig {
    ZkConfig {
        connect: connect.into(),
        credentials: None,
        ..cfg.clone()
    }
}

/// A detector with a small sketch and one rule.
fn small_detector(clock: &ManualClock, threshold: u64, cooldown: Duration) -> Arc<Detector> {
    let rule = Rule::default()
        .with_threshold(threshold)
        .with_cooldown(cooldown);
    let cfg = Config {
        rules: vec![rule],
        sketch_bytes: 1 << 16,
        ..Config::default()
    };
    Arc::new(Detector::with_clock(cfg, Arc::new(clock.clone())).unwrap())
}

fn hot(key: &[u8]) -> HotKey {
    HotKey {
        key: key.to_vec(),
        rate: 1001,
        rule: "default".into(),
        detected_at_ms: 1,
    }
}

/// Deletes the test's root (with the detector's credentials).
async fn cleanup(cfg: &ZkConfig) {
    let Ok(client) = Client::connector()
        .with_auth(
            "digest",
            format!("{}:{}", creds().user, creds().password).as_bytes(),
        )
        .connect(&zk_addr())
        .await
    else {
        return;
    };
    let app = cfg.app_path();
    for child in client.list_children(&app).await.unwrap_or_default() {
        let _ = client.delete(&format!("{app}/{child}"), None).await;
    }
    let _ = client.delete(&app, None).await;
    let _ = client.delete(&cfg.root, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_key_reaches_every_watcher_and_leaves_after_cooldown() {
    let addr = zk_addr();
    let cfg = config("cooldown", &addr);
    let clock = ManualClock::new(1_700_000_000_000);
    // Everything built while the guard lives reports to this test's recorder.
    let recorder = TestRecorder::new();
    let guard = recorder.guard();
    let detector = small_detector(&clock, 10, Duration::from_millis(500));
    let publisher = ZkPublisher::connect(cfg.clone())
        .await
        .unwrap()
        .spawn(Arc::clone(&detector), true);
    let mut watchers: Vec<HotKeyWatch> = Vec::new();
    for _ in 0..3 {
        watchers.push(HotKeySet::watch(watch_cfg(&cfg, &addr)).await.unwrap());
    }
    drop(guard);
    let app = [("app", "app")];
    assert_eq!(
        recorder.counter(ZK_RESYNCS, &app),
        3,
        "each watcher's first read"
    );
    let key: &[u8] = b"user:42/profile \xff";
    for _ in 0..11 {
        detector.record(key);
    }
    for w in &watchers {
        let set = w.set();
        wait_until(
            "every watcher to see the hot key",
            Duration::from_secs(15),
            || set.is_hot(key),
        )
        .await;
        assert_eq!(set.len(), 1);
    }
    // The znode is named by the encoded key and carries the detection.
    let reader = Client::connect(&addr).await.unwrap();
    let (data, _) = reader
        .get_data(&format!("{}/{}", cfg.app_path(), encode_key(key)))
        .await
        .unwrap();
    let meta: hotkey::KeyNodeData = serde_json::from_slice(&data).unwrap();
    assert_eq!((meta.rule.as_str(), meta.rate), ("default", 11));
    let rule = [("rule", "default")];
    assert_eq!(recorder.counter(DETECTED, &rule), 1);
    assert_eq!(recorder.gauge(HOT_KEYS, &rule), Some(1.0));
    assert!(recorder.counter(ZK_WRITES, &app) >= 1);
    assert_eq!(
        recorder.counter(ZK_ZNODES, &[("app", "app"), ("op", "created")]),
        1
    );
    assert_eq!(
        recorder.counter(ZK_WATCH_EVENTS, &app),
        3,
        "one creation, three watchers"
    );

    // Out of the window, then the cool-down: removed from every watcher.
    clock.advance_ms(1_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(watchers[0].set().is_hot(key), "still within the cool-down");
    clock.advance_ms(600);
    for w in &watchers {
        let set = w.set();
        wait_until(
            "every watcher to drop the cooled key",
            Duration::from_secs(15),
            || !set.is_hot(key),
        )
        .await;
    }
    assert!(publisher.stats().deleted >= 1);
    publisher.shutdown().await;
    assert_eq!(recorder.counter(COOLED, &rule), 1);
    assert_eq!(recorder.gauge(HOT_KEYS, &rule), Some(0.0));
    assert_eq!(
        recorder.counter(ZK_ZNODES, &[("app", "app"), ("op", "deleted")]),
        1
    );
    assert_eq!(recorder.gauge(ZK_PUBLISHED_KEYS, &app), Some(0.0));
    assert_eq!(recorder.counter(ZK_WATCH_EVENTS, &app), 6);
    cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_detector_can_write_everyone_can_read() {
    let addr = zk_addr();
    let cfg = config("acl", &addr);
    let mut publisher = ZkPublisher::connect(cfg.clone()).await.unwrap();
    assert!(matches!(
        publisher.sync(&[hot(b"k")]).await.unwrap(),
        SyncOutcome::Written { created: 1, .. }
    ));
    let app = cfg.app_path();

    let anonymous = Client::connect(&addr).await.unwrap();
    assert_eq!(
        anonymous.list_children(&app).await.unwrap(),
        vec![encode_key(b"k")]
    );
    let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let err = anonymous
        .create(&format!("{app}/k-intruder"), b"", &open)
        .await
        .unwrap_err();
    assert_eq!(err, zookeeper_client::Error::NoAuth);
    let err = anonymous
        .delete(&format!("{app}/{}", encode_key(b"k")), None)
        .await
        .unwrap_err();
    assert_eq!(err, zookeeper_client::Error::NoAuth);

    let impostor = Client::connector()
        .with_auth("digest", b"detector:wrong")
        .connect(&addr)
        .await
        .unwrap();
    let err = impostor
        .delete(&format!("{app}/{}", encode_key(b"k")), None)
        .await
        .unwrap_err();
    assert_eq!(err, zookeeper_client::Error::NoAuth);

    // A publisher with the wrong password cannot take over the app.
    let wrong = ZkConfig {
        credentials: Some(DigestCredentials {
            user: "detector".into(),
            password: "nope".into(),
        }),
        ..cfg.clone()
    };
    let err = ZkPublisher::connect(wrong).await.unwrap_err().to_string();
    assert!(err.contains("not authorized"), "{err}");

    // A root that lets the world write is refused.
    let open_root = format!("{}-open", cfg.root);
    anonymous.create(&open_root, b"", &open).await.unwrap();
    let err = ZkPublisher::connect(ZkConfig {
        root: open_root.clone(),
        ..cfg.clone()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, hotkey::Error::AclTooOpen { .. }), "{err}");
    let _ = anonymous.delete(&format!("{open_root}/app"), None).await;
    let _ = anonymous.delete(&open_root, None).await;
    cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_coalesced_to_one_per_interval() {
    let addr = zk_addr();
    let cfg = config("coalesce", &addr);
    let mut publisher = ZkPublisher::connect(cfg.clone()).await.unwrap();
    let watch = HotKeySet::watch(watch_cfg(&cfg, &addr)).await.unwrap();
    // 300 keys turn hot one by one as fast as the caller can ask.
    let started = tokio::time::Instant::now();
    let mut desired = Vec::new();
    let mut commits = Vec::new();
    for i in 0..300u32 {
        desired.push(hot(format!("key-{i}").as_bytes()));
        if i % 10 != 9 {
            continue;
        }
        if let SyncOutcome::Written { .. } = publisher.sync(&desired).await.unwrap() {
            commits.push(publisher.last_write_sent().unwrap());
        }
    }
    let elapsed = started.elapsed();
    let stats = publisher.stats();
    assert_eq!(stats.writes as usize, commits.len());
    assert_eq!(stats.created, 300);
    for pair in commits.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(100),
            "two writes sent {:?} apart",
            pair[1] - pair[0]
        );
    }
    assert!(
        stats.writes as u128 <= elapsed.as_millis() / 100 + 1,
        "{stats:?} in {elapsed:?}"
    );
    let set = watch.set();
    wait_until(
        "the watcher to see 300 keys",
        Duration::from_secs(15),
        || set.len() == 300,
    )
    .await;

    // A surge over max_ops_per_write is spread over several transactions.
    let mut small = ZkPublisher::connect(ZkConfig {
        max_ops_per_write: 100,
        ..cfg.clone()
    })
    .await
    .unwrap();
    let outcome = small.sync(&[]).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome::UpToDate,
        "adopted keys are kept during the grace period"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let outcome = small.sync(&[]).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome::Written {
            created: 0,
            deleted: 100,
            pending: 200
        }
    );
    while small.stats().published > 0 {
        let _ = small.sync(&[]).await.unwrap();
    }
    assert_eq!(small.stats().writes, 3);
    wait_until(
        "the watcher to see the adopted keys go",
        Duration::from_secs(15),
        || set.is_empty(),
    )
    .await;
    cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resyncs_after_a_disconnect() {
    let addr = zk_addr();
    let cfg = config("disconnect", &addr);
    let proxy = FaultProxy::start(Service::ZooKeeper.addr().unwrap()).unwrap();
    let mut publisher = ZkPublisher::connect(cfg.clone()).await.unwrap();
    let _ = publisher.sync(&[hot(b"a")]).await.unwrap();
    let watch = HotKeySet::watch(ZkConfig {
        session_timeout: Duration::from_secs(10),
        ..watch_cfg(&cfg, &proxy.addr().to_string())
    })
    .await
    .unwrap();
    let set = watch.set();
    assert_eq!(set.snapshot().sorted(), vec![b"a".to_vec()]);
    let before = watch.stats().resyncs;

    // Connection drops; while it is down, "a" cools and "b" turns hot.
    proxy.refuse();
    wait_until("the watcher to notice", Duration::from_secs(10), || {
        !watch.stats().connected
    })
    .await;
    assert!(
        set.is_hot(b"a"),
        "the last known set is kept while disconnected"
    );
    let _ = publisher.sync(&[hot(b"b")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!set.is_hot(b"b"));
    proxy.restore();
    wait_until("the watcher to re-read", Duration::from_secs(10), || {
        set.snapshot().sorted() == vec![b"b".to_vec()]
    })
    .await;
    assert!(watch.stats().resyncs > before, "{:?}", watch.stats());
    assert_eq!(watch.stats().reconnects, 0, "same session");

    // And incremental events flow again.
    let _ = publisher.sync(&[hot(b"b"), hot(b"c")]).await.unwrap();
    wait_until("the next event", Duration::from_secs(15), || {
        set.is_hot(b"c")
    })
    .await;
    cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_and_publisher_recover_from_session_expiry() {
    let addr = zk_addr();
    let cfg = config("expiry", &addr);
    let watch_proxy = FaultProxy::start(Service::ZooKeeper.addr().unwrap()).unwrap();
    let pub_proxy = FaultProxy::start(Service::ZooKeeper.addr().unwrap()).unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let detector = small_detector(&clock, 5, Duration::ZERO);
    let pub_cfg = ZkConfig {
        connect: pub_proxy.addr().to_string(),
        ..cfg.clone()
    };
    let publisher = ZkPublisher::connect(pub_cfg)
        .await
        .unwrap()
        .spawn(Arc::clone(&detector), true);
    let watch = HotKeySet::watch(watch_cfg(&cfg, &watch_proxy.addr().to_string()))
        .await
        .unwrap();
    let set = watch.set();
    let direct = HotKeySet::watch(watch_cfg(&cfg, &addr)).await.unwrap();
    let direct_set = direct.set();
    for _ in 0..6 {
        detector.record(b"old");
    }
    wait_until("'old' published", Duration::from_secs(15), || {
        set.is_hot(b"old")
    })
    .await;

    // Both sessions stall past their timeout: the server expires them.
    watch_proxy.blackhole();
    pub_proxy.blackhole();
    // The detector carries on: "old" cools down, "new" turns hot.
    clock.advance_ms(2_000);
    for _ in 0..6 {
        detector.record(b"new");
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        direct_set.is_hot(b"old"),
        "keys stay published while the detector is cut off"
    );
    assert!(set.is_hot(b"old"), "a cut-off watcher keeps its last set");
    watch_proxy.restore();
    pub_proxy.restore();
    wait_until(
        "publisher and watcher to converge",
        Duration::from_secs(20),
        || set.snapshot().sorted() == vec![b"new".to_vec()],
    )
    .await;
    assert_eq!(direct_set.snapshot().sorted(), vec![b"new".to_vec()]);
    assert!(watch.stats().reconnects >= 1, "{:?}", watch.stats());
    wait_until("publisher stats", Duration::from_secs(10), || {
        publisher.stats().reconnects >= 1
    })
    .await;
    publisher.shutdown().await;
    cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_are_split_over_transactions_or_skipped() {
    let addr = zk_addr();
    let cfg = config("longkeys", &addr);
    let mut publisher = ZkPublisher::connect(cfg.clone()).await.unwrap();
    let watch = HotKeySet::watch(watch_cfg(&cfg, &addr)).await.unwrap();
    // 400 keys of 1024 bytes that all need escaping: ~1.2 MB of paths, more
    // than one request may carry.
    let mut desired: Vec<HotKey> = (0..400u32)
        .map(|i| {
            let mut key = vec![0xffu8; 1024];
            key[..4].copy_from_slice(&i.to_be_bytes());
            hot(&key)
        })
        .collect();
    desired.push(hot(&[b'x'; 1025])); // over max_key_len
    while publisher.stats().published < 400 {
        let _ = publisher.sync(&desired).await.unwrap();
    }
    let stats = publisher.stats();
    assert!(stats.writes >= 3, "{stats:?}");
    assert_eq!(
        stats.skipped_long_keys as usize, stats.writes as usize,
        "skipped once per sync"
    );
    let set = watch.set();
    wait_until(
        "the watcher to see 400 long keys",
        Duration::from_secs(10),
        || set.len() == 400,
    )
    .await;
    assert!(set.is_hot(&desired[399].key) && !set.is_hot(&[b'x'; 1025]));
    cleanup(&cfg).await;
}
