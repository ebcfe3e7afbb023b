//! RabbitMQ and Kafka publishing that never loses an acknowledged message
//!
//! Work in progress: see the issue for this crate.
#![warn(missing_docs, unreachable_pub)]
