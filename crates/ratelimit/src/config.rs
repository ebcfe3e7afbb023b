//! Configuration, with defaults that protect and a `validate()` that says
//! what is wrong.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;

use crate::error::{Error, Result};

/// A rate: `count` events per `per`, with bursts of up to `burst` events.
///
/// Enforced with governor's GCRA: over any interval `d`, at most
/// `burst + count * d / per` events are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
    /// Largest burst admitted at once (the bucket size).
    pub burst: u32,
}

impl Rate {
    /// `n` events per second, bursts of `n`.
    pub const fn per_second(n: u32) -> Rate {
        Rate {
            count: n,
            per: Duration::from_secs(1),
            burst: n,
        }
    }

    /// The same rate with another burst size.
    pub const fn with_burst(self, burst: u32) -> Rate {
        Rate { burst, ..self }
    }

    /// The time between two events at this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }

    /// The time an exhausted bucket takes to refill completely: a key idle
    /// this long is indistinguishable from a key never seen.
    pub fn refill_time(&self) -> Duration {
        self.interval().saturating_mul(self.burst)
    }

    /// Checks the rate; errors name `field`.
    pub(crate) fn validate(&self, field: &'static str) -> Result<()> {
        if self.count == 0 {
            return Err(config(field, self, "count must be at least 1"));
        }
        if self.burst == 0 {
            return Err(config(field, self, "burst must be at least 1"));
        }
        if self.interval().is_zero() {
            return Err(config(
                field,
                self,
                "per / count must be at least 1 ns (rate too high)",
            ));
        }
        if self.per > Duration::from_secs(24 * 3600) {
            return Err(config(field, self, "per must be at most one day"));
        }
        Ok(())
    }

    /// The governor quota of a validated rate.
    pub(crate) fn quota(&self) -> Quota {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(self.interval())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst)
    }
}

/// The sliding window over which the breaker judges calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls (resilience4j's COUNT_BASED).
    Count(u32),
    /// The calls of the last `length`, kept in `buckets` equal buckets; the
    /// oldest bucket leaves as a whole (resilience4j's TIME_BASED, Sentinel's
    /// `LeapArray`). The window covers between `length - length/buckets`
    /// and `length` of history.
    Time {
        /// How far back the window reaches.
        length: Duration,
        /// How many buckets it is split into.
        buckets: u32,
    },
}

/// The circuit breaker: when it trips, and how it recovers.
///
/// Closed → Open when, over the [`Window`], at least `min_calls` calls were
/// made and any configured threshold is reached. Open → Half-open after
/// `open_duration`. Half-open admits exactly `half_open_permits` probes;
/// their results decide Closed or Open again.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// The window the thresholds are judged over.
    pub window: Window,
    /// No decision before this many calls are in the window.
    pub min_calls: u32,
    /// Trip when `errors / calls >= error_ratio`.
    pub error_ratio: Option<f64>,
    /// Trip when `slow calls / calls >= slow_call_ratio`.
    pub slow_call_ratio: Option<f64>,
    /// A call that takes at least this long is slow.
    pub slow_call_duration: Duration,
    /// Trip when `errors >= error_count`.
    pub error_count: Option<u32>,
    /// How long the breaker stays open before probing.
    pub open_duration: Duration,
    /// Probes admitted in half-open. Once that many probe results are in,
    /// the breaker closes if the probes' error ratio stays below
    /// `error_ratio` (any probe error reopens when `error_ratio` is unset)
    /// and their slow ratio below `slow_call_ratio`; it reopens as soon as
    /// that can no longer hold.
    pub half_open_permits: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Window::Time {
                length: Duration::from_secs(10),
                buckets: 10,
            },
            min_calls: 20,
            error_ratio: Some(0.5),
            slow_call_ratio: Some(0.8),
            slow_call_duration: Duration::from_millis(100),
            error_count: None,
            open_duration: Duration::from_secs(5),
            half_open_permits: 3,
        }
    }
}

impl BreakerConfig {
    /// Checks every field; the error names the field and the value.
    pub fn validate(&self) -> Result<()> {
        match self.window {
            Window::Count(n) => {
                if !(1..=100_000).contains(&n) {
                    return Err(config("breaker.window", n, "count must be 1..=100000"));
                }
            }
            Window::Time { length, buckets } => {
                if !(1..=3600).contains(&buckets) {
                    return Err(config(
                        "breaker.window.buckets",
                        buckets,
                        "must be 1..=3600",
                    ));
                }
                if length < Duration::from_millis(u64::from(buckets)) {
                    return Err(config(
                        "breaker.window.length",
                        format!("{length:?}"),
                        "must be at least 1 ms per bucket",
                    ));
                }
                if length > Duration::from_secs(24 * 3600) {
                    return Err(config(
                        "breaker.window.length",
                        format!("{length:?}"),
                        "must be at most one day",
                    ));
                }
            }
        }
        if self.min_calls == 0 {
            return Err(config("breaker.min_calls", 0, "must be at least 1"));
        }
        if let Window::Count(n) = self.window
            && self.min_calls > n
        {
            return Err(config(
                "breaker.min_calls",
                self.min_calls,
                "must not exceed the count window, or the breaker never trips",
            ));
        }
        for (field, ratio) in [
            ("breaker.error_ratio", self.error_ratio),
            ("breaker.slow_call_ratio", self.slow_call_ratio),
        ] {
            if let Some(r) = ratio
                && !(r > 0.0 && r <= 1.0)
            {
                return Err(config(field, r, "must be in (0, 1]"));
            }
        }
        if self.error_count == Some(0) {
            return Err(config("breaker.error_count", 0, "must be at least 1"));
        }
        if self.error_ratio.is_none()
            && self.slow_call_ratio.is_none()
            && self.error_count.is_none()
        {
            return Err(config(
                "breaker",
                "no threshold",
                "set at least one of error_ratio, slow_call_ratio, error_count",
            ));
        }
        if self.slow_call_duration.is_zero() {
            return Err(config(
                "breaker.slow_call_duration",
                "0s",
                "must be positive",
            ));
        }
        if self.open_duration.is_zero() || self.open_duration > Duration::from_secs(24 * 3600) {
            return Err(config(
                "breaker.open_duration",
                format!("{:?}", self.open_duration),
                "must be positive and at most one day",
            ));
        }
        if !(1..=10_000).contains(&self.half_open_permits) {
            return Err(config(
                "breaker.half_open_permits",
                self.half_open_permits,
                "must be 1..=10000",
            ));
        }
        Ok(())
    }
}

/// The in-process cache for hot keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Upper bound of the cache in bytes (keys + values + per-entry
    /// overhead). Beyond it, the entries fetched longest ago are evicted;
    /// a value larger than one shard's share is not cached locally.
    pub max_bytes: u64,
    /// A cached value is fresh this long after it was read from Redis.
    pub ttl: Duration,
    /// After `ttl`, the value is stale: one request refreshes it from Redis
    /// while the others are still served the stale value, for at most
    /// `max_stale` more. Beyond that the entry is not used.
    pub max_stale: Duration,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            max_bytes: 64 * 1024 * 1024,
            ttl: Duration::from_secs(1),
            max_stale: Duration::from_secs(5),
        }
    }
}

/// Limits on value sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigValueConfig {
    /// Writes above this are refused; reads of values above it return
    /// [`Lookup::TooLarge`](crate::Lookup::TooLarge) without transferring
    /// the value.
    pub max_bytes: u64,
    /// Values above this (and at most `max_bytes`) are served but logged
    /// with a warning and counted.
    pub warn_bytes: u64,
    /// Collections with more elements are not transferred.
    pub max_elements: u64,
    /// String reads first fetch at most this many bytes with plain
    /// commands (`GETRANGE key 0 read_probe_bytes`, about the cost of a
    /// `GET`; see [`probe_mode`](Self::probe_mode)); only a longer value is
    /// measured and read by the atomic Lua script (~5 µs of Redis CPU per
    /// call). So a read transfers at most `read_probe_bytes + 1` bytes of a
    /// value above `max_bytes`. `0` always uses the script: not one byte of
    /// such a value is sent. Default 16 KiB.
    pub read_probe_bytes: u64,
    /// What the probe sends, and so what a miss costs. Default
    /// [`ProbeMode::HitFirst`]: one command per hit of a value within the
    /// probe, two round trips per miss. Ignored with `read_probe_bytes = 0`.
    pub probe_mode: ProbeMode,
}

/// How a string read probes before it falls back to the size-checked Lua
/// script.
///
/// Both modes return the same answers, and each answer is true at some
/// instant of the call (linearizable): a value within the probe comes from
/// one `GETRANGE`, every other answer (a miss included) from either the
/// probe's pipelined `EXISTS` or the atomic script — never from two
/// separate, non-atomic reads. They differ in what a read costs:
///
/// | answer | `HitFirst` (default) | `Pipelined` |
/// |---|---|---|
/// | value within the probe (`Hit`) | `GETRANGE`: 1 round trip, 1 command | `GETRANGE` + `EXISTS`: 1 round trip, 2 commands |
/// | missing key (`Miss`) | `GETRANGE`, then the script: 2 round trips | `GETRANGE` + `EXISTS`: 1 round trip |
/// | empty string (`Hit` of nothing) | `GETRANGE`, then the script: 2 round trips | `GETRANGE` + `EXISTS`, then the script: 2 round trips |
/// | longer than the probe (`Hit` or `TooLarge`) | `GETRANGE`, then the script: 2 round trips | `GETRANGE` + `EXISTS`, then the script: 2 round trips |
///
/// `HitFirst` makes the common case, a hit, cost what a `GET` costs. A miss
/// then takes one more round trip, but a miss is followed by a load from
/// the source of truth, far slower than a round trip to Redis. Choose
/// `Pipelined` for miss-heavy workloads (mostly-absent keys, negative
/// lookups), where the second round trip of every miss would dominate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ProbeMode {
    /// Send only `GETRANGE key 0 probe`. A non-empty answer of at most
    /// `probe` bytes is the whole value; anything else — an empty answer
    /// (a missing key, or an empty string: `GETRANGE` cannot tell them
    /// apart) or a longer one — is decided by the atomic script.
    #[default]
    HitFirst,
    /// Send `GETRANGE key 0 probe` and `EXISTS key` pipelined, in one round
    /// trip: an empty answer with `EXISTS = 0` is a miss without the
    /// script. Costs Redis and the client a second command on every read.
    Pipelined,
}

impl Default for BigValueConfig {
    fn default() -> Self {
        BigValueConfig {
            max_bytes: 1024 * 1024,
            warn_bytes: 256 * 1024,
            max_elements: 10_000,
            read_probe_bytes: 16 * 1024,
            probe_mode: ProbeMode::HitFirst,
        }
    }
}

/// The single-flight loader used by `get_or_load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// A load that takes longer is abandoned; its callers get
    /// `Blank(Timeout)`.
    pub timeout: Duration,
    /// Loads running at once (over all keys); beyond it a miss gets
    /// `Blank(LoaderBusy)` instead of reaching the database.
    pub max_concurrent: usize,
    /// When the loader finds nothing, remember that locally for this long
    /// (negative caching); `None` disables it.
    pub negative_ttl: Option<Duration>,
    /// Entries kept in the negative cache at most.
    pub negative_capacity: u64,
    /// Time-to-live of the values the loader writes to Redis; `None` writes
    /// them without expiry.
    pub value_ttl: Option<Duration>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            timeout: Duration::from_secs(2),
            max_concurrent: 64,
            negative_ttl: None,
            negative_capacity: 100_000,
            value_ttl: Some(Duration::from_secs(300)),
        }
    }
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a proxy), through a multiplexed connection that
    /// reconnects (`ConnectionManager`). A `/N` path selects database `N`.
    Standalone {
        /// `redis://host:port[/db]`.
        url: String,
    },
    /// A Redis Cluster, through `redis`'s async cluster connection, which
    /// routes each key to its slot's primary.
    Cluster {
        /// Seed nodes, `redis://host:port` each.
        nodes: Vec<String>,
    },
}

impl Topology {
    /// Human-readable endpoint, for errors.
    pub(crate) fn describe(&self) -> String {
        match self {
            Topology::Standalone { url } => url.clone(),
            Topology::Cluster { nodes } => format!("cluster {}", nodes.join(",")),
        }
    }
}

/// Everything `ProtectedCache` needs. `Config::default()` protects with
/// the defaults documented on each field; `validate()` checks a config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `cache` label of this instance's metrics.
    pub name: String,
    /// Where Redis is. Default: `redis://127.0.0.1:6379`.
    pub topology: Topology,
    /// Bound on establishing a connection. Default 1 s.
    pub connect_timeout: Duration,
    /// Bound on every Redis call; a read that exceeds it returns
    /// `Blank(Timeout)`. Default 250 ms.
    pub call_timeout: Duration,
    /// Per-instance cap on reads sent to Redis. Default 10 000/s, bursts of
    /// 1 000. `None`: unlimited.
    pub read_limit: Option<Rate>,
    /// Per-key cap on reads of one hot key sent to Redis. Default 20/s,
    /// bursts of 5. `None`: unlimited.
    pub hot_key_limit: Option<Rate>,
    /// Hard cap on keys tracked by the per-key limiter. Default 10 000.
    pub max_tracked_keys: usize,
    /// A tracked key unused this long is evicted. Must be at least the
    /// per-key rate's refill time, so that eviction never resets a
    /// bucket early. Default 60 s.
    pub key_idle_timeout: Duration,
    /// The local cache for hot keys; `None` disables it.
    pub local: Option<LocalConfig>,
    /// Size limits.
    pub big_values: BigValueConfig,
    /// The loader of `get_or_load`.
    pub loader: LoaderConfig,
    /// The circuit breaker.
    pub breaker: BreakerConfig,
    /// Longest key accepted. Default 16 KiB.
    pub max_key_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "default".to_owned(),
            topology: Topology::Standalone {
                url: "redis://127.0.0.1:6379".to_owned(),
            },
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_millis(250),
            read_limit: Some(Rate::per_second(10_000).with_burst(1_000)),
            hot_key_limit: Some(Rate::per_second(20).with_burst(5)),
            max_tracked_keys: 10_000,
            key_idle_timeout: Duration::from_secs(60),
            local: Some(LocalConfig::default()),
            big_values: BigValueConfig::default(),
            loader: LoaderConfig::default(),
            breaker: BreakerConfig::default(),
            max_key_bytes: 16 * 1024,
        }
    }
}

impl Config {
    /// The default config for a standalone server at `url`.
    pub fn standalone(url: impl Into<String>) -> Config {
        Config {
            topology: Topology::Standalone { url: url.into() },
            ..Config::default()
        }
    }

    /// The default config for a cluster with these seed nodes.
    pub fn cluster<I, S>(nodes: I) -> Config
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Config {
            topology: Topology::Cluster {
                nodes: nodes.into_iter().map(Into::into).collect(),
            },
            ..Config::default()
        }
    }

    /// Checks every field; the error names the field and the value.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(config("name", "\"\"", "must not be empty"));
        }
        match &self.topology {
            Topology::Standalone { url } => {
                if url.trim().is_empty() {
                    return Err(config("topology.url", "\"\"", "must not be empty"));
                }
            }
            Topology::Cluster { nodes } => {
                if nodes.is_empty() || nodes.iter().any(|n| n.trim().is_empty()) {
                    return Err(config(
                        "topology.nodes",
                        format!("{nodes:?}"),
                        "needs at least one non-empty seed node",
                    ));
                }
            }
        }
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("call_timeout", self.call_timeout),
        ] {
            if d < Duration::from_millis(1) || d > Duration::from_secs(600) {
                return Err(config(field, format!("{d:?}"), "must be 1 ms..=600 s"));
            }
        }
        if let Some(r) = &self.read_limit {
            r.validate("read_limit")?;
        }
        if let Some(r) = &self.hot_key_limit {
            r.validate("hot_key_limit")?;
            if self.key_idle_timeout < r.refill_time() {
                return Err(config(
                    "key_idle_timeout",
                    format!("{:?}", self.key_idle_timeout),
                    "must be at least hot_key_limit's refill time (interval * burst)",
                ));
            }
        }
        if !(1..=10_000_000).contains(&self.max_tracked_keys) {
            return Err(config(
                "max_tracked_keys",
                self.max_tracked_keys,
                "must be 1..=10000000",
            ));
        }
        if let Some(local) = &self.local {
            if local.max_bytes == 0 {
                return Err(config(
                    "local.max_bytes",
                    0,
                    "must be positive (use `local: None` to disable)",
                ));
            }
            if local.ttl.is_zero() {
                return Err(config("local.ttl", "0s", "must be positive"));
            }
            if local
                .ttl
                .checked_add(local.max_stale)
                .is_none_or(|usable| usable > Duration::from_secs(24 * 3600))
            {
                return Err(config(
                    "local.max_stale",
                    format!("{:?}", local.max_stale),
                    "ttl + max_stale must be at most one day",
                ));
            }
        }
        let big = &self.big_values;
        if big.max_bytes == 0 || big.max_bytes > 512 * 1024 * 1024 {
            return Err(config(
                "big_values.max_bytes",
                big.max_bytes,
                "must be 1..=512 MiB (Redis' own string limit)",
            ));
        }
        if big.warn_bytes > big.max_bytes {
            return Err(config(
                "big_values.warn_bytes",
                big.warn_bytes,
                "must not exceed max_bytes",
            ));
        }
        if big.read_probe_bytes > big.max_bytes {
            return Err(config(
                "big_values.read_probe_bytes",
                big.read_probe_bytes,
                "must not exceed max_bytes",
            ));
        }
        if big.max_elements == 0 {
            return Err(config("big_values.max_elements", 0, "must be positive"));
        }
        let loader = &self.loader;
        if loader.timeout.is_zero() {
            return Err(config("loader.timeout", "0s", "must be positive"));
        }
        if loader.max_concurrent == 0 || loader.max_concurrent > 1_000_000 {
            return Err(config(
                "loader.max_concurrent",
                loader.max_concurrent,
                "must be 1..=1000000",
            ));
        }
        if let Some(ttl) = loader.negative_ttl {
            if ttl.is_zero() {
                return Err(config(
                    "loader.negative_ttl",
                    "0s",
                    "must be positive (use None to disable)",
                ));
            }
            if loader.negative_capacity == 0 {
                return Err(config("loader.negative_capacity", 0, "must be positive"));
            }
        }
        if let Some(ttl) = loader.value_ttl
            && ttl < Duration::from_millis(1)
        {
            return Err(config(
                "loader.value_ttl",
                format!("{ttl:?}"),
                "must be at least 1 ms",
            ));
        }
        self.breaker.validate()?;
        if self.max_key_bytes == 0 || self.max_key_bytes > 512 * 1024 * 1024 {
            return Err(config(
                "max_key_bytes",
                self.max_key_bytes,
                "must be 1..=512 MiB",
            ));
        }
        Ok(())
    }
}

fn config(field: &'static str, value: impl std::fmt::Debug, reason: &'static str) -> Error {
    Error::Config {
        field,
        value: format!("{value:?}").trim_matches('"').to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        Config::cluster(["redis://a:1", "redis://b:2"])
            .validate()
            .unwrap();
        BreakerConfig::default().validate().unwrap();
    }

    fn field_of(cfg: &Config) -> &'static str {
        match cfg.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn every_bad_value_is_named() {
        let base = Config::default();
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    name: String::new(),
                    ..base.clone()
                },
                "name",
            ),
            (Config::standalone(" "), "topology.url"),
            (Config::cluster(Vec::<String>::new()), "topology.nodes"),
            (
                Config {
                    call_timeout: Duration::ZERO,
                    ..base.clone()
                },
                "call_timeout",
            ),
            (
                Config {
                    read_limit: Some(Rate::per_second(0)),
                    ..base.clone()
                },
                "read_limit",
            ),
            (
                Config {
                    hot_key_limit: Some(Rate::per_second(5).with_burst(0)),
                    ..base.clone()
                },
                "hot_key_limit",
            ),
            (
                Config {
                    hot_key_limit: Some(Rate::per_second(1).with_burst(100)),
                    key_idle_timeout: Duration::from_secs(10),
                    ..base.clone()
                },
                "key_idle_timeout",
            ),
            (
                Config {
                    max_tracked_keys: 0,
                    ..base.clone()
                },
                "max_tracked_keys",
            ),
            (
                Config {
                    local: Some(LocalConfig {
                        max_bytes: 0,
                        ..LocalConfig::default()
                    }),
                    ..base.clone()
                },
                "local.max_bytes",
            ),
            (
                Config {
                    local: Some(LocalConfig {
                        max_stale: Duration::MAX,
                        ..LocalConfig::default()
                    }),
                    ..base.clone()
                },
                "local.max_stale",
            ),
            (
                Config {
                    big_values: BigValueConfig {
                        warn_bytes: 10,
                        max_bytes: 5,
                        ..BigValueConfig::default()
                    },
                    ..base.clone()
                },
                "big_values.warn_bytes",
            ),
            (
                Config {
                    loader: LoaderConfig {
                        negative_ttl: Some(Duration::ZERO),
                        ..LoaderConfig::default()
                    },
                    ..base.clone()
                },
                "loader.negative_ttl",
            ),
            (
                Config {
                    breaker: BreakerConfig {
                        error_ratio: Some(1.5),
                        ..BreakerConfig::default()
                    },
                    ..base.clone()
                },
                "breaker.error_ratio",
            ),
            (
                Config {
                    breaker: BreakerConfig {
                        error_ratio: None,
                        slow_call_ratio: None,
                        error_count: None,
                        ..BreakerConfig::default()
                    },
                    ..base.clone()
                },
                "breaker",
            ),
            (
                Config {
                    breaker: BreakerConfig {
                        window: Window::Count(5),
                        min_calls: 6,
                        ..BreakerConfig::default()
                    },
                    ..base.clone()
                },
                "breaker.min_calls",
            ),
            (
                Config {
                    breaker: BreakerConfig {
                        half_open_permits: 0,
                        ..BreakerConfig::default()
                    },
                    ..base.clone()
                },
                "breaker.half_open_permits",
            ),
            (
                Config {
                    max_key_bytes: 0,
                    ..base
                },
                "max_key_bytes",
            ),
        ];
        for (cfg, field) in cases {
            assert_eq!(field_of(&cfg), field, "{cfg:?}");
        }
    }

    #[test]
    fn error_message_carries_the_value() {
        let cfg = Config {
            read_limit: Some(Rate::per_second(0)),
            ..Config::default()
        };
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("read_limit"), "{msg}");
        assert!(msg.contains("count: 0"), "{msg}");
    }

    #[test]
    fn rate_to_quota() {
        let r = Rate::per_second(20).with_burst(5);
        assert_eq!(r.interval(), Duration::from_millis(50));
        assert_eq!(r.refill_time(), Duration::from_millis(250));
        let q = r.quota();
        assert_eq!(q.burst_size().get(), 5);
        assert_eq!(q.replenish_interval(), Duration::from_millis(50));
    }
}
