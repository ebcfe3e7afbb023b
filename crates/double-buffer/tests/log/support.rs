//! Shared by the scenario tests: one scenario, two storages.

use std::sync::Arc;
use std::time::Duration;

use double_buffer::{Config, MemStorage, RecoveryReport, Result, SpillLog, Storage};

/// Where a scenario's log lives.
pub enum Env {
    Mem(MemStorage),
    Disk(tempfile::TempDir),
}

impl Env {
    pub fn mem() -> Self {
        Env::Mem(MemStorage::new())
    }

    pub fn disk() -> Self {
        Env::Disk(tempfile::tempdir().expect("temp dir"))
    }

    pub fn open(&self, config: Config) -> Result<(SpillLog, RecoveryReport)> {
        match self {
            Env::Mem(m) => SpillLog::open_with_storage(Arc::new(m.clone()), config),
            Env::Disk(d) => SpillLog::open(d.path(), config),
        }
    }

    /// A view of the files for checks, while no log is open.
    pub fn storage(&self) -> Arc<dyn Storage> {
        match self {
            Env::Mem(m) => Arc::new(m.clone()),
            Env::Disk(d) => Arc::new(double_buffer::DiskStorage::read_only(d.path()).expect("dir")),
        }
    }

    pub fn segment_files(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .storage()
            .list()
            .expect("list")
            .into_iter()
            .filter(|n| n.ends_with(".seg"))
            .collect();
        v.sort();
        v
    }
}

thread_local! {
    /// Set by the `_direct` variants of `both!`: `small()` then asks for direct I/O.
    static DIRECT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a scenario with `small()` configs asking for direct I/O.
pub fn direct(f: impl FnOnce()) {
    DIRECT.with(|d| d.set(true));
    f();
    DIRECT.with(|d| d.set(false));
}

/// Small buffers and segments, so that swaps and rotations happen in small tests.
pub fn small() -> Config {
    Config {
        slices: 4,
        buffer_size: 8 << 10,
        segment_size: 64 << 10,
        linger: Duration::from_millis(1),
        read_chunk: 16 << 10,
        direct_io: DIRECT.with(std::cell::Cell::get),
        ..Config::default()
    }
}

/// A payload that names its writer and sequence number and has a length that varies.
pub fn payload(writer: u32, seq: u32) -> Vec<u8> {
    let len = 8 + (seq as usize * 7 + writer as usize * 13) % 300;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&writer.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    while v.len() < len {
        v.push((v.len() as u32 ^ seq) as u8);
    }
    v
}

pub fn parse(payload: &[u8]) -> (u32, u32) {
    let w = u32::from_le_bytes(payload[0..4].try_into().unwrap());
    let s = u32::from_le_bytes(payload[4..8].try_into().unwrap());
    assert_eq!(
        payload,
        &self::payload(w, s)[..],
        "payload of writer {w} seq {s} damaged"
    );
    (w, s)
}

/// Every record from the checkpoint on: (id, slice, payload).
pub fn read_all(log: &SpillLog) -> Vec<(u64, usize, Vec<u8>)> {
    let mut replay = log.replay().expect("replay");
    let mut out = Vec::new();
    while let Some(r) = replay.next_record().expect("next") {
        out.push((r.id().get(), r.slice(), r.payload().to_vec()));
    }
    out
}

/// Runs a scenario on both storages.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $( #[test] fn $name() { super::$name(&crate::support::Env::mem()) } )*
        }
        mod disk {
            $( #[test] fn $name() { super::$name(&crate::support::Env::disk()) } )*
        }
        /// The same with direct I/O (in memory, with `O_DIRECT`'s alignment rules enforced).
        mod mem_direct {
            $( #[test] fn $name() { crate::support::direct(|| super::$name(&crate::support::Env::mem())) } )*
        }
        mod disk_direct {
            $( #[test] fn $name() { crate::support::direct(|| super::$name(&crate::support::Env::disk())) } )*
        }
    };
}
pub(crate) use both;

impl Env {
    /// The bytes of a file (no log may be open on it).
    pub fn read_file(&self, name: &str) -> Vec<u8> {
        match self {
            Env::Mem(m) => m.read(name).expect("file exists"),
            Env::Disk(d) => std::fs::read(d.path().join(name)).expect("file exists"),
        }
    }

    /// Replaces the bytes of a file.
    pub fn write_file(&self, name: &str, bytes: Vec<u8>) {
        match self {
            Env::Mem(m) => m.overwrite(name, bytes),
            Env::Disk(d) => std::fs::write(d.path().join(name), bytes).expect("write"),
        }
    }
}

impl Env {
    /// Creates a file with the given bytes.
    pub fn write_file_new(&self, name: &str, bytes: Vec<u8>) {
        match self {
            Env::Mem(m) => {
                use double_buffer::Storage;
                let f = m.create(name).expect("create");
                f.write_all_at(&bytes, 0).expect("write");
                f.sync_all().expect("sync");
                m.sync_dir().expect("sync dir");
            }
            Env::Disk(d) => std::fs::write(d.path().join(name), bytes).expect("write"),
        }
    }
}
