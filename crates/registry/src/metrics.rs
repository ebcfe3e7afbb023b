//! Metric names, and the handles this crate registers once.
//!
//! Everything goes through the [`metrics`] facade. Install a recorder (for
//! example `metrics-exporter-prometheus`; `registry-server --metrics-addr`
//! does) **before** building a [`Registry`](crate::Registry) or starting a
//! [`Server`](crate::Server): each registers its handles when built, so that
//! counting is one atomic add on a pre-registered handle (nothing without a
//! recorder), cheap enough for every heartbeat.
//!
//! | name | kind | labels | moves when |
//! |---|---|---|---|
//! | `registry_registrations_total` | counter | `origin` (`client`/`peer`) | an instance registered (or re-registered) |
//! | `registry_renewals_total` | counter | `origin` | a heartbeat renewed a lease |
//! | `registry_cancels_total` | counter | `origin` | an instance de-registered |
//! | `registry_evictions_total` | counter | | an expired lease was evicted |
//! | `registry_instances` | gauge | | instances registered now |
//! | `registry_self_preservation` | gauge | | 1 while self-preservation holds evictions back (updated by each eviction pass and [`Registry::stats`](crate::Registry::stats)) |
//! | `registry_fetches_total` | counter | `kind` (`full`/`delta`) | a server answered `GET /apps` or `GET /apps/delta` |
//! | `registry_replication_batches_total` | counter | `peer` | a batch reached a peer |
//! | `registry_replication_tasks_total` | counter | `peer` | tasks in those batches |
//! | `registry_replication_failures_total` | counter | `peer` | sending a batch failed (retried with backoff) |
//! | `registry_replication_dropped_total` | counter | `peer`, `reason` (`queue_full`/`expired`) | a task was given up: the peer's queue was full, or a heartbeat waited over 30 s |
//! | `registry_replication_pending` | gauge | `peer` | tasks waiting in the peer's queue |
//!
//! `origin` is `peer` for changes a peer replicated (the replication
//! header), `client` otherwise; on a three-node cluster a registration
//! counts once as `client` on the node the client called and once as `peer`
//! on each other node. The gauges add up over the registries of one process
//! (one per process in `registry-server`).

use metrics::{Counter, Gauge, counter, describe_counter, describe_gauge, gauge};

/// `registry_registrations_total`.
pub const REGISTRATIONS: &str = "registry_registrations_total";
/// `registry_renewals_total`.
pub const RENEWALS: &str = "registry_renewals_total";
/// `registry_cancels_total`.
pub const CANCELS: &str = "registry_cancels_total";
/// `registry_evictions_total`.
pub const EVICTIONS: &str = "registry_evictions_total";
/// `registry_instances`.
pub const INSTANCES: &str = "registry_instances";
/// `registry_self_preservation`.
pub const SELF_PRESERVATION: &str = "registry_self_preservation";
/// `registry_fetches_total`.
pub const FETCHES: &str = "registry_fetches_total";
/// `registry_replication_batches_total`.
pub const REPLICATION_BATCHES: &str = "registry_replication_batches_total";
/// `registry_replication_tasks_total`.
pub const REPLICATION_TASKS: &str = "registry_replication_tasks_total";
/// `registry_replication_failures_total`.
pub const REPLICATION_FAILURES: &str = "registry_replication_failures_total";
/// `registry_replication_dropped_total`.
pub const REPLICATION_DROPPED: &str = "registry_replication_dropped_total";
/// `registry_replication_pending`.
pub const REPLICATION_PENDING: &str = "registry_replication_pending";

/// A counter per origin of a change: `[client, peer]`.
#[derive(Debug)]
pub(crate) struct ByOrigin([Counter; 2]);

impl ByOrigin {
    fn new(name: &'static str) -> Self {
        ByOrigin([
            counter!(name, "origin" => "client"),
            counter!(name, "origin" => "peer"),
        ])
    }

    #[inline]
    pub(crate) fn increment(&self, is_replication: bool) {
        self.0[usize::from(is_replication)].increment(1);
    }
}

/// A [`Registry`](crate::Registry)'s.
#[derive(Debug)]
pub(crate) struct RegistryMetrics {
    pub(crate) registrations: ByOrigin,
    pub(crate) renewals: ByOrigin,
    pub(crate) cancels: ByOrigin,
    pub(crate) evictions: Counter,
    pub(crate) instances: Gauge,
    pub(crate) self_preservation: Gauge,
}

impl RegistryMetrics {
    pub(crate) fn new() -> Self {
        describe_counter!(REGISTRATIONS, "instance registrations, by origin");
        describe_counter!(RENEWALS, "lease renewals (heartbeats), by origin");
        describe_counter!(CANCELS, "instance de-registrations, by origin");
        describe_counter!(EVICTIONS, "expired leases evicted");
        describe_gauge!(INSTANCES, "instances registered");
        describe_gauge!(
            SELF_PRESERVATION,
            "1 while self-preservation holds evictions back"
        );
        RegistryMetrics {
            registrations: ByOrigin::new(REGISTRATIONS),
            renewals: ByOrigin::new(RENEWALS),
            cancels: ByOrigin::new(CANCELS),
            evictions: counter!(EVICTIONS),
            instances: gauge!(INSTANCES),
            self_preservation: gauge!(SELF_PRESERVATION),
        }
    }
}

/// A [`Server`](crate::Server)'s request counters.
#[derive(Debug)]
pub(crate) struct ServerMetrics {
    pub(crate) full_fetches: Counter,
    pub(crate) delta_fetches: Counter,
}

impl ServerMetrics {
    pub(crate) fn new() -> Self {
        describe_counter!(FETCHES, "registry fetches served, full or delta");
        ServerMetrics {
            full_fetches: counter!(FETCHES, "kind" => "full"),
            delta_fetches: counter!(FETCHES, "kind" => "delta"),
        }
    }
}

/// One peer's replication.
#[derive(Debug)]
pub(crate) struct PeerMetrics {
    pub(crate) batches: Counter,
    pub(crate) tasks: Counter,
    pub(crate) failures: Counter,
    pub(crate) queue_full: Counter,
    pub(crate) expired: Counter,
    pub(crate) pending: Gauge,
}

impl PeerMetrics {
    pub(crate) fn new(peer: &str) -> Self {
        describe_counter!(
            REPLICATION_BATCHES,
            "replication batches delivered, by peer"
        );
        describe_counter!(REPLICATION_TASKS, "replicated tasks delivered, by peer");
        describe_counter!(
            REPLICATION_FAILURES,
            "failed replication batch sends (retried), by peer"
        );
        describe_counter!(REPLICATION_DROPPED, "replication tasks given up, by peer");
        describe_gauge!(REPLICATION_PENDING, "replication tasks queued, by peer");
        let peer = || peer.to_owned();
        PeerMetrics {
            batches: counter!(REPLICATION_BATCHES, "peer" => peer()),
            tasks: counter!(REPLICATION_TASKS, "peer" => peer()),
            failures: counter!(REPLICATION_FAILURES, "peer" => peer()),
            queue_full: counter!(REPLICATION_DROPPED, "peer" => peer(), "reason" => "queue_full"),
            expired: counter!(REPLICATION_DROPPED, "peer" => peer(), "reason" => "expired"),
            pending: gauge!(REPLICATION_PENDING, "peer" => peer()),
        }
    }
}
