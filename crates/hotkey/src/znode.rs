//! Keys as znode names, and the names of the layout.
//!
//! Any byte string is a valid cache key, but a znode name must be non-empty
//! UTF-8 without `/`, must not be `.` or `..`, and ZooKeeper rejects control
//! and some other code points. So a key is written as `k-` followed by its
//! bytes, where bytes outside `[A-Za-z0-9_~:@=+,-]` are `%XX` (upper-case
//! hex). The prefix makes the empty key a valid name and keeps key znodes
//! apart from any other child; the encoding is a bijection, so decoding is
//! exact and rejects names this crate did not write.

use crate::error::{Error, Result};

const PREFIX: &str = "k-";

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b':' | b'@' | b'=' | b'+' | b',' | b'-')
}

/// The znode name of `key`.
#[must_use]
pub fn encode_key(key: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(PREFIX.len() + key.len() * 3);
    s.push_str(PREFIX);
    for &b in key {
        if is_plain(b) {
            s.push(b as char);
        } else {
            s.push('%');
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
    }
    s
}

/// The key a znode name written by [`encode_key`] stands for.
pub fn decode_key(name: &str) -> Result<Vec<u8>> {
    let bad = |reason| Error::InvalidZnodeName {
        name: name.to_owned(),
        reason,
    };
    let body = name
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("does not start with \"k-\""))?
        .as_bytes();
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'%' {
            let hex = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            let (Some(hi), Some(lo)) = (
                body.get(i + 1).copied().and_then(hex),
                body.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(bad("'%' must be followed by two upper-case hex digits"));
            };
            let v = (hi << 4) | lo;
            if is_plain(v) {
                return Err(bad("escapes a byte that is written plain"));
            }
            out.push(v);
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(bad("contains a byte that must be escaped"));
        }
    }
    Ok(out)
}

/// Checks that `name` can be one path segment (an app name).
#[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
pub(crate) fn validate_segment(field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(Error::config(
            field,
            name,
            "must be 1..=255 of [A-Za-z0-9_.-], not \".\" or \"..\"",
        ));
    }
    Ok(())
}

/// Checks that `root` is an absolute znode path of valid segments.
#[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
pub(crate) fn validate_root(field: &str, root: &str) -> Result<()> {
    let Some(rest) = root.strip_prefix('/') else {
        return Err(Error::config(field, root, "must start with '/'"));
    };
    if rest.is_empty() || rest.ends_with('/') {
        return Err(Error::config(
            field,
            root,
            "must name a znode below '/' without a trailing '/'",
        ));
    }
    for seg in rest.split('/') {
        validate_segment(field, seg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn readable_keys_stay_readable() {
        assert_eq!(encode_key(b"user:42"), "k-user:42");
        assert_eq!(encode_key(b""), "k-");
        assert_eq!(encode_key(b"a/b.c d"), "k-a%2Fb%2Ec%20d");
        assert_eq!(encode_key(&[0, 0xff]), "k-%00%FF");
    }

    #[test]
    fn foreign_names_are_rejected() {
        for name in [
            "lock", "k-%", "k-%4", "k-%zz", "k-%41", "k-a b", "k-\u{e9}", "k-%2f",
        ] {
            assert!(decode_key(name).is_err(), "{name}");
        }
        assert!(decode_key("k-%2F").is_ok());
    }

    #[test]
    fn roots_and_segments() {
        assert!(validate_root("root", "/hotkeys").is_ok());
        assert!(validate_root("root", "/a/b-c/d.e").is_ok());
        for bad in ["", "/", "hot", "/a/", "/a//b", "/a/..", "/a b"] {
            assert!(validate_root("root", bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trips_any_bytes(key in prop::collection::vec(any::<u8>(), 0..64)) {
            let name = encode_key(&key);
            prop_assert!(!name.contains('/') && name != "." && name != "..");
            prop_assert!(name.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert_eq!(decode_key(&name).unwrap(), key);
        }
    }
}
