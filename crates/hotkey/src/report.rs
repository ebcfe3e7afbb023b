//! The wire format of aggregated read counts (one Kafka message).
//!
//! ```text
//! "HK" 0x01                       magic and version
//! u8 len, bytes                   instance id (UTF-8, <= 255 bytes)
//! u64 big-endian                  end of the reporting interval, ms since the epoch
//! varint                          number of entries
//! entries: varint len, key bytes, varint count
//! ```
//!
//! Varints are LEB128 (7 bits a byte, low first, at most 10 bytes). Decoding
//! checks every length against the remaining bytes and returns
//! [`Error::Parse`] on anything malformed; it never panics and never
//! allocates more than the message's own size.

use crate::error::{Error, Result};

const MAGIC: &[u8; 3] = b"HK\x01";

/// One message's worth of aggregated counts from one instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Which instance counted these reads (encoded as its first 255 bytes at most,
    /// cut on a character boundary).
    pub instance: String,
    /// End of the interval the counts cover (ms since the epoch, instance clock).
    pub interval_end_ms: u64,
    /// `(key, reads)` pairs.
    pub entries: Vec<(Vec<u8>, u64)>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes `entries` of these sizes take at most in an encoded report.
pub(crate) fn entry_size(key_len: usize) -> usize {
    key_len + 10 + 10
}

/// Encoded size of an empty report for `instance`.
pub(crate) fn header_size(instance: &str) -> usize {
    MAGIC.len() + 1 + instance.len() + 8 + 10
}

impl Report {
    /// Encodes the report.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let size = header_size(&self.instance)
            + self
                .entries
                .iter()
                .map(|(k, _)| entry_size(k.len()))
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(MAGIC);
        // At most 255 bytes, cut on a character boundary so that it stays UTF-8
        // (a cut inside a character would make the whole report undecodable).
        let mut cut = self.instance.len().min(255);
        while !self.instance.is_char_boundary(cut) {
            cut -= 1;
        }
        let id = &self.instance.as_bytes()[..cut];
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.interval_end_ms.to_be_bytes());
        put_varint(&mut out, self.entries.len() as u64);
        for (k, n) in &self.entries {
            put_varint(&mut out, k.len() as u64);
            out.extend_from_slice(k);
            put_varint(&mut out, *n);
        }
        out
    }

    /// Decodes a report; `what` names the message in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Report> {
        let mut r = Reader {
            bytes,
            pos: 0,
            what,
        };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(r.err("bad magic or version (want \"HK\" 1)".into()));
        }
        let id_len = usize::from(r.take(1)?[0]);
        let instance = std::str::from_utf8(r.take(id_len)?)
            .map_err(|_| r.err("instance id is not UTF-8".into()))?
            .to_owned();
        let interval_end_ms = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let n = r.varint()?;
        // Each entry takes at least two bytes: no huge pre-allocation.
        if n > (bytes.len() - r.pos) as u64 / 2 {
            return Err(r.err(format!(
                "{n} entries cannot fit in {} bytes",
                bytes.len() - r.pos
            )));
        }
        let mut entries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let len = r.varint()?;
            let len = usize::try_from(len).map_err(|_| r.err(format!("key length {len}")))?;
            let key = r.take(len)?.to_vec();
            let count = r.varint()?;
            entries.push((key, count));
        }
        if r.pos != bytes.len() {
            return Err(r.err(format!("{} trailing bytes", bytes.len() - r.pos)));
        }
        Ok(Report {
            instance,
            interval_end_ms,
            entries,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: String) -> Error {
        Error::Parse {
            what: format!("report {} at byte {}", self.what, self.pos),
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() - self.pos < n {
            return Err(self.err(format!(
                "needs {n} more bytes, has {}",
                self.bytes.len() - self.pos
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.take(1)?[0];
            if i == 9 && b > 1 {
                return Err(self.err("varint overflows 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes".into()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let r = Report {
            instance: "web-1".into(),
            interval_end_ms: 1_700_000_000_123,
            entries: vec![
                (b"a".to_vec(), 1),
                (vec![], u64::MAX),
                (vec![0xff; 300], 1 << 40),
            ],
        };
        let bytes = r.encode();
        assert_eq!(Report::decode(&bytes, "t").unwrap(), r);
        for cut in 0..bytes.len() {
            assert!(
                Report::decode(&bytes[..cut], "t").is_err(),
                "truncated at {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(
            Report::decode(&extra, "t")
                .unwrap_err()
                .to_string()
                .contains("trailing")
        );
        assert!(
            Report::decode(b"XX\x01", "t")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
    }

    #[test]
    fn a_long_instance_id_is_cut_on_a_character_boundary() {
        // 254 ASCII bytes then a 2-byte character: byte 255 falls inside it.
        let r = Report {
            instance: format!("{}é and more", "a".repeat(254)),
            interval_end_ms: 1,
            entries: vec![(b"k".to_vec(), 1)],
        };
        let back = Report::decode(&r.encode(), "t").unwrap();
        assert_eq!(back.instance, "a".repeat(254));
        assert_eq!(back.entries, r.entries);
    }

    proptest! {
        #[test]
        fn round_trips(instance in "[a-z0-9-]{0,20}", end in any::<u64>(),
                       entries in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..40), any::<u64>()), 0..20)) {
            let r = Report { instance, interval_end_ms: end, entries };
            prop_assert_eq!(Report::decode(&r.encode(), "p").unwrap(), r);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Report::decode(&bytes, "g");
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = Report::decode(&with_magic, "g");
        }
    }
}
