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

#[tokio::test]
async fn serves_replicates_and_shuts_down_cleanly_on_sigterm() {
    let (mut a, url_a, out_a) = spawn(&["--port", "0", "--eviction-interval", "500ms"]).await;
    let (mut b, url_b, out_b) =
        spawn(&["--port", "0", "--peers", &format!("{url_a}/eureka/v2")]).await;
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
    for out in [out_a, out_b] {
        assert_eq!(out.await.unwrap(), ["registry-server stopped"]);
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
