//! ZooKeeper's fast leader election as a sans-IO state machine, with TCP nodes.
//!
//! The core, [`Peer`], is ZooKeeper's `FastLeaderElection` (3.8) as a
//! single-threaded state machine with no sockets, no tasks and no clock:
//!
//! * votes are ordered by (peer epoch, zxid, server id) — [`Vote`]'s `Ord`;
//!   the peer epoch is the candidate's current epoch, distinct from the
//!   election [`Round`] (ZooKeeper's `logicalclock`);
//! * a newer round is adopted and clears the received votes, an older one
//!   is ignored (and answered, so that the sender catches up);
//! * a quorum of identical votes concludes the election only after
//!   [`Config::finalize_wait`] (200 ms) without a better vote;
//! * with no notification for a while a server sends its vote again, the
//!   interval doubling from 200 ms up to a cap of 60 s;
//! * a server joining an established ensemble follows the leader that a
//!   quorum reports and that itself reports LEADING (out-of-election votes
//!   and `checkLeader`);
//! * a server of weight 0 (see [`Hierarchical`]) is never elected; quorums
//!   are pluggable through [`QuorumVerifier`].
//!
//! An election alone can conclude two different leaders in one round when
//! messages are late (ZooKeeper relies on Zab to sort that out; the model
//! checker in `tests/model_check.rs` shows such a trace). So a [`Peer`] also
//! confirms its leader the way Zab does: the leader proposes a new epoch, a
//! quorum accepts it and makes it current, then pings keep the quorum; a
//! learner that loses its leader, or a leader that loses its quorum, looks
//! again. **At most one leader is established per epoch**, under any loss,
//! duplication, delay, partition and crash, provided the driver makes each
//! [`Event::Persist`] durable before it sends the messages polled after it,
//! and restarts a server from that state. What the election itself gives:
//! a server that concludes from a quorum of LOOKING votes elects a vote at
//! least as good as the credentials of every server of that quorum.
//!
//! Neither is proved: the simulator checks both on every event of thousands
//! of seeded runs with faults, and the model checker checks the first on
//! every reachable state of 3-server runs within fault and round bounds
//! (the crate's README says exactly which).
//!
//! Around the core: [`sim`] (a seeded in-memory network with raft-rs's
//! verbs), and behind the `node` feature the tokio [`transport`] (one TCP
//! connection per pair, versioned frames), the [`node`] driver and the
//! `zab-node` binary.
//!
//! # Quick example
//!
//! Three servers elect the one with the largest zxid; messages are carried
//! by hand here, as a driver would carry them over the network.
//!
//! ```
//! use std::time::Duration;
//! use zab_election::{Config, Majority, Peer, Persistent, ServerState};
//!
//! let quorum = Majority::new([1, 2, 3]).unwrap();
//! let zxids = [5, 9, 7];
//! let mut peers: Vec<Peer<Majority>> = (1..=3)
//!     .map(|id| {
//!         let disk = Persistent { zxid: zxids[id as usize - 1], ..Persistent::default() };
//!         Peer::new(Config::new(id), quorum.clone(), disk, Duration::ZERO).unwrap()
//!     })
//!     .collect();
//! let mut now = Duration::ZERO;
//! while peers.iter().any(|p| !p.is_serving()) {
//!     now += Duration::from_millis(10);
//!     for p in peers.iter_mut() {
//!         p.tick(now);
//!     }
//!     for i in 0..peers.len() {
//!         let from = peers[i].id();
//!         while let Some((to, msg)) = peers[i].poll_message() {
//!             let target = &mut peers[to as usize - 1];
//!             target.tick(now);
//!             target.step(from, msg).unwrap();
//!         }
//!     }
//! }
//! assert_eq!(peers[1].state(), ServerState::Leading); // zxid 9 wins
//! assert_eq!(peers[0].current_vote().leader, 2);
//! ```
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod config;
mod error;
mod message;
mod peer;
mod quorum;
mod types;

#[cfg(feature = "node")]
pub mod cli;
#[cfg(feature = "node")]
pub mod metrics;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "node")]
pub mod transport;

pub use config::Config;
pub use error::{Error, Result};
pub use message::{MAX_MESSAGE_LEN, Message, Notification, WIRE_VERSION};
pub use peer::{DecidedBy, Decision, Event, Peer, Persistent, Status};
pub use quorum::{Hierarchical, Majority, Quorum, QuorumVerifier};
pub use types::{Epoch, LearnerType, Round, ServerId, ServerState, Vote, Zxid};

#[cfg(feature = "node")]
pub use tokio;
