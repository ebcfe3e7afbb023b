//! The node driver: a [`Peer`] on a [`Transport`], with the clock and the
//! epoch files. This is the only place that reads the time.
//!
//! The driver wakes on a message, a connection change or the peer's next
//! deadline; it calls `tick(now)` first, then `step`, and drains the peer:
//! events first (a [`Event::Persist`] is written and fsynced before any
//! later message leaves), then messages. It reports what it drains, and its
//! transport's connection changes, through the `metrics` facade: see
//! [`crate::metrics`] for the names.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::NodeMetrics;
use crate::peer::{Event, Peer, Persistent};
use crate::quorum::{Quorum, QuorumVerifier};
use crate::transport::{RejectReason, Transport, TransportConfig, TransportEvent};

/// Everything a node needs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The election's configuration (its `id` must match the transport's).
    pub election: Config,
    /// Who votes.
    pub quorum: Quorum,
    /// Where to listen and where the peers are.
    pub transport: TransportConfig,
    /// The initial durable state, used when `data_dir` holds none.
    pub disk: Persistent,
    /// Where `acceptedEpoch` and `currentEpoch` live; `None` keeps them in
    /// memory only (a restarted node then starts from `disk` again).
    pub data_dir: Option<PathBuf>,
}

impl NodeConfig {
    /// Checks each part and that they agree: the election and transport
    /// configs are valid and name the same server, this server is a member
    /// of the quorum, every other voter has an address and every address
    /// belongs to a member. The error names the first bad field and value.
    pub fn validate(&self) -> Result<()> {
        self.election.validate()?;
        let id = self.election.id;
        if self.transport.id != id {
            return Err(Error::invalid(
                "transport.id",
                self.transport.id.to_string(),
                "must equal election.id",
            ));
        }
        self.transport.validate()?;
        if !self.quorum.is_member(id) {
            return Err(Error::NotAMember { id });
        }
        if let Some(peer) = self
            .transport
            .peers
            .keys()
            .find(|&&p| !self.quorum.is_member(p))
        {
            return Err(Error::invalid(
                "transport.peers",
                peer.to_string(),
                "is not a member of the quorum",
            ));
        }
        if let Some(voter) = self
            .quorum
            .voters()
            .into_iter()
            .find(|v| *v != id && !self.transport.peers.contains_key(v))
        {
            return Err(Error::invalid(
                "transport.peers",
                voter.to_string(),
                "is a voter without an address",
            ));
        }
        Ok(())
    }
}

/// What a node reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// An event of the state machine, with the time since the node started.
    Peer {
        /// Time since start.
        elapsed: Duration,
        /// The event.
        event: Event,
    },
    /// A frame or connection the transport rejected.
    Rejected {
        /// The peer, if known.
        from: Option<u64>,
        /// What kind of fault.
        reason: RejectReason,
        /// What was wrong.
        error: String,
    },
}

/// A running node. Dropping it stops the node.
#[derive(Debug)]
pub struct Node {
    events: mpsc::UnboundedReceiver<NodeEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
    local_addr: std::net::SocketAddr,
}

impl Node {
    /// Validates the config, binds the transport and starts the election.
    /// The node's metric handles are registered here, with the recorder
    /// current at the call (see [`crate::metrics`]).
    pub async fn start(config: NodeConfig) -> Result<Node> {
        config.validate()?;
        let disk = match &config.data_dir {
            Some(dir) => load_epochs(dir, config.disk)?,
            None => config.disk,
        };
        let transport = Transport::bind(config.transport.clone()).await?;
        let local_addr = transport.local_addr();
        let start = Instant::now();
        let peer = Peer::new(
            config.election.clone(),
            config.quorum.clone(),
            disk,
            Duration::ZERO,
        )?;
        let metrics = NodeMetrics::new(config.election.id);
        let (ev_tx, events) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(drive(
            Driver {
                peer,
                transport,
                data_dir: config.data_dir,
                start,
                events: ev_tx,
                metrics,
            },
            stop_rx,
        ));
        Ok(Node {
            events,
            stop: Some(stop_tx),
            task,
            local_addr,
        })
    }

    /// The address the node listens on.
    #[must_use]
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// The next event; `None` once the node has stopped.
    pub async fn next_event(&mut self) -> Option<NodeEvent> {
        self.events.recv().await
    }

    /// Stops the node and returns how its loop ended.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(Error::Io(std::io::Error::other(e))),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the node's task owns.
struct Driver {
    peer: Peer<Quorum>,
    transport: Transport,
    data_dir: Option<PathBuf>,
    start: Instant,
    events: mpsc::UnboundedSender<NodeEvent>,
    metrics: NodeMetrics,
}

async fn drive(mut d: Driver, mut stop: oneshot::Receiver<()>) -> Result<()> {
    d.flush()?;
    loop {
        let deadline = d.peer.next_deadline().map_or_else(
            || Instant::now() + Duration::from_secs(3600),
            |t| d.start + t,
        );
        tokio::select! {
            _ = &mut stop => return Ok(()),
            ev = d.transport.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                d.peer.tick(d.start.elapsed());
                d.metrics.transport_event(&ev);
                match ev {
                    TransportEvent::Message { from, msg } => {
                        if let Err(e) = d.peer.step(from, msg) {
                            tracing::warn!(error = %e, "message rejected by the state machine");
                        }
                    }
                    TransportEvent::Disconnected(p) => d.peer.peer_disconnected(p),
                    TransportEvent::Connected { .. } => {}
                    TransportEvent::Rejected { from, reason, error } => {
                        let _ = d.events.send(NodeEvent::Rejected { from, reason, error });
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => d.peer.tick(d.start.elapsed()),
        }
        d.flush()?;
    }
}

impl Driver {
    /// Drains the peer: events (persisting, counting and forwarding them),
    /// then messages.
    fn flush(&mut self) -> Result<()> {
        while let Some(event) = self.peer.poll_event() {
            if let (Event::Persist(d), Some(dir)) = (&event, self.data_dir.as_deref()) {
                save_epochs(dir, *d)?;
            }
            let elapsed = self.start.elapsed();
            self.metrics.peer_event(&event, elapsed);
            let _ = self.events.send(NodeEvent::Peer { elapsed, event });
        }
        self.metrics.status(&self.peer.status());
        while let Some((to, msg)) = self.peer.poll_message() {
            self.transport.send(to, msg);
        }
        Ok(())
    }
}

/// Reads `acceptedEpoch` and `currentEpoch` from `dir`; missing files keep
/// the values of `default`. A file that is not a number is an error.
pub fn load_epochs(dir: &Path, default: Persistent) -> Result<Persistent> {
    let read = |name: &'static str, dflt: u64| -> Result<u64> {
        match fs::read_to_string(dir.join(name)) {
            Ok(s) => s.trim().parse().map_err(|_| Error::InvalidConfig {
                field: name,
                value: s.trim().to_owned(),
                reason: "epoch file must hold a decimal number",
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dflt),
            Err(e) => Err(e.into()),
        }
    };
    Ok(Persistent {
        zxid: default.zxid,
        accepted_epoch: read("acceptedEpoch", default.accepted_epoch)?,
        current_epoch: read("currentEpoch", default.current_epoch)?,
    })
}

/// Writes both epoch files durably (write, fsync, rename, fsync the directory).
pub fn save_epochs(dir: &Path, d: Persistent) -> Result<()> {
    fs::create_dir_all(dir)?;
    for (name, value) in [
        ("acceptedEpoch", d.accepted_epoch),
        ("currentEpoch", d.current_epoch),
    ] {
        let tmp = dir.join(format!("{name}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{value}")?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
    }
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::Majority;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    fn node_config(id: u64, peers: &[u64], voters: &[u64]) -> NodeConfig {
        let addr = |i: u64| SocketAddr::from(([127, 0, 0, 1], 4000 + i as u16));
        NodeConfig {
            election: Config::new(id),
            quorum: Quorum::Majority(Majority::new(voters.iter().copied()).unwrap()),
            transport: TransportConfig::new(
                id,
                addr(id),
                peers
                    .iter()
                    .map(|&p| (p, addr(p)))
                    .collect::<BTreeMap<_, _>>(),
            ),
            disk: Persistent::default(),
            data_dir: None,
        }
    }

    #[test]
    fn node_config_parts_must_agree() {
        node_config(1, &[2, 3], &[1, 2, 3]).validate().unwrap();
        let mut c = node_config(1, &[2, 3], &[1, 2, 3]);
        c.transport.id = 2;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("transport.id = 2"), "{e}");
        let e = node_config(1, &[2], &[1, 2, 3]).validate().unwrap_err();
        assert!(e.to_string().contains("transport.peers = 3"), "{e}");
        let e = node_config(1, &[2, 3, 4], &[1, 2, 3])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("transport.peers = 4"), "{e}");
        assert!(matches!(
            node_config(4, &[1, 2, 3], &[1, 2, 3]).validate(),
            Err(Error::NotAMember { id: 4 })
        ));
        let mut c = node_config(1, &[2, 3], &[1, 2, 3]);
        c.election.sync_limit = 0;
        assert!(c.validate().unwrap_err().to_string().contains("sync_limit"));
    }

    #[test]
    fn epoch_files_round_trip_and_reject_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let d = Persistent {
            zxid: 3,
            accepted_epoch: 7,
            current_epoch: 6,
        };
        assert_eq!(
            load_epochs(dir.path(), d).unwrap(),
            d,
            "missing files keep defaults"
        );
        save_epochs(
            dir.path(),
            Persistent {
                zxid: 3,
                accepted_epoch: 9,
                current_epoch: 8,
            },
        )
        .unwrap();
        let back = load_epochs(dir.path(), d).unwrap();
        assert_eq!((back.accepted_epoch, back.current_epoch), (9, 8));
        fs::write(dir.path().join("currentEpoch"), "x\n").unwrap();
        assert!(
            load_epochs(dir.path(), d)
                .unwrap_err()
                .to_string()
                .contains("currentEpoch")
        );
    }
}
