//! `ReliablePublisher`: confirmed, persistent, mandatory publishing to
//! RabbitMQ, spilling to the local log whenever the broker does not confirm.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, Event};
use tracing::debug;

use crate::config::ReliabilityConfig;
use crate::engine::{ConnectFuture, Engine, Link, LinkEvent, SendFuture, SendOutcome, Transport};
use crate::error::Result;
use crate::message::Message;
use crate::rabbit::{check_connection, connect, declare, parse_url, short};
use crate::topology::Topology;

/// Configuration of a [`ReliablePublisher`].
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Where messages go and what is declared at each (re)connect.
    pub topology: Topology,
    /// A message not confirmed within this time is spilled and the
    /// connection is dropped and re-established. Default 10 s.
    pub confirm_timeout: Duration,
    /// Limit for the TCP connect plus AMQP handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// AMQP heartbeat (unless the URL sets one): detects a dead peer while
    /// idle. Default 10 s.
    pub heartbeat: Duration,
    /// Shown in the broker's connection list.
    pub connection_name: String,
    /// Window, spill log, replay and backoff.
    pub reliability: ReliabilityConfig,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            topology: Topology::default(),
            confirm_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(10),
            connection_name: "mq-reliable publisher".into(),
            reliability: ReliabilityConfig::default(),
        }
    }
}

impl PublisherConfig {
    /// A configuration for `url`, `topology` and a spill log in `spill_dir`,
    /// with defaults for the rest.
    pub fn new(
        url: impl Into<String>,
        topology: Topology,
        spill_dir: impl Into<std::path::PathBuf>,
    ) -> Self {
        PublisherConfig {
            url: url.into(),
            topology,
            reliability: ReliabilityConfig::new(spill_dir),
            ..PublisherConfig::default()
        }
    }

    /// Checks every field; the error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        check_connection(&self.url, self.heartbeat, self.connect_timeout)?;
        self.topology.validate()?;
        self.reliability.validate()?;
        self.reliability.engine(self.confirm_timeout).validate()
    }
}

/// A RabbitMQ publisher that never loses a message it acknowledged.
///
/// Every message is published persistent (delivery mode 2), `mandatory`,
/// with its id as `message_id`, on a channel in confirm mode, to a durable
/// topology declared at every (re)connect. Confirms are tracked
/// asynchronously for up to [`ReliabilityConfig::window`] messages at once.
/// [`publish`](Self::publish) resolves only when the broker confirmed the
/// message **or** it was durably appended to the local spill log; the
/// [`Receipt`](crate::Receipt) says which. See the crate docs for the exact guarantees.
///
/// Cloning is cheap; all clones share one connection and one spill log.
/// Must be created inside a tokio runtime.
#[derive(Debug, Clone)]
pub struct ReliablePublisher {
    engine: Engine,
}

impl ReliablePublisher {
    /// Opens the spill log (recovering it after a crash) and starts
    /// publishing. Connecting happens in the background: until the broker
    /// answers, messages are spilled, and whatever the log holds is replayed
    /// first. Fails only on a bad configuration or an unusable spill
    /// directory.
    pub fn start(cfg: PublisherConfig) -> Result<ReliablePublisher> {
        cfg.validate()?;
        let engine_cfg = cfg.reliability.engine(cfg.confirm_timeout);
        let transport = AmqpTransport {
            uri: parse_url(&cfg.url, cfg.heartbeat)?,
            topology: cfg.topology,
            connect_timeout: cfg.connect_timeout,
            name: cfg.connection_name,
        };
        let engine = Engine::open(engine_cfg, &cfg.reliability.spill, transport, "publisher")?;
        Ok(ReliablePublisher { engine })
    }

    crate::engine::publisher_api!();
}

struct AmqpTransport {
    uri: lapin::uri::AMQPUri,
    topology: Topology,
    connect_timeout: Duration,
    name: String,
}

impl Transport for AmqpTransport {
    fn connect(&self) -> ConnectFuture {
        let uri = self.uri.clone();
        let topology = self.topology.clone();
        let timeout = self.connect_timeout;
        let name = self.name.clone();
        Box::pin(async move {
            let open = async {
                let conn = connect(uri, &name, timeout).await?;
                let events: Pin<Box<dyn Stream<Item = Event> + Send>> =
                    Box::pin(conn.events_listener());
                let channel = conn.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                declare(&channel, &topology).await?;
                Ok::<_, crate::Error>((conn, channel, events))
            };
            // Declaring can hang on a blackholed link too.
            let (conn, channel, events) = tokio::time::timeout(timeout * 2, open)
                .await
                .map_err(|_| {
                    format!(
                        "connect and declare did not finish within {:?}",
                        timeout * 2
                    )
                })?
                .map_err(|e| e.to_string())?;
            Ok(Box::new(AmqpLink {
                exchange: short(&topology.exchange),
                routing_key: short(&topology.routing_key),
                conn: Some(conn),
                channel,
                events,
            }) as Box<dyn Link>)
        })
    }

    fn name(&self) -> &'static str {
        "rabbitmq"
    }
}

struct AmqpLink {
    conn: Option<Connection>,
    channel: Channel,
    events: Pin<Box<dyn Stream<Item = Event> + Send>>,
    exchange: ShortString,
    routing_key: ShortString,
}

impl Link for AmqpLink {
    fn send(&mut self, msg: &Message) -> SendFuture {
        let channel = self.channel.clone();
        let exchange = self.exchange.clone();
        let routing_key = msg
            .routing_key()
            .map_or_else(|| self.routing_key.clone(), short);
        let payload = msg.payload().clone();
        let props = BasicProperties::default()
            .with_message_id(short(msg.id()))
            .with_delivery_mode(2);
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        Box::pin(async move {
            let confirm = match channel
                .basic_publish(exchange, routing_key, options, &payload, props)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    return SendOutcome::Failed {
                        error: e.to_string(),
                    };
                }
            };
            match confirm.await {
                Ok(Confirmation::Ack(ret)) => SendOutcome::Ack {
                    returned: returned_ids(ret),
                },
                Ok(Confirmation::Nack(ret)) => SendOutcome::Nack {
                    returned: returned_ids(ret),
                },
                Ok(Confirmation::NotRequested) => SendOutcome::Failed {
                    error: "the channel is not in confirm mode".into(),
                },
                Err(e) => SendOutcome::Failed {
                    error: e.to_string(),
                },
            }
        })
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<LinkEvent>> {
        loop {
            let ev = match self.events.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(ev)) => ev,
            };
            let mapped = match ev {
                Event::ConnectionBlocked(reason) => LinkEvent::Blocked(reason),
                Event::ConnectionUnblocked => LinkEvent::Unblocked,
                // channel.flow is the older way to pause publishers.
                Event::SendFlow(false) => LinkEvent::Blocked("channel.flow paused".into()),
                Event::SendFlow(true) => LinkEvent::Unblocked,
                Event::Error(e) => LinkEvent::Lost(e.to_string()),
                other => {
                    debug!(event = ?other, "connection event");
                    continue;
                }
            };
            return Poll::Ready(Some(mapped));
        }
    }

    fn is_alive(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.status().connected())
            && self.channel.status().connected()
    }

    fn close(mut self: Box<Self>) {
        if let Some(conn) = self.conn.take() {
            // Never wait on a broker that may be blackholed.
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), conn.close(200, "closing".into()))
                        .await;
            });
        }
    }
}

/// The message ids of returned messages. A return without an id cannot be
/// ours (every message this crate publishes has one).
fn returned_ids(ret: Option<BasicReturnMessage>) -> Vec<Arc<str>> {
    ret.and_then(|r| {
        tracing::warn!(
            reply_code = r.reply_code,
            reply_text = %r.reply_text,
            routing_key = %r.delivery.routing_key,
            "broker returned an unroutable message"
        );
        r.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| Arc::from(id.as_str()))
    })
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configuration_is_named_and_no_runtime_is_an_error() {
        PublisherConfig::default().validate().unwrap();
        let e = PublisherConfig {
            reliability: ReliabilityConfig {
                window: 0,
                ..ReliabilityConfig::default()
            },
            ..PublisherConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
        let e = PublisherConfig {
            url: "http://nope".into(),
            ..PublisherConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("url"), "{e}");
        // Out of range either way (a huge one would overflow a deadline).
        for confirm_timeout in [Duration::ZERO, Duration::MAX] {
            let e = PublisherConfig {
                confirm_timeout,
                ..PublisherConfig::default()
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains("confirm_timeout"), "{e}");
        }
        let e = PublisherConfig {
            connect_timeout: Duration::MAX,
            ..PublisherConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("connect_timeout"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = ReliablePublisher::start(PublisherConfig::new(
            "amqp://127.0.0.1:5672/%2f",
            Topology::default(),
            dir.path(),
        ))
        .unwrap_err();
        assert!(matches!(e, crate::Error::NoRuntime(_)), "{e}");
    }
}
