//! Metric names, and what the [`node`](crate::node) driver reports
//! (feature `node`).
//!
//! The core ([`Peer`](crate::Peer)) knows nothing of metrics: the driver
//! derives them from the events it drains from the peer and from its
//! transport. Everything goes through the [`metrics`] facade; install a
//! recorder (for example `metrics-exporter-prometheus`, which
//! `zab-node --metrics-addr` does) **before** [`Node::start`](crate::node::Node::start):
//! a node registers its handles when it starts, so that reporting is an
//! atomic store on a pre-registered handle (nothing without a recorder).
//! Every metric carries the label `id`, the server's id, so that the
//! nodes of one process stay apart.
//!
//! | name | kind | labels | moves when |
//! |---|---|---|---|
//! | `zab_elections_total` | counter | `id` | the server enters LOOKING: at start and each time it loses its leader or its quorum |
//! | `zab_leader_elected_total` | counter | `id`, `by` (`quorum`/`in_election`/`out_of_election`) | an election ends at this server (it leads, follows or observes); `by` is the rule that concluded it |
//! | `zab_state` | gauge | `id` | the state changes: 0 LOOKING, 1 FOLLOWING, 2 LEADING, 3 OBSERVING (ZooKeeper's ordinals) |
//! | `zab_round` | gauge | `id` | the election round (`logicalclock`) moves, also when a LOOKING server adopts a newer round |
//! | `zab_epoch` | gauge | `id` | the server's current epoch (the peer epoch of its votes) moves; a new value once a leader is established |
//! | `zab_election_duration_seconds` | histogram | `id` | an election ends at this server: the time from entering LOOKING to the decision (finalize wait included) |
//! | `zab_election_last_duration_seconds` | gauge | `id` | the same, for the last election only |
//! | `zab_transport_connected_peers` | gauge | `id` | a connection to a peer comes up or goes down |
//! | `zab_transport_reconnects_total` | counter | `id` | a connection to a peer comes up again after it had been up before |
//! | `zab_frames_rejected_total` | counter | `id`, `reason` (see [`RejectReason`]) | the transport drops a frame or refuses a connection |

use std::collections::BTreeSet;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

use crate::peer::{DecidedBy, Event, Status};
use crate::transport::{RejectReason, TransportEvent};
use crate::types::{ServerId, ServerState};

/// `zab_elections_total`.
pub const ELECTIONS: &str = "zab_elections_total";
/// `zab_leader_elected_total`.
pub const LEADER_ELECTED: &str = "zab_leader_elected_total";
/// `zab_state`.
pub const STATE: &str = "zab_state";
/// `zab_round`.
pub const ROUND: &str = "zab_round";
/// `zab_epoch`.
pub const EPOCH: &str = "zab_epoch";
/// `zab_election_duration_seconds`.
pub const ELECTION_DURATION: &str = "zab_election_duration_seconds";
/// `zab_election_last_duration_seconds`.
pub const ELECTION_LAST_DURATION: &str = "zab_election_last_duration_seconds";
/// `zab_transport_connected_peers`.
pub const CONNECTED_PEERS: &str = "zab_transport_connected_peers";
/// `zab_transport_reconnects_total`.
pub const RECONNECTS: &str = "zab_transport_reconnects_total";
/// `zab_frames_rejected_total`.
pub const FRAMES_REJECTED: &str = "zab_frames_rejected_total";

/// The buckets, in seconds, `zab-node --metrics-addr` gives
/// [`ELECTION_DURATION`]: around the 200 ms finalize wait, up to the 60 s
/// notification backoff cap.
pub const ELECTION_DURATION_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// A [`DecidedBy`] as the `by` label of [`LEADER_ELECTED`].
fn decided_by_label(by: DecidedBy) -> &'static str {
    match by {
        DecidedBy::Quorum => "quorum",
        DecidedBy::InElection => "in_election",
        DecidedBy::OutOfElection => "out_of_election",
    }
}

/// Every [`DecidedBy`], each at its [`index`](DecidedBy::index).
const DECIDED_BY: [DecidedBy; 3] = [
    DecidedBy::Quorum,
    DecidedBy::InElection,
    DecidedBy::OutOfElection,
];

impl DecidedBy {
    /// The rule's position in [`DECIDED_BY`], which indexes the
    /// [`LEADER_ELECTED`] counters. The match is exhaustive: a new variant
    /// does not compile until it gets the next index here and its place at
    /// the end of `DECIDED_BY` (checked at compile time below).
    const fn index(self) -> usize {
        match self {
            DecidedBy::Quorum => 0,
            DecidedBy::InElection => 1,
            DecidedBy::OutOfElection => 2,
        }
    }
}

// `DECIDED_BY[i].index() == i` for every `i`.
const _: () = {
    let mut i = 0;
    while i < DECIDED_BY.len() {
        assert!(DECIDED_BY[i].index() == i);
        i += 1;
    }
};

/// The handles of one node, and what it takes to derive them: when the
/// current election started and which peers are, or have been, connected.
#[derive(Debug)]
pub(crate) struct NodeMetrics {
    elections: Counter,
    elected: [Counter; DECIDED_BY.len()],
    state: Gauge,
    round: Gauge,
    epoch: Gauge,
    duration: Histogram,
    last_duration: Gauge,
    connected_peers: Gauge,
    reconnects: Counter,
    rejected: [Counter; RejectReason::ALL.len()],
    /// The state last reported, `None` before the first status.
    last_state: Option<ServerState>,
    /// When the running election began (time since the node started).
    looking_since: Option<Duration>,
    connected: BTreeSet<ServerId>,
    ever_connected: BTreeSet<ServerId>,
}

impl NodeMetrics {
    /// Registers the handles of server `id` with the current recorder.
    pub(crate) fn new(id: ServerId) -> Self {
        describe_counter!(ELECTIONS, "elections started: LOOKING entered");
        describe_counter!(
            LEADER_ELECTED,
            "elections concluded at this server, by the rule that concluded them"
        );
        describe_gauge!(
            STATE,
            "0 looking, 1 following, 2 leading, 3 observing (ZooKeeper's ordinals)"
        );
        describe_gauge!(ROUND, "the election round (logicalclock)");
        describe_gauge!(
            EPOCH,
            "the current epoch (the peer epoch of this server's votes)"
        );
        describe_histogram!(
            ELECTION_DURATION,
            Unit::Seconds,
            "from entering LOOKING to this server's decision"
        );
        describe_gauge!(
            ELECTION_LAST_DURATION,
            Unit::Seconds,
            "the last election's time from entering LOOKING to this server's decision"
        );
        describe_gauge!(CONNECTED_PEERS, "peers with a live connection");
        describe_counter!(
            RECONNECTS,
            "connections to a peer established again after an earlier one"
        );
        describe_counter!(
            FRAMES_REJECTED,
            "frames dropped or connections refused by the transport, by reason"
        );
        let id = id.to_string();
        let by = |b: DecidedBy| counter!(LEADER_ELECTED, "id" => id.clone(), "by" => decided_by_label(b));
        NodeMetrics {
            elections: counter!(ELECTIONS, "id" => id.clone()),
            elected: DECIDED_BY.map(by),
            state: gauge!(STATE, "id" => id.clone()),
            round: gauge!(ROUND, "id" => id.clone()),
            epoch: gauge!(EPOCH, "id" => id.clone()),
            duration: histogram!(ELECTION_DURATION, "id" => id.clone()),
            last_duration: gauge!(ELECTION_LAST_DURATION, "id" => id.clone()),
            connected_peers: gauge!(CONNECTED_PEERS, "id" => id.clone()),
            reconnects: counter!(RECONNECTS, "id" => id.clone()),
            rejected: RejectReason::ALL
                .map(|r| counter!(FRAMES_REJECTED, "id" => id.clone(), "reason" => r.as_str())),
            last_state: None,
            looking_since: None,
            connected: BTreeSet::new(),
            ever_connected: BTreeSet::new(),
        }
    }

    /// An event drained from the peer, `elapsed` since the node started.
    pub(crate) fn peer_event(&mut self, event: &Event, elapsed: Duration) {
        match event {
            Event::StateChanged(s) => {
                if s.state == ServerState::Looking && self.last_state != Some(ServerState::Looking)
                {
                    self.elections.increment(1);
                    self.looking_since = Some(elapsed);
                }
                self.last_state = Some(s.state);
                self.status(s);
            }
            Event::Decided(d) => {
                self.elected[d.by.index()].increment(1);
                if let Some(since) = self.looking_since.take() {
                    let took = elapsed.saturating_sub(since).as_secs_f64();
                    self.duration.record(took);
                    self.last_duration.set(took);
                }
            }
            Event::Established { .. } | Event::Persist(_) | Event::LostLeader { .. } => {}
        }
    }

    /// The peer's status after a wake-up: the round moves without a state
    /// change while a LOOKING server adopts newer rounds.
    pub(crate) fn status(&self, s: &Status) {
        self.state.set(f64::from(s.state.to_wire()));
        self.round.set(s.round as f64);
        self.epoch.set(s.peer_epoch as f64);
    }

    /// A connection change or a rejection of the transport.
    pub(crate) fn transport_event(&mut self, event: &TransportEvent) {
        match event {
            TransportEvent::Connected { peer, .. } => {
                self.connected.insert(*peer);
                if !self.ever_connected.insert(*peer) {
                    self.reconnects.increment(1);
                }
            }
            TransportEvent::Disconnected(peer) => {
                self.connected.remove(peer);
            }
            TransportEvent::Rejected { reason, .. } => {
                self.rejected[reason.index()].increment(1);
            }
            TransportEvent::Message { .. } => return,
        }
        self.connected_peers.set(self.connected.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use testkit::TestRecorder;

    use super::*;
    use crate::peer::Decision;
    use crate::types::Vote;

    fn status(state: ServerState, round: u64, epoch: u64) -> Event {
        Event::StateChanged(Status {
            id: 7,
            state,
            leader: (state != ServerState::Looking).then_some(3),
            round,
            peer_epoch: epoch,
            zxid: 0,
            serving: false,
        })
    }

    fn decided(by: DecidedBy, round: u64) -> Event {
        Event::Decided(Decision {
            round,
            vote: Vote::new(3, 0, 0),
            state: ServerState::Following,
            supporters: BTreeSet::from([3, 7]),
            by,
        })
    }

    const ID: [(&str, &str); 1] = [("id", "7")];

    #[test]
    fn elections_decisions_and_durations_follow_the_peer_events() {
        let recorder = TestRecorder::new();
        let mut m = recorder.scope(|| NodeMetrics::new(7));
        let ms = Duration::from_millis;
        let by = |b: &str| recorder.counter(LEADER_ELECTED, &[("id", "7"), ("by", b)]);
        assert_eq!(recorder.counter(ELECTIONS, &ID), 0, "registered at zero");

        m.peer_event(&status(ServerState::Looking, 1, 0), ms(0));
        assert_eq!(recorder.counter(ELECTIONS, &ID), 1);
        assert_eq!(recorder.gauge(STATE, &ID), Some(0.0));
        assert_eq!(recorder.gauge(ROUND, &ID), Some(1.0));
        m.peer_event(&decided(DecidedBy::Quorum, 1), ms(250));
        m.peer_event(&status(ServerState::Following, 1, 0), ms(250));
        assert_eq!(by("quorum"), 1);
        assert_eq!(recorder.gauge(ELECTION_LAST_DURATION, &ID), Some(0.25));
        assert_eq!(recorder.gauge(STATE, &ID), Some(1.0));
        // Established: the same state, a new epoch.
        m.peer_event(
            &Event::Established {
                leader: 3,
                epoch: 1,
            },
            ms(260),
        );
        m.peer_event(&status(ServerState::Following, 1, 1), ms(260));
        assert_eq!(recorder.gauge(EPOCH, &ID), Some(1.0));
        assert_eq!(recorder.counter(ELECTIONS, &ID), 1);

        // The leader is lost: a second election, concluded another way.
        m.peer_event(&Event::LostLeader { reason: "test" }, ms(1000));
        m.peer_event(&status(ServerState::Looking, 2, 1), ms(1000));
        assert_eq!(recorder.counter(ELECTIONS, &ID), 2);
        // A newer round adopted while LOOKING moves the round gauge, not
        // the election count.
        m.status(&Status {
            id: 7,
            state: ServerState::Looking,
            leader: None,
            round: 5,
            peer_epoch: 1,
            zxid: 0,
            serving: false,
        });
        assert_eq!(recorder.gauge(ROUND, &ID), Some(5.0));
        m.peer_event(&status(ServerState::Looking, 5, 1), ms(1010));
        assert_eq!(
            recorder.counter(ELECTIONS, &ID),
            2,
            "still the same election"
        );
        m.peer_event(&decided(DecidedBy::OutOfElection, 5), ms(1500));
        m.peer_event(&status(ServerState::Leading, 5, 1), ms(1500));
        assert_eq!(
            (by("quorum"), by("in_election"), by("out_of_election")),
            (1, 0, 1)
        );
        assert_eq!(recorder.gauge(ELECTION_LAST_DURATION, &ID), Some(0.5));
        assert_eq!(recorder.gauge(STATE, &ID), Some(2.0));
        assert_eq!(recorder.counter_sum(LEADER_ELECTED), 2);

        m.peer_event(&status(ServerState::Observing, 5, 1), ms(1600));
        assert_eq!(recorder.gauge(STATE, &ID), Some(3.0));
    }

    #[test]
    fn connections_reconnects_and_rejections_follow_the_transport() {
        let recorder = TestRecorder::new();
        let mut m = recorder.scope(|| NodeMetrics::new(7));
        let up = |peer| TransportEvent::Connected {
            peer,
            outbound: true,
        };
        m.transport_event(&up(1));
        m.transport_event(&up(2));
        assert_eq!(recorder.gauge(CONNECTED_PEERS, &ID), Some(2.0));
        assert_eq!(recorder.counter(RECONNECTS, &ID), 0, "first connections");
        m.transport_event(&TransportEvent::Disconnected(1));
        assert_eq!(recorder.gauge(CONNECTED_PEERS, &ID), Some(1.0));
        m.transport_event(&up(1));
        assert_eq!(recorder.counter(RECONNECTS, &ID), 1);
        assert_eq!(recorder.gauge(CONNECTED_PEERS, &ID), Some(2.0));

        for (reason, times) in [
            (RejectReason::Malformed, 3),
            (RejectReason::Version, 1),
            (RejectReason::TooLarge, 2),
            (RejectReason::UnknownPeer, 1),
            (RejectReason::Handshake, 4),
        ] {
            for _ in 0..times {
                m.transport_event(&TransportEvent::Rejected {
                    from: None,
                    reason,
                    error: "x".into(),
                });
            }
            assert_eq!(
                recorder.counter(FRAMES_REJECTED, &[("id", "7"), ("reason", reason.as_str())]),
                times,
                "{reason:?}"
            );
        }
        assert_eq!(recorder.counter_sum(FRAMES_REJECTED), 11);
    }
}
