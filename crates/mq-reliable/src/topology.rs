//! What a RabbitMQ publisher or consumer declares: exchange, queue, binding.

use crate::error::{Result, invalid};
use crate::message::MAX_ID_LEN;

/// Exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExchangeType {
    /// Routes by exact routing key.
    #[default]
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by routing-key pattern.
    Topic,
    /// Routes by header match.
    Headers,
}

/// Queue types. Quorum queues replicate every message to a majority of
/// the cluster's nodes before confirming it (the notes' "a write counts
/// only once replicated to another machine"); classic queues confirm once
/// the message is on the local node's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueKind {
    /// A classic queue (single node).
    #[default]
    Classic,
    /// A quorum queue (Raft-replicated; always durable).
    Quorum,
}

/// What a full queue (`max_length`) does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest message (RabbitMQ's default).
    DropHead,
    /// Refuse the new message: the publisher gets a nack (and spills it).
    RejectPublish,
    /// Refuse it and dead-letter it.
    RejectPublishDlx,
}

impl Overflow {
    /// The `x-overflow` argument's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
    }
}

/// A durable queue and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue's name.
    pub name: String,
    /// Classic or quorum.
    pub kind: QueueKind,
    /// `x-max-length`: most ready messages the queue holds.
    pub max_length: Option<u32>,
    /// `x-overflow`: what happens beyond `max_length`.
    pub overflow: Option<Overflow>,
    /// `x-dead-letter-exchange`: where rejected (not requeued) messages go.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-delivery-limit` (quorum queues only): the broker dead-letters a
    /// message redelivered more often than this.
    pub delivery_limit: Option<u32>,
}

impl QueueSpec {
    /// A durable classic queue with no arguments.
    pub fn classic(name: impl Into<String>) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            kind: QueueKind::Classic,
            max_length: None,
            overflow: None,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            delivery_limit: None,
        }
    }

    /// A quorum queue (replicated to a majority before confirming).
    pub fn quorum(name: impl Into<String>) -> QueueSpec {
        QueueSpec {
            kind: QueueKind::Quorum,
            ..QueueSpec::classic(name)
        }
    }

    /// Caps the queue at `n` messages with the given overflow behaviour.
    #[must_use]
    pub fn max_length(mut self, n: u32, overflow: Overflow) -> QueueSpec {
        self.max_length = Some(n);
        self.overflow = Some(overflow);
        self
    }

    /// Dead-letters rejected messages to `exchange` (with `routing_key`, or
    /// the message's own if `None`).
    #[must_use]
    pub fn dead_letter(
        mut self,
        exchange: impl Into<String>,
        routing_key: Option<String>,
    ) -> QueueSpec {
        self.dead_letter_exchange = Some(exchange.into());
        self.dead_letter_routing_key = routing_key;
        self
    }

    /// Checks names and limits.
    pub fn validate(&self) -> Result<()> {
        check_name("queue.name", &self.name, false)?;
        if let Some(x) = &self.dead_letter_exchange {
            check_name("queue.dead_letter_exchange", x, true)?;
        }
        if let Some(k) = &self.dead_letter_routing_key {
            check_name("queue.dead_letter_routing_key", k, true)?;
        }
        if self.max_length == Some(0) {
            return Err(invalid("queue.max_length", 0, "must be positive"));
        }
        if self.delivery_limit.is_some() && self.kind != QueueKind::Quorum {
            return Err(invalid(
                "queue.delivery_limit",
                self.delivery_limit,
                "only quorum queues count deliveries",
            ));
        }
        Ok(())
    }
}

/// Where a publisher sends and what it declares when it (re)connects.
///
/// Everything declared is durable; declaring is idempotent, so publisher
/// and consumers may all declare the same topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The exchange to publish to; `""` is the default exchange (routes by
    /// queue name). Names starting with `amq.` are predeclared and are not
    /// declared again.
    pub exchange: String,
    /// The exchange's type (when it is declared).
    pub exchange_type: ExchangeType,
    /// The routing key of messages that do not set their own.
    pub routing_key: String,
    /// A queue to declare and (for a named exchange) bind with
    /// `routing_key`.
    pub queue: Option<QueueSpec>,
    /// Declare at every (re)connect. Off: only publish; the topology must
    /// exist.
    pub declare: bool,
}

impl Default for Topology {
    fn default() -> Self {
        Topology::queue(QueueSpec::classic("mq-reliable"))
    }
}

impl Topology {
    /// Publishes to `queue` through the default exchange.
    pub fn queue(queue: QueueSpec) -> Topology {
        Topology {
            exchange: String::new(),
            exchange_type: ExchangeType::Direct,
            routing_key: queue.name.clone(),
            queue: Some(queue),
            declare: true,
        }
    }

    /// Publishes to a durable `exchange` with `routing_key`, declaring no
    /// queue (add one with [`Topology::bind`]).
    pub fn exchange(
        exchange: impl Into<String>,
        exchange_type: ExchangeType,
        routing_key: impl Into<String>,
    ) -> Topology {
        Topology {
            exchange: exchange.into(),
            exchange_type,
            routing_key: routing_key.into(),
            queue: None,
            declare: true,
        }
    }

    /// Also declares `queue` and binds it to the exchange.
    #[must_use]
    pub fn bind(mut self, queue: QueueSpec) -> Topology {
        self.queue = Some(queue);
        self
    }

    /// Checks names and arguments.
    pub fn validate(&self) -> Result<()> {
        check_name("topology.exchange", &self.exchange, true)?;
        check_name("topology.routing_key", &self.routing_key, true)?;
        if let Some(q) = &self.queue {
            q.validate()?;
        }
        Ok(())
    }

    /// Whether connecting declares the exchange: a named one that is not
    /// predeclared (`amq.*`), with `declare` on.
    pub fn declares_exchange(&self) -> bool {
        self.declare && !self.exchange.is_empty() && !self.exchange.starts_with("amq.")
    }
}

fn check_name(field: &'static str, v: &str, empty_ok: bool) -> Result<()> {
    if v.is_empty() && !empty_ok {
        return Err(invalid(field, v, "must not be empty"));
    }
    if v.len() > MAX_ID_LEN {
        return Err(invalid(field, v.len(), "is longer than 255 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_names_are_named() {
        Topology::default().validate().unwrap();
        let e = Topology::queue(QueueSpec::classic(""))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("queue.name"), "{e}");
        let e = Topology::exchange("x".repeat(300), ExchangeType::Topic, "k")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("topology.exchange"), "{e}");
        let e = Topology::queue(QueueSpec::classic("q").max_length(0, Overflow::DropHead))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("max_length"), "{e}");
        let mut q = QueueSpec::classic("q");
        q.delivery_limit = Some(3);
        assert!(q.validate().is_err());
        q.kind = QueueKind::Quorum;
        q.validate().unwrap();
    }

    #[test]
    fn amq_exchanges_are_not_declared() {
        assert!(!Topology::exchange("amq.direct", ExchangeType::Direct, "k").declares_exchange());
        assert!(Topology::exchange("orders", ExchangeType::Direct, "k").declares_exchange());
        assert!(!Topology::default().declares_exchange());
    }
}
