//! The `registry-server` binary: serves, replicates, stops cleanly on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::support::{eventually, http, register};

const BIN: &str = env!("CARGO_BIN_EXE_registry-server");

/// Starts the binary and returns it with its base URL, read from its first line,
/// and a task that collects the rest of its standard output.
async fn spawn(args: &[&str]) -> (Child, String, JoinHandle<Vec<String>>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = first
        .strip_prefix("registry-server listening on ")
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    // Keep draining stdout so that the final line can be written.
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });
    (child, url, rest)
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

/// A loopback port nobody listens on right now.
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

/// The value of one sample of a Prometheus text page (`name{labels}` as written).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn serves_replicates_and_shuts_down_cleanly_on_sigterm() {
    let (metrics_a, metrics_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (mut a, url_a, out_a) = spawn(&[
        "--port",
        "0",
        "--eviction-interval",
        "500ms",
        "--metrics-addr",
        &metrics_a,
    ])
    .await;
    let peer_a = format!("{url_a}/eureka/v2");
    let (mut b, url_b, out_b) = spawn(&[
        "--port",
        "0",
        "--peers",
        &peer_a,
        "--metrics-addr",
        &metrics_b,
    ])
    .await;
    assert_eq!(
        register(&format!("{url_b}/eureka/v2"), "BIN", "b1")
            .await
            .status(),
        204
    );
    // B replicates to A (A has no peers, so nothing flows back).
    let url = format!("{url_a}/eureka/v2/apps/BIN/b1");
    eventually(
        Duration::from_secs(15),
        "registration replicated from B to A",
        || async { http().get(&url).send().await.unwrap().status() == 200 },
    )
    .await;
    // Both nodes count it through their Prometheus endpoints: B's client
    // registration, its batch to A, and A's replicated registration.
    let scrape = |addr: &str| {
        let url = format!("http://{addr}/metrics");
        async move { http().get(url).send().await.unwrap().text().await.unwrap() }
    };
    let page_b = scrape(&metrics_b).await;
    let registered = "registry_registrations_total{origin=\"client\"}";
    assert_eq!(sample(&page_b, registered), Some(1.0), "{page_b}");
    assert_eq!(sample(&page_b, "registry_instances"), Some(1.0), "{page_b}");
    // B counts the batch once A's answer is back, maybe after A serves the record.
    let batches = format!("registry_replication_batches_total{{peer=\"{peer_a}\"}}");
    eventually(
        Duration::from_secs(15),
        "B to count its batch to A",
        || async { sample(&scrape(&metrics_b).await, &batches).is_some_and(|n| n >= 1.0) },
    )
    .await;
    // A counts right after the record becomes visible.
    let replicated = "registry_registrations_total{origin=\"peer\"}";
    eventually(
        Duration::from_secs(15),
        "A to count the replicated registration",
        || async { sample(&scrape(&metrics_a).await, replicated) == Some(1.0) },
    )
    .await;
    // A long poll in flight must not hold the shutdown back.
    let poll = tokio::spawn(
        http()
            .get(format!("{url_a}/eureka/v2/apps/delta?wait=60s&version=999"))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for child in [&a, &b] {
        sigterm(child);
    }
    for child in [&mut a, &mut b] {
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("exits")
            .unwrap();
        assert!(status.success(), "exit status {status}");
    }
    for (out, metrics) in [(out_a, metrics_a), (out_b, metrics_b)] {
        assert_eq!(
            out.await.unwrap(),
            [
                format!("registry-server metrics on http://{metrics}/metrics"),
                "registry-server stopped".to_owned()
            ]
        );
    }
    assert_eq!(poll.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn bad_arguments_fail_with_a_message() {
    for args in [
        vec!["--port", "0", "--eviction-interval", "5x"],
        vec!["--port", "0", "--auth", "token"],
        vec!["--port", "0", "--peers", "ftp://nope"],
        vec!["--port", "0", "--renewal-percent-threshold", "2"],
        vec!["--port", "0", "--eviction-interval", "999999999999999999m"],
        vec!["--port", "0", "--delta-retention", "18446744073709551615s"],
        vec!["--port", "0", "--metrics-addr", "nowhere"],
    ] {
        let out = Command::new(BIN).args(&args).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!err.trim().is_empty(), "{args:?} gave no message");
        assert!(
            !err.contains("panicked") && out.status.code() != Some(101),
            "{args:?} panicked: {err}"
        );
    }
}
