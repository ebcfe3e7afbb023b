//! Where segments live: a small trait, a directory on disk, and an in-memory model.
//!
//! The log only ever needs a flat namespace of files with positional reads and writes, syncs,
//! and a directory sync; that is all [`Storage`] asks. [`DiskStorage`] is the real thing;
//! [`MemStorage`] keeps files in memory and models what a crash keeps (only synced bytes and
//! synced directory entries, plus any prefix of the writes since), so that every scenario can run
//! both ways (okaywal does the same).

mod disk;
mod mem;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use disk::DiskStorage;
pub use mem::{Fault, MemStorage};

/// A directory of files, as the log uses it.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// The names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new, empty file for reading and writing; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Creates a new file whose writes bypass the page cache (`O_DIRECT`): every write must
    /// start at an offset and have a length that are multiples of [`DIRECT_ALIGN`], from
    /// memory aligned the same way. `Ok(None)` where that is not supported (the default).
    fn create_direct(&self, name: &str) -> io::Result<Option<Box<dyn StorageFile>>> {
        let _ = name;
        Ok(None)
    }
    /// Opens an existing file; `write` asks for write access too.
    fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn StorageFile>>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, renames and removals so far durable (`fsync` on the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// The path of a file, for error messages.
    fn path_of(&self, name: &str) -> PathBuf;
}

/// One open file.
#[allow(clippy::len_without_is_empty)] // a file, not a collection
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads at `offset`; returns 0 at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space up to `len` bytes, reading as zeros; a no-op where unsupported.
    fn preallocate(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
}

/// The alignment of offsets, lengths and memory that direct writes need (4 KiB covers every
/// common logical block size).
pub const DIRECT_ALIGN: usize = 4096;

/// Reads exactly `buf.len()` bytes at `offset`, or fewer at the end of the file; returns how many.
pub(crate) fn read_full_at(
    file: &dyn StorageFile,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
