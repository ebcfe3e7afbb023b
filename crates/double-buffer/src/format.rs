//! The on-disk format: pure encoding and decoding, no I/O.
//!
//! A segment file is a header followed by flush groups:
//!
//! ```text
//! segment  = header(48) group*  zero-fill*
//! header   = magic "SPILLSEG" | version u16 | 0u16 | crc u32 | segment id u64
//!            | first group seq u64 | next record id u64 | salt u64
//! group    = magic "GRP1" | crc u32 | seq u64 | body length u32 | record count u32
//!            record*  zero padding to a multiple of 8
//! record   = length u32 | crc u32 | id u64 | slice u16 | flags u16 | payload
//!
//! checkpoint (its own file, replaced by rename)
//!          = magic "SPILLCKP" | version u16 | 0u16 | crc u32 | segment id u64
//!            | group offset u64 | record offset u64 | highest replayed id u64
//! ```
//!
//! All integers are little-endian. Header CRCs are CRC32C over their other fields. A group's
//! CRC starts from the segment's random salt, so that bytes inside some record's payload pass
//! for a group header of this segment only by a 2^-32 chance (the recovery scan searches for
//! later groups to tell a torn tail from corruption). A record's CRC is CRC32C over its payload
//! followed by its length, id, slice and flags, so that the payload's CRC can be computed before
//! the record id is known, outside the slice lock.
//!
//! Records are never empty, so an all-zero group header — what preallocated space reads as —
//! marks the clean end of the data.

/// Bytes in a segment header.
pub const SEGMENT_HEADER_LEN: usize = 48;
/// Bytes in a flush-group header.
pub const GROUP_HEADER_LEN: usize = 24;
/// Bytes in a record header (before the payload).
pub const RECORD_HEADER_LEN: usize = 20;
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SPILLSEG";
pub(crate) const GROUP_MAGIC: [u8; 4] = *b"GRP1";
pub(crate) const CHECKPOINT_MAGIC: [u8; 8] = *b"SPILLCKP";
pub(crate) const CHECKPOINT_LEN: usize = 48;

/// Groups start at multiples of this, so that a search for a later group header need only look
/// at aligned offsets.
pub(crate) const GROUP_ALIGN: u64 = 8;

pub(crate) fn align_group(offset: u64) -> u64 {
    offset.div_ceil(GROUP_ALIGN) * GROUP_ALIGN
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fixed header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) segment: u64,
    pub(crate) first_group: u64,
    pub(crate) next_id: u64,
    pub(crate) salt: u64,
}

/// Why a header or record does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Every byte is zero: unwritten or preallocated space.
    Zero,
    /// A known structure with a wrong field; the string says which.
    Invalid(String),
    /// A segment of a newer format.
    Version(u16),
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_group.to_le_bytes());
        b[32..40].copy_from_slice(&self.next_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.salt.to_le_bytes());
        let crc = header_crc(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8; SEGMENT_HEADER_LEN]) -> Result<Self, Bad> {
        if b.iter().all(|&x| x == 0) {
            return Err(Bad::Zero);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(Bad::Invalid("segment header has a wrong magic".into()));
        }
        // The checksum first: a header torn right after its magic reads as version 0, and only
        // a header that verifies says truly which version wrote it.
        let stored = u32_at(b, 12);
        if stored != header_crc(b) {
            return Err(Bad::Invalid(format!(
                "segment header checksum {stored:#010x} does not match"
            )));
        }
        let version = u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(Bad::Version(version));
        }
        Ok(SegmentHeader {
            segment: u64_at(b, 16),
            first_group: u64_at(b, 24),
            next_id: u64_at(b, 32),
            salt: u64_at(b, 40),
        })
    }
}

impl SegmentHeader {
    /// The fields of a header that failed its checks, read as they stand. Its salt may still be
    /// intact, and a valid group under it proves that the header had been synced (see
    /// `recovery.rs`).
    pub(crate) fn salvage(b: &[u8; SEGMENT_HEADER_LEN]) -> Self {
        SegmentHeader {
            segment: u64_at(b, 16),
            first_group: u64_at(b, 24),
            next_id: u64_at(b, 32),
            salt: u64_at(b, 40),
        }
    }
}

/// CRC of a 48-byte header (segment or checkpoint) over everything but its CRC field (12..16).
fn header_crc(b: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[0..12]), &b[16..])
}

/// The header in front of each flush group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupHeader {
    pub(crate) seq: u64,
    pub(crate) body_len: u32,
    pub(crate) records: u32,
}

impl GroupHeader {
    pub(crate) fn encode(&self, salt: u64) -> [u8; GROUP_HEADER_LEN] {
        let mut b = [0u8; GROUP_HEADER_LEN];
        b[0..4].copy_from_slice(&GROUP_MAGIC);
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.body_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.records.to_le_bytes());
        let crc = group_crc(&b, salt);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8], salt: u64) -> Result<Self, Bad> {
        let b = &b[..GROUP_HEADER_LEN];
        if b.iter().all(|&x| x == 0) {
            return Err(Bad::Zero);
        }
        if b[0..4] != GROUP_MAGIC {
            return Err(Bad::Invalid("group header has a wrong magic".into()));
        }
        let stored = u32_at(b, 4);
        let crc = group_crc(b, salt);
        if stored != crc {
            return Err(Bad::Invalid(format!(
                "group header checksum {stored:#010x} does not match {crc:#010x}"
            )));
        }
        let header = GroupHeader {
            seq: u64_at(b, 8),
            body_len: u32_at(b, 16),
            records: u32_at(b, 20),
        };
        let min = u64::from(header.records) * (RECORD_HEADER_LEN as u64 + 1);
        if header.records == 0 || u64::from(header.body_len) < min {
            return Err(Bad::Invalid(format!(
                "group header claims {} records in {} bytes",
                header.records, header.body_len
            )));
        }
        Ok(header)
    }

    /// Bytes from the start of the group to the start of the next one.
    pub(crate) fn span(&self) -> u64 {
        align_group(GROUP_HEADER_LEN as u64 + u64::from(self.body_len))
    }
}

fn group_crc(b: &[u8], salt: u64) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), &b[8..GROUP_HEADER_LEN])
}

/// A decoded record header: where the payload is and what it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) len: u32,
    pub(crate) crc: u32,
    pub(crate) id: u64,
    pub(crate) slice: u16,
}

/// The CRC of a payload, computed before the record's id is known.
pub(crate) fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

fn trailer(len: u32, id: u64, slice: u16) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[0..4].copy_from_slice(&len.to_le_bytes());
    t[4..12].copy_from_slice(&id.to_le_bytes());
    t[12..14].copy_from_slice(&slice.to_le_bytes());
    t
}

/// Writes a framed record into `out`, which is exactly `RECORD_HEADER_LEN + payload.len()`
/// bytes long and zeroed (the flags field is left at zero).
pub(crate) fn encode_record(out: &mut [u8], payload: &[u8], payload_crc: u32, id: u64, slice: u16) {
    let len = payload.len() as u32;
    let crc = crc32c::crc32c_append(payload_crc, &trailer(len, id, slice));
    let (h, body) = out.split_at_mut(RECORD_HEADER_LEN);
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16..18].copy_from_slice(&slice.to_le_bytes());
    body.copy_from_slice(payload);
}

impl RecordHeader {
    pub(crate) fn decode(b: &[u8]) -> Result<Self, Bad> {
        let b = &b[..RECORD_HEADER_LEN];
        let header = RecordHeader {
            len: u32_at(b, 0),
            crc: u32_at(b, 4),
            id: u64_at(b, 8),
            slice: u16_at(b, 16),
        };
        if header.len == 0 {
            return Err(if b.iter().all(|&x| x == 0) {
                Bad::Zero
            } else {
                Bad::Invalid("record has length 0".into())
            });
        }
        let flags = u16_at(b, 18);
        if flags != 0 {
            return Err(Bad::Invalid(format!(
                "record has unknown flags {flags:#06x}"
            )));
        }
        Ok(header)
    }

    /// Checks the payload against the stored CRC.
    pub(crate) fn verify(&self, payload: &[u8]) -> Result<(), Bad> {
        let crc = crc32c::crc32c_append(
            payload_crc(payload),
            &trailer(self.len, self.id, self.slice),
        );
        if crc == self.crc {
            Ok(())
        } else {
            Err(Bad::Invalid(format!(
                "record {} checksum {:#010x} does not match {crc:#010x}",
                self.id, self.crc
            )))
        }
    }

    pub(crate) fn frame_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// The replay checkpoint: everything before `record_offset` of `segment` has been replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointData {
    pub(crate) segment: u64,
    pub(crate) group_offset: u64,
    pub(crate) record_offset: u64,
    /// The highest record id replayed so far (ids continue above it after a restart, even once
    /// every segment holding them is deleted).
    pub(crate) last_id: u64,
}

impl CheckpointData {
    pub(crate) fn encode(&self) -> [u8; CHECKPOINT_LEN] {
        let mut b = [0u8; CHECKPOINT_LEN];
        b[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.group_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.record_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.last_id.to_le_bytes());
        let crc = header_crc(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, Bad> {
        if b.len() != CHECKPOINT_LEN {
            return Err(Bad::Invalid(format!(
                "checkpoint has {} bytes, expected {CHECKPOINT_LEN}",
                b.len()
            )));
        }
        if b[0..8] != CHECKPOINT_MAGIC {
            return Err(Bad::Invalid("checkpoint has a wrong magic".into()));
        }
        if u32_at(b, 12) != header_crc(b) {
            return Err(Bad::Invalid("checkpoint checksum does not match".into()));
        }
        let version = u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(Bad::Version(version));
        }
        let c = CheckpointData {
            segment: u64_at(b, 16),
            group_offset: u64_at(b, 24),
            record_offset: u64_at(b, 32),
            last_id: u64_at(b, 40),
        };
        if c.group_offset < SEGMENT_HEADER_LEN as u64 || c.record_offset < c.group_offset {
            return Err(Bad::Invalid(format!(
                "checkpoint offsets {}/{} are impossible",
                c.group_offset, c.record_offset
            )));
        }
        Ok(c)
    }
}

/// A fresh random salt for a new segment (std's hasher keys come from the OS's randomness).
pub(crate) fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

/// The name of segment `id`: 20 digits, so that names sort like ids.
pub(crate) fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The highest segment id a file name may carry: 2^63 segments are more than any log
/// creates, and ids above it would make the next id overflow.
pub(crate) const MAX_SEGMENT_ID: u64 = u64::MAX / 2;

/// The id of a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&id| id <= MAX_SEGMENT_ID)
}

pub(crate) const CHECKPOINT_NAME: &str = "checkpoint";
pub(crate) const CHECKPOINT_TMP: &str = "checkpoint.tmp";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let h = SegmentHeader {
            segment: 7,
            first_group: 42,
            next_id: 1000,
            salt: 5,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[20] ^= 1;
        assert!(matches!(SegmentHeader::decode(&b), Err(Bad::Invalid(_))));
        assert_eq!(
            SegmentHeader::decode(&[0; SEGMENT_HEADER_LEN]),
            Err(Bad::Zero)
        );
        // A header written by another version (its checksum verifies) names that version ...
        let mut v = h.encode();
        v[8] = 9;
        let crc = header_crc(&v);
        v[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&v), Err(Bad::Version(9)));
        // ... a header torn after its magic (version 0, no checksum) is just damaged.
        let mut torn = [0; SEGMENT_HEADER_LEN];
        torn[..8].copy_from_slice(&SEGMENT_MAGIC);
        assert!(matches!(SegmentHeader::decode(&torn), Err(Bad::Invalid(_))));
    }

    #[test]
    fn group_header_round_trips_and_rejects_nonsense() {
        let g = GroupHeader {
            seq: 3,
            body_len: 100,
            records: 2,
        };
        let b = g.encode(77);
        assert_eq!(GroupHeader::decode(&b, 77), Ok(g));
        assert!(
            matches!(GroupHeader::decode(&b, 78), Err(Bad::Invalid(_))),
            "another segment's salt"
        );
        assert_eq!(g.span(), 128);
        assert_eq!(
            GroupHeader::decode(&[0; GROUP_HEADER_LEN], 77),
            Err(Bad::Zero)
        );
        let impossible = GroupHeader {
            seq: 3,
            body_len: 10,
            records: 2,
        }
        .encode(77);
        assert!(matches!(
            GroupHeader::decode(&impossible, 77),
            Err(Bad::Invalid(_))
        ));
    }

    #[test]
    fn record_round_trips_and_every_bit_flip_is_caught() {
        let payload = b"hello spill log";
        let mut out = vec![0; RECORD_HEADER_LEN + payload.len()];
        encode_record(&mut out, payload, payload_crc(payload), 99, 3);
        assert_eq!(out.len(), RECORD_HEADER_LEN + payload.len());
        let h = RecordHeader::decode(&out).unwrap();
        assert_eq!((h.len, h.id, h.slice), (payload.len() as u32, 99, 3));
        h.verify(&out[RECORD_HEADER_LEN..]).unwrap();
        for bit in 0..out.len() * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let ok = match RecordHeader::decode(&damaged) {
                Ok(h) => {
                    let end = RECORD_HEADER_LEN + h.len as usize;
                    end <= damaged.len() && h.verify(&damaged[RECORD_HEADER_LEN..end]).is_ok()
                }
                Err(_) => false,
            };
            assert!(!ok, "flipping bit {bit} went unnoticed");
        }
    }

    #[test]
    fn zero_record_header_is_the_end_not_an_error() {
        assert_eq!(
            RecordHeader::decode(&[0; RECORD_HEADER_LEN]),
            Err(Bad::Zero)
        );
    }

    #[test]
    fn checkpoint_round_trips() {
        let c = CheckpointData {
            segment: 2,
            group_offset: 48,
            record_offset: 92,
            last_id: 17,
        };
        assert_eq!(CheckpointData::decode(&c.encode()), Ok(c));
        let mut b = c.encode();
        b[30] ^= 4;
        assert!(CheckpointData::decode(&b).is_err());
    }

    #[test]
    fn segment_names_sort_like_ids() {
        assert_eq!(parse_segment_name(&segment_name(12)), Some(12));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name("12.seg"), None);
        assert_eq!(parse_segment_name("checkpoint"), None);
        // Ids this crate never reaches are not its segments (the next id would overflow).
        assert_eq!(
            parse_segment_name(&segment_name(MAX_SEGMENT_ID)),
            Some(MAX_SEGMENT_ID)
        );
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), None);
    }
}
