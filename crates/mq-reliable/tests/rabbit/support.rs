//! Shared helpers for the RabbitMQ tests: unique names, proxied URLs,
//! queues that delete themselves, and a collecting consumer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mq_reliable::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use mq_reliable::lapin::types::FieldTable;
use mq_reliable::lapin::{Connection, ConnectionProperties};
use mq_reliable::{
    BackoffConfig, ConsumerConfig, Outcome, PublisherConfig, PublisherState, QueueSpec,
    ReliabilityConfig, ReliableConsumer, ReliablePublisher, Topology,
};
use testkit::{FaultProxy, Service};

/// The broker's URL (panics with the start command if it is down).
pub fn url() -> String {
    testkit::require(Service::RabbitMq)
}

/// A name unique to this test run.
pub fn unique(test: &str) -> String {
    format!("mqr-{test}-{:08x}", rand::random::<u32>())
}

/// A proxy in front of the real broker.
pub fn proxy() -> FaultProxy {
    url();
    FaultProxy::start(Service::RabbitMq.addr().unwrap()).unwrap()
}

/// `url` with its host and port replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, hostpath) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find(['/', '?']).map_or("", |i| &hostpath[i..]);
    format!("{scheme}://{userinfo}{addr}{path}")
}

/// Publisher settings with short timeouts for tests.
pub fn publisher_cfg(url: &str, queue: QueueSpec, dir: &std::path::Path) -> PublisherConfig {
    PublisherConfig {
        confirm_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        heartbeat: Duration::from_secs(2),
        reliability: ReliabilityConfig {
            window: 256,
            backoff: BackoffConfig {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(400),
            },
            checkpoint_every: 128,
            ..ReliabilityConfig::new(dir)
        },
        ..PublisherConfig::new(url, Topology::queue(queue), dir)
    }
}

/// Waits until the publisher is connected and its log replayed.
pub async fn healthy(publisher: &ReliablePublisher) {
    let mut state = publisher.state();
    tokio::time::timeout(
        Duration::from_secs(60),
        state.wait_for(|s| *s == PublisherState::Healthy),
    )
    .await
    .expect("publisher never became healthy")
    .unwrap();
}

/// Consumer settings with short timeouts for tests.
pub fn consumer_cfg(url: &str, queue: QueueSpec, prefetch: u16) -> ConsumerConfig {
    ConsumerConfig {
        prefetch,
        concurrency: 1,
        connect_timeout: Duration::from_secs(1),
        heartbeat: Duration::from_secs(2),
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..ConsumerConfig::new(url, queue)
    }
}

/// Deletes its queues when dropped, even when the test failed.
pub struct Cleanup {
    url: String,
    queues: Vec<String>,
}

impl Cleanup {
    pub fn new(url: &str) -> Cleanup {
        Cleanup {
            url: url.to_owned(),
            queues: Vec::new(),
        }
    }

    pub fn queue(&mut self, name: &str) -> String {
        self.queues.push(name.to_owned());
        name.to_owned()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let url = self.url.clone();
        let queues = std::mem::take(&mut self.queues);
        // A thread with its own runtime: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(Ok(conn)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    Connection::connect(&url, ConnectionProperties::default()),
                )
                .await
                else {
                    return;
                };
                if let Ok(ch) = conn.create_channel().await {
                    for q in queues {
                        let _ = ch
                            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "cleanup".into()).await;
            });
        })
        .join();
    }
}

/// Ready messages in `queue` (declared passively).
pub async fn ready_count(url: &str, queue: &str) -> u32 {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "count".into()).await;
    q.message_count()
}

/// Waits until `queue` holds exactly `n` ready messages (the broker
/// applies acks, nacks and dead-lettering asynchronously).
pub async fn wait_ready(url: &str, queue: &str, n: u32) {
    let start = Instant::now();
    loop {
        let got = ready_count(url, queue).await;
        if got == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{queue} holds {got} messages, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies received per message id.
#[derive(Clone, Default)]
pub struct Received(pub Arc<Mutex<HashMap<String, u32>>>);

impl Received {
    pub fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().values().map(|&n| u64::from(n)).sum()
    }

    pub fn count(&self, id: &str) -> u32 {
        self.0.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

/// Starts a consumer that acks everything and counts ids.
pub fn collector(cfg: ConsumerConfig) -> (ReliableConsumer, Received) {
    let got = Received::default();
    let g = got.clone();
    let consumer = ReliableConsumer::start(cfg, move |msg| {
        let g = g.clone();
        async move {
            let id = msg.id.unwrap_or_default();
            *g.0.lock().unwrap().entry(id).or_default() += 1;
            Outcome::Ack
        }
    })
    .unwrap();
    (consumer, got)
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
