//! [`TestRecorder`]: a `metrics` recorder a test reads back (feature `metrics`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, LocalRecorderGuard, Metadata, Recorder, SharedString,
    Unit,
};
use metrics_util::registry::{AtomicStorage, Registry};

/// Keeps every counter and gauge recorded through it, so that a test can
/// check what the code under test reported.
///
/// Install it for one test only, never globally: the workspace's crates
/// register their metric handles when an object is built, so an object
/// built while this recorder is the thread's default ([`scope`](Self::scope),
/// or [`guard`](Self::guard) around `async` constructors on the test's
/// thread) reports to it for its whole life, whichever thread later counts.
/// Tests running in parallel in one binary therefore never see each other's
/// numbers.
///
/// ```
/// let recorder = testkit::TestRecorder::new();
/// let counter = recorder.scope(|| metrics::counter!("jobs_total", "queue" => "mail"));
/// counter.increment(2);
/// assert_eq!(recorder.counter("jobs_total", &[("queue", "mail")]), 2);
/// assert_eq!(recorder.counter("jobs_total", &[]), 0, "labels must match exactly");
/// ```
pub struct TestRecorder {
    registry: Registry<Key, AtomicStorage>,
}

impl std::fmt::Debug for TestRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut counters = Vec::new();
        self.registry
            .visit_counters(|k, c| counters.push((k.to_string(), c.load(Ordering::Acquire))));
        counters.sort();
        f.debug_struct("TestRecorder")
            .field("counters", &counters)
            .finish_non_exhaustive()
    }
}

impl Default for TestRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl TestRecorder {
    /// An empty recorder.
    #[must_use]
    pub fn new() -> Self {
        TestRecorder {
            registry: Registry::atomic(),
        }
    }

    /// Runs `f` with this recorder as the current thread's default.
    pub fn scope<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self, f)
    }

    /// Makes this recorder the current thread's default until the guard is
    /// dropped (for `async` constructors awaited on the test's own thread,
    /// as `#[tokio::test]` bodies are, whatever the runtime flavour).
    #[must_use]
    pub fn guard(&self) -> LocalRecorderGuard<'_> {
        metrics::set_default_local_recorder(self)
    }

    /// The value of the counter `name` with exactly these labels (in any
    /// order); 0 when no such counter was registered.
    #[must_use]
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut found = 0;
        self.registry.visit_counters(|k, c| {
            if matches(k, name, labels) {
                found = c.load(Ordering::Acquire);
            }
        });
        found
    }

    /// The value of the gauge `name` with exactly these labels; `None` when
    /// no such gauge was registered.
    #[must_use]
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        self.registry.visit_gauges(|k, g| {
            if matches(k, name, labels) {
                found = Some(f64::from_bits(g.load(Ordering::Acquire)));
            }
        });
        found
    }

    /// The sum of every counter called `name`, whatever its labels.
    #[must_use]
    pub fn counter_sum(&self, name: &str) -> u64 {
        let mut sum = 0;
        self.registry.visit_counters(|k, c| {
            if k.name() == name {
                sum += c.load(Ordering::Acquire);
            }
        });
        sum
    }
}

fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && key.labels().count() == labels.len()
        && key
            .labels()
            .all(|l| labels.iter().any(|(k, v)| l.key() == *k && l.value() == *v))
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_built_in_scope_keep_reporting_to_it_from_other_threads() {
        let recorder = TestRecorder::new();
        let (counter, gauge) = recorder.scope(|| {
            (
                metrics::counter!("c_total", "a" => "1", "b" => "2"),
                metrics::gauge!("g"),
            )
        });
        std::thread::spawn(move || {
            counter.increment(3);
            gauge.increment(2.0);
            gauge.decrement(0.5);
        })
        .join()
        .unwrap();
        assert_eq!(recorder.counter("c_total", &[("b", "2"), ("a", "1")]), 3);
        assert_eq!(recorder.counter("c_total", &[("a", "1")]), 0);
        assert_eq!(recorder.counter_sum("c_total"), 3);
        assert_eq!(recorder.gauge("g", &[]), Some(1.5));
        assert_eq!(recorder.gauge("missing", &[]), None);
        // Outside the scope, nothing reaches it.
        metrics::counter!("c_total", "a" => "1", "b" => "2").increment(10);
        assert_eq!(recorder.counter_sum("c_total"), 3);
    }
}
