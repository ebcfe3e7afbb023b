//! Against the real RabbitMQ; faults through `testkit::FaultProxy`.
//!
//! Every test uses its own queues (unique names) and deletes them at the
//! end, even when it fails.

mod support;

mod alarm;
mod cli;
mod consumer;
mod crash;
mod faults;
mod publisher;
