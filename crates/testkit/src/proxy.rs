//! A fault-injection TCP proxy.
//!
//! [`FaultProxy`] listens on an ephemeral loopback port and forwards every
//! connection to a real server. At any moment a test can make the "network"
//! fail in one of the ways that real networks do:
//!
//! | call            | new connections             | live connections                  |
//! |-----------------|-----------------------------|-----------------------------------|
//! | [`restore`]     | forwarded                   | forwarded                         |
//! | [`cut`]         | (mode unchanged)            | closed at once, both sides        |
//! | [`refuse`]      | refused (`ECONNREFUSED`)    | closed at once                    |
//! | [`blackhole`]   | accepted, nothing forwarded | stall: nothing forwarded          |
//! | [`delay`]       | forwarded with latency      | forwarded with latency            |
//!
//! Data held during a blackhole is forwarded after [`restore`], as TCP would
//! retransmit it after a partition heals, unless the connection was closed
//! meanwhile. The proxy runs on plain threads, so it serves synchronous and
//! asynchronous tests alike and does not depend on the test's runtime.
//!
//! [`restore`]: FaultProxy::restore
//! [`cut`]: FaultProxy::cut
//! [`refuse`]: FaultProxy::refuse
//! [`blackhole`]: FaultProxy::blackhole
//! [`delay`]: FaultProxy::delay

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the accept loop sleeps when no connection is waiting.
const ACCEPT_POLL: Duration = Duration::from_millis(2);
/// How often stalled pumps re-check whether their connection was closed.
const STALL_POLL: Duration = Duration::from_millis(20);
/// Chunks in flight per direction; bounds memory and gives back-pressure.
const CHUNKS_IN_FLIGHT: usize = 64;
/// Bytes read at a time.
const CHUNK: usize = 16 * 1024;

/// What the proxy currently does with traffic. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything (after the configured delay, if any).
    Pass,
    /// Accept connections but forward nothing, in either direction.
    Blackhole,
    /// Close the listening socket: connection attempts are refused.
    Refuse,
}

/// A TCP proxy in front of a real server that can inject faults on demand.
///
/// ```no_run
/// use testkit::{FaultProxy, Service};
/// use std::time::Duration;
///
/// let proxy = FaultProxy::start(Service::Redis.addr().unwrap()).unwrap();
/// let url = format!("redis://{}", proxy.addr()); // give this to the client
/// proxy.cut();                                  // every live connection drops
/// proxy.delay(Duration::from_millis(50));       // 50 ms each way from now on
/// proxy.restore();                              // back to normal
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    listen_addr: SocketAddr,
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Signalled whenever the mode changes, to wake stalled pumps.
    changed: Condvar,
    stopping: AtomicBool,
    next_conn_id: AtomicU64,
    accepted: AtomicU64,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    delay: Duration,
    /// Whether the acceptor holds an open listening socket.
    listening: bool,
    conns: Vec<Arc<Conn>>,
}

/// One proxied connection: the client side and, once connected, the
/// upstream side.
#[derive(Debug)]
struct Conn {
    id: u64,
    client: TcpStream,
    upstream: Mutex<Option<TcpStream>>,
    closed: AtomicBool,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.shutdown_sockets();
    }

    fn shutdown_sockets(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(up) = lock(&self.upstream).as_ref() {
            let _ = up.shutdown(Shutdown::Both);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<ephemeral>` forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            listen_addr: listener.local_addr()?,
            upstream,
            state: Mutex::new(State {
                mode: Mode::Pass,
                delay: Duration::ZERO,
                listening: true,
                conns: Vec::new(),
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("fault-proxy-{}", shared.listen_addr.port()))
                .spawn(move || accept_loop(&shared, Some(listener)))?
        };
        Ok(FaultProxy {
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.listen_addr
    }

    /// The real server behind the proxy.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        lock(&self.shared.state).mode
    }

    /// Drops every live connection, both sides; new ones follow the mode.
    pub fn cut(&self) {
        let conns = std::mem::take(&mut lock(&self.shared.state).conns);
        for conn in conns {
            conn.close();
        }
    }

    /// Refuses new connections (the listening socket is closed) and drops
    /// the live ones, as a crashed server would.
    pub fn refuse(&self) {
        self.set_mode(Mode::Refuse);
        self.cut();
        // Return only once the socket is closed, so that a connect made
        // right after this call is refused.
        self.wait_listening(false);
    }

    /// Accepts connections but forwards nothing, on new and live connections
    /// alike: clients see a server that has gone silent.
    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole);
    }

    /// Adds `latency` to every chunk forwarded from now on, each direction.
    pub fn delay(&self, latency: Duration) {
        lock(&self.shared.state).delay = latency;
        self.shared.changed.notify_all();
    }

    /// Forwards everything again without delay; held data flows on.
    pub fn restore(&self) {
        let mut state = lock(&self.shared.state);
        state.mode = Mode::Pass;
        state.delay = Duration::ZERO;
        drop(state);
        self.shared.changed.notify_all();
        // Return only once the acceptor listens again if it had refused.
        self.wait_listening(true);
    }

    /// Connections accepted since the proxy started.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open through the proxy.
    pub fn live_connections(&self) -> usize {
        lock(&self.shared.state)
            .conns
            .iter()
            .filter(|c| !c.is_closed())
            .count()
    }

    fn set_mode(&self, mode: Mode) {
        lock(&self.shared.state).mode = mode;
        self.shared.changed.notify_all();
    }

    fn wait_listening(&self, listening: bool) {
        let mut state = lock(&self.shared.state);
        while state.listening != listening && !self.shared.stopping.load(Ordering::SeqCst) {
            state = self
                .shared
                .changed
                .wait_timeout(state, STALL_POLL)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        self.cut();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking pump thread must not take the whole proxy down with it.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(shared: &Arc<Shared>, mut listener: Option<TcpListener>) {
    while !shared.stopping.load(Ordering::SeqCst) {
        let mode = lock(&shared.state).mode;
        let was_listening = listener.is_some();
        match (mode, was_listening) {
            (Mode::Refuse, true) => listener = None,
            (Mode::Pass | Mode::Blackhole, false) => listener = rebind(shared.listen_addr),
            _ => {}
        }
        if listener.is_some() != was_listening {
            lock(&shared.state).listening = listener.is_some();
            shared.changed.notify_all();
        }
        let Some(l) = &listener else {
            thread::sleep(ACCEPT_POLL);
            continue;
        };
        match l.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let conn = Arc::new(Conn {
                    id: shared.next_conn_id.fetch_add(1, Ordering::SeqCst),
                    client,
                    upstream: Mutex::new(None),
                    closed: AtomicBool::new(false),
                });
                let mut state = lock(&shared.state);
                state.conns.retain(|c| !c.is_closed());
                state.conns.push(Arc::clone(&conn));
                drop(state);
                let shared = Arc::clone(shared);
                let _ = thread::Builder::new()
                    .name(format!("fault-proxy-conn-{}", conn.id))
                    .spawn(move || serve(&shared, &conn));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
    }
}

fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    let listener = TcpListener::bind(addr).ok()?;
    listener.set_nonblocking(true).ok()?;
    Some(listener)
}

/// Connects upstream once the mode allows, then pumps both directions.
fn serve(shared: &Arc<Shared>, conn: &Arc<Conn>) {
    if !wait_until_passing(shared, conn) {
        return;
    }
    let upstream = match TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(_) => {
            conn.close();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let clones = (
        conn.client.try_clone(),
        upstream.try_clone(),
        conn.client.try_clone(),
        upstream.try_clone(),
    );
    *lock(&conn.upstream) = Some(upstream);
    if conn.is_closed() {
        // `cut` ran while we were connecting and saw no upstream yet.
        conn.shutdown_sockets();
        return;
    }
    let (Ok(client_r), Ok(upstream_w), Ok(client_w), Ok(upstream_r)) = clones else {
        conn.close();
        return;
    };
    pump(shared, conn, client_r, upstream_w);
    pump(shared, conn, upstream_r, client_w);
}

/// Blocks while the proxy is blackholed; false if the connection closed.
fn wait_until_passing(shared: &Shared, conn: &Conn) -> bool {
    let mut state = lock(&shared.state);
    loop {
        if conn.is_closed() || shared.stopping.load(Ordering::SeqCst) {
            return false;
        }
        if state.mode == Mode::Pass {
            return true;
        }
        state = shared
            .changed
            .wait_timeout(state, STALL_POLL)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// Copies `from` to `to` on two threads: a reader that stamps each chunk
/// with its due time, and a writer that holds it until then (and while the
/// proxy is blackholed). A bounded channel between them gives back-pressure.
fn pump(shared: &Arc<Shared>, conn: &Arc<Conn>, mut from: TcpStream, mut to: TcpStream) {
    let (tx, rx): (SyncSender<(Instant, Vec<u8>)>, Receiver<_>) = sync_channel(CHUNKS_IN_FLIGHT);
    {
        let shared = Arc::clone(shared);
        let conn = Arc::clone(conn);
        let _ = thread::Builder::new()
            .name(format!("fault-proxy-read-{}", conn.id))
            .spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let due = Instant::now() + lock(&shared.state).delay;
                            if tx.send((due, buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    }
                }
                // EOF from one side: let the writer drain, then it closes.
            });
    }
    let shared = Arc::clone(shared);
    let conn = Arc::clone(conn);
    let _ = thread::Builder::new()
        .name(format!("fault-proxy-write-{}", conn.id))
        .spawn(move || {
            while let Ok((due, chunk)) = rx.recv() {
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
                if !wait_until_passing(&shared, &conn) || to.write_all(&chunk).is_err() {
                    break;
                }
            }
            conn.close();
        });
}
