//! Which prefix of a replay is confirmed: the part of the spill log that
//! may be checkpointed (and deleted).
//!
//! Replayed records are published in log order through a window, and the
//! broker confirms them in any order. The log may only be checkpointed past
//! a record once that record *and every record before it* is confirmed:
//! otherwise a crash would skip an unconfirmed record. [`Checkpointer`]
//! tracks exactly that, with no I/O.

use std::collections::VecDeque;

/// Tracks replayed records (in read order) and their confirmations.
#[derive(Debug)]
pub(crate) struct Checkpointer<P> {
    /// Records read but not yet part of the committed prefix, in read
    /// order: (position, confirmed).
    pending: VecDeque<(P, bool)>,
    /// Index (in read order) of `pending[0]`.
    base: u64,
    /// The newest position that may be committed and has not been taken.
    ready: Option<P>,
}

impl<P: Clone> Checkpointer<P> {
    pub(crate) fn new() -> Self {
        Checkpointer {
            pending: VecDeque::new(),
            base: 0,
            ready: None,
        }
    }

    /// Registers the next record read from the log; returns its index.
    pub(crate) fn push(&mut self, pos: P) -> u64 {
        self.pending.push_back((pos, false));
        self.base + self.pending.len() as u64 - 1
    }

    /// Marks record `idx` confirmed by the broker.
    pub(crate) fn confirm(&mut self, idx: u64) {
        let Some(off) = idx.checked_sub(self.base) else {
            return; // already committed
        };
        if let Some(slot) = self.pending.get_mut(off as usize) {
            slot.1 = true;
        }
        while let Some((_, true)) = self.pending.front() {
            if let Some((pos, _)) = self.pending.pop_front() {
                self.ready = Some(pos);
                self.base += 1;
            }
        }
    }

    /// The position up to which (inclusive) every record is confirmed, if it
    /// moved since the last call.
    pub(crate) fn take_ready(&mut self) -> Option<P> {
        self.ready.take()
    }

    /// Records read and not yet confirmed as part of a prefix.
    pub(crate) fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the confirmation order, the committed position is always
        /// the last record of a fully confirmed prefix, and once everything
        /// is confirmed it is the last record.
        #[test]
        fn commits_only_confirmed_prefixes(
            n in 1usize..60,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..80),
        ) {
            let mut c = Checkpointer::new();
            let idx: Vec<u64> = (0..n).map(|i| c.push(i * 10)).collect();
            let mut confirmed = vec![false; n];
            let mut committed: Option<usize> = None;
            let mut remaining: Vec<usize> = (0..n).collect();
            for pick in order {
                if remaining.is_empty() { break; }
                let i = remaining.swap_remove(pick.index(remaining.len()));
                confirmed[i] = true;
                c.confirm(idx[i]);
                if let Some(pos) = c.take_ready() {
                    let upto = pos / 10;
                    prop_assert!(confirmed[..=upto].iter().all(|&x| x));
                    prop_assert!(committed.is_none_or(|p| upto > p));
                    committed = Some(upto);
                }
            }
            for i in remaining {
                c.confirm(idx[i]);
            }
            if let Some(pos) = c.take_ready() {
                committed = Some(pos / 10);
            }
            prop_assert_eq!(committed, Some(n - 1));
            prop_assert_eq!(c.outstanding(), 0);
        }
    }

    #[test]
    fn stale_and_unknown_indices_are_ignored() {
        let mut c = Checkpointer::new();
        let a = c.push("a");
        c.confirm(a);
        assert_eq!(c.take_ready(), Some("a"));
        c.confirm(a); // already committed
        c.confirm(99); // never pushed
        assert_eq!(c.take_ready(), None);
        let b = c.push("b");
        assert_eq!(b, 1);
        c.confirm(b);
        assert_eq!(c.take_ready(), Some("b"));
    }
}
