//! `connection.blocked` from a real broker. Raising a memory alarm
//! reconfigures a whole node, so the test starts a private RabbitMQ node
//! (its own name, ports and directory, as `cargo xtask services` does) and
//! never touches the shared broker. The alarm blocks the publisher: what it
//! had in flight and everything after is spilled, nothing is replayed while
//! the connection stays blocked, and once the alarm clears the log is
//! replayed over the same connection and every acknowledged id arrives.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use mq_reliable::{
    Message, PublisherConfig, PublisherState, QueueSpec, Receipt, ReliablePublisher, SpillReason,
};

use crate::support::*;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// A RabbitMQ node of this test's own, stopped when dropped.
struct PrivateNode {
    name: String,
    port: u16,
    env: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

impl PrivateNode {
    /// Boots a node on free ports in a temporary directory (a few seconds).
    fn start() -> PrivateNode {
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: this test runs a private RabbitMQ node (apt-get install rabbitmq-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let name = format!("mqr-alarm-{port}@localhost");
        let d = |sub: &str| dir.path().join(sub).display().to_string();
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").unwrap();
        let env = vec![
            ("RABBITMQ_NODENAME", name.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_owned()),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_DIST_PORT", free_port().to_string()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_PID_FILE", d("rabbitmq.pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
        ];
        let node = PrivateNode {
            name,
            port,
            env,
            _dir: dir,
        };
        let status = Command::new(SERVER)
            .arg("-detached")
            .envs(node.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "rabbitmq-server -detached: {status}");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the private node {} never listened on {port}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node.ctl(&["await_startup", "--timeout", "120"]);
        node
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl` against this node.
    fn ctl(&self, args: &[&str]) {
        let out = Command::new(CTL)
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = Command::new(CTL)
            .arg("-n")
            .arg(&self.name)
            .arg("stop")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Submits `ids` and waits for every receipt.
async fn publish(publisher: &ReliablePublisher, ids: std::ops::Range<u32>) -> Vec<Receipt> {
    let mut pending = FuturesUnordered::new();
    for i in ids {
        let p = publisher
            .submit(Message::new(format!("a{i}"), format!("payload {i}")))
            .await
            .unwrap();
        pending.push(p);
    }
    let mut out = Vec::new();
    while let Some(r) = pending.next().await {
        out.push(r.expect("every message is acknowledged"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_blocks_the_publisher_which_spills_then_replays() {
    // rabbitmqctl and the boot wait block: off the runtime's scheduler.
    let node = tokio::task::block_in_place(PrivateNode::start);
    let url = node.url();
    let queue = unique("alarm");
    let spec = QueueSpec::classic(&queue);
    let dir = tempfile::tempdir().unwrap();
    // The subject is the block, not timeouts: the shared test settings
    // (1 s confirm timeout, 2 s heartbeat) once dropped the connection
    // during the replay when the whole suite loaded both cores, and the
    // "connection kept" check below failed for a reason it does not test.
    let cfg = PublisherConfig {
        confirm_timeout: Duration::from_secs(15),
        heartbeat: Duration::from_secs(15),
        ..publisher_cfg(&url, spec.clone(), dir.path())
    };
    let publisher = ReliablePublisher::start(cfg).unwrap();
    healthy(&publisher).await;
    let before = publish(&publisher, 0..200).await;
    assert!(before.iter().all(|r| r.is_confirmed()), "{before:?}");
    let connections = publisher.stats().connections;

    // The alarm: the broker blocks connections as they publish.
    tokio::task::block_in_place(|| node.ctl(&["set_vm_memory_high_watermark", "0"]));
    let during = publish(&publisher, 200..1_200).await;
    assert!(
        during.iter().all(|r| !r.is_confirmed()),
        "nothing is confirmed by a blocked broker"
    );
    assert!(
        during.contains(&Receipt::Spilled(SpillReason::Blocked)),
        "the messages in flight when the block came are spilled for it"
    );
    assert_eq!(*publisher.state().borrow(), PublisherState::Degraded);
    // However long the alarm lasts: no replay, and the connection is kept.
    let mut state = publisher.state();
    let waited = tokio::time::timeout(
        Duration::from_secs(3),
        state.wait_for(|s| *s != PublisherState::Degraded),
    )
    .await;
    assert!(waited.is_err(), "no replay while blocked");
    assert_eq!(publisher.stats().replayed, 0);
    assert_eq!(publisher.stats().connections, connections);

    // The alarm clears: connection.unblocked, replay over the same
    // connection.
    tokio::task::block_in_place(|| node.ctl(&["set_vm_memory_high_watermark", "0.4"]));
    tokio::time::timeout(Duration::from_secs(60), publisher.flush())
        .await
        .expect("the spill log never drained after the alarm cleared")
        .unwrap();
    let stats = publisher.stats();
    assert!(stats.replayed >= 1_000, "{stats:?}");
    assert_eq!(
        stats.connections, connections,
        "the connection was kept: {stats:?}"
    );
    publisher.close().await;

    let (consumer, got) = collector(consumer_cfg(&url, spec, 500));
    eventually(Duration::from_secs(60), "every acknowledged id", || {
        got.distinct() == 1_200
    })
    .await;
    for i in 0..1_200 {
        assert!(got.count(&format!("a{i}")) >= 1, "a{i} lost");
    }
    consumer.shutdown().await.unwrap();
    tokio::task::block_in_place(|| drop(node));
}
