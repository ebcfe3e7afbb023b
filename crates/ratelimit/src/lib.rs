//! A circuit-breaking Redis cache client that shields the cache, and the
//! database behind it, from hot keys and big values.
//!
//! The design notes (§2) ask each application instance to cap its reads of
//! hot data from the cache cluster, to trip and return a blank answer
//! beyond the cap instead of querying the cluster, and to keep big values
//! from taking the network down. [`ProtectedCache`] does that in front of a
//! real Redis (a server through a multiplexed, reconnecting connection, or
//! a Redis Cluster by configuration):
//!
//! | protection | what it does | default |
//! |---|---|---|
//! | reads are outcomes | [`Lookup`]: `Hit(value)`, `Miss`, `Blank(reason)`, `TooLarge {..}`; a protection decision is never an error | |
//! | per-instance read limit | GCRA (governor) on reads sent to Redis; over it → `Blank(RateLimited)` | 10 000/s, burst 1 000 |
//! | per-key limit for hot keys | GCRA per key, for keys the [`HotKeys`] predicate calls hot (a closure, or `hotkey::HotKeySet` with the `hotkey` feature); over it → `Blank(KeyRateLimited)` | 20/s, burst 5 |
//! | bounded key tracking | [`BoundedKeyStore`]: hard cap on tracked keys, idle keys evicted (exactly: only full buckets), keys beyond the cap share one overflow cell — governor's keyed stores grow without bound (its issue #171) | 10 000 keys, 60 s idle |
//! | local cache for hot keys | in-process, bounded in **bytes** by its own accounting: up to 16 shards of immutable maps behind `arc-swap` (a hit takes no lock), each with an equal share of `max_bytes`; an entry counts key + value + 160 bytes, and a write drops entries older than `ttl + max_stale`, then evicts the entries fetched longest ago until its shard is within its share (a value above a share is not kept locally). Fresh for `ttl`, then served stale for up to `max_stale` while exactly one request refreshes it; misses are kept too. A key read 100 000 times a second costs Redis about one read per TTL. (moka holds only the negative and too-large memos, bounded by entry count.) | 64 MiB, 1 s TTL, 5 s max stale |
//! | circuit breaker | [`CircuitBreaker`]: Closed → Open on error ratio, slow-call ratio or error count over a sliding count/time window with a minimum number of calls; Open → Half-open after a delay; exactly N probes; while open, reads are `Blank(CircuitOpen)` at once | 10 s window, ≥ 20 calls, 50 % errors or 80 % slower than 100 ms, open 5 s, 3 probes |
//! | timeouts | every Redis call; a read that exceeds it is `Blank(Timeout)`, a write is [`Error::Timeout`] | 250 ms |
//! | miss storms | `get_or_load`: one loader run per key (single flight), the others wait for its result; at most N loads at once; optional negative caching | 64 loads, 2 s timeout, no negative cache |
//! | big values | writes above the limit refused with [`Error::ValueTooLarge`] before sending; reads fetch at most a bounded probe (`GETRANGE 0..probe`, as cheap as `GET`) and leave longer values to a Lua script that checks `STRLEN` (hashes: `HLEN` and `MEMORY USAGE`) and returns the value only if small enough, atomically → `TooLarge`; [`ProbeMode`]: `HitFirst` sends `GETRANGE` alone (a hit is one command; an empty reply — a miss or an empty string — goes to the script, so a miss takes two round trips), `Pipelined` adds `EXISTS` to every probe (misses in one round trip, for miss-heavy workloads); a warning above a soft limit | 1 MiB, 16 KiB probe, `HitFirst`, warn at 256 KiB |
//!
//! Time is injected: limits, breaker and local-cache freshness all read a
//! governor [`Clock`](governor::clock::Clock), so one
//! [`FakeRelativeClock`](governor::clock::FakeRelativeClock) drives them
//! together in tests. The breaker's logic is a sans-IO state machine,
//! [`BreakerCore`].
//!
//! # Quick example
//!
//! ```no_run
//! use std::time::Duration;
//! use ratelimit::{BlankReason, Config, Lookup, ProtectedCache, Rate};
//!
//! # async fn demo() -> ratelimit::Result<()> {
//! let cfg = Config {
//!     read_limit: Some(Rate::per_second(5_000).with_burst(500)),
//!     ..Config::standalone("redis://127.0.0.1:6379")
//! };
//! let cache = ProtectedCache::builder(cfg)
//!     .hot_keys(|key: &[u8]| key.starts_with(b"item:hot:"))
//!     .connect()
//!     .await?;
//!
//! cache.set("item:42", "a small value", Some(Duration::from_secs(60))).await?;
//! match cache.get("item:42").await? {
//!     Lookup::Hit(value) => println!("{} bytes", value.len()),
//!     Lookup::Miss => println!("not cached"),
//!     Lookup::Blank(reason) => println!("try again later ({reason})"),
//!     Lookup::TooLarge { size, limit } => println!("{size} bytes is above {limit}"),
//! }
//!
//! // On a miss one caller per key asks the database; the others wait.
//! let page = cache
//!     .get_or_load("item:43", || async {
//!         Ok::<_, std::io::Error>(Some(b"from the database".to_vec()))
//!     })
//!     .await?;
//! if page == Lookup::Blank(BlankReason::CircuitOpen) {
//!     println!("redis is unwell: render the page without it");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! * A read returns within `call_timeout` (plus at most `call_timeout / 16`
//!   of reaper granularity) of its Redis call, and `get_or_load` within
//!   `loader.timeout` more; it never hangs on a silent server,
//!   and a timeout replaces the (possibly half-dead) connection.
//! * Redis receives at most `burst + rate × t` reads from one instance in
//!   any interval `t` (the per-instance limit), and at most that of the
//!   per-key rate for one hot key; a read is one permit (the probe, plus the
//!   script for a value longer than the probe, and with the default
//!   [`ProbeMode::HitFirst`] for a miss or an empty string); local hits and
//!   blanks send nothing.
//! * In half-open, at most `half_open_permits` probes are outstanding, and
//!   exactly that many results decide (a cancelled probe returns its
//!   permit).
//! * A string above `big_values.max_bytes` is never sent by a write, and a
//!   read transfers at most `big_values.read_probe_bytes + 1` bytes of it
//!   (none at all with `read_probe_bytes = 0`, which costs Redis a Lua
//!   call per read); its verdict is then remembered for the local TTL.
//!   In either [`ProbeMode`], a read's answer (hit, miss or too large) held
//!   at some instant of the call: a miss or an empty string is reported
//!   only when one atomic step saw it (the script, or with `Pipelined` the
//!   probe's own `EXISTS`).
//! * The per-key limiter never tracks more than `max_tracked_keys` keys, and
//!   the local cache never holds more than `local.max_bytes` bytes as it
//!   counts them (key + value + 160 bytes per entry; a write briefly copies
//!   its shard's map, not the values).
//! * Writes: `Ok` means Redis acknowledged the write. [`Error::Timeout`]
//!   means it may or may not have been applied. Local copies (this
//!   instance) are dropped on every write, and a refresh already reading
//!   Redis when the write went out does not put the old value back; other
//!   instances' local copies stay until their TTL (plus `max_stale`) runs
//!   out: a hot key's value may be that old.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod breaker;
mod cache;
mod clock;
mod config;
mod deadline;
mod error;
mod flight;
mod guard;
mod hot;
mod limits;
mod local;
pub mod metrics;
mod outcome;
mod window;

pub use breaker::{
    BreakerCore, CallOutcome, CircuitBreaker, Permit, Rejected, State, Ticket, Transition,
    TransitionReason,
};
pub use cache::{Builder, ProtectedCache};
pub use config::{
    BigValueConfig, BreakerConfig, Config, LoaderConfig, LocalConfig, ProbeMode, Rate, Topology,
    Window,
};
pub use error::{Error, Result};
pub use hot::{HotKeys, NoHotKeys};
pub use limits::{BoundedKeyStore, KeyedLimiter};
pub use outcome::{BlankReason, Lookup, ValueKind, ValueSize};
pub use window::WindowTotals;

pub use bytes;
pub use governor;
/// `hotkey::HotKeySet` implements [`HotKeys`]: re-exported so callers use the same version.
#[cfg(feature = "hotkey")]
pub use hotkey;
pub use redis;
