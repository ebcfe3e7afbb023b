//! Three replicated nodes on loopback, including a restarted node catching up.

use std::collections::BTreeMap;
use std::time::Duration;

use registry::{Server, ServerConfig, Status};

use crate::support::{cfg, code, eventually, http, register};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn node(port: u16, peers: &[u16], sync_retries: u32) -> Server {
    let c = ServerConfig {
        bind: format!("127.0.0.1:{port}").parse().unwrap(),
        peers: peers
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/eureka/v2"))
            .collect(),
        sync_retries,
        sync_retry_wait: Duration::from_millis(200),
        ..cfg()
    };
    Server::start(c).await.expect("node starts")
}

/// `(app/id → status)` of a node's full registry.
fn view(s: &Server) -> BTreeMap<String, Status> {
    s.registry()
        .applications_live()
        .applications
        .iter()
        .flat_map(|a| {
            a.instances
                .iter()
                .map(|i| (format!("{}/{}", a.name, i.info.instance_id), i.info.status))
        })
        .collect()
}

async fn converge(nodes: &[&Server], want: &BTreeMap<String, Status>, what: &str) {
    eventually(Duration::from_secs(15), what, || async {
        nodes.iter().all(|n| view(n) == *want)
    })
    .await;
}

#[tokio::test]
async fn three_nodes_converge_and_a_restarted_node_catches_up() {
    let ports = [free_port(), free_port(), free_port()];
    let peers = |i: usize| -> Vec<u16> {
        ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| *p)
            .collect()
    };
    let a = node(ports[0], &peers(0), 0).await;
    let b = node(ports[1], &peers(1), 0).await;
    let mut c = node(ports[2], &peers(2), 0).await;
    let (ua, ub, uc) = (a.service_url(), b.service_url(), c.service_url());

    // Writes land on different nodes; each is replicated once to the other two.
    assert_eq!(register(&ua, "PAY", "p1").await.status(), 204);
    assert_eq!(register(&ua, "PAY", "p2").await.status(), 204);
    assert_eq!(register(&ub, "CART", "c1").await.status(), 204);
    let want: BTreeMap<String, Status> = [
        ("CART/c1", Status::Up),
        ("PAY/p1", Status::Up),
        ("PAY/p2", Status::Up),
    ]
    .map(|(k, v)| (k.into(), v))
    .into();
    converge(&[&a, &b, &c], &want, "registrations on every node").await;
    let r = http()
        .put(format!("{ub}/apps/PAY/p2/status?value=OUT_OF_SERVICE"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(code(http().delete(format!("{uc}/apps/CART/c1"))).await, 200);
    assert_eq!(code(http().put(format!("{uc}/apps/PAY/p1"))).await, 200);
    let want: BTreeMap<String, Status> = [("PAY/p1", Status::Up), ("PAY/p2", Status::OutOfService)]
        .map(|(k, v)| (k.into(), v))
        .into();
    converge(&[&a, &b, &c], &want, "override and cancel on every node").await;
    let hashes: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|n| n.registry().applications().apps_hashcode.clone())
        .collect();
    assert!(
        hashes.iter().all(|h| h == "OUT_OF_SERVICE_1_UP_1_"),
        "{hashes:?}"
    );

    // Replicated requests are not replicated again: versions settle.
    let versions = |n: &[&Server]| n.iter().map(|s| s.registry().version()).collect::<Vec<_>>();
    let before = versions(&[&a, &b, &c]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        versions(&[&a, &b, &c]),
        before,
        "a replication loop keeps changing the registries"
    );

    // Node C goes down; changes happen meanwhile; C restarts, syncs from a peer, catches up.
    c.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(register(&ua, "PAY", "p3").await.status(), 204);
    assert_eq!(code(http().delete(format!("{ub}/apps/PAY/p1"))).await, 200);
    c = node(ports[2], &peers(2), 3).await;
    let want: BTreeMap<String, Status> = [("PAY/p2", Status::OutOfService), ("PAY/p3", Status::Up)]
        .map(|(k, v)| (k.into(), v))
        .into();
    assert_eq!(
        view(&c),
        want,
        "the restarted node synced the registry before serving"
    );
    assert_eq!(
        c.registry()
            .instance("PAY", "p2")
            .unwrap()
            .info
            .overridden_status,
        Status::OutOfService
    );
    // New writes reach the restarted node again.
    assert_eq!(register(&ub, "PAY", "p4").await.status(), 204);
    let mut want = want;
    want.insert("PAY/p4".into(), Status::Up);
    converge(&[&a, &b, &c], &want, "writes after the restart").await;

    // Healing: B loses p3 without telling anyone; the next heartbeat to A is replicated,
    // B answers 404, and A replicates a registration in its place.
    b.registry()
        .cancel("PAY", "p3", registry::Clock::now(&registry::SystemClock))
        .unwrap();
    assert!(b.registry().instance("PAY", "p3").is_none());
    assert_eq!(code(http().put(format!("{ua}/apps/PAY/p3"))).await, 200);
    converge(
        &[&a, &b, &c],
        &want,
        "a lost instance healed by heartbeat replication",
    )
    .await;
    for n in [&a, &b, &c] {
        assert!(n.replication_dropped().iter().all(|(_, d)| *d == 0));
    }
    for n in [a, b, c] {
        n.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

#[tokio::test]
async fn changes_acknowledged_while_a_peer_is_down_reach_it_when_it_comes_up() {
    let down = free_port();
    let a = node(free_port(), &[down], 0).await;
    let ua = a.service_url();
    // A answers its clients while B is unreachable, and keeps the work queued.
    assert_eq!(register(&ua, "QUEUED", "q1").await.status(), 204);
    assert_eq!(register(&ua, "QUEUED", "q2").await.status(), 204);
    assert_eq!(
        code(http().delete(format!("{ua}/apps/QUEUED/q2"))).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    // B starts without peers, so it cannot sync: only A's retried batches can fill it.
    let b = node(down, &[], 0).await;
    let want: BTreeMap<String, Status> = [("QUEUED/q1".to_owned(), Status::Up)].into();
    converge(
        &[&a, &b],
        &want,
        "queued replication delivered after the peer came up",
    )
    .await;
    assert_eq!(
        b.counters().registrations,
        0,
        "B got the registration only by replication batch"
    );
    assert!(a.replication_dropped().iter().all(|(_, d)| *d == 0));
    for n in [a, b] {
        n.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

#[tokio::test]
async fn peers_replicate_with_the_shared_credentials() {
    let auth = registry::Auth::Bearer("peer-secret".into());
    let (pa, pb) = (free_port(), free_port());
    let secured = |port: u16, peer: u16| ServerConfig {
        bind: format!("127.0.0.1:{port}").parse().unwrap(),
        peers: vec![format!("http://127.0.0.1:{peer}")],
        auth: Some(auth.clone()),
        ..cfg()
    };
    let a = Server::start(secured(pa, pb)).await.unwrap();
    let b = Server::start(secured(pb, pa)).await.unwrap();
    let body = crate::support::instance_json("SAFE", "s1", 1);
    let post = |with: bool| {
        let mut r = http()
            .post(format!("{}/apps/SAFE", a.service_url()))
            .header("Content-Type", "application/json")
            .body(body.clone());
        if with {
            r = r.header("Authorization", auth.header_value());
        }
        code(r)
    };
    assert_eq!(post(false).await, 401);
    assert_eq!(post(true).await, 204);
    let want: BTreeMap<String, Status> = [("SAFE/s1".to_owned(), Status::Up)].into();
    converge(&[&a, &b], &want, "replication carries the credentials").await;
    // A batch without them is refused.
    let forged = http()
        .post(format!("{}/peerreplication/batch", b.service_url()))
        .header(registry::REPLICATION_HEADER, "true")
        .body(r#"{"replicationList":[{"action":"Cancel","appName":"SAFE","id":"s1"}]}"#);
    assert_eq!(code(forged).await, 401);
    assert!(b.registry().instance("SAFE", "s1").is_some());
    for n in [a, b] {
        n.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

/// A stand-in peer that records every replication batch it receives.
async fn spy_peer() -> (String, std::sync::Arc<parking_lot::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/eureka/v2/peerreplication/batch",
        axum::routing::post(move |body: String| {
            record.lock().push(body);
            async { r#"{"responseList":[]}"# }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/eureka/v2", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn replicated_changes_are_never_forwarded_again() {
    // A replicates to B, B to a spy. Whatever clients do on A reaches B as
    // replication, and B must not pass it on; what a client does on B it must.
    let (spy_url, spy) = spy_peer().await;
    let b = Server::start(ServerConfig {
        peers: vec![spy_url],
        ..cfg()
    })
    .await
    .unwrap();
    let a = Server::start(ServerConfig {
        peers: vec![b.service_url()],
        ..cfg()
    })
    .await
    .unwrap();
    let (ua, ub) = (a.service_url(), b.service_url());
    let c = http();
    assert_eq!(register(&ua, "LOOP", "r1").await.status(), 204);
    for req in [
        c.put(format!("{ua}/apps/LOOP/r1")),
        c.put(format!("{ua}/apps/LOOP/r1/status?value=OUT_OF_SERVICE")),
        c.delete(format!("{ua}/apps/LOOP/r1/status?value=UP")),
        c.put(format!("{ua}/apps/LOOP/r1/metadata?zone=z1")),
        c.put(format!("{ua}/apps/LOOP/r1")),
        c.delete(format!("{ua}/apps/LOOP/r1")),
    ] {
        assert_eq!(code(req).await, 200);
    }
    // Per peer, tasks travel in order: once B holds r2, it has applied all of r1's.
    assert_eq!(register(&ua, "LOOP", "r2").await.status(), 204);
    eventually(
        Duration::from_secs(15),
        "B to receive A's changes",
        || async { b.registry().instance("LOOP", "r2").is_some() },
    )
    .await;
    assert!(b.registry().instance("LOOP", "r1").is_none());
    // The control: a client's heartbeat on B does reach the spy, and after it
    // anything B had forwarded earlier would have arrived too.
    assert_eq!(code(c.put(format!("{ub}/apps/LOOP/r2"))).await, 200);
    eventually(
        Duration::from_secs(15),
        "B's own heartbeat at the spy",
        || async { spy.lock().iter().any(|b| b.contains("\"Heartbeat\"")) },
    )
    .await;
    let batches = spy.lock().clone();
    let tasks: Vec<&str> = batches
        .iter()
        .flat_map(|b| b.split("{\"action\":").skip(1))
        .collect();
    assert_eq!(tasks.len(), 1, "B forwarded replicated tasks: {batches:?}");
    assert!(
        tasks[0].starts_with("\"Heartbeat\"") && tasks[0].contains("\"r2\""),
        "{batches:?}"
    );
    for n in [a, b] {
        n.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}
