//! `RegistryClient` against a real server.

use std::time::Duration;

use registry::{ClientConfig, Clock as _, InstanceInfo, RegistryClient, Status, SystemClock};

use crate::support::{cfg, eventually, http, register, start};

fn instance(id: &str) -> InstanceInfo {
    let mut i = InstanceInfo::new("inventory", id, "127.0.0.1", 9000);
    i.vip_address = Some("inventory.vip".into());
    i.lease_info.renewal_interval_secs = 1;
    i
}

#[tokio::test]
async fn registers_renews_reregisters_on_404_and_picks_round_robin() {
    let server = start(cfg()).await;
    let base = server.service_url();
    let me = RegistryClient::new(ClientConfig {
        service_urls: vec!["http://127.0.0.1:1/eureka/v2".into(), base.clone()],
        instance: Some(instance("inv-1")),
        renewal_interval: Some(Duration::from_millis(100)),
        long_poll: Some(Duration::from_secs(5)),
        ..ClientConfig::default()
    })
    .unwrap();
    me.start();
    eventually(
        Duration::from_secs(10),
        "registration and 3 heartbeats",
        || async {
            server.registry().instance("INVENTORY", "inv-1").is_some() && me.stats().heartbeats >= 3
        },
    )
    .await;
    // Lost on the server (e.g. evicted): the next heartbeat gets 404 and registers again.
    server
        .registry()
        .cancel("INVENTORY", "inv-1", SystemClock.now())
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "re-registration after a 404",
        || async {
            me.stats().registrations >= 2
                && server.registry().instance("INVENTORY", "inv-1").is_some()
        },
    )
    .await;

    // A fetch-only client long-polls deltas and sees new instances within moments.
    let reader = RegistryClient::new(ClientConfig {
        service_urls: vec![base.clone()],
        long_poll: Some(Duration::from_secs(10)),
        ..ClientConfig::default()
    })
    .unwrap();
    reader.start();
    eventually(Duration::from_secs(10), "reader sees inv-1", || async {
        reader.instances_for_vip("inventory.vip").len() == 1
    })
    .await;
    let body = crate::support::instance_json("INVENTORY", "inv-2", 9001)
        .replace("\"inventory\"", "\"inventory.vip\"");
    let r = http()
        .post(format!("{base}/apps/INVENTORY"))
        .header("Content-Type", "application/json")
        .body(body);
    assert_eq!(r.send().await.unwrap().status(), 204);
    eventually(
        Duration::from_secs(5),
        "reader sees inv-2 through a long-polled delta",
        || async { reader.instances_for_vip("inventory.vip").len() == 2 },
    )
    .await;
    let picks: Vec<String> = (0..4)
        .map(|_| {
            reader
                .next_instance("inventory.vip")
                .unwrap()
                .info
                .instance_id
                .clone()
        })
        .collect();
    assert_eq!(picks, ["inv-1", "inv-2", "inv-1", "inv-2"]);
    // Out of service: skipped by the picker once the delta arrives.
    let r = http()
        .put(format!(
            "{base}/apps/INVENTORY/inv-2/status?value=OUT_OF_SERVICE"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(
        Duration::from_secs(5),
        "inv-2 out of service at the reader",
        || async {
            reader
                .instances_for_vip("inventory.vip")
                .iter()
                .any(|i| i.info.status == Status::OutOfService)
        },
    )
    .await;
    assert!((0..4).all(|_| {
        reader
            .next_instance("inventory.vip")
            .unwrap()
            .info
            .instance_id
            == "inv-1"
    }));
    let stats = reader.stats();
    assert!(
        stats.delta_fetches >= 2 && stats.full_fetches == 1,
        "{stats:?}"
    );

    // Shutdown de-registers.
    me.shutdown().await.unwrap();
    assert!(server.registry().instance("INVENTORY", "inv-1").is_none());
    reader.shutdown().await.unwrap();
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_hashcode_mismatch_falls_back_to_a_full_fetch() {
    let mut c = cfg();
    c.registry.delta_retention = Duration::from_secs(1);
    let server = start(c).await;
    let base = server.service_url();
    let reader = RegistryClient::new(ClientConfig {
        service_urls: vec![base.clone()],
        ..ClientConfig::default()
    })
    .unwrap();
    reader.refresh().await.unwrap();
    assert_eq!(reader.stats().full_fetches, 1);
    for n in 0..3 {
        assert_eq!(
            register(&base, "MISS", &format!("m{n}")).await.status(),
            204
        );
    }
    // The changes fall out of the delta window before the reader looks again.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(register(&base, "OTHER", "o1").await.status(), 204);
    reader.refresh().await.unwrap();
    let stats = reader.stats();
    assert_eq!(
        (stats.full_fetches, stats.delta_fetches),
        (2, 0),
        "mismatch must trigger a full fetch: {stats:?}"
    );
    assert_eq!(reader.local().hashcode(), "UP_4_");
    assert_eq!(reader.application("miss").len(), 3);
    // With nothing missed, the next refresh reconciles from the delta alone.
    assert_eq!(register(&base, "OTHER", "o2").await.status(), 204);
    reader.refresh().await.unwrap();
    assert_eq!(reader.stats().delta_fetches, 1);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
