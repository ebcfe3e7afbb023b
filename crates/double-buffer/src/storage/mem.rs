//! Files in memory, with a model of what survives a crash and with injected faults.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Storage, StorageFile};

/// An in-memory directory that remembers what is durable.
///
/// Bytes written become durable when their file is synced; creations, renames and removals when
/// the directory is synced. [`MemStorage::power_loss`] builds the directory a power failure
/// would leave: the durable state plus any prefix of the writes issued since (in issue order,
/// across files), and only the durable names. [`MemStorage::process_crash`] keeps everything, as
/// the kernel does when only the process dies. [`MemStorage::inject`] makes operations fail.
///
/// Clones share the same directory.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    inner: Arc<Mutex<MemState>>,
}

/// Operations [`MemStorage::inject`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// `write_all_at`.
    Write,
    /// `sync_data` and `sync_all` of files.
    Sync,
    /// `create`.
    Create,
    /// `sync_dir`.
    SyncDir,
    /// `remove`.
    Remove,
}

#[derive(Debug, Default)]
struct MemState {
    next_file: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    files: HashMap<u64, MemFile>,
    /// Writes not yet covered by a sync, in issue order.
    pending: Vec<Pending>,
    /// Per fault: how many more operations succeed, and the error kind after that.
    faults: HashMap<Fault, (u64, io::ErrorKind)>,
    syncs: u64,
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Pending {
    file: u64,
    offset: u64,
    bytes: Vec<u8>,
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let offset = offset as usize;
    if data.len() < offset + bytes.len() {
        data.resize(offset + bytes.len(), 0);
    }
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
}

impl MemState {
    fn check(&mut self, fault: Fault) -> io::Result<()> {
        if let Some((left, kind)) = self.faults.get_mut(&fault) {
            if *left == 0 {
                return Err(io::Error::new(*kind, format!("injected {fault:?} fault")));
            }
            *left -= 1;
        }
        Ok(())
    }

    fn file(&mut self, id: u64) -> &mut MemFile {
        self.files.entry(id).or_default()
    }
}

impl MemStorage {
    /// An empty directory.
    pub fn new() -> Self {
        MemStorage::default()
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After `after` more successful calls, every `fault` operation fails with `kind` until
    /// [`MemStorage::heal`]. Use [`io::ErrorKind::StorageFull`] for a full disk.
    pub fn inject(&self, fault: Fault, after: u64, kind: io::ErrorKind) {
        self.state().faults.insert(fault, (after, kind));
    }

    /// Removes every injected fault.
    pub fn heal(&self) {
        self.state().faults.clear();
    }

    /// Bytes written but not yet synced: a power loss keeps any prefix of them.
    pub fn unsynced_bytes(&self) -> u64 {
        self.state()
            .pending
            .iter()
            .map(|p| p.bytes.len() as u64)
            .sum()
    }

    /// How many file syncs succeeded so far.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    /// The directory a power failure would leave if `keep` bytes of the unsynced writes had
    /// reached the disk (in the order they were issued; the last one possibly cut in the middle).
    pub fn power_loss(&self, keep: u64) -> MemStorage {
        let st = self.state();
        let mut files: HashMap<u64, MemFile> = HashMap::new();
        for &id in st.durable_names.values() {
            let durable = st
                .files
                .get(&id)
                .map(|f| f.durable.clone())
                .unwrap_or_default();
            files.insert(
                id,
                MemFile {
                    data: durable.clone(),
                    durable,
                },
            );
        }
        let mut budget = keep;
        for p in &st.pending {
            if budget == 0 {
                break;
            }
            let n = (p.bytes.len() as u64).min(budget) as usize;
            budget -= n as u64;
            if let Some(f) = files.get_mut(&p.file) {
                write_into(&mut f.data, p.offset, &p.bytes[..n]);
                f.durable = f.data.clone();
            }
        }
        MemStorage::image(st.next_file, st.durable_names.clone(), files)
    }

    /// The directory as it stands, every write and name kept: what the kernel leaves when only
    /// the process dies.
    pub fn process_crash(&self) -> MemStorage {
        let st = self.state();
        let files = st
            .files
            .iter()
            .map(|(&id, f)| {
                (
                    id,
                    MemFile {
                        data: f.data.clone(),
                        durable: f.data.clone(),
                    },
                )
            })
            .collect();
        MemStorage::image(st.next_file, st.names.clone(), files)
    }

    /// A directory after a crash: these names and files, all durable, no faults.
    fn image(
        next_file: u64,
        names: BTreeMap<String, u64>,
        files: HashMap<u64, MemFile>,
    ) -> MemStorage {
        MemStorage {
            inner: Arc::new(Mutex::new(MemState {
                next_file,
                durable_names: names.clone(),
                names,
                files,
                ..MemState::default()
            })),
        }
    }

    fn create_file(&self, name: &str, direct: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut st = self.state();
        st.check(Fault::Create)?;
        if st.names.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} exists"),
            ));
        }
        let id = st.next_file;
        st.next_file += 1;
        st.names.insert(name.to_owned(), id);
        st.files.insert(id, MemFile::default());
        Ok(Box::new(MemHandle {
            storage: self.clone(),
            id,
            write: true,
            direct,
        }))
    }

    /// The current bytes of a file, for tests that damage or inspect files.
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        let st = self.state();
        st.names
            .get(name)
            .and_then(|id| st.files.get(id))
            .map(|f| f.data.clone())
    }

    /// Replaces a file's bytes, durably (a test's stand-in for bit rot or an operator's edit).
    pub fn overwrite(&self, name: &str, bytes: Vec<u8>) {
        let mut st = self.state();
        if let Some(&id) = st.names.get(name) {
            let f = st.file(id);
            f.data = bytes.clone();
            f.durable = bytes;
        }
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state().names.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.create_file(name, false)
    }

    /// Always supported in memory, with `O_DIRECT`'s alignment rules enforced, so that tests
    /// catch a misaligned write.
    fn create_direct(&self, name: &str) -> io::Result<Option<Box<dyn StorageFile>>> {
        self.create_file(name, true).map(Some)
    }

    fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn StorageFile>> {
        let st = self.state();
        let id = *st
            .names
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} not found")))?;
        Ok(Box::new(MemHandle {
            storage: self.clone(),
            id,
            write,
            direct: false,
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.state();
        st.check(Fault::Remove)?;
        st.names
            .remove(name)
            .map(drop)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} not found")))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.state();
        let id = st
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{from} not found")))?;
        st.names.insert(to.to_owned(), id);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut st = self.state();
        st.check(Fault::SyncDir)?;
        st.durable_names = st.names.clone();
        Ok(())
    }

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from("mem:").join(name)
    }
}

#[derive(Debug)]
struct MemHandle {
    storage: MemStorage,
    id: u64,
    write: bool,
    /// Opened for direct I/O: writes must be aligned as `O_DIRECT` demands.
    direct: bool,
}

impl MemHandle {
    fn writable(&self) -> io::Result<()> {
        if self.write {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ))
        }
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.storage.state();
        st.check(Fault::Sync)?;
        let id = self.id;
        let mut mine = Vec::new();
        st.pending.retain(|p| {
            if p.file == id {
                mine.push(p.clone());
                false
            } else {
                true
            }
        });
        let f = st.file(id);
        for p in mine {
            write_into(&mut f.durable, p.offset, &p.bytes);
        }
        f.durable.truncate(f.data.len());
        st.syncs += 1;
        Ok(())
    }
}

impl StorageFile for MemHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut st = self.storage.state();
        let data = &st.file(self.id).data;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        let align = super::DIRECT_ALIGN;
        if self.direct
            && (!offset.is_multiple_of(align as u64)
                || !buf.len().is_multiple_of(align)
                || buf.as_ptr().align_offset(align) != 0)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("misaligned direct write of {} bytes at {offset}", buf.len()),
            ));
        }
        let mut st = self.storage.state();
        st.check(Fault::Write)?;
        write_into(&mut st.file(self.id).data, offset, buf);
        st.pending.push(Pending {
            file: self.id,
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.storage.state().file(self.id).data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        let mut st = self.storage.state();
        let id = self.id;
        // Size changes are modelled as durable at once; the log syncs after each anyway.
        st.pending.retain(|p| p.file != id || p.offset < len);
        let f = st.file(id);
        f.data.resize(len as usize, 0);
        f.durable.resize(len as usize, 0);
        Ok(())
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        let mut st = self.storage.state();
        let f = st.file(self.id);
        if (f.data.len() as u64) < len {
            f.data.resize(len as usize, 0);
        }
        if (f.durable.len() as u64) < len {
            f.durable.resize(len as usize, 0);
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_synced_bytes_and_a_prefix_of_the_rest() {
        let s = MemStorage::new();
        let f = s.create("a").unwrap();
        s.sync_dir().unwrap();
        f.write_all_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"+more", 7).unwrap();
        assert_eq!(s.unsynced_bytes(), 5);
        assert_eq!(s.power_loss(0).read("a").unwrap(), b"durable");
        assert_eq!(s.power_loss(3).read("a").unwrap(), b"durable+mo");
        assert_eq!(s.process_crash().read("a").unwrap(), b"durable+more");
    }

    #[test]
    fn names_need_a_directory_sync() {
        let s = MemStorage::new();
        let f = s.create("new").unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_all().unwrap();
        assert!(s.power_loss(u64::MAX).read("new").is_none());
        s.sync_dir().unwrap();
        s.remove("new").unwrap();
        assert!(
            s.power_loss(0).read("new").is_some(),
            "a removal is not durable before sync_dir"
        );
    }

    #[test]
    fn injected_faults_fire_after_the_given_count() {
        let s = MemStorage::new();
        let f = s.create("a").unwrap();
        s.inject(Fault::Sync, 1, io::ErrorKind::StorageFull);
        f.sync_data().unwrap();
        assert_eq!(
            f.sync_data().unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        s.heal();
        f.sync_data().unwrap();
    }
}
