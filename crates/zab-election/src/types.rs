//! Identifiers, server states and votes.

use std::fmt;

/// A server's `myid`.
pub type ServerId = u64;
/// A ZooKeeper transaction id: the epoch in the high 32 bits, a counter below.
pub type Zxid = u64;
/// An epoch of the atomic broadcast (the *peer epoch* of a vote).
pub type Epoch = u64;
/// An election round, ZooKeeper's `logicalclock` (the *election epoch*).
pub type Round = u64;

/// The four states of a ZooKeeper server, with ZooKeeper's wire ordinals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerState {
    /// Looking for a leader: an election is running.
    Looking,
    /// Following the elected leader.
    Following,
    /// Leading the ensemble.
    Leading,
    /// Observing: a non-voting learner of the elected leader.
    Observing,
}

impl ServerState {
    /// ZooKeeper's name of the state, e.g. `"LOOKING"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Looking => "LOOKING",
            ServerState::Following => "FOLLOWING",
            ServerState::Leading => "LEADING",
            ServerState::Observing => "OBSERVING",
        }
    }

    /// The ordinal ZooKeeper puts on the wire.
    #[must_use]
    pub fn to_wire(self) -> u8 {
        match self {
            ServerState::Looking => 0,
            ServerState::Following => 1,
            ServerState::Leading => 2,
            ServerState::Observing => 3,
        }
    }

    /// The state of a wire ordinal, `None` for an unknown one.
    #[must_use]
    pub fn from_wire(b: u8) -> Option<Self> {
        Some(match b {
            0 => ServerState::Looking,
            1 => ServerState::Following,
            2 => ServerState::Leading,
            3 => ServerState::Observing,
            _ => return None,
        })
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a server votes (participant) or only learns (observer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LearnerType {
    /// A voting member.
    #[default]
    Participant,
    /// A non-voting member: never counted in a quorum, never elected.
    Observer,
}

/// A vote: the proposed leader with the credentials it was proposed on.
///
/// The field order makes the derived `Ord` exactly ZooKeeper's total order
/// (`totalOrderPredicate`): peer epoch first, then zxid, then server id. The
/// peer epoch is the candidate's current epoch of the atomic broadcast, not
/// the election round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vote {
    /// The candidate's current (accepted and acknowledged) epoch.
    pub peer_epoch: Epoch,
    /// The candidate's last logged zxid.
    pub zxid: Zxid,
    /// The candidate's id.
    pub leader: ServerId,
}

impl Vote {
    /// A vote for `leader` with its credentials.
    #[must_use]
    pub fn new(leader: ServerId, zxid: Zxid, peer_epoch: Epoch) -> Self {
        Vote {
            peer_epoch,
            zxid,
            leader,
        }
    }
}

impl fmt::Display for Vote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(leader {}, zxid {:#x}, peer epoch {})",
            self.leader, self.zxid, self.peer_epoch
        )
    }
}
