//! npm's `eureka-js-client`, unchanged, against the real server.

use std::process::Stdio;
use std::time::Duration;

use registry::Clock as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{cfg, node_modules, start};

#[tokio::test]
async fn eureka_js_client_registers_renews_fetches_and_deregisters() {
    let modules = node_modules("eureka-js-client");
    let server = start(cfg()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/cycle.js");
    let mut child = Command::new("node")
        .arg(script)
        .arg(server.local_addr().port().to_string())
        .arg("jsapp")
        .env("NODE_PATH", &modules)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("`node` runs (Node.js 18+ is needed by the eureka-js-client test)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events: Vec<Value> = Vec::new();
    let mut seen_by_server = false;
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("not an event: {line}"));
            if v["event"] == "sees_self" {
                // While the client runs, the server holds its record and counts its heartbeats.
                let inst = server
                    .registry()
                    .instance("JSAPP", "jsapp-1")
                    .expect("registered on the server");
                assert_eq!(inst.info.port.port, 7070);
                assert_eq!(inst.info.metadata["runtime"], "node");
                assert_eq!(inst.info.lease_info.renewal_interval_secs, 1);
                seen_by_server = true;
            }
            events.push(v);
        }
    };
    tokio::time::timeout(Duration::from_secs(40), read)
        .await
        .expect("the js client finishes within 40 s");
    let status = child.wait().await.unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(
        status.success(),
        "js client failed: {names:?} {events:?}\nstderr:\n{stderr}"
    );
    assert_eq!(
        names,
        ["registered", "started", "sees_self", "deregistered"],
        "{events:?}"
    );
    let me = &events[2];
    assert_eq!(me["instanceId"], "jsapp-1");
    assert_eq!(me["status"], "UP");
    assert_eq!(me["port"], 7070);
    assert!(me["heartbeats"].as_u64().unwrap() >= 3);
    assert!(seen_by_server);
    // Its delta handling and every request went through without a complaint.
    assert!(
        !stderr.contains("[warn]") && !stderr.contains("[error]"),
        "the js client complained:\n{stderr}"
    );
    assert!(
        server.registry().instance("JSAPP", "jsapp-1").is_none(),
        "de-registered on the server"
    );
    assert!(
        server
            .registry()
            .stats(registry::SystemClock.now())
            .renews_last_min
            >= 3
    );
    // It fetched the full registry, then deltas (shouldUseDelta), then cancelled.
    let counts = server.counters();
    assert!(
        counts.full_fetches >= 1 && counts.delta_fetches >= 1,
        "{counts:?}"
    );
    assert_eq!((counts.registrations, counts.cancels), (1, 1), "{counts:?}");
    let delta = server.registry().delta(registry::SystemClock.now());
    assert_eq!(
        delta.applications[0].instances[0].info.action_type,
        registry::ActionType::Deleted
    );
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
