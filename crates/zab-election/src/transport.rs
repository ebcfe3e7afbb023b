//! A tokio TCP transport with ZooKeeper's connection rules.
//!
//! * **One connection per pair, opened by the larger id** (ZooKeeper's
//!   `QuorumCnxManager` challenge): a server that dials a larger id only says
//!   hello and hangs up, which prompts the larger id to dial back; a server
//!   that is dialled by a smaller id hangs up and dials back. So when two
//!   servers connect at the same time, the connection opened by the larger
//!   id is the one that survives.
//! * **Reconnects**: a server keeps dialling its smaller peers while it has
//!   no connection to them, backing off from 20 ms to 1 s; the backoff
//!   starts over only once a connection has carried a frame, so a peer that
//!   accepts and hangs up is not redialled in a tight loop.
//! * **Framing**: a big-endian `u32` length, then a payload that starts with
//!   the wire version ([`crate::WIRE_VERSION`]). The first frame of a
//!   connection is a hello carrying the dialler's id.
//! * **Malformed frames** are logged and dropped; the connection stays up.
//!   A frame longer than [`TransportConfig::max_frame`] closes the
//!   connection (its end cannot be found safely). Neither ever panics.
//! * **Queues**: up to [`TransportConfig::queue_capacity`] messages per peer
//!   wait while it is unreachable, the oldest dropped first; when a new
//!   connection comes up and nothing waits, the last message sent is sent
//!   again (it may have died with the old connection), as ZooKeeper does.
//!   Up to 1024 frames wait for a connected peer's socket; once a peer
//!   stops reading and its socket buffers and those frames are full,
//!   further messages to it are dropped, so a stalled peer costs bounded
//!   memory.
//!
//! Messages may thus be lost or duplicated, and never reordered on one
//! connection; the election tolerates loss and duplication.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::message::{Message, WIRE_VERSION};
use crate::types::ServerId;

const KIND_HELLO: u8 = 0;

/// The largest `max_frame` a config may ask for.
const MAX_FRAME_LIMIT: usize = 1 << 20;

const HOUR: Duration = Duration::from_secs(3600);

/// Frames that may wait for one connection's socket: enough for any burst
/// of election traffic, and a bound on what a peer that stops reading costs.
const WRITE_BACKLOG: usize = 1024;

/// Where this server listens and where its peers are.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This server's id.
    pub id: ServerId,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Every other server's address.
    pub peers: BTreeMap<ServerId, SocketAddr>,
    /// The largest payload accepted (default 4096 bytes, at most 1 MiB).
    pub max_frame: usize,
    /// Messages kept per unreachable peer (default 16, at most 1024).
    pub queue_capacity: usize,
    /// First reconnect delay (default 20 ms); it doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest reconnect delay (default 1 s, at most an hour).
    pub reconnect_max: Duration,
    /// How long a dial or a hello may take (default 2 s, at most an hour).
    pub handshake_timeout: Duration,
}

impl TransportConfig {
    /// Defaults for server `id` listening on `listen`.
    #[must_use]
    pub fn new(id: ServerId, listen: SocketAddr, peers: BTreeMap<ServerId, SocketAddr>) -> Self {
        TransportConfig {
            id,
            listen,
            peers,
            max_frame: 4096,
            queue_capacity: 16,
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, reason| Err(Error::invalid(field, value, reason));
        if self.peers.contains_key(&self.id) {
            return bad(
                "peers",
                self.id.to_string(),
                "must not contain this server's own id",
            );
        }
        // The frame buffer is allocated from the length a peer announces,
        // up to this bound: keep it small.
        if self.max_frame < crate::message::MAX_MESSAGE_LEN || self.max_frame > MAX_FRAME_LIMIT {
            return bad(
                "max_frame",
                self.max_frame.to_string(),
                "must hold the largest message and be at most 1 MiB",
            );
        }
        if self.queue_capacity == 0 || self.queue_capacity > WRITE_BACKLOG {
            return bad(
                "queue_capacity",
                self.queue_capacity.to_string(),
                "must be between 1 and 1024",
            );
        }
        if self.reconnect_min.is_zero() {
            return bad(
                "reconnect_min",
                format!("{:?}", self.reconnect_min),
                "must be positive",
            );
        }
        if self.reconnect_max < self.reconnect_min || self.reconnect_max > HOUR {
            return bad(
                "reconnect_max",
                format!("{:?}", self.reconnect_max),
                "must be between reconnect_min and an hour",
            );
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > HOUR {
            return bad(
                "handshake_timeout",
                format!("{:?}", self.handshake_timeout),
                "must be positive and at most an hour",
            );
        }
        Ok(())
    }
}

/// What the transport reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// A message arrived.
    Message {
        /// The sender.
        from: ServerId,
        /// The message.
        msg: Message,
    },
    /// The connection to a peer is up; `outbound` when this server dialled
    /// it (which it does only towards smaller ids).
    Connected {
        /// The peer.
        peer: ServerId,
        /// Whether this server opened the connection.
        outbound: bool,
    },
    /// The connection to a peer went down.
    Disconnected(ServerId),
    /// A frame was rejected (logged too); `from` is `None` before the hello.
    Rejected {
        /// The peer, if known.
        from: Option<ServerId>,
        /// What kind of fault, for counting.
        reason: RejectReason,
        /// What was wrong.
        error: String,
    },
}

/// Why the transport rejected a frame or a connection: a small fixed set,
/// so that it can label a metric (`zab_frames_rejected_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RejectReason {
    /// A payload that does not decode (unknown kind, wrong length, a field
    /// out of range), or a hello that is not one; the frame is dropped.
    Malformed,
    /// A frame of a wire version this build does not speak; dropped.
    Version,
    /// A frame announcing more than `max_frame` bytes; the connection is
    /// closed.
    TooLarge,
    /// A connection whose hello claims an id that is not a peer (or is this
    /// server's own); refused.
    UnknownPeer,
    /// A connection that sent no hello within the handshake timeout, or
    /// failed while sending it; refused.
    Handshake,
}

impl RejectReason {
    /// Every reason, in a fixed order.
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Malformed,
        RejectReason::Version,
        RejectReason::TooLarge,
        RejectReason::UnknownPeer,
        RejectReason::Handshake,
    ];

    /// The reason's position in [`ALL`](Self::ALL), which indexes per-reason
    /// counters. The match is exhaustive: a new variant does not compile
    /// until it gets the next index here and its place at the end of `ALL`
    /// (a compile-time check below holds the two in step).
    pub(crate) const fn index(self) -> usize {
        match self {
            RejectReason::Malformed => 0,
            RejectReason::Version => 1,
            RejectReason::TooLarge => 2,
            RejectReason::UnknownPeer => 3,
            RejectReason::Handshake => 4,
        }
    }

    /// The reason as a metric label: `malformed`, `version`, `too_large`,
    /// `unknown_peer` or `handshake`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Version => "version",
            RejectReason::TooLarge => "too_large",
            RejectReason::UnknownPeer => "unknown_peer",
            RejectReason::Handshake => "handshake",
        }
    }

    /// The reason for an error while reading or decoding a frame (an I/O
    /// error can only be reported during the hello: a failed handshake).
    fn of(e: &Error) -> Self {
        match e {
            Error::FrameTooLarge { .. } => RejectReason::TooLarge,
            Error::UnsupportedVersion(_) => RejectReason::Version,
            Error::Io(_) => RejectReason::Handshake,
            _ => RejectReason::Malformed,
        }
    }
}

// `RejectReason::ALL[i].index() == i` for every `i`: `ALL` lists each
// reason at its index, so a counter array built from `ALL` is indexed by
// `index()`.
const _: () = {
    let mut i = 0;
    while i < RejectReason::ALL.len() {
        assert!(RejectReason::ALL[i].index() == i);
        i += 1;
    }
};

/// What the manager task hears: from the `Transport` handle, the accept
/// loop, the dialling tasks and each connection's reader.
enum Internal {
    Send(ServerId, Message),
    /// A connection that won the tie-break, after the hello.
    Up {
        peer: ServerId,
        stream: TcpStream,
        outbound: bool,
    },
    Frame {
        peer: ServerId,
        conn: u64,
        msg: Message,
    },
    Bad {
        peer: Option<ServerId>,
        reason: RejectReason,
        error: String,
    },
    Closed {
        peer: ServerId,
        conn: u64,
    },
    /// Dial the smaller peer now (a larger one prompted us, or a retry is due).
    Dial(ServerId),
    DialFailed(ServerId),
    Shutdown,
}

/// The running transport. Dropping it stops every task.
#[derive(Debug)]
pub struct Transport {
    tx: mpsc::UnboundedSender<Internal>,
    events: mpsc::UnboundedReceiver<TransportEvent>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Transport {
    /// Binds the listener and starts connecting to the peers.
    pub async fn bind(config: TransportConfig) -> Result<Transport> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let accept = tokio::spawn(accept_loop(listener, config.clone(), tx.clone()));
        let manager = tokio::spawn(Manager::new(config, tx.clone(), ev_tx).run(rx));
        Ok(Transport {
            tx,
            events,
            local_addr,
            tasks: vec![accept, manager],
        })
    }

    /// The address the listener is bound to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues `msg` for `to`; never blocks. Unknown peers are ignored.
    pub fn send(&self, to: ServerId, msg: Message) {
        let _ = self.tx.send(Internal::Send(to, msg));
    }

    /// The next event; `None` once the transport has stopped.
    pub async fn recv(&mut self) -> Option<TransportEvent> {
        self.events.recv().await
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        let _ = self.tx.send(Internal::Shutdown);
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn hello_frame(id: ServerId) -> Vec<u8> {
    let mut f = Vec::with_capacity(14);
    f.extend_from_slice(&10u32.to_be_bytes());
    f.push(WIRE_VERSION);
    f.push(KIND_HELLO);
    f.extend_from_slice(&id.to_be_bytes());
    f
}

/// Reads one frame's payload; `Ok(None)` on a clean end of stream.
async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    max: usize,
) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(Some(payload))
}

fn parse_hello(payload: &[u8]) -> Result<ServerId> {
    match payload {
        [v, KIND_HELLO, id @ ..] if *v == WIRE_VERSION && id.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(id);
            Ok(u64::from_be_bytes(b))
        }
        [v, ..] if *v != WIRE_VERSION => Err(Error::UnsupportedVersion(*v)),
        _ => Err(Error::MalformedFrame(format!(
            "bad hello of {} bytes",
            payload.len()
        ))),
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: TransportConfig,
    tx: mpsc::UnboundedSender<Internal>,
) {
    loop {
        let Ok((mut stream, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let config = config.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let hello = tokio::time::timeout(
                config.handshake_timeout,
                read_frame(&mut stream, config.max_frame),
            )
            .await;
            let peer = match hello {
                Ok(Ok(Some(p))) => parse_hello(&p).map_err(|e| (RejectReason::of(&e), e)),
                Ok(Ok(None)) => return,
                Ok(Err(e)) => Err((RejectReason::of(&e), e)),
                Err(_) => Err((
                    RejectReason::Handshake,
                    Error::MalformedFrame("no hello in time".into()),
                )),
            };
            let peer = match peer {
                Ok(p) => p,
                Err((reason, e)) => {
                    tracing::warn!(%addr, error = %e, "rejecting a connection");
                    let _ = tx.send(Internal::Bad {
                        peer: None,
                        reason,
                        error: format!("connection from {addr}: {e}"),
                    });
                    return;
                }
            };
            if peer == config.id || !config.peers.contains_key(&peer) {
                tracing::warn!(%addr, peer, "rejecting a connection from an unknown or own id");
                let _ = tx.send(Internal::Bad {
                    peer: Some(peer),
                    reason: RejectReason::UnknownPeer,
                    error: format!("connection from {addr} claims unknown id {peer}"),
                });
                return;
            }
            if peer < config.id {
                // We win the challenge: drop theirs and dial back.
                drop(stream);
                let _ = tx.send(Internal::Dial(peer));
            } else {
                let _ = tx.send(Internal::Up {
                    peer,
                    stream,
                    outbound: false,
                });
            }
        });
    }
}

struct Link {
    conn: Option<(u64, mpsc::Sender<Vec<u8>>)>,
    queue: VecDeque<Message>,
    last_sent: Option<Message>,
    dialing: bool,
    backoff: Duration,
}

struct Manager {
    config: TransportConfig,
    tx: mpsc::UnboundedSender<Internal>,
    events: mpsc::UnboundedSender<TransportEvent>,
    links: BTreeMap<ServerId, Link>,
    next_conn: u64,
}

impl Manager {
    fn new(
        config: TransportConfig,
        tx: mpsc::UnboundedSender<Internal>,
        events: mpsc::UnboundedSender<TransportEvent>,
    ) -> Self {
        let links = config
            .peers
            .keys()
            .map(|&p| {
                (
                    p,
                    Link {
                        conn: None,
                        queue: VecDeque::new(),
                        last_sent: None,
                        dialing: false,
                        backoff: config.reconnect_min,
                    },
                )
            })
            .collect();
        Manager {
            config,
            tx,
            events,
            links,
            next_conn: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Internal>) {
        let smaller: Vec<ServerId> = self
            .links
            .keys()
            .copied()
            .filter(|&p| p < self.config.id)
            .collect();
        for p in smaller {
            self.dial(p);
        }
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Internal::Send(to, msg) => self.send(to, msg),
                Internal::Up {
                    peer,
                    stream,
                    outbound,
                } => self.up(peer, stream, outbound),
                Internal::Frame { peer, conn, msg } => {
                    let min = self.config.reconnect_min;
                    let Some(link) = self.links.get_mut(&peer) else {
                        continue;
                    };
                    if link.conn.as_ref().is_some_and(|(c, _)| *c == conn) {
                        // The connection works: the next reconnect is quick.
                        link.backoff = min;
                        let _ = self
                            .events
                            .send(TransportEvent::Message { from: peer, msg });
                    }
                }
                Internal::Bad {
                    peer,
                    reason,
                    error,
                } => {
                    let _ = self.events.send(TransportEvent::Rejected {
                        from: peer,
                        reason,
                        error,
                    });
                }
                Internal::Closed { peer, conn } => self.closed(peer, conn),
                Internal::Dial(peer) => {
                    if let Some(l) = self.links.get_mut(&peer) {
                        l.dialing = false;
                    }
                    self.dial(peer);
                }
                Internal::DialFailed(peer) => self.dial_failed(peer),
                Internal::Shutdown => break,
            }
        }
    }

    fn send(&mut self, to: ServerId, msg: Message) {
        let Some(link) = self.links.get_mut(&to) else {
            return;
        };
        link.last_sent = Some(msg);
        if let Some((_, w)) = &link.conn {
            match w.try_send(msg.to_frame()) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The peer has stopped reading: its socket buffer and
                    // the writer's queue are full. Lose the message rather
                    // than hold an ever longer backlog for it.
                    tracing::debug!(peer = to, "peer not reading: message dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if link.queue.len() >= self.config.queue_capacity {
            link.queue.pop_front();
        }
        link.queue.push_back(msg);
        self.dial(to);
    }

    /// Opens a connection to `peer` unless one is up or being opened. To a
    /// larger id this only says hello, so that it dials back.
    fn dial(&mut self, peer: ServerId) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link.conn.is_some() || link.dialing {
            return;
        }
        link.dialing = true;
        let Some(&addr) = self.config.peers.get(&peer) else {
            return;
        };
        let me = self.config.id;
        let tx = self.tx.clone();
        let timeout = self.config.handshake_timeout;
        tokio::spawn(async move {
            let dialed = tokio::time::timeout(timeout, async {
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                s.write_all(&hello_frame(me)).await?;
                Ok::<_, std::io::Error>(s)
            })
            .await;
            match dialed {
                Ok(Ok(stream)) if peer < me => {
                    let _ = tx.send(Internal::Up {
                        peer,
                        stream,
                        outbound: true,
                    });
                }
                Ok(Ok(stream)) => {
                    // We lose the challenge: hang up, the peer dials back.
                    drop(stream);
                    let _ = tx.send(Internal::DialFailed(peer));
                }
                _ => {
                    let _ = tx.send(Internal::DialFailed(peer));
                }
            }
        });
    }

    fn dial_failed(&mut self, peer: ServerId) {
        let me = self.config.id;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link.conn.is_some() {
            link.dialing = false;
            return;
        }
        // Retry after a backoff: always for smaller peers (we own the
        // connection), for larger ones only while messages wait.
        if peer < me || !link.queue.is_empty() {
            self.redial_later(peer);
        } else {
            link.dialing = false;
        }
    }

    /// Dials `peer` again after its backoff, which doubles up to
    /// `reconnect_max` and drops back to `reconnect_min` only once a
    /// connection has carried a frame: a peer that accepts and hangs up at
    /// once is not redialled in a tight loop.
    fn redial_later(&mut self, peer: ServerId) {
        let max = self.config.reconnect_max;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.dialing = true;
        let delay = link.backoff;
        link.backoff = (link.backoff * 2).min(max);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Internal::Dial(peer));
        });
    }

    fn up(&mut self, peer: ServerId, stream: TcpStream, outbound: bool) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if outbound {
            link.dialing = false;
        }
        self.next_conn += 1;
        let conn = self.next_conn;
        let replaced = link.conn.is_some();
        let (read, mut write) = stream.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITE_BACKLOG);
        // Replacing the sender closes the old writer, which ends the old
        // connection; its reader's close is then ignored (stale id).
        link.conn = Some((conn, wtx.clone()));
        tokio::spawn(async move {
            while let Some(frame) = wrx.recv().await {
                if write.write_all(&frame).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let tx = self.tx.clone();
        let max = self.config.max_frame;
        tokio::spawn(async move {
            let mut read = read;
            loop {
                match read_frame(&mut read, max).await {
                    Ok(Some(payload)) => match Message::decode_payload(&payload) {
                        Ok(msg) => {
                            let _ = tx.send(Internal::Frame { peer, conn, msg });
                        }
                        Err(e) => {
                            tracing::warn!(peer, error = %e, "dropping a malformed frame");
                            let _ = tx.send(Internal::Bad {
                                peer: Some(peer),
                                reason: RejectReason::of(&e),
                                error: e.to_string(),
                            });
                        }
                    },
                    Ok(None) => break,
                    Err(Error::Io(e)) => {
                        tracing::debug!(peer, error = %e, "connection closed");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(peer, error = %e, "closing the connection");
                        let _ = tx.send(Internal::Bad {
                            peer: Some(peer),
                            reason: RejectReason::of(&e),
                            error: e.to_string(),
                        });
                        break;
                    }
                }
            }
            let _ = tx.send(Internal::Closed { peer, conn });
        });
        // Flush what waited; with nothing waiting, resend the last message.
        let mut pending: Vec<Message> = link.queue.drain(..).collect();
        if pending.is_empty() {
            pending.extend(link.last_sent);
        }
        for m in pending {
            // Fewer than WRITE_BACKLOG (queue_capacity is bounded below it).
            let _ = wtx.try_send(m.to_frame());
        }
        if !replaced {
            let _ = self
                .events
                .send(TransportEvent::Connected { peer, outbound });
        }
    }

    fn closed(&mut self, peer: ServerId, conn: u64) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link.conn.as_ref().is_none_or(|(c, _)| *c != conn) {
            return;
        }
        link.conn = None;
        let redial = peer < self.config.id && !link.dialing;
        let _ = self.events.send(TransportEvent::Disconnected(peer));
        if redial {
            self.redial_later(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_field_and_value() {
        let ok = TransportConfig::new(
            1,
            SocketAddr::from(([127, 0, 0, 1], 4001)),
            BTreeMap::from([(2, SocketAddr::from(([127, 0, 0, 1], 4002)))]),
        );
        ok.validate().unwrap();
        let check = |tweak: &dyn Fn(&mut TransportConfig), says: &str| {
            let mut c = ok.clone();
            tweak(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        };
        check(&|c| c.max_frame = 8, "max_frame = 8");
        check(&|c| c.max_frame = usize::MAX, "max_frame");
        check(&|c| c.queue_capacity = 0, "queue_capacity = 0");
        check(&|c| c.queue_capacity = 5000, "queue_capacity = 5000");
        check(&|c| c.reconnect_min = Duration::ZERO, "reconnect_min = 0ns");
        check(
            &|c| c.reconnect_max = Duration::from_millis(1),
            "reconnect_max = 1ms",
        );
        check(&|c| c.reconnect_max = Duration::MAX, "reconnect_max");
        check(
            &|c| c.handshake_timeout = Duration::ZERO,
            "handshake_timeout = 0ns",
        );
        check(&|c| c.id = 2, "peers = 2");
    }
}
