//! `ReliableKafkaProducer`: librdkafka's idempotent producer with awaited
//! delivery reports, behind the same spill-and-replay engine as RabbitMQ.

use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::ReliabilityConfig;
use crate::engine::{ConnectFuture, Engine, Link, LinkEvent, SendFuture, SendOutcome, Transport};
use crate::error::{Result, invalid};
use crate::message::Message;

/// Configuration of a [`ReliableKafkaProducer`].
///
/// The producer always runs with `acks=all` and `enable.idempotence=true`
/// (librdkafka's defaults are `acks=all` but idempotence *off*, and a
/// `message.timeout.ms` of 300 s). Create topics with
/// `min.insync.replicas=2` (and a replication factor of 3): `acks=all` then
/// means "written by at least two brokers", and a partition with fewer
/// in-sync replicas refuses writes (`NotEnoughReplicas`) instead of
/// accepting them on one machine.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    /// `host:port,host:port`.
    pub bootstrap_servers: String,
    /// The topic written to.
    pub topic: String,
    /// librdkafka's `message.timeout.ms`: how long it retries a message
    /// (retriable errors such as `NotEnoughReplicas`, a broker down) before
    /// reporting it failed. Bounded: default 10 s.
    pub message_timeout: Duration,
    /// Limit of the metadata request that checks the cluster is back before
    /// a replay. Default 5 s.
    pub probe_timeout: Duration,
    /// Extra librdkafka properties (security, tuning). `acks`,
    /// `enable.idempotence` and `message.timeout.ms` cannot be overridden.
    pub extra: Vec<(String, String)>,
    /// Window (messages awaiting their delivery report), spill log, replay
    /// and backoff.
    pub reliability: ReliabilityConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic: "mq-reliable".into(),
            message_timeout: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(5),
            extra: Vec::new(),
            reliability: ReliabilityConfig::default(),
        }
    }
}

const FORCED: [&str; 3] = ["acks", "enable.idempotence", "message.timeout.ms"];

impl KafkaConfig {
    /// A configuration for `bootstrap_servers` and `topic` with a spill log
    /// in `spill_dir`.
    pub fn new(
        bootstrap_servers: impl Into<String>,
        topic: impl Into<String>,
        spill_dir: impl Into<std::path::PathBuf>,
    ) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            topic: topic.into(),
            reliability: ReliabilityConfig::new(spill_dir),
            ..KafkaConfig::default()
        }
    }

    /// Checks every field; the error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "bootstrap_servers",
                &self.bootstrap_servers,
                "must not be empty",
            ));
        }
        if self.topic.is_empty() || self.topic.len() > 249 {
            return Err(invalid("topic", &self.topic, "must be 1 to 249 characters"));
        }
        if self.message_timeout < Duration::from_millis(100)
            || self.message_timeout > Duration::from_secs(900)
        {
            return Err(invalid(
                "message_timeout",
                self.message_timeout,
                "must be between 100 ms and 15 min",
            ));
        }
        if self.probe_timeout < Duration::from_millis(10) {
            return Err(invalid(
                "probe_timeout",
                self.probe_timeout,
                "must be at least 10 ms",
            ));
        }
        if let Some((k, _)) = self
            .extra
            .iter()
            .find(|(k, _)| FORCED.contains(&k.as_str()))
        {
            return Err(invalid(
                "extra",
                k,
                "acks, enable.idempotence and message.timeout.ms are fixed",
            ));
        }
        // librdkafka checks every property now (no client is created), so
        // that a typo fails `start` instead of every connect attempt, which
        // would leave the producer spilling for good.
        if let Err(e) = self.client_config().create_native_config() {
            return Err(invalid(
                "extra",
                e.to_string(),
                "librdkafka refuses this configuration",
            ));
        }
        self.reliability.validate()
    }

    /// librdkafka reports every message within message.timeout.ms; the
    /// engine's own limit only catches a wedged client.
    fn confirm_timeout(&self) -> Duration {
        self.message_timeout + Duration::from_secs(5)
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        let r = &self.reliability;
        let queue = (r.window.max(r.spill_window) * 2).max(100_000);
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("max.in.flight.requests.per.connection", "5")
            .set("queue.buffering.max.messages", queue.to_string())
            .set("linger.ms", "2");
        c
    }
}

/// A Kafka producer that never loses a message it acknowledged.
///
/// Messages are produced with `acks=all` on an idempotent producer (no
/// duplicates from librdkafka's own retries, order kept per partition) and
/// their delivery reports are awaited for up to
/// [`ReliabilityConfig::window`] messages at once. A message whose delivery fails
/// (timeout after retries, `NotEnoughReplicas` beyond the timeout, a fatal
/// producer error) is spilled to the local log, the producer is recreated,
/// and the log is replayed once a metadata request shows the cluster is
/// back. Each record carries its id in the `message_id` header and is keyed
/// by the message's routing key, or by its id when it has none.
///
/// Receipts, states, duplicates and ordering are exactly as for
/// [`ReliablePublisher`](crate::ReliablePublisher); see the crate docs.
#[derive(Debug, Clone)]
pub struct ReliableKafkaProducer {
    engine: Engine,
}

impl ReliableKafkaProducer {
    /// Opens the spill log and starts producing (in the background, like
    /// [`ReliablePublisher::start`](crate::ReliablePublisher::start)).
    pub fn start(cfg: KafkaConfig) -> Result<ReliableKafkaProducer> {
        cfg.validate()?;
        let engine_cfg = cfg.reliability.engine(cfg.confirm_timeout());
        let transport = KafkaTransport {
            client: cfg.client_config(),
            topic: cfg.topic,
            probe_timeout: cfg.probe_timeout,
        };
        let engine = Engine::open(
            engine_cfg,
            &cfg.reliability.spill,
            transport,
            "kafka producer",
        )?;
        Ok(ReliableKafkaProducer { engine })
    }

    crate::engine::publisher_api!();
}

struct KafkaTransport {
    client: ClientConfig,
    topic: String,
    probe_timeout: Duration,
}

impl Transport for KafkaTransport {
    fn connect(&self) -> ConnectFuture {
        let client = self.client.clone();
        let topic = self.topic.clone();
        let timeout = self.probe_timeout;
        Box::pin(async move {
            // Creating the client and the metadata request block.
            tokio::task::spawn_blocking(move || {
                let producer: FutureProducer = client.create().map_err(|e| e.to_string())?;
                let md = producer
                    .client()
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(|e| format!("metadata: {e}"))?;
                let t = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .ok_or_else(|| format!("topic {topic} missing from the metadata"))?;
                if let Some(e) = t.error() {
                    return Err(format!("topic {topic}: {e:?}"));
                }
                if t.partitions().is_empty() || t.partitions().iter().any(|p| p.leader() < 0) {
                    return Err(format!("topic {topic} has partitions without a leader"));
                }
                Ok(Box::new(KafkaLink { producer, topic }) as Box<dyn Link>)
            })
            .await
            .map_err(|e| format!("connect task: {e}"))?
        })
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}

struct KafkaLink {
    producer: FutureProducer,
    topic: String,
}

impl Link for KafkaLink {
    fn send(&mut self, msg: &Message) -> SendFuture {
        let headers = OwnedHeaders::new().insert(Header {
            key: "message_id",
            value: Some(msg.id()),
        });
        let key = msg.routing_key().unwrap_or(msg.id());
        let record = FutureRecord::to(&self.topic)
            .payload(msg.payload().as_ref())
            .key(key)
            .headers(headers);
        match self.producer.send_result(record) {
            Ok(delivery) => Box::pin(async move {
                match delivery.await {
                    Ok(Ok(_)) => SendOutcome::Ack {
                        returned: Vec::new(),
                    },
                    Ok(Err((e, _))) if refused(&e) => SendOutcome::Rejected {
                        error: e.to_string(),
                    },
                    Ok(Err((e, _))) => SendOutcome::Failed {
                        error: e.to_string(),
                    },
                    Err(_) => SendOutcome::Failed {
                        error: "the producer was dropped".into(),
                    },
                }
            }),
            Err((e, _)) => {
                let error = e.to_string();
                Box::pin(async move { SendOutcome::Failed { error } })
            }
        }
    }

    fn poll_event(&mut self, _cx: &mut Context<'_>) -> Poll<Option<LinkEvent>> {
        // librdkafka reconnects by itself; failures show in delivery reports.
        Poll::Pending
    }

    fn is_alive(&self) -> bool {
        self.producer.client().fatal_error().is_none()
    }

    fn close(self: Box<Self>) {
        // Dropping purges the queue and joins the poll thread: blocking.
        tokio::task::spawn_blocking(move || drop(self));
    }
}

/// Errors about this one message (the broker refuses it as such), as
/// opposed to the cluster or the client failing: spill it (moving it to the
/// end of the log at each replay, so that it blocks nothing behind it), keep
/// the producer.
fn refused(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage | C::InvalidRecord)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotence_and_acks_cannot_be_overridden() {
        let mut cfg = KafkaConfig::default();
        cfg.validate().unwrap();
        cfg.extra
            .push(("enable.idempotence".into(), "false".into()));
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("enable.idempotence"), "{e}");
        let cfg = KafkaConfig {
            message_timeout: Duration::from_secs(3600),
            ..KafkaConfig::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("message_timeout")
        );
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as C;
        assert!(refused(&KafkaError::MessageProduction(
            C::MessageSizeTooLarge
        )));
        assert!(!refused(&KafkaError::MessageProduction(C::MessageTimedOut)));
        assert!(!refused(&KafkaError::MessageProduction(
            C::NotEnoughReplicas
        )));
        for bad in [("no.such.property", "1"), ("batch.num.messages", "lots")] {
            let e = KafkaConfig {
                extra: vec![(bad.0.into(), bad.1.into())],
                ..KafkaConfig::default()
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains(bad.0), "{e}");
        }
        let c = KafkaConfig::default().client_config();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("message.timeout.ms"), Some("10000"));
    }
}
