//! Model checking the real state machine with stateright.
//!
//! The model's state is every server's [`Peer`] (the same code as in
//! production), each link's FIFO channel of messages in flight, and the
//! history the properties need. Actions: deliver the head of a channel,
//! drop it (lossy), deliver it but keep it (duplicating), fire a server's
//! next timer (asynchrony: any time, messages in flight or not), crash a
//! server (its connections and their contents are lost, its persistent
//! state kept) and restart it. Time is abstracted: delivering takes none,
//! a timer fires at its own deadline, and every peer's clock is rebased to
//! zero after each action, so states that differ only in absolute time are
//! one state. The search is bounded by rounds, epochs, crashes and messages
//! in flight (`within_boundary`), and exhaustive within those bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use stateright::{Checker, Model, Property};
use zab_election::{
    Config, Epoch, Event, Majority, Message, Peer, Persistent, Round, ServerId, ServerState,
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    peers: Vec<Option<Peer<Majority>>>,
    disks: Vec<Persistent>,
    /// (from, to) -> FIFO channel.
    net: BTreeMap<(ServerId, ServerId), Vec<Message>>,
    crashes: u8,
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

#[derive(Clone, Debug)]
struct ElectionModel {
    n: u64,
    lossy: bool,
    duplicating: bool,
    max_crashes: u8,
    max_round: Round,
    max_epoch: Epoch,
    max_in_flight: usize,
    /// Timers fire only when no message is in flight to the server: the
    /// synchrony that liveness needs (messages faster than timeouts).
    synchronous: bool,
    quorum: Majority,
}

impl ElectionModel {
    fn new(n: u64) -> Self {
        ElectionModel {
            n,
            lossy: false,
            duplicating: false,
            max_crashes: 0,
            max_round: 2,
            max_epoch: 2,
            max_in_flight: 8,
            synchronous: false,
            quorum: Majority::new(1..=n).unwrap(),
        }
    }

    fn config(&self, id: ServerId) -> Config {
        let mut c = Config::new(id);
        // Small limits keep the session timers' values few.
        c.tick = Duration::from_millis(20);
        c.init_limit = 2;
        c.sync_limit = 2;
        c.max_notification_interval = Duration::from_millis(400);
        c
    }

    fn ix(id: ServerId) -> usize {
        id as usize - 1
    }

    /// Routes a peer's outputs into the state; in the asynchronous model
    /// also rebases its clock (each server's clock is its own).
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
        if !self.synchronous {
            let now = peer.now();
            peer.rebase_clock(now);
        }
    }

    fn in_flight(state: &State) -> usize {
        state.net.values().map(Vec::len).sum()
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
        for (&(from, to), q) in &state.net {
            if q.is_empty() {
                continue;
            }
            actions.push(Action::Deliver(from, to));
            if self.duplicating {
                actions.push(Action::Duplicate(from, to));
            }
            if self.lossy {
                actions.push(Action::Drop(from, to));
            }
        }
        if self.synchronous {
            // One global clock; timers fire in deadline order, and only once
            // every message has arrived (messages are faster than timers).
            if state.net.is_empty() {
                let next = (1..=self.n)
                    .filter_map(|id| {
                        Some((state.peers[Self::ix(id)].as_ref()?.next_deadline()?, id))
                    })
                    .min();
                if let Some((_, id)) = next {
                    actions.push(Action::Timeout(id));
                }
            }
            return;
        }
        for id in 1..=self.n {
            match &state.peers[Self::ix(id)] {
                Some(p) => {
                    if p.next_deadline().is_some() {
                        actions.push(Action::Timeout(id));
                    }
                    if state.crashes < self.max_crashes {
                        actions.push(Action::Crash(id));
                    }
                }
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
                if self.synchronous {
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
        Self::in_flight(s) <= self.max_in_flight
            && s.peers
                .iter()
                .flatten()
                .all(|p| p.round() <= self.max_round)
            && s.disks.iter().all(|d| d.accepted_epoch <= self.max_epoch)
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

/// Exhaustive breadth-first search of every state within the bounds.
fn exhaustive(model: ElectionModel, what: &str) -> impl Checker<ElectionModel> {
    let started = std::time::Instant::now();
    let checker = model.checker().threads(2).spawn_bfs().join();
    report(&checker, what, started);
    checker
}

/// Random walks (stateright's simulation checker) for spaces too large to
/// exhaust: `states` states in all, from a fixed seed.
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

/// Messages faster than timers, no faults: every path, exhaustively, ends
/// with every server serving one leader, and no round is split.
#[test]
fn three_servers_synchronous_always_elect() {
    let mut m = ElectionModel::new(3);
    m.synchronous = true;
    m.max_round = 1;
    m.max_epoch = 1;
    m.max_in_flight = usize::MAX;
    let c = exhaustive(m, "3 servers, synchronous, exhaustive");
    assert!(c.is_done());
    assert_holds(&c, "every server serves one leader");
    assert_holds(&c, "fle: one leader concluded per round");
    assert_safe(&c);
    assert!(
        c.discovery("a leader is established and followed by all")
            .is_some()
    );
}

/// Five servers, synchronous: too many delivery orders to exhaust, so
/// random walks; every walk that ends must end with one served leader.
#[test]
fn five_servers_synchronous_elect() {
    let mut m = ElectionModel::new(5);
    m.synchronous = true;
    m.max_round = 1;
    m.max_epoch = 1;
    // Boundaries end walks (and would fail `eventually`): only the round
    // and epoch bound this run; messages in flight are few when timers fire.
    m.max_in_flight = usize::MAX;
    let c = random_walks(m, "5 servers, synchronous, random walks", 100_000);
    assert_holds(&c, "every server serves one leader");
    assert_holds(&c, "fle: one leader concluded per round");
    assert_safe(&c);
    assert!(
        c.discovery("a leader is established and followed by all")
            .is_some()
    );
}

/// Fast leader election on its own concludes different leaders in one
/// round when a better vote is late: with asynchronous timers a
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
        "3 servers, reliable, asynchronous: split-round search",
        started,
    );
    let path = c
        .discovery("fle: one leader concluded per round")
        .expect("the model checker finds a split round");
    println!("split round trace: {:?}", path.into_actions());
    assert_safe(&c);
}

/// Three servers, lossy and duplicating network, crashes and restarts,
/// asynchronous timers: Zab's safety holds on every state visited, and an
/// election succeeds on some paths.
#[test]
fn three_servers_lossy_duplicating_with_crashes() {
    let mut m = ElectionModel::new(3);
    m.lossy = true;
    m.duplicating = true;
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
    assert!(
        c.discovery("a leader is established and followed by all")
            .is_some(),
        "an election can succeed"
    );
}

/// Five servers, lossy network with a crash: same safety.
#[test]
fn five_servers_lossy_with_a_crash() {
    let mut m = ElectionModel::new(5);
    m.lossy = true;
    m.duplicating = true;
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
