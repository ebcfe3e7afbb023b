//! What a read returns: a value, nothing, or a blank answer and why.

use std::fmt;

use bytes::Bytes;

/// The outcome of a protected read.
///
/// Protection decisions are outcomes, not errors: a caller matches on
/// `Blank` and renders "try again later" instead of falling through to the
/// database.
#[must_use = "a lookup may be a blank answer that the caller must render"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V = Bytes> {
    /// The key holds this value.
    Hit(V),
    /// The key does not exist (or the loader found nothing).
    Miss,
    /// No answer now: a protection decided not to ask Redis, or Redis did
    /// not answer. The caller should show a blank and let the user refresh.
    Blank(BlankReason),
    /// The value is above `BigValueConfig::max_bytes` (or, for collections,
    /// `max_elements`); it was not transferred.
    TooLarge {
        /// The value's size: bytes for strings, the `MEMORY USAGE`
        /// estimate for collections, or the element count when that is
        /// what exceeded `max_elements`.
        size: u64,
        /// The limit it exceeded.
        limit: u64,
    },
}

impl<V> Lookup<V> {
    /// The value of a hit.
    pub fn hit(self) -> Option<V> {
        match self {
            Lookup::Hit(v) => Some(v),
            _ => None,
        }
    }

    /// Whether this is a blank answer.
    pub fn is_blank(&self) -> bool {
        matches!(self, Lookup::Blank(_))
    }

    /// A short lower-case name of the variant, used as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Lookup::Hit(_) => "hit",
            Lookup::Miss => "miss",
            Lookup::Blank(_) => "blank",
            Lookup::TooLarge { .. } => "too_large",
        }
    }
}

/// Why a read returned [`Lookup::Blank`] (or why a write was
/// [refused](crate::Error::Refused)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlankReason {
    /// The circuit breaker is open, or half-open with every probe permit
    /// taken. Redis was not asked.
    CircuitOpen,
    /// The per-instance read limit to Redis is exhausted. Redis was not
    /// asked.
    RateLimited,
    /// The per-key limit for this hot key is exhausted. Redis was not asked.
    KeyRateLimited,
    /// Redis did not answer within `Config::call_timeout` (or the loader
    /// within `LoaderConfig::timeout`).
    Timeout,
    /// Redis answered with an error or the connection failed; the error is
    /// logged and counted by the circuit breaker.
    Unavailable,
    /// `LoaderConfig::max_concurrent` loads are already running: the
    /// database is shielded from this miss.
    LoaderBusy,
}

impl BlankReason {
    /// Every reason, in declaration order (metrics are registered for each).
    pub const ALL: [BlankReason; 6] = [
        BlankReason::CircuitOpen,
        BlankReason::RateLimited,
        BlankReason::KeyRateLimited,
        BlankReason::Timeout,
        BlankReason::Unavailable,
        BlankReason::LoaderBusy,
    ];

    /// Short snake-case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            BlankReason::CircuitOpen => "circuit_open",
            BlankReason::RateLimited => "rate_limited",
            BlankReason::KeyRateLimited => "key_rate_limited",
            BlankReason::Timeout => "timeout",
            BlankReason::Unavailable => "unavailable",
            BlankReason::LoaderBusy => "loader_busy",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for BlankReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlankReason::CircuitOpen => "circuit breaker open",
            BlankReason::RateLimited => "instance read limit reached",
            BlankReason::KeyRateLimited => "hot-key limit reached",
            BlankReason::Timeout => "timed out",
            BlankReason::Unavailable => "redis unavailable",
            BlankReason::LoaderBusy => "too many loads in flight",
        })
    }
}

/// The Redis type of a key, as `TYPE` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueKind {
    /// A string.
    String,
    /// A hash.
    Hash,
    /// A list.
    List,
    /// A set.
    Set,
    /// A sorted set.
    ZSet,
    /// A stream.
    Stream,
    /// Anything else (a module type), with the name Redis gave.
    Other(String),
}

impl ValueKind {
    pub(crate) fn from_type_name(name: &str) -> ValueKind {
        match name {
            "string" => ValueKind::String,
            "hash" => ValueKind::Hash,
            "list" => ValueKind::List,
            "set" => ValueKind::Set,
            "zset" => ValueKind::ZSet,
            "stream" => ValueKind::Stream,
            other => ValueKind::Other(other.to_owned()),
        }
    }
}

/// The size of a value, measured on the server without transferring it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSize {
    /// The value's type.
    pub kind: ValueKind,
    /// Bytes: exact (`STRLEN`) for strings, the server's `MEMORY USAGE`
    /// estimate (sampled for large collections) otherwise.
    pub bytes: u64,
    /// Element count (`HLEN`, `LLEN`, `SCARD`, `ZCARD`, `XLEN`); `None` for
    /// strings and module types.
    pub elements: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in BlankReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(!r.as_str().is_empty());
        }
    }

    #[test]
    fn lookup_helpers() {
        let hit: Lookup = Lookup::Hit(Bytes::from_static(b"v"));
        assert_eq!(hit.kind(), "hit");
        assert_eq!(hit.hit(), Some(Bytes::from_static(b"v")));
        assert!(Lookup::<Bytes>::Blank(BlankReason::Timeout).is_blank());
        assert_eq!(Lookup::<Bytes>::Miss.hit(), None);
    }
}
