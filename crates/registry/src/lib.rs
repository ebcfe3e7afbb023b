//! A Eureka-compatible service registry held in memory.
//!
//! WIP
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod auth;
mod client;
mod clock;
pub mod codec;
mod config;
mod error;
mod lease;
mod model;
mod registry;
mod replication;
mod server;

pub use auth::Auth;
pub use client::{ClientConfig, ClientStats, LocalRegistry, RegistryClient};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
pub use error::{Error, Result};
pub use lease::{EvictionClock, lease_expired};
pub use model::{
    ActionType, Application, Applications, DataCenterInfo, Instance, InstanceInfo, LeaseInfo,
    Millis, Port, Status, reconcile_hashcode,
};
pub use registry::{ChangeListener, EvictionReport, Registry, Renewal, Stats, effective_status};
pub use server::{REPLICATION_HEADER, Server, ServerConfig, ServerCounters};
