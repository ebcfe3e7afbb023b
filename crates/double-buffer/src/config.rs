//! Tuning knobs, with defaults that suit a spill log on a local SSD.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::RECORD_HEADER_LEN;

/// How a [`SpillLog`](crate::SpillLog) is laid out in memory and on disk.
///
/// Memory is fixed at `slices × 2 × buffer_size`, allocated when the log opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Number of slices, each with its own lock and two buffers. Default: twice the available
    /// parallelism, between 2 and 64, so that writers seldom meet on one lock.
    pub slices: usize,
    /// Bytes per buffer (two per slice). A record, with its 20-byte header, must fit in one
    /// buffer. Default 1 MiB; from 4 KiB to 1 GiB.
    pub buffer_size: usize,
    /// A segment file is sealed and a new one started once it holds this many bytes. Default
    /// 64 MiB; at least 4 KiB. A single flush group larger than this still goes in one segment.
    pub segment_size: u64,
    /// The longest a record appended without a waiting caller stays in memory before the flusher
    /// writes it. A waiting caller ([`Ticket::wait`](crate::Ticket::wait)) does not wait for the
    /// linger: it asks for a flush at once. Default 2 ms; at most 10 s.
    pub linger: Duration,
    /// Reserve each segment's space with `fallocate` when it is created, so that appends do not
    /// grow the file and `fdatasync` does not have to commit a size change each time (on ext4
    /// that is several times faster per sync). The reserved tail reads as zeros, which the
    /// recovery scan takes as the clean end of the data. Default `true`; ignored where the
    /// platform has no `fallocate`.
    pub preallocate: bool,
    /// Write segments with direct I/O (`O_DIRECT`), bypassing the page cache: the flusher
    /// assembles each group in one aligned staging buffer (`slices × buffer_size` more memory)
    /// and pads it with zeros to a 4 KiB boundary. Worth it where copying into the page cache
    /// is the bottleneck (virtual machines, fast NVMe); each group then takes at least 4 KiB of
    /// disk, and a replay soon after reads from the disk rather than from memory. Falls back to
    /// buffered writes where the file system has no `O_DIRECT`. Default `false`.
    pub direct_io: bool,
    /// Run a background flusher thread (the default). Without one, whoever needs a flush —
    /// an `append` that finds both buffers full, a waiting ticket, [`SpillLog::flush`](crate::SpillLog::flush)
    /// — performs it on its own thread; useful for deterministic tests and single-threaded hosts.
    pub flush_thread: bool,
    /// Bytes the replay reader and the recovery scan read at a time. Default 1 MiB; it is raised
    /// to `buffer_size` if smaller, so that any record this configuration writes fits. A record
    /// written under a larger `buffer_size` (the configuration changed between runs) grows the
    /// reader's buffer to that record's size.
    pub read_chunk: usize,
}

impl Default for Config {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            slices: (cpus * 2).clamp(2, 64),
            buffer_size: 1 << 20,
            segment_size: 64 << 20,
            linger: Duration::from_millis(2),
            preallocate: true,
            direct_io: false,
            flush_thread: true,
            read_chunk: 1 << 20,
        }
    }
}

/// Most slices a log may have (slice numbers are stored in 16 bits; 1024 is plenty).
pub const MAX_SLICES: usize = 1024;
const MIN_BUFFER: usize = 4 << 10;
/// The largest buffer, hence the largest frame, any configuration writes.
pub(crate) const MAX_BUFFER: usize = 1 << 30;
const MIN_SEGMENT: u64 = 4 << 10;

impl Config {
    /// Checks every field; the error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &'static str, value: &dyn ToString, reason: &'static str) -> Result<()> {
            Err(Error::InvalidConfig {
                field,
                value: value.to_string(),
                reason,
            })
        }
        if self.slices == 0 || self.slices > MAX_SLICES {
            return bad("slices", &self.slices, "must be between 1 and 1024");
        }
        if !(MIN_BUFFER..=MAX_BUFFER).contains(&self.buffer_size) {
            return bad(
                "buffer_size",
                &self.buffer_size,
                "must be between 4 KiB and 1 GiB",
            );
        }
        // A flush group holds at most one buffer per slice and its length is stored in 32 bits.
        if (self.slices as u64) * (self.buffer_size as u64) > u64::from(u32::MAX) - 4096 {
            return bad(
                "buffer_size",
                &self.buffer_size,
                "slices × buffer_size must stay below 4 GiB",
            );
        }
        if self.segment_size < MIN_SEGMENT {
            return bad("segment_size", &self.segment_size, "must be at least 4 KiB");
        }
        if self.linger > Duration::from_secs(10) {
            return bad(
                "linger",
                &format!("{:?}", self.linger),
                "must be at most 10 s",
            );
        }
        if self.read_chunk == 0 || self.read_chunk > MAX_BUFFER {
            return bad(
                "read_chunk",
                &self.read_chunk,
                "must be between 1 byte and 1 GiB",
            );
        }
        Ok(())
    }

    /// The largest record this configuration accepts: `buffer_size` minus the record header.
    pub fn max_record_len(&self) -> usize {
        self.buffer_size - RECORD_HEADER_LEN
    }

    /// The memory the buffers take: `slices × 2 × buffer_size`, plus, with
    /// [`direct_io`](Config::direct_io), the staging buffer of about `slices × buffer_size`.
    pub fn buffer_memory(&self) -> usize {
        let staging = if self.direct_io {
            staging_capacity(self)
        } else {
            0
        };
        self.slices * 2 * self.buffer_size + staging
    }

    pub(crate) fn read_chunk(&self) -> usize {
        self.read_chunk.max(self.buffer_size)
    }
}

/// Bytes of the direct-I/O staging buffer: the largest group (a segment header, a group header,
/// one full buffer per slice), rounded up to the alignment, plus room to align its start.
pub(crate) fn staging_capacity(config: &Config) -> usize {
    use crate::format::{GROUP_HEADER_LEN, SEGMENT_HEADER_LEN};
    use crate::storage::DIRECT_ALIGN;
    let group = SEGMENT_HEADER_LEN + GROUP_HEADER_LEN + config.slices * config.buffer_size;
    group.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN + DIRECT_ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    slices: 0,
                    ..Config::default()
                },
                "slices",
            ),
            (
                Config {
                    slices: 5000,
                    ..Config::default()
                },
                "slices",
            ),
            (
                Config {
                    buffer_size: 100,
                    ..Config::default()
                },
                "buffer_size",
            ),
            (
                Config {
                    slices: 1024,
                    buffer_size: 1 << 30,
                    ..Config::default()
                },
                "buffer_size",
            ),
            (
                Config {
                    segment_size: 10,
                    ..Config::default()
                },
                "segment_size",
            ),
            (
                Config {
                    linger: Duration::from_secs(60),
                    ..Config::default()
                },
                "linger",
            ),
            (
                Config {
                    read_chunk: 0,
                    ..Config::default()
                },
                "read_chunk",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
