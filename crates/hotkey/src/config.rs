//! [`Config`] of the [`Detector`](crate::Detector).

use crate::error::{Error, Result};
use crate::rule::Rule;
use crate::sketch::SKETCH_COUNT_MAX;

/// How a [`Detector`](crate::Detector) counts.
///
/// Memory is bounded whatever the number of distinct keys: per rule
/// `sketch_bytes` plus at most `max_candidates` exact windows (each holding
/// its key: keys up to 32 bytes inline, longer ones on the heap), plus at
/// most `max_pending_events` undrained events.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The rules, tried in order: a key is counted under the first rule whose
    /// pattern matches it, and not at all if none does.
    pub rules: Vec<Rule>,
    /// Bytes of screening sketch per rule (rounded down to a power of two
    /// number of 64-byte lines). Default 16 MiB: about 2 M distinct keys per
    /// window before the sketch gets crowded (crowding only adds candidates,
    /// never misses a hot key).
    pub sketch_bytes: usize,
    /// Exact windows per rule at most. Recall is guaranteed while no more
    /// keys than this are at or above the candidate level at once.
    pub max_candidates: usize,
    /// A key gets an exact window once the sketch says it may have been read
    /// `threshold / candidate_divisor` times in the window. Larger values
    /// promote earlier: more candidates, smaller over-estimates.
    pub candidate_divisor: u64,
    /// Seed of the key hash. `None` picks a random one per detector, so that
    /// nobody can craft keys that collide in the sketch; set it to make runs
    /// reproducible (`hotkey-scan` does).
    pub hash_seed: Option<u64>,
    /// Undrained events kept at most; older ones are dropped (the current hot
    /// set is always available from [`Detector::hot_keys`](crate::Detector::hot_keys)).
    pub max_pending_events: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rules: vec![Rule::default()],
            sketch_bytes: 16 << 20,
            max_candidates: 65_536,
            candidate_divisor: 8,
            hash_seed: None,
            max_pending_events: 65_536,
        }
    }
}

impl Config {
    /// A config with these rules and default sizes.
    #[must_use]
    pub fn with_rules(rules: Vec<Rule>) -> Self {
        Config {
            rules,
            ..Config::default()
        }
    }

    /// Checks every field; the error names the field and the value.
    pub fn validate(&self) -> Result<()> {
        if self.rules.is_empty() || self.rules.len() > 64 {
            return Err(Error::config(
                "rules",
                self.rules.len(),
                "need 1..=64 rules",
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate_at(i)?;
        }
        if !(4096..=(1 << 34)).contains(&self.sketch_bytes) {
            return Err(Error::config(
                "sketch_bytes",
                self.sketch_bytes,
                "must be in 4 KiB ..= 16 GiB",
            ));
        }
        if !(1..=(1 << 24)).contains(&self.max_candidates) {
            return Err(Error::config(
                "max_candidates",
                self.max_candidates,
                "must be in 1..=16777216",
            ));
        }
        if !(1..=1_000_000).contains(&self.candidate_divisor) {
            return Err(Error::config(
                "candidate_divisor",
                self.candidate_divisor,
                "must be in 1..=1000000",
            ));
        }
        if self.max_pending_events == 0 {
            return Err(Error::config(
                "max_pending_events",
                self.max_pending_events,
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The sketch level at which a key of `rule` becomes a candidate.
    pub(crate) fn candidate_level(&self, rule: &Rule) -> u64 {
        (rule.threshold / self.candidate_divisor).clamp(1, SKETCH_COUNT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_errors_name_the_field() {
        Config::default().validate().unwrap();
        let e = Config {
            max_candidates: 0,
            ..Config::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_candidates = 0"), "{e}");
        let e = Config::with_rules(vec![])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("rules = 0"), "{e}");
        let e = Config::with_rules(vec![Rule::default().with_threshold(0)])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("rules[0].threshold"), "{e}");
    }
}
