//! Messages between servers and their versioned wire format.
//!
//! Every message travels as one frame: a big-endian `u32` payload length,
//! then the payload: a format version byte ([`WIRE_VERSION`]), a kind byte
//! and fixed-size big-endian fields. Decoding checks the version, the kind,
//! every enumerated value and the exact length, and returns
//! [`Error::MalformedFrame`] (never panics) on anything else.

use crate::error::{Error, Result};
use crate::types::{Epoch, Round, ServerId, ServerState, Vote, Zxid};

/// The wire-format version this build writes and reads.
pub const WIRE_VERSION: u8 = 1;

/// The largest payload any message of this version needs (a `FollowerInfo`).
pub const MAX_MESSAGE_LEN: usize = 2 + 5 * 8;

/// A fast-leader-election notification (ZooKeeper's `Notification`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Notification {
    /// The sender's state.
    pub state: ServerState,
    /// The sender's vote: its proposal while LOOKING, its leader otherwise.
    pub vote: Vote,
    /// The sender's election round (`electionEpoch`).
    pub round: Round,
}

/// Everything one server sends another.
///
/// Besides election notifications, a leader and its learners exchange the
/// messages of Zab's discovery and synchronisation phases, reduced to what
/// confirming a leader needs: a leader is *established* only once a quorum
/// has accepted its new epoch (`LeaderInfo`/`AckEpoch`) and made it current
/// (`NewLeader`/`AckNewLeader`). `session` is the learner's own counter,
/// echoed by the leader, so that a message of an earlier session is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Message {
    /// An election notification.
    Notification(Notification),
    /// Learner to leader: "I follow you", with its epochs (`FOLLOWERINFO`).
    FollowerInfo {
        /// The leader the learner follows.
        leader: ServerId,
        /// The learner's session counter.
        session: u64,
        /// The learner's accepted epoch.
        accepted_epoch: Epoch,
        /// The learner's current epoch.
        current_epoch: Epoch,
        /// The learner's last zxid.
        zxid: Zxid,
    },
    /// Leader to learner: the new epoch (`LEADERINFO`).
    LeaderInfo {
        /// Echo of the learner's session.
        session: u64,
        /// The epoch the leader proposes.
        epoch: Epoch,
    },
    /// Learner to leader: epoch accepted (`ACKEPOCH`), with its state summary.
    AckEpoch {
        /// The learner's session.
        session: u64,
        /// The accepted epoch.
        epoch: Epoch,
        /// The learner's current epoch.
        current_epoch: Epoch,
        /// The learner's last zxid.
        zxid: Zxid,
    },
    /// Leader to learner: make the epoch current (`NEWLEADER`).
    NewLeader {
        /// Echo of the learner's session.
        session: u64,
        /// The new epoch.
        epoch: Epoch,
    },
    /// Learner to leader: epoch made current (`ACK` of `NEWLEADER`).
    AckNewLeader {
        /// The learner's session.
        session: u64,
        /// The epoch.
        epoch: Epoch,
    },
    /// Leader heartbeat.
    Ping {
        /// Echo of the learner's session.
        session: u64,
        /// The leader's epoch.
        epoch: Epoch,
    },
    /// Learner heartbeat answer.
    PingAck {
        /// The learner's session.
        session: u64,
        /// The epoch.
        epoch: Epoch,
    },
}

const KIND_NOTIFICATION: u8 = 1;
const KIND_FOLLOWER_INFO: u8 = 2;
const KIND_LEADER_INFO: u8 = 3;
const KIND_ACK_EPOCH: u8 = 4;
const KIND_NEW_LEADER: u8 = 5;
const KIND_ACK_NEW_LEADER: u8 = 6;
const KIND_PING: u8 = 7;
const KIND_PING_ACK: u8 = 8;

impl Message {
    /// Appends the payload (version, kind, fields) to `out`.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        out.push(WIRE_VERSION);
        match *self {
            Message::Notification(n) => {
                // ZooKeeper's field order: state, leader, zxid, round, peer epoch.
                out.push(KIND_NOTIFICATION);
                out.push(n.state.to_wire());
                for w in [n.vote.leader, n.vote.zxid, n.round, n.vote.peer_epoch] {
                    out.extend_from_slice(&w.to_be_bytes());
                }
            }
            Message::FollowerInfo {
                leader,
                session,
                accepted_epoch,
                current_epoch,
                zxid,
            } => words(
                out,
                KIND_FOLLOWER_INFO,
                &[leader, session, accepted_epoch, current_epoch, zxid],
            ),
            Message::LeaderInfo { session, epoch } => {
                words(out, KIND_LEADER_INFO, &[session, epoch]);
            }
            Message::AckEpoch {
                session,
                epoch,
                current_epoch,
                zxid,
            } => words(out, KIND_ACK_EPOCH, &[session, epoch, current_epoch, zxid]),
            Message::NewLeader { session, epoch } => words(out, KIND_NEW_LEADER, &[session, epoch]),
            Message::AckNewLeader { session, epoch } => {
                words(out, KIND_ACK_NEW_LEADER, &[session, epoch]);
            }
            Message::Ping { session, epoch } => words(out, KIND_PING, &[session, epoch]),
            Message::PingAck { session, epoch } => words(out, KIND_PING_ACK, &[session, epoch]),
        }
    }

    /// The payload as a new buffer.
    #[must_use]
    pub fn to_payload(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MAX_MESSAGE_LEN);
        self.encode_payload(&mut v);
        v
    }

    /// A whole frame: length prefix and payload.
    #[must_use]
    pub fn to_frame(&self) -> Vec<u8> {
        let payload = self.to_payload();
        let mut v = Vec::with_capacity(4 + payload.len());
        // Payloads are at most MAX_MESSAGE_LEN bytes, far below u32::MAX.
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(&payload);
        v
    }

    /// Decodes one payload. Any deviation from the format is an error.
    pub fn decode_payload(payload: &[u8]) -> Result<Message> {
        let (&version, rest) = payload
            .split_first()
            .ok_or_else(|| Error::MalformedFrame("empty payload".into()))?;
        if version != WIRE_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let (&kind, body) = rest
            .split_first()
            .ok_or_else(|| Error::MalformedFrame("no message kind".into()))?;
        let read = |body: &[u8], n: usize| -> Result<Vec<u64>> {
            if body.len() != n * 8 {
                return Err(Error::MalformedFrame(format!(
                    "kind {kind} needs {} body bytes, got {}",
                    n * 8,
                    body.len()
                )));
            }
            Ok(body
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    u64::from_be_bytes(b)
                })
                .collect())
        };
        Ok(match kind {
            KIND_NOTIFICATION => {
                let (&state, body) = body
                    .split_first()
                    .ok_or_else(|| Error::MalformedFrame("notification without a state".into()))?;
                let state = ServerState::from_wire(state).ok_or_else(|| {
                    Error::MalformedFrame(format!("unknown server state {state}"))
                })?;
                let w = read(body, 4)?;
                Message::Notification(Notification {
                    state,
                    vote: Vote::new(w[0], w[1], w[3]),
                    round: w[2],
                })
            }
            KIND_FOLLOWER_INFO => {
                let w = read(body, 5)?;
                Message::FollowerInfo {
                    leader: w[0],
                    session: w[1],
                    accepted_epoch: w[2],
                    current_epoch: w[3],
                    zxid: w[4],
                }
            }
            KIND_LEADER_INFO => {
                let w = read(body, 2)?;
                Message::LeaderInfo {
                    session: w[0],
                    epoch: w[1],
                }
            }
            KIND_ACK_EPOCH => {
                let w = read(body, 4)?;
                Message::AckEpoch {
                    session: w[0],
                    epoch: w[1],
                    current_epoch: w[2],
                    zxid: w[3],
                }
            }
            KIND_NEW_LEADER => {
                let w = read(body, 2)?;
                Message::NewLeader {
                    session: w[0],
                    epoch: w[1],
                }
            }
            KIND_ACK_NEW_LEADER => {
                let w = read(body, 2)?;
                Message::AckNewLeader {
                    session: w[0],
                    epoch: w[1],
                }
            }
            KIND_PING => {
                let w = read(body, 2)?;
                Message::Ping {
                    session: w[0],
                    epoch: w[1],
                }
            }
            KIND_PING_ACK => {
                let w = read(body, 2)?;
                Message::PingAck {
                    session: w[0],
                    epoch: w[1],
                }
            }
            other => {
                return Err(Error::MalformedFrame(format!(
                    "unknown message kind {other}"
                )));
            }
        })
    }
}

fn words(out: &mut Vec<u8>, kind: u8, ws: &[u64]) {
    out.push(kind);
    for w in ws {
        out.extend_from_slice(&w.to_be_bytes());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A field value, biased to the edges where arithmetic overflows.
    fn word() -> impl Strategy<Value = u64> {
        prop_oneof![any::<u64>(), 0..4u64, (u64::MAX - 3)..=u64::MAX]
    }

    /// Any message, with every field drawn from [`word`].
    pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
        let state = prop_oneof![
            Just(ServerState::Looking),
            Just(ServerState::Following),
            Just(ServerState::Leading),
            Just(ServerState::Observing)
        ];
        let n = (state, word(), word(), word(), word()).prop_map(|(state, l, z, r, e)| {
            Message::Notification(Notification {
                state,
                vote: Vote::new(l, z, e),
                round: r,
            })
        });
        let w = || prop::array::uniform5(word());
        prop_oneof![
            n,
            w().prop_map(|w| Message::FollowerInfo {
                leader: w[0],
                session: w[1],
                accepted_epoch: w[2],
                current_epoch: w[3],
                zxid: w[4]
            }),
            w().prop_map(|w| Message::LeaderInfo {
                session: w[0],
                epoch: w[1]
            }),
            w().prop_map(|w| Message::AckEpoch {
                session: w[0],
                epoch: w[1],
                current_epoch: w[2],
                zxid: w[3]
            }),
            w().prop_map(|w| Message::NewLeader {
                session: w[0],
                epoch: w[1]
            }),
            w().prop_map(|w| Message::AckNewLeader {
                session: w[0],
                epoch: w[1]
            }),
            w().prop_map(|w| Message::Ping {
                session: w[0],
                epoch: w[1]
            }),
            w().prop_map(|w| Message::PingAck {
                session: w[0],
                epoch: w[1]
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(m in arb_message()) {
            let p = m.to_payload();
            prop_assert!(p.len() <= MAX_MESSAGE_LEN);
            prop_assert_eq!(Message::decode_payload(&p).unwrap(), m);
            let f = m.to_frame();
            prop_assert_eq!(u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize, p.len());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode_payload(&bytes);
        }

        #[test]
        fn truncated_or_extended_payloads_are_errors(m in arb_message(), cut in 1usize..8, extra in 1usize..4) {
            let p = m.to_payload();
            let short = &p[..p.len().saturating_sub(cut)];
            prop_assert!(Message::decode_payload(short).is_err());
            let mut long = p.clone();
            long.extend(std::iter::repeat_n(0u8, extra));
            prop_assert!(Message::decode_payload(&long).is_err());
        }
    }

    #[test]
    fn bad_version_kind_and_state_are_named() {
        let mut p = Message::Ping {
            session: 1,
            epoch: 2,
        }
        .to_payload();
        p[0] = 9;
        assert!(matches!(
            Message::decode_payload(&p),
            Err(Error::UnsupportedVersion(9))
        ));
        let mut p = Message::Ping {
            session: 1,
            epoch: 2,
        }
        .to_payload();
        p[1] = 200;
        assert!(
            Message::decode_payload(&p)
                .unwrap_err()
                .to_string()
                .contains("kind 200")
        );
        let mut p = Message::Notification(Notification {
            state: ServerState::Looking,
            vote: Vote::new(1, 2, 3),
            round: 4,
        })
        .to_payload();
        p[2] = 7;
        assert!(
            Message::decode_payload(&p)
                .unwrap_err()
                .to_string()
                .contains("state 7")
        );
    }
}
