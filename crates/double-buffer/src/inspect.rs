//! Read-only views of a log directory for operators (the `spill-log` binary) and tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::Bad;
use crate::log::RecordId;
use crate::recovery::{Verdict, analyze};
use crate::replay::{Position, Record};
use crate::scan::{Cursor, Step};
use crate::storage::{DiskStorage, Storage, StorageFile};

/// A directory as [`inspect`] found it. Nothing is changed: a torn tail is reported, not cut.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inspection {
    /// Where replay resumes, if a checkpoint exists.
    pub checkpoint: Option<Position>,
    /// Every segment file, in order.
    pub segments: Vec<SegmentInfo>,
    /// The first problem that would stop [`SpillLog::open`](crate::SpillLog::open), if any.
    pub problem: Option<Error>,
    /// Records after the checkpoint (waiting to be replayed).
    pub pending_records: u64,
    /// Their payload bytes.
    pub pending_bytes: u64,
}

/// One segment file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// The segment's id.
    pub id: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its size on disk (preallocated space included).
    pub file_len: u64,
    /// Where its valid data ends.
    pub data_end: u64,
    /// Complete groups.
    pub groups: u64,
    /// Records in them.
    pub records: u64,
    /// Their payload bytes.
    pub payload_bytes: u64,
    /// The lowest and highest record id.
    pub ids: Option<(RecordId, RecordId)>,
    /// Records after the checkpoint.
    pub pending_records: u64,
    /// What state it is in.
    pub state: SegmentState,
}

/// The verdict on one segment.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SegmentState {
    /// Every record verifies.
    Ok,
    /// Wholly before the checkpoint: replayed, removed at the next open.
    Replayed,
    /// Ends in a torn write that opening will cut at `offset` (`bytes` bytes of it).
    TornTail {
        /// Where the valid data ends.
        offset: u64,
        /// Non-zero bytes after it.
        bytes: u64,
    },
    /// The last segment, whose creation never completed; opening removes it.
    IncompleteHeader,
    /// Damaged: opening fails with this error.
    Corrupt(Error),
}

/// Inspects the log in `dir` without locking or changing it.
pub fn inspect(dir: impl AsRef<Path>) -> Result<Inspection> {
    inspect_storage(&DiskStorage::read_only(dir)?)
}

/// Inspects a log on any storage.
pub fn inspect_storage(storage: &dyn Storage) -> Result<Inspection> {
    let analysis = analyze(storage, 1 << 20)?;
    let mut segments: Vec<SegmentInfo> = analysis
        .replayed
        .iter()
        .map(|(id, name)| SegmentInfo {
            id: *id,
            path: storage.path_of(name),
            file_len: storage.open(name, false).and_then(|f| f.len()).unwrap_or(0),
            data_end: 0,
            groups: 0,
            records: 0,
            payload_bytes: 0,
            ids: None,
            pending_records: 0,
            state: SegmentState::Replayed,
        })
        .collect();
    let (mut pending_records, mut pending_bytes) = (0, 0);
    for (scan, verdict) in &analysis.segments {
        pending_records += scan.pending_records;
        pending_bytes += scan.pending_bytes;
        segments.push(SegmentInfo {
            id: scan.id,
            path: scan.path.clone(),
            file_len: scan.file_len,
            data_end: scan.data_end,
            groups: scan.groups,
            records: scan.records,
            payload_bytes: scan.payload_bytes,
            ids: scan
                .first_id
                .zip(scan.last_id)
                .map(|(a, b)| (RecordId(a), RecordId(b))),
            pending_records: scan.pending_records,
            state: match verdict {
                Verdict::Ok => SegmentState::Ok,
                Verdict::Torn { offset, bytes } => SegmentState::TornTail {
                    offset: *offset,
                    bytes: *bytes,
                },
                Verdict::TornCreation => SegmentState::IncompleteHeader,
                Verdict::Fail(e) => SegmentState::Corrupt(e.clone()),
            },
        });
    }
    Ok(Inspection {
        checkpoint: analysis.checkpoint.map(Position::from_checkpoint),
        segments,
        problem: analysis.failure,
        pending_records,
        pending_bytes,
    })
}

/// Calls `visit` with every valid record, in log order, from the checkpoint on (or from the
/// first segment still on disk if `from_checkpoint` is false), until it returns `false`. Stops at
/// a torn tail; a corrupt record is an error.
pub fn read_records(
    storage: &dyn Storage,
    from_checkpoint: bool,
    mut visit: impl FnMut(Record<'_>) -> bool,
) -> Result<()> {
    let analysis = analyze(storage, 1 << 20)?;
    for (scan, verdict) in &analysis.segments {
        let header = match (&scan.header, verdict) {
            (Ok(h), Verdict::Ok | Verdict::Torn { .. }) => *h,
            (_, Verdict::TornCreation) => continue,
            (_, Verdict::Fail(e)) => return Err(e.clone()),
            (Err(bad), _) => {
                let reason = match bad {
                    Bad::Invalid(r) => r.clone(),
                    other => format!("{other:?}"),
                };
                return Err(Error::corrupt(&scan.path, 0, reason));
            }
        };
        let file: Arc<dyn StorageFile> = Arc::from(
            storage
                .open(&scan.name, false)
                .map_err(|e| Error::io("open", &scan.path, e))?,
        );
        let mut cursor = Cursor::new(file, scan.path.clone(), &header, 1 << 20, scan.data_end);
        if let Some(c) = analysis
            .checkpoint
            .filter(|c| from_checkpoint && c.segment == scan.id)
            && let Some((at, reason)) = cursor
                .seek(c.group_offset, c.record_offset)
                .map_err(|e| Error::io("read", &scan.path, e))?
        {
            return Err(Error::corrupt(&scan.path, at, reason));
        }
        loop {
            match cursor
                .next()
                .map_err(|e| Error::io("read", &scan.path, e))?
            {
                Step::Record(r) => {
                    let record = Record::new(
                        RecordId(r.id),
                        r.slice,
                        cursor.payload(&r),
                        Position::new(scan.id, r.group_offset, r.end),
                    );
                    if !visit(record) {
                        return Ok(());
                    }
                }
                Step::End { .. } => break,
                Step::Bad { at, reason } => return Err(Error::corrupt(&scan.path, at, reason)),
            }
        }
    }
    Ok(())
}
