//! Where the real services live, and how to tell that they answer.
//!
//! Every endpoint comes from an environment variable with a loopback default,
//! so tests, examples and `cargo xtask services` agree on one address:
//!
//! | service   | variable     | default                                   |
//! |-----------|--------------|-------------------------------------------|
//! | RabbitMQ  | `AMQP_URL`   | `amqp://guest:guest@127.0.0.1:5672/%2f`   |
//! | Redis     | `REDIS_URL`  | `redis://127.0.0.1:6379`                  |
//! | ZooKeeper | `ZK_CONNECT` | `127.0.0.1:2181`                          |
//!
//! Readiness is checked over each service's own protocol, not by a bare TCP
//! connect: a port can be open long before the server behind it serves.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::ProbeError;

/// One of the servers the workspace's tests and demos talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// RabbitMQ, spoken to over AMQP 0-9-1.
    RabbitMq,
    /// Redis, spoken to over RESP.
    Redis,
    /// ZooKeeper, spoken to over its client protocol.
    ZooKeeper,
}

impl Service {
    /// Every service, in the order `cargo xtask services` handles them.
    pub const ALL: [Service; 3] = [Service::RabbitMq, Service::Redis, Service::ZooKeeper];

    /// Short lower-case name, as used in commands and directory names.
    pub fn name(self) -> &'static str {
        match self {
            Service::RabbitMq => "rabbitmq",
            Service::Redis => "redis",
            Service::ZooKeeper => "zookeeper",
        }
    }

    /// The environment variable that overrides this service's endpoint.
    pub fn env_var(self) -> &'static str {
        match self {
            Service::RabbitMq => "AMQP_URL",
            Service::Redis => "REDIS_URL",
            Service::ZooKeeper => "ZK_CONNECT",
        }
    }

    /// The endpoint used when the environment variable is not set.
    pub fn default_url(self) -> &'static str {
        match self {
            Service::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Service::Redis => "redis://127.0.0.1:6379",
            Service::ZooKeeper => "127.0.0.1:2181",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Service::RabbitMq => 5672,
            Service::Redis => 6379,
            Service::ZooKeeper => 2181,
        }
    }

    /// The configured URL (or connect string) of this service.
    pub fn url(self) -> String {
        std::env::var(self.env_var())
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| self.default_url().to_owned())
    }

    /// The socket address of the configured endpoint.
    ///
    /// For a ZooKeeper connect string with several hosts, the first one.
    pub fn addr(self) -> Result<SocketAddr, ProbeError> {
        let url = self.url();
        let host_port = host_port(&url, self.default_port());
        host_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| ProbeError::BadEndpoint {
                service: self,
                url: url.clone(),
            })
    }

    /// Checks once, over the service's own protocol, that it answers.
    pub fn probe(self, timeout: Duration) -> Result<(), ProbeError> {
        let addr = self.addr()?;
        self.probe_addr(addr, timeout)
    }

    /// Like [`Service::probe`], against an explicit address (a proxy, say).
    pub fn probe_addr(self, addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
        let fail = |reason: String| ProbeError::NotAnswering {
            service: self,
            addr,
            reason,
        };
        let mut stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail(e.to_string()))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| fail(e.to_string()))?;
        let result = match self {
            Service::RabbitMq => probe_amqp(&mut stream),
            Service::Redis => probe_redis(&mut stream),
            Service::ZooKeeper => probe_zookeeper(&mut stream),
        };
        result.map_err(|e| fail(e.to_string()))
    }

    /// Waits until the service answers, or fails after `wait`.
    pub fn wait_ready(self, wait: Duration) -> Result<(), ProbeError> {
        let deadline = Instant::now() + wait;
        loop {
            let attempt = self.probe(Duration::from_secs(2));
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(ProbeError::BadEndpoint { .. }) => return attempt,
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::RabbitMq => "RabbitMQ",
            Service::Redis => "Redis",
            Service::ZooKeeper => "ZooKeeper",
        })
    }
}

/// Returns the service's URL after checking that it answers, or panics with
/// the command that starts it.
///
/// Tests that need a real server call this first, so that a missing server
/// fails loudly instead of passing silently.
///
/// ```no_run
/// let url = testkit::require(testkit::Service::Redis);
/// assert!(url.starts_with("redis://"));
/// ```
#[track_caller]
pub fn require(service: Service) -> String {
    if let Err(e) = service.wait_ready(Duration::from_secs(5)) {
        panic!(
            "{e}\n{service} is needed by this test and cannot be reached; \
             start it with `cargo xtask services up` (or point {} at one)",
            service.env_var()
        );
    }
    service.url()
}

/// Extracts `host:port` from `scheme://user:pass@host:port/path`,
/// from `host:port,host2:port/chroot`, or from a bare host.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let rest = rest.split(['/', ',', '?']).next().unwrap_or(rest);
    let has_port = match rest.rsplit_once(':') {
        // A bracketed IPv6 address without a port ends in `]`.
        Some((_, port)) => port.parse::<u16>().is_ok(),
        None => false,
    };
    if has_port {
        rest.to_owned()
    } else {
        format!("{rest}:{default_port}")
    }
}

/// Sends the AMQP 0-9-1 protocol header and expects `Connection.Start`.
fn probe_amqp(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(b"AMQP\x00\x00\x09\x01")?;
    let mut head = [0u8; 11];
    stream.read_exact(&mut head)?;
    // frame type 1 (method), channel 0, then size(4), class 10, method 10.
    let is_start = head[0] == 1
        && head[1..3] == [0, 0]
        && head[7..9] == 10u16.to_be_bytes()
        && head[9..11] == 10u16.to_be_bytes();
    if is_start {
        Ok(())
    } else {
        Err(unexpected(format!(
            "expected Connection.Start, got {head:02x?}"
        )))
    }
}

/// Sends `PING` and expects `+PONG`.
fn probe_redis(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(unexpected(format!(
            "expected +PONG, got {:?}",
            String::from_utf8_lossy(&reply)
        )))
    }
}

/// Opens a ZooKeeper session, then closes it.
fn probe_zookeeper(stream: &mut TcpStream) -> io::Result<()> {
    // ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId,
    // passwd (length-prefixed, 16 zero bytes), readOnly.
    let mut body = Vec::with_capacity(45);
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&0i64.to_be_bytes());
    body.extend_from_slice(&10_000i32.to_be_bytes());
    body.extend_from_slice(&0i64.to_be_bytes());
    body.extend_from_slice(&16i32.to_be_bytes());
    body.extend_from_slice(&[0u8; 16]);
    body.push(0);
    write_frame(stream, &body)?;
    let reply = read_frame(stream)?;
    if reply.len() < 16 {
        return Err(unexpected(format!(
            "short ConnectResponse of {} bytes",
            reply.len()
        )));
    }
    let timeout = i32::from_be_bytes(reply[4..8].try_into().expect("4 bytes"));
    let session = i64::from_be_bytes(reply[8..16].try_into().expect("8 bytes"));
    if timeout <= 0 || session == 0 {
        return Err(unexpected("server refused the session".to_owned()));
    }
    // closeSession: xid 1, type -11. The reply is not needed.
    let mut close = Vec::with_capacity(8);
    close.extend_from_slice(&1i32.to_be_bytes());
    close.extend_from_slice(&(-11i32).to_be_bytes());
    write_frame(stream, &close)?;
    let _ = read_frame(stream);
    Ok(())
}

fn write_frame(stream: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    let len = i32::try_from(body.len()).map_err(|_| unexpected("frame too long".to_owned()))?;
    stream.write_all(&len.to_be_bytes())?;
    stream.write_all(body)
}

fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = i32::from_be_bytes(len);
    if !(0..=1 << 20).contains(&len) {
        return Err(unexpected(format!("implausible frame length {len}")));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body)?;
    Ok(body)
}

fn unexpected(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_handles_every_url_shape() {
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1:5672/%2f", 5672),
            "127.0.0.1:5672"
        );
        assert_eq!(host_port("amqp://127.0.0.1/%2f", 5672), "127.0.0.1:5672");
        assert_eq!(
            host_port("redis://127.0.0.1:6380/0", 6379),
            "127.0.0.1:6380"
        );
        assert_eq!(
            host_port("redis://:secret@localhost", 6379),
            "localhost:6379"
        );
        assert_eq!(
            host_port("127.0.0.1:2181,127.0.0.1:2182/app", 2181),
            "127.0.0.1:2181"
        );
        assert_eq!(host_port("zk-host", 2181), "zk-host:2181");
        assert_eq!(host_port("[::1]:2181", 2181), "[::1]:2181");
    }
}
