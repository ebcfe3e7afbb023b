//! The crate's one error type.
//!
//! Protection decisions on reads (circuit open, rate limited, timed out,
//! Redis unavailable, value too large) are *not* errors: they are
//! [`Lookup`](crate::Lookup) outcomes, so that a caller can always render a
//! blank answer. Errors are for what the caller must fix or must know about
//! because nothing was done: bad input, bad configuration, a write that was
//! refused or failed, a key of the wrong type, a failing loader.

use std::sync::Arc;
use std::time::Duration;

use crate::outcome::BlankReason;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {field} = {value}: {reason}")]
    Config {
        /// The field, as a path (`breaker.min_calls`).
        field: &'static str,
        /// The value that was given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key is empty or longer than `Config::max_key_bytes`.
    #[error("invalid key {key}: {reason} (length {len} bytes)")]
    InvalidKey {
        /// The key, printed lossily and shortened.
        key: String,
        /// Its length in bytes.
        len: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A write was refused because the value is above
    /// `BigValueConfig::max_bytes`; nothing was sent to Redis.
    #[error("value for key {key} is {size} bytes, above the limit of {limit} bytes; not written")]
    ValueTooLarge {
        /// The key, printed lossily and shortened.
        key: String,
        /// The size of the refused value.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A time-to-live is zero or below Redis' millisecond resolution.
    #[error("invalid ttl {ttl:?} for key {key}: must be at least 1 ms")]
    InvalidTtl {
        /// The key, printed lossily and shortened.
        key: String,
        /// The rejected time-to-live.
        ttl: Duration,
    },
    /// A write or delete was not sent because a protection refused it (the
    /// circuit is open, or half-open with every probe permit taken).
    #[error("{op} on key {key} not sent: {reason}")]
    Refused {
        /// The operation (`SET`, `DEL`).
        op: &'static str,
        /// The key, printed lossily and shortened.
        key: String,
        /// Which protection refused it.
        reason: BlankReason,
    },
    /// A write or delete did not answer within `Config::call_timeout`. It
    /// may or may not have been applied.
    #[error("{op} on key {key} timed out after {after:?}; it may or may not have been applied")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The key, printed lossily and shortened.
        key: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// Redis answered a write or delete with an error, or the connection
    /// failed under it.
    #[error("{op} on key {key} failed: {source}")]
    Redis {
        /// The operation.
        op: &'static str,
        /// The key, printed lossily and shortened.
        key: String,
        /// The error from the `redis` crate.
        #[source]
        source: redis::RedisError,
    },
    /// The key holds a different Redis type than the operation reads.
    #[error("key {key} holds a {found}, not a {expected}")]
    WrongType {
        /// The key, printed lossily and shortened.
        key: String,
        /// The type Redis reported (`hash`, `list`, ...).
        found: String,
        /// The type the operation reads.
        expected: &'static str,
    },
    /// Redis answered with something this crate's scripts never return.
    #[error("unexpected reply to {op} on key {key}: {detail}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// The key, printed lossily and shortened.
        key: String,
        /// What was received.
        detail: String,
    },
    /// The loader given to `get_or_load` failed. Every caller that waited
    /// for the same load receives this same error.
    #[error("loader for key {key} failed: {source}")]
    Loader {
        /// The key, printed lossily and shortened.
        key: String,
        /// The loader's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The first connection to Redis could not be made.
    #[error("cannot connect to redis at {endpoint}: {source}")]
    Connect {
        /// The endpoint(s) from the configuration.
        endpoint: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// The first connection to Redis did not answer within
    /// `Config::connect_timeout`.
    #[error("cannot connect to redis at {endpoint}: no answer within {after:?}")]
    ConnectTimeout {
        /// The endpoint(s) from the configuration.
        endpoint: String,
        /// The timeout that expired.
        after: Duration,
    },
}

/// `Result` with this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest key prefix printed in errors and logs.
const KEY_PRINT_MAX: usize = 64;

/// Prints a binary key for humans: lossy UTF-8, shortened, quoted.
pub(crate) fn show_key(key: &[u8]) -> String {
    let cut = key.len().min(KEY_PRINT_MAX);
    let mut s = format!("{:?}", String::from_utf8_lossy(&key[..cut]));
    if key.len() > cut {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_print_shortened_and_lossy() {
        assert_eq!(show_key(b"user:1"), "\"user:1\"");
        let long = vec![b'a'; 100];
        let shown = show_key(&long);
        assert!(shown.ends_with("\"..."), "{shown}");
        assert_eq!(shown.len(), 64 + 2 + 3);
        assert_eq!(show_key(&[0xff, b'x']), "\"\u{fffd}x\"");
    }

    #[test]
    fn messages_name_the_value() {
        let e = Error::ValueTooLarge {
            key: show_key(b"k"),
            size: 10,
            limit: 5,
        };
        assert_eq!(
            e.to_string(),
            "value for key \"k\" is 10 bytes, above the limit of 5 bytes; not written"
        );
    }
}
