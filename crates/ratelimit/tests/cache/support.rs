//! Shared test support: unique keys, configs, a private Redis server whose
//! counters nobody else touches.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ratelimit::{BreakerConfig, Config, Window};
use testkit::Service;

/// A key no other test (or engineer) uses: `ratelimit:<test>:<unique>`.
pub fn unique_key(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "ratelimit:{test}:{}:{nanos:x}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cache name no other test uses (metrics are labelled with it).
pub fn unique_name(test: &str) -> String {
    let key = unique_key(test);
    key.trim_start_matches("ratelimit:").to_owned()
}

/// The shared Redis' URL (the test fails loudly if it is down).
pub fn shared_redis() -> String {
    testkit::require(Service::Redis)
}

/// The shared Redis' address.
pub fn shared_addr() -> SocketAddr {
    testkit::require(Service::Redis);
    Service::Redis.addr().expect("redis address")
}

/// A config for tests: short timeouts, a breaker that trips fast, limits
/// out of the way unless a test sets them.
pub fn test_config(name: &str, url: &str) -> Config {
    Config {
        name: name.to_owned(),
        call_timeout: Duration::from_millis(500),
        read_limit: None,
        hot_key_limit: None,
        breaker: BreakerConfig {
            window: Window::Time {
                length: Duration::from_secs(2),
                buckets: 4,
            },
            min_calls: 5,
            error_ratio: Some(0.5),
            slow_call_ratio: None,
            slow_call_duration: Duration::from_secs(1),
            error_count: None,
            open_duration: Duration::from_millis(300),
            half_open_permits: 2,
        },
        ..Config::standalone(url)
    }
}

/// A synchronous admin connection, for setting up data and reading
/// server counters behind the cache's back.
pub fn admin(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("admin connection to {url}: {e}"))
}

/// A `redis-server` of our own on a free loopback port, so that its
/// `INFO` counters count only this test's traffic (the shared server's
/// count every engineer's tests). Killed on drop.
pub struct PrivateRedis {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// A standalone server.
    pub fn start() -> PrivateRedis {
        Self::spawn(false)
    }

    /// A one-node Redis Cluster owning all 16384 slots.
    pub fn cluster() -> PrivateRedis {
        let server = Self::spawn(true);
        let mut con = admin(&server.url());
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query(&mut con)
            .expect("CLUSTER ADDSLOTSRANGE");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut con)
                .expect("CLUSTER INFO");
            if info.contains("cluster_state:ok") {
                return server;
            }
            assert!(Instant::now() < deadline, "cluster never became ok: {info}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(cluster: bool) -> PrivateRedis {
        let binary = redis_server_binary();
        for _attempt in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let mut cmd = Command::new(&binary);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--dir", &dir.path().display().to_string()])
                .args(["--protected-mode", "no", "--loglevel", "warning"]);
            if cluster {
                cmd.args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ]);
            }
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if Service::Redis
                    .probe_addr(addr, Duration::from_millis(200))
                    .is_ok()
                {
                    return PrivateRedis {
                        child,
                        addr,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a private redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// `calls` of one command in `INFO commandstats` (0 if never called).
    pub fn command_calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut admin(&self.url()))
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// A field of `INFO stats` (`total_net_output_bytes`, ...).
    pub fn stat(&self, field: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut admin(&self.url()))
            .expect("INFO stats");
        let prefix = format!("{field}:");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in INFO stats"))
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_server_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "these tests start a private `redis-server` to count commands exactly; \
             it is not on PATH. Install it with `cargo xtask services up` (Debian's \
             redis-server package) or `apt-get install redis-server`."
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
