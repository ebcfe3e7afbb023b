//! RabbitMQ and Kafka publishing that never loses an acknowledged message.
//!
//! A [`ReliablePublisher`] (RabbitMQ, through lapin) or a
//! [`ReliableKafkaProducer`] (through librdkafka) publishes with broker
//! confirms, tracks them asynchronously in a bounded window, and whenever the
//! broker does not confirm a message — a nack, an unroutable return, a
//! confirm timeout, a blocked connection, a lost channel or connection, a
//! failed delivery report — writes it to a local, fsynced spill log (the
//! `double-buffer` crate) and replays it once the broker is back.
//! [`publish`](ReliablePublisher::publish) resolves only when the message is
//! confirmed by the broker **or** durably spilled, and the [`Receipt`] says
//! which. A [`ReliableConsumer`] consumes with manual acks, a prefetch,
//! capped retries and a graceful shutdown; [`Dedupe`] drops the duplicates
//! that at-least-once delivery allows; [`tune_prefetch`] measures which
//! prefetch a consumer needs.
//!
//! # Quick example
//!
//! ```no_run
//! use mq_reliable::{Message, PublisherConfig, QueueSpec, Receipt, ReliablePublisher, Topology};
//!
//! # async fn demo() -> mq_reliable::Result<()> {
//! let cfg = PublisherConfig::new(
//!     "amqp://guest:guest@127.0.0.1:5672/%2f",
//!     Topology::queue(QueueSpec::quorum("orders")), // replicated to a majority
//!     "/var/lib/myapp/spill",                        // the local spill log
//! );
//! let publisher = ReliablePublisher::start(cfg)?;
//! match publisher.publish(Message::new("order-17", "3 x widget")).await? {
//!     Receipt::Confirmed => {}            // on the broker's disks
//!     Receipt::Spilled(why) => {          // on ours, fsynced; replayed later
//!         eprintln!("broker unavailable ({why}); spilled");
//!     }
//! }
//! // Many messages in flight from one task, in order:
//! let mut pending = Vec::new();
//! for i in 0..1000 {
//!     pending.push(publisher.submit(Message::new(format!("evt-{i}"), "...")).await?);
//! }
//! for p in pending {
//!     let _receipt = p.await?;
//! }
//! publisher.close().await;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! **What a receipt promises.**
//! - [`Receipt::Confirmed`]: the broker acknowledged this message on the
//!   channel it was published on, and did not return it as unroutable (every
//!   message is published `mandatory`, persistent, with its id as
//!   `message_id`). RabbitMQ acknowledges a persistent message routed to a
//!   durable classic queue once that queue has written it to disk, and one
//!   routed to a quorum queue once a majority of the queue's replicas have it.
//!   For Kafka: the delivery report succeeded under `acks=all`, i.e. every
//!   in-sync replica has it (at least `min.insync.replicas`; create topics with
//!   `min.insync.replicas=2`).
//! - [`Receipt::Spilled`]: the message was appended to the spill log and the
//!   `fdatasync` that covers it returned before the receipt was given: it
//!   survives a process crash, a kernel crash and a power loss (given a disk
//!   that honours `fdatasync`). It stays in the log until the broker confirmed
//!   it *and every record before it*; only then may the log delete it.
//! - `Err(_)`: nothing is promised; the caller still owns the message (bad
//!   input, a spill log that failed, a closed publisher). A message whose
//!   receipt had not arrived when the process died is likewise unacknowledged:
//!   it lived only in memory (the window or the spill log's buffer) and may or
//!   may not have been delivered.
//!
//! **Disk errors while spilling.** When a write or an `fdatasync` of the
//! spill log fails (a full disk, an I/O error):
//! - *Which messages get an error:* every message whose spill record was
//!   not yet durable when the flush failed — the record that flush carried
//!   and any appended behind it (records become durable in append order, so
//!   this is the tail of what was spilled) — gets `Err(`[`Error::Spill`]`)`
//!   instead of a receipt, and so does every spill while the log cannot be
//!   replaced (below). None of them was reported spilled; the caller still
//!   owns them. The failing log cuts them from its files before anyone
//!   hears of the failure, so they are not replayed either (unless the
//!   process dies in between: then one may still be replayed, a copy of a
//!   message that got an error).
//! - *Nothing acknowledged is lost:* every [`Receipt::Spilled`] was given
//!   after the `fdatasync` covering it returned; the failed log is replaced
//!   by opening the directory again, whose recovery scan verifies every
//!   record and keeps all of those; the replay checkpoint is untouched.
//! - *Spilling resumes:* a failed log refuses appends for good, so the next
//!   spill closes it and opens the directory again — on a background thread,
//!   the spill waiting meanwhile — and is then appended to the new log (one
//!   retry). If the directory cannot be opened, that spill fails with
//!   [`Error::Spill`]. The first attempt after a log that had made records
//!   durable is immediate; after an attempt that failed, or a reopened log
//!   that failed before making anything durable (the disk is still full),
//!   the next waits [`SpillConfig::reopen_interval`] (default 1 s), doubling
//!   up to a minute, and spills fail at once until then.
//! - A replay running on the failed log stops (its reader is closed with
//!   the log) and starts again later from the persisted checkpoint; the
//!   records confirmed since that checkpoint are published again (case 3
//!   below).
//!
//! **Records this build cannot decode** (written by a newer build with
//! another record format, say) are never dropped. Before the replay's
//! checkpoint may pass one, its raw bytes are written to
//! `<spill dir>/quarantine/<record id>.bin` (a temporary file, fsynced,
//! renamed into place, then the directory fsynced), the path is logged at
//! error level and the record is counted ([`Stats::corrupt_records`],
//! `mq_reliable_corrupt_records_total`); the replay then goes on with the
//! records after it. If the quarantine file cannot be written, the replay
//! publishes the records before it, checkpoints exactly those and stops
//! with the error (logged; the publisher degrades and retries with
//! backoff): the record, and everything after it, stays in the log.
//! A build that reads the format can publish the quarantined bytes again.
//!
//! **What may be delivered twice (at-least-once).** Every copy of a message
//! carries the same `message_id`; [`Dedupe`] removes them. Copies arise only
//! from:
//! 1. a failure (lost connection or channel, confirm timeout, blocked
//!    connection, failed Kafka delivery) while messages were in flight: each
//!    may have reached the broker and is also spilled and replayed — at most
//!    [`ReliabilityConfig::window`] messages per failure; a confirm that arrives
//!    after the timeout is this case;
//! 2. a replay interrupted by a failure: records confirmed behind one that
//!    was not are replayed again — at most one window;
//! 3. a process crash during a replay, or a spill log replaced after a disk
//!    error during one: records confirmed since the last persisted
//!    checkpoint are replayed again — at most
//!    [`ReliabilityConfig::checkpoint_every`] plus one window per crash (the
//!    replay pauses while a due checkpoint is written, so the bound is the
//!    same as if it were written synchronously); an unroutable record moved
//!    to the tail of the log (see below) may then be replayed from both
//!    places.
//!
//! The window is a sliding one: a message is sent only within `window` of
//! the oldest one still awaiting its verdict. So two copies of one message
//! are never more than `checkpoint_every` + 2 × `window` distinct messages
//! apart: a [`Dedupe`] of that capacity catches every duplicate — except
//! of an unroutable or rejected message, which moves to the end of the log
//! (see Ordering) and can come back after any number of others.
//!
//! librdkafka's idempotent producer adds no copies of its own (its retries are
//! deduplicated by the broker). On the consuming side, RabbitMQ redelivers
//! what a consumer did not acknowledge (its connection died, or it asked for a
//! retry).
//!
//! **Ordering.** Messages are accepted in the order of `submit`/`publish`
//! calls (program order within one task; no order between publishers). While
//! [`Healthy`](PublisherState::Healthy) they go out in that order on one
//! channel (Kafka: per partition, kept across librdkafka's retries). The spill
//! log keeps append order and the replay publishes in log order. After a
//! failure, nothing new is accepted, and no replay starts, until every
//! message sent before it has its verdict, so that those which fail too are
//! spilled ahead of anything accepted after them. While
//! [`Degraded`](PublisherState::Degraded) or
//! [`Recovering`](PublisherState::Recovering), new messages are appended
//! *behind* the backlog, and the publisher is healthy again only once the
//! replay has reached the end of the log. So, keeping the first copy of each
//! id, the broker receives messages in accepted order, with two exceptions:
//! a message whose copy failed on its own (a nack, or a copy lost while
//! others sent after it were confirmed) can be overtaken by messages that
//! were in flight with it — fewer than `window` when it first failed, and
//! fewer than `window` more (the same ones each time) in replays where it
//! fails again, so at most 2 × (`window` − 1) in all; and an unroutable
//! message (or one the broker rejects for what it is, see
//! [`SpillReason::Rejected`]), which is moved to the end of the log at each
//! replay so that it does not block the records behind it, arrives only
//! once the topology routes it (or the broker's limit allows it), after
//! everything published meanwhile. (The property test in
//! `engine_tests.rs` checks exactly this against a scripted broker.)
//!
//! **Recovery pace.** While the broker is down, intake is limited only by the
//! disk. While recovering, each replayed message earns
//! [`ReliabilityConfig::recovery_intake`] (default ½) new messages, so the
//! backlog shrinks even under full load and producers are held to the
//! broker's pace, not blocked.
//!
//! **No blocking.** The publisher's task never waits on the disk: spill
//! appends use the log's asynchronous form (when its buffers are all being
//! written, records wait in order and intake pauses), and the replay's
//! reads and checkpoint fsyncs run on tokio's blocking pool. `start` itself
//! opens the spill log synchronously (a recovery scan of what an earlier run
//! left; quick unless that is large); `close` closes it off the runtime's
//! threads, and once `close` returns the directory is free for another
//! publisher.
//!
//! **States.** [`ReliablePublisher::state`] is a watch of
//! `Healthy → Degraded (spilling) → Recovering (replaying) → Healthy`;
//! transitions are logged with `tracing` at info level (failures at warn).
//! Reconnects use exponential backoff with jitter ([`BackoffConfig`]); every
//! reconnect declares the topology again (durable exchange, durable classic
//! or quorum queue, binding) and re-enables confirms.
//!
//! # Broker traps, checked against the pinned clients
//!
//! - lapin 4.12: on a lost connection every pending confirm fails with an
//!   error and nothing is republished (with auto-recovery the delivery tags
//!   restart too). This crate keeps every unconfirmed message itself, spills
//!   it, and reconnects on its own (lapin's auto-recovery stays off).
//! - An unroutable `mandatory` message comes back as `basic.return` followed
//!   by an *ack*: lapin reports `Confirmation::Ack(Some(returned))` — but hands
//!   the return to whichever confirm completes next, which after a `multiple`
//!   ack may belong to another message. This crate matches returns by
//!   `message_id` and drains every completed confirm before acting on any
//!   (see `engine.rs`), so a returned message is never reported confirmed.
//! - Prefetch after a reconnect: the consumer applies `basic.qos` on every new
//!   channel before `basic.consume`, so the limit holds after recovery whatever
//!   lapin's recovery does.
//! - `connection.blocked` (memory or disk alarm; also `channel.flow`): the
//!   broker stops reading. In-flight messages are spilled, new ones too, and
//!   the replay waits for `connection.unblocked`.
//! - librdkafka: `enable.idempotence` defaults to false and
//!   `message.timeout.ms` to 300 s; [`KafkaConfig`] forces idempotence and
//!   `acks=all` and bounds the timeout (10 s by default).
//!
//! # Observability
//!
//! `metrics` counters `mq_reliable_confirms_total`, `mq_reliable_spilled_total`
//! (label `reason`), `mq_reliable_replayed_total`, `mq_reliable_nacks_total`,
//! `mq_reliable_returns_total`, `mq_reliable_confirm_timeouts_total`,
//! `mq_reliable_corrupt_records_total`, gauges `mq_reliable_state` (0 healthy,
//! 1 degraded, 2 recovering, 3 closed) and `mq_reliable_inflight` (label
//! `backend`); consumer counters `mq_reliable_consumer_{acks,retries,rejects,
//! poisoned}_total`. The same numbers are in [`Stats`] and [`ConsumerStats`].
//! A publisher registers its metrics when it starts: install the `metrics`
//! recorder before starting publishers.
//!
//! # Features
//!
//! `rabbitmq` (lapin: publisher, consumer, tuner) and `kafka` (rdkafka), both
//! on by default. The engine, the spill log, [`Dedupe`] and the configuration
//! types build without either.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]
// Without a backend the engine has no public entry point; it still builds
// and its tests run.
#![cfg_attr(
    not(any(feature = "rabbitmq", feature = "kafka")),
    allow(dead_code, unused_imports, unused_macros)
)]

mod backoff;
mod checkpoint;
mod config;
mod dedupe;
mod engine;
mod error;
mod message;
mod spill;
mod state;
mod topology;

#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "rabbitmq")]
mod rabbit;

#[cfg(test)]
mod engine_tests;

pub use backoff::BackoffConfig;
pub use config::ReliabilityConfig;
pub use dedupe::Dedupe;
pub use engine::PendingReceipt;
pub use error::{Error, Result, SpillError};
pub use message::{MAX_ID_LEN, Message, Receipt, SpillReason};
pub use spill::SpillConfig;
pub use state::{PublisherState, Stats};
pub use topology::{ExchangeType, Overflow, QueueKind, QueueSpec, Topology};

#[cfg(feature = "kafka")]
pub use kafka::{KafkaConfig, ReliableKafkaProducer};
#[cfg(feature = "rabbitmq")]
pub use rabbit::consumer::{
    ConsumerConfig, ConsumerStats, Incoming, Outcome, ReliableConsumer, Stopper,
};
#[cfg(feature = "rabbitmq")]
pub use rabbit::publisher::{PublisherConfig, ReliablePublisher};
#[cfg(feature = "rabbitmq")]
pub use rabbit::tuner::{
    HandlerConcurrency, TunerConfig, TunerReport, TunerRow, measure as measure_prefetch,
    recommend as recommend_prefetch, tune_prefetch,
};

/// The spill log crate, whose [`Config`](double_buffer::Config) appears in
/// [`SpillConfig`].
pub use double_buffer;
#[cfg(feature = "rabbitmq")]
/// The AMQP client, whose types appear in [`Incoming`].
pub use lapin;
#[cfg(feature = "kafka")]
/// The Kafka client.
pub use rdkafka;
