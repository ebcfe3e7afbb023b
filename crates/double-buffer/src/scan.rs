//! Reading segments: a streaming cursor over groups and records, with bounded memory.
//!
//! Recovery, replay and the operator's tool all read through [`Cursor`]; it verifies every
//! group header and record checksum it passes and stops at the first thing that does not decode,
//! saying what and where. Deciding whether that stop is a torn tail or corruption is the caller's
//! business (see `recovery.rs`).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::MAX_BUFFER;
use crate::format::{
    Bad, GROUP_ALIGN, GROUP_HEADER_LEN, GROUP_MAGIC, GroupHeader, RECORD_HEADER_LEN, RecordHeader,
    SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::storage::{DIRECT_ALIGN, StorageFile, read_full_at};

/// One step of a cursor.
#[derive(Debug)]
pub(crate) enum Step {
    /// A verified record; its payload is [`Cursor::payload`] until the next step.
    Record(RecordMeta),
    /// The data ends cleanly at `at`: at the limit on a group boundary, or at an all-zero header.
    End { at: u64, zero: bool },
    /// Something at `at` does not decode.
    Bad { at: u64, reason: String },
}

/// Where a verified record is and what it claims.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordMeta {
    pub(crate) id: u64,
    pub(crate) slice: u16,
    pub(crate) len: u32,
    /// Where the record's group starts.
    pub(crate) group_offset: u64,
    /// Where the record starts.
    pub(crate) offset: u64,
    /// Where the record ends (the position after it).
    pub(crate) end: u64,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    start: u64,
    body_end: u64,
    left: u32,
}

/// A streaming reader over the groups of one segment, from some position up to a limit.
#[derive(Debug)]
pub(crate) struct Cursor {
    file: Arc<dyn StorageFile>,
    pub(crate) path: PathBuf,
    salt: u64,
    buf: Vec<u8>,
    buf_off: u64,
    buf_len: usize,
    pos: u64,
    group: Option<Group>,
    /// The sequence number the next group must carry, when known.
    expected_seq: Option<u64>,
    /// Nothing at or beyond this offset is read.
    limit: u64,
}

/// Reads and checks a segment header.
pub(crate) fn read_segment_header(
    file: &dyn StorageFile,
) -> io::Result<Result<SegmentHeader, Bad>> {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    let n = read_full_at(file, &mut b, 0)?;
    if n < SEGMENT_HEADER_LEN {
        return Ok(Err(if b[..n].iter().all(|&x| x == 0) {
            Bad::Zero
        } else {
            Bad::Invalid(format!("segment header cut short at {n} bytes"))
        }));
    }
    Ok(SegmentHeader::decode(&b))
}

/// Reads a segment header that failed its checks as it stands (missing bytes read as zeros).
pub(crate) fn salvage_segment_header(file: &dyn StorageFile) -> io::Result<SegmentHeader> {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    read_full_at(file, &mut b, 0)?;
    Ok(SegmentHeader::salvage(&b))
}

impl Cursor {
    /// A cursor over `file` (whose header is `header`) reading from its first group (see
    /// [`Cursor::seek`]) up to `limit`. `chunk` bytes are read at a time; the buffer grows to
    /// hold a larger record.
    pub(crate) fn new(
        file: Arc<dyn StorageFile>,
        path: PathBuf,
        header: &SegmentHeader,
        chunk: usize,
        limit: u64,
    ) -> Self {
        Cursor {
            file,
            path,
            salt: header.salt,
            buf: vec![0; chunk.max(GROUP_HEADER_LEN)],
            buf_off: 0,
            buf_len: 0,
            pos: SEGMENT_HEADER_LEN as u64,
            group: None,
            expected_seq: Some(header.first_group),
            limit,
        }
    }

    /// Moves to the group at `group_offset` and then past every record before `record_offset`
    /// (verifying them). `Ok(None)` when that lands exactly after a record of that group (or on
    /// the group boundary itself); otherwise where and why not.
    pub(crate) fn seek(
        &mut self,
        group_offset: u64,
        record_offset: u64,
    ) -> io::Result<Option<(u64, String)>> {
        self.pos = group_offset;
        self.group = None;
        if group_offset != SEGMENT_HEADER_LEN as u64 {
            self.expected_seq = None;
        }
        if record_offset == group_offset {
            return Ok(None);
        }
        loop {
            match self.next()? {
                Step::Record(r) if r.group_offset != group_offset || r.end > record_offset => {
                    let at = r.offset;
                    return Ok(Some((
                        at,
                        format!("position {group_offset}/{record_offset} is not a record boundary"),
                    )));
                }
                Step::Record(r) if r.end == record_offset => return Ok(None),
                Step::Record(_) => {}
                Step::End { at, .. } => {
                    return Ok(Some((
                        at,
                        format!("position {group_offset}/{record_offset} is beyond the data"),
                    )));
                }
                Step::Bad { at, reason } => return Ok(Some((at, reason))),
            }
        }
    }

    /// Raises the limit (the durable end of a segment being appended to).
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Where the next group or record starts.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Whether the cursor sits between groups (the next step reads a group header), or after
    /// the last record of a group.
    pub(crate) fn between_groups(&self) -> bool {
        self.group.is_none_or(|g| g.left == 0)
    }

    /// Where the next group starts once the current one is done (the aligned end of its body).
    pub(crate) fn group_end(&self) -> u64 {
        self.group
            .map_or(self.pos, |g| g.body_end.div_ceil(GROUP_ALIGN) * GROUP_ALIGN)
    }

    /// The last group sequence number passed, if any.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.expected_seq.and_then(|s| s.checked_sub(1))
    }

    /// Makes `[at, at + n)` available in the buffer; `false` if the file ends first.
    fn fill(&mut self, at: u64, n: usize) -> io::Result<bool> {
        if at >= self.buf_off && at + n as u64 <= self.buf_off + self.buf_len as u64 {
            return Ok(true);
        }
        let want = (self.limit.saturating_sub(at)).min(self.buf.len() as u64) as usize;
        let want = want.max(n).min(self.buf.len());
        self.buf_off = at;
        self.buf_len = read_full_at(&*self.file, &mut self.buf[..want], at)?;
        Ok(self.buf_len >= n)
    }

    /// The payload of the record the last step returned.
    pub(crate) fn payload(&self, r: &RecordMeta) -> &[u8] {
        self.bytes(r.offset + RECORD_HEADER_LEN as u64, r.len as usize)
    }

    fn bytes(&self, at: u64, n: usize) -> &[u8] {
        let start = (at - self.buf_off) as usize;
        &self.buf[start..start + n]
    }

    /// The next record, or where and why the data ends.
    pub(crate) fn next(&mut self) -> io::Result<Step> {
        loop {
            let Some(mut group) = self.group else {
                let at = self.pos;
                if at >= self.limit {
                    return Ok(Step::End { at, zero: false });
                }
                let room = self.limit - at;
                if room < GROUP_HEADER_LEN as u64 {
                    let n = room as usize;
                    if !self.fill(at, n)? {
                        return Ok(Step::Bad {
                            at,
                            reason: "file ends inside a group header".into(),
                        });
                    }
                    if self.bytes(at, n).iter().all(|&b| b == 0) {
                        return Ok(Step::End { at, zero: true });
                    }
                    return Ok(Step::Bad {
                        at,
                        reason: "group header cut short".into(),
                    });
                }
                if !self.fill(at, GROUP_HEADER_LEN)? {
                    return Ok(Step::Bad {
                        at,
                        reason: "file ends inside a group header".into(),
                    });
                }
                let header = match GroupHeader::decode(self.bytes(at, GROUP_HEADER_LEN), self.salt)
                {
                    Ok(h) => h,
                    Err(Bad::Zero) => return Ok(Step::End { at, zero: true }),
                    Err(Bad::Invalid(reason)) => return Ok(Step::Bad { at, reason }),
                    Err(Bad::Version(v)) => {
                        return Ok(Step::Bad {
                            at,
                            reason: format!("version {v}"),
                        });
                    }
                };
                if let Some(expected) = self.expected_seq
                    && header.seq != expected
                {
                    return Ok(Step::Bad {
                        at,
                        reason: format!("group sequence {} where {expected} was due", header.seq),
                    });
                }
                let body_end = at + GROUP_HEADER_LEN as u64 + u64::from(header.body_len);
                if body_end > self.limit {
                    return Ok(Step::Bad {
                        at,
                        reason: format!(
                            "group of {} bytes runs past the end at {}",
                            header.body_len, self.limit
                        ),
                    });
                }
                self.expected_seq = Some(header.seq + 1);
                self.group = Some(Group {
                    start: at,
                    body_end,
                    left: header.records,
                });
                self.pos = at + GROUP_HEADER_LEN as u64;
                continue;
            };
            let at = self.pos;
            if group.left == 0 {
                if at != group.body_end {
                    // Groups written with direct I/O end in zeros up to the next block.
                    let pad = group.body_end.saturating_sub(at);
                    let zeros = at < group.body_end
                        && pad <= DIRECT_ALIGN as u64
                        && self.fill(at, pad as usize)?
                        && self.bytes(at, pad as usize).iter().all(|&b| b == 0);
                    if !zeros {
                        return Ok(Step::Bad {
                            at: group.start,
                            reason: format!(
                                "group records end at {at}, its header says {}",
                                group.body_end
                            ),
                        });
                    }
                }
                self.group = None;
                self.pos = group.body_end.div_ceil(GROUP_ALIGN) * GROUP_ALIGN;
                continue;
            }
            if at + RECORD_HEADER_LEN as u64 > group.body_end {
                return Ok(Step::Bad {
                    at,
                    reason: "record header runs past its group".into(),
                });
            }
            if !self.fill(at, RECORD_HEADER_LEN)? {
                return Ok(Step::Bad {
                    at,
                    reason: "file ends inside a record header".into(),
                });
            }
            let header = match RecordHeader::decode(self.bytes(at, RECORD_HEADER_LEN)) {
                Ok(h) => h,
                Err(Bad::Zero) => {
                    return Ok(Step::Bad {
                        at,
                        reason: "zeroed record inside a group".into(),
                    });
                }
                Err(Bad::Invalid(reason)) => return Ok(Step::Bad { at, reason }),
                Err(Bad::Version(v)) => {
                    return Ok(Step::Bad {
                        at,
                        reason: format!("version {v}"),
                    });
                }
            };
            let end = at + header.frame_len();
            if end > group.body_end {
                return Ok(Step::Bad {
                    at,
                    reason: format!("record of {} bytes runs past its group", header.len),
                });
            }
            let frame = header.frame_len() as usize;
            if frame > self.buf.len() {
                // Written under a larger `buffer_size` than this reader's chunk (the config
                // changed between runs): grow to hold it. The frame lies inside a group whose
                // checksummed header places it within the file, and no configuration writes
                // a frame above `MAX_BUFFER`, so this never allocates more than the writer
                // held in one buffer.
                if frame > MAX_BUFFER {
                    return Ok(Step::Bad {
                        at,
                        reason: format!(
                            "record of {} bytes is larger than any buffer writes",
                            header.len
                        ),
                    });
                }
                self.buf.resize(frame, 0);
            }
            if !self.fill(at, frame)? {
                return Ok(Step::Bad {
                    at,
                    reason: "file ends inside a record".into(),
                });
            }
            if let Err(Bad::Invalid(reason)) =
                header.verify(self.bytes(at + RECORD_HEADER_LEN as u64, header.len as usize))
            {
                return Ok(Step::Bad { at, reason });
            }
            group.left -= 1;
            self.group = Some(group);
            self.pos = end;
            return Ok(Step::Record(RecordMeta {
                id: header.id,
                slice: header.slice,
                len: header.len,
                group_offset: group.start,
                offset: at,
                end,
            }));
        }
    }
}

/// What lies beyond the point where a segment's data stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    /// The offset of a valid, complete group with a sequence number at least the one sought.
    pub(crate) later_group: Option<u64>,
    /// One past the last non-zero byte at or after the stop point (the stop point if none).
    pub(crate) nonzero_end: u64,
}

/// Looks past `from` in `file` for a later valid group (header and all its records) with a
/// sequence number of at least `min_seq`, and for the extent of non-zero bytes.
pub(crate) fn examine_tail(
    file: &Arc<dyn StorageFile>,
    header: &SegmentHeader,
    from: u64,
    min_seq: u64,
    chunk: usize,
) -> io::Result<Tail> {
    let len = file.len()?;
    let mut tail = Tail {
        later_group: None,
        nonzero_end: from,
    };
    let mut buf = vec![0u8; chunk.max(1 << 16)];
    let mut at = from;
    while at < len {
        let n = read_full_at(&**file, &mut buf, at)?;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        if let Some(last) = data.iter().rposition(|&b| b != 0) {
            tail.nonzero_end = at + last as u64 + 1;
        }
        if tail.later_group.is_none() {
            let mut off = (at + 1).div_ceil(GROUP_ALIGN) * GROUP_ALIGN;
            while off + GROUP_HEADER_LEN as u64 <= at + n as u64 {
                let i = (off - at) as usize;
                if data[i..i + 4] == GROUP_MAGIC
                    && let Ok(g) = GroupHeader::decode(&data[i..], header.salt)
                    && g.seq >= min_seq
                    && group_is_valid(file, header, off, g.seq, chunk, len)?
                {
                    tail.later_group = Some(off);
                }
                if tail.later_group.is_some() {
                    break;
                }
                off += GROUP_ALIGN;
            }
        }
        if n < buf.len() {
            break;
        }
        // Overlap chunks by a header, so that a header across a chunk boundary is seen.
        at += (n - GROUP_HEADER_LEN) as u64;
    }
    Ok(tail)
}

/// Whether the group at `offset` decodes completely, every record verified.
fn group_is_valid(
    file: &Arc<dyn StorageFile>,
    header: &SegmentHeader,
    offset: u64,
    seq: u64,
    chunk: usize,
    len: u64,
) -> io::Result<bool> {
    let mut cursor = Cursor::new(Arc::clone(file), PathBuf::new(), header, chunk, len);
    cursor.pos = offset;
    cursor.expected_seq = Some(seq);
    loop {
        match cursor.next()? {
            Step::Record(_) => {
                if cursor.group.is_some_and(|g| g.left == 0) {
                    return Ok(true);
                }
            }
            Step::End { .. } | Step::Bad { .. } => return Ok(false),
        }
    }
}
