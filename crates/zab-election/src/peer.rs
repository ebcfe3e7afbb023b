//! The sans-IO state machine of one server: fast leader election plus the
//! confirmation of the elected leader.
//!
//! [`Peer`] is ZooKeeper's `FastLeaderElection.lookForLeader` and its
//! `WorkerReceiver` folded into one single-threaded state machine, together
//! with the part of Zab that confirms a leader (epoch proposal, `NEWLEADER`,
//! pings). It never touches a socket or a clock: the driver feeds it
//! messages with [`Peer::step`], the passage of time with [`Peer::tick`],
//! lost connections with [`Peer::peer_disconnected`], and drains what it
//! wants done with [`Peer::poll_message`] and [`Peer::poll_event`].
//!
//! Time is a [`Duration`] since an origin the driver picks (its start, say);
//! it must never go backwards. `step` acts at the time of the latest `tick`,
//! so a driver calls `tick(now)` whenever it wakes up, before `step`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::message::{Message, Notification};
use crate::quorum::QuorumVerifier;
use crate::types::{Epoch, LearnerType, Round, ServerId, ServerState, Vote, Zxid};

/// In an `AckEpoch`, the current epoch that says "I had already accepted
/// this epoch: do not count me" (ZooKeeper sends -1).
pub(crate) const NOT_AN_ACK: Epoch = u64::MAX;

/// The latest time a peer keeps: later times given by the driver are taken
/// as this one, so that adding any configured interval (validated to at
/// most about a week) cannot overflow a `Duration`.
const LATEST: Duration = Duration::from_secs(1 << 62);

/// What a server keeps on disk across restarts (ZooKeeper's `acceptedEpoch`
/// and `currentEpoch` files, and the last logged zxid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Persistent {
    /// The last logged zxid.
    pub zxid: Zxid,
    /// The highest epoch this server promised to follow.
    pub accepted_epoch: Epoch,
    /// The epoch this server last made current; the peer epoch of its votes.
    pub current_epoch: Epoch,
}

/// A snapshot of a server for display: one line of `zab-node`'s output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    /// The server's id.
    pub id: ServerId,
    /// Its state.
    pub state: ServerState,
    /// The leader it follows or is; `None` while LOOKING.
    pub leader: Option<ServerId>,
    /// Its election round (`logicalclock`).
    pub round: Round,
    /// Its current epoch.
    pub peer_epoch: Epoch,
    /// Its last zxid.
    pub zxid: Zxid,
    /// Leader: a quorum has made its epoch current. Learner: it has.
    pub serving: bool,
}

/// How an election was concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// A quorum of LOOKING votes agreed and no better vote came within the
    /// finalize wait.
    Quorum,
    /// A quorum of FOLLOWING/LEADING notifications of this round named the
    /// leader, and the leader said it is LEADING.
    InElection,
    /// Joining an established ensemble: a quorum reports the same leader
    /// from any round (ZOOKEEPER-1732), and the leader says it is LEADING.
    OutOfElection,
}

/// The end of one election at one server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The round the server concluded in.
    pub round: Round,
    /// The winning vote.
    pub vote: Vote,
    /// The server's new state.
    pub state: ServerState,
    /// The voters whose votes formed the quorum.
    pub supporters: BTreeSet<ServerId>,
    /// Which rule concluded the election.
    pub by: DecidedBy,
}

/// Something the driver should know or do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The server's status changed (state, leader, or the epoch once serving).
    StateChanged(Status),
    /// An election ended at this server.
    Decided(Decision),
    /// A leader: a quorum has made `epoch` current. A learner: it made
    /// `epoch` current under `leader`.
    Established {
        /// The leader.
        leader: ServerId,
        /// The new epoch.
        epoch: Epoch,
    },
    /// The durable state changed: write it to disk before sending any
    /// message polled after this event.
    Persist(Persistent),
    /// The server gave up its leader or its leadership and looks again.
    LostLeader {
        /// Why.
        reason: &'static str,
    },
}

/// A vote as received, with ZooKeeper's `Vote.equals` in [`Received::same`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Received {
    vote: Vote,
    round: Round,
    state: ServerState,
}

impl Received {
    /// Votes of LOOKING servers agree on everything, round included; votes of
    /// servers out of the election agree on leader and peer epoch only
    /// (ZOOKEEPER-1805: their zxid and round may legitimately differ).
    fn same(&self, other: &Received) -> bool {
        if self.state == ServerState::Looking || other.state == ServerState::Looking {
            self.vote == other.vote && self.round == other.round
        } else {
            self.vote.leader == other.vote.leader && self.vote.peer_epoch == other.vote.peer_epoch
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Learner {
    session: u64,
    accepted_epoch: Epoch,
    current_epoch: Epoch,
    zxid: Zxid,
    acked_epoch: bool,
    acked_new_leader: bool,
    expires: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LeadPhase {
    /// Waiting for a quorum of `FollowerInfo`s to choose the epoch.
    Discovery,
    /// Waiting for a quorum of `AckEpoch`s.
    Epoch {
        epoch: Epoch,
        acked: BTreeSet<ServerId>,
    },
    /// Waiting for a quorum of `AckNewLeader`s.
    NewLeader {
        epoch: Epoch,
        acked: BTreeSet<ServerId>,
    },
    /// Established.
    Serving { epoch: Epoch },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Lead {
    vote_set: BTreeSet<ServerId>,
    phase: LeadPhase,
    learners: BTreeMap<ServerId, Learner>,
    /// Until established: give up at this time. Serving: next ping.
    deadline: Duration,
    /// ZOOKEEPER-3109: from this time on, a LOOKING voter of `vote_set` ends
    /// the leadership attempt.
    quit_on_looking_after: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FollowPhase {
    Connecting,
    EpochAccepted(Epoch),
    Synced(Epoch),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Follow {
    leader: ServerId,
    session: u64,
    phase: FollowPhase,
    /// What our `AckEpoch` said as current epoch, for resending it.
    acked_epoch_with: Epoch,
    deadline: Duration,
    resend: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct EarlyInfo {
    session: u64,
    accepted_epoch: Epoch,
    current_epoch: Epoch,
    zxid: Zxid,
}

/// One server's election and leader-confirmation state machine.
///
/// It is ZooKeeper's `FastLeaderElection.lookForLeader` and its
/// `WorkerReceiver` folded into one single-threaded state machine, with the
/// part of Zab that confirms a leader (epoch proposal, `NEWLEADER`, pings).
/// It never touches a socket or a clock: the driver feeds it messages with
/// [`Peer::step`], the passage of time with [`Peer::tick`], lost connections
/// with [`Peer::peer_disconnected`], and drains what it wants done with
/// [`Peer::poll_event`] (first: a [`Event::Persist`] must be durable before
/// later messages leave) and [`Peer::poll_message`].
///
/// Time is a [`Duration`] since an origin the driver picks (its start, say)
/// and must never go backwards. `step` acts at the time of the latest
/// `tick`, so a driver calls `tick(now)` whenever it wakes up, before
/// `step`, and again at [`Peer::next_deadline`].
///
/// The type is `Clone + Eq + Hash` so that model checkers can store its
/// states.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer<Q> {
    config: Config,
    quorum: Q,
    voters: Vec<ServerId>,
    disk: Persistent,
    state: ServerState,
    now: Duration,

    // Election (lookForLeader).
    logical_clock: Round,
    proposal: Vote,
    /// An observer's initial proposal, below every real vote.
    proposal_is_bottom: bool,
    recvset: BTreeMap<ServerId, Received>,
    outofelection: BTreeMap<ServerId, Received>,
    not_timeout: Duration,
    poll_deadline: Duration,
    finalizing: Option<(Duration, BTreeSet<ServerId>)>,
    /// `QuorumPeer.currentVote`: the last election's result.
    current_vote: Vote,
    current_vote_round: Round,

    // Leader confirmation.
    lead: Option<Lead>,
    follow: Option<Follow>,
    sessions: u64,
    early: BTreeMap<ServerId, EarlyInfo>,
    /// The highest accepted epoch any learner reported (volatile).
    epoch_hint: Epoch,
    /// The last LOOKING notification of each server that arrived while we
    /// were not looking; replayed when we look again.
    deferred: BTreeMap<ServerId, Notification>,

    loopback: VecDeque<Notification>,
    outbox: VecDeque<(ServerId, Message)>,
    events: VecDeque<Event>,
}

impl<Q: QuorumVerifier> Peer<Q> {
    /// A server that starts LOOKING at time `now`, in round 1.
    ///
    /// Fails if the config is invalid, if `config.id` is not a member of
    /// `quorum`, if its learner type disagrees with the quorum, or if the
    /// persisted current epoch exceeds the accepted one.
    pub fn new(config: Config, quorum: Q, disk: Persistent, now: Duration) -> Result<Self> {
        config.validate()?;
        let now = now.min(LATEST);
        let id = config.id;
        if !quorum.is_member(id) {
            return Err(Error::NotAMember { id });
        }
        let is_voter = quorum.is_voter(id);
        if is_voter != (config.learner_type == LearnerType::Participant) {
            return Err(Error::InvalidConfig {
                field: "learner_type",
                value: format!("{:?}", config.learner_type),
                reason: "participants must be voters of the quorum and observers must not",
            });
        }
        if disk.current_epoch > disk.accepted_epoch {
            return Err(Error::InvalidConfig {
                field: "current_epoch",
                value: disk.current_epoch.to_string(),
                reason: "must not exceed the accepted epoch",
            });
        }
        let voters = quorum.voters();
        let init = Vote::new(id, disk.zxid, disk.current_epoch);
        let mut peer = Peer {
            not_timeout: config.min_notification_interval,
            config,
            quorum,
            voters,
            disk,
            state: ServerState::Looking,
            now,
            logical_clock: 0,
            proposal: init,
            proposal_is_bottom: !is_voter,
            recvset: BTreeMap::new(),
            outofelection: BTreeMap::new(),
            poll_deadline: now,
            finalizing: None,
            current_vote: init,
            current_vote_round: 0,
            lead: None,
            follow: None,
            sessions: 0,
            early: BTreeMap::new(),
            epoch_hint: 0,
            deferred: BTreeMap::new(),
            loopback: VecDeque::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        };
        peer.look_for_leader();
        peer.drain_loopback();
        Ok(peer)
    }

    /// This server's id.
    #[must_use]
    pub fn id(&self) -> ServerId {
        self.config.id
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The quorum verifier.
    #[must_use]
    pub fn quorum(&self) -> &Q {
        &self.quorum
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The election round (`logicalclock`).
    #[must_use]
    pub fn round(&self) -> Round {
        self.logical_clock
    }

    /// The current proposal while LOOKING.
    #[must_use]
    pub fn proposal(&self) -> Vote {
        self.proposal
    }

    /// The last election's result (`QuorumPeer.getCurrentVote`).
    #[must_use]
    pub fn current_vote(&self) -> Vote {
        self.current_vote
    }

    /// The durable state.
    #[must_use]
    pub fn persistent(&self) -> Persistent {
        self.disk
    }

    /// The time of the latest `tick`.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Whether the leader is established: as leader, a quorum made its epoch
    /// current; as learner, this server did.
    #[must_use]
    pub fn is_serving(&self) -> bool {
        match (&self.lead, &self.follow) {
            (Some(l), _) => matches!(l.phase, LeadPhase::Serving { .. }),
            (_, Some(f)) => matches!(f.phase, FollowPhase::Synced(_)),
            _ => false,
        }
    }

    /// A snapshot for display.
    #[must_use]
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            state: self.state,
            leader: (self.state != ServerState::Looking).then_some(self.current_vote.leader),
            round: self.logical_clock,
            peer_epoch: self.disk.current_epoch,
            zxid: self.disk.zxid,
            serving: self.is_serving(),
        }
    }

    /// When the driver must call [`Peer::tick`] next, at the latest.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Duration> {
        Some(match self.state {
            ServerState::Looking => match &self.finalizing {
                Some((d, _)) => *d,
                None => self.poll_deadline,
            },
            ServerState::Leading => self.lead.as_ref()?.deadline,
            ServerState::Following | ServerState::Observing => {
                let f = self.follow.as_ref()?;
                match f.phase {
                    FollowPhase::Synced(_) => f.deadline,
                    _ => f.deadline.min(f.resend),
                }
            }
        })
    }

    /// The next message to send, as `(destination, message)`.
    #[must_use]
    pub fn poll_message(&mut self) -> Option<(ServerId, Message)> {
        self.outbox.pop_front()
    }

    /// The next event. Drain events before messages: a [`Event::Persist`]
    /// must be durable before the messages that follow it are sent.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Advances time to `now` (earlier values are ignored) and fires every
    /// timer due by then. Times past 2^62 seconds count as that.
    pub fn tick(&mut self, now: Duration) {
        let now = now.min(LATEST);
        if now > self.now {
            self.now = now;
        }
        // Every timeout handler moves its deadline past `now`, or changes
        // state, so this loop ends; the bound guards against a bug.
        for _ in 0..64 {
            match self.next_deadline() {
                Some(d) if d <= self.now => {
                    self.on_timeout();
                    self.drain_loopback();
                }
                _ => break,
            }
        }
    }

    /// Handles one message from server `from`, at the time of the last tick.
    ///
    /// Messages from non-members are ignored. The only error is a message
    /// that claims to come from this server itself.
    pub fn step(&mut self, from: ServerId, msg: Message) -> Result<()> {
        if from == self.config.id {
            return Err(Error::MessageFromSelf { id: from });
        }
        if !self.quorum.is_member(from) {
            tracing::debug!(from, "ignoring a message from a non-member");
            return Ok(());
        }
        match msg {
            Message::Notification(n) => self.receive_notification(from, n),
            Message::FollowerInfo {
                leader,
                session,
                accepted_epoch,
                current_epoch,
                zxid,
            } => self.on_follower_info(
                from,
                leader,
                EarlyInfo {
                    session,
                    accepted_epoch,
                    current_epoch,
                    zxid,
                },
            ),
            Message::LeaderInfo { session, epoch } => self.on_leader_info(from, session, epoch),
            Message::AckEpoch {
                session,
                epoch,
                current_epoch,
                zxid,
            } => self.on_ack_epoch(from, session, epoch, current_epoch, zxid),
            Message::NewLeader { session, epoch } => self.on_new_leader(from, session, epoch),
            Message::AckNewLeader { session, epoch } => {
                self.on_ack_new_leader(from, session, epoch);
            }
            Message::Ping { session, epoch } => self.on_ping(from, session, epoch),
            Message::PingAck { session, epoch } => self.on_ping_ack(from, session, epoch),
        }
        self.drain_loopback();
        Ok(())
    }

    /// The connection to `peer` broke. A learner whose leader it was looks
    /// again at once, as a ZooKeeper follower does when its socket fails; a
    /// leader forgets the learner.
    pub fn peer_disconnected(&mut self, peer: ServerId) {
        if let Some(f) = &self.follow {
            if f.leader == peer {
                self.back_to_looking("connection to the leader lost");
            }
        } else if let Some(lead) = &mut self.lead {
            lead.learners.remove(&peer);
            if let LeadPhase::Serving { .. } = lead.phase
                && !self.synced_quorum()
            {
                self.back_to_looking("lost the quorum of synced followers");
            }
        }
        self.drain_loopback();
    }

    /// Moves the time origin forward by `origin`: every stored time drops by
    /// `origin` (saturating at zero) and later calls pass `now - origin`.
    /// States that differ only in absolute time become equal, which keeps a
    /// model checker's state space finite.
    pub fn rebase_clock(&mut self, origin: Duration) {
        let sub = |t: &mut Duration| *t = t.saturating_sub(origin);
        sub(&mut self.now);
        sub(&mut self.poll_deadline);
        if let Some((d, _)) = &mut self.finalizing {
            sub(d);
        }
        if let Some(l) = &mut self.lead {
            sub(&mut l.deadline);
            if let Some(q) = &mut l.quit_on_looking_after {
                sub(q);
            }
            for learner in l.learners.values_mut() {
                sub(&mut learner.expires);
            }
        }
        if let Some(f) = &mut self.follow {
            sub(&mut f.deadline);
            sub(&mut f.resend);
        }
    }

    // ----- election -------------------------------------------------------

    /// The start of `lookForLeader`: a new round with our own vote.
    fn look_for_leader(&mut self) {
        self.state = ServerState::Looking;
        self.lead = None;
        self.follow = None;
        self.early.clear();
        // Rounds are adopted from the wire, so a corrupt notification can
        // carry u64::MAX: stay there rather than overflow.
        self.logical_clock = self.logical_clock.saturating_add(1);
        let (init, bottom) = self.init_vote();
        self.proposal = init;
        self.proposal_is_bottom = bottom;
        self.recvset.clear();
        self.outofelection.clear();
        self.finalizing = None;
        self.not_timeout = self.config.min_notification_interval;
        self.poll_deadline = self.now + self.not_timeout;
        self.emit_status();
        self.send_notifications();
        // Votes that reached us while we still followed or led are processed
        // now, as if they had just arrived (a delay the protocol tolerates).
        // ZooKeeper drops them and waits for the sender's next timeout.
        for (from, n) in std::mem::take(&mut self.deferred) {
            self.drain_loopback();
            if self.state == ServerState::Looking {
                self.look(from, n);
            }
        }
    }

    fn init_vote(&self) -> (Vote, bool) {
        let bottom = self.config.learner_type == LearnerType::Observer;
        (
            Vote::new(self.config.id, self.disk.zxid, self.disk.current_epoch),
            bottom,
        )
    }

    /// `totalOrderPredicate`: is `new` better than `cur`? A candidate of
    /// weight 0 never is.
    fn better(&self, new: &Vote, cur: &Vote, cur_is_bottom: bool) -> bool {
        if self.quorum.weight(new.leader) == 0 {
            return false;
        }
        cur_is_bottom || new > cur
    }

    fn send_notifications(&mut self) {
        let n = Notification {
            state: ServerState::Looking,
            vote: self.proposal,
            round: self.logical_clock,
        };
        for i in 0..self.voters.len() {
            let sid = self.voters[i];
            self.send(sid, Message::Notification(n));
        }
    }

    fn send(&mut self, to: ServerId, msg: Message) {
        if to == self.config.id {
            if let Message::Notification(n) = msg {
                self.loopback.push_back(n);
            }
        } else {
            self.outbox.push_back((to, msg));
        }
    }

    fn drain_loopback(&mut self) {
        while let Some(n) = self.loopback.pop_front() {
            if self.state == ServerState::Looking {
                self.look(self.config.id, n);
            }
        }
    }

    /// `WorkerReceiver.run` followed by one turn of `lookForLeader`'s loop.
    fn receive_notification(&mut self, from: ServerId, n: Notification) {
        if !self.quorum.is_voter(from) {
            // An observer asks: answer with our current vote right away.
            let reply = Notification {
                state: self.state,
                vote: self.current_vote,
                round: self.logical_clock,
            };
            self.send(from, Message::Notification(reply));
            return;
        }
        if self.state == ServerState::Looking {
            if n.state == ServerState::Looking && n.round < self.logical_clock {
                let reply = Notification {
                    state: ServerState::Looking,
                    vote: self.proposal,
                    round: self.logical_clock,
                };
                self.send(from, Message::Notification(reply));
            }
            self.look(from, n);
        } else if n.state == ServerState::Looking {
            self.report_looking(from);
            if self.state == ServerState::Looking {
                // The leader just gave up (ZOOKEEPER-3109); the notification
                // now counts as an election message.
                self.look(from, n);
                return;
            }
            let reply = Notification {
                state: self.state,
                vote: self.current_vote,
                round: self.current_vote_round,
            };
            self.send(from, Message::Notification(reply));
            self.deferred.insert(from, n);
        }
    }

    /// One notification through `lookForLeader`, including its finalize wait.
    fn look(&mut self, from: ServerId, n: Notification) {
        if let Some((_, acks)) = &self.finalizing {
            if self.better(&n.vote, &self.proposal, self.proposal_is_bottom) {
                // A better vote ends the wait; it is processed as usual.
                self.finalizing = None;
            } else {
                // Not better: dropped, and the wait starts over.
                let acks = acks.clone();
                self.finalizing = Some((self.now + self.config.finalize_wait, acks));
                return;
            }
        }
        // A notification arrived: the poll timeout starts over.
        self.poll_deadline = self.now + self.not_timeout;
        if !self.quorum.is_voter(from) || !self.quorum.is_voter(n.vote.leader) {
            tracing::debug!(
                from,
                leader = n.vote.leader,
                "ignoring a vote of or for a non-voter"
            );
            return;
        }
        match n.state {
            ServerState::Looking => {
                if n.round > self.logical_clock {
                    self.logical_clock = n.round;
                    self.recvset.clear();
                    let (init, bottom) = self.init_vote();
                    if self.better(&n.vote, &init, bottom) {
                        self.proposal = n.vote;
                        self.proposal_is_bottom = false;
                    } else {
                        self.proposal = init;
                        self.proposal_is_bottom = bottom;
                    }
                    self.send_notifications();
                } else if n.round < self.logical_clock {
                    return;
                } else if self.better(&n.vote, &self.proposal, self.proposal_is_bottom) {
                    self.proposal = n.vote;
                    self.proposal_is_bottom = false;
                    self.send_notifications();
                }
                self.recvset.insert(
                    from,
                    Received {
                        vote: n.vote,
                        round: n.round,
                        state: n.state,
                    },
                );
                let mine = Received {
                    vote: self.proposal,
                    round: self.logical_clock,
                    state: ServerState::Looking,
                };
                let acks = self.vote_set(&self.recvset, &mine);
                if self.quorum.contains_quorum(&acks) {
                    self.finalizing = Some((self.now + self.config.finalize_wait, acks));
                }
            }
            ServerState::Observing => {}
            ServerState::Following | ServerState::Leading => {
                let theirs = Received {
                    vote: n.vote,
                    round: n.round,
                    state: n.state,
                };
                if n.round == self.logical_clock {
                    self.recvset.insert(from, theirs);
                    let acks = self.vote_set(&self.recvset, &theirs);
                    if self.quorum.contains_quorum(&acks)
                        && self.check_leader(&self.recvset, n.vote.leader, n.round)
                    {
                        self.conclude(n.vote, n.round, acks, DecidedBy::InElection);
                        return;
                    }
                }
                self.outofelection.insert(from, theirs);
                let acks = self.vote_set(&self.outofelection, &theirs);
                if self.quorum.contains_quorum(&acks)
                    && self.check_leader(&self.outofelection, n.vote.leader, n.round)
                {
                    self.logical_clock = n.round;
                    self.conclude(n.vote, n.round, acks, DecidedBy::OutOfElection);
                }
            }
        }
    }

    /// `getVoteTracker`: the voters whose recorded vote equals `vote`.
    fn vote_set(
        &self,
        votes: &BTreeMap<ServerId, Received>,
        vote: &Received,
    ) -> BTreeSet<ServerId> {
        votes
            .iter()
            .filter(|(sid, v)| self.quorum.is_voter(**sid) && vote.same(v))
            .map(|(sid, _)| *sid)
            .collect()
    }

    /// `checkLeader`: another server may be followed only if it said it is
    /// LEADING; this server may lead only in the round it is in
    /// (ZOOKEEPER-1514, the backward election round).
    fn check_leader(
        &self,
        votes: &BTreeMap<ServerId, Received>,
        leader: ServerId,
        round: Round,
    ) -> bool {
        if leader != self.config.id {
            votes
                .get(&leader)
                .is_some_and(|v| v.state == ServerState::Leading)
        } else {
            self.logical_clock == round
        }
    }

    fn learning_state(&self) -> ServerState {
        match self.config.learner_type {
            LearnerType::Participant => ServerState::Following,
            LearnerType::Observer => ServerState::Observing,
        }
    }

    fn conclude(
        &mut self,
        vote: Vote,
        round: Round,
        supporters: BTreeSet<ServerId>,
        by: DecidedBy,
    ) {
        self.finalizing = None;
        self.loopback.clear();
        let state = if vote.leader == self.config.id {
            ServerState::Leading
        } else {
            self.learning_state()
        };
        self.state = state;
        self.current_vote = vote;
        self.current_vote_round = round;
        self.events.push_back(Event::Decided(Decision {
            round,
            vote,
            state,
            supporters: supporters.clone(),
            by,
        }));
        self.emit_status();
        if state == ServerState::Leading {
            self.start_leading(supporters);
        } else {
            self.start_following(vote.leader);
        }
    }

    fn on_timeout(&mut self) {
        let now = self.now;
        match self.state {
            ServerState::Looking => {
                if let Some((d, acks)) = &self.finalizing {
                    if *d <= now {
                        let acks = acks.clone();
                        self.conclude(self.proposal, self.logical_clock, acks, DecidedBy::Quorum);
                    }
                    return;
                }
                // No notification for a whole interval: send our vote again
                // and back off (ZooKeeper's notTimeout doubling to a cap).
                self.send_notifications();
                self.not_timeout =
                    (self.not_timeout * 2).min(self.config.max_notification_interval);
                self.poll_deadline = now + self.not_timeout;
            }
            ServerState::Leading => self.lead_timeout(),
            ServerState::Following | ServerState::Observing => self.follow_timeout(),
        }
    }

    fn back_to_looking(&mut self, reason: &'static str) {
        tracing::info!(id = self.config.id, reason, "looking for a leader again");
        self.events.push_back(Event::LostLeader { reason });
        self.look_for_leader();
    }

    fn emit_status(&mut self) {
        let s = self.status();
        self.events.push_back(Event::StateChanged(s));
    }

    fn persist(&mut self) {
        self.events.push_back(Event::Persist(self.disk));
    }

    // ----- leader ---------------------------------------------------------

    fn start_leading(&mut self, vote_set: BTreeSet<ServerId>) {
        let now = self.now;
        let mut learners = BTreeMap::new();
        for (sid, e) in std::mem::take(&mut self.early) {
            learners.insert(
                sid,
                Learner {
                    session: e.session,
                    accepted_epoch: e.accepted_epoch,
                    current_epoch: e.current_epoch,
                    zxid: e.zxid,
                    acked_epoch: false,
                    acked_new_leader: false,
                    expires: now + self.config.sync_timeout(),
                },
            );
        }
        self.lead = Some(Lead {
            vote_set,
            phase: LeadPhase::Discovery,
            learners,
            deadline: now + self.config.init_timeout(),
            quit_on_looking_after: self.config.max_time_to_wait_for_epoch.map(|t| now + t),
        });
        self.check_discovery();
    }

    /// The learners matching `which`, with their sessions.
    fn learners_where(&self, which: impl Fn(&Learner) -> bool) -> Vec<(ServerId, u64)> {
        self.lead.as_ref().map_or_else(Vec::new, |lead| {
            lead.learners
                .iter()
                .filter(|(_, l)| which(l))
                .map(|(s, l)| (*s, l.session))
                .collect()
        })
    }

    fn send_each(&mut self, targets: Vec<(ServerId, u64)>, msg: impl Fn(u64) -> Message) {
        for (sid, session) in targets {
            self.send(sid, msg(session));
        }
    }

    /// `getEpochToPropose`: once a quorum (with us) has reported, propose
    /// one more than the highest accepted epoch among them.
    fn check_discovery(&mut self) {
        let Some(lead) = &self.lead else { return };
        if lead.phase != LeadPhase::Discovery {
            return;
        }
        let mut set: BTreeSet<ServerId> = lead.learners.keys().copied().collect();
        set.insert(self.config.id);
        if !self.quorum.contains_quorum(&set) {
            return;
        }
        let max = lead
            .learners
            .values()
            .map(|l| l.accepted_epoch)
            .chain([self.disk.accepted_epoch, self.epoch_hint])
            .max()
            .unwrap_or(0);
        let targets = self.learners_where(|_| true);
        let epoch = max.saturating_add(1);
        self.disk.accepted_epoch = epoch;
        self.persist();
        if let Some(lead) = &mut self.lead {
            lead.phase = LeadPhase::Epoch {
                epoch,
                acked: BTreeSet::from([self.config.id]),
            };
        }
        self.send_each(targets, |session| Message::LeaderInfo { session, epoch });
        self.check_epoch_acks();
    }

    fn check_epoch_acks(&mut self) {
        let Some(lead) = &self.lead else { return };
        let LeadPhase::Epoch { epoch, acked } = &lead.phase else {
            return;
        };
        if !self.quorum.contains_quorum(acked) {
            return;
        }
        let epoch = *epoch;
        let targets = self.learners_where(|l| l.acked_epoch);
        if let Some(lead) = &mut self.lead {
            lead.phase = LeadPhase::NewLeader {
                epoch,
                acked: BTreeSet::from([self.config.id]),
            };
        }
        self.send_each(targets, |session| Message::NewLeader { session, epoch });
        self.check_new_leader_acks();
    }

    fn check_new_leader_acks(&mut self) {
        let Some(lead) = &self.lead else { return };
        let LeadPhase::NewLeader { epoch, acked } = &lead.phase else {
            return;
        };
        if !self.quorum.contains_quorum(acked) {
            return;
        }
        let epoch = *epoch;
        let targets = self.learners_where(|l| l.acked_new_leader);
        let next_ping = self.now + self.config.ping_interval();
        if let Some(lead) = &mut self.lead {
            lead.phase = LeadPhase::Serving { epoch };
            lead.deadline = next_ping;
        }
        self.disk.current_epoch = epoch;
        // `updateElectionVote`: answer late joiners with the new epoch.
        self.current_vote.peer_epoch = epoch;
        self.persist();
        self.events.push_back(Event::Established {
            leader: self.config.id,
            epoch,
        });
        self.emit_status();
        self.send_each(targets, |session| Message::Ping { session, epoch });
    }

    fn on_follower_info(&mut self, from: ServerId, leader: ServerId, info: EarlyInfo) {
        if leader != self.config.id {
            return;
        }
        self.epoch_hint = self.epoch_hint.max(info.accepted_epoch);
        let chosen = match self.lead.as_ref().map(|l| &l.phase) {
            Some(
                LeadPhase::Epoch { epoch, .. }
                | LeadPhase::NewLeader { epoch, .. }
                | LeadPhase::Serving { epoch },
            ) => Some(*epoch),
            _ => None,
        };
        if chosen.is_some_and(|e| info.accepted_epoch > e) {
            // The learner promised a later epoch and can never join ours.
            // ZooKeeper leaves it out (looping) until the next election; we
            // start that election now, and will propose above its epoch.
            self.back_to_looking("a learner accepted a later epoch than ours");
            return;
        }
        let now = self.now;
        let sync_timeout = self.config.sync_timeout();
        let Some(lead) = &mut self.lead else {
            // Not leading (yet): keep it for when this election ends.
            if self.state == ServerState::Looking {
                self.early.insert(from, info);
            }
            return;
        };
        let known = lead
            .learners
            .get(&from)
            .is_some_and(|l| l.session == info.session);
        if !known {
            lead.learners.insert(
                from,
                Learner {
                    session: info.session,
                    accepted_epoch: info.accepted_epoch,
                    current_epoch: info.current_epoch,
                    zxid: info.zxid,
                    acked_epoch: false,
                    acked_new_leader: false,
                    expires: now + sync_timeout,
                },
            );
        }
        match lead.phase {
            LeadPhase::Discovery => self.check_discovery(),
            LeadPhase::Epoch { epoch, .. }
            | LeadPhase::NewLeader { epoch, .. }
            | LeadPhase::Serving { epoch } => self.send(
                from,
                Message::LeaderInfo {
                    session: info.session,
                    epoch,
                },
            ),
        }
    }

    fn on_ack_epoch(
        &mut self,
        from: ServerId,
        session: u64,
        epoch: Epoch,
        current: Epoch,
        zxid: Zxid,
    ) {
        let ours = (self.disk.current_epoch, self.disk.zxid);
        let Some(lead) = &mut self.lead else { return };
        let Some(learner) = lead.learners.get_mut(&from) else {
            return;
        };
        let phase_epoch = match lead.phase {
            LeadPhase::Discovery => return,
            LeadPhase::Epoch { epoch, .. }
            | LeadPhase::NewLeader { epoch, .. }
            | LeadPhase::Serving { epoch } => epoch,
        };
        if learner.session != session || epoch != phase_epoch {
            return;
        }
        let counts = current != NOT_AN_ACK;
        if counts && (current, zxid) > ours {
            // `waitForEpochAck`: a follower is ahead of the leader.
            self.back_to_looking("a follower is ahead of the leader");
            return;
        }
        if counts {
            learner.current_epoch = current;
        }
        learner.zxid = zxid;
        learner.acked_epoch = true;
        match &mut lead.phase {
            LeadPhase::Epoch { acked, .. } => {
                if counts {
                    acked.insert(from);
                }
                self.check_epoch_acks();
            }
            LeadPhase::NewLeader { .. } | LeadPhase::Serving { .. } => {
                self.send(from, Message::NewLeader { session, epoch });
            }
            LeadPhase::Discovery => {}
        }
    }

    fn on_ack_new_leader(&mut self, from: ServerId, session: u64, epoch: Epoch) {
        let now = self.now;
        let sync_timeout = self.config.sync_timeout();
        let Some(lead) = &mut self.lead else { return };
        let Some(learner) = lead.learners.get_mut(&from) else {
            return;
        };
        if learner.session != session || !learner.acked_epoch {
            return;
        }
        match &mut lead.phase {
            LeadPhase::NewLeader { epoch: e, acked } if *e == epoch => {
                learner.acked_new_leader = true;
                learner.expires = now + sync_timeout;
                acked.insert(from);
                self.check_new_leader_acks();
            }
            LeadPhase::Serving { epoch: e } if *e == epoch => {
                learner.acked_new_leader = true;
                learner.expires = now + sync_timeout;
                self.send(from, Message::Ping { session, epoch });
            }
            _ => {}
        }
    }

    fn on_ping_ack(&mut self, from: ServerId, session: u64, epoch: Epoch) {
        let now = self.now;
        let sync_timeout = self.config.sync_timeout();
        let Some(lead) = &mut self.lead else { return };
        if let (LeadPhase::Serving { epoch: e }, Some(l)) =
            (&lead.phase, lead.learners.get_mut(&from))
            && *e == epoch
            && l.session == session
            && l.acked_new_leader
        {
            l.expires = now + sync_timeout;
        }
    }

    /// A voter that elected us is LOOKING again (ZOOKEEPER-3109).
    fn report_looking(&mut self, from: ServerId) {
        let now = self.now;
        let Some(lead) = &self.lead else { return };
        if matches!(lead.phase, LeadPhase::Serving { .. }) || !lead.vote_set.contains(&from) {
            return;
        }
        if lead.quit_on_looking_after.is_some_and(|t| now >= t) {
            self.back_to_looking("a voter changed its mind while the epoch was pending");
        }
    }

    fn synced_quorum(&self) -> bool {
        let Some(lead) = &self.lead else { return false };
        let mut set: BTreeSet<ServerId> = lead
            .learners
            .iter()
            .filter(|(_, l)| l.acked_new_leader && l.expires > self.now)
            .map(|(s, _)| *s)
            .collect();
        set.insert(self.config.id);
        self.quorum.contains_quorum(&set)
    }

    fn lead_timeout(&mut self) {
        let now = self.now;
        let Some(lead) = &self.lead else {
            self.back_to_looking("leading without a leader session");
            return;
        };
        let LeadPhase::Serving { epoch } = lead.phase else {
            self.back_to_looking("no quorum made the new epoch current in time");
            return;
        };
        if !self.synced_quorum() {
            self.back_to_looking("lost the quorum of synced followers");
            return;
        }
        let targets = self.learners_where(|l| l.acked_new_leader);
        if let Some(lead) = &mut self.lead {
            lead.deadline = now + self.config.ping_interval();
        }
        self.send_each(targets, |session| Message::Ping { session, epoch });
    }

    // ----- learner --------------------------------------------------------

    fn start_following(&mut self, leader: ServerId) {
        self.sessions += 1;
        let now = self.now;
        self.follow = Some(Follow {
            leader,
            session: self.sessions,
            phase: FollowPhase::Connecting,
            acked_epoch_with: NOT_AN_ACK,
            deadline: now + self.config.init_timeout(),
            resend: now + self.config.ping_interval(),
        });
        self.send_follower_info();
    }

    fn send_follower_info(&mut self) {
        let Some(f) = self.follow else { return };
        let msg = Message::FollowerInfo {
            leader: f.leader,
            session: f.session,
            accepted_epoch: self.disk.accepted_epoch,
            current_epoch: self.disk.current_epoch,
            zxid: self.disk.zxid,
        };
        self.send(f.leader, msg);
    }

    /// The follow session if `from` is its leader and `session` is current.
    fn my_leader(&self, from: ServerId, session: u64) -> Option<Follow> {
        self.follow
            .filter(|f| f.leader == from && f.session == session)
    }

    fn on_leader_info(&mut self, from: ServerId, session: u64, epoch: Epoch) {
        let Some(f) = self.my_leader(from, session) else {
            return;
        };
        if epoch < self.disk.accepted_epoch {
            self.back_to_looking("the leader's epoch is older than the accepted one");
            return;
        }
        let current_epoch = match f.phase {
            FollowPhase::Connecting if epoch > self.disk.accepted_epoch => {
                self.disk.accepted_epoch = epoch;
                self.persist();
                self.disk.current_epoch
            }
            // Already accepted (from this or another leader): answer, but
            // the answer must not count towards the epoch's quorum.
            FollowPhase::Connecting => NOT_AN_ACK,
            FollowPhase::EpochAccepted(_) => return,
            FollowPhase::Synced(_) => return,
        };
        if let Some(f) = &mut self.follow {
            f.phase = FollowPhase::EpochAccepted(epoch);
            f.acked_epoch_with = current_epoch;
        }
        let ack = Message::AckEpoch {
            session,
            epoch,
            current_epoch,
            zxid: self.disk.zxid,
        };
        self.send(from, ack);
    }

    fn on_new_leader(&mut self, from: ServerId, session: u64, epoch: Epoch) {
        let Some(f) = self.my_leader(from, session) else {
            return;
        };
        match f.phase {
            FollowPhase::EpochAccepted(e) | FollowPhase::Synced(e) if e == epoch => {}
            _ => return,
        }
        if f.phase == FollowPhase::EpochAccepted(epoch) {
            self.disk.current_epoch = epoch;
            self.current_vote.peer_epoch = epoch;
            self.persist();
            let now = self.now;
            if let Some(f) = &mut self.follow {
                f.phase = FollowPhase::Synced(epoch);
                f.deadline = now + self.config.sync_timeout();
            }
            self.events.push_back(Event::Established {
                leader: from,
                epoch,
            });
            self.emit_status();
        }
        self.send(from, Message::AckNewLeader { session, epoch });
    }

    fn on_ping(&mut self, from: ServerId, session: u64, epoch: Epoch) {
        let Some(f) = self.my_leader(from, session) else {
            return;
        };
        if f.phase != FollowPhase::Synced(epoch) {
            return;
        }
        let deadline = self.now + self.config.sync_timeout();
        if let Some(f) = &mut self.follow {
            f.deadline = deadline;
        }
        self.send(from, Message::PingAck { session, epoch });
    }

    fn follow_timeout(&mut self) {
        let now = self.now;
        let Some(f) = self.follow else {
            self.back_to_looking("following without a leader session");
            return;
        };
        if f.deadline <= now {
            let reason = match f.phase {
                FollowPhase::Synced(_) => "no ping from the leader in time",
                _ => "not synced with the leader in time",
            };
            self.back_to_looking(reason);
            return;
        }
        if let Some(f) = &mut self.follow {
            f.resend = now + self.config.ping_interval();
        }
        match f.phase {
            FollowPhase::Connecting => self.send_follower_info(),
            FollowPhase::EpochAccepted(epoch) => {
                let ack = Message::AckEpoch {
                    session: f.session,
                    epoch,
                    current_epoch: f.acked_epoch_with,
                    zxid: self.disk.zxid,
                };
                self.send(f.leader, ack);
            }
            FollowPhase::Synced(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::{Hierarchical, Majority};

    const MS: Duration = Duration::from_millis(1);

    fn peer(id: ServerId, n: u64, disk: Persistent) -> Peer<Majority> {
        Peer::new(
            Config::new(id),
            Majority::new(1..=n).unwrap(),
            disk,
            Duration::ZERO,
        )
        .unwrap()
    }

    fn drain(p: &mut Peer<Majority>) -> (Vec<(ServerId, Message)>, Vec<Event>) {
        let mut evs = Vec::new();
        while let Some(e) = p.poll_event() {
            evs.push(e);
        }
        let mut msgs = Vec::new();
        while let Some(m) = p.poll_message() {
            msgs.push(m);
        }
        (msgs, evs)
    }

    fn note(
        state: ServerState,
        leader: ServerId,
        zxid: Zxid,
        round: Round,
        epoch: Epoch,
    ) -> Message {
        Message::Notification(Notification {
            state,
            vote: Vote::new(leader, zxid, epoch),
            round,
        })
    }

    /// ZooKeeper's `FLEPredicateTest.testPredicate`, vector for vector:
    /// `predicate(newId, newZxid, newEpoch, curId, curZxid, curEpoch)`.
    #[test]
    fn fle_predicate_test_vectors() {
        let p = peer(1, 5, Persistent::default());
        let pred = |new_id, new_zxid, new_epoch, cur_id, cur_zxid, cur_epoch| {
            p.better(
                &Vote::new(new_id, new_zxid, new_epoch),
                &Vote::new(cur_id, cur_zxid, cur_epoch),
                false,
            )
        };
        // Lower epoch must return false.
        assert!(!pred(4, 0, 0, 3, 0, 2));
        // Later epoch.
        assert!(pred(1, 0, 1, 2, 0, 0));
        // Higher zxid.
        assert!(pred(1, 1, 0, 2, 0, 0));
        // Higher id.
        assert!(pred(2, 1, 0, 1, 1, 0));
        // And the converses.
        assert!(pred(3, 0, 2, 4, 0, 0));
        assert!(!pred(1, 0, 0, 2, 0, 1));
        assert!(!pred(1, 1, 0, 1, 1, 0), "a vote is not better than itself");
    }

    /// ZooKeeper's vectors use ids 0..2; ours are 1-based members, and an id
    /// that is no member weighs 0 and never wins: the weight check of
    /// `totalOrderPredicate`.
    #[test]
    fn non_member_or_zero_weight_candidates_never_win() {
        let p = peer(1, 3, Persistent::default());
        assert!(!p.better(&Vote::new(9, 100, 100), &Vote::new(1, 0, 0), false));
        let q = Hierarchical::new([(1, vec![1, 2, 3])], [(3, 0)]).unwrap();
        let p = Peer::new(Config::new(1), q, Persistent::default(), Duration::ZERO).unwrap();
        assert!(!p.better(&Vote::new(3, 100, 100), &Vote::new(1, 0, 0), false));
        assert!(p.better(&Vote::new(2, 0, 0), &Vote::new(1, 0, 0), false));
    }

    /// ZOOKEEPER-1419: the order must be total. The buggy predicate compared
    /// ids whenever the zxids were equal, whatever the epochs, so two votes
    /// could each beat the other and a 5-node election never settled.
    #[test]
    fn vote_order_is_total_unlike_zookeeper_1419() {
        let buggy = |n: Vote, c: Vote| {
            n.peer_epoch > c.peer_epoch
                || (n.peer_epoch == c.peer_epoch && n.zxid > c.zxid)
                || (n.zxid == c.zxid && n.leader > c.leader)
        };
        let a = Vote::new(1, 5, 1);
        let b = Vote::new(2, 5, 0);
        assert!(buggy(a, b) && buggy(b, a), "the 1419 predicate has a cycle");
        assert!(a > b && (b <= a));
    }

    #[test]
    fn starts_looking_in_round_one_and_votes_for_itself_to_every_voter() {
        let mut p = peer(
            2,
            3,
            Persistent {
                zxid: 7,
                ..Persistent::default()
            },
        );
        assert_eq!((p.state(), p.round()), (ServerState::Looking, 1));
        let (msgs, evs) = drain(&mut p);
        let to: Vec<_> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(to, vec![1, 3], "self-notification is looped back, not sent");
        assert!(
            matches!(msgs[0].1, Message::Notification(n) if n.vote == Vote::new(2, 7, 0) && n.round == 1)
        );
        assert!(matches!(evs[0], Event::StateChanged(s) if s.state == ServerState::Looking));
    }

    #[test]
    fn newer_round_is_adopted_and_clears_votes_older_is_answered_and_ignored() {
        let mut p = peer(1, 3, Persistent::default());
        drain(&mut p);
        // A better vote in a newer round: adopt round and vote, re-broadcast.
        p.step(2, note(ServerState::Looking, 2, 0, 5, 0)).unwrap();
        assert_eq!(p.round(), 5);
        assert_eq!(p.proposal().leader, 2);
        let (msgs, _) = drain(&mut p);
        assert_eq!(msgs.len(), 2);
        // An older round from 3: answered with our round, not counted.
        p.step(3, note(ServerState::Looking, 3, 0, 4, 0)).unwrap();
        let (msgs, _) = drain(&mut p);
        assert_eq!(msgs.len(), 1);
        assert!(
            matches!(msgs[0], (3, Message::Notification(n)) if n.round == 5 && n.vote.leader == 2)
        );
        assert_eq!(p.proposal().leader, 2, "older round ignored");
        // In a newer round, a worse vote than our own credentials: own vote.
        p.step(3, note(ServerState::Looking, 1, 0, 6, 0)).unwrap();
        assert_eq!((p.round(), p.proposal().leader), (6, 1));
    }

    #[test]
    fn quorum_concludes_only_after_a_quiet_finalize_wait() {
        let mut p = peer(3, 3, Persistent::default());
        drain(&mut p);
        p.tick(10 * MS);
        p.step(1, note(ServerState::Looking, 3, 0, 1, 0)).unwrap();
        // {1, 3} vote 3: a quorum, but the wait has only begun.
        assert_eq!(p.state(), ServerState::Looking);
        assert_eq!(p.next_deadline(), Some(210 * MS));
        // A not-better notification restarts the wait.
        p.tick(100 * MS);
        p.step(2, note(ServerState::Looking, 2, 0, 1, 0)).unwrap();
        assert_eq!(p.next_deadline(), Some(300 * MS));
        p.tick(299 * MS);
        assert_eq!(p.state(), ServerState::Looking);
        p.tick(300 * MS);
        assert_eq!(p.state(), ServerState::Leading);
        let (_, evs) = drain(&mut p);
        assert!(evs.iter().any(|e| matches!(e, Event::Decided(d) if d.by == DecidedBy::Quorum && d.supporters == BTreeSet::from([1, 3]))));
    }

    #[test]
    fn a_better_vote_during_the_finalize_wait_reopens_the_election() {
        let mut p = peer(2, 3, Persistent::default());
        drain(&mut p);
        p.step(1, note(ServerState::Looking, 2, 0, 1, 0)).unwrap();
        assert!(p.finalizing.is_some());
        p.tick(50 * MS);
        p.step(3, note(ServerState::Looking, 3, 0, 1, 0)).unwrap();
        assert_eq!(p.proposal().leader, 3);
        // {2, 3} now agree on 3 (our own new vote is looped back): a new wait.
        let (_, acks) = p.finalizing.clone().unwrap();
        assert_eq!(acks, BTreeSet::from([2, 3]));
        p.tick(250 * MS);
        assert_eq!(p.state(), ServerState::Following);
        assert_eq!(p.current_vote().leader, 3);
    }

    #[test]
    fn notification_timeout_doubles_up_to_the_cap() {
        let mut p = peer(1, 3, Persistent::default());
        drain(&mut p);
        let mut t = Duration::ZERO;
        let mut intervals = Vec::new();
        for _ in 0..12 {
            let d = p.next_deadline().unwrap();
            intervals.push(d - t);
            t = d;
            p.tick(t);
            let (msgs, _) = drain(&mut p);
            assert_eq!(msgs.len(), 2, "the vote is sent again on every timeout");
        }
        let ms: Vec<u64> = intervals.iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(
            ms,
            vec![
                200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000, 60000
            ]
        );
    }

    /// ZOOKEEPER-1514 (`FLEBackwardElectionRoundTest`): notifications of an
    /// old round saying "we follow you" must not make a server lead in a
    /// later round.
    #[test]
    fn backward_election_round_does_not_make_a_leader() {
        let mut p = peer(1, 3, Persistent::default());
        let old = |p: &mut Peer<Majority>| {
            p.step(2, note(ServerState::Following, 1, 0, 1, 0)).unwrap();
            p.step(3, note(ServerState::Following, 1, 0, 1, 0)).unwrap();
        };
        old(&mut p);
        assert_eq!(
            p.state(),
            ServerState::Leading,
            "round 1: legitimately leads"
        );
        p.back_to_looking("test");
        assert_eq!(p.round(), 2);
        old(&mut p);
        assert_eq!(
            p.state(),
            ServerState::Looking,
            "round 2: old votes must not elect us"
        );
    }

    /// Out-of-election votes: a quorum that follows 3, and 3 saying it
    /// leads, from an older round (ZOOKEEPER-1732's late joiner).
    #[test]
    fn joins_an_established_ensemble_from_any_round() {
        let mut p = peer(4, 5, Persistent::default());
        for _ in 0..6 {
            p.back_to_looking("test");
        }
        assert_eq!(p.round(), 7);
        p.step(1, note(ServerState::Following, 3, 0, 2, 1)).unwrap();
        p.step(2, note(ServerState::Following, 3, 0, 2, 1)).unwrap();
        assert_eq!(
            p.state(),
            ServerState::Looking,
            "no LEADING word from 3 yet"
        );
        p.step(3, note(ServerState::Leading, 3, 0, 2, 1)).unwrap();
        assert_eq!(p.state(), ServerState::Following);
        assert_eq!(p.current_vote().leader, 3);
        assert_eq!(p.round(), 2, "the round is set to the ensemble's");
        let (msgs, evs) = drain(&mut p);
        assert!(
            evs.iter()
                .any(|e| matches!(e, Event::Decided(d) if d.by == DecidedBy::OutOfElection))
        );
        assert!(
            msgs.iter()
                .any(|m| matches!(m, (3, Message::FollowerInfo { leader: 3, .. })))
        );
    }

    #[test]
    fn a_non_looking_server_answers_looking_ones_with_its_leader() {
        let mut p = peer(1, 3, Persistent::default());
        p.step(2, note(ServerState::Following, 1, 0, 1, 0)).unwrap();
        p.step(3, note(ServerState::Following, 1, 0, 1, 0)).unwrap();
        assert_eq!(p.state(), ServerState::Leading);
        drain(&mut p);
        p.step(2, note(ServerState::Looking, 2, 0, 9, 0)).unwrap();
        let (msgs, _) = drain(&mut p);
        assert!(
            matches!(msgs[..], [(2, Message::Notification(n))] if n.state == ServerState::Leading && n.vote.leader == 1 && n.round == 1)
        );
    }

    #[test]
    fn leader_confirmation_raises_the_epoch_once_a_quorum_made_it_current() {
        let mut l = peer(
            1,
            3,
            Persistent {
                zxid: 0,
                accepted_epoch: 4,
                current_epoch: 3,
            },
        );
        l.step(2, note(ServerState::Following, 1, 0, 1, 3)).unwrap();
        l.step(3, note(ServerState::Following, 1, 0, 1, 3)).unwrap();
        assert_eq!(l.state(), ServerState::Leading);
        drain(&mut l);
        l.step(
            2,
            Message::FollowerInfo {
                leader: 1,
                session: 7,
                accepted_epoch: 5,
                current_epoch: 3,
                zxid: 0,
            },
        )
        .unwrap();
        let (msgs, evs) = drain(&mut l);
        assert!(matches!(
            msgs[..],
            [(
                2,
                Message::LeaderInfo {
                    session: 7,
                    epoch: 6
                }
            )]
        ));
        assert!(evs.contains(&Event::Persist(Persistent {
            zxid: 0,
            accepted_epoch: 6,
            current_epoch: 3
        })));
        // A follower ahead of the leader makes it give up.
        let mut ahead = l.clone();
        ahead
            .step(
                2,
                Message::AckEpoch {
                    session: 7,
                    epoch: 6,
                    current_epoch: 4,
                    zxid: 0,
                },
            )
            .unwrap();
        assert_eq!(ahead.state(), ServerState::Looking);
        l.step(
            2,
            Message::AckEpoch {
                session: 7,
                epoch: 6,
                current_epoch: 3,
                zxid: 0,
            },
        )
        .unwrap();
        let (msgs, _) = drain(&mut l);
        assert!(matches!(
            msgs[..],
            [(
                2,
                Message::NewLeader {
                    session: 7,
                    epoch: 6
                }
            )]
        ));
        assert!(!l.is_serving());
        l.step(
            2,
            Message::AckNewLeader {
                session: 7,
                epoch: 6,
            },
        )
        .unwrap();
        assert!(l.is_serving());
        assert_eq!(l.status().peer_epoch, 6);
        assert_eq!(l.current_vote().peer_epoch, 6, "updateElectionVote");
        let (msgs, evs) = drain(&mut l);
        assert!(evs.contains(&Event::Established {
            leader: 1,
            epoch: 6
        }));
        assert!(matches!(
            msgs[..],
            [(
                2,
                Message::Ping {
                    session: 7,
                    epoch: 6
                }
            )]
        ));
        // No ping acks: the quorum is lost after syncLimit ticks.
        l.tick(Duration::from_secs(11));
        assert_eq!(l.state(), ServerState::Looking);
    }

    #[test]
    fn follower_rejects_an_older_epoch_and_ignores_other_sessions() {
        let mut f = peer(
            2,
            3,
            Persistent {
                zxid: 0,
                accepted_epoch: 5,
                current_epoch: 5,
            },
        );
        f.step(1, note(ServerState::Leading, 1, 0, 1, 5)).unwrap();
        f.step(3, note(ServerState::Following, 1, 0, 1, 5)).unwrap();
        assert_eq!(f.state(), ServerState::Following);
        f.step(
            1,
            Message::LeaderInfo {
                session: 99,
                epoch: 6,
            },
        )
        .unwrap();
        assert_eq!(f.persistent().accepted_epoch, 5, "other session ignored");
        f.step(
            1,
            Message::LeaderInfo {
                session: 1,
                epoch: 4,
            },
        )
        .unwrap();
        assert_eq!(f.state(), ServerState::Looking);
    }

    #[test]
    fn learner_looks_again_when_its_leader_disconnects_or_stays_silent() {
        let mut f = peer(2, 3, Persistent::default());
        f.step(1, note(ServerState::Leading, 1, 0, 1, 0)).unwrap();
        f.step(3, note(ServerState::Following, 1, 0, 1, 0)).unwrap();
        assert_eq!(f.state(), ServerState::Following);
        let mut g = f.clone();
        f.peer_disconnected(3);
        assert_eq!(f.state(), ServerState::Following);
        f.peer_disconnected(1);
        assert_eq!((f.state(), f.round()), (ServerState::Looking, 2));
        g.tick(Duration::from_secs(21));
        assert_eq!(
            g.state(),
            ServerState::Looking,
            "initLimit passed without sync"
        );
    }

    #[test]
    fn rejects_bad_set_ups_and_messages_from_itself() {
        let q = Majority::new([1, 2, 3]).unwrap();
        assert!(matches!(
            Peer::new(
                Config::new(4),
                q.clone(),
                Persistent::default(),
                Duration::ZERO
            ),
            Err(Error::NotAMember { id: 4 })
        ));
        let bad = Persistent {
            zxid: 0,
            accepted_epoch: 1,
            current_epoch: 2,
        };
        assert!(Peer::new(Config::new(1), q.clone(), bad, Duration::ZERO).is_err());
        let mut obs = Config::new(1);
        obs.learner_type = LearnerType::Observer;
        assert!(Peer::new(obs, q.clone(), Persistent::default(), Duration::ZERO).is_err());
        let mut p = peer(1, 3, Persistent::default());
        assert!(matches!(
            p.step(1, note(ServerState::Looking, 1, 0, 1, 0)),
            Err(Error::MessageFromSelf { id: 1 })
        ));
    }

    proptest::proptest! {
        /// Whatever members send, with any field values (round and epochs
        /// at `u64::MAX` included), in any order and at any pace, a peer
        /// neither panics nor stops having a next deadline.
        #[test]
        fn arbitrary_messages_never_panic(
            inputs in proptest::collection::vec(
                (2..=3u64, crate::message::tests::arb_message(), 0..3_000u64),
                0..40,
            )
        ) {
            let mut p = peer(1, 3, Persistent::default());
            let mut now = Duration::ZERO;
            for (from, msg, wait_ms) in inputs {
                now += Duration::from_millis(wait_ms);
                p.tick(now);
                p.step(from, msg).unwrap();
                p.peer_disconnected(from ^ 1);
                drain(&mut p);
                proptest::prop_assert!(p.next_deadline().is_some());
            }
        }
    }

    /// Time comes from the driver: an absurd one must not overflow the
    /// deadline arithmetic, whatever state the peer is in.
    #[test]
    fn absurd_times_do_not_overflow() {
        let mut p = Peer::new(
            Config::new(1),
            Majority::new(1..=3).unwrap(),
            Persistent::default(),
            Duration::MAX,
        )
        .unwrap();
        p.tick(Duration::MAX);
        p.step(2, note(ServerState::Following, 1, 0, 1, 0)).unwrap();
        p.step(3, note(ServerState::Following, 1, 0, 1, 0)).unwrap();
        assert_eq!(p.state(), ServerState::Leading);
        p.tick(Duration::MAX);
        assert!(p.next_deadline().is_some());
    }

    #[test]
    fn rebase_clock_shifts_every_deadline() {
        let mut p = peer(1, 3, Persistent::default());
        p.tick(150 * MS);
        let before = p.next_deadline().unwrap();
        p.rebase_clock(100 * MS);
        assert_eq!(p.now(), 50 * MS);
        assert_eq!(p.next_deadline().unwrap(), before - 100 * MS);
    }
}
