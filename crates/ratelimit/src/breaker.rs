//! The circuit breaker: a sans-IO state machine ([`BreakerCore`]) and a
//! thread-safe, clock-driven wrapper ([`CircuitBreaker`]).
//!
//! ```text
//!            thresholds reached over the window (>= min_calls)
//!   Closed ─────────────────────────────────────────────────▶ Open
//!     ▲                                                        │
//!     │ N probe results in,               open_duration passed │
//!     │ below the thresholds                                   ▼
//!     └──────────────────────────── HalfOpen (exactly N permits)
//!                                      │ a probe result makes the
//!                                      │ thresholds unreachable
//!                                      ▼
//!                                     Open
//! ```
//!
//! The core never reads a clock: every input carries `now`. The wrapper
//! reads an injected governor [`Clock`], so one `FakeRelativeClock` can
//! drive a governor limiter and this breaker together.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::clock::{Time, nanos};
use crate::config::BreakerConfig;
use crate::error::Result;
use crate::metrics::BreakerMetrics;
use crate::window::{SlidingWindow, WindowTotals};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; outcomes are recorded in the window.
    Closed,
    /// Calls are refused until `open_duration` has passed.
    Open,
    /// Exactly `half_open_permits` probe calls are admitted; their results
    /// decide.
    HalfOpen,
}

impl State {
    /// Short snake-case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The value of the `ratelimit_breaker_state` gauge: 0, 1 or 2.
    pub fn code(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }

    fn from_code(code: u64) -> State {
        match code {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionReason {
    /// `errors / calls` reached `error_ratio`.
    ErrorRatio {
        /// Errors in the window.
        errors: u64,
        /// Calls in the window.
        calls: u64,
    },
    /// `slow / calls` reached `slow_call_ratio`.
    SlowCallRatio {
        /// Slow calls in the window.
        slow: u64,
        /// Calls in the window.
        calls: u64,
    },
    /// `errors` reached `error_count`.
    ErrorCount {
        /// Errors in the window.
        errors: u64,
    },
    /// `open_duration` passed.
    OpenElapsed,
    /// Every probe result is in and below the thresholds.
    ProbesPassed {
        /// Probes judged.
        probes: u32,
    },
    /// The probes' results reached a threshold.
    ProbesFailed {
        /// Failed probes.
        failed: u32,
        /// Slow probes.
        slow: u32,
        /// Probes admitted in this half-open period.
        probes: u32,
    },
    /// [`CircuitBreaker::force_open`] or [`CircuitBreaker::reset`].
    Forced,
}

/// A state change, as observed through [`CircuitBreaker::subscribe`] and
/// [`BreakerCore::poll_transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// When, as time since the breaker's clock origin.
    pub at: Duration,
    /// Why.
    pub reason: TransitionReason,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The breaker is open; it probes again after `retry_after`.
    Open {
        /// Time left until half-open.
        retry_after: Duration,
    },
    /// The breaker is half-open and every probe permit is taken.
    ProbesTaken,
}

/// How a call ended, for the breaker's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The server answered (a miss or a too-large value is a success).
    Success,
    /// The call failed or timed out.
    Failure,
}

/// An admitted call, to be reported back with `on_result` or `on_cancel`.
#[must_use = "report the call's outcome, or cancel it, or a probe permit stays taken"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    probe: bool,
}

impl Ticket {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Probes {
    issued: u32,
    done: u32,
    failed: u32,
    slow: u32,
}

/// The breaker as a pure state machine: no clock, no I/O, no locks.
///
/// Feed it `try_acquire(now)`, `on_result(ticket, outcome, elapsed, now)`
/// and `on_cancel(ticket)`; read state changes with `poll_transition()`.
/// Results of tickets issued before the last state change are ignored, so
/// a slow call that started while closed cannot sway a half-open decision.
#[derive(Debug, Clone)]
pub struct BreakerCore {
    cfg: BreakerConfig,
    state: State,
    generation: u64,
    window: SlidingWindow,
    open_until_ns: u64,
    probes: Probes,
    pending: VecDeque<Transition>,
}

impl BreakerCore {
    /// A closed breaker; fails if the config is invalid.
    pub fn new(cfg: BreakerConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(BreakerCore {
            window: SlidingWindow::new(cfg.window),
            cfg,
            state: State::Closed,
            generation: 0,
            open_until_ns: 0,
            probes: Probes::default(),
            pending: VecDeque::new(),
        })
    }

    /// The current state (an open breaker whose time is up still reports
    /// `Open` until the next `try_acquire`).
    pub fn state(&self) -> State {
        self.state
    }

    /// Increases with every state change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// While open: when it turns half-open, as time since the origin.
    pub fn open_until(&self) -> Duration {
        Duration::from_nanos(self.open_until_ns)
    }

    /// The window's totals at `now` (closed state; empty otherwise).
    pub fn totals(&self, now: Duration) -> WindowTotals {
        self.window.totals(nanos(now))
    }

    /// The config.
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Asks to make a call at `now`.
    pub fn try_acquire(&mut self, now: Duration) -> Result<Ticket, Rejected> {
        let now_ns = nanos(now);
        if self.state == State::Open {
            if now_ns < self.open_until_ns {
                return Err(Rejected::Open {
                    retry_after: Duration::from_nanos(self.open_until_ns - now_ns),
                });
            }
            self.transition(State::HalfOpen, now_ns, TransitionReason::OpenElapsed);
        }
        match self.state {
            State::Closed => Ok(Ticket {
                generation: self.generation,
                probe: false,
            }),
            State::HalfOpen if self.probes.issued < self.cfg.half_open_permits => {
                self.probes.issued += 1;
                Ok(Ticket {
                    generation: self.generation,
                    probe: true,
                })
            }
            State::HalfOpen | State::Open => Err(Rejected::ProbesTaken),
        }
    }

    /// Reports how an admitted call ended. `elapsed` decides whether it was
    /// slow; `now` is when it ended.
    pub fn on_result(
        &mut self,
        ticket: Ticket,
        outcome: CallOutcome,
        elapsed: Duration,
        now: Duration,
    ) {
        if ticket.generation != self.generation {
            return; // issued before the last state change: not about this period
        }
        let now_ns = nanos(now);
        let error = outcome == CallOutcome::Failure;
        let slow = elapsed >= self.cfg.slow_call_duration;
        match self.state {
            State::Closed => {
                self.window.record(now_ns, error, slow);
                if let Some(reason) = self.trip_reason(now_ns) {
                    self.open(now_ns, reason);
                }
            }
            State::HalfOpen if ticket.probe => {
                let p = &mut self.probes;
                p.done += 1;
                p.failed += u32::from(error);
                p.slow += u32::from(slow);
                self.judge_probes(now_ns);
            }
            State::HalfOpen | State::Open => {}
        }
    }

    /// Reports that an admitted call was not made (or was abandoned before
    /// it ended): a probe permit returns to the pool.
    pub fn on_cancel(&mut self, ticket: Ticket) {
        if ticket.probe
            && ticket.generation == self.generation
            && self.state == State::HalfOpen
            && self.probes.issued > self.probes.done
        {
            self.probes.issued -= 1;
        }
    }

    /// Opens the breaker now, for `open_duration`.
    pub fn force_open(&mut self, now: Duration) {
        self.open(nanos(now), TransitionReason::Forced);
    }

    /// Closes the breaker now, with an empty window.
    pub fn reset(&mut self, now: Duration) {
        if self.state != State::Closed {
            self.transition(State::Closed, nanos(now), TransitionReason::Forced);
        }
    }

    /// The next state change not yet polled, oldest first.
    pub fn poll_transition(&mut self) -> Option<Transition> {
        self.pending.pop_front()
    }

    fn trip_reason(&self, now_ns: u64) -> Option<TransitionReason> {
        let t = self.window.totals(now_ns);
        if t.calls < u64::from(self.cfg.min_calls) {
            return None;
        }
        if let Some(limit) = self.cfg.error_count
            && t.errors >= u64::from(limit)
        {
            return Some(TransitionReason::ErrorCount { errors: t.errors });
        }
        if let Some(r) = self.cfg.error_ratio
            && ratio_reached(t.errors, t.calls, r)
        {
            return Some(TransitionReason::ErrorRatio {
                errors: t.errors,
                calls: t.calls,
            });
        }
        if let Some(r) = self.cfg.slow_call_ratio
            && ratio_reached(t.slow, t.calls, r)
        {
            return Some(TransitionReason::SlowCallRatio {
                slow: t.slow,
                calls: t.calls,
            });
        }
        None
    }

    /// Decides half-open as soon as the outcome is certain: the ratios'
    /// denominator is the fixed number of permits, so failures can only
    /// push towards Open.
    fn judge_probes(&mut self, now_ns: u64) {
        let p = self.probes;
        let n = self.cfg.half_open_permits;
        let failed = match self.cfg.error_ratio {
            Some(r) => ratio_reached(u64::from(p.failed), u64::from(n), r),
            None => p.failed > 0,
        };
        let slow = self
            .cfg
            .slow_call_ratio
            .is_some_and(|r| ratio_reached(u64::from(p.slow), u64::from(n), r));
        if failed || slow {
            self.open(
                now_ns,
                TransitionReason::ProbesFailed {
                    failed: p.failed,
                    slow: p.slow,
                    probes: n,
                },
            );
        } else if p.done >= n {
            self.transition(
                State::Closed,
                now_ns,
                TransitionReason::ProbesPassed { probes: n },
            );
        }
    }

    fn open(&mut self, now_ns: u64, reason: TransitionReason) {
        self.open_until_ns = now_ns.saturating_add(nanos(self.cfg.open_duration));
        self.transition(State::Open, now_ns, reason);
    }

    fn transition(&mut self, to: State, now_ns: u64, reason: TransitionReason) {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.probes = Probes::default();
        self.window.clear();
        self.pending.push_back(Transition {
            from,
            to,
            at: Duration::from_nanos(now_ns),
            reason,
        });
    }
}

fn ratio_reached(part: u64, whole: u64, ratio: f64) -> bool {
    whole > 0 && part as f64 >= ratio * whole as f64
}

/// Capacity of the transition broadcast channel; slow subscribers miss the
/// oldest events (and see `RecvError::Lagged`).
const EVENT_CAPACITY: usize = 256;

/// A thread-safe circuit breaker driven by an injected clock.
///
/// In the closed state, admitting a call is one atomic load and one clock
/// read; no lock is taken. Recording a result, and everything in the open
/// and half-open states, goes through a mutex around [`BreakerCore`], which
/// is what makes "exactly N probe permits" hold under any contention.
///
/// State changes are published three ways: [`subscribe`](Self::subscribe)
/// (a tokio broadcast channel of [`Transition`]s), `metrics` (the
/// `ratelimit_breaker_state` gauge, `ratelimit_breaker_transitions_total`
/// and `ratelimit_breaker_rejected_total` counters, labelled
/// `cache=<name>`), and a `tracing` event.
///
/// ```
/// use std::time::Duration;
/// use governor::clock::FakeRelativeClock;
/// use ratelimit::{BreakerConfig, CircuitBreaker, State, Window};
///
/// let clock = FakeRelativeClock::default();
/// let cfg = BreakerConfig {
///     window: Window::Count(4),
///     min_calls: 4,
///     half_open_permits: 1,
///     open_duration: Duration::from_secs(1),
///     ..BreakerConfig::default()
/// };
/// let breaker = CircuitBreaker::with_clock("doc", cfg, clock.clone()).unwrap();
/// for _ in 0..4 {
///     breaker.try_acquire().unwrap().failure();
/// }
/// assert_eq!(breaker.state(), State::Open);
/// assert!(breaker.try_acquire().is_err());
/// clock.advance(Duration::from_secs(1));
/// let probe = breaker.try_acquire().unwrap();
/// assert!(breaker.try_acquire().is_err()); // the one permit is taken
/// probe.success();
/// assert_eq!(breaker.state(), State::Closed);
/// ```
#[derive(Debug)]
pub struct CircuitBreaker<C: Clock = DefaultClock> {
    /// `generation << 2 | state code`, mirrored from the core under its
    /// lock, so the closed fast path needs no lock.
    fast: AtomicU64,
    /// Mirror of the core's `open_until`, stored before `fast`.
    open_until_ns: AtomicU64,
    core: Mutex<BreakerCore>,
    time: Time<C>,
    events: broadcast::Sender<Transition>,
    metrics: BreakerMetrics,
    name: String,
}

impl CircuitBreaker<DefaultClock> {
    /// A breaker on the default (quanta) clock; `name` labels its metrics.
    pub fn new(name: &str, cfg: BreakerConfig) -> Result<Self> {
        Self::with_clock(name, cfg, DefaultClock::default())
    }
}

impl<C: Clock> CircuitBreaker<C> {
    /// A breaker on an injected clock; `name` labels its metrics.
    pub fn with_clock(name: &str, cfg: BreakerConfig, clock: C) -> Result<Self> {
        let core = BreakerCore::new(cfg)?;
        let metrics = BreakerMetrics::new(name);
        metrics.state.set(State::Closed.code() as f64);
        Ok(CircuitBreaker {
            fast: AtomicU64::new(pack(0, State::Closed)),
            open_until_ns: AtomicU64::new(0),
            core: Mutex::new(core),
            time: Time::new(clock),
            events: broadcast::channel(EVENT_CAPACITY).0,
            metrics,
            name: name.to_owned(),
        })
    }

    /// Asks to make a call now. Drop the permit without reporting to
    /// cancel the call (a probe permit then returns to the pool).
    pub fn try_acquire(&self) -> Result<Permit<'_, C>, Rejected> {
        let now_ns = self.time.now_nanos();
        let fast = self.fast.load(Ordering::Acquire);
        let state = State::from_code(fast & 3);
        if state == State::Closed {
            return Ok(Permit {
                breaker: self,
                ticket: Ticket {
                    generation: fast >> 2,
                    probe: false,
                },
                started_ns: now_ns,
                reported: false,
            });
        }
        if state == State::Open {
            let until = self.open_until_ns.load(Ordering::Acquire);
            if now_ns < until {
                self.metrics.rejected.increment(1);
                return Err(Rejected::Open {
                    retry_after: Duration::from_nanos(until - now_ns),
                });
            }
        }
        let mut core = self.core.lock();
        let result = core.try_acquire(Duration::from_nanos(now_ns));
        self.publish(&mut core);
        drop(core);
        match result {
            Ok(ticket) => Ok(Permit {
                breaker: self,
                ticket,
                started_ns: now_ns,
                reported: false,
            }),
            Err(rejected) => {
                self.metrics.rejected.increment(1);
                Err(rejected)
            }
        }
    }

    /// The current state. An open breaker whose time is up reports `Open`
    /// until the next call asks for a permit.
    pub fn state(&self) -> State {
        State::from_code(self.fast.load(Ordering::Acquire) & 3)
    }

    /// A receiver of every state change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.events.subscribe()
    }

    /// The window's totals now (empty unless closed).
    pub fn totals(&self) -> WindowTotals {
        self.core.lock().totals(self.time.now())
    }

    /// Opens the breaker now, for `open_duration` (an operator's switch).
    pub fn force_open(&self) {
        let mut core = self.core.lock();
        core.force_open(self.time.now());
        self.publish(&mut core);
    }

    /// Closes the breaker now, with an empty window.
    pub fn reset(&self) {
        let mut core = self.core.lock();
        core.reset(self.time.now());
        self.publish(&mut core);
    }

    /// Time since this breaker's clock origin (what [`Transition::at`]
    /// counts from).
    pub fn now(&self) -> Duration {
        self.time.now()
    }

    /// The injected clock.
    pub fn clock(&self) -> &C {
        self.time.clock()
    }

    fn report(&self, ticket: Ticket, outcome: CallOutcome, started_ns: u64) {
        if !ticket.probe && (self.fast.load(Ordering::Acquire) >> 2) != ticket.generation {
            return; // stale: the core would ignore it; skip the lock
        }
        let now_ns = self.time.now_nanos();
        let elapsed = Duration::from_nanos(now_ns.saturating_sub(started_ns));
        let mut core = self.core.lock();
        core.on_result(ticket, outcome, elapsed, Duration::from_nanos(now_ns));
        self.publish(&mut core);
    }

    fn cancel(&self, ticket: Ticket) {
        if ticket.probe {
            let mut core = self.core.lock();
            core.on_cancel(ticket);
            self.publish(&mut core);
        }
    }

    /// Mirrors the core into the atomics and announces its transitions.
    /// Called with the core locked, so announcements keep their order.
    fn publish(&self, core: &mut BreakerCore) {
        let mut changed = false;
        while let Some(t) = core.poll_transition() {
            changed = true;
            self.metrics.transition(t.to);
            tracing::info!(
                breaker = %self.name,
                from = %t.from,
                to = %t.to,
                reason = ?t.reason,
                "circuit breaker state change"
            );
            let _ = self.events.send(t); // no subscriber is fine
        }
        if changed {
            self.open_until_ns
                .store(core.open_until_ns, Ordering::Release);
            self.fast
                .store(pack(core.generation(), core.state()), Ordering::Release);
            self.metrics.state.set(core.state().code() as f64);
        }
    }
}

fn pack(generation: u64, state: State) -> u64 {
    (generation << 2) | state.code()
}

/// Permission to make one call. Report it with [`success`](Self::success),
/// [`failure`](Self::failure) or [`record`](Self::record); dropping it
/// unreported cancels it.
#[must_use = "report the outcome; dropping the permit cancels the call"]
#[derive(Debug)]
pub struct Permit<'a, C: Clock = DefaultClock> {
    breaker: &'a CircuitBreaker<C>,
    ticket: Ticket,
    started_ns: u64,
    reported: bool,
}

impl<C: Clock> Permit<'_, C> {
    /// The call succeeded; its duration (from the permit) decides whether
    /// it was slow.
    pub fn success(self) {
        self.record(CallOutcome::Success);
    }

    /// The call failed.
    pub fn failure(mut self) {
        self.report(CallOutcome::Failure);
    }

    /// Reports the outcome.
    pub fn record(mut self, outcome: CallOutcome) {
        self.report(outcome);
    }

    /// Whether this is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.probe
    }

    fn report(&mut self, outcome: CallOutcome) {
        self.reported = true;
        self.breaker.report(self.ticket, outcome, self.started_ns);
    }
}

impl<C: Clock> Drop for Permit<'_, C> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.cancel(self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Window;
    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;
    use std::sync::{Arc, Barrier};

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: Window::Time {
                length: Duration::from_secs(10),
                buckets: 10,
            },
            min_calls: 4,
            error_ratio: Some(0.5),
            slow_call_ratio: Some(0.5),
            slow_call_duration: 100 * MS,
            error_count: None,
            open_duration: Duration::from_secs(5),
            half_open_permits: 3,
        }
    }

    fn call(core: &mut BreakerCore, outcome: CallOutcome, elapsed: Duration, now: Duration) {
        let t = core.try_acquire(now).expect("admitted");
        core.on_result(t, outcome, elapsed, now);
    }

    fn drain(core: &mut BreakerCore) -> Vec<(State, State)> {
        std::iter::from_fn(|| core.poll_transition())
            .map(|t| (t.from, t.to))
            .collect()
    }

    #[test]
    fn error_ratio_trips_only_after_min_calls() {
        let mut core = BreakerCore::new(cfg()).unwrap();
        for _ in 0..3 {
            call(&mut core, CallOutcome::Failure, MS, Duration::ZERO);
        }
        assert_eq!(core.state(), State::Closed, "3 calls < min_calls");
        call(&mut core, CallOutcome::Success, MS, Duration::ZERO);
        assert_eq!(core.state(), State::Open, "3/4 errors >= 0.5");
        let t = core.poll_transition().unwrap();
        assert_eq!(
            t.reason,
            TransitionReason::ErrorRatio {
                errors: 3,
                calls: 4
            }
        );
        assert!(matches!(
            core.try_acquire(Duration::from_secs(1)),
            Err(Rejected::Open { retry_after }) if retry_after == Duration::from_secs(4)
        ));
    }

    #[test]
    fn slow_call_ratio_trips() {
        let mut core = BreakerCore::new(cfg()).unwrap();
        for i in 0..4 {
            let elapsed = if i % 2 == 0 { 100 * MS } else { MS };
            call(&mut core, CallOutcome::Success, elapsed, Duration::ZERO);
        }
        assert_eq!(core.state(), State::Open);
        assert_eq!(
            core.poll_transition().unwrap().reason,
            TransitionReason::SlowCallRatio { slow: 2, calls: 4 }
        );
    }

    #[test]
    fn error_count_trips() {
        let mut core = BreakerCore::new(BreakerConfig {
            error_ratio: None,
            slow_call_ratio: None,
            error_count: Some(3),
            min_calls: 1,
            ..cfg()
        })
        .unwrap();
        for _ in 0..20 {
            call(&mut core, CallOutcome::Success, MS, Duration::ZERO);
        }
        call(&mut core, CallOutcome::Failure, MS, Duration::ZERO);
        call(&mut core, CallOutcome::Failure, MS, Duration::ZERO);
        assert_eq!(core.state(), State::Closed);
        call(&mut core, CallOutcome::Failure, MS, Duration::ZERO);
        assert_eq!(core.state(), State::Open);
        assert_eq!(
            core.poll_transition().unwrap().reason,
            TransitionReason::ErrorCount { errors: 3 }
        );
    }

    #[test]
    fn old_errors_slide_out_of_the_window() {
        let mut core = BreakerCore::new(cfg()).unwrap();
        for _ in 0..3 {
            call(&mut core, CallOutcome::Failure, MS, Duration::ZERO);
        }
        // 10 s later the failures have left the window.
        let later = Duration::from_secs(10);
        call(&mut core, CallOutcome::Success, MS, later);
        assert_eq!(core.totals(later).calls, 1);
        assert_eq!(core.state(), State::Closed);
    }

    #[test]
    fn half_open_admits_exactly_n_then_closes() {
        let mut core = BreakerCore::new(cfg()).unwrap();
        core.force_open(Duration::ZERO);
        let at = Duration::from_secs(5);
        let tickets: Vec<Ticket> = (0..3).map(|_| core.try_acquire(at).unwrap()).collect();
        assert_eq!(core.state(), State::HalfOpen);
        assert_eq!(core.try_acquire(at), Err(Rejected::ProbesTaken));
        for t in &tickets {
            assert!(t.is_probe());
        }
        for t in tickets {
            core.on_result(t, CallOutcome::Success, MS, at);
        }
        assert_eq!(core.state(), State::Closed);
        assert_eq!(
            drain(&mut core),
            vec![
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed)
            ]
        );
    }

    #[test]
    fn half_open_reopens_as_soon_as_the_ratio_is_certain() {
        let mut core = BreakerCore::new(cfg()).unwrap();
        core.force_open(Duration::ZERO);
        let at = Duration::from_secs(5);
        let a = core.try_acquire(at).unwrap();
        let b = core.try_acquire(at).unwrap();
        let c = core.try_acquire(at).unwrap();
        core.on_result(a, CallOutcome::Failure, MS, at);
        assert_eq!(core.state(), State::HalfOpen, "1/3 < 0.5");
        core.on_result(b, CallOutcome::Failure, MS, at);
        assert_eq!(core.state(), State::Open, "2/3 >= 0.5 whatever c says");
        // c's late result belongs to the previous period and is ignored.
        core.on_result(c, CallOutcome::Success, MS, at);
        assert_eq!(core.state(), State::Open);
        assert_eq!(core.open_until(), Duration::from_secs(10));
    }

    #[test]
    fn cancelled_probe_returns_its_permit() {
        let mut core = BreakerCore::new(cfg()).unwrap();
        core.force_open(Duration::ZERO);
        let at = Duration::from_secs(5);
        let held: Vec<Ticket> = (0..3).map(|_| core.try_acquire(at).unwrap()).collect();
        assert_eq!(core.try_acquire(at), Err(Rejected::ProbesTaken));
        core.on_cancel(held[0]);
        let again = core.try_acquire(at).unwrap();
        assert!(again.is_probe());
        assert_eq!(core.try_acquire(at), Err(Rejected::ProbesTaken));
    }

    #[test]
    fn stale_results_are_ignored() {
        let mut core = BreakerCore::new(cfg()).unwrap();
        let old = core.try_acquire(Duration::ZERO).unwrap();
        core.force_open(Duration::ZERO);
        core.reset(Duration::ZERO);
        core.on_result(old, CallOutcome::Failure, MS, Duration::ZERO);
        assert_eq!(core.totals(Duration::ZERO).calls, 0);
    }

    #[test]
    fn one_fake_clock_drives_a_governor_limiter_and_the_breaker() {
        use governor::{Quota, RateLimiter};
        use std::num::NonZeroU32;

        let clock = FakeRelativeClock::default();
        let limiter =
            RateLimiter::direct_with_clock(Quota::per_second(NonZeroU32::MIN), clock.clone());
        let breaker = CircuitBreaker::with_clock(
            "fake",
            BreakerConfig {
                window: Window::Count(2),
                min_calls: 2,
                open_duration: Duration::from_secs(1),
                half_open_permits: 1,
                ..cfg()
            },
            clock.clone(),
        )
        .unwrap();
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err(), "1/s: the second is refused");
        breaker.try_acquire().unwrap().failure();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Open);

        // One advance moves both.
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check().is_ok());
        let probe = breaker.try_acquire().expect("half-open after 1 s");
        assert!(probe.is_probe());
        probe.success();
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn slow_calls_are_measured_on_the_injected_clock() {
        let clock = FakeRelativeClock::default();
        let breaker = CircuitBreaker::with_clock(
            "slow",
            BreakerConfig {
                window: Window::Count(2),
                min_calls: 2,
                error_ratio: None,
                slow_call_ratio: Some(1.0),
                ..cfg()
            },
            clock.clone(),
        )
        .unwrap();
        for _ in 0..2 {
            let p = breaker.try_acquire().unwrap();
            clock.advance(100 * MS);
            p.success();
        }
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn exactly_n_probes_under_thread_contention() {
        for round in 0..20 {
            let clock = FakeRelativeClock::default();
            let n = 1 + round % 5;
            let breaker = Arc::new(
                CircuitBreaker::with_clock(
                    "contention",
                    BreakerConfig {
                        half_open_permits: n,
                        ..cfg()
                    },
                    clock.clone(),
                )
                .unwrap(),
            );
            breaker.force_open();
            clock.advance(Duration::from_secs(5));
            let threads = 64;
            let barrier = Arc::new(Barrier::new(threads));
            let granted: Vec<bool> = (0..threads)
                .map(|_| {
                    let breaker = Arc::clone(&breaker);
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        barrier.wait();
                        match breaker.try_acquire() {
                            Ok(p) => {
                                // Hold the permit until everyone has tried.
                                std::mem::forget(p);
                                true
                            }
                            Err(_) => false,
                        }
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            assert_eq!(granted.iter().filter(|g| **g).count(), n as usize);
            assert_eq!(breaker.state(), State::HalfOpen);
        }
    }

    #[test]
    fn subscribers_see_every_transition_in_order() {
        let clock = FakeRelativeClock::default();
        let breaker = CircuitBreaker::with_clock("events", cfg(), clock.clone()).unwrap();
        let mut rx = breaker.subscribe();
        for _ in 0..4 {
            breaker.try_acquire().unwrap().failure();
        }
        clock.advance(Duration::from_secs(5));
        for _ in 0..3 {
            breaker.try_acquire().unwrap().success();
        }
        let seen: Vec<(State, State)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|t| (t.from, t.to))
            .collect();
        assert_eq!(
            seen,
            vec![
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed)
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        Succeed(usize, u16),
        Fail(usize),
        Cancel(usize),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Acquire),
            2 => (any::<usize>(), 0u16..300).prop_map(|(i, ms)| Op::Succeed(i, ms)),
            2 => any::<usize>().prop_map(Op::Fail),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => (0u16..3000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Whatever happens: at most N probes are outstanding per half-open
        /// period, transitions follow the diagram, an open breaker refuses
        /// every call until its open_until, and the first call after it
        /// finds the breaker half-open.
        #[test]
        fn state_machine_invariants(ops in prop::collection::vec(op(), 1..300)) {
            let cfg = BreakerConfig {
                window: Window::Count(5),
                min_calls: 3,
                open_duration: Duration::from_secs(1),
                half_open_permits: 2,
                ..cfg()
            };
            let mut core = BreakerCore::new(cfg).unwrap();
            let mut now = Duration::ZERO;
            let mut held: Vec<Ticket> = Vec::new();
            let mut state = State::Closed;
            for op in ops {
                match op {
                    Op::Acquire => {
                        let open_until = (core.state() == State::Open).then(|| core.open_until());
                        let result = core.try_acquire(now);
                        match open_until {
                            Some(until) if now < until => prop_assert_eq!(
                                result,
                                Err(Rejected::Open { retry_after: until - now })
                            ),
                            Some(_) => prop_assert_eq!(core.state(), State::HalfOpen),
                            None => {}
                        }
                        if let Ok(t) = result {
                            held.push(t);
                        }
                    }
                    Op::Succeed(i, ms) if !held.is_empty() => {
                        let t = held.swap_remove(i % held.len());
                        core.on_result(t, CallOutcome::Success, Duration::from_millis(ms.into()), now);
                    }
                    Op::Fail(i) if !held.is_empty() => {
                        let t = held.swap_remove(i % held.len());
                        core.on_result(t, CallOutcome::Failure, MS, now);
                    }
                    Op::Cancel(i) if !held.is_empty() => {
                        let t = held.swap_remove(i % held.len());
                        core.on_cancel(t);
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms.into()),
                    _ => {}
                }
                while let Some(t) = core.poll_transition() {
                    prop_assert_eq!(t.from, state);
                    let legal = matches!(
                        (t.from, t.to),
                        (State::Closed, State::Open)
                            | (State::Open, State::HalfOpen)
                            | (State::HalfOpen, State::Open)
                            | (State::HalfOpen, State::Closed)
                    );
                    prop_assert!(legal, "illegal {:?}", t);
                    state = t.to;
                }
                prop_assert_eq!(core.state(), state);
                if state == State::HalfOpen {
                    let probes_out = held
                        .iter()
                        .filter(|t| t.is_probe() && t.generation == core.generation())
                        .count();
                    prop_assert!(probes_out <= 2, "{} probes out", probes_out);
                }
            }
        }
    }
}
