//! Size-checked reads.
//!
//! Strings are read in up to two steps:
//!
//! 1. **probe**: plain commands, bounded. `GETRANGE key 0 probe` never
//!    returns more than `probe + 1` bytes, whatever the value's size, and
//!    costs Redis about what a `GET` does. A non-empty reply of at most
//!    `probe` bytes is the whole value. What else the probe can settle
//!    depends on the [`ProbeMode`]:
//!    * `HitFirst` (the default) sends `GETRANGE` alone: one command, one
//!      round trip for a hit. An empty reply is ambiguous (a missing key
//!      and an empty string both give one), so it goes to the script,
//!      which tells them apart atomically; a miss costs two round trips.
//!      It is never resolved with a separate `EXISTS`: the key could be
//!      written between the two commands, and the pair would then report
//!      an empty value that never existed.
//!    * `Pipelined` sends `GETRANGE` and `EXISTS key` in one pipelined
//!      round trip: an empty reply with `EXISTS = 0` is a miss at the
//!      instant of the `EXISTS`, so misses cost one round trip, and every
//!      read a second command.
//!
//!    Each answer is true at some instant of the call, so reads are
//!    linearizable in both modes.
//! 2. **script**, for everything else (a longer value, an empty reply the
//!    probe cannot settle, a key of another type) or when the probe is off
//!    (`probe = 0`): a Lua script that measures the value (`STRLEN`; for
//!    `0`, `EXISTS` tells a missing key from an empty string) and returns
//!    it only if it is small enough. A script runs atomically, so no writer
//!    can grow the value between the measure and the read: a value above
//!    the limit is never put on the wire. It costs Redis ~5 µs of CPU
//!    against ~0.2 µs for the probe's commands, hence the probe first.
//!
//! So a read transfers at most `probe + 1` bytes of a value above the
//! limit (none with `probe = 0`), and a value at most the limit in full.

use std::sync::LazyLock;

use bytes::Bytes;
use redis::aio::ConnectionLike;
use redis::{RedisError, Script, Value};

use crate::config::ProbeMode;
use crate::outcome::{ValueKind, ValueSize};

/// `{0}` missing, `{1, value}` found, `{2, strlen}` too large,
/// `{3, type}` not a string. `STRLEN` is O(1) and answers 0 for a missing
/// key, so the common path is `STRLEN` + `GET`.
const STRING_READ: &str = r"
local n = redis.pcall('STRLEN', KEYS[1])
if type(n) == 'table' then
  return {3, redis.call('TYPE', KEYS[1])['ok']}
end
if n == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
  return {1, ''}
end
if n > tonumber(ARGV[1]) then return {2, n} end
return {1, redis.call('GET', KEYS[1])}
";

/// `{0}` missing, `{1, fields}` found, `{2, bytes}` too many bytes,
/// `{4, count}` too many fields, `{3, type}` not a hash. `HLEN` is O(1);
/// `MEMORY USAGE` samples large hashes (an estimate), so the element cap
/// is the exact guard and the byte cap the estimated one.
const HASH_READ: &str = r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {0} end
if t ~= 'hash' then return {3, t} end
local n = redis.call('HLEN', KEYS[1])
if n > tonumber(ARGV[2]) then return {4, n} end
local m = redis.call('MEMORY', 'USAGE', KEYS[1])
if m and m > tonumber(ARGV[1]) then return {2, m} end
return {1, redis.call('HGETALL', KEYS[1])}
";

/// `{type}` for a missing key, `{type, elements or -1, bytes}` otherwise.
const SIZE: &str = r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {t} end
local n = -1
if t == 'string' then
  return {t, -1, redis.call('STRLEN', KEYS[1])}
elseif t == 'hash' then n = redis.call('HLEN', KEYS[1])
elseif t == 'list' then n = redis.call('LLEN', KEYS[1])
elseif t == 'set' then n = redis.call('SCARD', KEYS[1])
elseif t == 'zset' then n = redis.call('ZCARD', KEYS[1])
elseif t == 'stream' then n = redis.call('XLEN', KEYS[1])
end
return {t, n, redis.call('MEMORY', 'USAGE', KEYS[1]) or -1}
";

static STRING_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(STRING_READ));
static HASH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(HASH_READ));
static SIZE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SIZE));

/// The string-read script.
pub(crate) fn string_script() -> &'static Script {
    &STRING_SCRIPT
}

/// A size-checked read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection or the server failed.
    Redis(RedisError),
    /// The reply is not what the script returns.
    Protocol(String),
}

impl From<RedisError> for ReadError {
    fn from(e: RedisError) -> Self {
        ReadError::Redis(e)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Guarded<V> {
    Missing,
    Value(V),
    /// Bytes (exact for strings, `MEMORY USAGE` for collections).
    TooLarge(u64),
    /// Element count above the cap.
    TooManyElements(u64),
    WrongType(String),
}

pub(crate) async fn read_string<C: ConnectionLike>(
    conn: &mut C,
    key: &[u8],
    max_bytes: u64,
    probe: u64,
    mode: ProbeMode,
) -> Result<Guarded<Bytes>, ReadError> {
    if probe > 0 {
        let mut getrange = redis::cmd("GETRANGE");
        getrange.arg(key).arg(0).arg(probe);
        let answer = match mode {
            ProbeMode::HitFirst => getrange
                .query_async::<Value>(conn)
                .await
                .map(|range| (range, None)),
            ProbeMode::Pipelined => {
                let mut pipe = redis::pipe();
                pipe.add_command(getrange).cmd("EXISTS").arg(key);
                pipe.query_async::<(Value, i64)>(conn)
                    .await
                    .map(|(range, exists)| (range, Some(exists)))
            }
        };
        match answer {
            Ok((Value::BulkString(b), exists)) => {
                if let Some(settled) = settle_probe(b, exists, probe) {
                    return Ok(settled);
                }
                // Longer than the probe, or an empty reply the probe
                // cannot settle: the script decides atomically.
            }
            Ok((other, _)) => {
                return Err(ReadError::Protocol(format!(
                    "GETRANGE returned {}",
                    describe(&other)
                )));
            }
            // The connection failed: so would the script.
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                return Err(e.into());
            }
            // The server refused a command (a key of another type, say):
            // the script gives the authoritative answer.
            Err(_) => {}
        }
    }
    let reply: Value = STRING_SCRIPT
        .key(key)
        .arg(max_bytes)
        .invoke_async(conn)
        .await?;
    parse_guarded(reply, |v| match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s)),
        _ => None,
    })
}

pub(crate) async fn read_hash<C: ConnectionLike>(
    conn: &mut C,
    key: &[u8],
    max_bytes: u64,
    max_elements: u64,
) -> Result<Guarded<Vec<(Bytes, Bytes)>>, ReadError> {
    let reply: Value = HASH_SCRIPT
        .key(key)
        .arg(max_bytes)
        .arg(max_elements)
        .invoke_async(conn)
        .await?;
    parse_guarded(reply, parse_pairs)
}

pub(crate) async fn size<C: ConnectionLike>(
    conn: &mut C,
    key: &[u8],
) -> Result<Option<ValueSize>, ReadError> {
    let reply: Value = SIZE_SCRIPT.key(key).invoke_async(conn).await?;
    let bad =
        |reply: &Value| ReadError::Protocol(format!("size script returned {}", describe(reply)));
    let Value::Array(items) = &reply else {
        return Err(bad(&reply));
    };
    let kind = items.first().and_then(text).ok_or_else(|| bad(&reply))?;
    if kind == "none" {
        return Ok(None);
    }
    let elements = items.get(1).and_then(int).ok_or_else(|| bad(&reply))?;
    let bytes = items.get(2).and_then(int).ok_or_else(|| bad(&reply))?;
    Ok(Some(ValueSize {
        kind: ValueKind::from_type_name(&kind),
        bytes: u64::try_from(bytes).unwrap_or(0),
        elements: u64::try_from(elements).ok(),
    }))
}

/// What a probe's reply settles: `range` is `GETRANGE key 0 probe`,
/// `exists` the pipelined `EXISTS key` (`None` when it was not sent).
/// `None`: only the script can tell.
fn settle_probe(range: Vec<u8>, exists: Option<i64>, probe: u64) -> Option<Guarded<Bytes>> {
    if range.is_empty() {
        // A missing key, or an empty string: only `EXISTS` in the same
        // round trip (or the script) may tell which.
        return (exists == Some(0)).then_some(Guarded::Missing);
    }
    (range.len() as u64 <= probe).then(|| Guarded::Value(Bytes::from(range)))
}

fn parse_guarded<V>(
    reply: Value,
    value: impl FnOnce(Value) -> Option<V>,
) -> Result<Guarded<V>, ReadError> {
    let detail = describe(&reply);
    let bad = || ReadError::Protocol(format!("guard script returned {detail}"));
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let mut items = items.into_iter();
    let code = items.next().as_ref().and_then(int).ok_or_else(bad)?;
    let arg = items.next();
    match (code, arg) {
        (0, None) => Ok(Guarded::Missing),
        (1, Some(v)) => value(v).map(Guarded::Value).ok_or_else(bad),
        (2, Some(v)) => int(&v)
            .and_then(|n| u64::try_from(n).ok())
            .map(Guarded::TooLarge)
            .ok_or_else(bad),
        (3, Some(v)) => text(&v).map(Guarded::WrongType).ok_or_else(bad),
        (4, Some(v)) => int(&v)
            .and_then(|n| u64::try_from(n).ok())
            .map(Guarded::TooManyElements)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn parse_pairs(v: Value) -> Option<Vec<(Bytes, Bytes)>> {
    let bytes = |v: Value| match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s)),
        _ => None,
    };
    match v {
        Value::Array(flat) => {
            if flat.len() % 2 != 0 {
                return None;
            }
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                out.push((bytes(f)?, bytes(v)?));
            }
            Some(out)
        }
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(f, v)| Some((bytes(f)?, bytes(v)?)))
            .collect(),
        _ => None,
    }
}

/// The shape of a reply, without its (possibly huge) content.
fn describe(v: &Value) -> String {
    match v {
        Value::Nil => "nil".to_owned(),
        Value::Int(n) => format!("integer {n}"),
        Value::BulkString(b) => format!("{}-byte string", b.len()),
        Value::SimpleString(s) => format!("{}-byte status", s.len()),
        Value::Okay => "OK".to_owned(),
        Value::Array(items) => format!(
            "array [{}]",
            items
                .iter()
                .take(4)
                .map(describe)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{:.40}", format!("{other:?}")),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_every_script_answer() {
        let s = |v| {
            parse_guarded(v, |v| {
                if let Value::BulkString(b) = v {
                    Some(b)
                } else {
                    None
                }
            })
        };
        assert_eq!(
            s(Value::Array(vec![Value::Int(0)])).unwrap(),
            Guarded::Missing
        );
        assert_eq!(
            s(Value::Array(vec![Value::Int(1), bulk("v")])).unwrap(),
            Guarded::Value(b"v".to_vec())
        );
        assert_eq!(
            s(Value::Array(vec![Value::Int(2), Value::Int(99)])).unwrap(),
            Guarded::TooLarge(99)
        );
        assert_eq!(
            s(Value::Array(vec![Value::Int(3), bulk("hash")])).unwrap(),
            Guarded::WrongType("hash".to_owned())
        );
        assert_eq!(
            s(Value::Array(vec![Value::Int(4), Value::Int(5)])).unwrap(),
            Guarded::TooManyElements(5)
        );
    }

    #[test]
    fn a_probe_settles_only_what_it_knows() {
        let v = |s: &str| s.as_bytes().to_vec();
        for exists in [None, Some(1)] {
            assert_eq!(
                settle_probe(v("abc"), exists, 3),
                Some(Guarded::Value(Bytes::from("abc")))
            );
            // Longer than the probe: the value may be far longer.
            assert_eq!(settle_probe(v("abcd"), exists, 3), None);
        }
        // HitFirst: an empty reply is a missing key or an empty string.
        assert_eq!(settle_probe(Vec::new(), None, 3), None);
        // Pipelined: EXISTS in the same round trip tells them apart; an
        // empty string still goes to the script.
        assert_eq!(settle_probe(Vec::new(), Some(0), 3), Some(Guarded::Missing));
        assert_eq!(settle_probe(Vec::new(), Some(1), 3), None);
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let s = |v| parse_guarded(v, |_| Some(()));
        for v in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(9)]),
            Value::Array(vec![Value::Int(2), bulk("x")]),
            Value::Array(vec![Value::Int(2), Value::Int(-1)]),
            Value::Array(vec![bulk("1")]),
        ] {
            assert!(matches!(s(v), Err(ReadError::Protocol(_))));
        }
    }

    #[test]
    fn pairs_from_resp2_and_resp3() {
        let flat = Value::Array(vec![bulk("f1"), bulk("v1"), bulk("f2"), bulk("v2")]);
        let pairs = parse_pairs(flat).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1], (Bytes::from("f2"), Bytes::from("v2")));
        let map = Value::Map(vec![(bulk("f"), bulk("v"))]);
        assert_eq!(parse_pairs(map).unwrap().len(), 1);
        assert!(parse_pairs(Value::Array(vec![bulk("odd")])).is_none());
    }
}
