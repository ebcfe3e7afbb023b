//! A Eureka-compatible service registry held in memory: the registry core, an HTTP
//! server speaking Eureka's REST API v2 (JSON and XML), peer replication, a dashboard,
//! a client library and the `registry-server` binary.
//!
//! Eureka keeps its registry in a `ConcurrentHashMap`; this crate keeps it in a
//! [`dashmap`](https://docs.rs/dashmap) of apps → instances → leases, and fixes what
//! Eureka users complain about: a new instance is visible to the next read (no 30 s
//! read-only cache), a dead one is gone one lease duration after its last heartbeat
//! (the duration is not counted twice), and the self-preservation threshold follows
//! cancellations and evictions down instead of only ratcheting up.
//!
//! # Quick example
//!
//! The core is sans-IO: every method that depends on time takes `now` (Unix ms).
//!
//! ```
//! use registry::{Config, InstanceInfo, LocalRegistry, Registry, Renewal, Status};
//!
//! let reg = Registry::new(Config::default())?;
//! let t0 = 1_700_000_000_000;
//! reg.register(InstanceInfo::new("orders", "orders-1", "10.0.0.1", 8080), false, t0)?;
//! assert_eq!(reg.renew("ORDERS", "orders-1", None, false, t0 + 30_000)?, Renewal::Renewed);
//! reg.set_status_override("ORDERS", "orders-1", Status::OutOfService, None, t0 + 31_000)?;
//!
//! // A client's local copy follows deltas and checks Eureka's reconcile hashcode.
//! let mut local = LocalRegistry::default();
//! assert!(local.apply_delta(&reg.delta(t0 + 31_000)));
//! assert_eq!(local.hashcode(), "OUT_OF_SERVICE_1_");
//! # Ok::<(), registry::Error>(())
//! ```
//!
//! Serving it, and a client that registers, renews and long-polls deltas:
//!
//! ```no_run
//! use std::time::Duration;
//! use registry::{ClientConfig, InstanceInfo, RegistryClient, Server, ServerConfig};
//!
//! # async fn demo() -> registry::Result<()> {
//! let server = Server::start(ServerConfig { bind: "127.0.0.1:8761".parse().unwrap(), ..Default::default() }).await?;
//! let client = RegistryClient::new(ClientConfig {
//!     service_urls: vec![server.service_url()],
//!     instance: Some(InstanceInfo::new("orders", "orders-1", "10.0.0.1", 8080)),
//!     long_poll: Some(Duration::from_secs(30)),
//!     ..Default::default()
//! })?;
//! client.start();
//! let target = client.next_instance("orders"); // round robin over UP instances
//! client.shutdown().await?;
//! server.shutdown(Duration::from_secs(10)).await?;
//! # let _ = target; Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **Leases.** A lease expires at *last renewal + duration* (client's
//!   `leaseInfo.durationInSecs`, default 90 s, capped by [`Config::max_lease_duration`]).
//!   The eviction pass runs every [`Config::eviction_interval`] (default 5 s); a late
//!   pass grants its lateness as extra grace ([`EvictionClock`]); one pass evicts at
//!   most `size − floor(size × renewal_percent_threshold)` leases, in random order; a
//!   lease renewed after the scan is spared.
//! - **Self-preservation** (on by default): the expected renewals per minute are the
//!   sum of each instance's promised rate (60 / `renewalIntervalInSecs`), maintained on
//!   register, cancel *and* eviction. While the renewals of the last minute are not
//!   above `floor(expected × 0.85)`, nothing expires.
//! - **Status overrides** (`PUT .../status`) survive heartbeats and re-registrations
//!   until deleted (`DELETE .../status`) or the instance is cancelled. Effective status
//!   follows Eureka's rules ([`effective_status`]).
//! - **Consistency of reads.** Every visible change (register, cancel, eviction,
//!   status, override, metadata) is applied under one short journal lock together with
//!   the per-status counts, the version and the delta queue. Every delta is taken
//!   under that lock; a full registry is copied between two reads of the version and
//!   copied again under the lock if a change landed meanwhile. Either way its
//!   `apps__hashcode` is exactly the registry's at its `versions__delta`, also under
//!   concurrent writers, and writers are not held up while 10⁶ instances are copied.
//!   Heartbeats do not take that lock, except when the override rules change a
//!   status (lease timestamps in fetched documents are as of the copy).
//! - **Visibility.** Serialized responses are cached per registry version: the first
//!   read after a change rebuilds them, so a registration is visible to the next read.
//!   `GET /apps/delta?version=N&wait=30s` returns as soon as the registry moves past N.
//! - **Durability.** None: the registry lives in memory. A restarted node copies the
//!   registry from a peer before it serves. Replication is asynchronous and best
//!   effort (see below); heartbeats repair what it loses.
//! - **Replication** (Eureka's AP model): a node applies a client's change, answers,
//!   and forwards it to every peer in batches with the `x-netflix-discovery-replication`
//!   header; replicated changes are never forwarded again. Per peer, up to
//!   [`ServerConfig::replication_queue`] tasks wait while the peer is unreachable
//!   (retried with backoff); beyond that they are dropped and counted. A heartbeat the
//!   peer does not know makes the sender replicate a registration; a peer holding a
//!   newer record (`lastDirtyTimestamp`) answers 409 with it and the sender takes it.
//!   Changes may arrive at different peers in different orders; the dirty timestamp
//!   decides conflicts between records.
//! - **Bad input** is a 4xx with a message naming the field and value; bodies are
//!   limited ([`ServerConfig::max_body_bytes`], after gzip decoding); no input panics
//!   (the codecs are fuzzed with proptest).
//!
//! # Observability
//!
//! Counters and gauges go through the [`metrics`](https://docs.rs/metrics) facade,
//! all named `registry_*`: `registry_registrations_total`, `registry_renewals_total`
//! and `registry_cancels_total` (label `origin`: `client` or `peer`),
//! `registry_evictions_total`, the gauges `registry_instances` and
//! `registry_self_preservation` (0/1), `registry_fetches_total{kind}`, and per peer
//! `registry_replication_{batches,tasks,failures,dropped}_total` and
//! `registry_replication_pending`. The [`metrics`](mod@metrics) module lists them
//! with their labels. Handles are registered when a [`Registry`] is built or a
//! [`Server`] starts (install the recorder first), so a heartbeat costs one atomic
//! add more. `registry-server --metrics-addr ADDR` serves them for Prometheus.
//!
//! `tracing` events: every eviction pass that evicts logs one `WARN` ("evicted
//! instances whose lease expired", fields `evicted`, `expired`, `cap`,
//! `compensation_ms`, `instances`); self-preservation turning on is a `WARN` (an
//! `INFO` while the registry is empty) and turning off an `INFO`; a full replication
//! queue is a `WARN`.
//!
//! # Where it differs from Eureka
//!
//! Deliberately: the eviction default (5 s, not 60 s); expected renewals per instance
//! rather than one global interval; an override is stored even when it equals the
//! current status; `?version=`/`?wait=` on the delta; a status change made by a
//! heartbeat's override check is a recorded change (Eureka changes it silently, so its
//! caches and deltas miss it).
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod auth;
mod client;
mod clock;
pub mod codec;
mod config;
mod error;
mod lease;
pub mod metrics;
mod model;
mod registry;
mod replication;
mod server;
mod sync;

pub use auth::Auth;
pub use client::{ClientConfig, ClientStats, LocalRegistry, RegistryClient};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
pub use error::{Error, Result};
pub use lease::{EvictionClock, lease_expired};
pub use model::{
    ActionType, Application, Applications, DataCenterInfo, Instance, InstanceInfo, LeaseInfo,
    Metadata, Millis, Port, Status, reconcile_hashcode,
};
pub use registry::{ChangeListener, EvictionReport, Registry, Renewal, Stats, effective_status};
pub use server::{REPLICATION_HEADER, Server, ServerConfig, ServerCounters};

/// Re-exported because [`RegistryClient`] errors carry its types.
pub use reqwest;
