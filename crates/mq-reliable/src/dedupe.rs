//! Duplicate detection by message id over a bounded window.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// Remembers the last `capacity` distinct message ids and says whether an
/// id was seen among them.
///
/// Delivery is at-least-once, and every copy of a message carries the same
/// id. A handler that must not act twice asks [`Dedupe::first_seen`] first.
/// Memory is bounded: once `capacity` distinct ids were recorded, the oldest
/// one is forgotten. Size the window above the largest distance between two
/// copies of a message: the replay checkpoint interval plus twice the
/// publisher's in-flight window (see the crate docs; unroutable and rejected
/// messages excepted); a copy arriving after more than `capacity` newer
/// distinct ids is not recognised.
///
/// ```
/// let mut seen = mq_reliable::Dedupe::new(2);
/// assert!(seen.first_seen("a"));
/// assert!(!seen.first_seen("a"));
/// assert!(seen.first_seen("b"));
/// assert!(seen.first_seen("c")); // "a" is forgotten now
/// assert!(seen.first_seen("a"));
/// ```
#[derive(Debug, Clone)]
pub struct Dedupe {
    capacity: usize,
    set: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    duplicates: u64,
}

impl Dedupe {
    /// A window remembering up to `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Dedupe {
        let capacity = capacity.max(1);
        Dedupe {
            capacity,
            set: HashSet::with_capacity(capacity.min(1 << 20)),
            order: VecDeque::with_capacity(capacity.min(1 << 20)),
            duplicates: 0,
        }
    }

    /// True the first time `id` is seen within the window; false for a
    /// duplicate (and counts it).
    #[must_use = "false means a duplicate: skip acting on it"]
    pub fn first_seen(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            self.duplicates += 1;
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        let id: Arc<str> = Arc::from(id);
        self.set.insert(Arc::clone(&id));
        self.order.push_back(id);
        true
    }

    /// Whether `id` is currently remembered.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// Duplicates detected so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a model that keeps everything: `first_seen` is false
        /// exactly for ids seen among the last `capacity` distinct ids, and
        /// memory never exceeds `capacity`.
        #[test]
        fn matches_a_sliding_window_model(
            cap in 1usize..8,
            ids in proptest::collection::vec(0u8..12, 0..200),
        ) {
            let mut d = Dedupe::new(cap);
            let mut window: VecDeque<u8> = VecDeque::new();
            let mut dups = 0;
            for id in ids {
                let key = id.to_string();
                let expected_first = !window.contains(&id);
                prop_assert_eq!(d.first_seen(&key), expected_first);
                if expected_first {
                    if window.len() == cap {
                        window.pop_front();
                    }
                    window.push_back(id);
                } else {
                    dups += 1;
                }
                prop_assert!(d.len() <= cap);
                prop_assert_eq!(d.len(), window.len());
            }
            prop_assert_eq!(d.duplicates(), dups);
        }
    }

    #[test]
    fn zero_capacity_is_clamped_to_one() {
        let mut d = Dedupe::new(0);
        assert_eq!(d.capacity(), 1);
        assert!(d.first_seen("x"));
        assert!(!d.first_seen("x"));
        assert!(d.contains("x"));
    }
}
