//! Failover benchmark: kill the leader of a loopback ensemble and time, from
//! outside, until a new leader is serving — for `zab-node` and for a real
//! ZooKeeper 3.8 ensemble (Debian's package), 3 and 5 servers, median of
//! repeated trials.
//!
//! * `zab-node` runs as child processes (this binary re-executed with
//!   `--as-zab-node`, which runs exactly `zab-node`'s code). "Serving" is the
//!   new leader's first JSON line with a new `peer_epoch`: a quorum has made
//!   its epoch current.
//! * ZooKeeper runs as `java ... QuorumPeerMain` per server
//!   (`testkit::ZooKeeperServer`). "Serving" is the first `srvr` four-letter
//!   answer with `Mode: leader` from a surviving server, polled every 2 ms.
//!   (ZooKeeper's own "election took" log line is known to be wrong.)
//!
//! ```text
//! cargo run --release -p zab-election --example election_bench            # full run
//! cargo run --release -p zab-election --example election_bench -- --smoke # a few seconds
//! ```
//! Ends with one JSON line: `{"bench":"election_failover",...}` (milliseconds).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const HELP: &str = "election_bench: leader failover time, zab-node vs ZooKeeper 3.8

usage: election_bench [--smoke] [--trials N] [--no-zookeeper]
  --smoke          a few trials of each system, 3 servers (CI)
  --trials N       trials per configuration (default 9)
  --no-zookeeper   skip the ZooKeeper rows";

fn free_ports(n: usize) -> Result<Vec<u16>> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    ls.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// One node's latest status line: (state, leader, peer_epoch).
type Status = (String, Option<u64>, u64);

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    Some(rest[..rest.find([',', '}'])?].trim_matches('"'))
}

struct ZabCluster {
    peers: String,
    finalize_ms: u64,
    procs: BTreeMap<u64, Child>,
    lines: mpsc::Receiver<(u64, Status, Instant)>,
    tx: mpsc::Sender<(u64, Status, Instant)>,
    latest: BTreeMap<u64, Status>,
}

impl ZabCluster {
    fn start(n: u64, finalize_ms: u64) -> Result<Self> {
        let ports = free_ports(n as usize)?;
        let peers = (1..=n)
            .map(|i| format!("{i}=127.0.0.1:{}", ports[i as usize - 1]))
            .collect::<Vec<_>>()
            .join(",");
        let (tx, lines) = mpsc::channel();
        let mut c = ZabCluster {
            peers,
            finalize_ms,
            procs: BTreeMap::new(),
            lines,
            tx,
            latest: BTreeMap::new(),
        };
        for id in 1..=n {
            c.spawn(id)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--as-zab-node")
            .args(["--id", &id.to_string(), "--peers", &self.peers])
            .args(["--finalize-wait-ms", &self.finalize_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("child stdout")?;
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let at = Instant::now();
                let st = (|| {
                    Some((
                        field(&line, "state")?.to_owned(),
                        field(&line, "leader")?.parse().ok(),
                        field(&line, "peer_epoch")?.parse().ok()?,
                    ))
                })();
                if let Some(st) = st
                    && tx.send((id, st, at)).is_err()
                {
                    return;
                }
            }
        });
        self.procs.insert(id, child);
        Ok(())
    }

    /// Waits for `done(latest)`; returns the instant of the line that made it true.
    fn wait(
        &mut self,
        within: Duration,
        done: impl Fn(&BTreeMap<u64, Status>) -> bool,
    ) -> Result<Instant> {
        let deadline = Instant::now() + within;
        if done(&self.latest) {
            return Ok(Instant::now());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (id, st, at) = self
                .lines
                .recv_timeout(left)
                .context("zab-node cluster did not settle")?;
            if std::env::var("ZAB_BENCH_DEBUG").is_ok() {
                eprintln!("{id}: {st:?}");
            }
            if self.procs.contains_key(&id) {
                self.latest.insert(id, st);
            }
            if done(&self.latest) {
                return Ok(at);
            }
        }
    }

    /// Everyone serves one leader; returns (leader, epoch).
    fn wait_stable(&mut self, min_epoch: u64) -> Result<(u64, u64)> {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        self.wait(Duration::from_secs(30), |l| {
            stable(l, &ids, min_epoch).is_some()
        })?;
        stable(&self.latest, &ids, min_epoch).context("stable")
    }

    fn kill(&mut self, id: u64) -> Result<()> {
        let mut c = self.procs.remove(&id).context("no such node")?;
        c.kill()?;
        c.wait()?;
        self.latest.remove(&id);
        Ok(())
    }

    /// One trial: kill the leader, time until a survivor leads a new epoch.
    fn trial(&mut self) -> Result<Duration> {
        let (leader, epoch) = self.wait_stable(0)?;
        let t0 = Instant::now();
        self.kill(leader)?;
        let at = self.wait(Duration::from_secs(30), |l| {
            l.values().any(|(s, _, e)| s == "LEADING" && *e > epoch)
        })?;
        let took = at.saturating_duration_since(t0);
        self.spawn(leader)?;
        self.wait_stable(epoch)?;
        Ok(took)
    }
}

fn stable(latest: &BTreeMap<u64, Status>, ids: &[u64], min_epoch: u64) -> Option<(u64, u64)> {
    let first = latest.get(ids.first()?)?;
    let (leader, epoch) = (first.1?, first.2);
    let all = ids.iter().all(|id| {
        latest
            .get(id)
            .is_some_and(|s| s.0 != "LOOKING" && s.1 == Some(leader) && s.2 == epoch)
    });
    let leads = latest.get(&leader).is_some_and(|s| s.0 == "LEADING");
    (all && leads && epoch > min_epoch).then_some((leader, epoch))
}

impl Drop for ZabCluster {
    fn drop(&mut self) {
        for c in self.procs.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct ZkCluster {
    _dir: tempfile::TempDir,
    servers: BTreeMap<u64, testkit::ZooKeeperServer>,
    procs: BTreeMap<u64, Child>,
}

fn srvr_mode(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"srvr").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("Mode: ").map(str::to_owned))
}

impl ZkCluster {
    fn start(n: u64) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("zab-bench-zk").tempdir()?;
        let ports = free_ports(3 * n as usize)?;
        let members: Vec<testkit::EnsembleMember> = (1..=n)
            .map(|id| {
                let i = (id as usize - 1) * 3;
                testkit::EnsembleMember {
                    id,
                    quorum_port: ports[i + 1],
                    election_port: ports[i + 2],
                }
            })
            .collect();
        let mut servers = BTreeMap::new();
        for id in 1..=n {
            let mut s = testkit::ZooKeeperServer::standalone(
                dir.path().join(format!("zk{id}")),
                ports[(id as usize - 1) * 3],
            );
            s.ensemble = Some(testkit::Ensemble {
                myid: id,
                members: members.clone(),
            });
            servers.insert(id, s);
        }
        let mut c = ZkCluster {
            _dir: dir,
            servers,
            procs: BTreeMap::new(),
        };
        for id in 1..=n {
            c.spawn(id)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        let s = &self.servers[&id];
        let mut cmd = s.command()?;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(s.log_file())?;
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting java for ZooKeeper")?;
        self.procs.insert(id, child);
        Ok(())
    }

    fn modes(&self) -> BTreeMap<u64, Option<String>> {
        self.procs
            .keys()
            .map(|id| (*id, srvr_mode(self.servers[id].client_port)))
            .collect()
    }

    fn wait_stable(&self, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.modes();
            let leaders: Vec<u64> = m
                .iter()
                .filter(|(_, v)| v.as_deref() == Some("leader"))
                .map(|(k, _)| *k)
                .collect();
            let followers = m
                .values()
                .filter(|v| v.as_deref() == Some("follower"))
                .count();
            if leaders.len() == 1 && followers + 1 == m.len() {
                return Ok(leaders[0]);
            }
            if Instant::now() > deadline {
                bail!("ZooKeeper ensemble not stable: {m:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn trial(&mut self) -> Result<Duration> {
        let leader = self.wait_stable(Duration::from_secs(90))?;
        let survivors: Vec<u16> = self
            .servers
            .iter()
            .filter(|(id, _)| **id != leader)
            .map(|(_, s)| s.client_port)
            .collect();
        let mut c = self.procs.remove(&leader).context("leader process")?;
        let t0 = Instant::now();
        c.kill()?;
        let took = loop {
            if survivors
                .iter()
                .any(|&p| srvr_mode(p).as_deref() == Some("leader"))
            {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("no new ZooKeeper leader within 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        c.wait()?;
        self.spawn(leader)?;
        self.wait_stable(Duration::from_secs(90))?;
        Ok(took)
    }
}

impl Drop for ZkCluster {
    fn drop(&mut self) {
        for c in self.procs.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Row {
    system: &'static str,
    nodes: u64,
    finalize_ms: u64,
    samples: Vec<Duration>,
}

impl Row {
    fn ms(&self, q: f64) -> f64 {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i]
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--as-zab-node") {
        std::process::exit(match zab_election::cli::main(args) {
            c if c == std::process::ExitCode::SUCCESS => 0,
            _ => 1,
        });
    }
    let all: Vec<String> = first.into_iter().chain(args).collect();
    let mut smoke = false;
    let mut trials = 9;
    let mut zookeeper = true;
    let mut it = all.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--no-zookeeper" => zookeeper = false,
            "--trials" => trials = it.next().context("--trials needs a number")?.parse()?,
            "--help" | "-h" => {
                println!("{HELP}");
                return Ok(());
            }
            other => bail!("unknown argument `{other}`\n{HELP}"),
        }
    }
    let (sizes, zab_trials, zk_trials): (&[u64], usize, usize) = if smoke {
        (&[3], 2, 1)
    } else {
        (&[3, 5], trials, trials.div_ceil(2).max(3))
    };
    let mut rows = Vec::new();
    for &n in sizes {
        for fw in [200, 20] {
            let mut c = ZabCluster::start(n, fw)?;
            let mut samples = Vec::new();
            for _ in 0..zab_trials {
                samples.push(c.trial()?);
            }
            rows.push(Row {
                system: "zab-node",
                nodes: n,
                finalize_ms: fw,
                samples,
            });
        }
        if zookeeper {
            let mut c = ZkCluster::start(n)?;
            let mut samples = Vec::new();
            for _ in 0..zk_trials {
                samples.push(c.trial()?);
            }
            rows.push(Row {
                system: "ZooKeeper 3.8",
                nodes: n,
                finalize_ms: 200,
                samples,
            });
        }
    }
    println!("| system | servers | finalize wait | trials | median ms | min ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} ms | {} | {:.1} | {:.1} | {:.1} |",
            r.system,
            r.nodes,
            r.finalize_ms,
            r.samples.len(),
            r.ms(0.5),
            r.ms(0.0),
            r.ms(1.0)
        );
    }
    let mut json = String::from("{\"bench\":\"election_failover\"");
    for r in &rows {
        let key = if r.system == "zab-node" {
            "zab"
        } else {
            "zookeeper"
        };
        json.push_str(&format!(
            ",\"{key}_{}_fw{}_median_ms\":{:.1}",
            r.nodes,
            r.finalize_ms,
            r.ms(0.5)
        ));
    }
    json.push_str(&format!(",\"smoke\":{smoke}}}"));
    println!("{json}");
    Ok(())
}
