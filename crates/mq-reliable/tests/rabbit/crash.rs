//! A process crash (SIGKILL) mid-stream, twice: once while spilling, once
//! in the middle of the replay after a restart. Every message the killed
//! processes had acknowledged (confirmed or spilled) reaches the broker.
//!
//! The child is this test binary again, running the ignored `crash_child`
//! test with its parameters in the environment.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use mq_reliable::{Message, PublisherState, QueueSpec, Receipt, ReliablePublisher};

use crate::support::*;

const ENV_URL: &str = "MQR_CRASH_URL";
const ENV_DIR: &str = "MQR_CRASH_DIR";
const ENV_QUEUE: &str = "MQR_CRASH_QUEUE";
const ENV_FIRST: &str = "MQR_CRASH_FIRST_ID";
const ENV_WAIT_HEALTHY: &str = "MQR_CRASH_WAIT_HEALTHY";
const ENV_WINDOW: &str = "MQR_CRASH_WINDOW";

/// What the parent learns from a child's stdout.
#[derive(Default)]
struct Seen {
    /// Ids the child acknowledged, with `c` (confirmed) or `s` (spilled).
    acked: Vec<(u64, char)>,
    states: Vec<String>,
}

struct Publisher {
    child: Child,
    seen: Arc<Mutex<Seen>>,
    reader: std::thread::JoinHandle<()>,
}

impl Publisher {
    fn spawn(
        url: &str,
        dir: &std::path::Path,
        queue: &str,
        first_id: u64,
        wait_healthy: bool,
        window: usize,
    ) -> Publisher {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_URL, url)
            .env(ENV_DIR, dir)
            .env(ENV_QUEUE, queue)
            .env(ENV_FIRST, first_id.to_string())
            .env(ENV_WAIT_HEALTHY, if wait_healthy { "1" } else { "0" })
            .env(ENV_WINDOW, window.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let out = child.stdout.take().unwrap();
        let s = Arc::clone(&seen);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("ack"), Some(id), Some(kind)) => {
                        let id = id.parse().unwrap();
                        s.lock()
                            .unwrap()
                            .acked
                            .push((id, kind.chars().next().unwrap()));
                    }
                    (Some("state"), Some(state), _) => {
                        s.lock().unwrap().states.push(state.to_owned());
                    }
                    _ => {}
                }
            }
        });
        Publisher {
            child,
            seen,
            reader,
        }
    }

    fn count(&self, kind: char) -> usize {
        self.seen
            .lock()
            .unwrap()
            .acked
            .iter()
            .filter(|(_, k)| *k == kind)
            .count()
    }

    async fn wait(&self, what: &str, cond: impl Fn(&Seen) -> bool) {
        let start = Instant::now();
        while !cond(&self.seen.lock().unwrap()) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "child never reached: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, then the ids it had acknowledged: every line it printed,
    /// up to the end of its stdout.
    fn kill(mut self) -> Vec<(u64, char)> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap();
        std::mem::take(&mut self.seen.lock().unwrap().acked)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_stream_then_a_restart_that_replays_loses_nothing() {
    let url = url();
    let mut cleanup = Cleanup::new(&url);
    let queue = cleanup.queue(&unique("crash"));
    let spec = QueueSpec::classic(&queue);
    let proxy = proxy();
    let proxied = via(&url, proxy.addr());
    let dir = tempfile::tempdir().unwrap();

    // 1. Publishing; the broker becomes unreachable; killed while spilling.
    let a = Publisher::spawn(&proxied, dir.path(), &queue, 0, true, 256);
    a.wait("3000 confirmed", |s| {
        s.acked.iter().filter(|(_, k)| *k == 'c').count() >= 3_000
    })
    .await;
    proxy.refuse();
    a.wait("3000 spilled", |s| {
        s.acked.iter().filter(|(_, k)| *k == 's').count() >= 3_000
    })
    .await;
    let spilled_by_a = a.count('s');
    let acked_a = a.kill();
    assert!(spilled_by_a >= 3_000);

    // 2. Restart with a slow broker: killed in the middle of the replay.
    // 20 ms each way and a window of 16: the replay takes at least 40 ms
    // per 16 records, 7.5 s for the 3000+ spilled, so a kill 0.5 s in lands
    // in the middle of it (after a checkpoint or two, every 128) on any
    // machine.
    proxy.restore();
    proxy.delay(Duration::from_millis(20));
    let b = Publisher::spawn(&proxied, dir.path(), &queue, 10_000_000, false, 16);
    b.wait("recovering", |s| s.states.iter().any(|x| x == "recovering"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let states_b = b.seen.lock().unwrap().states.clone();
    assert!(
        !states_b.iter().any(|x| x == "healthy"),
        "the kill must land mid-replay: {states_b:?}"
    );
    let acked_b = b.kill();

    // 3. Restart once more; this one finishes the replay.
    proxy.restore();
    let cfg = publisher_cfg(&proxied, spec.clone(), dir.path());
    let publisher = ReliablePublisher::start(cfg).unwrap();
    tokio::time::timeout(Duration::from_secs(60), publisher.flush())
        .await
        .expect("the replay never finished")
        .unwrap();
    let replayed = publisher.stats().replayed;
    assert!(
        replayed as usize >= spilled_by_a / 2,
        "replayed only {replayed}"
    );
    publisher.close().await;

    // Everything acknowledged by either killed process is in the queue.
    let (consumer, got) = collector(consumer_cfg(&url, spec, 500));
    let expected: HashSet<u64> = acked_a.iter().chain(&acked_b).map(|(id, _)| *id).collect();
    let g = got.clone();
    eventually(Duration::from_secs(60), "every acknowledged id", || {
        expected.iter().all(|id| g.count(&id.to_string()) >= 1)
    })
    .await;
    consumer.shutdown().await.unwrap();
    eprintln!(
        "crash test: A acked {} ({} confirmed, {} spilled), B acked {}, replayed after the last \
         restart {replayed}, received {} copies of {} ids",
        acked_a.len(),
        acked_a.iter().filter(|(_, k)| *k == 'c').count(),
        spilled_by_a,
        acked_b.len(),
        got.total(),
        got.distinct()
    );
}

/// The child half of the crash test: publishes ids from `MQR_CRASH_FIRST_ID`
/// on, printing `ack <id> c|s` per receipt and `state <s>` per transition,
/// until it is killed (or after two minutes, should the parent be gone).
#[test]
#[ignore = "the child process of the crash test; it starts this itself"]
fn crash_child() {
    let Ok(url) = std::env::var(ENV_URL) else {
        return;
    };
    let dir = std::env::var(ENV_DIR).unwrap();
    let queue = std::env::var(ENV_QUEUE).unwrap();
    let first: u64 = std::env::var(ENV_FIRST).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut cfg = publisher_cfg(&url, QueueSpec::classic(&queue), std::path::Path::new(&dir));
        cfg.reliability.window = std::env::var(ENV_WINDOW).unwrap().parse().unwrap();
        let publisher = ReliablePublisher::start(cfg).unwrap();
        let mut state = publisher.state();
        tokio::spawn(async move {
            loop {
                let s: PublisherState = *state.borrow_and_update();
                println!("state {s}");
                if state.changed().await.is_err() {
                    break;
                }
            }
        });
        if std::env::var(ENV_WAIT_HEALTHY).as_deref() == Ok("1") {
            let mut st = publisher.state();
            let _ = st.wait_for(|s| *s == PublisherState::Healthy).await;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut pending = FuturesUnordered::new();
        let mut id = first;
        while Instant::now() < deadline {
            let p = publisher
                .submit(Message::new(id.to_string(), format!("payload {id}")))
                .await
                .unwrap();
            let this = id;
            pending.push(async move { (this, p.await) });
            id += 1;
            while pending.len() > 512 {
                let (id, r) = pending.next().await.unwrap();
                match r.unwrap() {
                    Receipt::Confirmed => println!("ack {id} c"),
                    Receipt::Spilled(_) => println!("ack {id} s"),
                }
            }
        }
    });
}
