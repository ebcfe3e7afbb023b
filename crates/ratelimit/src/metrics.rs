//! Metric names and pre-registered handles.
//!
//! Handles are registered once, when a breaker or cache is built, so the
//! hot paths only bump an atomic (or do nothing when no recorder is
//! installed). Install the `metrics` recorder before building them.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `ratelimit_breaker_state` | gauge: 0 closed, 1 open, 2 half-open | `cache` |
//! | `ratelimit_breaker_transitions_total` | counter | `cache`, `to` |
//! | `ratelimit_breaker_rejected_total` | counter | `cache` |
//! | `ratelimit_reads_total` | counter | `cache`, `source` (`local`/`redis`), `outcome` |
//! | `ratelimit_blank_total` | counter | `cache`, `reason` |
//! | `ratelimit_big_values_total` | counter | `cache`, `event` (`read_refused`/`write_refused`/`warned`) |
//! | `ratelimit_tracked_keys` | gauge | `cache` |
//! | `ratelimit_key_overflow_total` | counter | `cache` |
//! | `ratelimit_loads_total` | counter | `cache`, `result` |

use metrics::{Counter, Gauge, counter, gauge};

use crate::breaker::State;
use crate::outcome::BlankReason;

/// `ratelimit_breaker_state`.
pub const BREAKER_STATE: &str = "ratelimit_breaker_state";
/// `ratelimit_breaker_transitions_total`.
pub const BREAKER_TRANSITIONS: &str = "ratelimit_breaker_transitions_total";
/// `ratelimit_breaker_rejected_total`.
pub const BREAKER_REJECTED: &str = "ratelimit_breaker_rejected_total";
/// `ratelimit_reads_total`.
pub const READS: &str = "ratelimit_reads_total";
/// `ratelimit_blank_total`.
pub const BLANKS: &str = "ratelimit_blank_total";
/// `ratelimit_big_values_total`.
pub const BIG_VALUES: &str = "ratelimit_big_values_total";
/// `ratelimit_tracked_keys`.
pub const TRACKED_KEYS: &str = "ratelimit_tracked_keys";
/// `ratelimit_key_overflow_total`.
pub const KEY_OVERFLOW: &str = "ratelimit_key_overflow_total";
/// `ratelimit_loads_total`.
pub const LOADS: &str = "ratelimit_loads_total";

#[derive(Debug, Clone)]
pub(crate) struct BreakerMetrics {
    pub(crate) state: Gauge,
    pub(crate) rejected: Counter,
    to_closed: Counter,
    to_open: Counter,
    to_half_open: Counter,
}

impl BreakerMetrics {
    pub(crate) fn new(name: &str) -> Self {
        let to = |s: State| counter!(BREAKER_TRANSITIONS, "cache" => name.to_owned(), "to" => s.as_str());
        BreakerMetrics {
            state: gauge!(BREAKER_STATE, "cache" => name.to_owned()),
            rejected: counter!(BREAKER_REJECTED, "cache" => name.to_owned()),
            to_closed: to(State::Closed),
            to_open: to(State::Open),
            to_half_open: to(State::HalfOpen),
        }
    }

    pub(crate) fn transition(&self, to: State) {
        match to {
            State::Closed => self.to_closed.increment(1),
            State::Open => self.to_open.increment(1),
            State::HalfOpen => self.to_half_open.increment(1),
        }
    }
}

/// Read outcomes, by source.
#[derive(Debug, Clone)]
pub(crate) struct ReadCounters {
    pub(crate) hit: Counter,
    pub(crate) miss: Counter,
    pub(crate) too_large: Counter,
}

impl ReadCounters {
    fn new(name: &str, source: &'static str) -> Self {
        let c = |outcome: &'static str| counter!(READS, "cache" => name.to_owned(), "source" => source, "outcome" => outcome);
        ReadCounters {
            hit: c("hit"),
            miss: c("miss"),
            too_large: c("too_large"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CacheMetrics {
    pub(crate) local: ReadCounters,
    pub(crate) redis: ReadCounters,
    blanks: Vec<Counter>,
    pub(crate) read_refused: Counter,
    pub(crate) write_refused: Counter,
    pub(crate) warned: Counter,
    pub(crate) tracked_keys: Gauge,
    pub(crate) key_overflow: Counter,
    pub(crate) load_hit: Counter,
    pub(crate) load_miss: Counter,
    pub(crate) load_error: Counter,
}

impl CacheMetrics {
    pub(crate) fn new(name: &str) -> Self {
        let big = |event: &'static str| counter!(BIG_VALUES, "cache" => name.to_owned(), "event" => event);
        let load =
            |result: &'static str| counter!(LOADS, "cache" => name.to_owned(), "result" => result);
        CacheMetrics {
            local: ReadCounters::new(name, "local"),
            redis: ReadCounters::new(name, "redis"),
            blanks: BlankReason::ALL
                .iter()
                .map(|r| counter!(BLANKS, "cache" => name.to_owned(), "reason" => r.as_str()))
                .collect(),
            read_refused: big("read_refused"),
            write_refused: big("write_refused"),
            warned: big("warned"),
            tracked_keys: gauge!(TRACKED_KEYS, "cache" => name.to_owned()),
            key_overflow: counter!(KEY_OVERFLOW, "cache" => name.to_owned()),
            load_hit: load("hit"),
            load_miss: load("miss"),
            load_error: load("error"),
        }
    }

    pub(crate) fn blank(&self, reason: BlankReason) {
        if let Some(c) = self.blanks.get(reason.index()) {
            c.increment(1);
        }
    }
}
