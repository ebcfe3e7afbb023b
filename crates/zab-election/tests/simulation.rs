//! Deterministic simulation: many seeds of faults, safety checked on every
//! event, liveness checked once the faults stop; and regression scenarios
//! from ZooKeeper's history.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use zab_election::sim::Sim;
use zab_election::{
    Config, Hierarchical, Majority, Message, Notification, Persistent, Quorum, ServerState, Vote,
};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// After the faults stop, everyone serves one leader within this much
/// simulated time: a notification interval at its cap, a confirmation that
/// cannot complete (`initLimit`), a lost quorum noticed (`syncLimit`) and the
/// finalize wait, three times: a leftover leader, a leader that steps down
/// for a learner with a later accepted epoch, the final one.
fn stable_within(c: &Config) -> Duration {
    3 * (c.max_notification_interval + c.tick * (c.init_limit + c.sync_limit) + c.finalize_wait)
        + SEC
}

fn assert_safe(sim: &Sim, what: &str) {
    assert!(
        sim.oracle().violations().is_empty(),
        "{what}: {:?}",
        sim.oracle().violations()
    );
}

#[test]
fn three_servers_elect_the_largest_zxid_and_confirm_it() {
    let mut disks = BTreeMap::new();
    for (id, zxid) in [(1, 0x1_0000_0005), (2, 0x1_0000_0009), (3, 0x1_0000_0007)] {
        disks.insert(
            id,
            Persistent {
                zxid,
                accepted_epoch: 1,
                current_epoch: 1,
            },
        );
    }
    let q = Quorum::Majority(Majority::new([1, 2, 3]).unwrap());
    let mut sim = Sim::new(1, q, (1..=3).map(Config::new).collect(), &disks);
    let took = sim.run_until_stable(10 * SEC).expect("elected");
    assert_eq!(sim.stable_leader(), Some(2));
    assert!(
        took >= 200 * MS && took < 400 * MS,
        "finalize wait then confirmation: {took:?}"
    );
    assert_eq!(
        sim.peer(1).unwrap().status().peer_epoch,
        2,
        "the new epoch is current"
    );
    assert_safe(&sim, "clean start");
}

#[test]
fn equal_zxids_elect_the_largest_id() {
    let mut sim = Sim::majority(7, 5, |_| {});
    sim.run_until_stable(10 * SEC).expect("elected");
    assert_eq!(sim.stable_leader(), Some(5));
    assert!(sim.oracle().split_rounds().is_empty());
}

/// One randomized run: a random configuration, a chaos phase of random
/// faults, then all faults healed and crashed servers restarted; safety is
/// checked after every event, liveness once healed.
fn chaos(seed: u64, n: u64) -> Duration {
    let mut probe = Sim::majority(seed, 1, |_| {});
    let rng = probe.rng();
    let tick = [20 * MS, 200 * MS, 2 * SEC][rng.random_range(0..3)];
    let finalize = [Duration::ZERO, 20 * MS, 200 * MS][rng.random_range(0..3)];
    let max_interval = [SEC, 60 * SEC][rng.random_range(0..2)];
    let epoch_wait = [None, Some(10 * MS)][rng.random_range(0..2)];
    let tweak = move |c: &mut Config| {
        c.tick = tick;
        c.finalize_wait = finalize;
        c.max_notification_interval = max_interval;
        c.max_time_to_wait_for_epoch = epoch_wait;
    };
    let mut config = Config::new(1);
    tweak(&mut config);
    let mut sim = Sim::majority(seed, n, tweak);
    let chaos_for = Duration::from_millis(sim.rng().random_range(1_000..30_000));
    let end = sim.now() + chaos_for;
    while sim.now() < end {
        let step = Duration::from_millis(sim.rng().random_range(1..1000));
        let ids = sim.ids();
        let a = ids[sim.rng().random_range(0..ids.len())];
        let b = ids[sim.rng().random_range(0..ids.len())];
        match sim.rng().random_range(0..100) {
            0..10 => sim.crash(a),
            10..25 => sim.restart(a),
            25..35 => {
                if a != b {
                    sim.cut(a, b);
                }
            }
            35..40 => sim.isolate(a),
            40..55 => sim.recover(),
            55..65 => {
                let p = sim.rng().random_range(0.0..0.6);
                sim.set_drop_rate(p);
            }
            65..75 => {
                let p = sim.rng().random_range(0.0..0.5);
                sim.set_duplicate_rate(p);
            }
            75..85 => {
                let hi = sim.rng().random_range(1..600);
                sim.set_delay(Duration::from_micros(100), hi * MS);
            }
            85..92 => {
                if a != b {
                    let p = sim.rng().random_range(0.0..1.0);
                    sim.drop(a, b, p);
                }
            }
            _ => {}
        }
        sim.run_for(step);
        assert_safe(&sim, &format!("seed {seed}, n {n}, during faults"));
    }
    sim.recover();
    sim.set_delay(Duration::from_micros(100), 5 * MS);
    for id in sim.ids() {
        if !sim.is_up(id) {
            sim.restart(id);
        }
    }
    let limit = stable_within(&config);
    let took = sim.run_until_stable(limit);
    assert_safe(&sim, &format!("seed {seed}, n {n}, after healing"));
    let took = took.unwrap_or_else(|| {
        let states: Vec<_> = sim
            .ids()
            .into_iter()
            .map(|id| sim.peer(id).map(|p| (p.status(), p.persistent())))
            .collect();
        for id in sim.ids() {
            let h = sim.history(id);
            eprintln!("history of {id}: {:?}", &h[h.len().saturating_sub(8)..]);
        }
        panic!(
            "seed {seed}, n {n}: not stable {limit:?} after healing (now {:?}): {states:?}",
            sim.now()
        )
    });
    // And it stays stable: the leader keeps its quorum.
    let leader = sim.stable_leader();
    let t0 = sim.now();
    sim.run_for(10 * config.tick * config.sync_limit);
    if sim.stable_leader() != leader {
        for id in sim.ids() {
            let h = sim.history(id);
            eprintln!(
                "history of {id} (stable at {t0:?}): {:?}",
                &h[h.len().saturating_sub(8)..]
            );
            let l = sim.lost_leader(id);
            eprintln!("  lost: {:?}", &l[l.len().saturating_sub(3)..]);
        }
        panic!(
            "seed {seed}: leadership changed without faults: {leader:?} -> {:?}",
            sim.stable_leader()
        );
    }
    assert_safe(&sim, &format!("seed {seed}, n {n}, stable"));
    if std::env::var("ZAB_VERBOSE").is_ok() {
        println!(
            "seed {seed}: {:?}, {} decisions, epochs {:?}, split rounds {:?}, now {:?}",
            sim.stats(),
            sim.oracle().decisions().len(),
            sim.oracle().leaders_by_epoch(),
            sim.oracle().split_rounds(),
            sim.now()
        );
    }
    took
}

fn seeds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn chaos_three_servers_many_seeds() {
    let n_seeds = seeds("ZAB_SIM_SEEDS", 1000);
    let mut worst = Duration::ZERO;
    for seed in 0..n_seeds {
        worst = worst.max(chaos(seed, 3));
    }
    println!("3 servers: {n_seeds} seeds safe and live; slowest recovery {worst:?}");
}

#[test]
fn chaos_five_servers_many_seeds() {
    let n_seeds = seeds("ZAB_SIM_SEEDS", 1000);
    let mut worst = Duration::ZERO;
    for seed in 100_000..100_000 + n_seeds {
        worst = worst.max(chaos(seed, 5));
    }
    println!("5 servers: {n_seeds} seeds safe and live; slowest recovery {worst:?}");
}

#[test]
fn chaos_single_seed_from_env() {
    if let Ok(seed) = std::env::var("ZAB_SEED") {
        let n = seeds("ZAB_N", 3);
        let took = chaos(seed.parse().unwrap(), n);
        println!("recovered in {took:?}");
    }
}

#[test]
fn debug_seed_history() {
    if let Ok(seed) = std::env::var("ZAB_HISTORY") {
        let seed: u64 = seed.parse().unwrap();
        let _ = std::panic::catch_unwind(|| chaos(seed, seeds("ZAB_N", 3)));
    }
}
