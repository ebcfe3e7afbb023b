//! # election: five servers, one leader, and a leader that dies
//!
//! ZooKeeper's leader election (design notes §5) as `crates/zab-election`
//! runs it: "compare zxid first, larger zxid wins; equal zxid: larger myid
//! wins; a server becomes leader only with the support of more than half of
//! the servers." The story, with five real `zab-node` processes talking TCP
//! on loopback:
//!
//! 1. Five servers start. Server 3 has logged the most transactions (zxid
//!    0x200; the others 0x100), so it wins although 4 and 5 have larger ids.
//!    It is *established* once a quorum has accepted its new epoch (each
//!    node prints a JSON line per state change; the line with a new
//!    `peer_epoch` marks it).
//! 2. The leader is killed with SIGKILL. Its followers lose their
//!    connection, look again, and elect the best of the four left: equal
//!    zxids, so the largest id, 5, in the next epoch.
//! 3. The old leader restarts (its epoch files survive in its data
//!    directory). It finds an established leader with a later epoch and
//!    follows it; it does not take the leadership back.
//! 4. Over every line every server printed, no epoch ever had two leaders.
//!
//! The scenario ends with one JSON line of promises (the election times are
//! in it) and exits non-zero if one failed.
//!
//! **Metrics.** Each `zab-node` runs with `--metrics-addr` and serves its
//! own `zab_*` metrics (`zab_election::metrics`: elections entered,
//! elections concluded by rule, state, epoch, election durations) at
//! `http://127.0.0.1:PORT/metrics`; the ports are logged. At the end the
//! scenario scrapes every node over HTTP, prints `zab_elections_total`,
//! `zab_leader_elected_total` and `zab_election_last_duration_seconds` per
//! server, and checks that each server's metrics agree with the role it
//! printed. The app's own `election_*` metrics (served at the printed URL)
//! measure the ensemble from outside: SIGKILL to every server established.
//!
//! **Demo settings:** none shortened: ZooKeeper's tickTime (2 s) and
//! finalizeWait (200 ms). A killed process's connections close at once, so
//! its followers notice without waiting for a ping timeout.
//! Run it with `cargo xtask demo election`, or build `zab-node` and this
//! binary in release and run `target/release/election`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use demo_support::{
    MetricsEndpoint, Phase, Process, Promises, demo_setting, free_ports, helper_binary, metric_sum,
    scrape,
};
use serde::Deserialize;
use tokio::process::Command;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "election",
    about = "Five zab-node processes: elect, kill the leader, elect again, rejoin"
)]
struct Args {
    /// Servers in the ensemble.
    #[arg(long, default_value_t = 5)]
    servers: u64,
    /// The server that has logged the most transactions.
    #[arg(long, default_value_t = 3)]
    most_up_to_date: u64,
    /// ZooKeeper's tickTime, in ms.
    #[arg(long, default_value_t = 2000)]
    tick_ms: u64,
    /// ZooKeeper's finalizeWait, in ms.
    #[arg(long, default_value_t = 200)]
    finalize_wait_ms: u64,
    /// Where to serve Prometheus metrics (default: a free loopback port).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

/// The zxid of every server but the most up-to-date one.
const ZXID: u64 = 0x100;
/// The zxid of the most up-to-date server.
const BEST_ZXID: u64 = 0x200;
/// How long an election may take before the scenario gives up.
const ELECTION_LIMIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    demo_support::init_logging();
    let args = Args::parse();
    demo_support::exit_code("election", scenario(args).await)
}

async fn scenario(args: Args) -> Result<ExitCode> {
    if args.servers < 3 || !(1..=args.servers).contains(&args.most_up_to_date) {
        bail!("need at least 3 servers, and --most-up-to-date among them");
    }
    let metrics = MetricsEndpoint::install(args.metrics_addr)?;
    let binary = helper_binary("zab-election", "zab-node")?;
    demo_setting(
        "tickTime / finalizeWait",
        format!("{} ms / {} ms", args.tick_ms, args.finalize_wait_ms),
        "2000 ms / 200 ms (ZooKeeper's defaults: not shortened)",
    );
    let mut promises = Promises::new("election");
    let data = tempfile::tempdir().context("creating the data directories")?;
    let ids: Vec<u64> = (1..=args.servers).collect();
    // One election port and one metrics port per server.
    let all_ports = free_ports(2 * ids.len())?;
    let (ports, metrics_ports) = all_ports.split_at(ids.len());
    let peers = ids
        .iter()
        .zip(ports)
        .map(|(id, port)| format!("{id}=127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let zxid = |id: u64| {
        if id == args.most_up_to_date {
            BEST_ZXID
        } else {
            ZXID
        }
    };
    let mut cluster = Cluster {
        metrics_addrs: ids
            .iter()
            .zip(metrics_ports)
            .map(|(&id, &port)| (id, SocketAddr::from(([127, 0, 0, 1], port))))
            .collect(),
        ..Cluster::default()
    };

    // 1. Five servers start and elect.
    let started = Instant::now();
    for &id in &ids {
        let dir = data.path().join(format!("server-{id}"));
        cluster.spawn(&binary, id, &peers, zxid(id), &dir, &args)?;
    }
    info!(
        "{} servers started: server {} has zxid {BEST_ZXID:#x}, the others {ZXID:#x}",
        ids.len(),
        args.most_up_to_date
    );
    let phase = Phase::start("first election", Duration::from_secs(1));
    let first = cluster.established(&ids, 0, ELECTION_LIMIT).await;
    phase.finish();
    let Some(first) = first else {
        promises.check(
            "the most up-to-date server is elected",
            "no leader established within 30 s",
            false,
        );
        return Ok(promises.finish());
    };
    let first_time = first.at.duration_since(started);
    record_election(first.leader, first_time);
    let expected = best(&ids, zxid);
    promises.check(
        "the most up-to-date server is elected (zxid first, then id)",
        format!(
            "{} of {} servers follow {} (zxid {:#x}; the others {ZXID:#x}) in epoch {}, \
             {:.0} ms after start",
            ids.len(),
            ids.len(),
            first.leader,
            zxid(first.leader),
            first.epoch,
            first_time.as_secs_f64() * 1e3
        ),
        first.leader == expected,
    );

    // 2. The leader dies.
    let old = first.leader;
    cluster.kill(old).await?;
    let killed = Instant::now();
    info!("SIGKILL server {old}, the leader");
    let alive: Vec<u64> = ids.iter().copied().filter(|&id| id != old).collect();
    let phase = Phase::start("electing a new leader", Duration::from_secs(1));
    let second = cluster
        .established(&alive, first.epoch, ELECTION_LIMIT)
        .await;
    phase.finish();
    let expected = best(&alive, zxid);
    let second_leader = second.as_ref().map(|s| s.leader);
    promises.check(
        "a new leader is elected when the leader dies",
        match &second {
            Some(s) => {
                let took = s.at.duration_since(killed);
                record_election(s.leader, took);
                format!(
                    "new leader {} in {:.0} ms (SIGKILL to {} of {} established in epoch {}; \
                     equal zxids, so the largest id)",
                    s.leader,
                    took.as_secs_f64() * 1e3,
                    alive.len(),
                    alive.len(),
                    s.epoch
                )
            }
            None => "no new leader within 30 s".to_owned(),
        },
        second_leader == Some(expected),
    );

    // 3. The old leader comes back.
    let rejoined = match &second {
        Some(_) => {
            let dir = data.path().join(format!("server-{old}"));
            let restarted = Instant::now();
            cluster.spawn(&binary, old, &peers, zxid(old), &dir, &args)?;
            info!("server {old} restarted with its data directory");
            let phase = Phase::start("old leader rejoining", Duration::from_secs(1));
            let back = cluster.established(&ids, first.epoch, ELECTION_LIMIT).await;
            phase.finish();
            back.map(|b| (b, restarted))
        }
        None => None,
    };
    let led_again = cluster.led_after_restart(old);
    promises.check(
        "the old leader restarts and follows",
        match &rejoined {
            Some((b, restarted)) => format!(
                "server {old} follows {} in epoch {}, {:.0} ms after its restart; {}",
                b.leader,
                b.epoch,
                b.at.duration_since(*restarted).as_secs_f64() * 1e3,
                if led_again {
                    "it LED again"
                } else {
                    "it never led again"
                }
            ),
            None => format!("server {old} did not join an established leader"),
        },
        rejoined
            .as_ref()
            .is_some_and(|(b, _)| Some(b.leader) == second_leader && b.leader != old)
            && !led_again,
    );

    // 4. Safety over everything the servers printed.
    let leaders = cluster.leaders_per_epoch();
    let shown: Vec<String> = leaders
        .iter()
        .map(|(epoch, who)| {
            format!(
                "epoch {epoch}: {}",
                who.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        })
        .collect();
    promises.check(
        "at most one leader per epoch",
        format!(
            "{} ({} state lines from {} servers)",
            shown.join("; "),
            cluster.lines.len(),
            ids.len()
        ),
        !leaders.is_empty() && leaders.values().all(|who| who.len() == 1),
    );

    // 5. What each node counted itself, scraped from its /metrics.
    let roles: BTreeMap<u64, &str> = cluster
        .latest
        .iter()
        .map(|(&id, l)| (id, l.state.as_str()))
        .collect();
    let counted = cluster.scrape_nodes().await;
    print_node_metrics(&counted, &roles);
    let agree = counted
        .iter()
        .filter(|(id, m)| {
            m.leader_elected >= 1.0
                && m.last_duration.is_some_and(|d| d > 0.0)
                && m.state.and_then(state_name) == roles.get(id).copied()
        })
        .count();
    let leader = second_leader.and_then(|l| counted.get(&l).map(|m| (l, m)));
    promises.check(
        "each node's zab_* metrics count its elections and show its role",
        match leader {
            Some((l, m)) => format!(
                "leader {l}: zab_elections_total {}, zab_leader_elected_total {}, last election \
                 {:.0} ms, zab_state {}; every count and state agrees with the printed role \
                 on {agree} of {} servers",
                m.elections,
                m.leader_elected,
                m.last_duration.unwrap_or(0.0) * 1e3,
                m.state.and_then(state_name).unwrap_or("?"),
                ids.len()
            ),
            None => format!(
                "no leader to check; metrics scraped from {} of {} servers",
                counted.len(),
                ids.len()
            ),
        },
        leader.is_some_and(|(_, m)| m.state == Some(2.0)) && agree == ids.len(),
    );

    metrics.print_key_metrics(&["election_"]).await?;
    cluster.stop().await;
    Ok(promises.finish())
}

/// The winner by the notes' rule: larger zxid, then larger id.
fn best(ids: &[u64], zxid: impl Fn(u64) -> u64) -> u64 {
    ids.iter()
        .copied()
        .max_by_key(|&id| (zxid(id), id))
        .unwrap_or(0)
}

/// What one node's `/metrics` said.
#[derive(Debug, Default)]
struct NodeMetrics {
    elections: f64,
    leader_elected: f64,
    last_duration: Option<f64>,
    state: Option<f64>,
}

/// ZooKeeper's ordinal of a state, as `zab_state` reports it, by name.
fn state_name(ordinal: f64) -> Option<&'static str> {
    match ordinal as u8 {
        0 => Some("LOOKING"),
        1 => Some("FOLLOWING"),
        2 => Some("LEADING"),
        3 => Some("OBSERVING"),
        _ => None,
    }
}

fn print_node_metrics(counted: &BTreeMap<u64, NodeMetrics>, roles: &BTreeMap<u64, &str>) {
    println!("zab-node metrics (each scraped from its own /metrics):");
    println!(
        "  {:<6}  {:<9}  {:>19}  {:>24}  {:>34}",
        "server",
        "role",
        "zab_elections_total",
        "zab_leader_elected_total",
        "zab_election_last_duration_seconds"
    );
    for (id, m) in counted {
        println!(
            "  {id:<6}  {:<9}  {:>19}  {:>24}  {:>34}",
            roles.get(id).copied().unwrap_or("-"),
            m.elections,
            m.leader_elected,
            m.last_duration
                .map_or("-".to_owned(), |d| format!("{d:.3}")),
        );
    }
}

fn record_election(leader: u64, took: Duration) {
    metrics::counter!("election_elections_total").increment(1);
    metrics::gauge!("election_leader").set(leader as f64);
    metrics::gauge!("election_last_duration_seconds").set(took.as_secs_f64());
}

/// One state line of `zab-node`.
#[derive(Debug, Clone, Deserialize)]
struct Line {
    id: u64,
    state: String,
    leader: Option<u64>,
    peer_epoch: u64,
}

impl Line {
    fn serves(&self, leader: u64) -> bool {
        self.leader == Some(leader)
            && match self.state.as_str() {
                "LEADING" => self.id == leader,
                "FOLLOWING" => self.id != leader,
                _ => false,
            }
    }
}

/// A leader every given server serves, in an epoch above the previous one.
#[derive(Debug)]
struct Established {
    leader: u64,
    epoch: u64,
    at: Instant,
}

/// The running servers and every line they printed.
#[derive(Default)]
struct Cluster {
    servers: BTreeMap<u64, Process>,
    /// Where each server serves its metrics (kept across a restart).
    metrics_addrs: BTreeMap<u64, SocketAddr>,
    latest: BTreeMap<u64, Line>,
    /// Every line, with when it arrived and whether its server had been restarted.
    lines: Vec<(Instant, Line, bool)>,
    restarted: BTreeSet<u64>,
}

impl Cluster {
    fn spawn(
        &mut self,
        binary: &Path,
        id: u64,
        peers: &str,
        zxid: u64,
        dir: &PathBuf,
        args: &Args,
    ) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(binary);
        cmd.args(["--id", &id.to_string(), "--peers", peers])
            .args(["--zxid", &format!("{zxid:#x}")])
            .args(["--tick-ms", &args.tick_ms.to_string()])
            .args(["--finalize-wait-ms", &args.finalize_wait_ms.to_string()])
            .arg("--data-dir")
            .arg(dir);
        if let Some(addr) = self.metrics_addrs.get(&id) {
            cmd.arg("--metrics-addr").arg(addr.to_string());
        }
        if self.servers.contains_key(&id) || self.lines.iter().any(|(_, l, _)| l.id == id) {
            self.restarted.insert(id);
        }
        self.latest.remove(&id);
        self.servers
            .insert(id, Process::spawn(format!("zab-node {id}"), cmd)?);
        Ok(())
    }

    async fn kill(&mut self, id: u64) -> Result<()> {
        if let Some(mut p) = self.servers.remove(&id) {
            p.kill().await?;
        }
        self.latest.remove(&id);
        Ok(())
    }

    /// Reads every line printed so far.
    fn drain(&mut self) {
        for (id, p) in &mut self.servers {
            while let Some(raw) = p.try_line() {
                match serde_json::from_str::<Line>(&raw) {
                    Ok(line) => {
                        info!(
                            "server {id}: {} (leader {}, epoch {})",
                            line.state,
                            line.leader.map_or("-".to_owned(), |l| l.to_string()),
                            line.peer_epoch
                        );
                        self.lines.push((
                            Instant::now(),
                            line.clone(),
                            self.restarted.contains(id),
                        ));
                        self.latest.insert(*id, line);
                    }
                    Err(_) => tracing::warn!("server {id} printed {raw:?}"),
                }
            }
        }
    }

    /// Waits until every server of `members` serves one leader in an epoch
    /// above `after_epoch`.
    async fn established(
        &mut self,
        members: &[u64],
        after_epoch: u64,
        limit: Duration,
    ) -> Option<Established> {
        let deadline = Instant::now() + limit;
        let first_member = *members.first()?;
        while Instant::now() < deadline {
            self.drain();
            // A server that has printed nothing yet is waited for, not a
            // failure: right after a spawn, none has.
            if let Some(first) = self.latest.get(&first_member).cloned()
                && let Some(leader) = first.leader
                && first.peer_epoch > after_epoch
                && members.iter().all(|m| {
                    self.latest
                        .get(m)
                        .is_some_and(|l| l.serves(leader) && l.peer_epoch == first.peer_epoch)
                })
            {
                return Some(Established {
                    leader,
                    epoch: first.peer_epoch,
                    at: Instant::now(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }

    /// Whether `id` printed LEADING after it was restarted.
    fn led_after_restart(&self, id: u64) -> bool {
        self.lines
            .iter()
            .any(|(_, l, restarted)| *restarted && l.id == id && l.state == "LEADING")
    }

    /// Epoch → the servers that were established as its leader. A leader
    /// prints LEADING twice: once when the election concludes (still in its
    /// old epoch) and again, with the new epoch, once a quorum accepted it;
    /// only the second counts.
    fn leaders_per_epoch(&self) -> BTreeMap<u64, BTreeSet<u64>> {
        let mut leaders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        let mut previous: BTreeMap<(u64, bool), u64> = BTreeMap::new();
        for (_, l, restarted) in &self.lines {
            let before = previous.insert((l.id, *restarted), l.peer_epoch);
            if l.state == "LEADING" && before.is_none_or(|e| l.peer_epoch > e) {
                leaders.entry(l.peer_epoch).or_default().insert(l.id);
            }
        }
        leaders
    }

    /// Scrapes every running server's `/metrics`; a server that does not
    /// answer is logged and left out.
    async fn scrape_nodes(&self) -> BTreeMap<u64, NodeMetrics> {
        let mut out = BTreeMap::new();
        for id in self.servers.keys() {
            let Some(&addr) = self.metrics_addrs.get(id) else {
                continue;
            };
            match scrape(addr).await {
                Ok(page) => {
                    out.insert(
                        *id,
                        NodeMetrics {
                            elections: metric_sum(&page, "zab_elections_total").unwrap_or(0.0),
                            leader_elected: metric_sum(&page, "zab_leader_elected_total")
                                .unwrap_or(0.0),
                            last_duration: metric_sum(&page, "zab_election_last_duration_seconds"),
                            state: metric_sum(&page, "zab_state"),
                        },
                    );
                }
                Err(e) => tracing::warn!("server {id}: no metrics: {e:#}"),
            }
        }
        out
    }

    async fn stop(&mut self) {
        for p in self.servers.values_mut() {
            let _ = p.terminate(Duration::from_secs(5)).await;
        }
    }
}
