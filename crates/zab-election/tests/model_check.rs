//! Model checking the real state machine with stateright.
//!
//! The model's state is every server's [`Peer`] (the same code as in
//! production), each link's FIFO channel of messages in flight, the faults
//! injected so far and the history the properties need. Actions: deliver
//! the head of a channel, drop it (lossy), deliver it but keep it
//! (duplicating), fire a server's next timer, crash a server (its
//! connections and their contents are lost, its `Persist` state kept) and
//! restart it.
//!
//! Time is abstracted: delivering takes none, a timer fires at its own
//! deadline, and clocks are rebased to zero after a timer, so states that
//! differ only in absolute time are one state. Two timer disciplines
//! ([`Timers`]): *independent* clocks, where any timer may fire at any
//! moment (late messages, which is how fast leader election splits a
//! round), and *synchronous*, one clock with messages faster than timers
//! (a lost message is the only late one).
//!
//! The exhaustive checks use the synchronous discipline with fault budgets
//! (messages lost, duplicated, crashes) and bounds on rounds and epochs;
//! with independent clocks even a fault-free 3-server run exceeds a million
//! states within 16 steps, so those runs are random walks. There is no
//! symmetry to reduce by: server ids order the votes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use stateright::{Checker, Model, Property};
use zab_election::{
    Config, Epoch, Event, Majority, Message, Peer, Persistent, QuorumVerifier, Round, ServerId,
    ServerState,
};

/// The one quorum every peer of a model shares: cloned by reference, and
/// left out of the state's hash and equality (it never differs).
#[derive(Clone, Debug)]
struct Shared(Arc<Majority>);

impl PartialEq for Shared {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Shared {}

impl std::hash::Hash for Shared {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl QuorumVerifier for Shared {
    fn is_voter(&self, id: ServerId) -> bool {
        self.0.is_voter(id)
    }
    fn is_member(&self, id: ServerId) -> bool {
        self.0.is_member(id)
    }
    fn weight(&self, id: ServerId) -> u64 {
        self.0.weight(id)
    }
    fn voters(&self) -> Vec<ServerId> {
        self.0.voters()
    }
    fn contains_quorum(&self, set: &BTreeSet<ServerId>) -> bool {
        self.0.contains_quorum(set)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    peers: Vec<Option<Peer<Shared>>>,
    disks: Vec<Persistent>,
    /// (from, to) -> FIFO channel.
    net: BTreeMap<(ServerId, ServerId), Vec<Message>>,
    /// Faults injected so far, against the model's budgets.
    crashes: u8,
    network_faults: u8,
    /// Timers fired so far; counted only when the model checks liveness.
    timeouts: u8,
    /// Quorum decisions: round -> leaders concluded by any server.
    decided: BTreeMap<Round, BTreeSet<ServerId>>,
    /// Epoch -> leaders established (by the leader's own event).
    established: BTreeMap<Epoch, BTreeSet<ServerId>>,
    /// Epoch -> leaders named by learners that made the epoch current.
    learned: BTreeMap<Epoch, BTreeSet<ServerId>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Deliver(ServerId, ServerId),
    Duplicate(ServerId, ServerId),
    Drop(ServerId, ServerId),
    Timeout(ServerId),
    Crash(ServerId),
    Restart(ServerId),
}

/// When a server's timer may fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timers {
    /// Each server has its own clock: any server's next timer may fire at
    /// any moment, messages in flight or not (asynchrony, clock drift, late
    /// messages).
    Independent,
    /// One clock for all, and messages are faster than timers: the timers
    /// due now fire first (in any order), then messages arrive, and only
    /// once none is in flight does the clock move on to the next deadline.
    /// A message is never late, though it may be lost.
    Synchronous,
}

#[derive(Clone, Debug)]
struct ElectionModel {
    n: u64,
    timers: Timers,
    /// Fault budgets: messages lost or delivered twice, in all; crashes (a
    /// crashed server may restart at any later point, unbudgeted).
    max_network_faults: u8,
    max_crashes: u8,
    max_round: Round,
    max_epoch: Epoch,
    max_in_flight: usize,
    /// Liveness mode: a state where everyone serves one leader has no
    /// successor, and a state past a bound (round, epoch, or this many timer
    /// firings) has none either instead of being cut off, so that every
    /// path that does not elect within the bounds ends and fails
    /// `eventually`.
    liveness_timeouts: Option<u8>,
    quorum: Shared,
}

impl ElectionModel {
    fn new(n: u64) -> Self {
        ElectionModel {
            n,
            timers: Timers::Independent,
            max_network_faults: 0,
            max_crashes: 0,
            max_round: 2,
            max_epoch: 2,
            max_in_flight: 8,
            liveness_timeouts: None,
            quorum: Shared(Arc::new(Majority::new(1..=n).unwrap())),
        }
    }

    /// A network that loses and duplicates any number of messages.
    fn unreliable(mut self) -> Self {
        self.max_network_faults = u8::MAX;
        self
    }

    fn config(&self, id: ServerId) -> Config {
        let mut c = Config::new(id);
        // Every duration a multiple of 200 ms and the limits small, so that
        // the timers' relative deadlines take few values: finalize wait and
        // first notification interval 200 ms, backoff cap 400 ms, pings every
        // 200 ms, initLimit and syncLimit 800 ms.
        c.tick = Duration::from_millis(400);
        c.init_limit = 2;
        c.sync_limit = 2;
        c.max_notification_interval = Duration::from_millis(400);
        c
    }

    fn ix(id: ServerId) -> usize {
        id as usize - 1
    }

    /// Routes a peer's outputs into the state; with independent clocks also
    /// rebases the peer's clock (each server's clock is its own).
    fn flush(&self, state: &mut State, id: ServerId) {
        let i = Self::ix(id);
        let Some(peer) = state.peers[i].as_mut() else {
            return;
        };
        while let Some(ev) = peer.poll_event() {
            match ev {
                Event::Persist(d) => state.disks[i] = d,
                Event::Decided(d) if d.by == zab_election::DecidedBy::Quorum => {
                    state
                        .decided
                        .entry(d.round)
                        .or_default()
                        .insert(d.vote.leader);
                }
                Event::Established { leader, epoch } if leader == id => {
                    state.established.entry(epoch).or_default().insert(leader);
                }
                Event::Established { leader, epoch } => {
                    state.learned.entry(epoch).or_default().insert(leader);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        while let Some(m) = peer.poll_message() {
            out.push(m);
        }
        for (to, msg) in out {
            // No connection to a crashed server: the message is lost.
            if state.peers[Self::ix(to)].is_some() {
                state.net.entry((id, to)).or_default().push(msg);
            }
        }
        let Some(peer) = state.peers[i].as_mut() else {
            return;
        };
        if self.timers == Timers::Independent {
            let now = peer.now();
            peer.rebase_clock(now);
        }
    }

    fn in_flight(state: &State) -> usize {
        state.net.values().map(Vec::len).sum()
    }

    fn within_bounds(&self, s: &State) -> bool {
        Self::in_flight(s) <= self.max_in_flight
            && s.peers
                .iter()
                .flatten()
                .all(|p| p.round() <= self.max_round)
            && s.disks.iter().all(|d| d.accepted_epoch <= self.max_epoch)
            && self.liveness_timeouts.is_none_or(|t| s.timeouts <= t)
    }
}

impl Model for ElectionModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut s = State {
            peers: Vec::new(),
            disks: vec![Persistent::default(); self.n as usize],
            net: BTreeMap::new(),
            crashes: 0,
            network_faults: 0,
            timeouts: 0,
            decided: BTreeMap::new(),
            established: BTreeMap::new(),
            learned: BTreeMap::new(),
        };
        for id in 1..=self.n {
            let p = Peer::new(
                self.config(id),
                self.quorum.clone(),
                Persistent::default(),
                Duration::ZERO,
            )
            .unwrap();
            s.peers.push(Some(p));
        }
        for id in 1..=self.n {
            self.flush(&mut s, id);
        }
        vec![s]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        if self.liveness_timeouts.is_some() && (all_serving(state) || !self.within_bounds(state)) {
            return;
        }
        let deadline = |id: ServerId| state.peers[Self::ix(id)].as_ref()?.next_deadline();
        if self.timers == Timers::Synchronous {
            // The clock stands at zero (every peer is rebased after a timer).
            // Timers due now fire first, in any order, before the messages
            // they send arrive; then messages; once none is in flight the
            // clock moves on to the earliest deadline.
            let now = (1..=self.n).filter_map(deadline).min();
            if now == Some(Duration::ZERO) || (now.is_some() && state.net.is_empty()) {
                for id in (1..=self.n).filter(|&id| deadline(id) == now) {
                    actions.push(Action::Timeout(id));
                }
            }
            if now == Some(Duration::ZERO) {
                return;
            }
        } else {
            for id in (1..=self.n).filter(|&id| deadline(id).is_some()) {
                actions.push(Action::Timeout(id));
            }
        }
        for (&(from, to), q) in &state.net {
            if q.is_empty() {
                continue;
            }
            actions.push(Action::Deliver(from, to));
            if state.network_faults < self.max_network_faults {
                actions.push(Action::Duplicate(from, to));
                actions.push(Action::Drop(from, to));
            }
        }
        for id in 1..=self.n {
            match &state.peers[Self::ix(id)] {
                Some(_) if state.crashes < self.max_crashes => actions.push(Action::Crash(id)),
                Some(_) => {}
                None => actions.push(Action::Restart(id)),
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Deliver(from, to) | Action::Duplicate(from, to) => {
                let q = s.net.get_mut(&(from, to))?;
                let msg = if matches!(action, Action::Deliver(..)) {
                    q.remove(0)
                } else {
                    s.network_faults = s.network_faults.saturating_add(1);
                    *q.first()?
                };
                if q.is_empty() {
                    s.net.remove(&(from, to));
                }
                // (stateright's random walks mis-record actions that yield no
                // state, so every action yields one.)
                if let Some(p) = s.peers[Self::ix(to)].as_mut() {
                    p.step(from, msg).expect("no message from self");
                    self.flush(&mut s, to);
                }
            }
            Action::Drop(from, to) => {
                s.network_faults = s.network_faults.saturating_add(1);
                let q = s.net.get_mut(&(from, to))?;
                q.remove(0);
                if q.is_empty() {
                    s.net.remove(&(from, to));
                }
            }
            Action::Timeout(id) => {
                let p = s.peers[Self::ix(id)].as_mut()?;
                let d = p.next_deadline()?;
                p.tick(d);
                self.flush(&mut s, id);
                if self.liveness_timeouts.is_some() {
                    s.timeouts = s.timeouts.saturating_add(1);
                }
                if self.timers == Timers::Synchronous {
                    for p in s.peers.iter_mut().flatten() {
                        p.rebase_clock(d);
                    }
                }
            }
            Action::Crash(id) => {
                let p = s.peers[Self::ix(id)].take()?;
                s.disks[Self::ix(id)] = p.persistent();
                s.crashes += 1;
                s.net.retain(|&(from, to), _| from != id && to != id);
                for other in 1..=self.n {
                    if let Some(p) = s.peers[Self::ix(other)].as_mut() {
                        p.peer_disconnected(id);
                        self.flush(&mut s, other);
                    }
                }
            }
            Action::Restart(id) => {
                let disk = s.disks[Self::ix(id)];
                let p =
                    Peer::new(self.config(id), self.quorum.clone(), disk, Duration::ZERO).ok()?;
                s.peers[Self::ix(id)] = Some(p);
                self.flush(&mut s, id);
            }
        }
        Some(s)
    }

    fn within_boundary(&self, s: &State) -> bool {
        // In liveness mode a state past a bound is kept as a dead end (see
        // `actions`), so that the path it ends fails `eventually`.
        self.liveness_timeouts.is_some() || self.within_bounds(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "at most one leader established per epoch",
                |_, s: &State| s.established.values().all(|l| l.len() <= 1),
            ),
            Property::always(
                "learners agree with the established leader",
                |_, s: &State| {
                    s.learned.iter().all(|(e, learned)| {
                        let mut all = learned.clone();
                        all.extend(s.established.get(e).into_iter().flatten());
                        all.len() <= 1
                    })
                },
            ),
            Property::always("fle: one leader concluded per round", |_, s: &State| {
                s.decided.values().all(|l| l.len() <= 1)
            }),
            Property::sometimes(
                "a leader is established and followed by all",
                |_, s: &State| all_serving(s),
            ),
            Property::eventually("every server serves one leader", |_, s: &State| {
                all_serving(s)
            }),
        ]
    }
}

fn all_serving(s: &State) -> bool {
    let mut leader = None;
    s.peers.iter().all(|p| {
        p.as_ref().is_some_and(|p| {
            let l = p.current_vote().leader;
            p.is_serving() && *leader.get_or_insert(l) == l
        })
    }) && leader.is_some_and(|l| {
        s.peers[l as usize - 1]
            .as_ref()
            .is_some_and(|p| p.state() == ServerState::Leading)
    })
}

fn report(checker: &impl Checker<ElectionModel>, what: &str, started: std::time::Instant) {
    println!(
        "{what}: {} states explored ({} unique), max depth {}, in {:.1?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed()
    );
}

/// Exhaustive depth-first search of every state within the bounds (depth
/// first: it keeps a path, not a frontier, in memory).
fn exhaustive(model: ElectionModel, what: &str) -> impl Checker<ElectionModel> {
    let started = std::time::Instant::now();
    let checker = model.checker().threads(2).spawn_dfs().join();
    report(&checker, what, started);
    assert!(checker.is_done());
    checker
}

/// Random walks (stateright's simulation checker) for spaces too large to
/// exhaust: `states` states in all (`ZAB_MC_STATES` overrides), the walks
/// seeded from 42. With two threads, which walks run before the count is
/// reached depends on scheduling, so the seed does not replay a run: a
/// violation is reported with its whole trace, which does.
fn random_walks(model: ElectionModel, what: &str, states: usize) -> impl Checker<ElectionModel> {
    let started = std::time::Instant::now();
    let states = std::env::var("ZAB_MC_STATES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(states);
    let checker = model
        .checker()
        .threads(2)
        .target_state_count(states)
        .spawn_simulation(42, stateright::UniformChooser)
        .join();
    report(&checker, what, started);
    checker
}

fn assert_holds(c: &impl Checker<ElectionModel>, name: &'static str) {
    if let Some(path) = c.discovery(name) {
        panic!("{name} violated: {:#?}", path.into_actions());
    }
}

fn assert_safe(c: &impl Checker<ElectionModel>) {
    assert_holds(c, "at most one leader established per epoch");
    assert_holds(c, "learners agree with the established leader");
}

/// Some path reaches a state where every server serves one leader.
fn assert_some_path_elects(c: &impl Checker<ElectionModel>) {
    assert!(
        c.discovery("a leader is established and followed by all")
            .is_some(),
        "no path elects a leader"
    );
}

/// Every path elects, no round is split, and Zab's safety holds.
fn assert_every_path_elects(c: &impl Checker<ElectionModel>) {
    assert_holds(c, "every server serves one leader");
    assert_holds(c, "fle: one leader concluded per round");
    assert_safe(c);
    assert_some_path_elects(c);
}

/// Messages faster than timers, no faults: every path, exhaustively, ends
/// with every server serving one leader in round 1 and epoch 1 within eight
/// timer firings (a path that does not is a dead end that fails
/// `eventually`), and no round is split.
#[test]
fn three_servers_synchronous_always_elect() {
    let mut m = ElectionModel::new(3);
    m.timers = Timers::Synchronous;
    m.max_round = 1;
    m.max_epoch = 1;
    m.max_in_flight = usize::MAX;
    m.liveness_timeouts = Some(8);
    let c = exhaustive(m, "3 servers, synchronous, exhaustive");
    assert_every_path_elects(&c);
}

/// Five servers, synchronous: too many delivery orders to exhaust, so
/// random walks; every walk ends (a loop, or a bound) having seen one
/// served leader.
#[test]
fn five_servers_synchronous_elect() {
    let mut m = ElectionModel::new(5);
    m.timers = Timers::Synchronous;
    m.max_round = 1;
    m.max_epoch = 1;
    m.max_in_flight = usize::MAX;
    m.liveness_timeouts = Some(12);
    let c = random_walks(m, "5 servers, synchronous, random walks", 100_000);
    assert_every_path_elects(&c);
}

/// Fast leader election on its own concludes different leaders in one
/// round when a better vote is late: with independent timers a
/// counterexample exists even without loss. This is why a leader is
/// confirmed (a quorum makes its new epoch current) before it serves.
#[test]
fn fle_alone_can_split_a_round() {
    let mut m = ElectionModel::new(3);
    m.max_round = 1;
    m.max_epoch = 0;
    m.max_in_flight = 6;
    let started = std::time::Instant::now();
    let c = m
        .checker()
        .threads(2)
        .finish_when(stateright::HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    report(
        &c,
        "3 servers, reliable, independent timers: split-round search",
        started,
    );
    let path = c
        .discovery("fle: one leader concluded per round")
        .expect("the model checker finds a split round");
    println!("split round trace: {:?}", path.into_actions());
    assert_safe(&c);
}

/// Three servers on a lossy, duplicating network, exhaustively: any two
/// network faults (a message lost, or delivered twice) at any points,
/// rounds and epochs up to 2, messages faster than timers. Zab's safety
/// holds in every state, and some paths elect.
#[test]
fn three_servers_exhaustive_lossy_duplicating() {
    let mut m = ElectionModel::new(3);
    m.timers = Timers::Synchronous;
    m.max_network_faults = 2;
    m.max_in_flight = usize::MAX;
    let c = exhaustive(m, "3 servers, 2 messages lost or duplicated, exhaustive");
    assert_safe(&c);
    assert_some_path_elects(&c);
}

/// Three servers, exhaustively: any one server crashes at any point (its
/// connections and the messages on them are lost, its `Persist` state
/// kept) and restarts at any later point, rounds and epochs up to 2,
/// messages faster than timers. Zab's safety holds in every state.
///
/// `ZAB_MC_DEEP=1` adds one network fault (a message lost or duplicated) at
/// any point: millions of states, minutes rather than seconds.
#[test]
fn three_servers_exhaustive_crash_and_restart() {
    let mut m = ElectionModel::new(3);
    m.timers = Timers::Synchronous;
    m.max_crashes = 1;
    m.max_in_flight = usize::MAX;
    let mut what = "3 servers, 1 crash and restart, exhaustive";
    if std::env::var_os("ZAB_MC_DEEP").is_some() {
        m.max_network_faults = 1;
        what = "3 servers, 1 crash and restart + 1 message lost or duplicated, exhaustive";
    }
    let c = exhaustive(m, what);
    assert_safe(&c);
    assert_some_path_elects(&c);
}

/// Three servers, any number of messages lost or duplicated, two crashes,
/// independent timers (late messages): too large to exhaust, so random
/// walks. Zab's safety holds on every state visited, and an election
/// succeeds on some paths.
#[test]
fn three_servers_lossy_duplicating_with_crashes() {
    let mut m = ElectionModel::new(3).unreliable();
    m.max_crashes = 2;
    m.max_round = 3;
    m.max_epoch = 3;
    m.max_in_flight = 10;
    let c = random_walks(
        m,
        "3 servers, lossy + duplicating + 2 crashes, random walks",
        400_000,
    );
    assert_safe(&c);
    assert_some_path_elects(&c);
}

/// Five servers, lossy and duplicating network with a crash, independent
/// timers: same safety, random walks.
#[test]
fn five_servers_lossy_with_a_crash() {
    let mut m = ElectionModel::new(5).unreliable();
    m.max_crashes = 1;
    m.max_round = 2;
    m.max_epoch = 2;
    m.max_in_flight = 30;
    let c = random_walks(
        m,
        "5 servers, lossy + duplicating + 1 crash, random walks",
        150_000,
    );
    assert_safe(&c);
}
