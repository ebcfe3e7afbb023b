//! Segments in a directory of the local file system.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Storage, StorageFile};
use crate::error::{Error, Result};

const LOCK_NAME: &str = "LOCK";

/// A directory on disk, locked (`flock`) for the life of the value so that two logs never write
/// to it at once. The lock is released by the kernel when the process dies, even by `SIGKILL`.
#[derive(Debug)]
pub struct DiskStorage {
    dir: PathBuf,
    /// Holds the `flock`; `None` for a read-only view.
    _lock: Option<File>,
}

impl DiskStorage {
    /// Opens (creating it if needed) and locks `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
            // The new directory's own entry must survive a crash too.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|p| p.sync_all())
                    .map_err(|e| Error::io("fsync directory", parent, e))?;
            }
        }
        let lock_path = dir.join(LOCK_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(Error::Locked { path: dir });
            }
            Err(e) => return Err(Error::io("lock", &lock_path, e.into())),
        }
        Ok(DiskStorage {
            dir,
            _lock: Some(lock),
        })
    }

    /// A read-only view of `dir` without taking the lock, for inspection tools. The log must not
    /// be opened through it.
    pub fn read_only(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let meta = fs::metadata(&dir).map_err(|e| Error::io("open directory", &dir, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                "open directory",
                &dir,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        Ok(DiskStorage { dir, _lock: None })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Storage for DiskStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
                && name != LOCK_NAME
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        Ok(Box::new(DiskFile(file)))
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn create_direct(&self, name: &str) -> io::Result<Option<Box<dyn StorageFile>>> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(name);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&path);
        match opened {
            Ok(file) => Ok(Some(Box::new(DiskFile(file)))),
            // The file system has no O_DIRECT (tmpfs, some FUSE): it may have created the file
            // before refusing, so take it away again.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                let _ = fs::remove_file(&path);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(self.dir.join(name))?;
        Ok(Box::new(DiskFile(file)))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[derive(Debug)]
struct DiskFile(File);

impl StorageFile for DiskFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn preallocate(&self, len: u64) -> io::Result<()> {
        // Mode 0 extends the file size too: later appends then change no metadata but the
        // extent state, which is what makes `fdatasync` cheap.
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // Not every file system can (tmpfs before 3.5, some FUSE): then appends grow the file.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn preallocate(&self, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        // `fdatasync` on Linux; on Apple platforms std issues F_FULLFSYNC.
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
}
