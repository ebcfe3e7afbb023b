//! RabbitMQ through lapin: connection set-up and topology declaration
//! shared by the publisher, the consumer and the prefetch tuner.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::error::{Error, Result, invalid};
use crate::topology::{ExchangeType, QueueKind, QueueSpec, Topology};

pub(crate) mod consumer;
pub(crate) mod publisher;
pub(crate) mod tuner;

/// Parses an AMQP URL, adding `heartbeat` unless the URL sets one.
pub(crate) fn parse_url(url: &str, heartbeat: Duration) -> Result<AMQPUri> {
    let mut uri: AMQPUri = url.parse().map_err(|e: String| Error::InvalidConfig {
        field: "url",
        value: format!("{url:?}"),
        reason: url_reason(&e),
    })?;
    if uri.query.heartbeat.is_none() {
        let secs = u16::try_from(heartbeat.as_secs()).unwrap_or(u16::MAX);
        uri.query.heartbeat = Some(secs);
    }
    Ok(uri)
}

/// `InvalidConfig` wants a static reason; URL errors are few and short.
fn url_reason(e: &str) -> &'static str {
    match e {
        s if s.contains("scheme") => "unsupported scheme (use amqp://)",
        s if s.contains("relative URL") => "not an absolute URL (amqp://user:pass@host:port/vhost)",
        _ => "not a valid AMQP URL (amqp://user:pass@host:port/vhost)",
    }
}

/// Checks the connection settings every RabbitMQ configuration has.
pub(crate) fn check_connection(
    url: &str,
    heartbeat: Duration,
    connect_timeout: Duration,
) -> Result<()> {
    parse_url(url, heartbeat)?;
    if heartbeat < Duration::from_secs(1) || heartbeat > Duration::from_secs(3600) {
        return Err(invalid(
            "heartbeat",
            heartbeat,
            "must be between 1 s and 1 h",
        ));
    }
    if connect_timeout < Duration::from_millis(10) || connect_timeout > Duration::from_secs(600) {
        return Err(invalid(
            "connect_timeout",
            connect_timeout,
            "must be between 10 ms and 10 min",
        ));
    }
    Ok(())
}

/// Connects within `timeout` (a blackholed broker never answers the
/// handshake).
pub(crate) async fn connect(uri: AMQPUri, name: &str, timeout: Duration) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(timeout, Connection::connect_uri(uri, props))
        .await
        .map_err(|_| Error::Timeout {
            what: "connecting to RabbitMQ",
            after: timeout,
        })?
        .map_err(Error::from)
}

/// Declares the exchange, the queue and the binding of `topology`.
pub(crate) async fn declare(channel: &Channel, topology: &Topology) -> Result<()> {
    if !topology.declare {
        return Ok(());
    }
    if topology.declares_exchange() {
        let kind = match topology.exchange_type {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Headers => ExchangeKind::Headers,
        };
        channel
            .exchange_declare(
                short(&topology.exchange),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    if let Some(q) = &topology.queue {
        declare_queue(channel, q).await?;
        if !topology.exchange.is_empty() {
            channel
                .queue_bind(
                    short(&q.name),
                    short(&topology.exchange),
                    short(&topology.routing_key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

/// Declares one durable queue with its arguments.
pub(crate) async fn declare_queue(channel: &Channel, q: &QueueSpec) -> Result<()> {
    channel
        .queue_declare(
            short(&q.name),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(q),
        )
        .await?;
    Ok(())
}

pub(crate) fn queue_arguments(q: &QueueSpec) -> FieldTable {
    let mut args = FieldTable::default();
    if q.kind == QueueKind::Quorum {
        args.insert("x-queue-type".into(), long_str("quorum"));
    }
    if let Some(n) = q.max_length {
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(n)));
    }
    if let Some(o) = q.overflow {
        args.insert("x-overflow".into(), long_str(o.as_str()));
    }
    if let Some(x) = &q.dead_letter_exchange {
        args.insert("x-dead-letter-exchange".into(), long_str(x));
    }
    if let Some(k) = &q.dead_letter_routing_key {
        args.insert("x-dead-letter-routing-key".into(), long_str(k));
    }
    if let Some(n) = q.delivery_limit {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(n)),
        );
    }
    args
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// A short string from a name already checked to be ≤ 255 bytes.
pub(crate) fn short(s: &str) -> ShortString {
    ShortString::try_new(s).unwrap_or_else(|_| ShortString::from(&s[..floor_char(s, 255)]))
}

fn floor_char(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Overflow;

    #[test]
    fn urls_get_a_heartbeat_and_bad_ones_are_named() {
        let u = parse_url(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            Duration::from_secs(7),
        )
        .unwrap();
        assert_eq!(u.query.heartbeat, Some(7));
        let u = parse_url(
            "amqp://127.0.0.1:5672/%2f?heartbeat=3",
            Duration::from_secs(7),
        )
        .unwrap();
        assert_eq!(u.query.heartbeat, Some(3));
        let e = parse_url("not a url", Duration::from_secs(7)).unwrap_err();
        assert!(e.to_string().contains("\"not a url\""), "{e}");
        let e = parse_url("http://x/", Duration::from_secs(7)).unwrap_err();
        assert!(e.to_string().contains("url"), "{e}");
    }

    #[test]
    fn queue_arguments_follow_the_spec() {
        let q = QueueSpec::quorum("q")
            .max_length(10, Overflow::RejectPublish)
            .dead_letter("dlx", Some("dead".into()));
        let args = queue_arguments(&q);
        let keys: Vec<&str> = args.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "x-dead-letter-exchange",
                "x-dead-letter-routing-key",
                "x-max-length",
                "x-overflow",
                "x-queue-type"
            ]
        );
        assert!(queue_arguments(&QueueSpec::classic("q")).inner().is_empty());
    }
}
