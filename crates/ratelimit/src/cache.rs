//! [`ProtectedCache`]: the Redis client with every protection in front.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use moka::sync::Cache;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};
use tokio::sync::Semaphore;

use crate::breaker::{CircuitBreaker, Permit};
use crate::clock::{Time, nanos};
use crate::config::{Config, Topology};
use crate::deadline::{Deadlines, Elapsed};
use crate::error::{Error, Result, show_key};
use crate::flight::SingleFlight;
use crate::guard::{self, Guarded, ReadError};
use crate::hot::{HotKeys, NoHotKeys};
use crate::limits::Limits;
use crate::local::{LocalCache, LocalRead};
use crate::metrics::CacheMetrics;
use crate::outcome::{BlankReason, Lookup, ValueSize};

/// Keys remembered as too large (so that hammering one does not even cost
/// a `STRLEN`), at most.
const TOO_LARGE_MEMO_KEYS: u64 = 10_000;
/// How long a too-large verdict is remembered when there is no local
/// cache config to take the TTL from.
const TOO_LARGE_MEMO_TTL: Duration = Duration::from_secs(1);

/// A Redis cache client that shields Redis and the database behind it.
///
/// Every read passes, in order:
///
/// 1. **hot-key local cache** (keys the [`HotKeys`] predicate calls hot):
///    a fresh local value is served without touching Redis; a stale one is
///    served while exactly one request refreshes it;
/// 2. **big-value memo**: a key recently found too large answers
///    `TooLarge` without a round trip;
/// 3. **circuit breaker**: open → `Blank(CircuitOpen)` at once;
/// 4. **per-instance read limit**, then for hot keys the **per-key
///    limit**: exhausted → `Blank(RateLimited | KeyRateLimited)`;
/// 5. a **size-checked read**, bounded by **`call_timeout`**: a bounded
///    `GETRANGE key 0 probe` answers small values at the cost of a `GET`;
///    anything longer, and by default an empty reply (a miss or an empty
///    string), goes to a Lua script that returns the value only if
///    `STRLEN` is within the limit, atomically (see
///    [`BigValueConfig::read_probe_bytes`](crate::BigValueConfig::read_probe_bytes)
///    and [`ProbeMode`](crate::ProbeMode), which can settle misses in the
///    probe's round trip instead). No answer in time →
///    `Blank(Timeout)`; a connection or server fault → `Blank(Unavailable)`.
///    Both count as failures for the breaker; calls that take at least
///    `breaker.slow_call_duration` count as slow.
///
/// Writes (`set`, `del`) go through the breaker and the timeout, and
/// refuse values above `big_values.max_bytes` before anything is sent.
///
/// `ProtectedCache` is cheap to clone (an `Arc`); clones share everything.
#[derive(Clone)]
pub struct ProtectedCache<C: Clock = DefaultClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C: Clock> {
    cfg: Config,
    conn: Conn,
    /// Every Redis call's timeout (`call_timeout`).
    deadlines: Deadlines,
    breaker: CircuitBreaker<C>,
    limits: Limits<C>,
    hot: Arc<dyn HotKeys>,
    local: Option<LocalCache>,
    time: Time<C>,
    /// Fetches of hot keys missing from the local cache: one per key.
    fetches: SingleFlight<Result<Lookup>>,
    /// Loads from the source of truth: one per key.
    loads: SingleFlight<Result<Lookup>>,
    load_slots: Semaphore,
    /// Key → until when (ns on `time`) the loader is known to find nothing.
    negative: Option<Cache<Bytes, u64>>,
    negative_ns: u64,
    /// Key → (size, until when) for values found above the limit.
    too_large: Cache<Bytes, (u64, u64)>,
    too_large_ns: u64,
    /// The latest "until" of any too-large verdict (ns on `time`): from
    /// then on no verdict is valid, and reads skip the memo (a moka
    /// lookup reads moka's clock, hashes the key and logs the read for its
    /// admission policy, on every read that reaches Redis). Expired
    /// verdicts are then left to moka's capacity bound.
    too_large_until: AtomicU64,
    metrics: CacheMetrics,
}

impl<C: Clock> fmt::Debug for ProtectedCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("ProtectedCache")
            .field("name", &i.cfg.name)
            .field("topology", &i.cfg.topology)
            .field("breaker", &i.breaker.state())
            .field("limits", &i.limits)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ProtectedCache`]: hot-key predicate, clock, eager or lazy
/// connection.
pub struct Builder<C: Clock = DefaultClock> {
    cfg: Config,
    hot: Arc<dyn HotKeys>,
    clock: C,
    lazy: bool,
}

impl<C: Clock> fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("cfg", &self.cfg)
            .field("lazy", &self.lazy)
            .finish_non_exhaustive()
    }
}

impl Builder<DefaultClock> {
    /// A builder with no hot keys, the default clock, eager connection.
    pub fn new(cfg: Config) -> Self {
        Builder {
            cfg,
            hot: Arc::new(NoHotKeys),
            clock: DefaultClock::default(),
            lazy: false,
        }
    }
}

impl<C> Builder<C>
where
    C: Clock + Clone + Send + Sync + 'static,
{
    /// Which keys are hot: a closure `Fn(&[u8]) -> bool`, a
    /// `hotkey::HotKeySet` (feature `hotkey`), or any [`HotKeys`].
    pub fn hot_keys(mut self, hot: impl HotKeys) -> Self {
        self.hot = Arc::new(hot);
        self
    }

    /// Like [`hot_keys`](Self::hot_keys), for a predicate already shared.
    pub fn hot_keys_shared(mut self, hot: Arc<dyn HotKeys>) -> Self {
        self.hot = hot;
        self
    }

    /// Drives every time-dependent part (limits, breaker, local cache
    /// freshness) from `clock`. Call timeouts stay on tokio's clock.
    pub fn clock<C2: Clock + Clone + Send + Sync + 'static>(self, clock: C2) -> Builder<C2> {
        Builder {
            cfg: self.cfg,
            hot: self.hot,
            clock,
            lazy: self.lazy,
        }
    }

    /// Does not check the connection at build time: the cache can start
    /// while Redis is down (reads are blank until it is back).
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// Validates the config, connects, and (unless lazy) pings Redis within
    /// `connect_timeout`.
    pub async fn connect(self) -> Result<ProtectedCache<C>> {
        let Builder {
            cfg,
            hot,
            clock,
            lazy,
        } = self;
        cfg.validate()?;
        let conn = Conn::open(&cfg, lazy).await?;
        let metrics = CacheMetrics::new(&cfg.name);
        let breaker = CircuitBreaker::with_clock(&cfg.name, cfg.breaker.clone(), clock.clone())?;
        let limits = Limits::new(
            cfg.read_limit,
            cfg.hot_key_limit
                .map(|r| (r, cfg.max_tracked_keys, cfg.key_idle_timeout)),
            &clock,
            metrics.tracked_keys.clone(),
            metrics.key_overflow.clone(),
        )?;
        let local = cfg
            .local
            .as_ref()
            .map(|l| LocalCache::new(l, cfg.big_values.max_bytes));
        let negative = cfg.loader.negative_ttl.map(|_| {
            Cache::builder()
                .max_capacity(cfg.loader.negative_capacity)
                .build()
        });
        let inner = Inner {
            conn,
            deadlines: Deadlines::start(cfg.call_timeout),
            breaker,
            limits,
            hot,
            local,
            time: Time::new(clock),
            fetches: SingleFlight::new(),
            loads: SingleFlight::new(),
            load_slots: Semaphore::new(cfg.loader.max_concurrent),
            negative,
            negative_ns: cfg.loader.negative_ttl.map_or(0, nanos),
            too_large: Cache::builder().max_capacity(TOO_LARGE_MEMO_KEYS).build(),
            too_large_ns: nanos(cfg.local.as_ref().map_or(TOO_LARGE_MEMO_TTL, |l| l.ttl)),
            too_large_until: AtomicU64::new(0),
            metrics,
            cfg,
        };
        Ok(ProtectedCache {
            inner: Arc::new(inner),
        })
    }
}

impl ProtectedCache<DefaultClock> {
    /// Connects with `cfg`, no hot keys and the default clock.
    pub async fn connect(cfg: Config) -> Result<Self> {
        Builder::new(cfg).connect().await
    }

    /// A builder, for hot keys, an injected clock or a lazy connection.
    pub fn builder(cfg: Config) -> Builder<DefaultClock> {
        Builder::new(cfg)
    }

    /// The size-checked read script `get` runs (`STRLEN`, then `GET` only
    /// if small enough), for operators who look for its SHA1 in `SLOWLOG`
    /// and for benchmarks that run it raw.
    pub fn read_script() -> &'static redis::Script {
        guard::string_script()
    }
}

impl<C> ProtectedCache<C>
where
    C: Clock + Clone + Send + Sync + 'static,
{
    /// Reads a string value. Never an error for a protection decision: see
    /// [`Lookup`]. Errors: an invalid key, a key holding another type,
    /// a reply this crate does not understand, or a Redis error that is
    /// not a fault of the server (an ACL refusal, say).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Lookup> {
        let key = key.as_ref();
        self.check_key(key)?;
        let hot = self.inner.hot.is_hot(key);
        // The local fast path stays synchronous and the slow paths are
        // boxed, so the future a hit builds (and moves) is small.
        if let (true, Some(local)) = (hot, &self.inner.local) {
            let counters = &self.inner.metrics.local;
            return match local.read(key, self.inner.time.now_nanos()) {
                LocalRead::Fresh(value)
                | LocalRead::Stale {
                    value,
                    refresh: None,
                } => Ok(served_locally(counters, value)),
                slow => Box::pin(self.get_hot(local, key, slow)).await,
            };
        }
        Box::pin(self.read_remote(key, hot)).await
    }

    /// Reads a value, loading it from the source of truth on a miss.
    ///
    /// On `Miss`, exactly one caller per key (per instance) runs `loader`;
    /// concurrent callers for the same key wait for its result. A found
    /// value is written to Redis (with `loader.value_ttl`) and returned as
    /// `Hit`; nothing found returns `Miss` and, with
    /// `loader.negative_ttl`, is remembered locally so the next callers
    /// get `Miss` without asking Redis or the loader. A `Blank` or
    /// `TooLarge` read never reaches the loader: the database is shielded
    /// exactly when the cache is.
    ///
    /// At most `loader.max_concurrent` loads run at once (else
    /// `Blank(LoaderBusy)`), each bounded by `loader.timeout` (else
    /// `Blank(Timeout)`). A loader error is returned to every waiting
    /// caller as [`Error::Loader`].
    pub async fn get_or_load<F, Fut, V, E>(
        &self,
        key: impl AsRef<[u8]>,
        loader: F,
    ) -> Result<Lookup>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        V: Into<Bytes>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let key = key.as_ref();
        self.check_key(key)?;
        if self.negatively_cached(key) {
            self.inner.metrics.local.miss.increment(1);
            return Ok(Lookup::Miss);
        }
        match self.get(key).await? {
            Lookup::Miss => {}
            other => return Ok(other),
        }
        let (result, _led) = self.inner.loads.run(key, || self.load(key, loader)).await;
        result
    }

    /// Writes a value, with an optional time-to-live.
    ///
    /// Refused with [`Error::ValueTooLarge`] above `big_values.max_bytes`
    /// (nothing is sent), with [`Error::Refused`] while the breaker is
    /// open. `Ok` means Redis acknowledged the write. On
    /// [`Error::Timeout`] the write may or may not have been applied. This
    /// instance's local copies of the key are dropped in every case.
    pub async fn set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let key = key.as_ref();
        self.check_key(key)?;
        let value = value.into();
        self.check_value_size(key, value.len() as u64)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(&value[..]);
        if let Some(ttl) = ttl {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            if ms == 0 {
                return Err(Error::InvalidTtl {
                    key: show_key(key),
                    ttl,
                });
            }
            cmd.arg("PX").arg(ms);
        }
        let result = self.write("SET", key, &cmd).await;
        self.forget_local(key);
        result.map(|_| ())
    }

    /// Deletes a key; `Ok(true)` if it existed. Same protections and
    /// guarantees as [`set`](Self::set).
    pub async fn del(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        self.check_key(key)?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        let result = self.write("DEL", key, &cmd).await;
        self.forget_local(key);
        match result? {
            Value::Int(n) => Ok(n > 0),
            other => Err(Error::Protocol {
                op: "DEL",
                key: show_key(key),
                detail: format!("expected an integer, got {other:?}"),
            }),
        }
    }

    /// Reads a whole hash, if it has at most `big_values.max_elements`
    /// fields and `MEMORY USAGE` (sampled for large hashes) at most
    /// `big_values.max_bytes`; else `TooLarge`, without transferring it.
    /// Same protections as [`get`](Self::get), without the local cache.
    pub async fn get_hash(&self, key: impl AsRef<[u8]>) -> Result<Lookup<Vec<(Bytes, Bytes)>>> {
        let key = key.as_ref();
        self.check_key(key)?;
        let hot = self.inner.hot.is_hot(key);
        let big = &self.inner.cfg.big_values;
        let read = self
            .remote("HGETALL", key, hot, |mut conn| async move {
                guard::read_hash(&mut conn, key, big.max_bytes, big.max_elements).await
            })
            .await?;
        self.judge(key, read, "hash")
    }

    /// Measures a value of any type on the server without transferring
    /// it: `Hit(size)`, `Miss`, or `Blank` (same protections as reads).
    pub async fn size(&self, key: impl AsRef<[u8]>) -> Result<Lookup<ValueSize>> {
        let key = key.as_ref();
        self.check_key(key)?;
        let hot = self.inner.hot.is_hot(key);
        let read = self
            .remote("SIZE", key, hot, |mut conn| async move {
                guard::size(&mut conn, key).await
            })
            .await?;
        Ok(match read {
            Ok(Some(size)) => Lookup::Hit(size),
            Ok(None) => Lookup::Miss,
            Err(reason) => self.blank(reason),
        })
    }

    /// The circuit breaker: its state, and a subscription to its changes.
    pub fn breaker(&self) -> &CircuitBreaker<C> {
        &self.inner.breaker
    }

    /// Keys tracked by the per-key limiter now (at most
    /// `max_tracked_keys`).
    pub fn tracked_keys(&self) -> usize {
        self.inner
            .limits
            .per_key
            .as_ref()
            .map_or(0, |l| l.store().len())
    }

    /// Bytes held by the local cache (0 without one).
    pub fn local_bytes(&self) -> u64 {
        self.inner
            .local
            .as_ref()
            .map_or(0, LocalCache::weighted_size)
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    // ---- reads ------------------------------------------------------------

    /// A hot key whose local copy is stale (this caller refreshes it) or
    /// absent (one caller per key fetches it, the others wait).
    async fn get_hot(&self, local: &LocalCache, key: &[u8], read: LocalRead) -> Result<Lookup> {
        let counters = &self.inner.metrics.local;
        match read {
            LocalRead::Fresh(value) => Ok(served_locally(counters, value)),
            LocalRead::Stale {
                value,
                refresh: None,
            } => Ok(served_locally(counters, value)),
            LocalRead::Stale {
                value,
                refresh: Some(token),
            } => {
                let epoch = local.epoch(key);
                let fresh = self.read_remote(key, true).await;
                self.remember_locally(local, key, &fresh, epoch);
                drop(token);
                match fresh {
                    // The refresh was refused: the stale value beats a blank.
                    Ok(Lookup::Blank(_)) => Ok(served_locally(counters, value)),
                    other => other,
                }
            }
            LocalRead::Absent => {
                let (result, _led) = self
                    .inner
                    .fetches
                    .run(key, || async {
                        let epoch = local.epoch(key);
                        let r = self.read_remote(key, true).await;
                        self.remember_locally(local, key, &r, epoch);
                        r
                    })
                    .await;
                result
            }
        }
    }

    /// Keeps what a read that began in `epoch` found (see `local.rs`: a
    /// read older than this instance's last write to the key is not kept).
    fn remember_locally(
        &self,
        local: &LocalCache,
        key: &[u8],
        result: &Result<Lookup>,
        epoch: u64,
    ) {
        let now = self.inner.time.now_nanos();
        match result {
            Ok(Lookup::Hit(v)) => local.store(key, Some(v.clone()), now, epoch),
            Ok(Lookup::Miss) => local.store(key, None, now, epoch),
            Ok(Lookup::TooLarge { .. }) | Err(_) => local.invalidate(key),
            Ok(Lookup::Blank(_)) => {}
        }
    }

    async fn read_remote(&self, key: &[u8], hot: bool) -> Result<Lookup> {
        let max = self.inner.cfg.big_values.max_bytes;
        if let Some(size) = self.memo_too_large(key) {
            self.inner.metrics.read_refused.increment(1);
            return Ok(Lookup::TooLarge { size, limit: max });
        }
        let probe = self.inner.cfg.big_values.read_probe_bytes;
        let mode = self.inner.cfg.big_values.probe_mode;
        let read = self
            .remote("GET", key, hot, |mut conn| async move {
                guard::read_string(&mut conn, key, max, probe, mode).await
            })
            .await?;
        let lookup = self.judge(key, read, "string")?;
        match &lookup {
            Lookup::Hit(v) => self.warn_if_big(key, v.len() as u64, "read"),
            Lookup::TooLarge { size, .. } => {
                let until = self
                    .inner
                    .time
                    .now_nanos()
                    .saturating_add(self.inner.too_large_ns);
                // Raised before the verdict is stored, so that a reader
                // that finds the verdict valid also finds the memo open.
                self.inner
                    .too_large_until
                    .fetch_max(until, Ordering::Release);
                self.inner
                    .too_large
                    .insert(Bytes::copy_from_slice(key), (*size, until));
            }
            Lookup::Miss | Lookup::Blank(_) => {}
        }
        Ok(lookup)
    }

    /// The outcome of a size-checked read, counted: a blank, a miss, a hit,
    /// or a value above the limits refused; another type than `expected` is
    /// an error.
    fn judge<V>(
        &self,
        key: &[u8],
        read: std::result::Result<Guarded<V>, BlankReason>,
        expected: &'static str,
    ) -> Result<Lookup<V>> {
        let big = &self.inner.cfg.big_values;
        let counters = &self.inner.metrics.redis;
        Ok(match read {
            Err(reason) => self.blank(reason),
            Ok(Guarded::Missing) => {
                counters.miss.increment(1);
                Lookup::Miss
            }
            Ok(Guarded::Value(v)) => {
                counters.hit.increment(1);
                Lookup::Hit(v)
            }
            Ok(Guarded::TooLarge(size)) => self.refused_read(key, size, big.max_bytes),
            Ok(Guarded::TooManyElements(n)) => self.refused_read(key, n, big.max_elements),
            Ok(Guarded::WrongType(found)) => return Err(wrong_type(key, found, expected)),
        })
    }

    /// One protected Redis read: admission, the call under its deadline,
    /// and the outcome reported to the breaker.
    async fn remote<T, F, Fut>(
        &self,
        op: &'static str,
        key: &[u8],
        hot: bool,
        call: F,
    ) -> Result<std::result::Result<T, BlankReason>>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = std::result::Result<T, ReadError>>,
    {
        let permit = match self.admit(key, hot) {
            Ok(p) => p,
            Err(reason) => return Ok(Err(reason)),
        };
        let res = self
            .inner
            .deadlines
            .run(call(self.inner.conn.handle()))
            .await;
        self.settle(permit, op, key, res)
    }

    /// Breaker, then the instance limit, then (hot keys) the key's limit.
    /// A refused limit drops the permit, which hands a probe permit back.
    fn admit(&self, key: &[u8], hot: bool) -> std::result::Result<Permit<'_, C>, BlankReason> {
        let permit = self
            .inner
            .breaker
            .try_acquire()
            .map_err(|_| BlankReason::CircuitOpen)?;
        if !self.inner.limits.check_global() {
            return Err(BlankReason::RateLimited);
        }
        if hot && !self.inner.limits.check_key(key) {
            return Err(BlankReason::KeyRateLimited);
        }
        Ok(permit)
    }

    /// Reports a read's outcome to the breaker and sorts it into a value, a
    /// blank reason, or an error for the caller.
    fn settle<T>(
        &self,
        permit: Permit<'_, C>,
        op: &'static str,
        key: &[u8],
        res: std::result::Result<std::result::Result<T, ReadError>, Elapsed>,
    ) -> Result<std::result::Result<T, BlankReason>> {
        let res = match res {
            // The connection's own response timeout (the cluster client's) is the same bound.
            Ok(Err(ReadError::Redis(e))) if e.is_timeout() => Err(Elapsed),
            other => other,
        };
        match res {
            Err(Elapsed) => {
                permit.failure();
                tracing::debug!(op, key = %show_key(key), "redis call timed out");
                self.inner.conn.timed_out();
                Ok(Err(BlankReason::Timeout))
            }
            Ok(Ok(v)) => {
                permit.success();
                Ok(Ok(v))
            }
            Ok(Err(ReadError::Redis(e))) if is_fault(&e) => {
                permit.failure();
                tracing::debug!(op, key = %show_key(key), error = %e, "redis call failed");
                Ok(Err(BlankReason::Unavailable))
            }
            Ok(Err(ReadError::Redis(e))) => {
                permit.success();
                Err(Error::Redis {
                    op,
                    key: show_key(key),
                    source: e,
                })
            }
            Ok(Err(ReadError::Protocol(detail))) => {
                permit.success();
                Err(Error::Protocol {
                    op,
                    key: show_key(key),
                    detail,
                })
            }
        }
    }

    fn blank<V>(&self, reason: BlankReason) -> Lookup<V> {
        self.inner.metrics.blank(reason);
        Lookup::Blank(reason)
    }

    fn refused_read<V>(&self, key: &[u8], size: u64, limit: u64) -> Lookup<V> {
        self.inner.metrics.redis.too_large.increment(1);
        self.inner.metrics.read_refused.increment(1);
        tracing::warn!(
            key = %show_key(key),
            size,
            limit,
            "value above the limit: not transferred"
        );
        Lookup::TooLarge { size, limit }
    }

    fn memo_too_large(&self, key: &[u8]) -> Option<u64> {
        let latest = self.inner.too_large_until.load(Ordering::Acquire);
        if latest == 0 {
            // No verdict was ever remembered: the usual case, at no clock
            // read and no moka cost.
            return None;
        }
        let now = self.inner.time.now_nanos();
        if now >= latest {
            // No verdict is valid now: no moka cost either.
            return None;
        }
        let (size, until) = self.inner.too_large.get(key)?;
        if now < until {
            Some(size)
        } else {
            self.inner.too_large.invalidate(key);
            None
        }
    }

    // ---- loads ------------------------------------------------------------

    async fn load<F, Fut, V, E>(&self, key: &[u8], loader: F) -> Result<Lookup>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        V: Into<Bytes>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let inner = &self.inner;
        let Ok(_slot) = inner.load_slots.try_acquire() else {
            return Ok(self.blank(BlankReason::LoaderBusy));
        };
        let loaded = match tokio::time::timeout(inner.cfg.loader.timeout, loader()).await {
            Err(_) => {
                inner.metrics.load_error.increment(1);
                return Ok(self.blank(BlankReason::Timeout));
            }
            Ok(Err(e)) => {
                inner.metrics.load_error.increment(1);
                return Err(Error::Loader {
                    key: show_key(key),
                    source: Arc::new(e),
                });
            }
            Ok(Ok(v)) => v.map(Into::into),
        };
        let Some(value) = loaded else {
            inner.metrics.load_miss.increment(1);
            if let Some(negative) = &inner.negative {
                let until = inner.time.now_nanos().saturating_add(inner.negative_ns);
                negative.insert(Bytes::copy_from_slice(key), until);
            }
            return Ok(Lookup::Miss);
        };
        inner.metrics.load_hit.increment(1);
        if let Err(e) = self
            .set(key, value.clone(), inner.cfg.loader.value_ttl)
            .await
        {
            // The value is still good for this caller; the next miss loads
            // again.
            tracing::warn!(key = %show_key(key), error = %e, "could not cache a loaded value");
        }
        Ok(Lookup::Hit(value))
    }

    fn negatively_cached(&self, key: &[u8]) -> bool {
        let Some(negative) = &self.inner.negative else {
            return false;
        };
        match negative.get(key) {
            Some(until) if self.inner.time.now_nanos() < until => true,
            Some(_) => {
                negative.invalidate(key);
                false
            }
            None => false,
        }
    }

    // ---- writes -----------------------------------------------------------

    async fn write(&self, op: &'static str, key: &[u8], cmd: &Cmd) -> Result<Value> {
        let inner = &self.inner;
        let permit = inner.breaker.try_acquire().map_err(|_| Error::Refused {
            op,
            key: show_key(key),
            reason: BlankReason::CircuitOpen,
        })?;
        let mut conn = inner.conn.handle();
        let res = match inner
            .deadlines
            .run(cmd.query_async::<Value>(&mut conn))
            .await
        {
            // The connection's own response timeout (the cluster client's) is the same bound.
            Ok(Err(e)) if e.is_timeout() => Err(Elapsed),
            other => other,
        };
        match res {
            Err(Elapsed) => {
                permit.failure();
                inner.conn.timed_out();
                Err(Error::Timeout {
                    op,
                    key: show_key(key),
                    after: inner.cfg.call_timeout,
                })
            }
            Ok(Err(e)) => {
                if is_fault(&e) {
                    permit.failure();
                } else {
                    permit.success();
                }
                Err(Error::Redis {
                    op,
                    key: show_key(key),
                    source: e,
                })
            }
            Ok(Ok(v)) => {
                permit.success();
                Ok(v)
            }
        }
    }

    fn forget_local(&self, key: &[u8]) {
        if let Some(local) = &self.inner.local {
            local.invalidate(key);
        }
        if let Some(negative) = &self.inner.negative {
            negative.invalidate(key);
        }
        self.inner.too_large.invalidate(key);
    }

    // ---- checks -----------------------------------------------------------

    fn check_key(&self, key: &[u8]) -> Result<()> {
        let reason = if key.is_empty() {
            "empty"
        } else if key.len() > self.inner.cfg.max_key_bytes {
            "longer than max_key_bytes"
        } else {
            return Ok(());
        };
        Err(Error::InvalidKey {
            key: show_key(key),
            len: key.len(),
            reason,
        })
    }

    fn check_value_size(&self, key: &[u8], size: u64) -> Result<()> {
        let limit = self.inner.cfg.big_values.max_bytes;
        if size > limit {
            self.inner.metrics.write_refused.increment(1);
            tracing::warn!(key = %show_key(key), size, limit, "write above the limit refused");
            return Err(Error::ValueTooLarge {
                key: show_key(key),
                size,
                limit,
            });
        }
        self.warn_if_big(key, size, "write");
        Ok(())
    }

    fn warn_if_big(&self, key: &[u8], size: u64, what: &'static str) {
        let warn = self.inner.cfg.big_values.warn_bytes;
        if size > warn {
            self.inner.metrics.warned.increment(1);
            tracing::warn!(
                key = %show_key(key),
                size,
                warn_bytes = warn,
                what,
                "big value (above the soft limit)"
            );
        }
    }
}

fn served_locally(counters: &crate::metrics::ReadCounters, value: Option<Bytes>) -> Lookup {
    match value {
        Some(v) => {
            counters.hit.increment(1);
            Lookup::Hit(v)
        }
        None => {
            counters.miss.increment(1);
            Lookup::Miss
        }
    }
}

fn wrong_type(key: &[u8], found: String, expected: &'static str) -> Error {
    Error::WrongType {
        key: show_key(key),
        found,
        expected,
    }
}

/// Whether an error says the server (or the way to it) is unhealthy, as
/// opposed to a healthy server refusing this one request.
fn is_fault(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound | ErrorKind::Parse => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        ),
        ErrorKind::Extension => matches!(e.code(), Some("BUSY" | "OOM")),
        _ => e.is_connection_dropped() || e.is_timeout(),
    }
}

/// The connection: one multiplexed, reconnecting connection to a server,
/// or a cluster connection.
enum Conn {
    Standalone(Box<Standalone>),
    Cluster(ClusterConnection),
}

/// A `ConnectionManager` reconnects when a connection fails, but not when
/// it goes silent (a half-dead TCP connection times out forever). So a
/// timeout swaps in a fresh manager, at most once per call timeout;
/// calls in flight keep the old one until they end.
struct Standalone {
    client: redis::Client,
    manager_cfg: ConnectionManagerConfig,
    current: ArcSwap<ConnectionManager>,
    last_reset: parking_lot::Mutex<Option<Instant>>,
    min_reset_interval: Duration,
}

/// One call's handle on the connection.
enum Handle {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn open(cfg: &Config, lazy: bool) -> Result<Conn> {
        let endpoint = cfg.topology.describe();
        let connect_err = |source: RedisError| Error::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let conn = match &cfg.topology {
            Topology::Standalone { url } => {
                let client = redis::Client::open(url.as_str()).map_err(connect_err)?;
                // Few, short reconnect attempts: while Redis is down calls
                // should fail fast (the breaker counts them), and come back
                // soon after it returns.
                let manager_cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(cfg.connect_timeout))
                    // `Deadlines` bounds every call; a second per-call timer
                    // here would cost a time-driver wake-up per call.
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(100));
                let manager =
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_cfg.clone())
                        .map_err(connect_err)?;
                Conn::Standalone(Box::new(Standalone {
                    client,
                    manager_cfg,
                    current: ArcSwap::from_pointee(manager),
                    last_reset: parking_lot::Mutex::new(None),
                    min_reset_interval: cfg.call_timeout,
                }))
            }
            Topology::Cluster { nodes } => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.call_timeout)
                    .retries(1)
                    .build()
                    .map_err(connect_err)?;
                let connecting = client.get_async_connection();
                match tokio::time::timeout(cfg.connect_timeout, connecting).await {
                    Ok(Ok(c)) => Conn::Cluster(c),
                    Ok(Err(e)) => return Err(connect_err(e)),
                    Err(_) => {
                        return Err(Error::ConnectTimeout {
                            endpoint,
                            after: cfg.connect_timeout,
                        });
                    }
                }
            }
        };
        if !lazy {
            let ping_cmd = redis::cmd("PING");
            let mut handle = conn.handle();
            let ping = ping_cmd.query_async::<Value>(&mut handle);
            match tokio::time::timeout(cfg.connect_timeout, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(connect_err(e)),
                Err(_) => {
                    return Err(Error::ConnectTimeout {
                        endpoint,
                        after: cfg.connect_timeout,
                    });
                }
            }
        }
        Ok(conn)
    }

    #[inline]
    fn handle(&self) -> Handle {
        match self {
            Conn::Standalone(s) => Handle::Standalone(ConnectionManager::clone(&s.current.load())),
            Conn::Cluster(c) => Handle::Cluster(c.clone()),
        }
    }

    /// A call timed out: replace a possibly half-dead connection.
    fn timed_out(&self) {
        let Conn::Standalone(s) = self else {
            return; // the cluster connection manages its nodes itself
        };
        let now = Instant::now();
        let mut last = s.last_reset.lock();
        if last.is_some_and(|at| now.duration_since(at) < s.min_reset_interval) {
            return;
        }
        *last = Some(now);
        match ConnectionManager::new_lazy_with_config(s.client.clone(), s.manager_cfg.clone()) {
            Ok(fresh) => {
                s.current.store(Arc::new(fresh));
                tracing::info!("redis call timed out: replaced the connection");
            }
            Err(e) => tracing::warn!(error = %e, "could not replace the redis connection"),
        }
    }
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Standalone(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Standalone(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
        }
    }
}
