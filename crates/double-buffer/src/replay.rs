//! Reading back what was spilled: a streaming reader with a persisted checkpoint.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::format::{
    self, CHECKPOINT_NAME, CHECKPOINT_TMP, CheckpointData, SEGMENT_HEADER_LEN, align_group,
};
use crate::log::{Engine, RecordId, lock};
use crate::scan::{Cursor, Step, read_segment_header};

/// A place in the log: just after a record (or the start of a segment). Positions order like
/// the records they follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    segment: u64,
    group_offset: u64,
    offset: u64,
}

impl Position {
    pub(crate) fn from_checkpoint(c: CheckpointData) -> Self {
        Position {
            segment: c.segment,
            group_offset: c.group_offset,
            offset: c.record_offset,
        }
    }

    pub(crate) fn new(segment: u64, group_offset: u64, offset: u64) -> Self {
        Position {
            segment,
            group_offset,
            offset,
        }
    }

    fn start_of(segment: u64) -> Self {
        let h = SEGMENT_HEADER_LEN as u64;
        Position {
            segment,
            group_offset: h,
            offset: h,
        }
    }

    /// The segment's id.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// The byte offset in the segment.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.segment, self.offset).cmp(&(other.segment, other.offset))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", format::segment_name(self.segment), self.offset)
    }
}

/// A record read back, borrowed from the reader's buffer until the next call.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    id: RecordId,
    slice: u16,
    payload: &'a [u8],
    position: Position,
}

impl<'a> Record<'a> {
    pub(crate) fn new(id: RecordId, slice: u16, payload: &'a [u8], position: Position) -> Self {
        Record {
            id,
            slice,
            payload,
            position,
        }
    }

    /// The record's id.
    pub fn id(&self) -> RecordId {
        self.id
    }
    /// The slice that buffered it.
    pub fn slice(&self) -> usize {
        usize::from(self.slice)
    }
    /// The bytes appended.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
    /// The position just after this record: commit it once the record is safely elsewhere.
    pub fn position(&self) -> Position {
        self.position
    }
}

/// The replay reader: iterates records from the checkpoint on, across segments, with bounded
/// memory (one read chunk, grown only for a record larger than it), while appends continue.
///
/// It reads only what is durable. [`Replay::next_record`] returns `Ok(None)` once it has caught up
/// with the durable end; call it again later for records flushed since. [`Replay::commit`]
/// persists the position (so that a restart resumes there) and deletes segments wholly behind
/// it. Records read but not committed are read again after a restart: replay is
/// at-least-once.
pub struct Replay {
    engine: Arc<Engine>,
    cursor: Option<(u64, Cursor)>,
    /// Just after the last record returned.
    position: Position,
    committed: Position,
    max_id: u64,
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("position", &self.position)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl Replay {
    pub(crate) fn open(engine: Arc<Engine>) -> Result<Replay> {
        if engine.replay_open.swap(true, Ordering::AcqRel) {
            return Err(Error::ReplayBusy);
        }
        let checkpoint = *lock(&engine.checkpoint);
        let start = match checkpoint {
            Some(c) => Position::from_checkpoint(c),
            None => {
                let first = lock(&engine.segments)
                    .entries
                    .keys()
                    .next()
                    .copied()
                    .unwrap_or(0);
                Position::start_of(first)
            }
        };
        let max_id = checkpoint.map_or(0, |c| c.last_id);
        Ok(Replay {
            engine,
            cursor: None,
            position: start,
            committed: start,
            max_id,
        })
    }

    /// The position after the last record returned.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The last committed position.
    pub fn committed(&self) -> Position {
        self.committed
    }

    /// The next durable record, or `Ok(None)` when caught up. A record that fails its checksum
    /// here (it verified at open, so the disk changed under it) is [`Error::Corrupt`].
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>> {
        loop {
            if self.cursor.is_none() && !self.open_segment()? {
                return Ok(None);
            }
            let (segment, cursor) = self.cursor.as_mut().expect("opened above");
            let segment = *segment;
            let step = cursor
                .next()
                .map_err(|e| Error::io("read", cursor.path.clone(), e))?;
            match step {
                Step::Record(r) => {
                    self.position = Position {
                        segment,
                        group_offset: r.group_offset,
                        offset: r.end,
                    };
                    self.max_id = self.max_id.max(r.id);
                    let (_, cursor) = self.cursor.as_ref().expect("opened above");
                    return Ok(Some(Record {
                        id: RecordId(r.id),
                        slice: r.slice,
                        payload: cursor.payload(&r),
                        position: self.position,
                    }));
                }
                Step::Bad { at, reason } => {
                    return Err(Error::corrupt(cursor.path.clone(), at, reason));
                }
                Step::End { .. } => {
                    let entry = lock(&self.engine.segments).entries.get(&segment).copied();
                    let Some(entry) = entry else {
                        // Removed under us: only possible if the segment was fully committed.
                        self.cursor = None;
                        continue;
                    };
                    if entry.end > cursor.pos() {
                        cursor.set_limit(entry.end);
                        continue;
                    }
                    if !entry.sealed {
                        return Ok(None);
                    }
                    let next = lock(&self.engine.segments)
                        .entries
                        .range(segment + 1..)
                        .next()
                        .map(|(&id, _)| id);
                    match next {
                        Some(id) => {
                            self.cursor = None;
                            if self.position.segment == segment {
                                self.position = Position::start_of(id);
                            }
                        }
                        None => return Ok(None),
                    }
                }
            }
        }
    }

    /// Opens the segment holding the current position (or the first one after it).
    fn open_segment(&mut self) -> Result<bool> {
        let found = lock(&self.engine.segments)
            .entries
            .range(self.position.segment..)
            .next()
            .map(|(&id, &entry)| (id, entry));
        let Some((id, entry)) = found else {
            return Ok(false);
        };
        if id != self.position.segment {
            self.position = Position::start_of(id);
        }
        let storage = &self.engine.storage;
        let name = format::segment_name(id);
        let path = storage.path_of(&name);
        let file: Arc<dyn crate::StorageFile> = Arc::from(
            storage
                .open(&name, false)
                .map_err(|e| Error::io("open", &path, e))?,
        );
        let header = match read_segment_header(&*file).map_err(|e| Error::io("read", &path, e))? {
            Ok(h) => h,
            Err(bad) => {
                return Err(Error::corrupt(
                    &path,
                    0,
                    format!("segment header unreadable: {bad:?}"),
                ));
            }
        };
        let mut cursor = Cursor::new(
            file,
            path.clone(),
            &header,
            self.engine.config.read_chunk(),
            entry.end,
        );
        let p = self.position;
        if let Some((at, reason)) = cursor
            .seek(p.group_offset, p.offset)
            .map_err(|e| Error::io("read", &path, e))?
        {
            return Err(Error::corrupt(&path, at, reason));
        }
        self.cursor = Some((id, cursor));
        Ok(true)
    }

    /// Commits the position after the last record returned. See [`Replay::commit_to`].
    pub fn commit(&mut self) -> Result<()> {
        self.commit_to(self.position)
    }

    /// Persists `position` as the checkpoint — a restart resumes just after it — and deletes the
    /// segments wholly before it. `position` must be one this reader returned (a record's
    /// [`position`](Record::position)), not beyond the last record read and not behind the last
    /// commit. Costs two `fsync`s of the checkpoint and directory, plus one per deletion batch.
    pub fn commit_to(&mut self, position: Position) -> Result<()> {
        if position > self.position {
            return Err(Error::InvalidPosition {
                requested: position,
                reason: format!("the reader has only reached {}", self.position),
            });
        }
        if position < self.committed {
            return Err(Error::InvalidPosition {
                requested: position,
                reason: format!("the checkpoint is already at {}", self.committed),
            });
        }
        let position = self.normalize(position);
        let storage = &self.engine.storage;
        let data = CheckpointData {
            segment: position.segment,
            group_offset: position.group_offset,
            record_offset: position.offset,
            last_id: self.max_id,
        };
        let tmp_path = storage.path_of(CHECKPOINT_TMP);
        let _ = storage.remove(CHECKPOINT_TMP);
        let file = storage
            .create(CHECKPOINT_TMP)
            .map_err(|e| Error::io("create", &tmp_path, e))?;
        file.write_all_at(&data.encode(), 0)
            .map_err(|e| Error::io("write", &tmp_path, e))?;
        file.sync_all()
            .map_err(|e| Error::io("fsync", &tmp_path, e))?;
        drop(file);
        storage
            .rename(CHECKPOINT_TMP, CHECKPOINT_NAME)
            .map_err(|e| Error::io("rename", storage.path_of(CHECKPOINT_NAME), e))?;
        let dir = storage.path_of("");
        storage
            .sync_dir()
            .map_err(|e| Error::io("fsync directory", &dir, e))?;
        *lock(&self.engine.checkpoint) = Some(data);
        self.committed = position;

        // Segments wholly before the checkpoint are replayed: delete them. The checkpoint is
        // durable already, so a failure here is only logged: the next commit, or the next open,
        // deletes what is left.
        let doomed: Vec<u64> = lock(&self.engine.segments)
            .entries
            .range(..position.segment)
            .map(|(&id, _)| id)
            .collect();
        let mut removed = false;
        for id in doomed {
            let name = format::segment_name(id);
            match storage.remove(&name) {
                Ok(()) => {
                    lock(&self.engine.segments).entries.remove(&id);
                    removed = true;
                }
                Err(e) => {
                    tracing::warn!(path = %storage.path_of(&name).display(), error = %e, "could not delete a replayed segment");
                }
            }
        }
        if removed && let Err(e) = storage.sync_dir() {
            tracing::warn!(path = %dir.display(), error = %e, "could not sync the directory after deleting replayed segments");
        }
        Ok(())
    }

    /// A position at the very end of a sealed segment becomes the start of the next one, so that
    /// the segment it ends can be deleted.
    fn normalize(&self, p: Position) -> Position {
        let table = lock(&self.engine.segments);
        match table.entries.get(&p.segment) {
            Some(e) if e.sealed && align_group(p.offset) >= e.end => {
                match table.entries.range(p.segment + 1..).next() {
                    Some((&next, _)) => Position::start_of(next),
                    None => p,
                }
            }
            _ => p,
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.engine.replay_open.store(false, Ordering::Release);
    }
}
