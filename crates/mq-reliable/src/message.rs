//! Messages, receipts, and the spill record format.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};

/// Longest message id and routing key: AMQP short strings hold 255 bytes.
pub const MAX_ID_LEN: usize = 255;

/// A message to publish: a unique id and an opaque payload.
///
/// The id travels as the AMQP `message_id` property (Kafka: the
/// `message_id` header). It is what makes at-least-once delivery usable: a
/// message that reaches the broker twice (see the crate docs for when) carries
/// the same id both times, so a consumer drops the copy with a
/// [`Dedupe`](crate::Dedupe) window.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    id: Arc<str>,
    payload: Bytes,
    routing_key: Option<Arc<str>>,
}

impl Message {
    /// A message with the given id and payload, routed with the publisher's
    /// default routing key (for Kafka: the topic's partitioner, keyed by id).
    pub fn new(id: impl Into<String>, payload: impl Into<Bytes>) -> Message {
        Message {
            id: Arc::from(id.into()),
            payload: payload.into(),
            routing_key: None,
        }
    }

    /// A message with a fresh random id (128 bits, hex), for producers that
    /// have no natural id. Keep the message (or its id) to retry it: a
    /// retried message must carry the same id for consumers to dedupe it.
    pub fn with_generated_id(payload: impl Into<Bytes>) -> Message {
        Message::new(format!("{:032x}", rand::random::<u128>()), payload)
    }

    /// Overrides the routing key (RabbitMQ) or the record key (Kafka).
    #[must_use]
    pub fn with_routing_key(mut self, key: impl Into<String>) -> Message {
        self.routing_key = Some(Arc::from(key.into()));
        self
    }

    /// The message id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The routing key override, if any.
    pub fn routing_key(&self) -> Option<&str> {
        self.routing_key.as_deref()
    }

    /// Checks the id, the routing key and the payload size.
    pub(crate) fn validate(&self, max_payload: usize) -> Result<()> {
        let bad = |reason: String| Error::InvalidMessage {
            id: self.id.chars().take(64).collect(),
            reason,
        };
        if self.id.is_empty() {
            return Err(bad("the message id is empty".into()));
        }
        if self.id.len() > MAX_ID_LEN {
            return Err(bad(format!(
                "the message id is {} bytes long, the limit is {MAX_ID_LEN}",
                self.id.len()
            )));
        }
        if let Some(rk) = &self.routing_key
            && rk.len() > MAX_ID_LEN
        {
            return Err(bad(format!(
                "the routing key is {} bytes long, the limit is {MAX_ID_LEN}",
                rk.len()
            )));
        }
        if self.payload.len() > max_payload {
            return Err(bad(format!(
                "the payload is {} bytes, the configured limit is {max_payload}",
                self.payload.len()
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("payload_len", &self.payload.len())
            .field("routing_key", &self.routing_key)
            .finish()
    }
}

/// How a published message was acknowledged. Either way, it is safe.
#[must_use = "a receipt says whether the broker or the local disk holds the message"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The broker confirmed the message: it is persisted (RabbitMQ: written
    /// to disk by a durable queue, or accepted by a majority of a quorum
    /// queue; Kafka: written by all in-sync replicas).
    Confirmed,
    /// The broker did not confirm it; the message was appended to the local
    /// spill log and that append was fsynced before this receipt was given.
    /// It will be replayed to the broker once the broker is back.
    Spilled(SpillReason),
}

impl Receipt {
    /// True for [`Receipt::Confirmed`].
    pub fn is_confirmed(self) -> bool {
        matches!(self, Receipt::Confirmed)
    }
}

/// Why a message went to the spill log instead of being confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpillReason {
    /// The broker answered with a negative acknowledgement (e.g. a queue
    /// with `x-overflow=reject-publish` is full).
    Nacked,
    /// The broker could not route the `mandatory` message (basic.return).
    Returned,
    /// The broker refused the message for what it is (Kafka: larger than
    /// the topic allows, invalid), so sending it again cannot succeed until
    /// the broker's limits change. Like an unroutable one, it is moved to
    /// the end of the spill log at each replay, so it blocks nothing behind
    /// it (`spill-log dump` shows it to an operator).
    Rejected,
    /// No confirm arrived within the configured confirm timeout.
    ConfirmTimeout,
    /// The broker blocked the connection (memory or disk alarm).
    Blocked,
    /// The channel or the connection was lost while the message was in
    /// flight.
    ConnectionLost,
    /// The publisher was degraded or recovering when the message arrived:
    /// it goes behind the spill backlog to keep the documented order.
    Degraded,
    /// The publisher was shut down while the message was in flight.
    Shutdown,
}

impl SpillReason {
    /// Every reason, in `index` order.
    pub(crate) const ALL: [SpillReason; 8] = [
        SpillReason::Nacked,
        SpillReason::Returned,
        SpillReason::ConfirmTimeout,
        SpillReason::Blocked,
        SpillReason::ConnectionLost,
        SpillReason::Degraded,
        SpillReason::Shutdown,
        SpillReason::Rejected,
    ];

    /// The position in [`SpillReason::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            SpillReason::Nacked => 0,
            SpillReason::Returned => 1,
            SpillReason::ConfirmTimeout => 2,
            SpillReason::Blocked => 3,
            SpillReason::ConnectionLost => 4,
            SpillReason::Degraded => 5,
            SpillReason::Shutdown => 6,
            SpillReason::Rejected => 7,
        }
    }

    /// Short label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SpillReason::Nacked => "nacked",
            SpillReason::Returned => "returned",
            SpillReason::ConfirmTimeout => "confirm_timeout",
            SpillReason::Blocked => "blocked",
            SpillReason::ConnectionLost => "connection_lost",
            SpillReason::Degraded => "degraded",
            SpillReason::Shutdown => "shutdown",
            SpillReason::Rejected => "rejected",
        }
    }
}

impl fmt::Display for SpillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spill record format, version 1:
///
/// ```text
/// u8  version (1)
/// u8  id length, then the id bytes (UTF-8)
/// u8  0 = no routing key, 1 = routing key follows
/// [u8 routing key length, then its bytes]
/// ... payload (the rest of the record)
/// ```
///
/// The spill log frames each record with its length and a CRC32C, so the
/// format only has to be unambiguous, not self-checking.
pub(crate) mod record {
    use super::*;

    const VERSION: u8 = 1;

    /// Encodes `msg` as one spill record.
    pub(crate) fn encode(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, msg);
        out
    }

    /// Encodes `msg` into `out` (cleared first), reusing its allocation.
    pub(crate) fn encode_into(out: &mut Vec<u8>, msg: &Message) {
        let rk = msg.routing_key.as_deref();
        out.clear();
        out.reserve(4 + msg.id.len() + rk.map_or(0, str::len) + msg.payload.len());
        out.push(VERSION);
        // Lengths were checked by `Message::validate` (≤ 255).
        out.push(u8::try_from(msg.id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(msg.id.as_bytes());
        match rk {
            None => out.push(0),
            Some(rk) => {
                out.push(1);
                out.push(u8::try_from(rk.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(rk.as_bytes());
            }
        }
        out.extend_from_slice(&msg.payload);
    }

    /// Decodes a record written by [`encode`].
    pub(crate) fn decode(rec: &[u8]) -> Result<Message, &'static str> {
        let (&version, rest) = rec.split_first().ok_or("empty record")?;
        if version != VERSION {
            return Err("unknown record version");
        }
        let (id, rest) = take_str(rest)?;
        if id.is_empty() {
            return Err("empty message id");
        }
        let (&has_rk, rest) = rest
            .split_first()
            .ok_or("truncated before the routing key flag")?;
        let (routing_key, rest) = match has_rk {
            0 => (None, rest),
            1 => {
                let (rk, rest) = take_str(rest)?;
                (Some(Arc::from(rk)), rest)
            }
            _ => return Err("bad routing key flag"),
        };
        Ok(Message {
            id: Arc::from(id),
            payload: Bytes::copy_from_slice(rest),
            routing_key,
        })
    }

    fn take_str(buf: &[u8]) -> Result<(&str, &[u8]), &'static str> {
        let (&len, rest) = buf.split_first().ok_or("truncated before a length")?;
        let len = usize::from(len);
        if rest.len() < len {
            return Err("truncated string");
        }
        let (s, rest) = rest.split_at(len);
        let s = std::str::from_utf8(s).map_err(|_| "string is not UTF-8")?;
        Ok((s, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validate_rejects_bad_input_with_the_value() {
        let e = Message::new("", "x").validate(10).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = Message::new("a".repeat(256), "x").validate(10).unwrap_err();
        assert!(e.to_string().contains("256 bytes"), "{e}");
        let e = Message::new("id", vec![0u8; 11]).validate(10).unwrap_err();
        assert!(e.to_string().contains("11 bytes"), "{e}");
        let e = Message::new("id", "x")
            .with_routing_key("k".repeat(300))
            .validate(10)
            .unwrap_err();
        assert!(e.to_string().contains("routing key"), "{e}");
        Message::new("id", "x").validate(10).unwrap();
    }

    #[test]
    fn reason_indices_match_their_table() {
        for (i, r) in SpillReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = Message::with_generated_id("x");
        let b = Message::with_generated_id("x");
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 32);
        a.validate(10).unwrap();
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        for bad in [
            &[][..],
            &[2, 0],
            &[1],
            &[1, 5, b'a'],
            &[1, 1, b'a', 7],
            &[1, 1, b'a', 1, 9],
        ] {
            assert!(record::decode(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn records_round_trip(
            id in "[a-zA-Z0-9._-]{1,255}",
            rk in proptest::option::of("[a-z.#*]{0,255}"),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut msg = Message::new(id, payload);
            if let Some(rk) = rk {
                msg = msg.with_routing_key(rk);
            }
            let back = record::decode(&record::encode(&msg)).unwrap();
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = record::decode(&bytes);
        }
    }
}
