//! Detection rules: which keys, what window, what threshold, what cool-down.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Which keys a [`Rule`] applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPattern {
    /// Keys starting with these bytes (the empty prefix matches every key).
    Prefix(Vec<u8>),
    /// A glob over bytes: `*` matches any run of bytes, `?` any one byte,
    /// `\` escapes the next byte.
    Glob(Vec<u8>),
}

impl KeyPattern {
    /// Whether `key` matches.
    #[must_use]
    #[inline]
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            KeyPattern::Prefix(p) => p.is_empty() || key.starts_with(p),
            KeyPattern::Glob(g) => glob_match(g, key),
        }
    }
}

/// Iterative glob matching with single-star backtracking: O(len(p) * len(k))
/// in the worst case, no recursion, no allocation.
fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, k));
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                k += 1;
                continue;
            }
            Some(b'\\') if pattern.get(p + 1) == Some(&key[k]) => {
                p += 2;
                k += 1;
                continue;
            }
            Some(&c) if c != b'\\' && c == key[k] => {
                p += 1;
                k += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, sk)) => {
                p = sp + 1;
                k = sk + 1;
                star = Some((sp, sk + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One detection rule: a key matching `pattern` is hot while it is read more
/// than `threshold` times within `window`; it cools down once it has stayed
/// at or below the threshold for `cooldown`.
///
/// The window is a ring of `buckets` buckets of `window / buckets` each; the
/// count "in the window" at time `t` is the sum of the bucket holding `t`
/// and the `buckets - 1` before it.
///
/// ```
/// use std::time::Duration;
/// use hotkey::{KeyPattern, Rule};
///
/// let rule = Rule::default(); // > 1000 reads in 1 s, 10 buckets, 5 s cool-down
/// assert_eq!(rule.threshold, 1000);
/// let users = Rule::prefix("users", "user:").with_threshold(500).with_window(Duration::from_secs(2), 20);
/// assert!(users.pattern.matches(b"user:42"));
/// assert!(users.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A name for events, metrics and ZooKeeper data.
    pub name: String,
    /// Which keys the rule applies to.
    pub pattern: KeyPattern,
    /// Length of the sliding window.
    pub window: Duration,
    /// Number of buckets in the window; `window` must divide evenly.
    pub buckets: u32,
    /// A key is hot while its count in the window is greater than this.
    pub threshold: u64,
    /// How long a hot key must stay at or below the threshold to cool down.
    pub cooldown: Duration,
}

impl Default for Rule {
    /// The notes' rule: more than 1000 reads within 1 s, on every key.
    fn default() -> Self {
        Rule {
            name: "default".into(),
            pattern: KeyPattern::Prefix(Vec::new()),
            window: Duration::from_secs(1),
            buckets: 10,
            threshold: 1000,
            cooldown: Duration::from_secs(5),
        }
    }
}

/// Largest threshold a rule may have (exact windows count in 32-bit buckets).
pub const MAX_THRESHOLD: u64 = 1 << 32;

impl Rule {
    /// The default rule restricted to keys starting with `prefix`.
    #[must_use]
    pub fn prefix(name: impl Into<String>, prefix: impl AsRef<[u8]>) -> Self {
        Rule {
            name: name.into(),
            pattern: KeyPattern::Prefix(prefix.as_ref().to_vec()),
            ..Rule::default()
        }
    }

    /// The default rule restricted to keys matching `glob`.
    #[must_use]
    pub fn glob(name: impl Into<String>, glob: impl AsRef<[u8]>) -> Self {
        Rule {
            name: name.into(),
            pattern: KeyPattern::Glob(glob.as_ref().to_vec()),
            ..Rule::default()
        }
    }

    /// This rule with another threshold.
    #[must_use]
    pub fn with_threshold(mut self, threshold: u64) -> Self {
        self.threshold = threshold;
        self
    }

    /// This rule with another window of `buckets` buckets.
    #[must_use]
    pub fn with_window(mut self, window: Duration, buckets: u32) -> Self {
        self.window = window;
        self.buckets = buckets;
        self
    }

    /// This rule with another cool-down.
    #[must_use]
    pub fn with_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Length of one bucket in milliseconds.
    #[must_use]
    pub fn bucket_ms(&self) -> u64 {
        self.window.as_millis() as u64 / u64::from(self.buckets.max(1))
    }

    /// Checks that the rule can be run; `index` names it in errors.
    pub fn validate_at(&self, index: usize) -> Result<()> {
        let field = |f: &str| format!("rules[{index}].{f}");
        let window_ms = self.window.as_millis();
        if !self.window.subsec_nanos().is_multiple_of(1_000_000)
            || window_ms == 0
            || window_ms > u128::from(u32::MAX)
        {
            return Err(Error::config(
                field("window"),
                self.window,
                "must be a whole number of milliseconds in 1 ms ..= 49 days",
            ));
        }
        if self.buckets == 0 || self.buckets > 1000 {
            return Err(Error::config(
                field("buckets"),
                self.buckets,
                "must be in 1..=1000",
            ));
        }
        if !window_ms.is_multiple_of(u128::from(self.buckets)) {
            return Err(Error::config(
                field("buckets"),
                self.buckets,
                "must divide the window (in ms) evenly",
            ));
        }
        if self.threshold == 0 || self.threshold > MAX_THRESHOLD {
            return Err(Error::config(
                field("threshold"),
                self.threshold,
                "must be in 1..=2^32",
            ));
        }
        if self.cooldown.as_millis() > u128::from(u32::MAX) {
            return Err(Error::config(
                field("cooldown"),
                self.cooldown,
                "must be at most 49 days",
            ));
        }
        if self.name.is_empty() || self.name.len() > 128 {
            return Err(Error::config(
                field("name"),
                &self.name,
                "must be 1..=128 bytes",
            ));
        }
        Ok(())
    }

    /// [`validate_at`](Self::validate_at) for a rule on its own.
    pub fn validate(&self) -> Result<()> {
        self.validate_at(0)
    }
}

/// One rule as written in a rules file (JSON): exactly one of `prefix` and
/// `glob`; the other fields default to the notes' rule.
///
/// ```json
/// [{"name": "users", "prefix": "user:", "threshold": 500, "window_ms": 1000,
///   "buckets": 10, "cooldown_ms": 5000},
///  {"name": "rest", "glob": "*"}]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Option<String>,
    prefix: Option<String>,
    glob: Option<String>,
    threshold: Option<u64>,
    window_ms: Option<u64>,
    buckets: Option<u32>,
    cooldown_ms: Option<u64>,
}

/// Parses a rules file: a JSON array of rule objects (see the crate README),
/// validated. `what` names the source in errors.
pub fn parse_rules(json: &str, what: &str) -> Result<Vec<Rule>> {
    let specs: Vec<RuleSpec> = serde_json::from_str(json).map_err(|e| Error::Parse {
        what: what.into(),
        reason: e.to_string(),
    })?;
    let mut rules = Vec::with_capacity(specs.len());
    for (i, s) in specs.into_iter().enumerate() {
        let pattern = match (s.prefix, s.glob) {
            (Some(p), None) => KeyPattern::Prefix(p.into_bytes()),
            (None, Some(g)) => KeyPattern::Glob(g.into_bytes()),
            _ => {
                return Err(Error::Parse {
                    what: what.into(),
                    reason: format!("rule {i}: give exactly one of \"prefix\" and \"glob\""),
                });
            }
        };
        let d = Rule::default();
        let rule = Rule {
            name: s.name.unwrap_or_else(|| format!("rule{i}")),
            pattern,
            window: s.window_ms.map_or(d.window, Duration::from_millis),
            buckets: s.buckets.unwrap_or(d.buckets),
            threshold: s.threshold.unwrap_or(d.threshold),
            cooldown: s.cooldown_ms.map_or(d.cooldown, Duration::from_millis),
        };
        rule.validate_at(i)?;
        rules.push(rule);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"user:*:profile", b"user:42:profile"));
        assert!(!glob_match(b"user:*:profile", b"user:42:name"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"a\\*c", b"a*c"));
        assert!(!glob_match(b"a\\*c", b"abc"));
        assert!(glob_match(b"*a*b*c*", b"xxaxxbxxcxx"));
        assert!(!glob_match(b"*a*b*c*", b"xxaxxcxxbxx"));
    }

    #[test]
    fn rules_file_parses_and_validates() {
        let rules = parse_rules(r#"[{"name":"u","prefix":"user:","threshold":5,"window_ms":200,"buckets":4},{"glob":"*"}]"#, "t").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].bucket_ms(), 50);
        assert_eq!(rules[1].name, "rule1");
        assert_eq!(rules[1].threshold, 1000);
        let err = parse_rules(r#"[{"prefix":"a","buckets":3}]"#, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rules[0].buckets = 3"), "{err}");
        let err = parse_rules(r#"[{"prefix":"a","glob":"b"}]"#, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one"), "{err}");
        assert!(parse_rules(r#"[{"prefix":"a","bogus":1}]"#, "t").is_err());
        assert!(parse_rules("nope", "t").is_err());
    }

    #[test]
    fn invalid_rules_say_which_value() {
        let e = Rule::default()
            .with_threshold(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("threshold = 0"), "{e}");
        let e = Rule::default()
            .with_window(Duration::from_micros(1500), 1)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("window"), "{e}");
    }

    proptest! {
        #[test]
        fn star_prefix_glob_equals_prefix(prefix in prop::collection::vec(b'a'..b'e', 0..4), key in prop::collection::vec(b'a'..b'e', 0..8)) {
            let mut g = prefix.clone();
            g.push(b'*');
            prop_assert_eq!(glob_match(&g, &key), key.starts_with(&prefix));
        }
    }
}
