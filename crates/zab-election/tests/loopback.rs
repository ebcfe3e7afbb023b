//! Real `zab-node` processes on loopback, and the TCP transport's rules.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::TestRecorder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zab_election::metrics::{
    CONNECTED_PEERS, ELECTION_LAST_DURATION, ELECTIONS, EPOCH, FRAMES_REJECTED, LEADER_ELECTED,
    RECONNECTS, STATE,
};
use zab_election::node::{Node, NodeConfig};
use zab_election::transport::{RejectReason, Transport, TransportConfig, TransportEvent};
use zab_election::{
    Config, Majority, Message, Notification, Persistent, Quorum, ServerState, Vote,
};

/// One parsed output line of `zab-node`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Line {
    id: u64,
    state: String,
    leader: Option<u64>,
    peer_epoch: u64,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    let end = rest.find([',', '}'])?;
    Some(rest[..end].trim_matches('"'))
}

fn parse(line: &str) -> Option<Line> {
    Some(Line {
        id: field(line, "id")?.parse().ok()?,
        state: field(line, "state")?.to_owned(),
        leader: field(line, "leader")?.parse().ok(),
        peer_epoch: field(line, "peer_epoch")?.parse().ok()?,
    })
}

/// Free loopback ports: bound, noted and released (the kernel will not hand
/// them out again at once).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

struct Cluster {
    peers: String,
    data: Option<tempfile::TempDir>,
    /// Servers started with `--metrics-addr`, and where.
    metrics: BTreeMap<u64, SocketAddr>,
    procs: BTreeMap<u64, Child>,
    latest: Arc<Mutex<BTreeMap<u64, Line>>>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Cluster {
    fn start(n: u64) -> Cluster {
        Self::start_with(n, false)
    }

    fn start_with(n: u64, data_dirs: bool) -> Cluster {
        Self::start_full(n, data_dirs, false)
    }

    fn start_full(n: u64, data_dirs: bool, metrics: bool) -> Cluster {
        let ports = free_ports(n as usize);
        let peers = (1..=n)
            .map(|i| format!("{i}=127.0.0.1:{}", ports[i as usize - 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            peers,
            data: None,
            metrics: BTreeMap::new(),
            procs: BTreeMap::new(),
            latest: Arc::default(),
            all: Arc::default(),
        };
        if data_dirs {
            c.data = Some(tempfile::tempdir().unwrap());
        }
        if metrics {
            let ports = free_ports(n as usize);
            c.metrics = (1..=n).zip(ports.into_iter().map(addr)).collect();
        }
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    fn spawn(&mut self, id: u64) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zab-node"));
        cmd.args(["--id", &id.to_string(), "--peers", &self.peers])
            .args(["--finalize-wait-ms", "50", "--tick-ms", "200"]);
        if let Some(d) = &self.data {
            cmd.arg("--data-dir").arg(d.path().join(id.to_string()));
        }
        if let Some(a) = self.metrics.get(&id) {
            cmd.args(["--metrics-addr", &a.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("zab-node starts");
        let out = child.stdout.take().unwrap();
        let latest = Arc::clone(&self.latest);
        let all = Arc::clone(&self.all);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let parsed = parse(&line).unwrap_or_else(|| panic!("bad output line: {line}"));
                all.lock().unwrap().push(line);
                latest.lock().unwrap().insert(parsed.id, parsed);
            }
        });
        self.procs.insert(id, child);
    }

    fn kill(&mut self, id: u64) {
        let mut c = self.procs.remove(&id).unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        self.latest.lock().unwrap().remove(&id);
    }

    /// Waits until every running server serves one leader in an epoch above
    /// `min_epoch`; returns (leader, epoch).
    fn wait_stable(&self, min_epoch: u64, within: Duration) -> (u64, u64) {
        let deadline = Instant::now() + within;
        loop {
            {
                let latest = self.latest.lock().unwrap();
                let running: Vec<u64> = self.procs.keys().copied().collect();
                let lines: Vec<&Line> = running.iter().filter_map(|id| latest.get(id)).collect();
                if lines.len() == running.len() {
                    let l = lines[0].leader;
                    let e = lines[0].peer_epoch;
                    let agree = lines
                        .iter()
                        .all(|x| x.leader == l && x.peer_epoch == e && x.state != "LOOKING");
                    if let (true, Some(l)) = (agree && e > min_epoch, l)
                        && latest.get(&l).is_some_and(|x| x.state == "LEADING")
                    {
                        return (l, e);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "not stable within {within:?}: {:#?}",
                self.all.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.procs.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn elect_kill_reelect_rejoin(n: u64) {
    let mut c = Cluster::start(n);
    let (l1, e1) = c.wait_stable(0, Duration::from_secs(20));
    assert_eq!(l1, n, "equal zxids: the largest id leads");
    c.kill(l1);
    let t = Instant::now();
    let (l2, e2) = c.wait_stable(e1, Duration::from_secs(20));
    println!(
        "{n} nodes: leader {l1} killed, {l2} serves epoch {e2} after {:?}",
        t.elapsed()
    );
    assert_ne!(l2, l1);
    assert_eq!(l2, n - 1, "the largest remaining id leads");
    c.spawn(l1);
    let (l3, e3) = c.wait_stable(e1, Duration::from_secs(20));
    assert_eq!(
        (l3, e3),
        (l2, e2),
        "the old leader follows; no new election"
    );
    assert_eq!(c.latest.lock().unwrap()[&l1].state, "FOLLOWING");
}

#[test]
fn three_zab_nodes_elect_fail_over_and_take_back_the_old_leader() {
    elect_kill_reelect_rejoin(3);
}

#[test]
fn five_zab_nodes_elect_fail_over_and_take_back_the_old_leader() {
    elect_kill_reelect_rejoin(5);
}

/// With `--data-dir`, a restarted server comes back with the epoch it had
/// made current (ZooKeeper's `currentEpoch` file), not `--epoch`.
#[test]
fn zab_node_keeps_its_epochs_in_the_data_dir() {
    let mut c = Cluster::start_with(3, true);
    let (leader, epoch) = c.wait_stable(0, Duration::from_secs(20));
    let follower = if leader == 1 { 2 } else { 1 };
    let dir = c.data.as_ref().unwrap().path().join(follower.to_string());
    let on_disk = std::fs::read_to_string(dir.join("currentEpoch")).unwrap();
    assert_eq!(on_disk.trim(), epoch.to_string());
    c.kill(follower);
    c.all.lock().unwrap().clear();
    c.spawn(follower);
    c.wait_stable(0, Duration::from_secs(20));
    let first = c
        .all
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| parse(l))
        .find(|l| l.id == follower)
        .unwrap();
    assert_eq!((first.state.as_str(), first.peer_epoch), ("LOOKING", epoch));
}

#[test]
fn zab_node_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_zab-node"))
        .args(["--id", "4", "--peers", "1=127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--id 4 is not in --peers"));
}

/// A node that cannot write its epoch files stops, with exit code 1 and
/// the I/O error on stderr, rather than going on without them.
#[test]
fn zab_node_stops_and_says_why_when_it_cannot_persist() {
    let mut c = Cluster::start(3);
    c.wait_stable(0, Duration::from_secs(20));
    // Server 3 comes back with a data dir that cannot be created: it must
    // persist an epoch to join (or lead) the ensemble.
    c.kill(3);
    let mut node = Command::new(env!("CARGO_BIN_EXE_zab-node"))
        .args(["--id", "3", "--peers", &c.peers])
        .args(["--finalize-wait-ms", "50", "--tick-ms", "200"])
        .args(["--data-dir", "/proc/self/zab-epochs"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!("zab-node went on without its epoch files");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut node.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("node stopped: i/o error"), "{stderr}");
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn next(t: &mut Transport) -> TransportEvent {
    tokio::time::timeout(Duration::from_secs(5), t.recv())
        .await
        .expect("an event in time")
        .expect("transport running")
}

fn note(round: u64) -> Message {
    Message::Notification(Notification {
        state: ServerState::Looking,
        vote: Vote::new(1, 0, 0),
        round,
    })
}

/// Both servers send first, so both dial; only the connection opened by the
/// larger id survives, and messages flow both ways on it.
#[tokio::test]
async fn simultaneous_connect_keeps_the_larger_ids_connection() {
    let p = free_ports(2);
    let mk = |id: u64, other: u64| {
        TransportConfig::new(
            id,
            addr(p[id as usize - 1]),
            BTreeMap::from([(other, addr(p[other as usize - 1]))]),
        )
    };
    let mut t1 = Transport::bind(mk(1, 2)).await.unwrap();
    let mut t2 = Transport::bind(mk(2, 1)).await.unwrap();
    t1.send(2, note(1));
    t2.send(1, note(2));
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    while got1.len() < 2 {
        got1.push(next(&mut t1).await);
    }
    while got2.len() < 2 {
        got2.push(next(&mut t2).await);
    }
    assert!(
        got1.contains(&TransportEvent::Connected {
            peer: 2,
            outbound: false
        }),
        "{got1:?}"
    );
    assert!(
        got2.contains(&TransportEvent::Connected {
            peer: 1,
            outbound: true
        }),
        "{got2:?}"
    );
    assert!(
        got1.contains(&TransportEvent::Message {
            from: 2,
            msg: note(2)
        }),
        "{got1:?}"
    );
    assert!(
        got2.contains(&TransportEvent::Message {
            from: 1,
            msg: note(1)
        }),
        "{got2:?}"
    );
    // No second connection comes up later.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), t1.recv())
            .await
            .is_err()
    );
}

/// Malformed frames are reported and dropped without closing the
/// connection; an oversized frame closes it; nothing panics.
#[tokio::test]
async fn malformed_and_oversized_frames_are_rejected() {
    let p = free_ports(2);
    let cfg = TransportConfig::new(1, addr(p[0]), BTreeMap::from([(2, addr(p[1]))]));
    let mut t1 = Transport::bind(cfg).await.unwrap();
    // Pose as server 2 (a larger id, so server 1 keeps the connection).
    let mut raw = tokio::net::TcpStream::connect(addr(p[0])).await.unwrap();
    let mut hello = vec![0, 0, 0, 10, zab_election::WIRE_VERSION, 0];
    hello.extend_from_slice(&2u64.to_be_bytes());
    raw.write_all(&hello).await.unwrap();
    assert_eq!(
        next(&mut t1).await,
        TransportEvent::Connected {
            peer: 2,
            outbound: false
        }
    );
    let frame = |payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    };
    let good = note(7).to_payload();
    let mut bad_state = good.clone();
    bad_state[2] = 42;
    for (bad, why) in [
        (vec![9u8, 1, 0], RejectReason::Version),
        (
            vec![zab_election::WIRE_VERSION, 77],
            RejectReason::Malformed,
        ),
        (good[..10].to_vec(), RejectReason::Malformed),
        (bad_state, RejectReason::Malformed),
        (vec![], RejectReason::Malformed),
    ] {
        raw.write_all(&frame(&bad)).await.unwrap();
        match next(&mut t1).await {
            TransportEvent::Rejected {
                from: Some(2),
                reason,
                ..
            } => assert_eq!(reason, why, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    raw.write_all(&frame(&good)).await.unwrap();
    assert_eq!(
        next(&mut t1).await,
        TransportEvent::Message {
            from: 2,
            msg: note(7)
        }
    );
    raw.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
    match next(&mut t1).await {
        TransportEvent::Rejected {
            from: Some(2),
            reason: RejectReason::TooLarge,
            error,
        } => assert!(error.contains("exceeds"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut t1).await, TransportEvent::Disconnected(2));
    // A connection without a valid hello is refused.
    let mut junk = tokio::net::TcpStream::connect(addr(p[0])).await.unwrap();
    junk.write_all(&frame(&[1, 2, 3])).await.unwrap();
    assert!(matches!(
        next(&mut t1).await,
        TransportEvent::Rejected {
            from: None,
            reason: RejectReason::Malformed,
            ..
        }
    ));
}

/// A peer that accepts and hangs up at once (a foreign server, or one
/// configured without our id) is redialled with a growing backoff, not in
/// a tight loop: from 20 ms doubling, 700 ms allow about six dials.
#[tokio::test]
async fn a_peer_that_hangs_up_is_redialled_with_backoff() {
    let hang_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smaller = hang_up.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = hang_up.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let p = free_ports(1);
    let cfg = TransportConfig::new(2, addr(p[0]), BTreeMap::from([(1, smaller)]));
    let _t = Transport::bind(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=12).contains(&n), "{n} connections in 700 ms");
}

/// A connected peer that stops reading costs bounded memory: once its
/// socket buffers and the 1024 frames waiting for them are full, further
/// messages to it are dropped instead of piling up, so after it reads again
/// it receives far fewer than were sent (all of them before the bound).
#[tokio::test]
async fn a_peer_that_stops_reading_does_not_pile_up_messages() {
    // Server 1, smaller, so server 2 dials it; tiny receive buffers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(addr(0)).unwrap();
    let listener = socket.listen(8).unwrap();
    let one = listener.local_addr().unwrap();
    let p = free_ports(1);
    let mut t = Transport::bind(TransportConfig::new(
        2,
        addr(p[0]),
        BTreeMap::from([(1, one)]),
    ))
    .await
    .unwrap();
    let (mut stream, _) = listener.accept().await.unwrap();
    assert_eq!(
        next(&mut t).await,
        TransportEvent::Connected {
            peer: 1,
            outbound: true
        }
    );
    // While 1 reads nothing, 2 sends 18 MB: far more than the socket
    // buffers hold (Linux caps the send buffer at 4 MB by default).
    let sent = 400_000;
    for round in 0..sent {
        t.send(1, note(round as u64));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut bytes = 0;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        bytes += n;
    }
    // The hello, then frames of one size.
    let received = (bytes - 14) / note(0).to_frame().len();
    println!("{received} of {sent} messages arrived");
    assert!(received < sent / 2, "{received} of {sent} messages arrived");
}

/// Three in-process nodes, each built under its own recorder: the leader
/// and both followers report one concluded election, their state, their
/// connected peers and how long the election took.
#[tokio::test]
async fn nodes_report_elections_states_and_connections_through_metrics() {
    let ports = free_ports(3);
    let peers: BTreeMap<u64, SocketAddr> = (1..=3).zip(ports.into_iter().map(addr)).collect();
    let recorders: BTreeMap<u64, TestRecorder> =
        (1..=3).map(|id| (id, TestRecorder::new())).collect();
    let mut nodes = BTreeMap::new();
    for (&id, &listen) in &peers {
        let mut election = Config::new(id);
        election.finalize_wait = Duration::from_millis(50);
        let mut others = peers.clone();
        others.remove(&id);
        let config = NodeConfig {
            election,
            quorum: Quorum::Majority(Majority::new(peers.keys().copied()).unwrap()),
            transport: TransportConfig::new(id, listen, others),
            disk: Persistent::default(),
            data_dir: None,
        };
        let guard = recorders[&id].guard();
        let node = Node::start(config).await.unwrap();
        drop(guard);
        nodes.insert(id, node);
    }
    let id_label = |id: u64| id.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Drain events so that the nodes' channels do not grow.
        for node in nodes.values_mut() {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(1), node.next_event()).await
            {
            }
        }
        let states: Vec<Option<f64>> = recorders
            .iter()
            .map(|(&id, r)| r.gauge(STATE, &[("id", &id_label(id))]))
            .collect();
        let connected = recorders
            .iter()
            .all(|(&id, r)| r.gauge(CONNECTED_PEERS, &[("id", &id_label(id))]) == Some(2.0));
        if states == [Some(1.0), Some(1.0), Some(2.0)] && connected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no settled election: states {states:?}, {recorders:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (&id, r) in &recorders {
        let label = id_label(id);
        let l = [("id", label.as_str())];
        assert_eq!(r.counter(ELECTIONS, &l), 1, "server {id}: one election");
        assert_eq!(
            r.counter_sum(LEADER_ELECTED),
            1,
            "server {id}: one decision"
        );
        assert_eq!(r.counter(RECONNECTS, &l), 0, "server {id}");
        assert_eq!(r.counter_sum(FRAMES_REJECTED), 0, "server {id}");
        let took = r.gauge(ELECTION_LAST_DURATION, &l).expect("a duration");
        assert!(
            (0.05..20.0).contains(&took),
            "server {id}: the election took {took} s, finalize wait included"
        );
        assert!(
            r.gauge(EPOCH, &l).is_some_and(|e| e >= 1.0),
            "server {id}: {r:?}"
        );
    }
}

/// `zab-node --metrics-addr` serves the node's metrics for Prometheus.
#[test]
fn zab_node_serves_its_metrics_for_prometheus() {
    let c = Cluster::start_full(3, false, true);
    let (leader, _) = c.wait_stable(0, Duration::from_secs(20));
    // `testkit::scrape` fails unless the answer is a `200`.
    let scrape = |id: u64| testkit::scrape(c.metrics[&id], Duration::from_secs(10)).unwrap();
    let body = scrape(leader);
    assert!(
        body.contains(&format!("zab_state{{id=\"{leader}\"}} 2")),
        "the leader reports LEADING: {body}"
    );
    assert!(
        body.contains(&format!(
            "zab_transport_connected_peers{{id=\"{leader}\"}} 2"
        )),
        "{body}"
    );
    assert!(
        body.contains("zab_election_duration_seconds_bucket"),
        "{body}"
    );
    let follower = if leader == 1 { 2 } else { 1 };
    assert!(
        scrape(follower).contains(&format!("zab_state{{id=\"{follower}\"}} 1")),
        "a follower reports FOLLOWING"
    );
}
