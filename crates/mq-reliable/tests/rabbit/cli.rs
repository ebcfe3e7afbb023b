//! The command-line contract of `reliable-producer` and
//! `reliable-consumer`, driven as an operator would: a broker that is away,
//! a producer killed mid-run, restarts that replay.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::*;

const N: u64 = 20_000;

/// An example binary of this crate (`cargo test` builds them first).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} missing: `cargo test -p mq-reliable` builds the examples",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.stderr(Stdio::null()).output().unwrap();
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    (out, last)
}

/// `key=value` pairs of a summary line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_keep_their_contract_through_an_outage_and_a_kill() {
    let url = url();
    let mut cleanup = Cleanup::new(&url);
    let queue = cleanup.queue(&unique("cli"));
    let proxy = proxy();
    let proxied = via(&url, proxy.addr());
    let dir = tempfile::tempdir().unwrap();
    let producer = |count: u64, wait: bool| {
        let mut c = Command::new(example("reliable-producer"));
        c.args([
            "--amqp",
            &proxied,
            "--queue",
            &queue,
            "--count",
            &count.to_string(),
            "--size",
            "64",
        ])
        .arg("--spill-dir")
        .arg(dir.path());
        if wait {
            c.arg("--wait-confirmed");
        }
        c
    };

    // The broker is away: everything is spilled, and that is a success.
    proxy.refuse();
    let (out, line) = tokio::task::spawn_blocking({
        let mut p = producer(N, false);
        move || run(&mut p)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{line}");
    assert_eq!(
        (field(&line, "confirmed"), field(&line, "spilled")),
        (0, N),
        "{line}"
    );

    // The broker is back but slow; a run that only replays is killed
    // (SIGKILL) in the middle of the replay: 100 ms each way holds a window
    // of 1024 to ~5000 records/s, so the 20 000 take 4 s, plus the
    // handshake's round trips, however fast the machine.
    proxy.restore();
    proxy.delay(Duration::from_millis(100));
    let mut killed = producer(0, true)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    killed.kill().unwrap();
    killed.wait().unwrap();

    // The next run replays the rest, rides out a cut, and with
    // --wait-confirmed exits only once everything is confirmed.
    proxy.restore();
    let last = producer(0, true)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    let out = tokio::task::spawn_blocking(move || last.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(out.status.success(), "{line}");
    assert_eq!(
        (field(&line, "confirmed"), field(&line, "spilled")),
        (0, 0),
        "{line}"
    );
    assert!(
        field(&line, "replayed") > 0,
        "the backlog left by the killed run was replayed: {line}"
    );

    // Only the first run published (ids 0..N-1); all of them arrived
    // through replays. Copies beyond one are duplicates.
    let (out, line) = tokio::task::spawn_blocking({
        let mut c = Command::new(example("reliable-consumer"));
        c.args([
            "--amqp",
            &url,
            "--queue",
            &queue,
            "--expect",
            &N.to_string(),
            "--prefetch",
            "500",
        ]);
        move || run(&mut c)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{line}");
    assert_eq!(field(&line, "received"), N, "{line}");
    assert!(field(&line, "duplicates") <= 2 * 1024, "{line}");
    // Left in the queue: at most late duplicates.
    assert!(ready_count(&url, &queue).await <= 2 * 1024);
}
