//! The `zab-node` command line, shared by the binary and by benchmarks
//! that run nodes as child processes.
//!
//! ```text
//! zab-node --id N --peers 1=127.0.0.1:4001,2=127.0.0.1:4002,3=127.0.0.1:4003
//!          [--zxid Z] [--epoch E] [--finalize-wait-ms MS] [--tick-ms MS]
//!          [--data-dir DIR] [--metrics-addr HOST:PORT]
//! ```
//!
//! Prints every state change as one JSON line on stdout, e.g.
//! `{"id":1,"state":"LEADING","leader":1,"round":3,"peer_epoch":0,"zxid":0,"elapsed_ms":212}`
//! (`elapsed_ms` counts from the node's start; a LEADING or FOLLOWING line
//! with a new `peer_epoch` means the leader is established); rejected
//! frames and errors go to stderr. With `--metrics-addr` the node serves
//! its metrics ([`crate::metrics`]) for Prometheus at
//! `http://HOST:PORT/metrics`, and says so on stderr.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::metrics::{ELECTION_DURATION, ELECTION_DURATION_BUCKETS};
use crate::node::{Node, NodeConfig, NodeEvent};
use crate::transport::TransportConfig;
use crate::{Config, Event, Majority, Persistent, Quorum, Status};

/// The usage text.
pub const USAGE: &str = "usage: zab-node --id N --peers ID=HOST:PORT,... [--zxid Z] [--epoch E] \
[--finalize-wait-ms MS] [--tick-ms MS] [--data-dir DIR] [--metrics-addr HOST:PORT]

  --id N                 this server's id; must be one of --peers
  --peers LIST           every server, this one included: 1=127.0.0.1:4001,2=...
  --zxid Z               last logged zxid (decimal or 0x hex), default 0
  --epoch E              accepted and current epoch when no --data-dir file says otherwise, default 0
  --finalize-wait-ms MS  wait after a quorum agrees, default 200
  --tick-ms MS           ZooKeeper's tickTime: pings every half tick, limits in ticks, default 2000
  --data-dir DIR         keep acceptedEpoch/currentEpoch here (fsynced)
  --metrics-addr ADDR    serve the zab_* metrics for Prometheus at http://ADDR/metrics";

#[derive(Debug)]
struct Args {
    id: u64,
    peers: BTreeMap<u64, SocketAddr>,
    zxid: u64,
    epoch: u64,
    finalize_wait_ms: u64,
    tick_ms: u64,
    data_dir: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
}

fn parse_u64(flag: &str, v: &str) -> Result<u64, String> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| format!("{flag}: `{v}` is not a number"))
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut id = None;
    let mut peers = None;
    let mut a = Args {
        id: 0,
        peers: BTreeMap::new(),
        zxid: 0,
        epoch: 0,
        finalize_wait_ms: 200,
        tick_ms: 2000,
        data_dir: None,
        metrics_addr: None,
    };
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--id" => id = Some(parse_u64("--id", &value)?),
            "--peers" => {
                let mut map = BTreeMap::new();
                for item in value.split(',').filter(|s| !s.is_empty()) {
                    let (sid, addr) = item
                        .split_once('=')
                        .ok_or_else(|| format!("--peers: `{item}` is not ID=HOST:PORT"))?;
                    let sid = parse_u64("--peers", sid)?;
                    let addr: SocketAddr = addr
                        .parse()
                        .map_err(|_| format!("--peers: `{addr}` is not HOST:PORT"))?;
                    if map.insert(sid, addr).is_some() {
                        return Err(format!("--peers: id {sid} appears twice"));
                    }
                }
                peers = Some(map);
            }
            "--zxid" => a.zxid = parse_u64("--zxid", &value)?,
            "--epoch" => a.epoch = parse_u64("--epoch", &value)?,
            "--finalize-wait-ms" => a.finalize_wait_ms = parse_u64("--finalize-wait-ms", &value)?,
            "--tick-ms" => a.tick_ms = parse_u64("--tick-ms", &value)?,
            "--data-dir" => a.data_dir = Some(PathBuf::from(value)),
            "--metrics-addr" => {
                a.metrics_addr = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--metrics-addr: `{value}` is not HOST:PORT"))?,
                );
            }
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    a.id = id.ok_or("--id is required")?;
    a.peers = peers.ok_or("--peers is required")?;
    if !a.peers.contains_key(&a.id) {
        return Err(format!("--id {} is not in --peers", a.id));
    }
    Ok(Some(a))
}

/// One JSON line; every field is a number or a fixed word, so no escaping.
fn json_line(s: &Status, elapsed: Duration) -> String {
    let leader = s
        .leader
        .map_or_else(|| "null".to_owned(), |l| l.to_string());
    format!(
        "{{\"id\":{},\"state\":\"{}\",\"leader\":{},\"round\":{},\"peer_epoch\":{},\"zxid\":{},\"elapsed_ms\":{}}}",
        s.id,
        s.state.as_str(),
        leader,
        s.round,
        s.peer_epoch,
        s.zxid,
        elapsed.as_millis()
    )
}

/// Installs the Prometheus recorder and its listener on `addr`, before the
/// node registers its metric handles.
fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(ELECTION_DURATION.to_owned()),
            ELECTION_DURATION_BUCKETS,
        )
        .and_then(|b| b.install())
        .map_err(|e| format!("--metrics-addr {addr}: {e}"))
}

async fn run(a: Args) -> Result<(), String> {
    let mut election = Config::new(a.id);
    election.finalize_wait = Duration::from_millis(a.finalize_wait_ms);
    election.tick = Duration::from_millis(a.tick_ms);
    election.validate().map_err(|e| e.to_string())?;
    let quorum =
        Quorum::Majority(Majority::new(a.peers.keys().copied()).map_err(|e| e.to_string())?);
    let listen = a.peers[&a.id];
    let mut others = a.peers.clone();
    others.remove(&a.id);
    let config = NodeConfig {
        election,
        quorum,
        transport: TransportConfig::new(a.id, listen, others),
        disk: Persistent {
            zxid: a.zxid,
            accepted_epoch: a.epoch,
            current_epoch: a.epoch,
        },
        data_dir: a.data_dir,
    };
    if let Some(addr) = a.metrics_addr {
        serve_metrics(addr)?;
        eprintln!("zab-node {}: metrics on http://{addr}/metrics", a.id);
    }
    let mut node = Node::start(config).await.map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    loop {
        tokio::select! {
            ev = node.next_event() => match ev {
                Some(NodeEvent::Peer { elapsed, event: Event::StateChanged(s) }) => {
                    let _ = writeln!(out, "{}", json_line(&s, elapsed));
                    let _ = out.flush();
                }
                Some(NodeEvent::Peer { event: Event::LostLeader { reason }, .. }) => {
                    eprintln!("zab-node {}: looking again: {reason}", a.id);
                }
                Some(NodeEvent::Rejected { from, reason, error }) => {
                    eprintln!(
                        "zab-node {}: rejected frame from {from:?} ({}): {error}",
                        a.id,
                        reason.as_str()
                    );
                }
                Some(_) => {}
                // The node's loop ended on its own: an epoch file could not
                // be written, say. Say why.
                None => {
                    return match node.shutdown().await {
                        Ok(()) => Err("node stopped".into()),
                        Err(e) => Err(format!("node stopped: {e}")),
                    };
                }
            },
            _ = tokio::signal::ctrl_c() => return node.shutdown().await.map_err(|e| e.to_string()),
        }
    }
}

/// Runs `zab-node` with `args` (without the program name) until Ctrl-C;
/// returns the process exit code: 0, 1 on a runtime error, 2 on bad flags.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match parse_args(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("zab-node: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zab-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zab-node: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Option<Args>, String> {
        parse_args(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn parses_the_documented_flags() {
        let a = args("--id 2 --peers 1=127.0.0.1:4001,2=127.0.0.1:4002 --zxid 0x10 --epoch 3 --finalize-wait-ms 20")
            .unwrap()
            .unwrap();
        assert_eq!((a.id, a.zxid, a.epoch, a.finalize_wait_ms), (2, 16, 3, 20));
        assert_eq!(a.peers.len(), 2);
        assert_eq!(a.metrics_addr, None);
        let a = args("--id 1 --peers 1=127.0.0.1:4001 --metrics-addr 127.0.0.1:9100")
            .unwrap()
            .unwrap();
        assert_eq!(
            a.metrics_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        assert!(args("--help").unwrap().is_none());
    }

    #[test]
    fn rejects_bad_flags_with_the_value() {
        assert!(args("--peers 1=127.0.0.1:1").unwrap_err().contains("--id"));
        assert!(
            args("--id 3 --peers 1=127.0.0.1:1")
                .unwrap_err()
                .contains("not in --peers")
        );
        assert!(
            args("--id x --peers 1=127.0.0.1:1")
                .unwrap_err()
                .contains("`x`")
        );
        assert!(
            args("--id 1 --peers 1=nowhere")
                .unwrap_err()
                .contains("nowhere")
        );
        assert!(
            args("--id 1 --peers 1=127.0.0.1:1,1=127.0.0.1:2")
                .unwrap_err()
                .contains("twice")
        );
        assert!(args("--id 1 --bogus 2").unwrap_err().contains("--bogus"));
        assert!(
            args("--id 1 --peers 1=127.0.0.1:1 --metrics-addr 9100")
                .unwrap_err()
                .contains("--metrics-addr: `9100`")
        );
    }

    #[test]
    fn json_line_matches_the_documented_shape() {
        let s = Status {
            id: 1,
            state: crate::ServerState::Leading,
            leader: Some(1),
            round: 3,
            peer_epoch: 0,
            zxid: 0,
            serving: false,
        };
        assert_eq!(
            json_line(&s, Duration::from_millis(212)),
            r#"{"id":1,"state":"LEADING","leader":1,"round":3,"peer_epoch":0,"zxid":0,"elapsed_ms":212}"#
        );
    }
}
