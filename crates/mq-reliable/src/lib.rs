//! RabbitMQ and Kafka publishing that never loses an acknowledged message.
//!
//! (Crate docs are written in full once the API settles.)
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod backoff;
mod checkpoint;
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
    TunerConfig, TunerReport, TunerRow, measure as measure_prefetch,
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
