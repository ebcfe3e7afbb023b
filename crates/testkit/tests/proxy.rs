//! The fault proxy in each mode, in front of the real Redis.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use testkit::{FaultProxy, Mode, Service};

fn redis_proxy() -> FaultProxy {
    testkit::require(Service::Redis);
    FaultProxy::start(Service::Redis.addr().expect("redis address")).expect("start proxy")
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).expect("connect through proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Sends PING and returns the raw reply, or the read error.
fn ping(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[test]
fn pass_forwards_both_ways() {
    let proxy = redis_proxy();
    let mut conn = connect(&proxy);
    assert_eq!(ping(&mut conn).unwrap(), "+PONG\r\n");
    assert_eq!(ping(&mut conn).unwrap(), "+PONG\r\n");
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.mode(), Mode::Pass);
}

#[test]
fn cut_drops_live_connections_and_accepts_new_ones() {
    let proxy = redis_proxy();
    let mut conn = connect(&proxy);
    assert_eq!(ping(&mut conn).unwrap(), "+PONG\r\n");
    assert_eq!(proxy.live_connections(), 1);

    proxy.cut();
    let err = ping(&mut conn).expect_err("a cut connection must not answer");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
        "unexpected error kind after cut: {err:?}"
    );
    assert_eq!(proxy.live_connections(), 0);

    let mut fresh = connect(&proxy);
    assert_eq!(ping(&mut fresh).unwrap(), "+PONG\r\n");
}

#[test]
fn refuse_rejects_connects_until_restored() {
    let proxy = redis_proxy();
    let mut live = connect(&proxy);
    assert_eq!(ping(&mut live).unwrap(), "+PONG\r\n");

    proxy.refuse();
    assert_eq!(proxy.mode(), Mode::Refuse);
    let err = TcpStream::connect(proxy.addr()).expect_err("connect must be refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert!(ping(&mut live).is_err(), "live connections drop on refuse");
    assert!(
        Service::Redis
            .probe_addr(proxy.addr(), Duration::from_millis(500))
            .is_err()
    );

    proxy.restore();
    Service::Redis
        .probe_addr(proxy.addr(), Duration::from_secs(2))
        .expect("redis answers again after restore");
}

#[test]
fn blackhole_accepts_but_stays_silent_then_delivers_on_restore() {
    let proxy = redis_proxy();
    let mut live = connect(&proxy);
    assert_eq!(ping(&mut live).unwrap(), "+PONG\r\n");

    proxy.blackhole();
    // A new connection is accepted (no refusal), but nothing comes back.
    let mut fresh = connect(&proxy);
    fresh
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = ping(&mut fresh).expect_err("a blackholed server must stay silent");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "expected a read timeout, got {err:?}"
    );
    live.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(ping(&mut live).is_err(), "live connections stall too");

    // Held requests flow once the partition heals, as TCP would retransmit.
    proxy.restore();
    live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = [0u8; 7];
    live.read_exact(&mut reply)
        .expect("held PING answered after restore");
    assert_eq!(&reply, b"+PONG\r\n");
}

#[test]
fn delay_adds_latency_each_way() {
    let proxy = redis_proxy();
    let mut conn = connect(&proxy);
    assert_eq!(ping(&mut conn).unwrap(), "+PONG\r\n");

    proxy.delay(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(ping(&mut conn).unwrap(), "+PONG\r\n");
    let rtt = started.elapsed();
    assert!(
        rtt >= Duration::from_millis(200),
        "round trip {rtt:?} < 2 × 100 ms"
    );

    proxy.restore();
    let started = Instant::now();
    assert_eq!(ping(&mut conn).unwrap(), "+PONG\r\n");
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[test]
fn require_names_the_service_and_the_command_when_unreachable() {
    // Point a probe at a port where nothing listens: the error must say
    // which service and where.
    let proxy = redis_proxy();
    let addr = proxy.addr();
    proxy.refuse();
    let err = Service::Redis
        .probe_addr(addr, Duration::from_millis(200))
        .expect_err("nothing listens");
    let msg = err.to_string();
    assert!(
        msg.contains("Redis") && msg.contains(&addr.to_string()),
        "{msg}"
    );
}
