//! A deterministic, seeded in-memory network of [`Peer`]s.
//!
//! Links are FIFO, like the one TCP connection between two servers: a
//! message may be late, lost or doubled but never overtakes an earlier one.
//! The verbs are raft-rs's: messages are delivered after a random delay
//! ([`Sim::set_delay`]), dropped ([`Sim::drop`], [`Sim::set_drop_rate`]),
//! duplicated ([`Sim::set_duplicate_rate`]); links are [`Sim::cut`], servers
//! [`Sim::isolate`]d and everything [`Sim::recover`]ed; servers
//! [`Sim::crash`] (losing all but their [`Persistent`] state and their TCP
//! connections) and [`Sim::restart`]. Every message is encoded to its wire
//! form and decoded at delivery, and raw bytes can be injected
//! ([`Sim::inject_raw`]), so the codec is exercised too.
//!
//! All randomness comes from one ChaCha generator seeded by the caller, and
//! every collection iterates in a fixed order: a seed replays exactly.
//!
//! An [`Oracle`] watches every event and records violations of the safety
//! properties (see [`Violation`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::message::Message;
use crate::peer::{DecidedBy, Decision, Event, Peer, Persistent};
use crate::quorum::{Quorum, QuorumVerifier};
use crate::types::{Epoch, Round, ServerId, ServerState, Vote};

/// A safety violation seen by the [`Oracle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two different leaders were established in the same epoch.
    TwoLeadersInEpoch {
        /// The epoch.
        epoch: Epoch,
        /// The first leader.
        first: ServerId,
        /// The second.
        second: ServerId,
    },
    /// A learner made an epoch current under a leader other than the one
    /// established in that epoch.
    LearnerDisagrees {
        /// The learner.
        learner: ServerId,
        /// The epoch.
        epoch: Epoch,
        /// The leader it followed.
        its_leader: ServerId,
        /// The established leader.
        leader: ServerId,
    },
    /// An elected vote was below the credentials of a member of the quorum
    /// that elected it.
    LeaderNotMaximal {
        /// The server that concluded.
        at: ServerId,
        /// The winning vote.
        vote: Vote,
        /// The supporter with better credentials.
        supporter: Vote,
    },
    /// A server of weight 0 became LEADING.
    ZeroWeightLeader {
        /// The server.
        id: ServerId,
    },
}

/// Watches the events of every server and checks the safety properties.
#[derive(Clone, Debug, Default)]
pub struct Oracle {
    leaders_by_epoch: BTreeMap<Epoch, ServerId>,
    learners_by_epoch: BTreeMap<Epoch, BTreeMap<ServerId, ServerId>>,
    /// (receiver, sender) -> round and credentials of the last LOOKING vote
    /// delivered: what the receiver's received-vote table holds.
    last_looking: BTreeMap<(ServerId, ServerId), (Round, Vote)>,
    decisions: Vec<(Duration, ServerId, Decision)>,
    violations: Vec<Violation>,
}

impl Oracle {
    /// Every violation seen so far.
    #[must_use]
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Every election decision, with time and server.
    #[must_use]
    pub fn decisions(&self) -> &[(Duration, ServerId, Decision)] {
        &self.decisions
    }

    /// The leader established in each epoch.
    #[must_use]
    pub fn leaders_by_epoch(&self) -> &BTreeMap<Epoch, ServerId> {
        &self.leaders_by_epoch
    }

    /// Rounds in which two servers concluded different leaders by a quorum
    /// of LOOKING votes. Fast leader election alone allows this when
    /// messages are late; the leader confirmation resolves it.
    #[must_use]
    pub fn split_rounds(&self) -> Vec<Round> {
        let mut by_round: BTreeMap<Round, BTreeSet<ServerId>> = BTreeMap::new();
        for (_, _, d) in &self.decisions {
            by_round.entry(d.round).or_default().insert(d.vote.leader);
        }
        by_round
            .into_iter()
            .filter(|(_, l)| l.len() > 1)
            .map(|(r, _)| r)
            .collect()
    }

    fn delivered_looking(&mut self, to: ServerId, from: ServerId, round: Round, creds: Vote) {
        self.last_looking.insert((to, from), (round, creds));
    }

    fn observe<Q: QuorumVerifier>(&mut self, now: Duration, peer: &Peer<Q>, ev: &Event) {
        let id = peer.id();
        match ev {
            Event::Decided(d) => {
                if d.state == ServerState::Leading && peer.quorum().weight(id) == 0 {
                    self.violations.push(Violation::ZeroWeightLeader { id });
                }
                if d.by == DecidedBy::Quorum {
                    for &q in &d.supporters {
                        let creds = if q == id {
                            let p = peer.persistent();
                            Some(Vote::new(id, p.zxid, p.current_epoch))
                        } else {
                            self.last_looking
                                .get(&(id, q))
                                .filter(|(r, _)| *r == d.round)
                                .map(|(_, c)| *c)
                        };
                        if let Some(c) = creds
                            && c > d.vote
                        {
                            self.violations.push(Violation::LeaderNotMaximal {
                                at: id,
                                vote: d.vote,
                                supporter: c,
                            });
                        }
                    }
                }
                self.decisions.push((now, id, d.clone()));
            }
            Event::Established { leader, epoch } if *leader == id => {
                if peer.quorum().weight(id) == 0 {
                    self.violations.push(Violation::ZeroWeightLeader { id });
                }
                match self.leaders_by_epoch.get(epoch) {
                    Some(&first) if first != id => {
                        self.violations.push(Violation::TwoLeadersInEpoch {
                            epoch: *epoch,
                            first,
                            second: id,
                        });
                    }
                    _ => {
                        self.leaders_by_epoch.insert(*epoch, id);
                    }
                }
                for (&learner, &its_leader) in
                    self.learners_by_epoch.get(epoch).into_iter().flatten()
                {
                    if its_leader != id {
                        self.violations.push(Violation::LearnerDisagrees {
                            learner,
                            epoch: *epoch,
                            its_leader,
                            leader: id,
                        });
                    }
                }
            }
            Event::Established { leader, epoch } => {
                self.learners_by_epoch
                    .entry(*epoch)
                    .or_default()
                    .insert(id, *leader);
                if let Some(&l) = self.leaders_by_epoch.get(epoch)
                    && l != *leader
                {
                    self.violations.push(Violation::LearnerDisagrees {
                        learner: id,
                        epoch: *epoch,
                        its_leader: *leader,
                        leader: l,
                    });
                }
                let mut leaders: BTreeSet<ServerId> =
                    self.learners_by_epoch[epoch].values().copied().collect();
                if let Some(&l) = self.leaders_by_epoch.get(epoch) {
                    leaders.insert(l);
                }
                if leaders.len() > 1 {
                    // Two learners made one epoch current under different
                    // leaders: reported once the leader establishes, or here.
                    let mut it = leaders.into_iter();
                    if let (Some(first), Some(second)) = (it.next(), it.next()) {
                        let v = Violation::TwoLeadersInEpoch {
                            epoch: *epoch,
                            first,
                            second,
                        };
                        if !self.violations.contains(&v) {
                            self.violations.push(v);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
struct Server {
    config: Config,
    peer: Option<Peer<Quorum>>,
    disk: Persistent,
    /// Status changes, for tests that look at the history.
    history: Vec<(Duration, ServerState, Option<ServerId>, Round)>,
    /// Why the server gave up a leader, with when.
    lost: Vec<(Duration, &'static str)>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Duration,
    seq: u64,
    from: ServerId,
    to: ServerId,
    payload: Vec<u8>,
    /// The sender's credentials when it sent the message, for the oracle.
    creds: Option<Vote>,
}

/// Counters of what the network did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to a server.
    pub delivered: u64,
    /// Messages lost (drop rate, cut link, crashed end).
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Frames that failed to decode and were discarded.
    pub rejected: u64,
}

/// The simulated ensemble. See the [module documentation](self).
#[derive(Debug)]
pub struct Sim {
    rng: ChaCha8Rng,
    now: Duration,
    quorum: Quorum,
    servers: BTreeMap<ServerId, Server>,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    delay: (Duration, Duration),
    drop_rate: f64,
    dup_rate: f64,
    link_drop: BTreeMap<(ServerId, ServerId), f64>,
    cut: BTreeSet<(ServerId, ServerId)>,
    link_last: BTreeMap<(ServerId, ServerId), Duration>,
    oracle: Oracle,
    stats: NetStats,
}

impl Sim {
    /// An ensemble of `configs` (one per server, each a member of `quorum`),
    /// all starting LOOKING at time zero from `disks` (default: zeros).
    ///
    /// # Panics
    ///
    /// If a config is invalid or not a member: the simulator is a test tool
    /// and a bad set-up is a bug of the test.
    #[must_use]
    pub fn new(
        seed: u64,
        quorum: Quorum,
        configs: Vec<Config>,
        disks: &BTreeMap<ServerId, Persistent>,
    ) -> Self {
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Duration::ZERO,
            quorum,
            servers: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            delay: (Duration::from_micros(200), Duration::from_millis(2)),
            drop_rate: 0.0,
            dup_rate: 0.0,
            link_drop: BTreeMap::new(),
            cut: BTreeSet::new(),
            link_last: BTreeMap::new(),
            oracle: Oracle::default(),
            stats: NetStats::default(),
        };
        for config in configs {
            let id = config.id;
            let disk = disks.get(&id).copied().unwrap_or_default();
            sim.servers.insert(
                id,
                Server {
                    config,
                    peer: None,
                    disk,
                    history: Vec::new(),
                    lost: Vec::new(),
                },
            );
        }
        for id in sim.ids() {
            sim.restart(id);
        }
        sim
    }

    /// `n` voters `1..=n` with majority quorums and `tweak`ed default configs.
    #[must_use]
    pub fn majority(seed: u64, n: u64, tweak: impl Fn(&mut Config)) -> Self {
        let quorum = Quorum::Majority(crate::quorum::Majority::new(1..=n).expect("n > 0"));
        let configs = (1..=n)
            .map(|id| {
                let mut c = Config::new(id);
                tweak(&mut c);
                c
            })
            .collect();
        Sim::new(seed, quorum, configs, &BTreeMap::new())
    }

    /// Simulated time.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The oracle.
    #[must_use]
    pub fn oracle(&self) -> &Oracle {
        &self.oracle
    }

    /// Network counters.
    #[must_use]
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The servers' ids.
    #[must_use]
    pub fn ids(&self) -> Vec<ServerId> {
        self.servers.keys().copied().collect()
    }

    /// A running server's state machine, `None` while crashed.
    #[must_use]
    pub fn peer(&self, id: ServerId) -> Option<&Peer<Quorum>> {
        self.servers.get(&id)?.peer.as_ref()
    }

    /// A server's status changes: (time, state, leader, round).
    #[must_use]
    pub fn history(&self, id: ServerId) -> &[(Duration, ServerState, Option<ServerId>, Round)] {
        self.servers.get(&id).map_or(&[], |s| &s.history)
    }

    /// Why a server gave up its leader or leadership, with when.
    #[must_use]
    pub fn lost_leader(&self, id: ServerId) -> &[(Duration, &'static str)] {
        self.servers.get(&id).map_or(&[], |s| &s.lost)
    }

    /// The random generator, for scenario code that wants the same stream.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Every message takes between `min` and `max` to arrive.
    pub fn set_delay(&mut self, min: Duration, max: Duration) {
        self.delay = (min, max.max(min));
    }

    /// Every message is lost with probability `p`.
    pub fn set_drop_rate(&mut self, p: f64) {
        self.drop_rate = p.clamp(0.0, 1.0);
    }

    /// Every message is sent twice with probability `p`.
    pub fn set_duplicate_rate(&mut self, p: f64) {
        self.dup_rate = p.clamp(0.0, 1.0);
    }

    /// Messages from `from` to `to` are lost with probability `p`.
    pub fn drop(&mut self, from: ServerId, to: ServerId, p: f64) {
        self.link_drop.insert((from, to), p.clamp(0.0, 1.0));
    }

    /// No message passes between `a` and `b` (either way); those in flight are lost.
    pub fn cut(&mut self, a: ServerId, b: ServerId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
        self.purge(|m| (m.from == a && m.to == b) || (m.from == b && m.to == a));
    }

    /// Cuts every link of `id`.
    pub fn isolate(&mut self, id: ServerId) {
        for other in self.ids() {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Heals every cut and per-link drop rate, and sets the global drop and
    /// duplicate rates to zero. Crashed servers stay down.
    pub fn recover(&mut self) {
        self.cut.clear();
        self.link_drop.clear();
        self.drop_rate = 0.0;
        self.dup_rate = 0.0;
    }

    /// Stops server `id`: it keeps only its persistent state; its
    /// connections close (the others see them drop) and the messages in
    /// flight to and from it are lost.
    pub fn crash(&mut self, id: ServerId) {
        let Some(server) = self.servers.get_mut(&id) else {
            return;
        };
        let Some(peer) = server.peer.take() else {
            return;
        };
        server.disk = peer.persistent();
        self.purge(|m| m.from == id || m.to == id);
        for other in self.ids() {
            if other != id && !self.cut.contains(&(id, other)) {
                self.with_peer(other, |p| p.peer_disconnected(id));
            }
        }
    }

    /// Starts server `id` again (a crashed one, or a running one afresh)
    /// from its persistent state, LOOKING in round 1.
    pub fn restart(&mut self, id: ServerId) {
        if self.peer(id).is_some() {
            self.crash(id);
        }
        let now = self.now;
        let quorum = self.quorum.clone();
        let Some(server) = self.servers.get_mut(&id) else {
            return;
        };
        let peer = Peer::new(server.config.clone(), quorum, server.disk, now)
            .expect("simulated server configs are valid");
        server.peer = Some(peer);
        self.flush(id);
    }

    /// Changes the persistent state a crashed server restarts with.
    pub fn set_disk(&mut self, id: ServerId, disk: Persistent) {
        if let Some(s) = self.servers.get_mut(&id) {
            s.disk = disk;
        }
    }

    /// Whether `id` is running.
    #[must_use]
    pub fn is_up(&self, id: ServerId) -> bool {
        self.peer(id).is_some()
    }

    /// Delivers `bytes` as a frame payload from `from` to `to` after the
    /// usual delay (bypassing drop and duplicate rates).
    pub fn inject_raw(&mut self, from: ServerId, to: ServerId, bytes: Vec<u8>) {
        let at = self.now + self.random_delay();
        self.enqueue(at, from, to, bytes, None);
    }

    /// Sends `msg` from `from` to `to` as if `from` had sent it.
    pub fn inject(&mut self, from: ServerId, to: ServerId, msg: Message) {
        self.inject_raw(from, to, msg.to_payload());
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        let _ = self.run_until(end, |_| false);
    }

    /// Runs until `stop(self)` holds (checked after every event) or time
    /// `end`; returns whether `stop` held.
    #[must_use = "false means `stop` never held"]
    pub fn run_until(&mut self, end: Duration, mut stop: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            if stop(self) {
                return true;
            }
            let next_msg = self.queue.peek().map(|Reverse(m)| m.at);
            let next_timer = self
                .servers
                .iter()
                .filter_map(|(id, s)| Some((s.peer.as_ref()?.next_deadline()?, *id)))
                .min();
            let next = match (next_msg, next_timer) {
                (Some(m), Some((t, _))) => m.min(t),
                (Some(m), None) => m,
                (None, Some((t, _))) => t,
                (None, None) => {
                    self.now = self.now.max(end);
                    return stop(self);
                }
            };
            if next > end {
                self.now = end;
                return stop(self);
            }
            self.now = self.now.max(next);
            if next_msg == Some(next) {
                let Some(Reverse(m)) = self.queue.pop() else {
                    continue;
                };
                self.deliver(&m);
            } else if let Some((_, id)) = next_timer {
                let now = self.now;
                self.with_peer(id, |p| p.tick(now));
            }
        }
    }

    /// Runs until every running server agrees on one established leader,
    /// for at most `limit`; returns how long it took.
    #[must_use = "None means the ensemble did not stabilize in time"]
    pub fn run_until_stable(&mut self, limit: Duration) -> Option<Duration> {
        let start = self.now;
        self.run_until(start + limit, Sim::is_stable)
            .then(|| self.now - start)
    }

    /// Whether every running server is serving under one leader, and that
    /// leader is running.
    #[must_use]
    pub fn is_stable(&self) -> bool {
        let mut leader = None;
        for s in self.servers.values() {
            let Some(p) = &s.peer else { continue };
            if !p.is_serving() {
                return false;
            }
            let l = p.current_vote().leader;
            if *leader.get_or_insert(l) != l {
                return false;
            }
        }
        leader.is_some_and(|l| {
            self.is_up(l)
                && self
                    .peer(l)
                    .is_some_and(|p| p.state() == ServerState::Leading)
        })
    }

    /// The established leader all running servers agree on, if stable.
    #[must_use]
    pub fn stable_leader(&self) -> Option<ServerId> {
        self.is_stable()
            .then(|| {
                self.servers
                    .values()
                    .find_map(|s| s.peer.as_ref())
                    .map(|p| p.current_vote().leader)
            })
            .flatten()
    }

    fn random_delay(&mut self) -> Duration {
        let (lo, hi) = self.delay;
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo).as_nanos() as u64;
        lo + Duration::from_nanos(self.rng.random_range(0..=span))
    }

    fn enqueue(
        &mut self,
        at: Duration,
        from: ServerId,
        to: ServerId,
        payload: Vec<u8>,
        creds: Option<Vote>,
    ) {
        // Links are FIFO, as the TCP connection between two servers is: a
        // message never overtakes an earlier one on the same link.
        let last = self.link_last.entry((from, to)).or_default();
        let at = at.max(*last);
        *last = at;
        self.seq += 1;
        self.queue.push(Reverse(InFlight {
            at,
            seq: self.seq,
            from,
            to,
            payload,
            creds,
        }));
    }

    fn purge(&mut self, gone: impl Fn(&InFlight) -> bool) {
        let before = self.queue.len();
        let kept: Vec<_> = std::mem::take(&mut self.queue)
            .into_iter()
            .filter(|Reverse(m)| !gone(m))
            .collect();
        self.stats.dropped += (before - kept.len()) as u64;
        self.queue = kept.into_iter().collect();
    }

    fn deliver(&mut self, m: &InFlight) {
        if !self.is_up(m.to) {
            self.stats.dropped += 1;
            return;
        }
        let msg = match Message::decode_payload(&m.payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::debug!(from = m.from, to = m.to, error = %e, "simulated frame rejected");
                self.stats.rejected += 1;
                return;
            }
        };
        self.stats.delivered += 1;
        if let (Message::Notification(n), Some(c)) = (msg, m.creds)
            && n.state == ServerState::Looking
        {
            self.oracle.delivered_looking(m.to, m.from, n.round, c);
        }
        let now = self.now;
        self.with_peer(m.to, |p| {
            p.tick(now);
            // Only a message claiming to come from its receiver fails, and
            // the simulator never addresses a server to itself.
            let _ = p.step(m.from, msg);
        });
    }

    /// Runs `f` on a running peer, then routes its outputs.
    fn with_peer(&mut self, id: ServerId, f: impl FnOnce(&mut Peer<Quorum>)) {
        let Some(p) = self.servers.get_mut(&id).and_then(|s| s.peer.as_mut()) else {
            return;
        };
        f(p);
        self.flush(id);
    }

    fn flush(&mut self, id: ServerId) {
        let now = self.now;
        let mut out = Vec::new();
        {
            let Some(server) = self.servers.get_mut(&id) else {
                return;
            };
            let Some(peer) = server.peer.as_mut() else {
                return;
            };
            while let Some(ev) = peer.poll_event() {
                match &ev {
                    Event::Persist(d) => server.disk = *d,
                    Event::StateChanged(s) => {
                        server.history.push((now, s.state, s.leader, s.round));
                    }
                    Event::LostLeader { reason } => server.lost.push((now, reason)),
                    _ => {}
                }
                self.oracle.observe(now, peer, &ev);
            }
            while let Some(m) = peer.poll_message() {
                out.push(m);
            }
        }
        for (to, msg) in out {
            self.send(id, to, &msg);
        }
    }

    fn send(&mut self, from: ServerId, to: ServerId, msg: &Message) {
        if self.cut.contains(&(from, to)) || !self.servers.contains_key(&to) {
            self.stats.dropped += 1;
            return;
        }
        let p = self
            .drop_rate
            .max(self.link_drop.get(&(from, to)).copied().unwrap_or(0.0));
        if p > 0.0 && self.rng.random_bool(p) {
            self.stats.dropped += 1;
            return;
        }
        let payload = msg.to_payload();
        let creds = self.peer(from).map(|p| {
            let d = p.persistent();
            Vote::new(from, d.zxid, d.current_epoch)
        });
        if self.dup_rate > 0.0 && self.rng.random_bool(self.dup_rate) {
            self.stats.duplicated += 1;
            let at = self.now + self.random_delay();
            self.enqueue(at, from, to, payload.clone(), creds);
        }
        let at = self.now + self.random_delay();
        self.enqueue(at, from, to, payload, creds);
    }
}
