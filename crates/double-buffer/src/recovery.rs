//! Opening a directory: scan every segment, verify every record, cut a torn tail, refuse
//! corruption.
//!
//! How a torn tail is told from corruption: the flusher writes one group, syncs it, and only
//! then writes the next group (or creates the next segment). So a valid group *after* damaged
//! bytes proves that the damaged bytes had been synced: that is corruption, reported with its
//! position. Damage with nothing valid after it is the group that was being written when the
//! process or machine died; none of its records had been acknowledged, and it is cut. (A group
//! that was synced and then rotted, with nothing valid after it, looks the same and is cut too;
//! the report says so.)

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::RecordId;
use crate::error::{Error, Result};
use crate::format::{
    self, Bad, CHECKPOINT_NAME, CheckpointData, FORMAT_VERSION, SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::replay::Position;
use crate::scan::{Cursor, Step, Tail, examine_tail, read_segment_header, salvage_segment_header};
use crate::storage::{Storage, StorageFile, read_full_at};

/// What opening a log found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files kept.
    pub segments: usize,
    /// Records not yet replayed (after the checkpoint).
    pub pending_records: u64,
    /// Payload bytes of those records.
    pub pending_bytes: u64,
    /// The torn tail that was cut, if the last write had not completed.
    pub torn: Option<TornTail>,
    /// Files removed: segments wholly before the checkpoint (left by a crash between writing the
    /// checkpoint and deleting them), a last segment whose creation never completed, and
    /// temporary files.
    pub removed: Vec<PathBuf>,
    /// Where replay resumes, if a checkpoint exists.
    pub checkpoint: Option<Position>,
    /// The id the next record appended will get.
    pub next_id: RecordId,
}

/// A torn tail cut by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment that held it.
    pub path: PathBuf,
    /// Where the kept data ends: the file was cut here.
    pub offset: u64,
    /// Bytes of (non-zero) data that were cut.
    pub bytes: u64,
    /// Records of the cut group that still verified (it was not complete, so none of them had
    /// been acknowledged as durable).
    pub records: u64,
}

/// One segment as the scan found it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentScan {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) header: Result<SegmentHeader, Bad>,
    pub(crate) file_len: u64,
    pub(crate) groups: u64,
    pub(crate) records: u64,
    pub(crate) payload_bytes: u64,
    pub(crate) first_id: Option<u64>,
    pub(crate) last_id: Option<u64>,
    pub(crate) last_seq: Option<u64>,
    /// Where the last complete group ends: the data end, and where a resumed write would go.
    pub(crate) data_end: u64,
    /// Where and why the scan stopped, if not cleanly at the end of the data.
    pub(crate) stop: Option<(u64, String)>,
    /// What lies beyond the stop.
    pub(crate) tail: Option<Tail>,
    /// Records of the incomplete group at the stop.
    pub(crate) partial_records: u64,
    /// Records and payload bytes after the checkpoint.
    pub(crate) pending_records: u64,
    pub(crate) pending_bytes: u64,
}

/// What to do about a segment.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    /// Clean.
    Ok,
    /// The last segment ends in a torn write: cut it at `offset`.
    Torn { offset: u64, bytes: u64 },
    /// The last segment's creation never completed: remove it.
    TornCreation,
    /// Corruption (or an unsupported version): refuse to open.
    Fail(Error),
}

/// The whole directory, scanned without changing anything.
#[derive(Debug)]
pub(crate) struct Analysis {
    pub(crate) checkpoint: Option<CheckpointData>,
    /// Segments wholly before the checkpoint: already replayed, to be removed.
    pub(crate) replayed: Vec<(u64, String)>,
    /// Temporary files to remove.
    pub(crate) temporary: Vec<String>,
    pub(crate) segments: Vec<(SegmentScan, Verdict)>,
    /// The first failure, if any.
    pub(crate) failure: Option<Error>,
    /// The highest record id seen anywhere (records, headers' counters, checkpoint).
    pub(crate) max_id: u64,
}

impl Analysis {
    /// The segment id the next segment file gets.
    pub(crate) fn next_segment(&self) -> u64 {
        let last = self.segments.last().map_or(0, |(s, _)| s.id + 1);
        let ckpt = self.checkpoint.map_or(0, |c| c.segment + 1);
        let replayed = self.replayed.last().map_or(0, |(id, _)| id + 1);
        last.max(ckpt).max(replayed).max(1)
    }

    /// The sequence number the next group gets.
    pub(crate) fn next_group(&self) -> u64 {
        self.segments
            .iter()
            .rev()
            .find_map(|(s, v)| match (v, &s.header) {
                (Verdict::TornCreation, _) => None,
                (_, Ok(h)) => Some(s.last_seq.map_or(h.first_group, |q| q + 1)),
                (_, Err(_)) => None,
            })
            .unwrap_or(0)
    }
}

fn io_err(storage: &dyn Storage, op: &'static str, name: &str) -> impl FnOnce(io::Error) -> Error {
    let path = storage.path_of(name);
    move |e| Error::io(op, path, e)
}

pub(crate) fn read_checkpoint(
    storage: &dyn Storage,
    names: &[String],
) -> Result<Option<CheckpointData>> {
    if !names.iter().any(|n| n == CHECKPOINT_NAME) {
        return Ok(None);
    }
    let file =
        storage
            .open(CHECKPOINT_NAME, false)
            .map_err(io_err(storage, "open", CHECKPOINT_NAME))?;
    let mut buf = [0u8; 256];
    let n = read_full_at(&*file, &mut buf, 0).map_err(io_err(storage, "read", CHECKPOINT_NAME))?;
    let path = storage.path_of(CHECKPOINT_NAME);
    match CheckpointData::decode(&buf[..n]) {
        Ok(c) => Ok(Some(c)),
        Err(Bad::Version(version)) => Err(Error::UnsupportedVersion {
            path,
            version,
            supported: FORMAT_VERSION,
        }),
        Err(Bad::Invalid(reason)) => Err(Error::corrupt(path, 0, reason)),
        Err(Bad::Zero) => Err(Error::corrupt(path, 0, "checkpoint is all zeros")),
    }
}

/// Scans the directory. Errors are I/O failures and an unreadable checkpoint; corruption in
/// segments is reported in the analysis.
pub(crate) fn analyze(storage: &dyn Storage, chunk: usize) -> Result<Analysis> {
    let names = storage
        .list()
        .map_err(|e| Error::io("list", storage.path_of(""), e))?;
    let checkpoint = read_checkpoint(storage, &names)?;
    let temporary = names
        .iter()
        .filter(|n| n.ends_with(".tmp"))
        .cloned()
        .collect();
    let mut ids: Vec<(u64, String)> = names
        .iter()
        .filter_map(|n| format::parse_segment_name(n).map(|id| (id, n.clone())))
        .collect();
    ids.sort();
    let first_live = checkpoint.map_or(0, |c| c.segment);
    let (replayed, live): (Vec<_>, Vec<_>) = ids.into_iter().partition(|(id, _)| *id < first_live);

    let mut analysis = Analysis {
        checkpoint,
        replayed,
        temporary,
        segments: Vec::new(),
        failure: None,
        max_id: checkpoint.map_or(0, |c| c.last_id),
    };
    let mut slice_last: HashMap<u16, u64> = HashMap::new();
    let mut expected_group: Option<u64> = None;
    let count = live.len();
    for (i, (id, name)) in live.into_iter().enumerate() {
        let last = i + 1 == count;
        let ckpt_here = checkpoint.filter(|c| c.segment == id);
        let (scan, mut verdict) =
            scan_segment(storage, id, &name, last, chunk, ckpt_here, &mut slice_last)?;
        if let (Verdict::Ok | Verdict::Torn { .. }, Ok(h)) = (&verdict, &scan.header) {
            if let Some(expected) = expected_group
                && h.first_group != expected
            {
                verdict = Verdict::Fail(Error::corrupt(
                    &scan.path,
                    0,
                    format!(
                        "segment starts at group {} but the previous segment ended before group {expected}: \
                             groups are missing",
                        h.first_group
                    ),
                ));
            }
            expected_group = Some(scan.last_seq.map_or(h.first_group, |s| s + 1));
            analysis.max_id = analysis
                .max_id
                .max(scan.last_id.unwrap_or(0))
                .max(h.next_id.saturating_sub(1));
        }
        if let (None, Verdict::Fail(e)) = (&analysis.failure, &verdict) {
            analysis.failure = Some(e.clone());
        }
        analysis.segments.push((scan, verdict));
    }
    if let (None, Some(c)) = (&analysis.failure, checkpoint) {
        let exists = analysis
            .segments
            .iter()
            .any(|(s, v)| s.id == c.segment && !matches!(v, Verdict::TornCreation));
        if !exists && c.record_offset > SEGMENT_HEADER_LEN as u64 {
            analysis.failure = Some(Error::corrupt(
                storage.path_of(CHECKPOINT_NAME),
                0,
                format!(
                    "checkpoint points into segment {} at {}, which does not exist",
                    c.segment, c.record_offset
                ),
            ));
        }
    }
    Ok(analysis)
}

/// Scans one segment and judges it.
fn scan_segment(
    storage: &dyn Storage,
    id: u64,
    name: &str,
    last: bool,
    chunk: usize,
    checkpoint: Option<CheckpointData>,
    slice_last: &mut HashMap<u16, u64>,
) -> Result<(SegmentScan, Verdict)> {
    let path = storage.path_of(name);
    let file: Arc<dyn StorageFile> = Arc::from(
        storage
            .open(name, false)
            .map_err(io_err(storage, "open", name))?,
    );
    let read_err = |e: io::Error| Error::io("read", storage.path_of(name), e);
    let file_len = file.len().map_err(io_err(storage, "stat", name))?;
    let header = read_segment_header(&*file).map_err(io_err(storage, "read", name))?;
    let mut scan = SegmentScan {
        id,
        name: name.to_owned(),
        path: path.clone(),
        header: header.clone(),
        file_len,
        groups: 0,
        records: 0,
        payload_bytes: 0,
        first_id: None,
        last_id: None,
        last_seq: None,
        data_end: SEGMENT_HEADER_LEN as u64,
        stop: None,
        tail: None,
        partial_records: 0,
        pending_records: 0,
        pending_bytes: 0,
    };
    let header = match header {
        Ok(h) if h.segment == id => h,
        Ok(h) => {
            let e = Error::corrupt(
                &path,
                0,
                format!(
                    "header names segment {} but the file is segment {id}",
                    h.segment
                ),
            );
            return Ok((scan, Verdict::Fail(e)));
        }
        Err(Bad::Version(version)) => {
            return Ok((
                scan,
                Verdict::Fail(Error::UnsupportedVersion {
                    path,
                    version,
                    supported: FORMAT_VERSION,
                }),
            ));
        }
        Err(bad @ (Bad::Zero | Bad::Invalid(_))) if last => {
            // The header is synced before any group is written (with direct I/O it goes out in
            // the same write as the first group), so a bad header on the last segment normally
            // means that its creation was interrupted: it holds no acknowledged record. Unless
            // a valid group follows under the salt the damaged header still carries: then the
            // header had been synced and rotted since, and the groups behind it are durable.
            let salvaged = salvage_segment_header(&*file).map_err(&read_err)?;
            let tail = examine_tail(&file, &salvaged, SEGMENT_HEADER_LEN as u64, 0, chunk)
                .map_err(&read_err)?;
            if let Some(later) = tail.later_group {
                let reason = match bad {
                    Bad::Invalid(reason) => reason,
                    _ => "segment header is all zeros".to_owned(),
                };
                let e = Error::corrupt(
                    &path,
                    0,
                    format!(
                        "{reason}, yet a valid group follows at {later}: synced data is damaged"
                    ),
                );
                scan.stop = Some((0, reason));
                return Ok((scan, Verdict::Fail(e)));
            }
            scan.stop = Some((0, "segment header incomplete".into()));
            return Ok((scan, Verdict::TornCreation));
        }
        Err(Bad::Zero) => {
            return Ok((
                scan,
                Verdict::Fail(Error::corrupt(&path, 0, "segment header is all zeros")),
            ));
        }
        Err(Bad::Invalid(reason)) => {
            return Ok((scan, Verdict::Fail(Error::corrupt(&path, 0, reason))));
        }
    };

    // The checkpoint must sit on a record boundary of this segment.
    if let Some(c) = checkpoint {
        let mut probe = Cursor::new(Arc::clone(&file), path.clone(), &header, chunk, file_len);
        if let Some((at, reason)) = probe
            .seek(c.group_offset, c.record_offset)
            .map_err(io_err(storage, "read", name))?
        {
            let e = Error::corrupt(
                storage.path_of(CHECKPOINT_NAME),
                0,
                format!("checkpoint does not match {name} at {at}: {reason}"),
            );
            return Ok((scan, Verdict::Fail(e)));
        }
    }
    let pending_from = checkpoint.map_or(0, |c| c.record_offset);

    let mut cursor = Cursor::new(Arc::clone(&file), path.clone(), &header, chunk, file_len);
    // Counts of the group being read, committed when it completes.
    let (mut g_records, mut g_bytes, mut g_pending, mut g_pending_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut g_first: Option<u64> = None;
    let mut g_last = 0u64;
    let mut g_slices: Vec<(u16, u64)> = Vec::new();
    loop {
        let step = cursor.next().map_err(&read_err)?;
        match step {
            Step::Record(r) => {
                let prev = g_slices
                    .iter()
                    .rev()
                    .find(|(s, _)| *s == r.slice)
                    .map(|&(_, id)| id)
                    .or_else(|| slice_last.get(&r.slice).copied());
                if let Some(prev) = prev.filter(|&p| r.id <= p) {
                    let e = Error::corrupt(
                        &path,
                        r.offset,
                        format!(
                            "record id {} of slice {} follows id {prev} of the same slice",
                            r.id, r.slice
                        ),
                    );
                    scan.stop = Some((r.offset, "record ids out of order".into()));
                    return Ok((scan, Verdict::Fail(e)));
                }
                g_slices.push((r.slice, r.id));
                g_records += 1;
                g_bytes += u64::from(r.len);
                if r.offset >= pending_from {
                    g_pending += 1;
                    g_pending_bytes += u64::from(r.len);
                }
                g_first.get_or_insert(r.id);
                g_last = g_last.max(r.id);
                if cursor.between_groups() {
                    scan.groups += 1;
                    scan.records += g_records;
                    scan.payload_bytes += g_bytes;
                    scan.pending_records += g_pending;
                    scan.pending_bytes += g_pending_bytes;
                    scan.first_id = scan.first_id.or(g_first);
                    scan.last_id = Some(scan.last_id.unwrap_or(0).max(g_last));
                    scan.last_seq = cursor.last_seq();
                    scan.data_end = cursor.group_end();
                    for (s, id) in g_slices.drain(..) {
                        slice_last.insert(s, id);
                    }
                    (g_records, g_bytes, g_pending, g_pending_bytes, g_first) = (0, 0, 0, 0, None);
                }
            }
            Step::End { at, zero } => {
                if !zero {
                    return Ok((scan, Verdict::Ok));
                }
                scan.stop = Some((at, "zeros".into()));
                break;
            }
            Step::Bad { at, reason } => {
                scan.stop = Some((at, reason));
                break;
            }
        }
    }
    // The stop: what lies beyond decides between a torn tail and corruption.
    scan.partial_records = g_records;
    let cut = scan.data_end;
    let min_seq = scan.last_seq.map_or(header.first_group, |s| s + 1);
    let tail = examine_tail(&file, &header, cut, min_seq, chunk).map_err(read_err)?;
    scan.tail = Some(tail);
    let (at, reason) = scan.stop.clone().unwrap_or_default();
    if let Some(later) = tail.later_group {
        let e = Error::corrupt(
            &path,
            at,
            format!("{reason}, yet a valid group follows at {later}: synced data is damaged"),
        );
        return Ok((scan, Verdict::Fail(e)));
    }
    if tail.nonzero_end <= cut {
        // Zeros to the end: the clean end of a preallocated segment.
        scan.stop = None;
        return Ok((scan, Verdict::Ok));
    }
    if !last {
        let e = Error::corrupt(
            &path,
            at,
            format!("{reason}, in a sealed segment that a later one follows"),
        );
        return Ok((scan, Verdict::Fail(e)));
    }
    let bytes = tail.nonzero_end - cut;
    Ok((scan, Verdict::Torn { offset: cut, bytes }))
}

/// The result of recovery: the report, and what the log needs to carry on.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) report: RecoveryReport,
    /// Kept segments: id and data end.
    pub(crate) segments: Vec<(u64, u64)>,
    pub(crate) checkpoint: Option<CheckpointData>,
    pub(crate) next_segment: u64,
    pub(crate) next_group: u64,
    pub(crate) next_id: u64,
}

/// Scans, then cuts the torn tail and removes leftovers; fails on corruption.
pub(crate) fn recover(storage: &dyn Storage, chunk: usize) -> Result<Recovered> {
    let analysis = analyze(storage, chunk)?;
    if let Some(e) = analysis.failure.clone() {
        return Err(e);
    }
    let mut removed = Vec::new();
    let mut torn = None;
    let mut segments = Vec::new();
    for name in analysis
        .temporary
        .iter()
        .chain(analysis.replayed.iter().map(|(_, n)| n))
    {
        storage
            .remove(name)
            .map_err(io_err(storage, "remove", name))?;
        removed.push(storage.path_of(name));
    }
    let (mut pending_records, mut pending_bytes) = (0, 0);
    for (scan, verdict) in &analysis.segments {
        match verdict {
            Verdict::Ok => segments.push((scan.id, scan.data_end)),
            Verdict::Torn { offset, bytes } => {
                let file = storage
                    .open(&scan.name, true)
                    .map_err(io_err(storage, "open", &scan.name))?;
                file.set_len(*offset)
                    .map_err(io_err(storage, "truncate", &scan.name))?;
                file.sync_all()
                    .map_err(io_err(storage, "fsync", &scan.name))?;
                tracing::warn!(path = %scan.path.display(), offset, bytes, "cut a torn tail");
                torn = Some(TornTail {
                    path: scan.path.clone(),
                    offset: *offset,
                    bytes: *bytes,
                    records: scan.partial_records,
                });
                segments.push((scan.id, scan.data_end));
            }
            Verdict::TornCreation => {
                storage
                    .remove(&scan.name)
                    .map_err(io_err(storage, "remove", &scan.name))?;
                removed.push(scan.path.clone());
            }
            Verdict::Fail(e) => return Err(e.clone()),
        }
        pending_records += scan.pending_records;
        pending_bytes += scan.pending_bytes;
    }
    if !removed.is_empty() {
        storage
            .sync_dir()
            .map_err(|e| Error::io("fsync directory", storage.path_of(""), e))?;
    }
    let next_id = analysis.max_id + 1;
    let checkpoint = analysis.checkpoint;
    Ok(Recovered {
        report: RecoveryReport {
            segments: segments.len(),
            pending_records,
            pending_bytes,
            torn,
            removed,
            checkpoint: checkpoint.map(Position::from_checkpoint),
            next_id: RecordId(next_id),
        },
        segments,
        checkpoint,
        next_segment: analysis.next_segment(),
        next_group: analysis.next_group(),
        next_id,
    })
}
