//! The publisher's observable state and counters.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a publisher stands. Observe it with
/// [`ReliablePublisher::state`](crate::ReliablePublisher::state).
///
/// ```text
///            failure                 broker reachable
///  Healthy ───────────▶ Degraded ───────────────────▶ Recovering
///     ▲                    ▲                               │
///     │                    └────────── failure ────────────┤
///     └──────────── spill log replayed to the end ─────────┘
/// ```
///
/// A failure is any of: a nack, a returned (unroutable) or rejected message, a confirm
/// timeout, `connection.blocked`, a lost channel or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublisherState {
    /// Connected; new messages go straight to the broker.
    Healthy,
    /// The broker failed or is unreachable; new messages are spilled to the
    /// local log; reconnects are attempted with backoff.
    Degraded,
    /// Connected again; the spill log is being replayed through the
    /// confirmed path. New messages are still spilled (behind the backlog)
    /// until the replay reaches the end of the log.
    Recovering,
    /// Closed by the application; nothing more is accepted.
    Closed,
}

impl PublisherState {
    /// Short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherState::Healthy => "healthy",
            PublisherState::Degraded => "degraded",
            PublisherState::Recovering => "recovering",
            PublisherState::Closed => "closed",
        }
    }

    /// The value of the `mq_reliable_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            PublisherState::Healthy => 0.0,
            PublisherState::Degraded => 1.0,
            PublisherState::Recovering => 2.0,
            PublisherState::Closed => 3.0,
        }
    }
}

impl fmt::Display for PublisherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a publisher's counters since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages confirmed by the broker on first publish.
    pub confirmed: u64,
    /// Messages durably spilled (their receipt said `Spilled`).
    pub spilled: u64,
    /// Spill records replayed and confirmed by the broker.
    pub replayed: u64,
    /// Negative acknowledgements (and Kafka rejections) received.
    pub nacked: u64,
    /// Unroutable messages returned by the broker.
    pub returned: u64,
    /// Confirms that did not arrive within the confirm timeout.
    pub confirm_timeouts: u64,
    /// Connections (or Kafka recoveries) established.
    pub connections: u64,
    /// Spill records this build could not decode, written to the
    /// quarantine directory (`<spill dir>/quarantine/<record id>.bin`) and
    /// then passed by the replay (each one is logged at error level with its
    /// path; a non-zero value needs an operator).
    pub corrupt_records: u64,
}

/// Lock-free counters behind [`Stats`], shared by the actor and handles.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) confirmed: AtomicU64,
    pub(crate) spilled: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) returned: AtomicU64,
    pub(crate) confirm_timeouts: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) corrupt_records: AtomicU64,
}

impl Counters {
    pub(crate) fn shared() -> Arc<Counters> {
        Arc::new(Counters::default())
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            confirmed: get(&self.confirmed),
            spilled: get(&self.spilled),
            replayed: get(&self.replayed),
            nacked: get(&self.nacked),
            returned: get(&self.returned),
            confirm_timeouts: get(&self.confirm_timeouts),
            connections: get(&self.connections),
            corrupt_records: get(&self.corrupt_records),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
